//! Cluster mode: caches of Ingress, Service, EndpointSlice (all namespaces, or each of
//! `--watch-namespace`) and IngressClass ([`super::watch`]); after the first complete sync of
//! all, every change is debounced, fingerprinted, translated (the same pure `translate` as
//! the file source) and published. Watch errors, 410 Gone and API outages back off and
//! re-list inside the watchers while the last good table keeps serving. Also runs leader
//! election, the Ingress status writer, the Event poster (leader only) and the ExternalName
//! check, every task supervised so that one that dies fails `/healthz`.
//!
//! ```text
//!  watches ──notify──> debounce ──> snapshot (Arcs) ──fingerprint──> translate ──> Publisher
//!                                        │                              └─warnings─┐
//!                                        │        ExternalName check ──warnings────┴─> Events (leader)
//!                                        └─our Ingresses──────────────────────────> status (leader)
//! ```
//!
//! Scale: a snapshot shares the caches' `Arc`s (no deep copies), and whether anything that
//! translation reads changed is decided by a fingerprint of uid and resourceVersion per
//! object (generation and annotations for an Ingress, so our own status writes do not
//! translate again), computed without serialising anything.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher;
use kube::{Api, Resource};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use super::events::{self, EventLimits, Report, Reporter};
use super::gateway_status::{self, GatewayStatusInput};
use super::gateway_watch::{self, GatewayApiConfig, GatewayApiMode, GatewayCaches, Installed};
use super::leader::{self, ElectionConfig};
use super::secrets::SecretWatches;
use super::status::{self, PublishFrom, PublishSource, StatusConfig, StatusInput};
pub use super::watch::WatchBackoff;
use super::watch::{Reflected, Watches, namespaced_apis, resource_version};
use crate::readiness::Health;
use crate::routes::RouteTable;
use crate::translate::tls::TlsDefaults;
use crate::translate::{
    self, ClusterSnapshot, Defaults, ObjectRef, RouteCache, ServedClasses, TlsInputs, Warning, reasons,
};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the {0} watch stopped before its first complete sync")]
    SyncAborted(&'static str),
}

/// Everything cluster mode needs besides the client.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Watch only these namespaces (Ingress, Service, EndpointSlice); empty: all. IngressClass
    /// is cluster-scoped and always watched.
    pub watch_namespaces: Vec<String>,
    pub defaults: Defaults,
    /// Quiet time after a change before translating: a burst (a rollout) becomes one publish.
    pub debounce: Duration,
    pub backoff: WatchBackoff,
    /// Objects per page of each (re-)list (`limit`); large clusters list in pages.
    pub page_size: u32,
    /// Ingress status writing; `None` leaves status alone.
    pub status: Option<StatusConfig>,
    /// Leader election; `None` means this replica always acts as leader (one replica only).
    pub election: Option<ElectionConfig>,
    /// This replica's name in Events (`reportingInstance`).
    pub identity: String,
    pub event_limits: EventLimits,
    /// How often the DNS names of ExternalName Services are resolved again, to report the
    /// ones that do not resolve.
    pub external_name_check: Duration,
    /// `--default-tls-secret` (certificates come from the TLS Secrets, see [`super::secrets`]).
    pub tls: TlsDefaults,
    /// `--gateway-api`, `--gateway-api-recheck` ([`super::gateway_watch`]).
    pub gateway_api: GatewayApiConfig,
}

impl KubeConfig {
    pub fn new(defaults: Defaults) -> Self {
        Self {
            watch_namespaces: Vec::new(),
            defaults,
            debounce: Duration::from_millis(200),
            backoff: WatchBackoff::default(),
            page_size: 500,
            status: None,
            election: None,
            identity: "wsingress".to_string(),
            event_limits: EventLimits::default(),
            external_name_check: Duration::from_secs(60),
            tls: TlsDefaults::default(),
            gateway_api: GatewayApiConfig::default(),
        }
    }
}

