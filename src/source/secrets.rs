//! Cluster mode's Secrets, and only the ones the controller needs:
//! - every `kubernetes.io/tls` Secret of the watched namespaces: one watch per namespace (or
//!   one cluster-wide) with the field selector `type=kubernetes.io/tls`, so the API server
//!   filters and no other Secret ever reaches this process;
//! - each Secret named elsewhere, watched alone with `metadata.name=NAME` in its namespace:
//!   `--default-tls-secret` (from the start), a route's `backend-ca-secret` (usually `Opaque`
//!   with `ca.crt`), and a `spec.tls` Secret the TLS watch does not hold (so a Secret of the
//!   wrong type is reported as such, not as missing), and a `tls.certificateRefs` Secret of
//!   an HTTPS listener of one of our Gateways that the TLS watch does not hold. These start
//!   when first referenced and stop when nothing names them any more.
//!
//! Why named watches rather than a get on each change: a rotated CA bundle or default
//! certificate is seen as soon as it is written (a get would need polling), the same
//! reflector code handles outages and 410s, and RBAC stays `list` + `watch`. The cost is one
//! watch connection per named Secret, which are few (one per distinct CA Secret).
//!
//! While a named watch that was just started has not listed yet, the controller holds its
//! next publish (at most [`NAMED_SYNC_WAIT`]), so a new route naming a CA Secret never
//! publishes a false "Secret not found".

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::watcher;
use kube::{Api, Resource};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::gateway_watch::certificate_refs;
use super::watch::{Reflected, WatchBackoff, Watches, namespaced_apis, resource_version};
use crate::metrics::Metrics;
use crate::readiness::Health;
use crate::translate::annotations::{BACKEND_CA_SECRET, EXPOSE};
use crate::translate::tls::{TLS_SECRET_TYPE, TlsDefaults};
use crate::translate::{ClusterSnapshot, Defaults, ServedClasses};

/// The longest a publish waits for a just-started named Secret watch to list.
pub const NAMED_SYNC_WAIT: Duration = Duration::from_secs(5);

/// The field selector of the TLS Secret watch.
pub fn tls_selector() -> String {
    format!("type={TLS_SECRET_TYPE}")
}

/// A Secret watched by name.
struct Named {
    cache: Reflected<Secret>,
    stop: CancellationToken,
    started: Instant,
}

/// The Secret caches of cluster mode (see the module docs).
pub struct SecretWatches {
    client: kube::Client,
    tls: Reflected<Secret>,
    tls_defaults: TlsDefaults,
    named: BTreeMap<(String, String), Named>,
    tasks: JoinSet<()>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    backoff: WatchBackoff,
    page_size: u32,
    changed: Arc<Notify>,
}

impl SecretWatches {
    /// Start the TLS Secret watch (through `watches`, in each of `namespaces`, all when
    /// empty) and the `--default-tls-secret` watch.
    pub fn start(
        watches: &mut Watches<'_>,
        client: &kube::Client,
        namespaces: &[String],
        tls_defaults: TlsDefaults,
        changed: &Arc<Notify>,
    ) -> Self {
        let apis = namespaced_apis::<Secret>(client, namespaces);
        let selector = watcher::Config::default().fields(&tls_selector());
        let tls = watches.reflect("Secret", apis, selector, resource_version, changed);
        let mut me = Self {
            client: client.clone(),
            tls,
            tls_defaults,
            named: BTreeMap::new(),
            tasks: JoinSet::new(),
            health: watches.health.clone(),
            metrics: watches.metrics.clone(),
            stop: watches.stop.clone(),
            backoff: watches.backoff,
            page_size: watches.page_size,
            changed: changed.clone(),
        };
        if let Some((ns, name)) = me.tls_defaults.default_secret.clone() {
            me.start_named(&ns, &name);
        }
        me
    }

    pub fn tls_defaults(&self) -> &TlsDefaults {
        &self.tls_defaults
    }

    /// Until the TLS watch and the `--default-tls-secret` watch have listed once.
    pub async fn wait_synced(&self) -> bool {
        if !self.tls.wait_synced().await {
            return false;
        }
        for n in self.named.values() {
            if !n.cache.wait_synced().await {
                return false;
            }
        }
        true
    }

