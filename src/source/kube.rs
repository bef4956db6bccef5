//! Cluster mode: kube-runtime reflectors on Ingress, Service, EndpointSlice (all namespaces or
//! `--watch-namespace`) and IngressClass; after the first complete sync of all four, every
//! change is debounced, translated (the same pure `translate` as the file source) and
//! published. Watch errors, 410 Gone and API outages back off and re-list inside the
//! reflectors while the last good table keeps serving. Also spawns leader election, the
//! Ingress status writer and the Event poster (leader only).
//!
//! ```text
//!  watcher+reflector ×4 ──notify──> debounce ──> snapshot ──> translate ──> Publisher
//!                                                      │            └─warnings─> events (leader)
//!                                                      └─served Ingresses─────> status (leader)
//! ```

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use super::events::{self, Report};
use super::leader::{self, ElectionConfig};
use super::status::{self, IngressKey, StatusConfig, StatusInput};
use crate::translate::{self, ClusterSnapshot, Defaults, ObjectRef};

/// Annotation kubectl leaves on applied objects: large and never read, so not cached.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("the {0} reflector stopped before its first complete sync")]
    SyncAborted(&'static str),
}

/// How watches back off after an error: exponential from `initial`, doubling up to `max`,
/// with up to 25% jitter; reset by the next successful event. kube-runtime's default is
/// 0.8 s to 30 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchBackoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(800), max: Duration::from_secs(30) }
    }
}

struct BackoffState {
    config: WatchBackoff,
    next: Duration,
}

impl Iterator for BackoffState {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next.min(self.config.max);
        self.next = (base * 2).min(self.config.max);
        // Jitter without a random source: the clock's sub-second nanos are unpredictable enough
        // to keep replicas from retrying in lock step.
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 4000.0);
        Some(base + jitter)
    }
}

impl Backoff for BackoffState {
    fn reset(&mut self) {
        self.next = self.config.initial;
    }
}

impl WatchBackoff {
    fn start(self) -> BackoffState {
        BackoffState { config: self, next: self.initial }
    }
}

/// Everything cluster mode needs besides the client.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Watch only this namespace (Ingress, Service, EndpointSlice); IngressClass is cluster-scoped.
    pub watch_namespace: Option<String>,
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
}

impl KubeConfig {
    pub fn new(defaults: Defaults) -> Self {
        Self {
            watch_namespace: None,
            defaults,
            debounce: Duration::from_millis(200),
            backoff: WatchBackoff::default(),
            page_size: 500,
            status: None,
            election: None,
            identity: "wsingress".to_string(),
        }
    }
}

/// Run cluster mode until `shutdown`.
pub async fn run(
    client: kube::Client,
    config: KubeConfig,
    publisher: Publisher,
    shutdown: CancellationToken,
) -> Result<(), KubeError> {
    KubeSource::new(client, config).run(publisher, shutdown).await
}

/// The reflector stores translation reads.
#[derive(Clone)]
struct Stores {
    ingresses: Store<Ingress>,
    services: Store<Service>,
    endpoint_slices: Store<EndpointSlice>,
    ingress_classes: Store<IngressClass>,
}

impl Stores {
    fn snapshot(&self) -> ClusterSnapshot {
        fn owned<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
            v.iter().map(|k| K::clone(k)).collect()
        }
        ClusterSnapshot {
            ingresses: owned(self.ingresses.state()),
            services: owned(self.services.state()),
            endpoint_slices: owned(self.endpoint_slices.state()),
            ingress_classes: owned(self.ingress_classes.state()),
        }
    }

    async fn wait_synced(&self) -> Result<(), KubeError> {
        let (a, b, c, d) = tokio::join!(
            self.ingresses.wait_until_ready(),
            self.services.wait_until_ready(),
            self.endpoint_slices.wait_until_ready(),
            self.ingress_classes.wait_until_ready(),
        );
        a.map_err(|_| KubeError::SyncAborted("Ingress"))?;
        b.map_err(|_| KubeError::SyncAborted("Service"))?;
        c.map_err(|_| KubeError::SyncAborted("EndpointSlice"))?;
        d.map_err(|_| KubeError::SyncAborted("IngressClass"))?;
        Ok(())
    }
}

/// The controller: reflectors, debounce loop, and the leader-only writers.
pub struct KubeSource {
    client: kube::Client,
    config: KubeConfig,
}