/// The caches translation reads.
#[derive(Clone)]
pub struct Caches {
    pub ingresses: Reflected<Ingress>,
    pub services: Reflected<Service>,
    pub endpoint_slices: Reflected<EndpointSlice>,
    pub ingress_classes: Reflected<IngressClass>,
    /// Gateway API, once discovery found its CRDs ([`super::gateway_watch`]).
    pub gateway: Option<GatewayCaches>,
}

impl Caches {
    /// Changes exactly when something translation reads changed (uid and resourceVersion per
    /// object, [`ingress_version`] for Ingresses); kept up to date by the watches.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (
            self.ingresses.fingerprint(),
            self.services.fingerprint(),
            self.endpoint_slices.fingerprint(),
            self.ingress_classes.fingerprint(),
            self.gateway.as_ref().map(GatewayCaches::fingerprint),
        )
            .hash(&mut h);
        h.finish()
    }

    /// Changes when a Gateway API object changes (status included): what the Gateway API
    /// status writer's input depends on.
    fn gateway_revision(&self) -> Option<u64> {
        self.gateway.as_ref().map(GatewayCaches::revision)
    }

    /// Changes when an Ingress (status included) or an IngressClass changes: what the status
    /// writer's input depends on.
    fn status_revision(&self) -> (u64, u64) {
        (self.ingresses.revision(), self.ingress_classes.fingerprint())
    }

    /// What translation reads now: the cached objects themselves, shared.
    pub fn snapshot(&self) -> ClusterSnapshot {
        let mut snapshot = ClusterSnapshot {
            ingresses: self.ingresses.state(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            ingress_classes: self.ingress_classes.state(),
            ..ClusterSnapshot::default()
        };
        if let Some(g) = &self.gateway {
            g.fill(&mut snapshot);
        }
        snapshot
    }

    async fn wait_synced(&self) -> Result<(), KubeError> {
        let (a, b, c, d) = tokio::join!(
            self.ingresses.wait_synced(),
            self.services.wait_synced(),
            self.endpoint_slices.wait_synced(),
            self.ingress_classes.wait_synced(),
        );
        for (ok, kind) in [(a, "Ingress"), (b, "Service"), (c, "EndpointSlice"), (d, "IngressClass")] {
            if !ok {
                return Err(KubeError::SyncAborted(kind));
            }
        }
        if let Some(g) = &self.gateway
            && !g.wait_synced().await
        {
            return Err(KubeError::SyncAborted("Gateway API"));
        }
        Ok(())
    }

    /// The full reference of the object a warning names (uid and apiVersion when cached),
    /// for the Event's `regarding`.
    fn object_reference(&self, o: &ObjectRef) -> ObjectReference {
        let found = match o.kind.as_str() {
            "Ingress" => self.ingresses.get(&o.namespace, &o.name).map(|k| k.object_ref(&())),
            "Service" => self.services.get(&o.namespace, &o.name).map(|k| k.object_ref(&())),
            "EndpointSlice" => self.endpoint_slices.get(&o.namespace, &o.name).map(|k| k.object_ref(&())),
            "IngressClass" => self.ingress_classes.get("", &o.name).map(|k| k.object_ref(&())),
            _ => self.gateway.as_ref().and_then(|g| g.object_reference(o)),
        };
        found.unwrap_or_else(|| ObjectReference {
            kind: Some(o.kind.clone()),
            namespace: (!o.namespace.is_empty()).then(|| o.namespace.clone()),
            name: Some(o.name.clone()),
            ..ObjectReference::default()
        })
    }
}

