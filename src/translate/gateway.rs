//! Gateway API → routes, pure: GatewayClass, Gateway, HTTPRoute and ReferenceGrant read into
//! one [`Analysis`] that both the translation (rules of the one `RouteTable`, next to the
//! Ingress rules) and the status ([`super::gateway_status`]) are read from, so what is served
//! and what the status says cannot disagree.
//!
//! Semantics, from the Gateway API v1 specification:
//! - **Class.** A GatewayClass is ours when `spec.controllerName` is
//!   `--gateway-controller-name`; it is Accepted (wsingress takes no `parametersRef`: one set
//!   makes it `Accepted=False`, `InvalidParameters`). A Gateway is ours when its
//!   `gatewayClassName` names an accepted class of ours.
//! - **Listeners.** `HTTP` listeners are served on the proxy's plain listener (`--listen`),
//!   `HTTPS` listeners (TLS mode `Terminate`) on its TLS listener (`--tls-listen`), whatever
//!   the listener's `port`: the port only tells listeners apart for `parentRefs[].port`.
//!   Other protocols are `Accepted=False` (`UnsupportedProtocol`). Two listeners of one Gateway
//!   on the same port with different protocols are `Conflicted` (`ProtocolConflict`), with the
//!   same hostname `Conflicted` (`HostnameConflict`); conflicted listeners take no routes. A
//!   route's hostname attached only through HTTPS listeners redirects plain requests to https;
//!   one attached only through HTTP listeners is not matched on the TLS listener.
//! - **Attachment.** A `parentRef` (kind Gateway) selects the listeners named by `sectionName`
//!   and/or `port` (none: all). A listener admits a route when `allowedRoutes.namespaces.from`
//!   allows its namespace (`Same` default, `All`, `Selector` over the Namespace's labels) and
//!   `allowedRoutes.kinds` (default: HTTPRoute) lists HTTPRoute; and when the listener's
//!   hostname and the route's hostnames intersect (exact equal; a wildcard `*.s` matches any
//!   name ending in `.s`, the more specific side wins; either side absent: the other).
//!   Reasons when not: `NoMatchingParent` (no listener has that sectionName/port),
//!   `NotAllowedByListeners`, `NoMatchingListenerHostname`.
//! - **Rules.** Path `Exact` and `PathPrefix` (element-wise); `RegularExpression` paths,
//!   headers or query params make the rule `UnsupportedValue` (not served). Header matches
//!   (case-insensitive names, exact values), method, query params (exact). Precedence as the
//!   spec orders it: hostname (exact, then the longest wildcard), Exact path, longest prefix,
//!   method match, most header matches, most query matches, then the oldest route, its
//!   namespace/name, and rule/match order.
//! - **Backends.** Services only (`InvalidKind` otherwise), `port` required, cross-namespace
//!   only with a ReferenceGrant in the Service's namespace (`RefNotPermitted`), the Service
//!   must exist (`BackendNotFound`); a backend that fails is left out of the split; weight 0
//!   takes no traffic. Weights pick a Service per connection; the route's balancing policy
//!   picks the endpoint.
//! - **Filters.** `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`,
//!   `URLRewrite`; any other filter (or backend-level filters) makes the rule not served, with
//!   `UnsupportedValue` in the route's status.
//! - **Timeouts.** `timeouts.request` bounds the time until the 101 (or the whole response of
//!   plain HTTP) and never an open tunnel; `timeouts.backendRequest` bounds each upstream
//!   attempt's handshake (or response head).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

use super::annotations::{self, AnnotatedKind};
use super::gateway_status::{GatewayStatuses, condition, conditions as c};
use super::{
    BackendRef, ClusterSnapshot, Defaults, ObjectRef, PortRef, claim_key, hash_of, hash128, namespace_of, reasons,
};
use crate::gateway_api::{
    GROUP, Gateway, GatewayClass, GatewayClassStatus, GatewayStatus, GatewayStatusAddress, HTTPBackendRef, HTTPRoute,
    HTTPRouteFilter, HTTPRouteMatch, HTTPRouteRule, Listener, ListenerStatus, ParentReference, ReferenceGrant,
    RouteGroupKind, RouteParentStatus,
};
use crate::routes::{
    GatewayRoute, HeaderEdits, HostMatch, PathMatch, Pool, Redirect, RequestConditions, Rewrite, Route, Rule,
    SslRedirect,
};

/// A problem with a reason the spec names, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

/// Where a route's host is served, from the protocols of the listeners it attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Both,
    /// HTTPS listeners only: plain requests get a 308 to https.
    TlsOnly,
    /// HTTP listeners only: not matched on the proxy's TLS listener.
    PlainOnly,
}

impl Served {
    fn of(plain: bool, secure: bool) -> Option<Self> {
        match (plain, secure) {
            (true, true) => Some(Self::Both),
            (false, true) => Some(Self::TlsOnly),
            (true, false) => Some(Self::PlainOnly),
            (false, false) => None,
        }
    }
}

/// Which proxy listener a Gateway listener is served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Https,
}

/// A Gateway listener as analysed.
#[derive(Debug)]
pub(crate) struct ListenerView<'a> {
    pub spec: &'a Listener,
    pub protocol: Option<Protocol>,
    /// Lower-case, `None` = any host.
    pub hostname: Option<String>,
    /// `Accepted` (protocol, TLS mode).
    pub accepted: Result<(), Problem>,
    /// `ResolvedRefs` (certificateRefs, allowedRoutes.kinds).
    pub resolved: Result<(), Problem>,
    pub conflicted: Option<Problem>,
    /// Certificate Secrets (namespace, name) an HTTPS listener may use.
    pub certificates: Vec<(String, String)>,
    pub kinds_ok: bool,
    pub attached: usize,
}

impl ListenerView<'_> {
    /// Routes may attach (and it is programmed).
    pub fn usable(&self) -> bool {
        self.accepted.is_ok() && self.conflicted.is_none() && self.protocol.is_some()
    }
}