impl KubeSource {
    pub fn new(client: kube::Client, config: KubeConfig) -> Self {
        Self { client, config }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.config.watch_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    pub async fn run(self, publisher: Publisher, shutdown: CancellationToken) -> Result<(), KubeError> {
        let changed = Arc::new(Notify::new());
        let backoff = self.config.backoff;
        let page_size = self.config.page_size;
        // Dropping the set (also when this future is dropped) aborts every task.
        let mut tasks = JoinSet::new();
        let children = shutdown.child_token();

        let stores = Stores {
            ingresses: spawn_reflector(
                &mut tasks,
                self.api::<Ingress>(),
                "Ingress",
                (backoff, page_size),
                &changed,
                &children,
            ),
            services: spawn_reflector(
                &mut tasks,
                self.api::<Service>(),
                "Service",
                (backoff, page_size),
                &changed,
                &children,
            ),
            endpoint_slices: spawn_reflector(
                &mut tasks,
                self.api::<EndpointSlice>(),
                "EndpointSlice",
                (backoff, page_size),
                &changed,
                &children,
            ),
            ingress_classes: spawn_reflector(
                &mut tasks,
                Api::<IngressClass>::all(self.client.clone()),
                "IngressClass",
                (backoff, page_size),
                &changed,
                &children,
            ),
        };

        let (leader_tx, leader_rx) = watch::channel(self.config.election.is_none());
        if let Some(election) = self.config.election.clone() {
            tasks.spawn(leader::run(self.client.clone(), election, leader_tx, children.clone()));
        }
        let (reports_tx, reports_rx) = watch::channel(Arc::new(Vec::<Report>::new()));
        tasks.spawn(events::run(
            self.client.clone(),
            self.config.identity.clone(),
            reports_rx,
            leader_rx.clone(),
            backoff.max,
            children.clone(),
        ));
        let (status_tx, status_rx) = watch::channel(StatusInput::default());
        if let Some(status_config) = self.config.status.clone() {
            tasks.spawn(status::run(
                self.client.clone(),
                status_config,
                stores.ingresses.clone(),
                status_rx,
                leader_rx,
                children.clone(),
            ));
        }

        tokio::select! {
            r = stores.wait_synced() => r?,
            () = shutdown.cancelled() => return Ok(()),
        }
        tracing::info!(
            namespace = self.config.watch_namespace.as_deref().unwrap_or("(all)"),
            ingresses = stores.ingresses.len(),
            services = stores.services.len(),
            endpoint_slices = stores.endpoint_slices.len(),
            ingress_classes = stores.ingress_classes.len(),
            "initial sync complete"
        );

        let mut published: Option<u64> = None;
        loop {
            let snapshot = stores.snapshot();
            let fingerprint = fingerprint(&snapshot);
            if published != Some(fingerprint) {
                let (table, warnings) = translate::translate(&snapshot, &self.config.defaults);
                publisher.publish(table, &warnings);
                let reports = warnings
                    .into_iter()
                    .map(|w| Report { regarding: object_reference(&snapshot, &w.object), warning: w })
                    .collect();
                reports_tx.send_replace(Arc::new(reports));
                published = Some(fingerprint);
            }
            let input = StatusInput {
                served: served_ingresses(&snapshot, &self.config.defaults),
                statuses: status_fingerprint(&snapshot),
            };
            status_tx.send_if_modified(|old| {
                let differs = *old != input;
                *old = input;
                differs
            });

            tokio::select! {
                () = changed.notified() => {}
                () = shutdown.cancelled() => break,
            }
            // Coalesce a burst of changes into one translation.
            tokio::select! {
                () = tokio::time::sleep(self.config.debounce) => {}
                () = shutdown.cancelled() => break,
            }
        }
        // Let the elector release the Lease (bounded inside) before the tasks are dropped.
        children.cancel();
        let wait_all = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(3), wait_all).await;
        Ok(())
    }
}

/// Start a watcher + reflector for `K`; returns its store. Each applied/deleted object and each
/// completed (re-)list wakes the debounce loop.
fn spawn_reflector<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    kind: &'static str,
    (backoff, page_size): (WatchBackoff, u32),
    changed: &Arc<Notify>,
    stop: &CancellationToken,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let changed = changed.clone();
    let stop = stop.clone();
    tasks.spawn(async move {
        let stream = watcher(api, watcher::Config::default().page_size(page_size))
            .modify(|o: &mut K| {
                o.managed_fields_mut().clear();
                o.annotations_mut().remove(LAST_APPLIED);
            })
            .backoff(backoff.start());
        let mut stream = pin!(reflector::reflector(writer, stream));
        let mut failing = false;
        loop {
            let event = tokio::select! {
                e = stream.next() => e,
                () = stop.cancelled() => return,
            };
            let Some(event) = event else { return };
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changed.notify_one(),
                Ok(watcher::Event::InitDone) => {
                    if failing {
                        tracing::info!(kind, "watch recovered (re-listed)");
                        failing = false;
                    }
                    changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => {
                    failing = true;
                    tracing::warn!(
                        kind,
                        error = %e,
                        "watch failed; backing off and retrying (the last good routes keep serving)"
                    );
                }
            }
        }
    });
    store
}