    /// Changes when the TLS Secrets change (what [`Self::follow`] reads).
    pub fn tls_fingerprint(&self) -> u64 {
        self.tls.fingerprint()
    }

    /// Changes when any cached Secret changes, or the set of named watches does.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.tls.fingerprint().hash(&mut h);
        for (key, n) in &self.named {
            (key, n.cache.fingerprint()).hash(&mut h);
        }
        h.finish()
    }

    /// Every cached Secret (shared, not copied): TLS ones first, then named ones.
    pub fn secrets(&self) -> Vec<Arc<Secret>> {
        let mut out = self.tls.state();
        for n in self.named.values() {
            out.extend(n.cache.state());
        }
        out
    }

    /// The names of the Secrets watched by name, for tests and logs.
    pub fn named(&self) -> Vec<(String, String)> {
        self.named.keys().cloned().collect()
    }

    /// Start and stop named watches so that exactly the Secrets `snapshot` names (and the
    /// default) are watched by name.
    pub fn follow(&mut self, snapshot: &ClusterSnapshot, defaults: &Defaults) {
        while self.tasks.try_join_next().is_some() {}
        let wanted = references(snapshot, defaults, &self.tls, &self.tls_defaults);
        let gone: Vec<(String, String)> = self.named.keys().filter(|k| !wanted.contains(*k)).cloned().collect();
        for key in gone {
            if let Some(n) = self.named.remove(&key) {
                tracing::debug!(namespace = %key.0, name = %key.1, "no longer watching Secret by name");
                n.stop.cancel();
            }
        }
        for (ns, name) in wanted {
            if !self.named.contains_key(&(ns.clone(), name.clone())) {
                self.start_named(&ns, &name);
            }
        }
    }

    /// While a named watch started less than [`NAMED_SYNC_WAIT`] ago has not listed: the
    /// instant the wait ends.
    pub fn waiting_until(&self) -> Option<Instant> {
        let now = Instant::now();
        self.named
            .values()
            .filter(|n| !n.cache.is_synced())
            .map(|n| n.started + NAMED_SYNC_WAIT)
            .filter(|deadline| *deadline > now)
            .min()
    }

    /// The full reference of a cached Secret (uid included), for an Event's `regarding`.
    pub fn object_reference(&self, namespace: &str, name: &str) -> Option<ObjectReference> {
        let found = self.tls.get(namespace, name).or_else(|| {
            self.named.get(&(namespace.to_string(), name.to_string())).and_then(|n| n.cache.get(namespace, name))
        })?;
        Some(found.object_ref(&()))
    }

    fn start_named(&mut self, namespace: &str, name: &str) {
        tracing::debug!(namespace, name, "watching Secret by name");
        let stop = self.stop.child_token();
        let mut watches = Watches {
            tasks: &mut self.tasks,
            health: &self.health,
            metrics: &self.metrics,
            stop: &stop,
            backoff: self.backoff,
            page_size: self.page_size,
        };
        let api = Api::<Secret>::namespaced(self.client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let scope = format!("{namespace} (Secret {name})");
        let cache = watches.reflect("Secret", vec![(scope, api)], config, resource_version, &self.changed);
        self.named.insert((namespace.to_string(), name.to_string()), Named { cache, stop, started: Instant::now() });
    }
}

/// The Secrets to watch by name: the default, every `backend-ca-secret` of a served Ingress
/// (or of an exposed Service, when Service routes are on), and every `spec.tls` Secret of a
/// served Ingress that the TLS watch does not hold.
fn references(
    snapshot: &ClusterSnapshot,
    defaults: &Defaults,
    tls: &Reflected<Secret>,
    tls_defaults: &TlsDefaults,
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    if let Some(d) = &tls_defaults.default_secret {
        out.insert(d.clone());
    }
    let classes = ServedClasses::new(&snapshot.ingress_classes, defaults);
    for ing in snapshot.ingresses.iter().filter(|i| classes.serves(i)) {
        let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(name) = ca_secret(ing.metadata.annotations.as_ref(), ns) {
            out.insert((ns.to_string(), name));
        }
        let entries = ing.spec.as_ref().and_then(|s| s.tls.as_deref()).unwrap_or_default();
        for name in entries.iter().filter_map(|e| e.secret_name.as_deref()).filter(|n| !n.is_empty()) {
            if tls.get(ns, name).is_none() {
                out.insert((ns.to_string(), name.to_string()));
            }
        }
    }
    // HTTPS listeners of our Gateways: `tls.certificateRefs` (same namespace or granted).
    for (ns, name) in certificate_refs(snapshot, &defaults.gateway_controller_name) {
        if tls.get(&ns, &name).is_none() {
            out.insert((ns, name));
        }
    }
    if defaults.service_routes.enabled {
        for svc in &snapshot.services {
            let annotations = svc.metadata.annotations.as_ref();
            if annotations.is_some_and(|a| a.contains_key(EXPOSE)) {
                let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
                if let Some(name) = ca_secret(annotations, ns) {
                    out.insert((ns.to_string(), name));
                }
            }
        }
    }
    out
}