#[derive(Debug)]
pub(crate) struct GatewayView<'a> {
    pub gateway: &'a Arc<Gateway>,
    pub object: ObjectRef,
    pub listeners: Vec<ListenerView<'a>>,
}

/// One parentRef of a route that names one of our Gateways.
#[derive(Debug)]
pub(crate) struct ParentView {
    pub parent_ref: ParentReference,
    /// Index into [`Analysis::gateways`].
    pub gateway: usize,
    /// The listeners it attached to and the host matches on each, or why it did not attach.
    pub attached: Result<Vec<(usize, Vec<HostMatch>)>, Problem>,
}

/// One rule's backend as resolved.
#[derive(Debug, Clone)]
pub(crate) struct BackendView {
    pub namespace: String,
    pub service: String,
    pub port: i32,
    pub weight: u32,
    /// `spec.rules[i].backendRefs[j]`.
    pub field: String,
}

/// One match of a rule, ready for the table.
#[derive(Debug, Clone)]
pub(crate) struct MatchView {
    pub path: PathMatch,
    pub conditions: RequestConditions,
}

/// A rule's filters, ready for the table.
#[derive(Debug, Clone, Default)]
pub(crate) struct FilterView {
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
}

#[derive(Debug)]
pub(crate) struct RuleView {
    pub index: usize,
    /// Why the rule is not served (`UnsupportedValue`).
    pub unsupported: Option<Problem>,
    pub matches: Vec<MatchView>,
    pub filters: FilterView,
    /// The valid backendRefs.
    pub backends: Vec<BackendView>,
    /// The summed weight of the invalid ones (their share is answered 500).
    pub invalid_weight: u32,
    pub request_timeout: Option<Duration>,
    pub backend_timeout: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct RouteView<'a> {
    pub route: &'a Arc<HTTPRoute>,
    pub object: ObjectRef,
    pub parents: Vec<ParentView>,
    pub rules: Vec<RuleView>,
    /// The first unresolved backend (`ResolvedRefs=False`).
    pub unresolved: Option<Problem>,
}

/// Everything Gateway API objects say, analysed once.
#[derive(Debug)]
pub(crate) struct Analysis<'a> {
    pub controller: &'a str,
    /// Our GatewayClasses and whether each is accepted.
    pub classes: Vec<(&'a Arc<GatewayClass>, Result<(), Problem>)>,
    pub gateways: Vec<GatewayView<'a>>,
    pub routes: Vec<RouteView<'a>>,
}

