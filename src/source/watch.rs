//! The controller's caches: one generic helper ([`Watches::reflect`]) runs a kube-runtime
//! watcher + reflector for a kind in each watched namespace (or cluster-wide), paged lists,
//! retries with backoff, counts errors and sync times in metrics, wakes the controller loop on
//! every change, and runs under [`Health`] supervision so a watcher that dies fails
//! `/healthz`. Adding a watched kind (Gateway API, Secrets) is one `reflect` call.

use std::fmt::Debug;
use std::pin::pin;
use std::sync::Arc;
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

/// One kind's cache over every watched namespace.
pub struct Reflected<K: Resource<DynamicType = ()> + Clone + 'static> {
    stores: Vec<Store<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Reflected<K> {
    fn clone(&self) -> Self {
        Self { stores: self.stores.clone() }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Reflected<K> {
    /// A cache fed by the caller (benchmarks, tests): one store per writer.
    pub fn from_stores(stores: Vec<Store<K>>) -> Self {
        Self { stores }
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
        changed: &Arc<Notify>,
    ) -> Reflected<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut stores = Vec::new();
        for (scope, api) in apis {
            let (store, writer) = reflector::store::<K>();
            stores.push(store);
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
                let mut stream = pin!(reflector::reflector(writer, stream));
                let mut failing = false;
                loop {
                    let event = tokio::select! {
                        e = stream.next() => e,
                        () = stop.cancelled() => return,
                    };
                    let Some(event) = event else { return };
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
        Reflected { stores }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
