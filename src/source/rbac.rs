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

const READ: &[&str] = &["get", "list", "watch"];

pub const ACCESS: &[Access] = &[
    Access {
        group: "networking.k8s.io",
        resource: "ingresses",
        verbs: READ,
        own_namespace_only: false,
    },
    Access {
        group: "networking.k8s.io",
        resource: "ingresses/status",
        verbs: &["get", "patch"],
        own_namespace_only: false,
    },
    Access {
        group: "networking.k8s.io",
        resource: "ingressclasses",
        verbs: READ,
        own_namespace_only: false,
    },
    Access {
        group: "",
        resource: "services",
        verbs: READ,
        own_namespace_only: false,
    },
    Access {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: READ,
        own_namespace_only: false,
    },
    Access {
        group: "",
        resource: "nodes",
        verbs: &["get", "list"],
        own_namespace_only: false,
    },
    Access {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        own_namespace_only: false,
    },
    Access {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        own_namespace_only: true,
    },
];