/// Run cluster mode until `shutdown`. Tasks that die fail `health`.
pub async fn run(
    client: kube::Client,
    config: KubeConfig,
    publisher: Publisher,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), KubeError> {
    // Dropping the set (also when this future is dropped) aborts every task.
    let mut tasks = JoinSet::new();
    let children = shutdown.child_token();
    let changed = Arc::new(Notify::new());
    let metrics = publisher.metrics().clone();
    let mut watches = Watches {
        tasks: &mut tasks,
        health: &health,
        metrics: &metrics,
        stop: &children,
        backoff: config.backoff,
        page_size: config.page_size,
    };
    let mut caches = watch_caches(&mut watches, &client, &config.watch_namespaces, &changed);
    // Gateway API: what is installed now; looked at again on a timer while something is missing.
    let installed = match config.gateway_api.mode {
        GatewayApiMode::Off => None,
        GatewayApiMode::Auto => Some(first_discovery(&client, &config).await),
    };
    if let Some(found) = installed.filter(|i| i.routes) {
        caches.gateway = Some(GatewayCaches::start(
            &mut watches,
            &client,
            &config.watch_namespaces,
            found.reference_grants,
            &changed,
        ));
    }
    let (found_tx, mut found_rx) = watch::channel(installed.unwrap_or_default());
    let mut rediscovering = installed.is_some_and(|i| !i.complete());
    if rediscovering {
        let recheck = config.gateway_api.recheck;
        let task = gateway_watch::rediscover(client.clone(), recheck, found_tx, children.clone());
        watches.health.spawn(&mut *watches.tasks, "Gateway API discovery", &children, task);
    } else {
        drop(found_tx);
    }
    let mut secrets =
        SecretWatches::start(&mut watches, &client, &config.watch_namespaces, config.tls.clone(), &changed);
    let publish = config.status.as_ref().and_then(|s| match &s.publish {
        PublishFrom::Service { namespace, name } => {
            let changed = Arc::new(Notify::new());
            let api = Api::<Service>::namespaced(client.clone(), namespace);
            let selector = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let scope = format!("{namespace} (publish Service {name})");
            let service = watches.reflect("Service", vec![(scope, api)], selector, resource_version, &changed);
            Some(PublishSource { service, changed })
        }
        PublishFrom::Address(_) => None,
    });

    let (leader_tx, mut leader_rx) = watch::channel(config.election.is_none());
    metrics.controller_leader.set(i64::from(config.election.is_none()));
    if let Some(election) = config.election.clone() {
        health.spawn(
            &mut tasks,
            "leader election",
            &children,
            leader::run(client.clone(), election, leader_tx, children.clone()),
        );
    }
    let (mut reconciler, outputs) = Reconciler::new(config.defaults.clone(), publisher);
    let Outputs {
        reports: reports_rx,
        status: status_rx,
        targets: targets_rx,
        unresolved: unresolved_tx,
        gateway_status: gateway_status_rx,
    } = outputs;
    let reporter = Reporter { controller: config.defaults.controller_name.clone(), instance: config.identity.clone() };
    health.spawn(
        &mut tasks,
        "events",
        &children,
        events::run(
            client.clone(),
            reporter,
            config.event_limits,
            reports_rx,
            leader_rx.clone(),
            config.backoff.max,
            children.clone(),
        ),
    );
    if installed.is_some() {
        // Gateway API status (conditions) is written with or without published addresses.
        let gateway_publish =
            publish.as_ref().map(|p| PublishSource { service: p.service.clone(), changed: Arc::new(Notify::new()) });
        let resync = config.status.as_ref().map_or(Duration::from_secs(30), |s| s.resync);
        let run = gateway_status::run(
            client.clone(),
            config.defaults.clone(),
            config.status.clone(),
            gateway_publish,
            resync,
            gateway_status_rx,
            leader_rx.clone(),
            children.clone(),
        );
        health.spawn(&mut tasks, "Gateway API status", &children, run);
    }
    if let Some(status_config) = config.status.clone() {
        let run = status::run(
            client.clone(),
            status_config,
            caches.ingresses.clone(),
            publish,
            status_rx,
            leader_rx.clone(),
            children.clone(),
        );
        health.spawn(&mut tasks, "ingress status", &children, run);
    }
    health.spawn(
        &mut tasks,
        "external name check",
        &children,
        check_external_names(targets_rx, unresolved_tx, config.external_name_check, children.clone()),
    );

    tokio::select! {
        r = caches.wait_synced() => r?,
        () = shutdown.cancelled() => return Ok(()),
    }
    tokio::select! {
        ok = secrets.wait_synced() => if !ok { return Err(KubeError::SyncAborted("Secret")) },
        () = shutdown.cancelled() => return Ok(()),
    }
    tracing::info!(
        namespaces =
            if config.watch_namespaces.is_empty() { "(all)".to_string() } else { config.watch_namespaces.join(",") },
        ingresses = caches.ingresses.len(),
        services = caches.services.len(),
        endpoint_slices = caches.endpoint_slices.len(),
        ingress_classes = caches.ingress_classes.len(),
        tls_secrets = secrets.secrets().len(),
        "initial sync complete"
    );

    loop {
        reconciler.reconcile_with_secrets(&caches, &mut secrets);
        // A named Secret watch that has not listed yet holds the publish until it has, or
        // until this instant ...
        // ... and a certificate that expires is looked at again when it does.
        let wake_at = secrets.waiting_until().or_else(|| reconciler.next_expiry());
        tokio::select! {
            () = changed.notified() => {}
            () = async { match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => {}
            r = reconciler.unresolved.changed() => {
                if r.is_ok() {
                    reconciler.reports_stale = true;
                }
                continue;
            }
            r = leader_rx.changed() => {
                if r.is_ok() {
                    metrics.controller_leader.set(i64::from(*leader_rx.borrow_and_update()));
                }
                continue;
            }
            r = found_rx.changed(), if rediscovering => {
                match r {
                    Ok(()) => {
                        let found = *found_rx.borrow_and_update();
                        let mut watches = Watches {
                            tasks: &mut tasks,
                            health: &health,
                            metrics: &metrics,
                            stop: &children,
                            backoff: config.backoff,
                            page_size: config.page_size,
                        };
                        let namespaces = &config.watch_namespaces;
                        match caches.gateway.as_mut() {
                            None if found.routes => {
                                let grants = found.reference_grants;
                                let g = GatewayCaches::start(&mut watches, &client, namespaces, grants, &changed);
                                caches.gateway = Some(g);
                            }
                            Some(g) if found.reference_grants => {
                                g.start_grants(&mut watches, &client, namespaces, &changed)
                            }
                            _ => {}
                        }
                    }
                    // Everything is installed: discovery is done.
                    Err(_) => rediscovering = false,
                }
                continue;
            }
            () = shutdown.cancelled() => break,
        }
        // Coalesce a burst of changes into one translation.
        tokio::select! {
            () = tokio::time::sleep(config.debounce) => {}
            () = shutdown.cancelled() => break,
        }
    }
    // Let the elector release the Lease (bounded inside) before the tasks are dropped.
    children.cancel();
    let wait_all = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(3), wait_all).await;
    Ok(())
}

