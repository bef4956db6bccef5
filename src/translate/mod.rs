//! Pure translation of Kubernetes objects (Ingress, Service, EndpointSlice, IngressClass)
//! into a [`RouteTable`]: no clients, no sockets, no clocks. The file source and the
//! controller both call [`translate`].
//!
//! Semantics follow the Kubernetes Ingress API:
//! - **Class.** An Ingress is ours when `spec.ingressClassName` names an IngressClass whose
//!   `spec.controller` is [`CONTROLLER_NAME`], or names `--ingress-class` while no
//!   IngressClass of that name exists (handy for a manifests file); else when it has no
//!   class name and its legacy `kubernetes.io/ingress.class` annotation names one of those
//!   classes; else, with no class at all, only when one of our IngressClasses carries
//!   `ingressclass.kubernetes.io/is-default-class: "true"`.
//! - **Rules.** Hosts may start with `*.` (one label); `pathType` `Exact`, `Prefix`, and
//!   `ImplementationSpecific` (treated as `Prefix`). The same host + path + type in two
//!   places is a conflict: the oldest object (`creationTimestamp`, then namespace/name)
//!   wins and the other gets a `RuleConflict` warning. The oldest `defaultBackend` becomes
//!   the table's default route.
//! - **Backends.** A Service port by number or name; its endpoints come from every
//!   EndpointSlice labelled `kubernetes.io/service-name` in the namespace, using the slice
//!   port whose name equals the Service port's name (so `targetPort` may differ). Ready
//!   endpoints (`ready` unset counts as ready) take new connections; serving-but-terminating
//!   ones are kept not ready, only so their tunnels drain on time; the rest are dropped.
//!   A missing Service, port or ready endpoint is a warning and the route stays, answering 503.
//! - **Service-only routes.** A Service annotated `wsingress.io/expose: "true"` is routed
//!   without an Ingress (see [`annotations::exposure`]); class filtering does not apply.
//!
//! The output depends only on the set of objects, never on their order, so replicas agree.

pub mod annotations;
pub mod tls;
pub mod units;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;

use crate::routes::{
    BackendTls, BackendVerify, CaBundle, Endpoint, HostMatch, PathMatch, Pool, Route, RouteSettings, RouteTable, Rule,
};
use crate::tls::CertTable;
use annotations::{AnnotatedKind, BackendTlsRequest};
use tls::{SecretIndex, TlsDefaults};

/// The controller name our IngressClass must carry in `spec.controller`.
pub const CONTROLLER_NAME: &str = "wsingress.io/ingress-controller";
/// The default IngressClass name.
pub const DEFAULT_CLASS: &str = "wsingress";
/// Legacy class annotation on an Ingress (before `spec.ingressClassName`).
pub const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// IngressClass annotation marking the cluster's default class.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
/// EndpointSlice label naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Kubernetes Event reasons of [`Warning`]s.
pub mod reasons {
    pub const INVALID_ANNOTATION: &str = "InvalidAnnotation";
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    pub const PORT_NOT_FOUND: &str = "PortNotFound";
    pub const AMBIGUOUS_PORT: &str = "AmbiguousPort";
    pub const NO_READY_ENDPOINTS: &str = "NoReadyEndpoints";
    pub const RULE_CONFLICT: &str = "RuleConflict";
    pub const INVALID_RULE: &str = "InvalidRule";
    pub const UNSUPPORTED_BACKEND: &str = "UnsupportedBackend";
    pub const UNSUPPORTED_ADDRESS_TYPE: &str = "UnsupportedAddressType";
    pub const DUPLICATE_OBJECT: &str = "DuplicateObject";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    pub const CERTIFICATE_CONFLICT: &str = "CertificateConflict";
}

/// Service port `appProtocol` values that make the proxy speak TLS to the endpoints.
pub const TLS_APP_PROTOCOLS: &[&str] = &["https", "kubernetes.io/wss", "kubernetes.io/https", "wss"];

/// Everything translation reads. Order does not matter.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub ingresses: Vec<Ingress>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub ingress_classes: Vec<IngressClass>,
}

/// Flags that shape translation.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// IngressClass name we serve (`--ingress-class`).
    pub class_name: String,
    /// Settings used where no annotation says otherwise (from the `serve` flags).
    pub settings: RouteSettings,
}