/// Lower-case a Gateway API hostname (may start with `*.`).
fn hostname(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Whether host name `name` (exact) is covered by the wildcard `*.suffix` (Gateway API:
/// any number of labels).
fn under(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1 && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

/// The hostnames a listener hostname and a route hostname have in common, per the spec:
/// equal; an exact name under the other's wildcard (the exact name); two wildcards, one
/// under the other (the more specific). `None` when they do not intersect.
pub(crate) fn intersect(listener: &str, route: &str) -> Option<String> {
    let (l, r) = (hostname(listener), hostname(route));
    if l == r {
        return Some(l);
    }
    match (l.strip_prefix("*."), r.strip_prefix("*.")) {
        (Some(ls), None) => under(&r, ls).then_some(r),
        (None, Some(rs)) => under(&l, rs).then_some(l),
        (Some(ls), Some(rs)) => {
            if under(rs, ls) {
                Some(r)
            } else if under(ls, rs) {
                Some(l)
            } else {
                None
            }
        }
        (None, None) => None,
    }
}

/// A host match for the table: exact names, Gateway wildcards (any number of labels), any.
pub(crate) fn host_match(h: Option<&str>) -> HostMatch {
    match h.map(hostname) {
        None => HostMatch::Any,
        Some(h) if h.is_empty() || h == "*" => HostMatch::Any,
        Some(h) => match h.strip_prefix("*.") {
            Some(rest) => HostMatch::Suffix(rest.to_string()),
            None => HostMatch::Exact(h),
        },
    }
}

/// The host matches of a route on a listener, or `None` when nothing intersects.
pub(crate) fn listener_hosts(listener: Option<&str>, route: &[String]) -> Option<Vec<HostMatch>> {
    match (listener, route.is_empty()) {
        (None, true) => Some(vec![HostMatch::Any]),
        (Some(l), true) => Some(vec![host_match(Some(l))]),
        (None, false) => Some(route.iter().map(|r| host_match(Some(r))).collect()),
        (Some(l), false) => {
            let mut out: Vec<HostMatch> =
                route.iter().filter_map(|r| intersect(l, r)).map(|h| host_match(Some(&h))).collect();
            out.dedup();
            (!out.is_empty()).then_some(out)
        }
    }
}

/// A Gateway API duration (GEP-2257): one or more `<number><unit>` with units h, m, s, ms.
pub(crate) fn gateway_duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(format!("`{v}` is not a duration like 10s, 1m30s or 500ms"));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| format!("`{v}`: bad number"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(format!("`{v}` is not a duration like 10s, 1m30s or 500ms (units h, m, s, ms)"));
        };
        total += unit * u32::try_from(n).map_err(|_| format!("`{v}`: too large"))?;
        rest = &rest[len..];
    }
    Ok(total)
}

/// Does `selector` select an object with `labels`? (`matchLabels` and `matchExpressions`.)
pub(crate) fn selects(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k).is_some_and(|have| have == v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Is `group` the core group (`""`, or absent)?
fn core(group: Option<&str>) -> bool {
    group.is_none_or(str::is_empty)
}

/// Do the ReferenceGrants let `from` (group, kind, namespace) refer to `to` (group, kind,
/// name) in namespace `to_namespace`?
pub(crate) fn granted(
    grants: &[Arc<ReferenceGrant>],
    from: (&str, &str, &str),
    to: (&str, &str, &str),
    to_namespace: &str,
) -> bool {
    grants.iter().filter(|g| namespace_of(&g.metadata) == to_namespace).any(|g| {
        let from_ok = g.spec.from.iter().any(|f| f.group == from.0 && f.kind == from.1 && f.namespace == from.2);
        let to_ok =
            g.spec.to.iter().any(|t| {
                t.group == to.0 && t.kind == to.1 && t.name.as_deref().is_none_or(|n| n.is_empty() || n == to.2)
            });
        from_ok && to_ok
    })
}

/// Precedence of routes and Gateways: oldest first (objects without a timestamp last), then
/// namespace/name.
fn age_key(m: &ObjectMeta) -> (bool, Option<&Time>, &str, &str) {
    let ts = m.creation_timestamp.as_ref();
    (ts.is_none(), ts, namespace_of(m), m.name.as_deref().unwrap_or(""))
}

fn object_ref(kind: &str, meta: &ObjectMeta) -> ObjectRef {
    ObjectRef::new(kind, meta)
}

fn class_ref(meta: &ObjectMeta) -> ObjectRef {
    ObjectRef { kind: "GatewayClass".into(), namespace: String::new(), name: meta.name.clone().unwrap_or_default() }
}

impl<'a> Analysis<'a> {
    pub fn new(snapshot: &'a ClusterSnapshot, defaults: &'a Defaults) -> Self {
        let controller = defaults.gateway_controller_name.as_str();
        let mut classes: Vec<(&'a Arc<GatewayClass>, Result<(), Problem>)> = snapshot
            .gateway_classes
            .iter()
            .filter(|gc| gc.spec.controller_name == controller)
            .map(|gc| {
                let accepted = match &gc.spec.parameters_ref {
                    Some(_) => Err(Problem::new(
                        c::INVALID_PARAMETERS,
                        "wsingress takes no parametersRef; remove it (settings come from flags and wsingress.io/* annotations)",
                    )),
                    None => Ok(()),
                };
                (gc, accepted)
            })
            .collect();
        classes.sort_by(|a, b| a.0.metadata.name.cmp(&b.0.metadata.name));
        let accepted_class =
            |name: &str| classes.iter().any(|(gc, ok)| ok.is_ok() && gc.metadata.name.as_deref() == Some(name));
        let mut gateways: Vec<GatewayView<'a>> = snapshot
            .gateways
            .iter()
            .filter(|g| accepted_class(g.spec.gateway_class_name.as_str()))
            .map(|g| gateway_view(g, &snapshot.reference_grants))
            .collect();
        gateways.sort_by(|a, b| age_key(&a.gateway.metadata).cmp(&age_key(&b.gateway.metadata)));
        let mut routes: Vec<RouteView<'a>> = Vec::new();
        let mut sorted: Vec<&'a Arc<HTTPRoute>> = snapshot.http_routes.iter().collect();
        sorted.sort_by(|a, b| age_key(&a.metadata).cmp(&age_key(&b.metadata)));
        for route in sorted {
            let object = object_ref("HTTPRoute", &route.metadata);
            let route_ns = object.namespace.clone();
            let mut parents = Vec::new();
            for pr in &route.spec.parent_refs {
                let is_gateway =
                    pr.group.as_deref().is_none_or(|g| g == GROUP) && pr.kind.as_deref().is_none_or(|k| k == "Gateway");
                if !is_gateway {
                    continue;
                }
                let ns = pr.namespace.as_deref().unwrap_or(&route_ns);
                let Some(gi) = gateways.iter().position(|g| g.object.namespace == ns && g.object.name == pr.name)
                else {
                    continue;
                };
                let attached = attach(&mut gateways[gi], pr, route, &route_ns, &snapshot.namespaces);
                parents.push(ParentView { parent_ref: pr.clone(), gateway: gi, attached });
            }
            if parents.is_empty() {
                continue;
            }
            // attachedRoutes counts routes: once per listener however many parentRefs name it.
            let mut attached: Vec<(usize, usize)> = parents
                .iter()
                .filter_map(|p| p.attached.as_ref().ok().map(|ls| (p.gateway, ls)))
                .flat_map(|(g, ls)| ls.iter().map(move |(l, _)| (g, *l)))
                .collect();
            attached.sort_unstable();
            attached.dedup();
            for (g, l) in attached {
                gateways[g].listeners[l].attached += 1;
            }
            let (rules, unresolved) = rules_of(route, &route_ns, snapshot);
            routes.push(RouteView { route, object, parents, rules, unresolved });
        }
        Self { controller, classes, gateways, routes }
    }

    /// The statuses of every object analysed.
    pub fn statuses(&self, addresses: &[String], now: &Time) -> GatewayStatuses {
        let mut out = GatewayStatuses::default();
        for (gc, accepted) in &self.classes {
            let prev = gc.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
            let generation = gc.metadata.generation;
            let cond = match accepted {
                Ok(()) => {
                    condition(prev, c::ACCEPTED, true, c::REASON_ACCEPTED, "handled by wsingress", generation, now)
                }
                Err(p) => condition(prev, c::ACCEPTED, false, p.reason, &p.message, generation, now),
            };
            out.classes.push((class_ref(&gc.metadata), GatewayClassStatus { conditions: vec![cond] }));
        }
        let published: Vec<GatewayStatusAddress> = addresses
            .iter()
            .map(|a| GatewayStatusAddress {
                type_: Some(if a.parse::<std::net::IpAddr>().is_ok() { "IPAddress" } else { "Hostname" }.to_string()),
                value: a.clone(),
            })
            .collect();
        for g in &self.gateways {
            out.gateways.push((g.object.clone(), gateway_status(g, &published, now)));
        }
        for r in &self.routes {
            out.routes.push((r.object.clone(), self.route_status(r, now)));
        }
        out.classes.sort_by(|a, b| a.0.cmp(&b.0));
        out.gateways.sort_by(|a, b| a.0.cmp(&b.0));
        out.routes.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn route_status(&self, r: &RouteView<'_>, now: &Time) -> Vec<RouteParentStatus> {
        let generation = r.route.metadata.generation;
        let served = r.rules.iter().filter(|rule| rule.unsupported.is_none()).count();
        let first_unsupported = r.rules.iter().find_map(|rule| rule.unsupported.as_ref());
        let mut out = Vec::new();
        for p in &r.parents {
            let prev: &[_] = r
                .route
                .status
                .as_ref()
                .and_then(|s| {
                    s.parents.iter().find(|e| e.controller_name == self.controller && e.parent_ref == p.parent_ref)
                })
                .map_or(&[][..], |e| &e.conditions[..]);
            let mut conds = Vec::new();
            let accepted = match (&p.attached, first_unsupported) {
                (Err(problem), _) => Err(problem.clone()),
                (Ok(_), Some(problem)) if served == 0 => Err(problem.clone()),
                (Ok(_), _) => Ok(()),
            };
            conds.push(match &accepted {
                Ok(()) => condition(prev, c::ACCEPTED, true, c::REASON_ACCEPTED, "attached", generation, now),
                Err(problem) => condition(prev, c::ACCEPTED, false, problem.reason, &problem.message, generation, now),
            });
            conds.push(match &r.unresolved {
                None => condition(
                    prev,
                    c::RESOLVED_REFS,
                    true,
                    c::REASON_RESOLVED_REFS,
                    "all backends resolved",
                    generation,
                    now,
                ),
                Some(problem) => {
                    condition(prev, c::RESOLVED_REFS, false, problem.reason, &problem.message, generation, now)
                }
            });
            if accepted.is_ok()
                && let Some(problem) = first_unsupported
            {
                conds.push(condition(
                    prev,
                    "PartiallyInvalid",
                    true,
                    problem.reason,
                    &problem.message,
                    generation,
                    now,
                ));
            }
            out.push(RouteParentStatus {
                parent_ref: p.parent_ref.clone(),
                controller_name: self.controller.to_string(),
                conditions: conds,
            });
        }
        out
    }
}

fn gateway_view<'a>(g: &'a Arc<Gateway>, grants: &[Arc<ReferenceGrant>]) -> GatewayView<'a> {
    let object = object_ref("Gateway", &g.metadata);
    let mut listeners: Vec<ListenerView<'a>> = g
        .spec
        .listeners
        .iter()
        .map(|l| {
            let (protocol, accepted) = match l.protocol.as_str() {
                "HTTP" => (Some(Protocol::Http), Ok(())),
                "HTTPS" => match l.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("Terminate") {
                    "Terminate" => (Some(Protocol::Https), Ok(())),
                    other => (
                        None,
                        Err(Problem::new(
                            c::UNSUPPORTED_PROTOCOL,
                            format!("TLS mode {other} is not supported; only Terminate"),
                        )),
                    ),
                },
                other => (
                    None,
                    Err(Problem::new(
                        c::UNSUPPORTED_PROTOCOL,
                        format!("protocol {other} is not supported; only HTTP and HTTPS"),
                    )),
                ),
            };
            let kinds = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_deref());
            let kinds_ok = kinds.is_none_or(|ks| {
                ks.iter().any(|k| k.kind == "HTTPRoute" && k.group.as_deref().is_none_or(|g| g == GROUP))
            });
            let mut resolved = if kinds_ok {
                Ok(())
            } else {
                Err(Problem::new(
                    c::INVALID_ROUTE_KINDS,
                    "allowedRoutes.kinds lists no kind wsingress supports (HTTPRoute)",
                ))
            };
            let mut certificates = Vec::new();
            if protocol == Some(Protocol::Https) {
                let refs = l.tls.as_ref().map(|t| &t.certificate_refs[..]).unwrap_or_default();
                if refs.is_empty() {
                    resolved =
                        Err(Problem::new(c::INVALID_CERTIFICATE_REF, "an HTTPS listener needs tls.certificateRefs"));
                }
                for cr in refs {
                    let ns = cr.namespace.as_deref().unwrap_or(&object.namespace);
                    if !core(cr.group.as_deref()) || cr.kind.as_deref().is_some_and(|k| k != "Secret") {
                        resolved = Err(Problem::new(
                            c::INVALID_CERTIFICATE_REF,
                            format!("certificateRef {} is not a Secret", cr.name),
                        ));
                        continue;
                    }
                    if ns != object.namespace
                        && !granted(grants, (GROUP, "Gateway", &object.namespace), ("", "Secret", &cr.name), ns)
                    {
                        resolved = Err(Problem::new(
                            c::REF_NOT_PERMITTED,
                            format!(
                                "Secret {ns}/{} is in another namespace and no ReferenceGrant there allows it",
                                cr.name
                            ),
                        ));
                        continue;
                    }
                    certificates.push((ns.to_string(), cr.name.clone()));
                }
            }
            ListenerView {
                spec: l,
                protocol,
                hostname: l.hostname.as_deref().map(hostname).filter(|h| !h.is_empty()),
                accepted,
                resolved,
                conflicted: None,
                certificates,
                kinds_ok,
                attached: 0,
            }
        })
        .collect();
    // Conflicts within the Gateway: same port with another protocol (checked first), then
    // same port, protocol and hostname.
    for protocol_pass in [true, false] {
        for i in 0..listeners.len() {
            for j in 0..listeners.len() {
                let (a, b) = (&listeners[i], &listeners[j]);
                if i == j || a.spec.port != b.spec.port || a.conflicted.is_some() {
                    continue;
                }
                let problem = if protocol_pass && a.spec.protocol != b.spec.protocol {
                    let why = format!(
                        "port {} is also used by listener {} with protocol {}",
                        a.spec.port, b.spec.name, b.spec.protocol
                    );
                    Some(Problem::new(c::PROTOCOL_CONFLICT, why))
                } else if !protocol_pass && a.spec.protocol == b.spec.protocol && a.hostname == b.hostname {
                    let why = format!("listener {} has the same port, protocol and hostname", b.spec.name);
                    Some(Problem::new(c::HOSTNAME_CONFLICT, why))
                } else {
                    None
                };
                if problem.is_some() {
                    listeners[i].conflicted = problem;
                }
            }
        }
    }
    GatewayView { gateway: g, object, listeners }
}

/// Attach one parentRef of `route` to the listeners of `g` it selects and admits.
fn attach(
    g: &mut GatewayView<'_>,
    pr: &ParentReference,
    route: &HTTPRoute,
    route_ns: &str,
    namespaces: &[Arc<Namespace>],
) -> Result<Vec<(usize, Vec<HostMatch>)>, Problem> {
    let gw_ns = g.object.namespace.clone();
    let selected: Vec<usize> = (0..g.listeners.len())
        .filter(|&i| {
            let l = g.listeners[i].spec;
            pr.section_name.as_deref().is_none_or(|s| s == l.name) && pr.port.is_none_or(|p| p == l.port)
        })
        .collect();
    if selected.is_empty() {
        let what = match (&pr.section_name, pr.port) {
            (Some(s), Some(p)) => format!("sectionName {s} and port {p}"),
            (Some(s), None) => format!("sectionName {s}"),
            (None, Some(p)) => format!("port {p}"),
            (None, None) => "any listener".to_string(),
        };
        return Err(Problem::new(
            c::NO_MATCHING_PARENT,
            format!("Gateway {} has no listener with {what}", g.object.id()),
        ));
    }
    let ns_labels = namespaces
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(route_ns))
        .and_then(|n| n.metadata.labels.as_ref());
    let allowed: Vec<usize> = selected
        .into_iter()
        .filter(|&i| {
            let l = &g.listeners[i];
            if !l.usable() || !l.kinds_ok {
                return false;
            }
            let from = l.spec.allowed_routes.as_ref().and_then(|a| a.namespaces.as_ref());
            match from.and_then(|f| f.from.as_deref()).unwrap_or("Same") {
                "All" => true,
                "Same" => route_ns == gw_ns,
                "Selector" => from.and_then(|f| f.selector.as_ref()).is_some_and(|s| selects(s, ns_labels)),
                _ => false,
            }
        })
        .collect();
    if allowed.is_empty() {
        return Err(Problem::new(
            c::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "no listener of Gateway {} selected by this parentRef admits HTTPRoutes from namespace {route_ns}",
                g.object.id()
            ),
        ));
    }
    let mut out = Vec::new();
    for i in allowed {
        if let Some(hosts) = listener_hosts(g.listeners[i].hostname.as_deref(), &route.spec.hostnames) {
            out.push((i, hosts));
        }
    }
    if out.is_empty() {
        return Err(Problem::new(
            c::NO_MATCHING_LISTENER_HOSTNAME,
            format!("no hostname of the route intersects the hostnames of the listeners of Gateway {}", g.object.id()),
        ));
    }
    Ok(out)
}

