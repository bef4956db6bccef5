//! Route sources: a static upstream list (sidecar), a manifests file, the Kubernetes API.
//! Each builds `RouteTable`s and hands them to a [`Publisher`].

pub mod cert_files;
pub mod events;
pub mod file;
pub mod gateway_status;
pub mod gateway_watch;
pub mod kube;
pub mod leader;
pub mod rbac;
pub mod secrets;
pub mod static_upstream;
pub mod status;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::routes::{RouteHandle, RouteTable};
use crate::tls::{CertEntry, CertHandle, CertTable};
use crate::translate::Warning;

/// Swaps tables in and records the update in metrics and logs.
#[derive(Debug, Clone)]
pub struct Publisher {
    routes: Arc<RouteHandle>,
    metrics: Arc<Metrics>,
    source: &'static str,
    /// Where certificate tables go; `None` where TLS is not wired (some tests).
    certs: Option<Arc<CertHandle>>,
}

impl Publisher {
    pub fn new(routes: Arc<RouteHandle>, metrics: Arc<Metrics>, source: &'static str) -> Self {
        Self { routes, metrics, source, certs: None }
    }

    /// Also publish certificate tables, to `certs`.
    pub fn with_certs(mut self, certs: Arc<CertHandle>) -> Self {
        self.certs = Some(certs);
        self.record_certificates();
        self
    }

    pub fn routes(&self) -> &Arc<RouteHandle> {
        &self.routes
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn certs(&self) -> Option<&Arc<CertHandle>> {
        self.certs.as_ref()
    }

    /// The certificate table now serving (empty without a handle): what a source's next
    /// translation starts from.
    pub fn current_certs(&self) -> Arc<CertTable> {
        self.certs.as_ref().map(|c| c.load()).unwrap_or_default()
    }

    /// Publish a route table and its certificate table together, under one generation: the
    /// routes first, then the certificates stamped with the routes' generation.
    pub fn publish_all(&self, table: RouteTable, mut certs: CertTable, warnings: &[Warning]) -> u64 {
        let generation = self.publish(table, warnings);
        if let Some(handle) = &self.certs {
            certs.generation = generation;
            let hosts = certs.hosts().len();
            handle.publish(certs);
            self.record_certificates();
            tracing::info!(source = self.source, generation, hosts, "certificate table published");
        }
        generation
    }

    /// Replace the fallback certificate (`--tls-cert` reloaded).
    pub fn publish_fallback(&self, entry: Arc<CertEntry>) {
        if let Some(handle) = &self.certs {
            tracing::info!(
                certificate = %entry.source,
                serial = %entry.info.serial,
                subject = %entry.info.subject,
                not_after = %crate::tls::rfc3339(entry.info.not_after),
                "default certificate loaded"
            );
            handle.set_fallback(entry);
            self.record_certificates();
        }
    }

    /// Count an update of certificate files (`source`), applied or rejected.
    pub fn certificate_update(&self, source: &str, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.metrics.config_updates.with_label_values(&[source, result]).inc();
    }

    fn record_certificates(&self) {
        if let Some(handle) = &self.certs {
            let in_use = handle.certificates();
            self.metrics.tls_certificates(in_use.iter().map(|e| (e.source.label(), e.info.not_after)));
        }
    }

    /// Publish a new table; warnings are logged (and counted) here, once.
    pub fn publish(&self, table: RouteTable, warnings: &[Warning]) -> u64 {
        for w in warnings {
            tracing::warn!(
                source = self.source,
                kind = %w.object.kind,
                namespace = %w.object.namespace,
                name = %w.object.name,
                field = %w.field,
                value = %w.value,
                reason = %w.reason,
                "configuration warning"
            );
        }
        let conflicts = warnings.iter().filter(|w| w.event_reason == crate::translate::reasons::RULE_CONFLICT).count();
        self.metrics.routes_conflicts.set(i64::try_from(conflicts).unwrap_or(i64::MAX));
        let generation = self.routes.publish(table);
        let current = self.routes.load();
        self.metrics.table_published(self.source, &current, warnings.len());
        // The proxy's per-route metric handles for this table are resolved here, off the data path.
        self.metrics.for_table(&current);
        tracing::info!(source = self.source, generation, routes = current.routes().count(), "route table published");
        generation
    }

    /// The source could not produce a table; the last good one keeps serving.
    pub fn rejected(&self, why: &str) {
        self.metrics.table_rejected(self.source);
        tracing::error!(source = self.source, error = why, "route update rejected; keeping the last good table");
    }
}

/// `--unready-drain-after`: until `stop`, drain the tunnels of endpoints that have stayed not
/// ready for `after` (checked every second, or every `after / 4` when that is shorter).
pub async fn drain_unready_endpoints(routes: Arc<RouteHandle>, after: Duration, stop: CancellationToken) {
    let every = (after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let drained = routes.drain_unready(after);
        if drained > 0 {
            tracing::info!(
                endpoints = drained,
                after_s = after.as_secs_f64(),
                "draining the tunnels of endpoints not ready for longer than --unready-drain-after"
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::time::{Duration, Instant};

    /// Poll `cond` until it holds, failing after 10 s.
    pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