/// The Secret a `backend-ca-secret` annotation names in `namespace` (`NAME` or
/// `NAMESPACE/NAME` of the same namespace; translation reports anything else).
fn ca_secret(annotations: Option<&BTreeMap<String, String>>, namespace: &str) -> Option<String> {
    let value = annotations?.get(BACKEND_CA_SECRET)?.trim();
    let name = match value.split_once('/') {
        Some((ns, name)) if ns == namespace => name,
        Some(_) => return None,
        None => value,
    };
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::watch::TrackedWriter;
    use k8s_openapi::api::networking::v1::Ingress;

    fn ingress(yaml: &str) -> Arc<Ingress> {
        Arc::new(serde_yaml::from_str(yaml).unwrap())
    }

    fn tls_secret(ns: &str, name: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.resource_version = Some("1".into());
        s.type_ = Some(TLS_SECRET_TYPE.into());
        s
    }

    #[test]
    fn named_watches_cover_the_default_ca_secrets_and_spec_tls_secrets_the_tls_watch_lacks() {
        let (store, fp, mut w) = TrackedWriter::new(resource_version);
        w.apply(&watcher::Event::Init);
        w.apply(&watcher::Event::InitApply(tls_secret("prod", "chat-tls")));
        w.apply(&watcher::Event::InitDone);
        let tls = Reflected::from_parts(vec![(store, fp)]);
        assert!(tls.is_synced());
        let snapshot = ClusterSnapshot {
            ingresses: vec![
                ingress(
                    r#"
metadata:
  name: chat
  namespace: prod
  annotations: {wsingress.io/backend-ca-secret: chat-ca}
spec:
  ingressClassName: wsingress
  tls: [{secretName: chat-tls}, {secretName: opaque-tls}, {hosts: [x.example.com]}]
"#,
                ),
                ingress(
                    r#"
metadata:
  name: other
  namespace: prod
  annotations: {wsingress.io/backend-ca-secret: elsewhere/ca}
spec: {ingressClassName: wsingress}
"#,
                ),
                ingress(
                    r#"
metadata:
  name: theirs
  namespace: prod
  annotations: {wsingress.io/backend-ca-secret: their-ca}
spec: {ingressClassName: nginx, tls: [{secretName: their-tls}]}
"#,
                ),
            ],
            ..ClusterSnapshot::default()
        };
        let defaults = Defaults { class_fallback: true, ..Defaults::default() };
        let tls_defaults = TlsDefaults { default_secret: Some(("ingress".into(), "default-tls".into())) };
        let got = references(&snapshot, &defaults, &tls, &tls_defaults);
        let want: BTreeSet<(String, String)> =
            [("ingress", "default-tls"), ("prod", "chat-ca"), ("prod", "opaque-tls")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
        assert_eq!(got, want, "not chat-tls (the TLS watch has it), not another namespace's, not another class's");
    }

    #[test]
    fn ca_secret_names_parse_like_the_annotation() {
        let a = |v: &str| Some(BTreeMap::from([(BACKEND_CA_SECRET.to_string(), v.to_string())]));
        assert_eq!(ca_secret(a(" ca ").as_ref(), "prod").as_deref(), Some("ca"));
        assert_eq!(ca_secret(a("prod/ca").as_ref(), "prod").as_deref(), Some("ca"));
        assert_eq!(ca_secret(a("other/ca").as_ref(), "prod"), None);
        assert_eq!(ca_secret(a("").as_ref(), "prod"), None);
        assert_eq!(ca_secret(None, "prod"), None);
    }
}