/// The rules of a route and the first backend problem (`ResolvedRefs=False`).
fn rules_of(route: &HTTPRoute, route_ns: &str, snapshot: &ClusterSnapshot) -> (Vec<RuleView>, Option<Problem>) {
    let mut unresolved: Option<Problem> = None;
    let default_rule = [HTTPRouteRule::default()];
    let rules: &[HTTPRouteRule] = if route.spec.rules.is_empty() { &default_rule } else { &route.spec.rules };
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut unsupported = None;
        let default_match = [HTTPRouteMatch::default()];
        let matches: &[HTTPRouteMatch] = if rule.matches.is_empty() { &default_match } else { &rule.matches };
        let mut views = Vec::new();
        for (j, m) in matches.iter().enumerate() {
            match match_view(m) {
                Ok(v) => views.push(v),
                Err(message) => {
                    unsupported.get_or_insert(Problem::new(
                        c::UNSUPPORTED_VALUE,
                        format!("spec.rules[{i}].matches[{j}]: {message}"),
                    ));
                }
            }
        }
        let filters = match filter_view(&rule.filters) {
            Ok(f) => f,
            Err(message) => {
                unsupported
                    .get_or_insert(Problem::new(c::UNSUPPORTED_VALUE, format!("spec.rules[{i}].filters: {message}")));
                FilterView::default()
            }
        };
        let mut timeout = |what: &str, v: Option<&String>| -> Option<Duration> {
            let v = v?;
            match gateway_duration(v) {
                Ok(d) if d.is_zero() => None,
                Ok(d) => Some(d),
                Err(e) => {
                    unsupported.get_or_insert(Problem::new(
                        c::UNSUPPORTED_VALUE,
                        format!("spec.rules[{i}].timeouts.{what}: {e}"),
                    ));
                    None
                }
            }
        };
        let t = rule.timeouts.as_ref();
        let request_timeout = timeout("request", t.and_then(|t| t.request.as_ref()));
        let backend_timeout = timeout("backendRequest", t.and_then(|t| t.backend_request.as_ref()));
        let mut backends = Vec::new();
        let mut invalid_weight = 0u32;
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let field = format!("spec.rules[{i}].backendRefs[{j}]");
            if !b.filters.is_empty() {
                unsupported.get_or_insert(Problem::new(
                    c::UNSUPPORTED_VALUE,
                    format!("{field}.filters: backend-level filters are not supported"),
                ));
            }
            match backend_view(b, route_ns, snapshot, field) {
                Ok(v) => backends.push(v),
                Err(p) => {
                    // It keeps its weight in the split, as a share answered 500.
                    invalid_weight = invalid_weight.saturating_add(weight_of(b));
                    unresolved.get_or_insert(p);
                }
            }
        }
        out.push(RuleView {
            index: i,
            unsupported,
            matches: views,
            filters,
            backends,
            invalid_weight,
            request_timeout,
            backend_timeout,
        });
    }
    (out, unresolved)
}

