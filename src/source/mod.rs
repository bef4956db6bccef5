//! Route sources: a static upstream list (sidecar), a manifests file, the Kubernetes API.
//! Each builds `RouteTable`s and hands them to a [`Publisher`].

pub mod events;
pub mod file;
pub mod kube;
pub mod leader;
pub mod rbac;
pub mod static_upstream;
pub mod status;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::routes::{RouteHandle, RouteTable};
use crate::translate::Warning;

/// Swaps tables in and records the update in metrics and logs.
#[derive(Debug, Clone)]
pub struct Publisher {
    routes: Arc<RouteHandle>,
    metrics: Arc<Metrics>,
    source: &'static str,
}

impl Publisher {
    pub fn new(routes: Arc<RouteHandle>, metrics: Arc<Metrics>, source: &'static str) -> Self {
        Self { routes, metrics, source }
    }

    pub fn routes(&self) -> &Arc<RouteHandle> {
        &self.routes
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