/// The channels a [`Reconciler`] feeds and reads.
pub struct Outputs {
    /// Warnings as Events to post (with their objects' references).
    pub reports: watch::Receiver<Arc<Vec<Report>>>,
    /// The Ingresses we serve, for the status writer.
    pub status: watch::Receiver<StatusInput>,
    /// ExternalName targets to resolve.
    targets: watch::Receiver<Arc<BTreeSet<ExternalTarget>>>,
    /// Warnings about ExternalName targets that do not resolve.
    unresolved: watch::Sender<Arc<Vec<Warning>>>,
    /// The snapshot the Gateway API status writer derives status from.
    pub gateway_status: watch::Receiver<GatewayStatusInput>,
}

/// One pass of the controller loop, kept apart so a benchmark drives exactly what the
/// controller runs: snapshot the caches, fingerprint them, and when routing inputs changed
/// translate and publish; then refresh the Events' and the status writer's inputs.
pub struct Reconciler {
    defaults: Defaults,
    publisher: Publisher,
    published: Option<u64>,
    /// The inputs the named Secret watches were last chosen from.
    followed: Option<(u64, u64)>,
    /// The first notAfter (Unix seconds) of the Secret certificates published: translate again
    /// once it has passed, so an expired certificate is reported and replaced by the default
    /// even when nothing else changes.
    next_expiry: Option<i64>,
    /// Routes of earlier passes, reused where their inputs did not change.
    routes: RouteCache,
    /// The status writer's input was computed at this revision.
    status_revision: Option<(u64, u64)>,
    warnings: Vec<Warning>,
    reports_stale: bool,
    reports: watch::Sender<Arc<Vec<Report>>>,
    status: watch::Sender<StatusInput>,
    /// The Gateway API status writer's input was computed at this revision.
    gateway_revision: Option<u64>,
    gateway_status: watch::Sender<GatewayStatusInput>,
    targets: watch::Sender<Arc<BTreeSet<ExternalTarget>>>,
    unresolved: watch::Receiver<Arc<Vec<Warning>>>,
}