fn match_view(m: &HTTPRouteMatch) -> Result<MatchView, String> {
    let (kind, value) = match &m.path {
        None => ("PathPrefix", "/"),
        Some(p) => (p.type_.as_deref().unwrap_or("PathPrefix"), p.value.as_deref().unwrap_or("/")),
    };
    if !value.starts_with('/') {
        return Err(format!("path {value:?} must start with /"));
    }
    let path = match kind {
        "Exact" => PathMatch::exact(value),
        "PathPrefix" => PathMatch::prefix(value),
        other => return Err(format!("path match type {other} is not supported (Exact and PathPrefix are)")),
    };
    let mut conditions = RequestConditions::default();
    for h in &m.headers {
        if h.type_.as_deref().is_some_and(|t| t != "Exact") {
            return Err(format!("header match type {} is not supported (Exact is)", h.type_.as_deref().unwrap_or("")));
        }
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(format!("header name {:?} is not valid", h.name));
        }
        conditions.headers.push((h.name.to_ascii_lowercase(), h.value.clone()));
    }
    for q in &m.query_params {
        if q.type_.as_deref().is_some_and(|t| t != "Exact") {
            return Err(format!(
                "query param match type {} is not supported (Exact is)",
                q.type_.as_deref().unwrap_or("")
            ));
        }
        conditions.query.push((q.name.clone(), q.value.clone()));
    }
    conditions.method = m.method.clone();
    Ok(MatchView { path, conditions })
}