impl Default for Defaults {
    fn default() -> Self {
        Self { class_name: DEFAULT_CLASS.to_string(), settings: RouteSettings::default() }
    }
}

/// A Kubernetes object a warning is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    fn new(kind: &str, meta: &ObjectMeta) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: namespace_of(meta).to_string(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    /// `namespace/name`: the route id of an Ingress or Service.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A configuration problem: it never fails the whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub object: ObjectRef,
    /// e.g. `metadata.annotations[wsingress.io/idle-timeout]` or `spec.rules[0].http.paths[1].backend.service.port.name`.
    pub field: String,
    pub value: String,
    pub reason: String,
    /// Kubernetes Event reason: `InvalidAnnotation`, `ServiceNotFound`, `PortNotFound`,
    /// `NoReadyEndpoints`, `RuleConflict`, ...
    pub event_reason: &'static str,
}

impl Warning {
    fn new(
        object: &ObjectRef,
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
        event_reason: &'static str,
    ) -> Self {
        Self { object: object.clone(), field: field.into(), value: value.into(), reason: reason.into(), event_reason }
    }
}

/// Objects without a namespace (as in a manifests file) are in `default`, as with kubectl.
fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Translate a snapshot into a route table and the warnings about it (sorted). Secrets are
/// not read: no certificates, and `backend-ca-secret` is not resolved (verification uses the
/// system roots). [`translate_all`] reads them.
pub fn translate(snapshot: &ClusterSnapshot, defaults: &Defaults) -> (RouteTable, Vec<Warning>) {
    let mut t = Translation::new(snapshot, defaults, None);
    t.routes();
    t.finish()
}

/// Translate a snapshot and its Secrets into a route table and a certificate table, with
/// every warning (sorted). `previous` is the certificate table now serving and `now` the
/// time (Unix seconds): see [`tls`].
pub fn translate_all<'a>(
    snapshot: &'a ClusterSnapshot,
    secrets: &'a [Secret],
    defaults: &Defaults,
    tls_defaults: &TlsDefaults,
    previous: &CertTable,
    now: i64,
) -> (RouteTable, CertTable, Vec<Warning>) {
    let index = tls::index(secrets);
    let mut t = Translation::new(snapshot, defaults, Some(index.clone()));
    t.routes();
    let mut warnings = std::mem::take(&mut t.warnings);
    let mut certs = tls::Certificates::new(&index, previous, now, &mut warnings);
    for source in t.sources() {
        if let Source::Ingress(ing) = source {
            certs.ingress(ing);
        }
    }
    let certs = certs.finish(tls_defaults);
    t.warnings = warnings;
    let (table, warnings) = t.finish();
    (table, certs, warnings)
}

/// The Ingresses this controller serves (by class), sorted: the status writer's list.
pub fn served_ingresses(snapshot: &ClusterSnapshot, defaults: &Defaults) -> Vec<ObjectRef> {
    let classes = Classes::new(snapshot, defaults);
    let mut out: Vec<ObjectRef> = snapshot
        .ingresses
        .iter()
        .filter(|i| classes.serves(i))
        .map(|i| ObjectRef::new("Ingress", &i.metadata))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The IngressClass names we serve and whether one of them is the cluster default.
struct Classes {
    names: BTreeSet<String>,
    default: bool,
}

impl Classes {
    fn new(snapshot: &ClusterSnapshot, defaults: &Defaults) -> Self {
        let mut names = BTreeSet::new();
        let mut default = false;
        for class in &snapshot.ingress_classes {
            let ours = class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER_NAME);
            if !ours {
                continue;
            }
            if let Some(name) = &class.metadata.name {
                names.insert(name.clone());
            }
            let is_default = class
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v.trim() == "true");
            default |= is_default;
        }
        let declared =
            snapshot.ingress_classes.iter().any(|c| c.metadata.name.as_deref() == Some(defaults.class_name.as_str()));
        if !declared {
            names.insert(defaults.class_name.clone());
        }
        Self { names, default }
    }

    fn serves(&self, ing: &Ingress) -> bool {
        if let Some(name) = ing.spec.as_ref().and_then(|s| s.ingress_class_name.as_deref()) {
            return self.names.contains(name);
        }
        match ing.metadata.annotations.as_ref().and_then(|a| a.get(LEGACY_CLASS_ANNOTATION)) {
            Some(name) => self.names.contains(name.trim()),
            None => self.default,
        }
    }
}