impl Reconciler {
    pub fn new(defaults: Defaults, publisher: Publisher) -> (Self, Outputs) {
        let (reports, reports_rx) = watch::channel(Arc::new(Vec::new()));
        let (status, status_rx) = watch::channel(StatusInput::default());
        let (targets, targets_rx) = watch::channel(Arc::new(BTreeSet::new()));
        let (unresolved_tx, unresolved) = watch::channel(Arc::new(Vec::new()));
        let (gateway_status, gateway_status_rx) = watch::channel(GatewayStatusInput::default());
        let reconciler = Self {
            defaults,
            publisher,
            published: None,
            followed: None,
            next_expiry: None,
            routes: RouteCache::default(),
            status_revision: None,
            warnings: Vec::new(),
            reports_stale: true,
            reports,
            status,
            gateway_revision: None,
            gateway_status,
            targets,
            unresolved,
        };
        let outputs = Outputs {
            reports: reports_rx,
            status: status_rx,
            targets: targets_rx,
            unresolved: unresolved_tx,
            gateway_status: gateway_status_rx,
        };
        (reconciler, outputs)
    }

    /// One pass without Secrets (no certificates, CA Secrets not read); true when a new
    /// table was published.
    pub fn reconcile(&mut self, caches: &Caches) -> bool {
        self.pass(caches, None)
    }

    /// One pass of cluster mode: routes and certificates from the caches and the Secrets.
    pub fn reconcile_with_secrets(&mut self, caches: &Caches, secrets: &mut SecretWatches) -> bool {
        self.pass(caches, Some(secrets))
    }

    /// When the next pass is due without any change: just after the first certificate in use
    /// expires.
    pub fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let secs = self.next_expiry?.saturating_sub(crate::tls::unix_now()).saturating_add(1).max(1);
        Some(tokio::time::Instant::now() + Duration::from_secs(secs.unsigned_abs()))
    }

    fn pass(&mut self, caches: &Caches, mut secrets: Option<&mut SecretWatches>) -> bool {
        let mut fp = caches.fingerprint();
        let mut waiting = false;
        if let Some(s) = secrets.as_deref_mut() {
            let inputs = (fp, s.tls_fingerprint());
            if self.followed != Some(inputs) {
                s.follow(&caches.snapshot(), &self.defaults);
                self.followed = Some(inputs);
            }
            waiting = s.waiting_until().is_some();
            let mut h = DefaultHasher::new();
            (fp, s.fingerprint()).hash(&mut h);
            fp = h.finish();
        }
        let expired = self.next_expiry.is_some_and(|at| crate::tls::unix_now() > at);
        let publish = (self.published != Some(fp) || expired) && !waiting;
        if publish {
            let snapshot = caches.snapshot();
            let (table, certs, warnings) = match secrets.as_deref() {
                Some(s) => {
                    let all = s.secrets();
                    let previous = self.publisher.current_certs();
                    let inputs = TlsInputs {
                        secrets: all.iter().map(AsRef::as_ref).collect(),
                        defaults: s.tls_defaults(),
                        previous: &previous,
                        now: crate::tls::unix_now(),
                    };
                    let (table, certs, warnings) =
                        translate::translate_all_cached(&snapshot, &inputs, &self.defaults, &mut self.routes);
                    (table, Some(certs), warnings)
                }
                None => {
                    let (table, warnings) = translate::translate_cached(&snapshot, &self.defaults, &mut self.routes);
                    (table, None, warnings)
                }
            };
            self.targets.send_if_modified(|old| {
                let now = external_targets(&table);
                let differs = **old != now;
                *old = Arc::new(now);
                differs
            });
            match certs {
                Some(certs) => {
                    let now = crate::tls::unix_now();
                    self.next_expiry = certs.certificates().map(|e| e.info.not_after).filter(|t| *t >= now).min();
                    self.publisher.publish_all(table, certs, &warnings)
                }
                None => self.publisher.publish(table, &warnings),
            };
            // The objects the warnings name may have been re-created (new uids): refresh.
            self.reports_stale |= !warnings.is_empty() || warnings != self.warnings;
            self.warnings = warnings;
            self.published = Some(fp);
        }
        if self.reports_stale {
            let unresolved = self.unresolved.borrow_and_update().clone();
            let reports: Vec<Report> = self
                .warnings
                .iter()
                .chain(unresolved.iter())
                .map(|w| {
                    let secret = (w.object.kind == "Secret")
                        .then(|| {
                            secrets.as_deref().and_then(|s| s.object_reference(&w.object.namespace, &w.object.name))
                        })
                        .flatten();
                    let regarding = secret.unwrap_or_else(|| caches.object_reference(&w.object));
                    Report { regarding, warning: w.clone() }
                })
                .collect();
            self.reports.send_replace(Arc::new(reports));
            self.reports_stale = false;
        }
        let revision = caches.status_revision();
        if self.status_revision != Some(revision) {
            let input = status_input(&caches.ingresses.state(), &caches.ingress_classes.state(), &self.defaults);
            self.status.send_if_modified(|old| {
                let differs = *old != input;
                *old = input;
                differs
            });
            self.status_revision = Some(revision);
        }
        let gateway = caches.gateway_revision();
        if gateway.is_some() && self.gateway_revision != gateway {
            self.gateway_status.send_replace(GatewayStatusInput(Arc::new(caches.snapshot())));
            self.gateway_revision = gateway;
        }
        publish
    }
}

