//! Gateway API in cluster mode: whether the CRDs are installed (discovery at start and every
//! `--gateway-api-recheck`), and the caches of GatewayClass, Gateway, HTTPRoute (v1),
//! ReferenceGrant (v1beta1) and Namespace (labels, for `allowedRoutes` selectors) that feed
//! the same [`ClusterSnapshot`] as Ingress, so one table results.
//!
//! - A cluster without the CRDs logs one line and keeps serving Ingress; discovery looks
//!   again on the timer, and once the CRDs appear the watches start, without a restart.
//! - Discovery reads `/apis/gateway.networking.k8s.io/v1` and `/v1beta1` (allowed to every
//!   authenticated client: no RBAC rule). A 404 means "not installed"; any other error means
//!   "unknown" and is retried on the same timer.
//! - Namespaced kinds are watched in each `--watch-namespace` (all when none), like Ingress;
//!   GatewayClass is cluster-scoped and always watched whole; Namespaces are watched whole, or
//!   by name (`metadata.name=NS`) for each watched namespace.
//! - What translation reads of a GatewayClass, Gateway or HTTPRoute is its generation (spec)
//!   and annotations and labels, not its resourceVersion: our own status writes do not
//!   translate again.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::runtime::watcher;
use kube::{Api, Resource};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::watch::{Reflected, Watches, namespaced_apis};
use crate::gateway_api::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use crate::translate::{ClusterSnapshot, ObjectRef};

/// The Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// GatewayClass, Gateway and HTTPRoute.
pub const V1: &str = "gateway.networking.k8s.io/v1";
/// ReferenceGrant.
pub const V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";

/// `--gateway-api`: look for the CRDs (`auto`) or never watch Gateway API (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GatewayApiMode {
    #[default]
    Auto,
    Off,
}

impl GatewayApiMode {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            _ => Err(format!("`{value}`: expected `auto` or `off`")),
        }
    }
}

/// Gateway API settings of cluster mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayApiConfig {
    pub mode: GatewayApiMode,
    /// How often discovery looks again while the CRDs (or ReferenceGrant's) are missing.
    pub recheck: Duration,
}

impl Default for GatewayApiConfig {
    fn default() -> Self {
        Self { mode: GatewayApiMode::Auto, recheck: Duration::from_secs(60) }
    }
}

/// What discovery found installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Installed {
    /// GatewayClass, Gateway and HTTPRoute at v1 (all three, or this is false).
    pub routes: bool,
    /// ReferenceGrant at v1beta1.
    pub reference_grants: bool,
}

impl Installed {
    /// Everything wsingress watches is there: no need to look again.
    pub fn complete(self) -> bool {
        self.routes && self.reference_grants
    }

