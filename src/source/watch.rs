//! The controller's caches: one generic helper ([`Watches::reflect`]) runs a kube-runtime
//! watcher + reflector for a kind in each watched namespace (or cluster-wide), paged lists,
//! retries with backoff, counts errors and sync times in metrics, keeps each cache's
//! [`Fingerprint`] (uid + resourceVersion per object, or what the kind's [`VersionOf`] reads)
//! up to date event by event, wakes the controller loop on every change, and runs under
//! [`Health`] supervision so a watcher that dies fails `/healthz`. Adding a watched kind
//! (Gateway API, Secrets) is one `reflect` call.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::readiness::Health;

/// Annotation kubectl leaves on applied objects: large and never read, so not cached.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

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

/// How an object's version is read for the fingerprint: a hash of what translation reads.
pub type VersionOf<K> = fn(&K) -> u64;

/// The version of most objects: uid and resourceVersion.
pub fn resource_version<K: Resource>(o: &K) -> u64 {
    let m = o.meta();
    let mut h = DefaultHasher::new();
    (&m.uid, &m.resource_version).hash(&mut h);
    h.finish()
}

/// An object's identity in the fingerprint: namespace and name.
fn identity<K: Resource>(o: &K) -> u64 {
    let m = o.meta();
    let mut h = DefaultHasher::new();
    (&m.namespace, &m.name).hash(&mut h);
    h.finish()
}

/// A cache's fingerprints, kept up to date event by event: each is the sum of one hash per
/// object, so whether anything changed is two loads, whatever the cache's size.
#[derive(Debug, Default)]
pub struct Fingerprint {
    /// Over [`VersionOf`]: what translation reads.
    routing: AtomicU64,
    /// Over uid and resourceVersion: any change at all (status updates included).
    revision: AtomicU64,
    /// The first list completed.
    synced: AtomicBool,
}

/// One object's two hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hashes {
    routing: u64,
    revision: u64,
}

impl Hashes {
    fn add(self, other: Self) -> Self {
        Self { routing: self.routing.wrapping_add(other.routing), revision: self.revision.wrapping_add(other.revision) }
    }
    fn sub(self, other: Self) -> Self {
        Self { routing: self.routing.wrapping_sub(other.routing), revision: self.revision.wrapping_sub(other.revision) }
    }
}

/// A reflector store's writer that also keeps the store's [`Fingerprint`]: the watch task
/// feeds it every event (and a benchmark can feed it directly, as the watch would).
pub struct TrackedWriter<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: reflector::store::Writer<K>,
    version: VersionOf<K>,
    /// Per object (by identity): its hashes as last applied.
    objects: HashMap<u64, Hashes>,
    /// A re-list in progress.
    relist: Option<HashMap<u64, Hashes>>,
    sum: Hashes,
    shared: Arc<Fingerprint>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> TrackedWriter<K> {
    /// A store, its fingerprint and the writer feeding both.
    pub fn new(version: VersionOf<K>) -> (Store<K>, Arc<Fingerprint>, Self) {
        let (store, writer) = reflector::store::<K>();
        let shared = Arc::new(Fingerprint::default());
        let me = Self {
            writer,
            version,
            objects: HashMap::new(),
            relist: None,
            sum: Hashes { routing: 0, revision: 0 },
            shared: shared.clone(),
        };
        (store, shared, me)
    }

    fn hashes(&self, o: &K) -> (u64, Hashes) {
        let id = identity(o);
        let mix = |v: u64| {
            let mut h = DefaultHasher::new();
            (id, v).hash(&mut h);
            h.finish()
        };
        (id, Hashes { routing: mix((self.version)(o)), revision: mix(resource_version(o)) })
    }

    /// Apply one watch event to the store and the fingerprint.
    pub fn apply(&mut self, event: &watcher::Event<K>) {
        match event {
            watcher::Event::Apply(o) => {
                let (id, new) = self.hashes(o);
                let old = self.objects.insert(id, new);
                self.sum = self.sum.add(new);
                if let Some(old) = old {
                    self.sum = self.sum.sub(old);
                }
            }
            watcher::Event::Delete(o) => {
                let (id, _) = self.hashes(o);
                if let Some(old) = self.objects.remove(&id) {
                    self.sum = self.sum.sub(old);
                }
            }
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                let (id, new) = self.hashes(o);
                self.relist.get_or_insert_default().insert(id, new);
            }
            watcher::Event::InitDone => {
                self.shared.synced.store(true, Ordering::Release);
                self.objects = self.relist.take().unwrap_or_default();
                self.sum = self.objects.values().fold(Hashes { routing: 0, revision: 0 }, |a, h| a.add(*h));
            }
        }
        self.writer.apply_watcher_event(event);
        self.shared.routing.store(self.sum.routing, Ordering::Release);
        self.shared.revision.store(self.sum.revision, Ordering::Release);
    }
}