/// An object that defines routes.
#[derive(Clone, Copy)]
enum Source<'a> {
    Ingress(&'a Ingress),
    Service(&'a Service),
}

impl Source<'_> {
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Ingress(i) => &i.metadata,
            Self::Service(s) => &s.metadata,
        }
    }

    /// Oldest first; objects without a timestamp (a manifests file) after those with one;
    /// then namespace, name, and kind (Ingress before Service).
    fn precedence(&self) -> (bool, Option<&Time>, &str, &str, u8) {
        let m = self.meta();
        let ts = m.creation_timestamp.as_ref();
        let kind = match self {
            Self::Ingress(_) => 0,
            Self::Service(_) => 1,
        };
        (ts.is_none(), ts, namespace_of(m), m.name.as_deref().unwrap_or(""), kind)
    }
}

/// The Service port a backend names.
#[derive(Debug, Clone)]
enum PortRef {
    Number(i32),
    Name(String),
}

impl PortRef {
    fn text(&self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Name(n) => n.clone(),
        }
    }
}

/// Who holds a host + path rule, for conflict messages.
struct Claim {
    owner: ObjectRef,
}

struct Translation<'a> {
    snapshot: &'a ClusterSnapshot,
    defaults: &'a Defaults,
    classes: Classes,
    services: BTreeMap<(&'a str, &'a str), &'a Service>,
    /// EndpointSlices by (namespace, service name), sorted by slice name.
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    rules: Vec<Rule>,
    claims: HashMap<(HostMatch, PathMatch), Claim>,
    default_route: Option<(ObjectRef, Arc<Route>)>,
    /// One route per (object, service, port as written), shared by its rules.
    routes: HashMap<(ObjectRef, String, String), Arc<Route>>,
    warnings: Vec<Warning>,
    /// `None` when Secrets are not read ([`translate`]).
    secrets: Option<SecretIndex<'a>>,
    /// CA bundles by (namespace, Secret name), shared by the routes naming them.
    cas: HashMap<(String, String), Option<Arc<CaBundle>>>,
}

impl<'a> Translation<'a> {
    fn new(snapshot: &'a ClusterSnapshot, defaults: &'a Defaults, secrets: Option<SecretIndex<'a>>) -> Self {
        let mut services = BTreeMap::new();
        for svc in &snapshot.services {
            let key = (namespace_of(&svc.metadata), svc.metadata.name.as_deref().unwrap_or(""));
            services.entry(key).or_insert(svc);
        }
        let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in &snapshot.endpoint_slices {
            let Some(service) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
                continue;
            };
            slices.entry((namespace_of(&slice.metadata), service.as_str())).or_default().push(slice);
        }
        for list in slices.values_mut() {
            list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        Self {
            snapshot,
            defaults,
            classes: Classes::new(snapshot, defaults),
            services,
            slices,
            rules: Vec::new(),
            claims: HashMap::new(),
            default_route: None,
            routes: HashMap::new(),
            warnings: Vec::new(),
            secrets,
            cas: HashMap::new(),
        }
    }

    /// Every route-defining object, in precedence order.
    fn routes(&mut self) {
        for source in self.sources() {
            match source {
                Source::Ingress(ing) => self.ingress(ing),
                Source::Service(svc) => self.exposed_service(svc),
            }
        }
    }

