//! Ingress status: writes `status.loadBalancer.ingress` on every Ingress we serve (from
//! `--publish-service NAMESPACE/NAME` or `--publish-address`), and clears it on Ingresses
//! that stop being ours. Only the elected leader writes (see [`super::leader`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusInput {
    /// The Ingresses we serve.
    pub served: BTreeSet<IngressKey>,
    /// Changes when any Ingress's status changes (someone else may have overwritten ours).
    pub statuses: u64,
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

/// The (ip, hostname) pairs of a status, sorted: what we compare.
fn comparable(entries: &[IngressLoadBalancerIngress]) -> Vec<(Option<String>, Option<String>)> {
    let mut v: Vec<_> = entries.iter().map(|e| (e.ip.clone(), e.hostname.clone())).collect();
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

/// What to write: every served Ingress whose status differs from `want` gets `want` (an empty
/// `want` clears it); every Ingress no longer served is cleared if we wrote it (`written`) or
/// it carries exactly our addresses. Other controllers' statuses are left alone.
pub fn plan(
    ingresses: &BTreeMap<IngressKey, Vec<IngressLoadBalancerIngress>>,
    served: &BTreeSet<IngressKey>,
    want: &[IngressLoadBalancerIngress],
    written: &BTreeSet<IngressKey>,
) -> Vec<StatusChange> {
    let want_cmp = comparable(want);
    let mut out = Vec::new();
    for (key, current) in ingresses {
        let have = comparable(current);
        if served.contains(key) {
            if have != want_cmp {
                out.push(StatusChange { ingress: key.clone(), set: (!want.is_empty()).then(|| want.to_vec()) });
            }
        } else if !have.is_empty() && (written.contains(key) || (!want_cmp.is_empty() && have == want_cmp)) {
            out.push(StatusChange { ingress: key.clone(), set: None });
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("publish service {0}/{1} not found")]
    ServiceNotFound(String, String),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

async fn resolve(
    client: &kube::Client,
    publish: &PublishFrom,
) -> Result<Vec<IngressLoadBalancerIngress>, ResolveError> {
    match publish {
        PublishFrom::Address(a) => Ok(entries([a.as_str()])),
        PublishFrom::Service { namespace, name } => {
            let api: Api<Service> = Api::namespaced(client.clone(), namespace);
            let svc = api
                .get_opt(name)
                .await?
                .ok_or_else(|| ResolveError::ServiceNotFound(namespace.clone(), name.clone()))?;
            let node_port = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort")
                && svc.spec.as_ref().and_then(|s| s.external_ips.as_ref()).is_none_or(Vec::is_empty);
            let nodes = if node_port {
                Api::<Node>::all(client.clone()).list(&ListParams::default()).await?.items
            } else {
                Vec::new()
            };
            Ok(service_addresses(&svc, &nodes))
        }
    }
}

/// Keep Ingress status right while leading, until `shutdown`. Runs a pass whenever `input`
/// changes (served set or any Ingress status), leadership is gained, or `resync` elapses.
pub async fn run(
    client: kube::Client,
    config: StatusConfig,
    ingresses: Store<Ingress>,
    mut input: watch::Receiver<StatusInput>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let mut written: BTreeSet<IngressKey> = BTreeSet::new();
    loop {
        if *leader.borrow_and_update() {
            let served_now = input.borrow_and_update().served.clone();
            match resolve(&client, &config.publish).await {
                Ok(want) => {
                    let current: BTreeMap<IngressKey, Vec<IngressLoadBalancerIngress>> = ingresses
                        .state()
                        .iter()
                        .map(|i| ((i.namespace().unwrap_or_default(), i.name_any()), current_status(i)))
                        .collect();
                    for change in plan(&current, &served_now, &want, &written) {
                        if !*leader.borrow() {
                            break;
                        }
                        write(&client, &change, &mut written).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot resolve the addresses to publish in Ingress status")
                }
            }
        }
        tokio::select! {
            r = input.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            () = tokio::time::sleep(config.resync) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn write(client: &kube::Client, change: &StatusChange, written: &mut BTreeSet<IngressKey>) {
    let (ns, name) = &change.ingress;
    let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let body = json!({"status": {"loadBalancer": {"ingress": change.set}}});
    match api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body)).await {
        Ok(_) => {
            if change.set.is_some() {
                written.insert(change.ingress.clone());
            } else {
                written.remove(&change.ingress);
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
    fn plan_sets_ours_and_clears_only_what_we_wrote() {
        let want = entries(["10.0.0.1"]);
        let k = |n: &str| ("apps".to_string(), n.to_string());
        let ingresses: BTreeMap<IngressKey, Vec<IngressLoadBalancerIngress>> = [
            (k("new"), vec![]),
            (k("done"), want.clone()),
            (k("stale"), entries(["10.0.0.9"])),
            (k("left"), want.clone()),
            (k("foreign"), entries(["172.16.0.1"])),
            (k("left-written"), entries(["10.0.0.9"])),
        ]
        .into_iter()
        .collect();
        let served: BTreeSet<IngressKey> = [k("new"), k("done"), k("stale")].into();
        let written: BTreeSet<IngressKey> = [k("left-written")].into();
        let p = plan(&ingresses, &served, &want, &written);
        let by: BTreeMap<String, Option<Vec<_>>> = p.into_iter().map(|c| (c.ingress.1, c.set)).collect();
        assert_eq!(by.get("new"), Some(&Some(want.clone())));
        assert_eq!(by.get("stale"), Some(&Some(want.clone())));
        assert!(!by.contains_key("done"), "unchanged status is not rewritten");
        assert_eq!(by.get("left"), Some(&None), "carries our address: cleared");
        assert_eq!(by.get("left-written"), Some(&None), "we wrote it: cleared");
        assert!(!by.contains_key("foreign"), "another controller's status is kept");
    }
}