/// One kind's cache over every watched namespace.
pub struct Reflected<K: Resource<DynamicType = ()> + Clone + 'static> {
    stores: Vec<Store<K>>,
    fingerprints: Vec<Arc<Fingerprint>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Reflected<K> {
    fn clone(&self) -> Self {
        Self { stores: self.stores.clone(), fingerprints: self.fingerprints.clone() }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Reflected<K> {
    /// A cache fed by the caller (benchmarks, tests): one store per [`TrackedWriter`].
    pub fn from_parts(parts: Vec<(Store<K>, Arc<Fingerprint>)>) -> Self {
        let (stores, fingerprints) = parts.into_iter().unzip();
        Self { stores, fingerprints }
    }

    /// One cache made of several, each fed by its own watch (e.g. one per field selector).
    pub fn merge(parts: Vec<Self>) -> Self {
        let (mut stores, mut fingerprints) = (Vec::new(), Vec::new());
        for p in parts {
            stores.extend(p.stores);
            fingerprints.extend(p.fingerprints);
        }
        Self { stores, fingerprints }
    }

    /// Changes when anything translation reads of this kind changes.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprints.iter().fold(0u64, |a, f| a.wrapping_add(f.routing.load(Ordering::Acquire)))
    }

    /// Changes when any object of this kind changes (status updates included).
    pub fn revision(&self) -> u64 {
        self.fingerprints.iter().fold(0u64, |a, f| a.wrapping_add(f.revision.load(Ordering::Acquire)))
    }

    /// Every cached object (shared, not copied).
    pub fn state(&self) -> Vec<Arc<K>> {
        match self.stores.as_slice() {
            [one] => one.state(),
            many => many.iter().flat_map(Store::state).collect(),
        }
    }

    /// One object by namespace ("" for cluster-scoped) and name.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let mut key = ObjectRef::<K>::new(name);
        if !namespace.is_empty() {
            key = key.within(namespace);
        }
        self.stores.iter().find_map(|s| s.get(&key))
    }

    /// Every store has completed its first list (without waiting, unlike [`Self::wait_synced`]).
    pub fn is_synced(&self) -> bool {
        self.fingerprints.iter().all(|f| f.synced.load(Ordering::Acquire))
    }

    pub fn len(&self) -> usize {
        self.stores.iter().map(Store::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Until every store has completed its first list; false when a writer was dropped first.
    pub async fn wait_synced(&self) -> bool {
        for s in &self.stores {
            if s.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }
}

/// One `Api` per watched namespace, or one cluster-wide when `namespaces` is empty: how every
/// namespaced kind is watched.
pub fn namespaced_apis<K>(client: &kube::Client, namespaces: &[String]) -> Vec<(String, Api<K>)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if namespaces.is_empty() {
        return vec![(String::new(), Api::all(client.clone()))];
    }
    namespaces.iter().map(|ns| (ns.clone(), Api::namespaced(client.clone(), ns))).collect()
}

/// What every watch shares: the task set, supervision, metrics, backoff and paging.
pub struct Watches<'a> {
    pub tasks: &'a mut JoinSet<()>,
    pub health: &'a Arc<Health>,
    pub metrics: &'a Arc<Metrics>,
    pub stop: &'a CancellationToken,
    pub backoff: WatchBackoff,
    pub page_size: u32,
}

impl Watches<'_> {
    /// Watch `K` through each of `apis` (one per namespace, or one cluster-wide) into one
    /// cache; every applied/deleted object and every completed (re-)list wakes `changed`.
    /// `config` narrows the watch (label or field selectors); paging is added here.
    pub fn reflect<K>(
        &mut self,
        kind: &'static str,
        apis: Vec<(String, Api<K>)>,
        config: watcher::Config,
        version: VersionOf<K>,
        changed: &Arc<Notify>,
    ) -> Reflected<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut parts = Vec::new();
        for (scope, api) in apis {
            let (store, fingerprint, mut writer) = TrackedWriter::new(version);
            parts.push((store, fingerprint));
            let task = if scope.is_empty() { format!("watch {kind}") } else { format!("watch {kind} in {scope}") };
            let config = config.clone().page_size(self.page_size);
            let (changed, metrics, stop, backoff) =
                (changed.clone(), self.metrics.clone(), self.stop.clone(), self.backoff);
            self.health.spawn(self.tasks, task, self.stop, async move {
                let stream = watcher(api, config)
                    .modify(|o: &mut K| {
                        o.managed_fields_mut().clear();
                        o.annotations_mut().remove(LAST_APPLIED);
                    })
                    .backoff(backoff.start());
                let mut stream = pin!(stream);
                let mut failing = false;
                loop {
                    let event = tokio::select! {
                        e = stream.next() => e,
                        () = stop.cancelled() => return,
                    };
                    let Some(event) = event else { return };
                    if let Ok(e) = &event {
                        writer.apply(e);
                    }
                    match event {
                        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                            metrics.watch_synced(kind);
                            changed.notify_one();
                        }
                        Ok(watcher::Event::InitDone) => {
                            if failing {
                                tracing::info!(kind, namespace = %scope, "watch recovered (re-listed)");
                                failing = false;
                            }
                            metrics.watch_synced(kind);
                            changed.notify_one();
                        }
                        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                        Err(e) => {
                            failing = true;
                            metrics.watch_error(kind);
                            tracing::warn!(
                                kind,
                                namespace = %scope,
                                error = %e,
                                "watch failed; backing off and retrying (the last good routes keep serving)"
                            );
                        }
                    }
                }
            });
        }
        Reflected::from_parts(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, rv: &str) -> k8s_openapi::api::core::v1::Service {
        k8s_openapi::api::core::v1::Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_fingerprint_follows_every_event_and_a_relist() {
        let (store, fp, mut w) = TrackedWriter::new(resource_version);
        let r = Reflected::from_parts(vec![(store, fp)]);
        let list = |w: &mut TrackedWriter<_>, items: &[(&str, &str)]| {
            w.apply(&watcher::Event::Init);
            for (n, rv) in items {
                w.apply(&watcher::Event::InitApply(svc(n, rv)));
            }
            w.apply(&watcher::Event::InitDone);
        };
        list(&mut w, &[("a", "1"), ("b", "1")]);
        let start = r.fingerprint();
        assert_eq!(r.len(), 2);
        w.apply(&watcher::Event::Apply(svc("a", "2")));
        let changed = r.fingerprint();
        assert_ne!(changed, start);
        w.apply(&watcher::Event::Apply(svc("c", "1")));
        w.apply(&watcher::Event::Delete(svc("c", "1")));
        assert_eq!(r.fingerprint(), changed, "an object added and deleted again leaves no trace");
        // A re-list of the same objects at the same versions changes nothing.
        list(&mut w, &[("b", "1"), ("a", "2")]);
        assert_eq!(r.fingerprint(), changed);
        list(&mut w, &[("a", "2")]);
        assert_ne!(r.fingerprint(), changed, "b is gone");
        assert_eq!(r.len(), 1);
        // The same objects in the same state give the same fingerprint, whatever the order.
        let (store2, fp2, mut w2) = TrackedWriter::new(resource_version);
        list(&mut w2, &[("a", "2")]);
        assert_eq!(Reflected::from_parts(vec![(store2, fp2)]).fingerprint(), r.fingerprint());
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
}