fn header_edits(f: Option<&crate::gateway_api::HTTPHeaderFilter>, what: &str) -> Result<HeaderEdits, String> {
    let Some(f) = f else { return Err(format!("{what} needs its configuration")) };
    let valid = |n: &str| http::HeaderName::from_bytes(n.as_bytes()).is_ok();
    let pair = |h: &crate::gateway_api::HTTPHeader| -> Result<(String, String), String> {
        if !valid(&h.name) || http::HeaderValue::from_str(&h.value).is_err() {
            return Err(format!("{what}: header {:?} is not valid", h.name));
        }
        Ok((h.name.to_ascii_lowercase(), h.value.clone()))
    };
    let set = f.set.iter().map(pair).collect::<Result<Vec<_>, _>>()?;
    let add = f.add.iter().map(pair).collect::<Result<Vec<_>, _>>()?;
    let mut remove = Vec::new();
    for n in &f.remove {
        if !valid(n) {
            return Err(format!("{what}: header {n:?} is not valid"));
        }
        remove.push(n.to_ascii_lowercase());
    }
    Ok(HeaderEdits { set, add, remove })
}

fn filter_view(filters: &[HTTPRouteFilter]) -> Result<FilterView, String> {
    let mut out = FilterView::default();
    for f in filters {
        match f.type_.as_str() {
            "RequestHeaderModifier" => {
                out.request_headers = header_edits(f.request_header_modifier.as_ref(), "RequestHeaderModifier")?
            }
            "ResponseHeaderModifier" => {
                out.response_headers = header_edits(f.response_header_modifier.as_ref(), "ResponseHeaderModifier")?
            }
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref().ok_or("RequestRedirect needs requestRedirect")?;
                let status = match r.status_code.unwrap_or(302) {
                    s @ (301 | 302 | 303 | 307 | 308) => s as u16,
                    other => return Err(format!("RequestRedirect statusCode {other} is not supported (301, 302)")),
                };
                let scheme = match r.scheme.as_deref() {
                    None => None,
                    Some(s @ ("http" | "https")) => Some(s.to_string()),
                    Some(other) => return Err(format!("RequestRedirect scheme {other} is not supported")),
                };
                let port = match r.port {
                    None => None,
                    Some(p) => Some(
                        u16::try_from(p)
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or(format!("RequestRedirect port {p} is not a port"))?,
                    ),
                };
                let path = r.path.as_ref().map(rewrite_path).transpose()?;
                out.redirect =
                    Some(Redirect { status, scheme, hostname: r.hostname.clone().map(|h| hostname(&h)), port, path });
            }
            "URLRewrite" => {
                let r = f.url_rewrite.as_ref().ok_or("URLRewrite needs urlRewrite")?;
                let path = r.path.as_ref().map(rewrite_path).transpose()?;
                out.rewrite = Some(Rewrite { hostname: r.hostname.clone().map(|h| hostname(&h)), path });
            }
            other => {
                return Err(format!(
                    "filter {other} is not supported (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite are)"
                ));
            }
        }
    }
    Ok(out)
}

fn rewrite_path(p: &crate::gateway_api::HTTPPathModifier) -> Result<crate::routes::PathRewrite, String> {
    use crate::routes::PathRewrite;
    match p.type_.as_str() {
        "ReplaceFullPath" => {
            Ok(PathRewrite::Full(p.replace_full_path.clone().ok_or("ReplaceFullPath needs replaceFullPath")?))
        }
        "ReplacePrefixMatch" => Ok(PathRewrite::Prefix(
            p.replace_prefix_match.clone().ok_or("ReplacePrefixMatch needs replacePrefixMatch")?,
        )),
        other => Err(format!("path modifier {other} is not supported")),
    }
}