/// The four watched kinds: namespaced kinds in each of `namespaces` (all when empty).
fn watch_caches(
    watches: &mut Watches<'_>,
    client: &kube::Client,
    namespaces: &[String],
    changed: &Arc<Notify>,
) -> Caches {
    let all = watcher::Config::default();
    let cluster = vec![(String::new(), Api::all(client.clone()))];
    Caches {
        ingresses: watches.reflect(
            "Ingress",
            namespaced_apis(client, namespaces),
            all.clone(),
            ingress_version,
            changed,
        ),
        services: watches.reflect(
            "Service",
            namespaced_apis(client, namespaces),
            all.clone(),
            resource_version,
            changed,
        ),
        endpoint_slices: watches.reflect(
            "EndpointSlice",
            namespaced_apis(client, namespaces),
            all.clone(),
            resource_version,
            changed,
        ),
        ingress_classes: watches.reflect("IngressClass", cluster, all, resource_version, changed),
        gateway: None,
    }
}

/// What translation reads of an Ingress: its generation (spec changes) and annotations, not
/// its resourceVersion, so status updates (ours included) do not translate again. Without a
/// generation (not from an API server), its resourceVersion.
pub fn ingress_version(i: &Ingress) -> u64 {
    let m = &i.metadata;
    let mut h = DefaultHasher::new();
    m.uid.hash(&mut h);
    match m.generation {
        Some(g) => (g, &m.annotations).hash(&mut h),
        None => m.resource_version.hash(&mut h),
    }
    h.finish()
}

/// The first look for the Gateway API CRDs (bounded, so a hanging API server does not hold
/// the start): logs one line when they are missing. A failed look counts as "not yet".
async fn first_discovery(client: &kube::Client, config: &KubeConfig) -> Installed {
    const LIMIT: Duration = Duration::from_secs(5);
    let recheck = config.gateway_api.recheck;
    let found = match tokio::time::timeout(LIMIT, gateway_watch::discover(client)).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, recheck_s = recheck.as_secs_f64(), "Gateway API discovery failed; looking again later");
            return Installed::default();
        }
        Err(_) => {
            tracing::warn!(recheck_s = recheck.as_secs_f64(), "Gateway API discovery timed out; looking again later");
            return Installed::default();
        }
    };
    if !found.routes {
        tracing::info!(
            recheck_s = recheck.as_secs_f64(),
            "Gateway API CRDs (gateway.networking.k8s.io/v1) are not installed: serving Ingress only, looking again every --gateway-api-recheck"
        );
    } else if !found.reference_grants {
        tracing::info!(
            "ReferenceGrant CRD (gateway.networking.k8s.io/v1beta1) is not installed: cross-namespace references are refused"
        );
    }
    found
}

