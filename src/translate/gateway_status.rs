//! The Gateway API status the snapshot implies, pure: GatewayClass `Accepted`; Gateway
//! `Accepted`/`Programmed`, per-listener conditions, `attachedRoutes`, `supportedKinds` and
//! addresses; for each HTTPRoute, one `RouteParentStatus` per parent this controller owns
//! (`Accepted`, `ResolvedRefs`). The cluster side writes them (leader only), merging route
//! entries with other controllers' entries; a manifests file logs them.
//!
//! **Times.** Every condition carries `observedGeneration` (the object's
//! `metadata.generation`). `lastTransitionTime` is the previous condition's time when the
//! object's current status has a condition of the same type with the same status (so an
//! unchanged status compares equal and is not written again), else `now`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::{ClusterSnapshot, Defaults, ObjectRef, gateway};
use crate::gateway_api::{GatewayClassStatus, GatewayStatus, RouteParentStatus};

/// Every status this controller owns, by object (each list sorted by object).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayStatuses {
    /// GatewayClasses whose `controllerName` is ours (namespace `""`).
    pub classes: Vec<(ObjectRef, GatewayClassStatus)>,
    /// Gateways of those classes.
    pub gateways: Vec<(ObjectRef, GatewayStatus)>,
    /// HTTPRoutes naming at least one of those Gateways: only this controller's parent entries.
    pub routes: Vec<(ObjectRef, Vec<RouteParentStatus>)>,
}

/// Condition types and reasons, as the Gateway API spec names them.
pub mod conditions {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";

    // Reasons.
    pub const REASON_ACCEPTED: &str = "Accepted";
    pub const REASON_PROGRAMMED: &str = "Programmed";
    pub const REASON_RESOLVED_REFS: &str = "ResolvedRefs";
    pub const REASON_NO_CONFLICTS: &str = "NoConflicts";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const INVALID: &str = "Invalid";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const PENDING: &str = "Pending";
}

/// The status of every Gateway API object this controller owns in `snapshot`. `addresses`
/// are the published addresses (`--publish-service`/`--publish-address`, IPs or host
/// names); `now` stamps conditions whose status changed (see the module notes).
pub fn gateway_statuses(
    snapshot: &ClusterSnapshot,
    defaults: &Defaults,
    addresses: &[String],
    now: &Time,
) -> GatewayStatuses {
    let analysis = gateway::Analysis::new(snapshot, defaults);
    analysis.statuses(addresses, now)
}

/// A condition, keeping `previous`'s `lastTransitionTime` when its status is unchanged.
pub(crate) fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}