fn backend_view(
    b: &HTTPBackendRef,
    route_ns: &str,
    snapshot: &ClusterSnapshot,
    field: String,
) -> Result<BackendView, Problem> {
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    if !core(b.group.as_deref()) || b.kind.as_deref().is_some_and(|k| k != "Service") {
        return Err(Problem::new(
            c::INVALID_KIND,
            format!(
                "{field}: {}/{} is not a Service; only Services are supported",
                b.group.as_deref().unwrap_or(""),
                b.kind.as_deref().unwrap_or("")
            ),
        ));
    }
    if ns != route_ns
        && !granted(&snapshot.reference_grants, (GROUP, "HTTPRoute", route_ns), ("", "Service", &b.name), ns)
    {
        return Err(Problem::new(
            c::REF_NOT_PERMITTED,
            format!(
                "{field}: Service {ns}/{} is in another namespace and no ReferenceGrant there allows HTTPRoutes from {route_ns}",
                b.name
            ),
        ));
    }
    let exists = snapshot
        .services
        .iter()
        .any(|s| namespace_of(&s.metadata) == ns && s.metadata.name.as_deref() == Some(b.name.as_str()));
    if !exists {
        return Err(Problem::new(c::BACKEND_NOT_FOUND, format!("{field}: Service {ns}/{} not found", b.name)));
    }
    let Some(port) = b.port else {
        return Err(Problem::new(c::UNSUPPORTED_VALUE, format!("{field}: a Service backend needs a port")));
    };
    Ok(BackendView { namespace: ns.to_string(), service: b.name.clone(), port, weight: weight_of(b), field })
}

/// A backendRef's weight: 1 when unset, 0 for anything negative.
fn weight_of(b: &HTTPBackendRef) -> u32 {
    u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0)
}

fn gateway_status(g: &GatewayView<'_>, addresses: &[GatewayStatusAddress], now: &Time) -> GatewayStatus {
    let generation = g.gateway.metadata.generation;
    let prev = g.gateway.status.as_ref();
    let prev_conds = prev.map_or(&[][..], |s| &s.conditions[..]);
    let mut listeners = Vec::new();
    let mut all_valid = true;
    for l in &g.listeners {
        let lprev = prev
            .and_then(|s| s.listeners.iter().find(|x| x.name == l.spec.name))
            .map_or(&[][..], |x| &x.conditions[..]);
        let mut conds = Vec::new();
        conds.push(match &l.accepted {
            Ok(()) => condition(lprev, c::ACCEPTED, true, c::REASON_ACCEPTED, "", generation, now),
            Err(p) => condition(lprev, c::ACCEPTED, false, p.reason, &p.message, generation, now),
        });
        conds.push(match &l.resolved {
            Ok(()) => condition(lprev, c::RESOLVED_REFS, true, c::REASON_RESOLVED_REFS, "", generation, now),
            Err(p) => condition(lprev, c::RESOLVED_REFS, false, p.reason, &p.message, generation, now),
        });
        conds.push(match &l.conflicted {
            None => condition(lprev, c::CONFLICTED, false, c::REASON_NO_CONFLICTS, "", generation, now),
            Some(p) => condition(lprev, c::CONFLICTED, true, p.reason, &p.message, generation, now),
        });
        let programmed = l.usable() && l.resolved.is_ok();
        all_valid &= programmed;
        let (reason, message) = match (l.protocol, programmed) {
            (Some(Protocol::Http), true) => (c::REASON_PROGRAMMED, "served on the proxy's plain listener (--listen)"),
            (Some(Protocol::Https), true) => {
                (c::REASON_PROGRAMMED, "served on the proxy's TLS listener (--tls-listen)")
            }
            _ => (c::INVALID, "not served: see the other conditions"),
        };
        conds.push(condition(lprev, c::PROGRAMMED, programmed, reason, message, generation, now));
        let supported_kinds = if l.kinds_ok {
            vec![RouteGroupKind { group: Some(GROUP.to_string()), kind: "HTTPRoute".to_string() }]
        } else {
            Vec::new()
        };
        listeners.push(ListenerStatus {
            name: l.spec.name.clone(),
            supported_kinds,
            attached_routes: i32::try_from(l.attached).unwrap_or(i32::MAX),
            conditions: conds,
        });
    }
    let any = g.listeners.iter().any(|l| l.usable());
    let accepted = if all_valid || any {
        condition(prev_conds, c::ACCEPTED, true, c::REASON_ACCEPTED, "", generation, now)
    } else {
        condition(prev_conds, c::ACCEPTED, false, c::LISTENERS_NOT_VALID, "no listener is valid", generation, now)
    };
    let programmed = if any {
        condition(prev_conds, c::PROGRAMMED, true, c::REASON_PROGRAMMED, "", generation, now)
    } else {
        condition(prev_conds, c::PROGRAMMED, false, c::INVALID, "no listener can be served", generation, now)
    };
    GatewayStatus { addresses: addresses.to_vec(), conditions: vec![accepted, programmed], listeners }
}

