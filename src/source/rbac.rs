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

/// The Markdown table of [`ACCESS`] for the README (docs/controller.md carries it verbatim).
pub fn readme_table() -> String {
    let mut out = String::from("| API group | resource | verbs | granted by |\n|---|---|---|---|\n");
    for a in ACCESS {
        let group = if a.group.is_empty() { "\"\" (core)" } else { a.group };
        let scope = if a.own_namespace_only { "Role in the election namespace" } else { "ClusterRole" };
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
        for (i, a) in ACCESS.iter().enumerate() {
            assert!(a.verbs.iter().all(|v| known.contains(v)), "{a:?}");
            assert!(
                ACCESS[i + 1..].iter().all(|b| (b.group, b.resource) != (a.group, a.resource)),
                "{a:?} listed twice"
            );
        }
    }
}