/// The Ingresses we serve, with their versions: the status writer's input.
fn status_input(ingresses: &[Arc<Ingress>], classes: &[Arc<IngressClass>], defaults: &Defaults) -> StatusInput {
    let served = ServedClasses::new(classes, defaults);
    StatusInput::new(ingresses.iter().filter(|i| served.serves(i)).cloned().collect())
}

/// An ExternalName Service's DNS name a route connects to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExternalTarget {
    service: ObjectRef,
    host: String,
    port: u16,
}

/// Every ExternalName target of the table, with the Service it comes from (the route's
/// namespace and its backend's Service name).
fn external_targets(table: &RouteTable) -> BTreeSet<ExternalTarget> {
    let mut out = BTreeSet::new();
    for route in table.routes() {
        // An ExternalName backend is always its pool's one endpoint.
        let [ep] = route.pool.endpoints() else { continue };
        let namespace = route.id.split('/').next().unwrap_or_default();
        let service = route.backend.split(':').next().unwrap_or_default();
        {
            if let Some(host) = &ep.hostname {
                out.insert(ExternalTarget {
                    service: ObjectRef { kind: "Service".into(), namespace: namespace.into(), name: service.into() },
                    host: host.to_string(),
                    port: ep.addr.port(),
                });
            }
        }
    }
    out
}