impl<'a> super::Translation<'a> {
    /// The rules of one served HTTPRoute (call in source precedence order).
    pub(super) fn http_route(&mut self, route: &'a Arc<HTTPRoute>) {
        let Some(&vi) = self.http_routes.get(&(Arc::as_ptr(route) as usize)) else { return };
        let analysis = self.gateway.clone();
        let view = &analysis.routes[vi];
        let object = Arc::new(view.object.clone());
        let annotations = route.metadata.annotations.as_ref();
        let settings = annotations::route_settings(
            &object,
            annotations,
            AnnotatedKind::Ingress,
            &self.defaults.settings,
            self.defaults.unsupported_security,
            &mut self.warnings,
        );
        let tls = annotations::backend_tls_request(&object, annotations, &mut self.warnings);
        // What the status says, also as warnings (a log line in file mode, an Event in a cluster).
        for p in &view.parents {
            if let Err(problem) = &p.attached {
                let why = format!(
                    "not accepted by Gateway {}: {}",
                    analysis.gateways[p.gateway].object.id(),
                    problem.message
                );
                self.warn(&object, "spec.parentRefs", p.parent_ref.name.as_str(), why, problem.reason);
            }
        }
        if let Some(problem) = &view.unresolved {
            let why = format!("{}; that backend's share of the traffic is answered 500", problem.message);
            self.warn(&object, "spec.rules", "", why, problem.reason);
        }
        // The hosts this route serves, over every listener it attached to, and on which of the
        // proxy's listeners: (host, plain, TLS).
        let mut hosts: Vec<(HostMatch, bool, bool)> = Vec::new();
        for p in &view.parents {
            let Ok(attached) = &p.attached else { continue };
            for (li, hs) in attached {
                let protocol = analysis.gateways[p.gateway].listeners[*li].protocol;
                let (plain, secure) = (protocol == Some(Protocol::Http), protocol == Some(Protocol::Https));
                for h in hs {
                    match hosts.iter_mut().find(|(x, _, _)| x == h) {
                        Some(entry) => {
                            entry.1 |= plain;
                            entry.2 |= secure;
                        }
                        None => hosts.push((h.clone(), plain, secure)),
                    }
                }
            }
        }
        if hosts.is_empty() {
            return;
        }
        // Hosts by where they are served: on both listeners; on HTTPS listeners only (plain
        // requests are redirected to https); on HTTP listeners only (not matched over TLS).
        let served: Vec<(Served, Vec<HostMatch>)> = [Served::Both, Served::TlsOnly, Served::PlainOnly]
            .into_iter()
            .map(|how| {
                let of = hosts.iter().filter(|(_, plain, secure)| Served::of(*plain, *secure) == Some(how));
                (how, of.map(|(h, _, _)| h.clone()).collect::<Vec<_>>())
            })
            .filter(|(_, hs)| !hs.is_empty())
            .collect();
        for rule in &view.rules {
            let field = format!("spec.rules[{}]", rule.index);
            if let Some(p) = &rule.unsupported {
                let why = format!("{} ({}); this rule is not served", p.message, p.reason);
                self.warn(&object, field, "", why, reasons::INVALID_RULE);
                continue;
            }
            let mut rule_settings = settings.clone();
            if let Some(t) = rule.backend_timeout {
                rule_settings.handshake_timeout = t;
                rule_settings.response_timeout = t;
            }
            self.routes.clear();
            let mut backends: Vec<(u32, Arc<Route>)> = Vec::new();
            for b in rule.backends.iter().filter(|b| b.weight > 0) {
                let port_text = b.port.to_string();
                let cache_key = hash_of(&(&*object, &b.field, &b.namespace, &b.service, &port_text));
                let backend = BackendRef {
                    field: b.field.clone(),
                    service: b.service.clone(),
                    port: Some(PortRef::Number(b.port)),
                    port_text,
                    cache_key,
                };
                let r = self.route_for(&object, &b.namespace, &rule_settings, &tls, &backend);
                backends.push((b.weight, r));
            }
            let label = backends.first().map_or_else(|| "none".to_string(), |(_, r)| r.backend.clone());
            for m in &rule.matches {
                let mut extras = GatewayRoute::new(backends.clone());
                extras.invalid_weight = rule.invalid_weight;
                extras.conditions = m.conditions.clone();
                extras.request_headers = rule.filters.request_headers.clone();
                extras.response_headers = rule.filters.response_headers.clone();
                extras.redirect = rule.filters.redirect.clone();
                extras.rewrite = rule.filters.rewrite.clone();
                extras.request_timeout = rule.request_timeout;
                extras.matched_prefix = match &m.path {
                    PathMatch::Prefix(p) => Some(p.clone()),
                    PathMatch::Exact(_) => None,
                };
                for (how, hosts) in &served {
                    let mut extras = extras.with_backends(extras.backends.clone());
                    extras.plain_only = *how == Served::PlainOnly;
                    let mut front_settings = rule_settings.clone();
                    if *how == Served::TlsOnly {
                        front_settings.ssl_redirect = SslRedirect::Force;
                    }
                    front_settings.gateway = Some(Arc::new(extras));
                    let front = Arc::new(Route {
                        id: object.id(),
                        backend: label.clone(),
                        pool: Pool::new(Vec::new()),
                        settings: front_settings,
                    });
                    for host in hosts {
                        let key = if m.conditions.is_empty() {
                            claim_key(host, &m.path)
                        } else {
                            hash128(&(host, &m.path, &m.conditions))
                        };
                        if self.claim(&object, &field, key, host, &m.path) {
                            self.rules.push(Rule { host: host.clone(), path: m.path.clone(), route: front.clone() });
                        }
                    }
                }
            }
        }
    }
}

impl super::Translation<'_> {
    /// Warnings for the listeners of our Gateways that are not served (once per translation).
    pub(super) fn gateway_warnings(&mut self) {
        let analysis = self.gateway.clone();
        for g in &analysis.gateways {
            for (i, l) in g.listeners.iter().enumerate() {
                let field = format!("spec.listeners[{i}]");
                let problems = [l.accepted.as_ref().err(), l.resolved.as_ref().err(), l.conflicted.as_ref()];
                for problem in problems.into_iter().flatten() {
                    let why = format!("listener {}: {}", l.spec.name, problem.message);
                    self.warn(&g.object, field.as_str(), l.spec.name.as_str(), why, problem.reason);
                }
            }
        }
        for (gc, accepted) in &analysis.classes {
            if let Err(problem) = accepted {
                self.warn(&class_ref(&gc.metadata), "spec.parametersRef", "", problem.message.clone(), problem.reason);
            }
        }
    }
}

/// The certificates of the HTTPS listeners of our Gateways (after the Ingresses': an
/// Ingress's certificate for a host wins).
pub(super) fn listener_certificates(analysis: &Analysis<'_>, certs: &mut super::tls::Certificates<'_, '_>) {
    for g in &analysis.gateways {
        for (i, l) in g.listeners.iter().enumerate() {
            if l.protocol != Some(Protocol::Https) || !l.usable() {
                continue;
            }
            for (j, (ns, name)) in l.certificates.iter().enumerate() {
                let field = format!("spec.listeners[{i}].tls.certificateRefs[{j}]");
                certs.listener(&g.object, &field, ns, name, l.hostname.as_deref());
            }
        }
    }
}
