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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use kube::{Api, Resource};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use super::events::{self, EventLimits, Report, Reporter};
use super::leader::{self, ElectionConfig};
use super::status::{self, IngressKey, PublishFrom, PublishSource, StatusConfig, StatusInput};
pub use super::watch::WatchBackoff;
use super::watch::{Reflected, Watches};
use crate::readiness::Health;
use crate::routes::RouteTable;
use crate::translate::{self, ClusterSnapshot, Defaults, ObjectRef, Warning, reasons};

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
}

impl Caches {
    /// What translation reads now: the cached objects themselves, shared.
    pub fn snapshot(&self) -> ClusterSnapshot {
        ClusterSnapshot {
            ingresses: self.ingresses.state(),
            services: self.services.state(),
            endpoint_slices: self.endpoint_slices.state(),
            ingress_classes: self.ingress_classes.state(),
        }
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
            _ => None,
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
    let caches = watch_caches(&mut watches, &client, &config.watch_namespaces, &changed);
    let publish = config.status.as_ref().and_then(|s| match &s.publish {
        PublishFrom::Service { namespace, name } => {
            let changed = Arc::new(Notify::new());
            let api = Api::<Service>::namespaced(client.clone(), namespace);
            let selector = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let scope = format!("{namespace} (publish Service {name})");
            let service = watches.reflect("Service", vec![(scope, api)], selector, &changed);
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
    let (reports_tx, reports_rx) = watch::channel(Arc::new(Vec::<Report>::new()));
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
    let (status_tx, status_rx) = watch::channel(StatusInput::default());
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
    let (targets_tx, targets_rx) = watch::channel(Arc::new(BTreeSet::<ExternalTarget>::new()));
    let (unresolved_tx, mut unresolved_rx) = watch::channel(Arc::new(Vec::<Warning>::new()));
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
    tracing::info!(
        namespaces =
            if config.watch_namespaces.is_empty() { "(all)".to_string() } else { config.watch_namespaces.join(",") },
        ingresses = caches.ingresses.len(),
        services = caches.services.len(),
        endpoint_slices = caches.endpoint_slices.len(),
        ingress_classes = caches.ingress_classes.len(),
        "initial sync complete"
    );

    let mut published: Option<u64> = None;
    let mut warnings: Vec<Warning> = Vec::new();
    let mut reports_stale = true;
    loop {
        let snapshot = caches.snapshot();
        let fp = fingerprint(&snapshot);
        if published != Some(fp) {
            let (table, w) = translate::translate(&snapshot, &config.defaults);
            targets_tx.send_if_modified(|old| {
                let now = external_targets(&table);
                let differs = **old != now;
                *old = Arc::new(now);
                differs
            });
            publisher.publish(table, &w);
            warnings = w;
            published = Some(fp);
            reports_stale = true;
        }
        if reports_stale {
            let unresolved = unresolved_rx.borrow_and_update().clone();
            let reports: Vec<Report> = warnings
                .iter()
                .chain(unresolved.iter())
                .map(|w| Report { regarding: caches.object_reference(&w.object), warning: w.clone() })
                .collect();
            reports_tx.send_replace(Arc::new(reports));
            reports_stale = false;
        }
        let input = status_input(&snapshot, &config.defaults);
        status_tx.send_if_modified(|old| {
            let differs = *old != input;
            *old = input;
            differs
        });
        drop(snapshot);

        tokio::select! {
            () = changed.notified() => {}
            r = unresolved_rx.changed() => {
                if r.is_ok() {
                    reports_stale = true;
                }
                continue;
            }
            r = leader_rx.changed() => {
                if r.is_ok() {
                    metrics.controller_leader.set(i64::from(*leader_rx.borrow_and_update()));
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

/// The four watched kinds: namespaced kinds in each of `namespaces` (all when empty).
fn watch_caches(
    watches: &mut Watches<'_>,
    client: &kube::Client,
    namespaces: &[String],
    changed: &Arc<Notify>,
) -> Caches {
    fn apis<K>(client: &kube::Client, namespaces: &[String]) -> Vec<(String, Api<K>)>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        if namespaces.is_empty() {
            return vec![(String::new(), Api::all(client.clone()))];
        }
        namespaces.iter().map(|ns| (ns.clone(), Api::namespaced(client.clone(), ns))).collect()
    }
    let all = watcher::Config::default();
    Caches {
        ingresses: watches.reflect("Ingress", apis(client, namespaces), all.clone(), changed),
        services: watches.reflect("Service", apis(client, namespaces), all.clone(), changed),
        endpoint_slices: watches.reflect("EndpointSlice", apis(client, namespaces), all.clone(), changed),
        ingress_classes: watches.reflect("IngressClass", vec![(String::new(), Api::all(client.clone()))], all, changed),
    }
}

/// A hash of what translation reads, without reading it: uid and resourceVersion per object
/// (for an Ingress its generation and annotations instead, so status writes do not count),
/// combined so that order does not matter. Equal fingerprints translate to the same table.
pub fn fingerprint(s: &ClusterSnapshot) -> u64 {
    fn one(tag: u8, meta: &ObjectMeta, version: &dyn Fn(&mut DefaultHasher)) -> u64 {
        let mut h = DefaultHasher::new();
        tag.hash(&mut h);
        meta.uid.hash(&mut h);
        meta.namespace.hash(&mut h);
        meta.name.hash(&mut h);
        version(&mut h);
        h.finish()
    }
    let rv = |meta: &ObjectMeta| {
        let rv = meta.resource_version.clone();
        move |h: &mut DefaultHasher| rv.hash(h)
    };
    let mut total: u64 = 0;
    let mut add = |v: u64| total = total.wrapping_add(v);
    for i in &s.ingresses {
        let m = &i.metadata;
        add(one(0, m, &|h| match m.generation {
            Some(g) => {
                g.hash(h);
                m.annotations.hash(h);
            }
            None => m.resource_version.hash(h),
        }));
    }
    for o in &s.services {
        add(one(1, &o.metadata, &rv(&o.metadata)));
    }
    for o in &s.endpoint_slices {
        add(one(2, &o.metadata, &rv(&o.metadata)));
    }
    for o in &s.ingress_classes {
        add(one(3, &o.metadata, &rv(&o.metadata)));
    }
    let mut h = DefaultHasher::new();
    (total, s.ingresses.len(), s.services.len(), s.endpoint_slices.len(), s.ingress_classes.len()).hash(&mut h);
    h.finish()
}

/// The Ingresses we serve, with their versions: the status writer's input.
fn status_input(s: &ClusterSnapshot, defaults: &Defaults) -> StatusInput {
    let keys: BTreeSet<IngressKey> =
        translate::served_ingresses(s, defaults).into_iter().map(|o| (o.namespace, o.name)).collect();
    let served = s
        .ingresses
        .iter()
        .filter_map(|i| {
            let key = (i.metadata.namespace.clone().unwrap_or_default(), i.metadata.name.clone().unwrap_or_default());
            keys.contains(&key).then(|| (key, i.metadata.resource_version.clone()))
        })
        .collect();
    StatusInput { served }
}

/// An ExternalName Service's DNS name a route connects to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ExternalTarget {
    service: ObjectRef,
    host: String,
    port: u16,
}

/// Every ExternalName target of the table, with the Service it comes from (the route's
/// namespace and its backend's Service name).
fn external_targets(table: &RouteTable) -> BTreeSet<ExternalTarget> {
    let mut out = BTreeSet::new();
    for route in table.routes() {
        let namespace = route.id.split('/').next().unwrap_or_default();
        let service = route.backend.split(':').next().unwrap_or_default();
        for ep in route.pool.endpoints() {
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
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

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

    fn snapshot(ingresses: Vec<Ingress>, services: Vec<Service>) -> ClusterSnapshot {
        ClusterSnapshot {
            ingresses: ingresses.into_iter().map(Arc::new).collect(),
            services: services.into_iter().map(Arc::new).collect(),
            ..ClusterSnapshot::default()
        }
    }

    #[test]
    fn fingerprint_ignores_order_and_ingress_status_only() {
        let a = snapshot(vec![ingress("chat"), ingress("feed")], vec![]);
        let mut ings = vec![ingress("feed"), ingress("chat")];
        // A status write: new resourceVersion, same generation.
        ings[0].metadata.resource_version = Some("7".into());
        ings[0].status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(vec![IngressLoadBalancerIngress {
                    ip: Some("10.0.0.1".into()),
                    ..IngressLoadBalancerIngress::default()
                }]),
            }),
        });
        let b = snapshot(ings.clone(), vec![]);
        assert_eq!(fingerprint(&a), fingerprint(&b));
        // A spec change bumps the generation; an annotation does not, but is read.
        ings[0].metadata.generation = Some(2);
        assert_ne!(fingerprint(&a), fingerprint(&snapshot(ings.clone(), vec![])));
        ings[0].metadata.generation = Some(1);
        ings[0].metadata.annotations.get_or_insert_default().insert("wsingress.io/idle-timeout".into(), "5m".into());
        assert_ne!(fingerprint(&a), fingerprint(&snapshot(ings, vec![])));
        // Any other kind: its resourceVersion.
        let svc = |rv: &str| Service {
            metadata: ObjectMeta {
                name: Some("chat".into()),
                uid: Some("u".into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        let c = snapshot(vec![ingress("chat")], vec![svc("1")]);
        assert_ne!(fingerprint(&c), fingerprint(&snapshot(vec![ingress("chat")], vec![svc("2")])));
        // Moving an object between kinds is a change, too.
        assert_ne!(fingerprint(&snapshot(vec![], vec![svc("1")])), fingerprint(&snapshot(vec![], vec![])));
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
        let before = status_input(&snapshot(vec![ours.clone(), theirs.clone()], vec![]), &d);
        let key = ("apps".to_string(), "chat".to_string());
        assert_eq!(before.served, BTreeMap::from([(key.clone(), Some("1".to_string()))]));
        theirs.metadata.resource_version = Some("9".into());
        let after = status_input(&snapshot(vec![ours.clone(), theirs], vec![]), &d);
        assert_eq!(before, after, "another controller's Ingress changing triggers no status pass");
        ours.metadata.resource_version = Some("9".into());
        let after = status_input(&snapshot(vec![ours], vec![]), &d);
        assert_eq!(after.served.get(&key), Some(&Some("9".to_string())));
    }
}