    /// Route-defining objects in precedence order.
    fn sources(&self) -> Vec<Source<'a>> {
        let snapshot = self.snapshot;
        let mut out: Vec<Source<'a>> = snapshot
            .ingresses
            .iter()
            .filter(|i| self.classes.serves(i))
            .map(Source::Ingress)
            .chain(snapshot.services.iter().map(Source::Service))
            .collect();
        out.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        out
    }

    fn ingress(&mut self, ing: &'a Ingress) {
        let object = ObjectRef::new("Ingress", &ing.metadata);
        let settings = annotations::route_settings(
            &object,
            ing.metadata.annotations.as_ref(),
            AnnotatedKind::Ingress,
            &self.defaults.settings,
            &mut self.warnings,
        );
        let tls = annotations::backend_tls_request(&object, ing.metadata.annotations.as_ref(), &mut self.warnings);
        let namespace = namespace_of(&ing.metadata);
        let Some(spec) = &ing.spec else {
            self.warn(&object, "spec", "", "the Ingress has no spec", reasons::INVALID_RULE);
            return;
        };
        let rules = spec.rules.as_deref().unwrap_or_default();
        if rules.is_empty() && spec.default_backend.is_none() {
            self.warn(
                &object,
                "spec.rules",
                "",
                "the Ingress has neither rules nor a defaultBackend: nothing to route",
                reasons::INVALID_RULE,
            );
        }
        if let Some(backend) = &spec.default_backend {
            self.default_backend(&object, namespace, &settings, &tls, backend);
        }
        for (i, rule) in rules.iter().enumerate() {
            let host_text = rule.host.as_deref().unwrap_or("");
            if !host_text.is_empty() && !valid_host(host_text) {
                self.warn(
                    &object,
                    format!("spec.rules[{i}].host"),
                    host_text,
                    "not a host name (e.g. chat.example.com or *.example.com); rule ignored",
                    reasons::INVALID_RULE,
                );
                continue;
            }
            let host = HostMatch::parse(host_text);
            let Some(http) = &rule.http else {
                self.warn(
                    &object,
                    format!("spec.rules[{i}].http"),
                    host_text,
                    "the rule has no http paths; nothing is routed for it",
                    reasons::INVALID_RULE,
                );
                continue;
            };
            for (j, p) in http.paths.iter().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let Some(path) = self.path_match(&object, &field, p.path.as_deref(), &p.path_type) else {
                    continue;
                };
                if !self.claim(&object, &field, &host, &path) {
                    continue;
                }
                let Some(route) = self.ingress_backend(&object, namespace, &settings, &tls, &p.backend, &field) else {
                    self.claims.remove(&(host.clone(), path.clone()));
                    continue;
                };
                self.rules.push(Rule { host: host.clone(), path, route });
            }
        }
    }

    fn default_backend(
        &mut self,
        object: &ObjectRef,
        namespace: &str,
        settings: &RouteSettings,
        tls: &BackendTlsRequest,
        backend: &IngressBackend,
    ) {
        let field = "spec.defaultBackend";
        if let Some((winner, _)) = &self.default_route {
            let reason = format!(
                "{winner} already provides the default backend (older, or the same age and first by namespace/name); this one is ignored"
            );
            self.warn(object, field, "", reason, reasons::RULE_CONFLICT);
            return;
        }
        if let Some(route) = self.ingress_backend(object, namespace, settings, tls, backend, field) {
            self.default_route = Some((object.clone(), route));
        }
    }

    /// The path of one HTTPIngressPath, or a warning.
    fn path_match(
        &mut self,
        object: &ObjectRef,
        field: &str,
        path: Option<&str>,
        path_type: &str,
    ) -> Option<PathMatch> {
        let implementation_specific = path_type == "ImplementationSpecific";
        let path = match path {
            Some(p) if !p.is_empty() => p,
            // Only ImplementationSpecific may leave the path out; it then means every path.
            _ if implementation_specific => "/",
            _ => {
                self.warn(
                    object,
                    format!("{field}.path"),
                    "",
                    format!("pathType {path_type} needs a path; path ignored"),
                    reasons::INVALID_RULE,
                );
                return None;
            }
        };
        if !path.starts_with('/') {
            self.warn(
                object,
                format!("{field}.path"),
                path,
                "a path must start with `/`; path ignored",
                reasons::INVALID_RULE,
            );
            return None;
        }
        match path_type {
            "Exact" => Some(PathMatch::exact(path)),
            "Prefix" | "ImplementationSpecific" => Some(PathMatch::prefix(path)),
            other => {
                self.warn(
                    object,
                    format!("{field}.pathType"),
                    other,
                    "pathType must be Exact, Prefix or ImplementationSpecific; path ignored",
                    reasons::INVALID_RULE,
                );
                None
            }
        }
    }

    /// Take host + path for `object`, or warn that an older object holds it.
    fn claim(&mut self, object: &ObjectRef, field: &str, host: &HostMatch, path: &PathMatch) -> bool {
        let key = (host.clone(), path.clone());
        if let Some(claim) = self.claims.get(&key) {
            let reason = if &claim.owner == object {
                format!("host {host} path {path} appears twice in this object; the first one is used")
            } else {
                format!(
                    "host {host} path {path} is already routed by {} (older, or the same age and first by namespace/name); this rule is ignored",
                    claim.owner
                )
            };
            self.warn(object, field, format!("{host} {path}"), reason, reasons::RULE_CONFLICT);
            return false;
        }
        self.claims.insert(key, Claim { owner: object.clone() });
        true
    }

    /// The route of an Ingress backend (`field` is where the backend sits in the Ingress).
    fn ingress_backend(
        &mut self,
        object: &ObjectRef,
        namespace: &str,
        settings: &RouteSettings,
        tls: &BackendTlsRequest,
        backend: &IngressBackend,
        field: &str,
    ) -> Option<Arc<Route>> {
        let Some(service) = &backend.service else {
            let (value, reason) = match &backend.resource {
                Some(r) => {
                    (format!("{}/{}", r.kind, r.name), "resource backends are not supported; only Service backends")
                }
                None => (String::new(), "the backend names no Service"),
            };
            self.warn(
                object,
                format!("{field}.backend"),
                value,
                format!("{reason}; path ignored"),
                reasons::UNSUPPORTED_BACKEND,
            );
            return None;
        };
        let field = if field == "spec.defaultBackend" {
            format!("{field}.service")
        } else {
            format!("{field}.backend.service")
        };
        let port = service.port.as_ref().and_then(|p| match (&p.name, p.number) {
            (Some(name), _) if !name.is_empty() => Some(PortRef::Name(name.clone())),
            (_, Some(n)) => Some(PortRef::Number(n)),
            _ => None,
        });
        let port_text = port.as_ref().map(PortRef::text).unwrap_or_default();
        let key = (object.clone(), service.name.clone(), port_text.clone());
        if let Some(route) = self.routes.get(&key) {
            return Some(route.clone());
        }
        let backend_label = format!("{}:{}", service.name, port_text);
        let mut settings = settings.clone();
        let endpoints = match self.services.get(&(namespace, service.name.as_str())).copied() {
            None => {
                self.warn(
                    object,
                    format!("{field}.name"),
                    service.name.as_str(),
                    format!("Service {namespace}/{} not found; the route answers 503 until it exists", service.name),
                    reasons::SERVICE_NOT_FOUND,
                );
                Vec::new()
            }
            Some(svc) => {
                let service_port = match &port {
                    None => {
                        self.warn(
                            object,
                            format!("{field}.port"),
                            "",
                            "the backend sets neither port.name nor port.number; the route answers 503",
                            reasons::PORT_NOT_FOUND,
                        );
                        None
                    }
                    Some(p) => {
                        let found = find_service_port(svc, p);
                        if found.is_none() {
                            let sub = match p {
                                PortRef::Number(_) => "port.number",
                                PortRef::Name(_) => "port.name",
                            };
                            self.warn(
                                object,
                                format!("{field}.{sub}"),
                                p.text(),
                                format!(
                                    "Service {namespace}/{} has no port {}; the route answers 503",
                                    service.name,
                                    p.text()
                                ),
                                reasons::PORT_NOT_FOUND,
                            );
                        }
                        found
                    }
                };
                match service_port {
                    Some(sp) => {
                        settings.backend_tls = self.backend_tls(object, tls, svc, sp);
                        self.service_endpoints(object, &field, &backend_label, svc, sp)
                    }
                    None => Vec::new(),
                }
            }
        };
        let route = Arc::new(Route { id: object.id(), backend: backend_label, pool: Pool::new(endpoints), settings });
        self.routes.insert(key, route.clone());
        Some(route)
    }

    /// A Service annotated `wsingress.io/expose: "true"` becomes a route of its own.
    fn exposed_service(&mut self, svc: &'a Service) {
        let object = ObjectRef::new("Service", &svc.metadata);
        let annotations = svc.metadata.annotations.as_ref();
        let Some(exposure) = annotations::exposure(&object, annotations, &mut self.warnings) else {
            return;
        };
        let mut settings = annotations::route_settings(
            &object,
            annotations,
            AnnotatedKind::Service,
            &self.defaults.settings,
            &mut self.warnings,
        );
        let tls = annotations::backend_tls_request(&object, annotations, &mut self.warnings);
        let host = HostMatch::parse(&exposure.host);
        let path = PathMatch::prefix(&exposure.path);
        let field = annotations::annotation_field(annotations::EXPOSE);
        if !self.claim(&object, &field, &host, &path) {
            return;
        }
        let ports = svc.spec.as_ref().and_then(|s| s.ports.as_deref()).unwrap_or_default();
        let chosen: Option<&ServicePort> = match &exposure.port {
            Some(p) => {
                let port = match p.parse::<i32>() {
                    Ok(n) => PortRef::Number(n),
                    Err(_) => PortRef::Name(p.clone()),
                };
                let found = find_service_port(svc, &port);
                if found.is_none() {
                    self.warn(
                        &object,
                        annotations::annotation_field(annotations::PORT),
                        p.as_str(),
                        format!("the Service has no port {p}; the route answers 503"),
                        reasons::PORT_NOT_FOUND,
                    );
                }
                found
            }
            None => {
                if ports.len() > 1 {
                    let first = ports[0].name.clone().unwrap_or_else(|| ports[0].port.to_string());
                    self.warn(
                        &object,
                        annotations::annotation_field(annotations::PORT),
                        "",
                        format!(
                            "the Service has {} ports; routing to the first ({first}). Set {} to choose",
                            ports.len(),
                            annotations::PORT
                        ),
                        reasons::AMBIGUOUS_PORT,
                    );
                }
                if ports.is_empty() {
                    self.warn(
                        &object,
                        "spec.ports",
                        "",
                        "the Service has no ports; the route answers 503",
                        reasons::PORT_NOT_FOUND,
                    );
                }
                ports.first()
            }
        };
        let name = object.name.clone();
        let port_text = match (chosen, &exposure.port) {
            (Some(sp), _) => sp.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| sp.port.to_string()),
            (None, Some(p)) => p.clone(),
            (None, None) => String::new(),
        };
        let backend_label = format!("{name}:{port_text}");
        let endpoints = match chosen {
            Some(sp) => {
                settings.backend_tls = self.backend_tls(&object, &tls, svc, sp);
                self.service_endpoints(&object, "spec", &backend_label, svc, sp)
            }
            None => Vec::new(),
        };
        let route = Arc::new(Route { id: object.id(), backend: backend_label, pool: Pool::new(endpoints), settings });
        self.rules.push(Rule { host, path, route });
    }

    /// Endpoints of one Service port from its EndpointSlices; warns when none is ready.
    fn service_endpoints(
        &mut self,
        object: &ObjectRef,
        field: &str,
        backend_label: &str,
        svc: &Service,
        port: &ServicePort,
    ) -> Vec<Endpoint> {
        let namespace = namespace_of(&svc.metadata);
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let spec = svc.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            self.warn(
                object,
                field,
                backend_label,
                format!("Service {namespace}/{name} is an ExternalName Service, which is not supported; the route answers 503"),
                reasons::UNSUPPORTED_BACKEND,
            );
            return Vec::new();
        }
        let port_name = port.name.as_deref().unwrap_or("");
        let mut out = Vec::new();
        let slices = self.slices.get(&(namespace, name)).cloned().unwrap_or_default();
        for slice in slices {
            let Some(number) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|n| u16::try_from(n).ok())
            else {
                continue;
            };
            let v6 = match slice.address_type.as_str() {
                "IPv4" => false,
                "IPv6" => true,
                other => {
                    let slice_ref = ObjectRef::new("EndpointSlice", &slice.metadata);
                    self.warn(
                        &slice_ref,
                        "addressType",
                        other,
                        "only IPv4 and IPv6 EndpointSlices are used; this slice is ignored",
                        reasons::UNSUPPORTED_ADDRESS_TYPE,
                    );
                    continue;
                }
            };
            for ep in slice.endpoints.iter().flatten() {
                let cond = ep.conditions.as_ref();
                let ready = cond.and_then(|c| c.ready).unwrap_or(true);
                let serving = cond.and_then(|c| c.serving) == Some(true);
                let terminating = cond.and_then(|c| c.terminating) == Some(true);
                let draining = serving && terminating;
                if !(ready || draining) {
                    continue;
                }
                let target = ep.target_ref.as_ref().and_then(|t| t.name.clone());
                for address in &ep.addresses {
                    let Ok(ip) = address.trim().parse::<IpAddr>() else {
                        continue;
                    };
                    if ip.is_ipv6() != v6 {
                        continue;
                    }
                    let mut endpoint = Endpoint::new(SocketAddr::new(ip, number), ready);
                    endpoint.target = target.clone();
                    out.push(endpoint);
                }
            }
        }
        if !out.iter().any(|e| e.ready) {
            let reason = if out.is_empty() {
                format!(
                    "Service {namespace}/{name} has no ready endpoints for port {backend_label}; the route answers 503"
                )
            } else {
                format!(
                    "Service {namespace}/{name} has only terminating endpoints for port {backend_label}; the route answers 503"
                )
            };
            self.warn(object, field, backend_label, reason, reasons::NO_READY_ENDPOINTS);
        }
        out
    }

    /// TLS towards one Service port: asked by the annotations, else by the port's
    /// `appProtocol`; SNI the Service's DNS name unless overridden.
    fn backend_tls(
        &mut self,
        object: &ObjectRef,
        req: &BackendTlsRequest,
        svc: &Service,
        port: &ServicePort,
    ) -> Option<BackendTls> {
        let by_port = port
            .app_protocol
            .as_deref()
            .is_some_and(|p| TLS_APP_PROTOCOLS.contains(&p.trim().to_ascii_lowercase().as_str()));
        if !req.https.unwrap_or(by_port) {
            return None;
        }
        let namespace = namespace_of(&svc.metadata);
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let server_name = req.server_name.clone().unwrap_or_else(|| format!("{name}.{namespace}.svc"));
        let verify = match (&req.ca_secret, req.verify) {
            (_, false) => BackendVerify::Off,
            (Some(secret), true) => {
                self.ca_bundle(object, namespace, secret).map_or(BackendVerify::SystemRoots, BackendVerify::Ca)
            }
            (None, true) => BackendVerify::SystemRoots,
        };
        Some(BackendTls { server_name, verify })
    }

    /// The CA bundle of `backend-ca-secret`, or a warning (verification then uses the system
    /// roots, never nothing). Silent when Secrets are not read.
    fn ca_bundle(&mut self, object: &ObjectRef, namespace: &str, name: &str) -> Option<Arc<CaBundle>> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(found) = self.cas.get(&key) {
            return found.clone();
        }
        let secret = self.secrets.as_ref()?.get(&(namespace, name)).copied();
        let result = match secret {
            None => Err(tls::SecretError::NotFound),
            Some(secret) => tls::ca_bundle(secret),
        };
        let found = match result {
            Ok(bundle) => Some(Arc::new(bundle)),
            Err(e) => {
                let event_reason = match e {
                    tls::SecretError::NotFound => reasons::SECRET_NOT_FOUND,
                    _ => reasons::INVALID_CERTIFICATE,
                };
                self.warn(
                    object,
                    annotations::annotation_field(annotations::BACKEND_CA_SECRET),
                    name,
                    format!("Secret {namespace}/{name} {e}; verifying the backend against the system roots"),
                    event_reason,
                );
                None
            }
        };
        self.cas.insert(key, found.clone());
        found
    }

    fn warn(
        &mut self,
        object: &ObjectRef,
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
        event_reason: &'static str,
    ) {
        self.warnings.push(Warning::new(object, field, value, reason, event_reason));
    }

    fn finish(mut self) -> (RouteTable, Vec<Warning>) {
        sort_warnings(&mut self.warnings);
        let table = RouteTable::new(self.rules, self.default_route.map(|(_, r)| r));
        (table, self.warnings)
    }
}

/// Sort warnings into their canonical order (by object, then field, reason, value).
pub fn sort_warnings(warnings: &mut Vec<Warning>) {
    warnings.sort_by(|a, b| {
        (&a.object, &a.field, a.event_reason, &a.reason, &a.value).cmp(&(
            &b.object,
            &b.field,
            b.event_reason,
            &b.reason,
            &b.value,
        ))
    });
    warnings.dedup();
}

fn find_service_port<'s>(svc: &'s Service, port: &PortRef) -> Option<&'s ServicePort> {
    let ports = svc.spec.as_ref()?.ports.as_deref()?;
    match port {
        PortRef::Number(n) => ports.iter().find(|p| p.port == *n),
        PortRef::Name(name) => ports.iter().find(|p| p.name.as_deref() == Some(name.as_str())),
    }
}

/// A DNS host name as an Ingress rule accepts it: labels of `a-z0-9-`, optionally a
/// leading `*.` label. No port, no IP literal with colons.
pub(crate) fn valid_host(host: &str) -> bool {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let name = h.strip_prefix("*.").unwrap_or(&h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