/// A hash of what translation reads: objects without resourceVersion, managed fields or
/// Ingress status, in a stable order. Equal fingerprints translate to the same table, so
/// status writes and no-op resyncs do not publish again.
fn fingerprint(s: &ClusterSnapshot) -> u64 {
    fn add<K: Serialize + ResourceExt>(h: &mut DefaultHasher, items: &[K], strip: impl Fn(&mut serde_json::Value)) {
        let mut values: Vec<(String, String, Vec<u8>)> = items
            .iter()
            .map(|k| {
                let mut v = serde_json::to_value(k).unwrap_or_default();
                if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    meta.remove("resourceVersion");
                    meta.remove("managedFields");
                    meta.remove("generation");
                }
                strip(&mut v);
                let bytes = serde_json::to_vec(&v).unwrap_or_default();
                (k.namespace().unwrap_or_default(), k.name_any(), bytes)
            })
            .collect();
        values.sort();
        values.len().hash(h);
        values.hash(h);
    }
    let mut h = DefaultHasher::new();
    add(&mut h, &s.ingresses, |v| {
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
    });
    add(&mut h, &s.services, |_| {});
    add(&mut h, &s.endpoint_slices, |_| {});
    add(&mut h, &s.ingress_classes, |_| {});
    h.finish()
}

fn status_fingerprint(s: &ClusterSnapshot) -> u64 {
    let mut items: Vec<(String, String, String)> = s
        .ingresses
        .iter()
        .map(|i| {
            (i.namespace().unwrap_or_default(), i.name_any(), serde_json::to_string(&i.status).unwrap_or_default())
        })
        .collect();
    items.sort();
    let mut h = DefaultHasher::new();
    items.hash(&mut h);
    h.finish()
}

/// The Ingresses this controller serves (class filtering is translation's).
fn served_ingresses(s: &ClusterSnapshot, defaults: &Defaults) -> BTreeSet<IngressKey> {
    translate::served_ingresses(s, defaults).into_iter().map(|o| (o.namespace, o.name)).collect()
}

/// The full reference of the object a warning names (uid and apiVersion when it is in the
/// snapshot), for the Event's `regarding`.
fn object_reference(s: &ClusterSnapshot, o: &ObjectRef) -> ObjectReference {
    fn find<K: Resource<DynamicType = ()> + ResourceExt>(items: &[K], o: &ObjectRef) -> Option<ObjectReference> {
        items
            .iter()
            .find(|k| k.name_any() == o.name && k.namespace().unwrap_or_default() == o.namespace)
            .map(|k| k.object_ref(&()))
    }
    let found = match o.kind.as_str() {
        "Ingress" => find(&s.ingresses, o),
        "Service" => find(&s.services, o),
        "EndpointSlice" => find(&s.endpoint_slices, o),
        "IngressClass" => find(&s.ingress_classes, o),
        _ => None,
    };
    found.unwrap_or_else(|| ObjectReference {
        kind: Some(o.kind.clone()),
        namespace: (!o.namespace.is_empty()).then(|| o.namespace.clone()),
        name: Some(o.name.clone()),
        ..ObjectReference::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::networking::v1::{IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus};
    use kube::api::ObjectMeta;

    fn ingress(name: &str) -> Ingress {
        Ingress {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            ..Ingress::default()
        }
    }

    #[test]
    fn backoff_doubles_to_max_and_resets() {
        let mut b = WatchBackoff { initial: Duration::from_millis(100), max: Duration::from_millis(350) }.start();
        let d: Vec<Duration> = (0..4).map(|_| b.next().unwrap_or_default()).collect();
        let within =
            |d: Duration, base: u64| d >= Duration::from_millis(base) && d <= Duration::from_millis(base + base / 4);
        assert!(within(d[0], 100) && within(d[1], 200), "{d:?}");
        assert!(within(d[2], 350) && within(d[3], 350), "{d:?}");
        b.reset();
        assert!(within(b.next().unwrap_or_default(), 100));
    }

    #[test]
    fn fingerprint_ignores_status_and_versions_only() {
        let a = ClusterSnapshot { ingresses: vec![ingress("chat"), ingress("feed")], ..ClusterSnapshot::default() };
        let mut b = a.clone();
        b.ingresses.reverse();
        b.ingresses[0].metadata.resource_version = Some("7".into());
        b.ingresses[1].status = Some(IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(vec![IngressLoadBalancerIngress {
                    ip: Some("10.0.0.1".into()),
                    ..IngressLoadBalancerIngress::default()
                }]),
            }),
        });
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(status_fingerprint(&a), status_fingerprint(&b));
        b.ingresses[0]
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("wsingress.io/idle-timeout".into(), "5m".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn warnings_point_at_the_object_with_its_uid() {
        let s = ClusterSnapshot { ingresses: vec![ingress("chat")], ..ClusterSnapshot::default() };
        let r =
            object_reference(&s, &ObjectRef { kind: "Ingress".into(), namespace: "apps".into(), name: "chat".into() });
        assert_eq!(r.uid.as_deref(), Some("uid-chat"));
        assert_eq!(r.api_version.as_deref(), Some("networking.k8s.io/v1"));
        let missing =
            object_reference(&s, &ObjectRef { kind: "Service".into(), namespace: "apps".into(), name: "gone".into() });
        assert_eq!(missing.name.as_deref(), Some("gone"));
        assert!(missing.uid.is_none());
    }
}