/// Resolve each ExternalName target when the set changes and every `every`; publish a
/// warning for each that does not resolve (connections to it fail until it does).
async fn check_external_names(
    mut targets: watch::Receiver<Arc<BTreeSet<ExternalTarget>>>,
    unresolved: watch::Sender<Arc<Vec<Warning>>>,
    every: Duration,
    stop: CancellationToken,
) {
    const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
    loop {
        let now = targets.borrow_and_update().clone();
        let mut found = Vec::new();
        let mut results: HashMap<(&str, u16), Option<String>> = HashMap::new();
        for t in now.iter() {
            let problem = match results.get(&(t.host.as_str(), t.port)) {
                Some(known) => known.clone(),
                None => {
                    let lookup = tokio::net::lookup_host((t.host.as_str(), t.port));
                    let problem = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                        Ok(Ok(addrs)) => (addrs.count() == 0).then(|| "resolves to no address".to_string()),
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!("no answer within {LOOKUP_TIMEOUT:?}")),
                    };
                    results.insert((t.host.as_str(), t.port), problem.clone());
                    problem
                }
            };
            if let Some(why) = problem {
                found.push(Warning {
                    object: t.service.clone(),
                    field: "spec.externalName".into(),
                    value: t.host.clone(),
                    reason: format!(
                        "`{}` does not resolve ({why}); connections to it fail with 502 until it does",
                        t.host
                    ),
                    event_reason: reasons::EXTERNAL_NAME_UNRESOLVABLE,
                });
            }
        }
        translate::sort_warnings(&mut found);
        unresolved.send_if_modified(|old| {
            let differs = **old != found;
            *old = Arc::new(found);
            differs
        });
        tokio::select! {
            r = targets.changed() => if r.is_err() { return },
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::watch::TrackedWriter;
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
    use kube::api::ObjectMeta;

    fn ingress(name: &str) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some("1".into()),
                generation: Some(1),
                ..ObjectMeta::default()
            },
            ..Ingress::default()
        }
    }

    fn caches_with(ingresses: Vec<Ingress>) -> (Caches, TrackedWriter<Ingress>, TrackedWriter<Service>) {
        let (is, ifp, mut iw) = TrackedWriter::new(ingress_version);
        let (ss, sfp, mut sw) = TrackedWriter::new(resource_version);
        let (es, efp, mut ew) = TrackedWriter::<EndpointSlice>::new(resource_version);
        let (cs, cfp, mut cw) = TrackedWriter::<IngressClass>::new(resource_version);
        iw.apply(&watcher::Event::Init);
        for i in ingresses {
            iw.apply(&watcher::Event::InitApply(i));
        }
        iw.apply(&watcher::Event::InitDone);
        sw.apply(&watcher::Event::Init);
        sw.apply(&watcher::Event::InitDone);
        ew.apply(&watcher::Event::Init);
        ew.apply(&watcher::Event::InitDone);
        cw.apply(&watcher::Event::Init);
        cw.apply(&watcher::Event::InitDone);
        let caches = Caches {
            ingresses: Reflected::from_parts(vec![(is, ifp)]),
            services: Reflected::from_parts(vec![(ss, sfp)]),
            endpoint_slices: Reflected::from_parts(vec![(es, efp)]),
            ingress_classes: Reflected::from_parts(vec![(cs, cfp)]),
            gateway: None,
        };
        (caches, iw, sw)
    }

    #[test]
    fn the_fingerprint_ignores_ingress_status_only() {
        let (caches, mut ingresses, mut services) = caches_with(vec![ingress("chat"), ingress("feed")]);
        let start = caches.fingerprint();
        let revision = caches.status_revision();
        // A status write: new resourceVersion, same generation.
        let mut chat = ingress("chat");
        chat.metadata.resource_version = Some("7".into());
        chat.status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(vec![IngressLoadBalancerIngress {
                    ip: Some("10.0.0.1".into()),
                    ..IngressLoadBalancerIngress::default()
                }]),
            }),
        });
        ingresses.apply(&watcher::Event::Apply(chat.clone()));
        assert_eq!(caches.fingerprint(), start, "no routing input changed");
        assert_ne!(caches.status_revision(), revision, "but the status writer looks again");
        // A spec change bumps the generation; an annotation does not, but is read.
        chat.metadata.generation = Some(2);
        ingresses.apply(&watcher::Event::Apply(chat.clone()));
        let spec_changed = caches.fingerprint();
        assert_ne!(spec_changed, start);
        chat.metadata.annotations.get_or_insert_default().insert("wsingress.io/idle-timeout".into(), "5m".into());
        ingresses.apply(&watcher::Event::Apply(chat));
        assert_ne!(caches.fingerprint(), spec_changed);
        // Any other kind: its resourceVersion.
        let before = caches.fingerprint();
        let svc = Service {
            metadata: ObjectMeta {
                name: Some("chat".into()),
                namespace: Some("apps".into()),
                uid: Some("u".into()),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        services.apply(&watcher::Event::Apply(svc));
        assert_ne!(caches.fingerprint(), before);
    }

    #[test]
    fn status_input_covers_only_served_ingresses() {
        let mut ours = ingress("chat");
        ours.spec = Some(k8s_openapi::api::networking::v1::IngressSpec {
            ingress_class_name: Some("wsingress".into()),
            ..Default::default()
        });
        let mut theirs = ingress("other");
        theirs.spec = Some(k8s_openapi::api::networking::v1::IngressSpec {
            ingress_class_name: Some("nginx".into()),
            ..Default::default()
        });
        let d = Defaults::default();
        let ours = Arc::new(ours);
        let input = |ings: Vec<Arc<Ingress>>| status_input(&ings, &[], &d);
        let before = input(vec![ours.clone(), Arc::new(theirs.clone())]);
        assert_eq!(before.served.len(), 1);
        assert!(Arc::ptr_eq(&before.served[0], &ours));
        theirs.metadata.resource_version = Some("9".into());
        let after = input(vec![ours.clone(), Arc::new(theirs)]);
        assert_eq!(before, after, "another controller's Ingress changing triggers no status pass");
        let mut changed = Ingress::clone(&ours);
        changed.metadata.resource_version = Some("9".into());
        assert_ne!(before, input(vec![Arc::new(changed)]), "ours changing does");
    }
}
