//! Ingress status: writes `status.loadBalancer.ingress` on every Ingress we serve (from
//! `--publish-service NAMESPACE/NAME`, which is watched, or `--publish-address`), and removes
//! our addresses (only ours) from Ingresses that stop being ours. Only the elected leader
//! writes (see [`super::leader`]); passes look only at our Ingresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::watch::Reflected;

/// Where the addresses written into Ingress status come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishFrom {
    /// This Service's addresses (`--publish-service NAMESPACE/NAME`).
    Service { namespace: String, name: String },
    /// A fixed IP or hostname (`--publish-address`).
    Address(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("--publish-service `{0}`: expected NAMESPACE/NAME")]
    BadService(String),
    #[error("--publish-address must not be empty")]
    EmptyAddress,
    #[error("--publish-service and --publish-address are exclusive")]
    Both,
}

impl PublishFrom {
    /// From the two flags; `None` when neither is given (status is then left alone).
    pub fn from_flags(service: Option<&str>, address: Option<&str>) -> Result<Option<Self>, StatusError> {
        match (service, address) {
            (Some(_), Some(_)) => Err(StatusError::Both),
            (Some(s), None) => match s.trim().split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok(Some(Self::Service { namespace: ns.to_string(), name: name.to_string() }))
                }
                _ => Err(StatusError::BadService(s.to_string())),
            },
            (None, Some(a)) if a.trim().is_empty() => Err(StatusError::EmptyAddress),
            (None, Some(a)) => Ok(Some(Self::Address(a.trim().to_string()))),
            (None, None) => Ok(None),
        }
    }
}

/// Status writing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    pub publish: PublishFrom,
    /// Re-check the published addresses (and every Ingress) this often even without changes.
    pub resync: Duration,
}

impl StatusConfig {
    pub fn new(publish: PublishFrom) -> Self {
        Self { publish, resync: Duration::from_secs(30) }
    }
}

/// An Ingress by namespace and name.
pub type IngressKey = (String, String);

/// What the status writer acts on; it runs a pass whenever this changes.
#[derive(Debug, Clone, Default)]
pub struct StatusInput {
    /// The Ingresses we serve, as they were when that was decided (ordered by address): a
    /// pass writes a served Ingress only while the cache still holds that version, so a
    /// decision never outlives the object it was made on. Changes whenever one of them
    /// changes (someone may have overwritten our status).
    pub served: Vec<Arc<Ingress>>,
}

impl StatusInput {
    /// From the served Ingresses, in any order.
    pub fn new(mut served: Vec<Arc<Ingress>>) -> Self {
        served.sort_unstable_by_key(|i| Arc::as_ptr(i) as usize);
        Self { served }
    }

    fn keyed(&self) -> BTreeMap<IngressKey, &Arc<Ingress>> {
        self.served.iter().map(|i| ((i.namespace().unwrap_or_default(), i.name_any()), i)).collect()
    }
}

/// The same Ingresses in the same versions.
impl PartialEq for StatusInput {
    fn eq(&self, other: &Self) -> bool {
        self.served.len() == other.served.len() && self.served.iter().zip(&other.served).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// One status entry: an IP or a hostname.
fn entry(address: &str) -> IngressLoadBalancerIngress {
    if address.parse::<IpAddr>().is_ok() {
        IngressLoadBalancerIngress { ip: Some(address.to_string()), ..IngressLoadBalancerIngress::default() }
    } else {
        IngressLoadBalancerIngress { hostname: Some(address.to_string()), ..IngressLoadBalancerIngress::default() }
    }
}

/// Status entries for addresses, sorted and de-duplicated.
pub fn entries<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Vec<IngressLoadBalancerIngress> {
    let set: BTreeSet<&str> = addresses.into_iter().map(str::trim).filter(|a| !a.is_empty()).collect();
    set.into_iter().map(entry).collect()
}

/// Whether the published addresses of `service` come from the nodes (a NodePort Service
/// without `externalIPs`).
pub fn needs_nodes(service: &Service) -> bool {
    let spec = service.spec.as_ref();
    spec.and_then(|s| s.type_.as_deref()) == Some("NodePort")
        && spec.and_then(|s| s.external_ips.as_ref()).is_none_or(Vec::is_empty)
}

/// The addresses a Service publishes, as ingress-nginx reads them: LoadBalancer → its
/// load-balancer IPs/hostnames (plus `externalIPs`); NodePort → `externalIPs`, else each
/// node's ExternalIP (or its InternalIP when it has none); ClusterIP → `externalIPs`, else
/// the cluster IP; ExternalName → the external name.
pub fn service_addresses(service: &Service, nodes: &[Node]) -> Vec<IngressLoadBalancerIngress> {
    let spec = service.spec.clone().unwrap_or_default();
    let external: Vec<String> = spec.external_ips.clone().unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "LoadBalancer" => {
            let lb = service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.clone())
                .unwrap_or_default();
            for i in lb {
                out.extend(i.ip.or(i.hostname));
            }
            out.extend(external);
        }
        "NodePort" if !external.is_empty() => out.extend(external),
        "NodePort" => {
            for node in nodes {
                let addrs = node.status.as_ref().and_then(|s| s.addresses.clone()).unwrap_or_default();
                let pick = |t: &str| addrs.iter().find(|a| a.type_ == t).map(|a| a.address.clone());
                out.extend(pick("ExternalIP").or_else(|| pick("InternalIP")));
            }
        }
        "ExternalName" => out.extend(spec.external_name),
        _ if !external.is_empty() => out.extend(external),
        _ => out.extend(spec.cluster_ip.filter(|ip| ip != "None")),
    }
    entries(out.iter().map(String::as_str))
}