    /// From the discovery documents of `v1` and `v1beta1` (`None`: that version is not served).
    pub fn from_discovery(v1: Option<&APIResourceList>, v1beta1: Option<&APIResourceList>) -> Self {
        let has = |list: Option<&APIResourceList>, plural: &str| {
            list.is_some_and(|l| l.resources.iter().any(|r| r.name == plural))
        };
        Self {
            routes: ["gatewayclasses", "gateways", "httproutes"].iter().all(|p| has(v1, p)),
            reference_grants: has(v1beta1, "referencegrants"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("Gateway API discovery failed: {0}")]
    Api(#[from] kube::Error),
}

/// Ask the API server which Gateway API kinds it serves.
pub async fn discover(client: &kube::Client) -> Result<Installed, DiscoveryError> {
    async fn group_version(client: &kube::Client, gv: &str) -> Result<Option<APIResourceList>, kube::Error> {
        match client.list_api_group_resources(gv).await {
            Ok(list) => Ok(Some(list)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
    let v1 = group_version(client, V1).await?;
    let v1beta1 = group_version(client, V1BETA1).await?;
    Ok(Installed::from_discovery(v1.as_ref(), v1beta1.as_ref()))
}

/// Look again every `recheck` until everything is installed, sending each new finding on
/// `found` (which starts with what the first look saw), then close `found`. Logs when
/// something appears; a look that fails is retried on the same timer.
pub async fn rediscover(
    client: kube::Client,
    recheck: Duration,
    found: watch::Sender<Installed>,
    stop: CancellationToken,
) {
    while !found.borrow().complete() {
        tokio::select! {
            () = tokio::time::sleep(recheck) => {}
            () = stop.cancelled() => return,
        }
        match discover(&client).await {
            Ok(now) => {
                let before = *found.borrow();
                let merged = Installed {
                    routes: before.routes || now.routes,
                    reference_grants: before.reference_grants || now.reference_grants,
                };
                if merged != before {
                    tracing::info!(
                        gateway_api = merged.routes,
                        reference_grants = merged.reference_grants,
                        "Gateway API CRDs appeared; starting their watches"
                    );
                    found.send_replace(merged);
                }
            }
            Err(e) => tracing::debug!(error = %e, "Gateway API discovery failed; looking again later"),
        }
    }
    // Done: closing the channel tells the controller; the task itself lives on until `stop`
    // (it runs supervised, where ending early would fail /healthz).
    drop(found);
    stop.cancelled().await;
}

/// The version of a Gateway API object as translation reads it: uid, generation (spec),
/// annotations (the `wsingress.io/*` settings on an HTTPRoute) and labels; without a
/// generation (not from an API server), its resourceVersion.
pub fn spec_version<K: Resource>(o: &K) -> u64 {
    let m = o.meta();
    let mut h = DefaultHasher::new();
    m.uid.hash(&mut h);
    match m.generation {
        Some(g) => (g, &m.annotations, &m.labels).hash(&mut h),
        None => m.resource_version.hash(&mut h),
    }
    h.finish()
}

/// A Namespace as translation reads it: its labels (`allowedRoutes` selectors).
pub fn namespace_version(n: &Namespace) -> u64 {
    let mut h = DefaultHasher::new();
    (&n.metadata.uid, &n.metadata.name, &n.metadata.labels).hash(&mut h);
    h.finish()
}

/// The Gateway API caches. ReferenceGrant's starts with the others, or later when its CRD
/// appears after theirs.
#[derive(Clone)]
pub struct GatewayCaches {
    pub gateway_classes: Reflected<GatewayClass>,
    pub gateways: Reflected<Gateway>,
    pub http_routes: Reflected<HTTPRoute>,
    pub reference_grants: Option<Reflected<ReferenceGrant>>,
    pub namespaces: Reflected<Namespace>,
}

impl GatewayCaches {
    /// Start the watches of GatewayClass, Gateway, HTTPRoute and Namespace, and of
    /// ReferenceGrant when `grants`.
    pub fn start(
        watches: &mut Watches<'_>,
        client: &kube::Client,
        namespaces: &[String],
        grants: bool,
        changed: &Arc<Notify>,
    ) -> Self {
        let all = watcher::Config::default();
        let cluster = vec![(String::new(), Api::<GatewayClass>::all(client.clone()))];
        let namespace_watch = if namespaces.is_empty() {
            watches.reflect(
                "Namespace",
                vec![(String::new(), Api::all(client.clone()))],
                all.clone(),
                namespace_version,
                changed,
            )
        } else {
            let parts = namespaces.iter().map(|ns| {
                let by_name = watcher::Config::default().fields(&format!("metadata.name={ns}"));
                watches.reflect(
                    "Namespace",
                    vec![(format!("(Namespace {ns})"), Api::all(client.clone()))],
                    by_name,
                    namespace_version,
                    changed,
                )
            });
            Reflected::merge(parts.collect())
        };
        let mut me = Self {
            gateway_classes: watches.reflect("GatewayClass", cluster, all.clone(), spec_version, changed),
            gateways: watches.reflect(
                "Gateway",
                namespaced_apis(client, namespaces),
                all.clone(),
                spec_version,
                changed,
            ),
            http_routes: watches.reflect("HTTPRoute", namespaced_apis(client, namespaces), all, spec_version, changed),
            reference_grants: None,
            namespaces: namespace_watch,
        };
        if grants {
            me.start_grants(watches, client, namespaces, changed);
        }
        me
    }

    /// Start the ReferenceGrant watch (its CRD appeared after the others').
    pub fn start_grants(
        &mut self,
        watches: &mut Watches<'_>,
        client: &kube::Client,
        namespaces: &[String],
        changed: &Arc<Notify>,
    ) {
        if self.reference_grants.is_none() {
            let all = watcher::Config::default();
            let grants = watches.reflect(
                "ReferenceGrant",
                namespaced_apis(client, namespaces),
                all,
                super::watch::resource_version,
                changed,
            );
            self.reference_grants = Some(grants);
        }
    }

    /// Changes exactly when something translation reads changed.
    pub fn fingerprint(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (
            self.gateway_classes.fingerprint(),
            self.gateways.fingerprint(),
            self.http_routes.fingerprint(),
            self.reference_grants.as_ref().map(Reflected::fingerprint),
            self.namespaces.fingerprint(),
        )
            .hash(&mut h);
        h.finish()
    }

    /// Changes when any of these objects changes, status included: what the status writer
    /// looks at.
    pub fn revision(&self) -> u64 {
        let mut h = DefaultHasher::new();
        (
            self.gateway_classes.revision(),
            self.gateways.revision(),
            self.http_routes.revision(),
            self.reference_grants.as_ref().map(Reflected::fingerprint),
            self.namespaces.fingerprint(),
        )
            .hash(&mut h);
        h.finish()
    }

    /// Every watch has listed once.
    pub async fn wait_synced(&self) -> bool {
        let grants = async {
            match &self.reference_grants {
                Some(g) => g.wait_synced().await,
                None => true,
            }
        };
        let (a, b, c, d, e) = tokio::join!(
            self.gateway_classes.wait_synced(),
            self.gateways.wait_synced(),
            self.http_routes.wait_synced(),
            grants,
            self.namespaces.wait_synced(),
        );
        a && b && c && d && e
    }

    /// Put the cached objects (shared) into `snapshot`.
    pub fn fill(&self, snapshot: &mut ClusterSnapshot) {
        snapshot.gateway_classes = self.gateway_classes.state();
        snapshot.gateways = self.gateways.state();
        snapshot.http_routes = self.http_routes.state();
        snapshot.reference_grants = self.reference_grants.as_ref().map(Reflected::state).unwrap_or_default();
        snapshot.namespaces = self.namespaces.state();
    }

    /// The full reference of a cached Gateway API object a warning names.
    pub fn object_reference(&self, o: &ObjectRef) -> Option<ObjectReference> {
        match o.kind.as_str() {
            "GatewayClass" => self.gateway_classes.get("", &o.name).map(|k| k.object_ref(&())),
            "Gateway" => self.gateways.get(&o.namespace, &o.name).map(|k| k.object_ref(&())),
            "HTTPRoute" => self.http_routes.get(&o.namespace, &o.name).map(|k| k.object_ref(&())),
            "ReferenceGrant" => self.reference_grants.as_ref()?.get(&o.namespace, &o.name).map(|k| k.object_ref(&())),
            _ => None,
        }
    }
}

/// Whether a ReferenceGrant in `to_namespace` lets a Gateway in `from_namespace` use the
/// Secret `name` (a grant's `to` without a name covers every Secret of its namespace).
fn secret_granted(grants: &[Arc<ReferenceGrant>], from_namespace: &str, to_namespace: &str, name: &str) -> bool {
    grants.iter().filter(|g| g.metadata.namespace.as_deref() == Some(to_namespace)).any(|g| {
        let from = g.spec.from.iter().any(|f| f.group == GROUP && f.kind == "Gateway" && f.namespace == from_namespace);
        let to = g.spec.to.iter().any(|t| {
            t.group.is_empty() && t.kind == "Secret" && t.name.as_deref().is_none_or(|n| n.is_empty() || n == name)
        });
        from && to
    })
}

/// The Secrets named by `tls.certificateRefs` of the listeners of the Gateways whose class is
/// ours (`controller`): the same namespace, or another one a ReferenceGrant allows. Refused
/// references are not watched (translation reports them as `RefNotPermitted`).
pub fn certificate_refs(snapshot: &ClusterSnapshot, controller: &str) -> BTreeSet<(String, String)> {
    let ours: BTreeSet<&str> = snapshot
        .gateway_classes
        .iter()
        .filter(|c| c.spec.controller_name == controller)
        .filter_map(|c| c.metadata.name.as_deref())
        .collect();
    let mut out = BTreeSet::new();
    for gw in snapshot.gateways.iter().filter(|g| ours.contains(g.spec.gateway_class_name.as_str())) {
        let ns = gw.metadata.namespace.as_deref().unwrap_or("default");
        let refs = gw.spec.listeners.iter().filter_map(|l| l.tls.as_ref()).flat_map(|t| &t.certificate_refs);
        for r in refs {
            let core = r.group.as_deref().is_none_or(str::is_empty);
            let secret = r.kind.as_deref().is_none_or(|k| k == "Secret");
            if !(core && secret) || r.name.is_empty() {
                continue;
            }
            let to = r.namespace.as_deref().unwrap_or(ns);
            if to == ns || secret_granted(&snapshot.reference_grants, ns, to, &r.name) {
                out.insert((to.to_string(), r.name.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;

    fn list(gv: &str, plurals: &[&str]) -> APIResourceList {
        APIResourceList {
            group_version: gv.into(),
            resources: plurals
                .iter()
                .map(|p| APIResource { name: p.to_string(), kind: "K".into(), ..APIResource::default() })
                .collect(),
        }
    }

    #[test]
    fn discovery_needs_all_three_v1_kinds_and_referencegrant_is_apart() {
        let full = list(V1, &["gatewayclasses", "gatewayclasses/status", "gateways", "httproutes"]);
        let grants = list(V1BETA1, &["referencegrants"]);
        assert_eq!(Installed::from_discovery(None, None), Installed::default());
        assert_eq!(
            Installed::from_discovery(Some(&full), Some(&grants)),
            Installed { routes: true, reference_grants: true }
        );
        assert!(Installed::from_discovery(Some(&full), Some(&grants)).complete());
        let no_routes = list(V1, &["gatewayclasses", "gateways", "grpcroutes"]);
        assert_eq!(
            Installed::from_discovery(Some(&no_routes), Some(&grants)),
            Installed { routes: false, reference_grants: true }
        );
        assert_eq!(Installed::from_discovery(Some(&full), None), Installed { routes: true, reference_grants: false });
    }

    #[test]
    fn mode_parses() {
        assert_eq!(GatewayApiMode::parse("auto"), Ok(GatewayApiMode::Auto));
        assert_eq!(GatewayApiMode::parse(" OFF "), Ok(GatewayApiMode::Off));
        assert!(GatewayApiMode::parse("on").is_err());
    }

    fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> Arc<T> {
        Arc::new(serde_yaml::from_str(yaml).expect("fixture"))
    }

    #[test]
    fn certificate_refs_of_our_gateways_same_namespace_or_granted() {
        let snapshot = ClusterSnapshot {
            gateway_classes: vec![
                from_yaml("metadata: {name: ws}\nspec: {controllerName: wsingress.io/gateway-controller}"),
                from_yaml("metadata: {name: other}\nspec: {controllerName: example.com/other}"),
            ],
            gateways: vec![
                from_yaml(
                    r#"
metadata: {name: edge, namespace: apps}
spec:
  gatewayClassName: ws
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    tls:
      certificateRefs:
      - {name: edge-tls}
      - {name: shared-tls, namespace: certs}
      - {name: refused-tls, namespace: vault}
      - {name: not-a-secret, kind: ConfigMap}
  - {name: http, port: 80, protocol: HTTP}
"#,
                ),
                from_yaml(
                    r#"
metadata: {name: theirs, namespace: apps}
spec:
  gatewayClassName: other
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: their-tls}]}}
"#,
                ),
            ],
            reference_grants: vec![from_yaml(
                r#"
metadata: {name: gateways-may-read, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: apps}]
  to: [{group: "", kind: Secret}]
"#,
            )],
            ..ClusterSnapshot::default()
        };
        let got = certificate_refs(&snapshot, "wsingress.io/gateway-controller");
        let want: BTreeSet<(String, String)> = [("apps", "edge-tls"), ("certs", "shared-tls")]
            .into_iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want, "not another class's, not an ungranted namespace's, not a ConfigMap");
    }
}
