//! The one list of Kubernetes API access the controller uses. The chart's ClusterRole and
//! Role are checked against it by a test, so RBAC grants exactly this and nothing more.

/// One RBAC rule: API group ("" is core), resource, verbs, and whether it is namespaced to
/// the controller's own namespace (a Role) or cluster-wide (a ClusterRole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub own_namespace_only: bool,
}

/// Exactly the requests the controller makes (`source/kube.rs` watches: list + watch, the
/// publish Service included; `source/secrets.rs`: list + watch of TLS Secrets by field
/// selector and of named Secrets; `source/status.rs`: nodes list for a NodePort publish Service,
/// Ingress status merge patch; `source/events.rs`: Event create, and get + patch to count a
/// repeated Event; `source/leader.rs`: Lease get/create/update).
/// `tests/controller.rs` records every request the controller sends to the fake API server and
/// checks it against this list, both ways.
const WATCH: &[&str] = &["list", "watch"];

pub const ACCESS: &[Access] = &[
    Access { group: "networking.k8s.io", resource: "ingresses", verbs: WATCH, own_namespace_only: false },
    Access { group: "networking.k8s.io", resource: "ingresses/status", verbs: &["patch"], own_namespace_only: false },
    Access { group: "networking.k8s.io", resource: "ingressclasses", verbs: WATCH, own_namespace_only: false },
    Access { group: "", resource: "services", verbs: WATCH, own_namespace_only: false },
    Access { group: "discovery.k8s.io", resource: "endpointslices", verbs: WATCH, own_namespace_only: false },
    // Only `type=kubernetes.io/tls` Secrets, and Secrets by name (`source/secrets.rs`).
    Access { group: "", resource: "secrets", verbs: WATCH, own_namespace_only: false },
    Access { group: "", resource: "nodes", verbs: &["list"], own_namespace_only: false },
    Access {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "get", "patch"],
        own_namespace_only: false,
    },
    Access {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        own_namespace_only: true,
    },
];

/// What the controller adds with `--gateway-api auto` (the default; the chart passes it only
/// with `gatewayAPI.enabled`, and `off` otherwise), once discovery has found the CRDs
/// (`source/gateway_watch.rs`: list + watch of the four kinds and of Namespaces for
/// `allowedRoutes` selectors; `source/gateway_status.rs`: `PUT` of the status subresource
/// with the cached resourceVersion, so no `get`). Discovery itself (`/apis/GROUP/VERSION`)
/// needs no rule. `tests/controller_gateway.rs` checks this list against the requests, both
/// ways, as `tests/controller.rs` does for [`ACCESS`].
pub const GATEWAY_ACCESS: &[Access] = &[
    Access { group: GATEWAY_GROUP, resource: "gatewayclasses", verbs: WATCH, own_namespace_only: false },
    Access { group: GATEWAY_GROUP, resource: "gatewayclasses/status", verbs: &["update"], own_namespace_only: false },
    Access { group: GATEWAY_GROUP, resource: "gateways", verbs: WATCH, own_namespace_only: false },
    Access { group: GATEWAY_GROUP, resource: "gateways/status", verbs: &["update"], own_namespace_only: false },
    Access { group: GATEWAY_GROUP, resource: "httproutes", verbs: WATCH, own_namespace_only: false },
    Access { group: GATEWAY_GROUP, resource: "httproutes/status", verbs: &["update"], own_namespace_only: false },
    Access { group: GATEWAY_GROUP, resource: "referencegrants", verbs: WATCH, own_namespace_only: false },
    Access { group: "", resource: "namespaces", verbs: WATCH, own_namespace_only: false },
];

const GATEWAY_GROUP: &str = super::gateway_watch::GROUP;

/// Everything the controller may send with Gateway API on or off.
pub fn access(gateway_api: bool) -> impl Iterator<Item = &'static Access> {
    ACCESS.iter().chain(GATEWAY_ACCESS.iter().filter(move |_| gateway_api))
}

/// The Markdown table of [`ACCESS`] and [`GATEWAY_ACCESS`] for the README (docs/controller.md
/// carries it verbatim).
pub fn readme_table() -> String {
    let mut out = String::from("| API group | resource | verbs | granted by |\n|---|---|---|---|\n");
    let gateway = GATEWAY_ACCESS.iter().map(|a| (a, true));
    for (a, gateway_api) in ACCESS.iter().map(|a| (a, false)).chain(gateway) {
        let group = if a.group.is_empty() { "\"\" (core)" } else { a.group };
        let scope = match (a.own_namespace_only, gateway_api) {
            (true, _) => "Role in the election namespace",
            (false, false) => "ClusterRole",
            (false, true) => "ClusterRole, with Gateway API (chart `gatewayAPI.enabled`)",
        };
        out.push_str(&format!("| `{group}` | `{}` | {} | {scope} |\n", a.resource, a.verbs.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docs_carry_the_generated_table() {
        let docs = include_str!("../../docs/controller.md");
        assert!(docs.contains(&readme_table()), "docs/controller.md is out of date; paste:\n{}", readme_table());
    }

    #[test]
    fn no_duplicates_and_verbs_are_rbac_verbs() {
        let known = ["get", "list", "watch", "create", "update", "patch", "delete"];
        let all: Vec<&Access> = access(true).collect();
        for (i, a) in all.iter().enumerate() {
            assert!(a.verbs.iter().all(|v| known.contains(v)), "{a:?}");
            assert!(all[i + 1..].iter().all(|b| (b.group, b.resource) != (a.group, a.resource)), "{a:?} listed twice");
        }
        assert_eq!(access(false).count(), ACCESS.len());
    }
}