/// An (ip, hostname) pair: what we compare.
type Addr = (Option<String>, Option<String>);

fn addr(e: &IngressLoadBalancerIngress) -> Addr {
    (e.ip.clone(), e.hostname.clone())
}

/// The (ip, hostname) pairs of a status, sorted: what we compare.
fn comparable(entries: &[IngressLoadBalancerIngress]) -> Vec<Addr> {
    let mut v: Vec<_> = entries.iter().map(addr).collect();
    v.sort();
    v.dedup();
    v
}

fn current_status(ingress: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ingress.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.clone()).unwrap_or_default()
}

/// One status write: set `Some(entries)` or clear (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub ingress: IngressKey,
    pub set: Option<Vec<IngressLoadBalancerIngress>>,
}

/// What to write for one Ingress with status `current`: a served one whose status differs
/// from `want` gets `want` (an empty `want` clears it); one not served loses only our
/// addresses (`want`, and `written`: what this process wrote there before), keeping any
/// other controller's entries.
pub fn plan_one(
    key: &IngressKey,
    current: &[IngressLoadBalancerIngress],
    served: bool,
    want: &[IngressLoadBalancerIngress],
    written: &[IngressLoadBalancerIngress],
) -> Option<StatusChange> {
    let have = comparable(current);
    if served {
        return (have != comparable(want))
            .then(|| StatusChange { ingress: key.clone(), set: (!want.is_empty()).then(|| want.to_vec()) });
    }
    let ours: BTreeSet<Addr> = want.iter().chain(written).map(addr).collect();
    let keep: Vec<IngressLoadBalancerIngress> = current.iter().filter(|e| !ours.contains(&addr(e))).cloned().collect();
    (keep.len() != current.len())
        .then(|| StatusChange { ingress: key.clone(), set: (!keep.is_empty()).then_some(keep) })
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ResolveError {
    #[error("publish service {0}/{1} not found")]
    ServiceNotFound(String, String),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// The publish Service's cache (a one-object watch) and the node addresses it may need.
pub struct PublishSource {
    pub service: Reflected<Service>,
    /// Wakes when the publish Service changes.
    pub changed: Arc<Notify>,
}

/// Node addresses, listed only for a NodePort publish Service, at most once per `resync`.
#[derive(Default)]
pub(super) struct NodeCache {
    nodes: Vec<Node>,
    listed_at: Option<Instant>,
}

impl NodeCache {
    async fn get(&mut self, client: &kube::Client, max_age: Duration) -> Result<&[Node], kube::Error> {
        if self.listed_at.is_none_or(|t| t.elapsed() >= max_age) {
            self.nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items;
            self.listed_at = Some(Instant::now());
        }
        Ok(&self.nodes)
    }
}

/// The addresses to publish, from the flag or the watched Service (nodes for NodePort).
pub(super) async fn resolve(
    client: &kube::Client,
    config: &StatusConfig,
    source: Option<&PublishSource>,
    nodes: &mut NodeCache,
) -> Result<Vec<IngressLoadBalancerIngress>, ResolveError> {
    match (&config.publish, source) {
        (PublishFrom::Address(a), _) => Ok(entries([a.as_str()])),
        (PublishFrom::Service { namespace, name }, Some(source)) => {
            let svc = source
                .service
                .get(namespace, name)
                .ok_or_else(|| ResolveError::ServiceNotFound(namespace.clone(), name.clone()))?;
            let nodes = if needs_nodes(&svc) { nodes.get(client, config.resync).await? } else { &[] };
            Ok(service_addresses(&svc, nodes))
        }
        (PublishFrom::Service { namespace, name }, None) => {
            Err(ResolveError::ServiceNotFound(namespace.clone(), name.clone()))
        }
    }
}

/// Keep Ingress status right while leading, until `shutdown`. A pass looks only at the
/// Ingresses we serve and those we wrote before (to clear them once they are not ours); the
/// first pass after gaining leadership also looks at every Ingress once, to remove our
/// addresses left behind by an earlier leader. A pass runs when `input` changes (served set,
/// or one of those Ingresses), the publish Service changes, leadership is gained, or `resync`
/// elapses.
pub async fn run(
    client: kube::Client,
    config: StatusConfig,
    ingresses: Reflected<Ingress>,
    publish: Option<PublishSource>,
    mut input: watch::Receiver<StatusInput>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    // What this process wrote, per Ingress: cleared from it when the Ingress stops being ours.
    let mut written: BTreeMap<IngressKey, Vec<IngressLoadBalancerIngress>> = BTreeMap::new();
    let mut nodes = NodeCache { nodes: Vec::new(), listed_at: None };
    let mut was_leading = false;
    let mut published: Option<Vec<IngressLoadBalancerIngress>> = None;
    loop {
        let leading = *leader.borrow_and_update();
        if leading {
            let decided = input.borrow_and_update().clone();
            let served = decided.keyed();
            match resolve(&client, &config, publish.as_ref(), &mut nodes).await {
                Ok(want) => {
                    // On gaining leadership, and when our addresses change: every Ingress once.
                    let full = !was_leading || published.as_ref() != Some(&want);
                    let keys: Vec<IngressKey> = if full {
                        ingresses.state().iter().map(|i| (i.namespace().unwrap_or_default(), i.name_any())).collect()
                    } else {
                        served.keys().chain(written.keys()).cloned().collect::<BTreeSet<_>>().into_iter().collect()
                    };
                    let before = published.replace(want.clone()).unwrap_or_default();
                    for key in keys {
                        if !*leader.borrow() {
                            break;
                        }
                        let Some(ing) = ingresses.get(&key.0, &key.1) else {
                            written.remove(&key);
                            continue;
                        };
                        let is_served = match served.get(&key) {
                            // Changed since it was judged ours: the next input decides.
                            Some(was) if was.metadata.resource_version != ing.metadata.resource_version => continue,
                            Some(_) => true,
                            None => false,
                        };
                        let mut ours = written.get(&key).cloned().unwrap_or_default();
                        ours.extend(before.iter().cloned());
                        if let Some(change) = plan_one(&key, &current_status(&ing), is_served, &want, &ours) {
                            write(&client, &change, is_served, &mut written).await;
                        }
                    }
                    was_leading = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resolve the addresses to publish in Ingress status")
                }
            }
        } else {
            was_leading = false;
        }
        let publish_changed = async {
            match &publish {
                Some(p) => p.changed.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = input.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            () = publish_changed => {}
            () = tokio::time::sleep(config.resync) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn write(
    client: &kube::Client,
    change: &StatusChange,
    served: bool,
    written: &mut BTreeMap<IngressKey, Vec<IngressLoadBalancerIngress>>,
) {
    let (ns, name) = &change.ingress;
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let body = json!({"status": {"loadBalancer": {"ingress": change.set}}});
    match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body)).await {
        Ok(_) => {
            match (&change.set, served) {
                (Some(set), true) => {
                    written.insert(change.ingress.clone(), set.clone());
                }
                _ => {
                    written.remove(&change.ingress);
                }
            }
            tracing::info!(namespace = %ns, ingress = %name, addresses = ?change.set.as_ref().map(|s| comparable(s)), "ingress status written");
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, ingress = %name, error = %e, "could not write ingress status")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, NodeAddress, NodeStatus, ServiceSpec, ServiceStatus,
    };

    #[test]
    fn flags() {
        assert_eq!(
            PublishFrom::from_flags(Some("ingress/wsingress"), None),
            Ok(Some(PublishFrom::Service { namespace: "ingress".into(), name: "wsingress".into() }))
        );
        assert_eq!(
            PublishFrom::from_flags(None, Some("lb.example.com")),
            Ok(Some(PublishFrom::Address("lb.example.com".into())))
        );
        assert_eq!(PublishFrom::from_flags(None, None), Ok(None));
        for bad in ["wsingress", "/x", "a/", "a/b/c"] {
            assert!(PublishFrom::from_flags(Some(bad), None).is_err(), "{bad}");
        }
        assert_eq!(PublishFrom::from_flags(None, Some(" ")), Err(StatusError::EmptyAddress));
    }

    #[test]
    fn ip_or_hostname() {
        let e = entries(["10.0.0.1", "lb.example.com", "2001:db8::1", "10.0.0.1"]);
        assert_eq!(e.len(), 3);
        assert!(e.iter().any(|x| x.ip.as_deref() == Some("2001:db8::1")));
        assert!(e.iter().any(|x| x.hostname.as_deref() == Some("lb.example.com") && x.ip.is_none()));
    }

    fn svc(type_: &str) -> Service {
        Service {
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                cluster_ip: Some("10.96.0.10".into()),
                ..ServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![
                        LoadBalancerIngress { ip: Some("203.0.113.7".into()), ..LoadBalancerIngress::default() },
                        LoadBalancerIngress {
                            hostname: Some("lb.example.com".into()),
                            ..LoadBalancerIngress::default()
                        },
                    ]),
                }),
                ..ServiceStatus::default()
            }),
            ..Service::default()
        }
    }

    fn node(addrs: &[(&str, &str)]) -> Node {
        Node {
            status: Some(NodeStatus {
                addresses: Some(
                    addrs.iter().map(|(t, a)| NodeAddress { type_: (*t).into(), address: (*a).into() }).collect(),
                ),
                ..NodeStatus::default()
            }),
            ..Node::default()
        }
    }

    #[test]
    fn service_types() {
        let lb = comparable(&service_addresses(&svc("LoadBalancer"), &[]));
        assert_eq!(lb, vec![(None, Some("lb.example.com".into())), (Some("203.0.113.7".into()), None)]);
        let nodes = [
            node(&[("InternalIP", "192.168.0.2"), ("ExternalIP", "198.51.100.2")]),
            node(&[("InternalIP", "192.168.0.3"), ("Hostname", "n3")]),
        ];
        let np = comparable(&service_addresses(&svc("NodePort"), &nodes));
        assert_eq!(np, vec![(Some("192.168.0.3".into()), None), (Some("198.51.100.2".into()), None)]);
        let cip = comparable(&service_addresses(&svc("ClusterIP"), &[]));
        assert_eq!(cip, vec![(Some("10.96.0.10".into()), None)]);
    }

    #[test]
    fn plan_sets_ours_and_clears_only_our_addresses() {
        let want = entries(["10.0.0.1"]);
        let k = |n: &str| ("apps".to_string(), n.to_string());
        let plan = |name: &str, current: Vec<IngressLoadBalancerIngress>, served: bool, written: &[&str]| {
            plan_one(&k(name), &current, served, &want, &entries(written.iter().copied())).map(|c| c.set)
        };
        assert_eq!(plan("new", vec![], true, &[]), Some(Some(want.clone())));
        assert_eq!(plan("stale", entries(["10.0.0.9"]), true, &[]), Some(Some(want.clone())));
        assert_eq!(plan("done", want.clone(), true, &[]), None, "unchanged status is not rewritten");
        assert_eq!(plan("left", want.clone(), false, &[]), Some(None), "carries our address: cleared");
        assert_eq!(plan("left-written", entries(["10.0.0.9"]), false, &["10.0.0.9"]), Some(None), "we wrote it");
        assert_eq!(plan("foreign", entries(["172.16.0.1"]), false, &[]), None, "another controller's is kept");
        assert_eq!(
            plan("shared", entries(["10.0.0.1", "172.16.0.1"]), false, &[]),
            Some(Some(entries(["172.16.0.1"]))),
            "only our address is removed; the other controller's stays"
        );
    }
}
