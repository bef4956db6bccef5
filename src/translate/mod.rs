//! Pure translation of Kubernetes objects (Ingress, Service, EndpointSlice, IngressClass, and
//! Gateway API: GatewayClass, Gateway, HTTPRoute, ReferenceGrant) into a [`RouteTable`]: no
//! clients, no sockets, no clocks. The file source and the controller both call [`translate`].
//! Gateway API semantics are in [`gateway`], its status in [`gateway_status`]; HTTPRoutes take
//! part in the host + path conflicts below like Ingresses (oldest first).
//!
//! Semantics follow the Kubernetes Ingress API:
//! - **Class.** An Ingress is ours when `spec.ingressClassName` names an IngressClass whose
//!   `spec.controller` is `--controller-name` ([`CONTROLLER_NAME`] by default), or (manifests
//!   files only, [`Defaults::class_fallback`]) names `--ingress-class` while no IngressClass
//!   of that name exists; else when it has no
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
//!   port whose name equals the Service port's name (so `targetPort` may differ). Every
//!   endpoint is kept with its lifecycle state ([`endpoint_state`]): ready ones take new
//!   connections; not-ready ones keep their tunnels and live state; terminating ones drain.
//!   A missing Service, port or ready endpoint is a warning and the route stays, answering 503.
//! - **Service-only routes.** A Service annotated `wsingress.io/expose: "true"` is routed
//!   without an Ingress (see [`annotations::exposure`]) when [`ServiceRoutes`] lets it: enabled,
//!   in an allowed namespace, and (in a cluster) naming a served class in
//!   `wsingress.io/ingress-class`. An Ingress always wins a host + path over a Service-only
//!   route; the loser gets a `RuleConflict` warning.
//!
//! The output depends only on the set of objects, never on their order, so replicas agree.

pub mod annotations;
pub mod gateway;
pub mod gateway_status;
pub mod tls;
pub mod units;

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ahash::AHashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Serialize;

use crate::gateway_api::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use crate::routes::{
    BackendTls, BackendVerify, CaBundle, Endpoint, EndpointState, HostMatch, PathMatch, Pool, Route, RouteSettings,
    RouteTable, Rule,
};
use crate::tls::CertTable;
use annotations::{AnnotatedKind, BackendTlsRequest};
use tls::{SecretIndex, TlsDefaults};

/// The controller name our GatewayClass must carry in `spec.controllerName`.
pub const GATEWAY_CONTROLLER_NAME: &str = "wsingress.io/gateway-controller";
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
    pub const SERVICE_ROUTES_DISABLED: &str = "ServiceRouteRefused";
    pub const UNSUPPORTED_ANNOTATION: &str = "UnsupportedAnnotation";
    pub const EXTERNAL_NAME_UNRESOLVABLE: &str = "ExternalNameUnresolvable";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const INVALID_CERTIFICATE: &str = "InvalidCertificate";
    pub const CERTIFICATE_CONFLICT: &str = "CertificateConflict";
}

/// Service port `appProtocol` values that make the proxy speak TLS to the endpoints.
pub const TLS_APP_PROTOCOLS: &[&str] = &["https", "kubernetes.io/wss", "kubernetes.io/https", "wss"];

/// Everything translation reads. Order does not matter. Objects are shared, not copied: the
/// controller hands over the `Arc`s its caches hold.
#[derive(Debug, Clone, Default)]
pub struct ClusterSnapshot {
    pub ingresses: Vec<Arc<Ingress>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub ingress_classes: Vec<Arc<IngressClass>>,
    /// Gateway API (empty when its CRDs are not installed).
    pub gateway_classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub http_routes: Vec<Arc<HTTPRoute>>,
    pub reference_grants: Vec<Arc<ReferenceGrant>>,
    /// Namespaces, for a Gateway listener's `allowedRoutes.namespaces.from: Selector` (their labels).
    pub namespaces: Vec<Arc<Namespace>>,
}

/// Flags that shape translation.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// IngressClass name served when no IngressClass of that name exists (`--ingress-class`),
    /// and only if `class_fallback` is set.
    pub class_name: String,
    /// `spec.controller` of the IngressClasses served (`--controller-name`).
    pub controller_name: String,
    /// Serve `class_name` even though no IngressClass object declares it: manifests files
    /// often carry none. Off in a cluster, where an install serves exactly the classes whose
    /// controller is `controller_name`.
    pub class_fallback: bool,
    /// Settings used where no annotation says otherwise (from the `serve` flags).
    pub settings: RouteSettings,
    /// Which Services may define Service-only routes.
    pub service_routes: ServiceRoutes,
    /// What a route carrying an ingress-nginx security annotation wsingress does not enforce
    /// gets (`--unsupported-security-annotations`).
    pub unsupported_security: UnsupportedSecurity,
    /// `spec.controllerName` of the GatewayClasses served (`--gateway-controller-name`).
    pub gateway_controller_name: String,
}

impl Default for Defaults {
    /// The manifests-file defaults: the `wsingress` class (also when undeclared), Service-only
    /// routes on for every namespace, unenforced security annotations fail closed.
    fn default() -> Self {
        Self {
            class_name: DEFAULT_CLASS.to_string(),
            controller_name: CONTROLLER_NAME.to_string(),
            class_fallback: true,
            settings: RouteSettings::default(),
            service_routes: ServiceRoutes::default(),
            unsupported_security: UnsupportedSecurity::Refuse,
            gateway_controller_name: GATEWAY_CONTROLLER_NAME.to_string(),
        }
    }
}

/// The gate for Service-only routes (`wsingress.io/expose` on a Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRoutes {
    /// `--enable-service-routes` (always on for a manifests file).
    pub enabled: bool,
    /// The Service must name a served class in `wsingress.io/ingress-class` (cluster mode).
    pub require_class: bool,
    /// `--service-routes-namespaces`: only Services in these namespaces; empty = all.
    pub namespaces: Vec<String>,
}

impl Default for ServiceRoutes {
    fn default() -> Self {
        Self { enabled: true, require_class: false, namespaces: Vec::new() }
    }
}

/// `--unsupported-security-annotations`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsupportedSecurity {
    /// The route answers 503 (fail closed) and an Event says why. The default.
    Refuse,
    /// The route is served without the protection; the Event says it is not enforced.
    Ignore,
}

impl UnsupportedSecurity {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim() {
            "refuse" => Ok(Self::Refuse),
            "ignore" => Ok(Self::Ignore),
            other => Err(format!("`{other}`: expected refuse or ignore")),
        }
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

/// Translate a snapshot into a route table and the warnings about it (sorted).
pub fn translate(snapshot: &ClusterSnapshot, defaults: &Defaults) -> (RouteTable, Vec<Warning>) {
    translate_cached(snapshot, defaults, &mut RouteCache::default())
}

/// Routes an earlier translation built, reused by the next one when nothing they were built
/// from changed: the Ingress's settings and the versions (uid and resourceVersion) of the
/// backend Service and its EndpointSlices. A change to one Service then rebuilds only its
/// routes, and the table keeps the very same `Arc<Route>` for the rest (so publishing them
/// costs nothing either). Objects without a resourceVersion (a manifests file) are never
/// reused. Pure data: the controller keeps one across translations.
#[derive(Debug, Default)]
pub struct RouteCache {
    routes: AHashMap<u64, CachedRoute>,
    index: BackendIndex,
    /// Each Ingress as parsed (by the address of its `Arc`, which the entry holds), reused
    /// while the object is the same; valid for the settings and policy it was parsed with.
    parsed: AHashMap<usize, (Arc<Ingress>, Arc<ParsedIngress>)>,
    parsed_with: Option<(RouteSettings, UnsupportedSecurity)>,
}

/// A backend an Ingress names, parsed once per Ingress version: where it sits, the Service
/// and port, and its cache key.
#[derive(Debug, Clone)]
struct BackendRef {
    /// `spec.rules[i].http.paths[j].backend.service` or `spec.defaultBackend.service`.
    field: String,
    service: String,
    port: Option<PortRef>,
    port_text: String,
    /// Its key in [`RouteCache::routes`].
    cache_key: u64,
}

/// One path rule of an Ingress as parsed: the host + path it claims and its backend (or the
/// warning that the backend is unusable, given when the claim succeeds).
#[derive(Debug)]
struct ParsedPath {
    host: HostMatch,
    path: PathMatch,
    field: String,
    claim_key: u128,
    backend: Result<BackendRef, Box<Warning>>,
}

/// What translation reads of one Ingress alone, and the warnings about it alone.
#[derive(Debug)]
struct ParsedIngress {
    object: Arc<ObjectRef>,
    settings: RouteSettings,
    tls: BackendTlsRequest,
    warnings: Vec<Warning>,
    default_backend: Option<Result<BackendRef, Box<Warning>>>,
    paths: Vec<ParsedPath>,
}

/// Services and their EndpointSlices by namespace and name, kept from one translation to the
/// next and updated by object identity: only Services and slices whose `Arc` is new are read
/// again, so a translation does not re-index tens of thousands of unchanged objects.
#[derive(Debug, Default)]
struct BackendIndex {
    /// Which pass last saw each indexed object (by address; the `Arc` keeps it alive).
    services: AHashMap<usize, (u64, Arc<Service>)>,
    slices: AHashMap<usize, (u64, Arc<EndpointSlice>)>,
    /// By a 128-bit hash of (namespace, name) (no collision in practice).
    by_name: AHashMap<u128, Backend>,
    pass: u64,
}

/// One Service name: the Service (if any), its slices sorted by name, and a hash of their
/// versions (`None` when one has no resourceVersion).
#[derive(Debug, Clone)]
struct Backend {
    service: Option<Arc<Service>>,
    slices: Vec<Arc<EndpointSlice>>,
    inputs: Option<u64>,
}

fn name_key(namespace: &str, name: &str) -> u128 {
    hash128(&(namespace, name))
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
fn slice_service(slice: &EndpointSlice) -> Option<(&str, &str)> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((namespace_of(&slice.metadata), service.as_str()))
}

impl BackendIndex {
    fn entry(&mut self, namespace: &str, name: &str) -> &mut Backend {
        self.by_name.entry(name_key(namespace, name)).or_insert_with(|| Backend {
            service: None,
            slices: Vec::new(),
            inputs: None,
        })
    }

    fn get(&self, namespace: &str, name: &str) -> Option<&Backend> {
        self.by_name.get(&name_key(namespace, name))
    }

    /// Bring the index to `snapshot`: vanished objects are removed, then objects not seen
    /// before are added (so a replaced object's successor takes its place).
    fn update(&mut self, snapshot: &ClusterSnapshot) {
        self.pass += 1;
        let pass = self.pass;
        let new_services = unseen(&mut self.services, &snapshot.services, pass);
        let new_slices = unseen(&mut self.slices, &snapshot.endpoint_slices, pass);
        let mut touched: Vec<(String, String)> = Vec::new();
        for svc in vanished(&mut self.services, pass) {
            let (ns, name) = (namespace_of(&svc.metadata), svc.metadata.name.as_deref().unwrap_or(""));
            let entry = self.entry(ns, name);
            if entry.service.as_ref().is_some_and(|s| Arc::ptr_eq(s, &svc)) {
                entry.service = None;
            }
            touched.push((ns.to_string(), name.to_string()));
        }
        let gone_slices = vanished(&mut self.slices, pass);
        for slice in gone_slices {
            if let Some((ns, service)) = slice_service(&slice) {
                self.entry(ns, service).slices.retain(|s| !Arc::ptr_eq(s, &slice));
                touched.push((ns.to_string(), service.to_string()));
            }
        }
        for svc in new_services {
            self.services.insert(Arc::as_ptr(svc) as usize, (pass, svc.clone()));
            let (ns, name) = (namespace_of(&svc.metadata), svc.metadata.name.as_deref().unwrap_or(""));
            // The first Service of a name wins, as objects are unique by name.
            let entry = self.entry(ns, name);
            if entry.service.is_none() {
                entry.service = Some(svc.clone());
            }
            touched.push((ns.to_string(), name.to_string()));
        }
        for slice in new_slices {
            self.slices.insert(Arc::as_ptr(slice) as usize, (pass, slice.clone()));
            if let Some((ns, service)) = slice_service(slice) {
                self.entry(ns, service).slices.push(slice.clone());
                touched.push((ns.to_string(), service.to_string()));
            }
        }
        touched.sort();
        touched.dedup();
        for (ns, name) in touched {
            let entry = self.entry(&ns, &name);
            if entry.service.is_none() && entry.slices.is_empty() {
                self.by_name.remove(&name_key(&ns, &name));
                continue;
            }
            entry.slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            entry.inputs = backend_inputs(entry.service.as_deref(), &entry.slices);
        }
    }
}

/// The objects of `items` not in `indexed` yet; the others are marked seen in `pass`.
fn unseen<'s, K>(indexed: &mut AHashMap<usize, (u64, Arc<K>)>, items: &'s [Arc<K>], pass: u64) -> Vec<&'s Arc<K>> {
    let mut out = Vec::new();
    for item in items {
        match indexed.get_mut(&(Arc::as_ptr(item) as usize)) {
            Some(seen) => seen.0 = pass,
            None => out.push(item),
        }
    }
    out
}

/// Remove from `indexed`, and return, the objects not seen in `pass`.
fn vanished<K>(indexed: &mut AHashMap<usize, (u64, Arc<K>)>, pass: u64) -> Vec<Arc<K>> {
    let mut gone = Vec::new();
    indexed.retain(|_, (seen, item)| {
        let keep = *seen == pass;
        if !keep {
            gone.push(item.clone());
        }
        keep
    });
    gone
}

/// A hash of the versions of a Service (or its absence) and its EndpointSlices; `None` when
/// one lacks a resourceVersion (then nothing built from them is reused).
fn backend_inputs(service: Option<&Service>, slices: &[Arc<EndpointSlice>]) -> Option<u64> {
    let mut h = DefaultHasher::new();
    match service {
        Some(svc) => (&svc.metadata.uid, svc.metadata.resource_version.as_ref()?).hash(&mut h),
        None => 0u8.hash(&mut h),
    }
    for slice in slices {
        (&slice.metadata.uid, slice.metadata.resource_version.as_ref()?).hash(&mut h);
    }
    Some(h.finish())
}

impl RouteCache {
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// One reusable route and what it was built from.
#[derive(Debug, Clone)]
struct CachedRoute {
    /// Object, field, Service and port as written (checked on a hit: the map key is a hash).
    key: (ObjectRef, String, String, String),
    settings: RouteSettings,
    /// The backend TLS the annotations asked for (with the Service port, it decides the
    /// route's `backend_tls`).
    tls: BackendTlsRequest,
    /// Hash of the Service's and its EndpointSlices' versions.
    inputs: u64,
    route: Arc<Route>,
    /// The warnings building it gave, given again when it is reused.
    warnings: Vec<Warning>,
}

/// [`translate`], reusing the routes in `cache` whose inputs did not change; `cache` then
/// holds this translation's routes.
pub fn translate_cached(
    snapshot: &ClusterSnapshot,
    defaults: &Defaults,
    cache: &mut RouteCache,
) -> (RouteTable, Vec<Warning>) {
    let mut t = Translation::new(snapshot, defaults, cache);
    t.routes();
    t.finish()
}

/// Translate a snapshot and its Secrets into a route table and a certificate table, with
/// every warning (sorted). `previous` is the certificate table now serving and `now` the
/// time (Unix seconds): see [`tls`]. Routes are built afresh (no [`RouteCache`]): a CA
/// Secret's contents are an input the cache does not track.
pub fn translate_all<'a>(
    snapshot: &'a ClusterSnapshot,
    secrets: &'a [Secret],
    defaults: &Defaults,
    tls_defaults: &TlsDefaults,
    previous: &CertTable,
    now: i64,
) -> (RouteTable, CertTable, Vec<Warning>) {
    let certs = TlsInputs { secrets: secrets.iter().collect(), defaults: tls_defaults, previous, now };
    translate_all_cached(snapshot, &certs, defaults, &mut RouteCache::default())
}

/// What [`translate_all_cached`] reads besides the snapshot: the Secrets (shared, not
/// copied), `--default-tls-secret`, the certificate table now serving and the time.
pub struct TlsInputs<'a> {
    pub secrets: Vec<&'a Secret>,
    pub defaults: &'a TlsDefaults,
    pub previous: &'a CertTable,
    pub now: i64,
}

/// [`translate_all`] for the controller: routes whose inputs did not change are reused from
/// `cache` unless they name a CA Secret (its contents are not part of the cache key, so those
/// few routes are built again each time); certificates are checked as [`translate_all`] does,
/// by the same code, so the same objects give the same tables in every mode.
pub fn translate_all_cached<'a>(
    snapshot: &'a ClusterSnapshot,
    inputs: &TlsInputs<'a>,
    defaults: &Defaults,
    cache: &mut RouteCache,
) -> (RouteTable, CertTable, Vec<Warning>) {
    let (tls_defaults, previous, now) = (inputs.defaults, inputs.previous, inputs.now);
    let index = tls::index(inputs.secrets.iter().copied());
    let mut t = Translation::new(snapshot, defaults, cache);
    t.secrets = Some(index.clone());
    t.routes();
    let mut warnings = std::mem::take(&mut t.warnings);
    let mut certs = tls::Certificates::new(&index, previous, now, &mut warnings);
    for source in t.sources() {
        if let Source::Ingress(ing) = source {
            certs.ingress(ing);
        }
    }
    gateway::listener_certificates(&t.gateway, &mut certs);
    let certs = certs.finish(tls_defaults);
    t.warnings = warnings;
    let (table, warnings) = t.finish();
    (table, certs, warnings)
}

/// The Ingresses this controller serves (by class), sorted: the status writer's list.
pub fn served_ingresses(snapshot: &ClusterSnapshot, defaults: &Defaults) -> Vec<ObjectRef> {
    let classes = ServedClasses::new(&snapshot.ingress_classes, defaults);
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
pub struct ServedClasses {
    names: BTreeSet<String>,
    default: bool,
}

impl ServedClasses {
    pub fn new(classes: &[Arc<IngressClass>], defaults: &Defaults) -> Self {
        let mut names = BTreeSet::new();
        let mut default = false;
        for class in classes {
            let ours =
                class.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(defaults.controller_name.as_str());
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
        let declared = classes.iter().any(|c| c.metadata.name.as_deref() == Some(defaults.class_name.as_str()));
        if defaults.class_fallback && !declared {
            names.insert(defaults.class_name.clone());
        }
        Self { names, default }
    }

    /// Whether an Ingress is ours: its class name, else its legacy class annotation, else
    /// whether one of our classes is the default.
    pub fn serves(&self, ing: &Ingress) -> bool {
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
    Ingress(&'a Arc<Ingress>),
    Service(&'a Service),
    HttpRoute(&'a Arc<HTTPRoute>),
}

impl Source<'_> {
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Ingress(i) => &i.metadata,
            Self::Service(s) => &s.metadata,
            Self::HttpRoute(r) => &r.metadata,
        }
    }

    /// Ingresses and HTTPRoutes before Service-only routes (an Ingress always wins a host and
    /// path); then oldest first, objects without a timestamp (a manifests file) after those
    /// with one; then namespace and name (an Ingress before an HTTPRoute of the same age and
    /// namespace/name).
    fn precedence(&self) -> (u8, bool, Option<&Time>, &str, &str, u8) {
        let m = self.meta();
        let ts = m.creation_timestamp.as_ref();
        let (kind, tie) = match self {
            Self::Ingress(_) => (0, 0),
            Self::HttpRoute(_) => (0, 1),
            Self::Service(_) => (1, 0),
        };
        (kind, ts.is_none(), ts, namespace_of(m), m.name.as_deref().unwrap_or(""), tie)
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
    owner: Arc<ObjectRef>,
}

struct Translation<'a> {
    snapshot: &'a ClusterSnapshot,
    defaults: &'a Defaults,
    classes: ServedClasses,
    /// Services and their EndpointSlices (sorted by slice name) by namespace and name.
    index: &'a BackendIndex,
    /// Routes of the previous translation, taken from as they are reused.
    cache: &'a mut AHashMap<u64, CachedRoute>,
    /// Ingresses as parsed by the previous translation, taken from as they are reused.
    parsed: &'a mut AHashMap<usize, (Arc<Ingress>, Arc<ParsedIngress>)>,
    next_parsed: AHashMap<usize, (Arc<Ingress>, Arc<ParsedIngress>)>,
    /// Routes built or reused now: the cache for the next translation.
    next_cache: AHashMap<u64, CachedRoute>,
    rules: Vec<Rule>,
    /// Claimed host + path rules, by a 128-bit hash of the pair (no collision in practice).
    claims: AHashMap<u128, Claim>,
    default_route: Option<(ObjectRef, Arc<Route>)>,
    /// The current object's routes by (service, port as written), shared by its rules
    /// (routes are never shared between objects).
    routes: Vec<(String, String, Arc<Route>)>,
    warnings: Vec<Warning>,
    /// `None` when Secrets are not read ([`translate`]).
    secrets: Option<SecretIndex<'a>>,
    /// CA bundles by (namespace, Secret name), shared by the routes naming them.
    cas: HashMap<(String, String), Option<Arc<CaBundle>>>,
    /// The Gateway API objects, analysed (shared so rules can be read while `self` changes).
    gateway: Arc<gateway::Analysis<'a>>,
    /// Index in `gateway.routes` of each served HTTPRoute, by the address of its `Arc`.
    http_routes: AHashMap<usize, usize>,
}

impl<'a> Translation<'a> {
    fn new(snapshot: &'a ClusterSnapshot, defaults: &'a Defaults, cache: &'a mut RouteCache) -> Self {
        cache.index.update(snapshot);
        let parsed_with = Some((defaults.settings.clone(), defaults.unsupported_security));
        if cache.parsed_with != parsed_with {
            cache.parsed.clear();
            cache.parsed_with = parsed_with;
        }
        let gateway = Arc::new(gateway::Analysis::new(snapshot, defaults));
        let http_routes = gateway.routes.iter().enumerate().map(|(i, r)| (Arc::as_ptr(r.route) as usize, i)).collect();
        Self {
            gateway,
            http_routes,
            snapshot,
            defaults,
            classes: ServedClasses::new(&snapshot.ingress_classes, defaults),
            index: &cache.index,
            cache: &mut cache.routes,
            parsed: &mut cache.parsed,
            next_parsed: AHashMap::new(),
            next_cache: AHashMap::new(),
            rules: Vec::new(),
            claims: AHashMap::new(),
            default_route: None,
            routes: Vec::new(),
            warnings: Vec::new(),
            secrets: None,
            cas: HashMap::new(),
        }
    }

    /// Every route-defining object, in precedence order.
    fn routes(&mut self) {
        for source in self.sources() {
            match source {
                Source::Ingress(ing) => self.ingress(ing),
                Source::Service(svc) => self.exposed_service(svc),
                Source::HttpRoute(route) => self.http_route(route),
            }
        }
        self.gateway_warnings();
    }

    /// Route-defining objects in precedence order.
    fn sources(&self) -> Vec<Source<'a>> {
        let snapshot = self.snapshot;
        let exposed =
            |s: &&Service| s.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(annotations::EXPOSE));
        let mut out: Vec<Source<'a>> = snapshot
            .ingresses
            .iter()
            .filter(|i| self.classes.serves(i))
            .map(Source::Ingress)
            .chain(snapshot.services.iter().map(|s| &**s).filter(exposed).map(Source::Service))
            .chain(
                snapshot
                    .http_routes
                    .iter()
                    .filter(|r| self.http_routes.contains_key(&(Arc::as_ptr(r) as usize)))
                    .map(Source::HttpRoute),
            )
            .collect();
        // Precedence keys are unique (kind, age, namespace, name), so an unstable sort is exact.
        out.sort_unstable_by(|a, b| a.precedence().cmp(&b.precedence()));
        out
    }

    fn ingress(&mut self, ing: &'a Arc<Ingress>) {
        self.routes.clear();
        let key = Arc::as_ptr(ing) as usize;
        let parsed = match self.parsed.remove(&key) {
            Some((held, parsed)) if Arc::ptr_eq(&held, ing) => parsed,
            _ => Arc::new(parse_ingress(ing, self.defaults)),
        };
        self.next_parsed.insert(key, (ing.clone(), parsed.clone()));
        self.warnings.extend(parsed.warnings.iter().cloned());
        let namespace = namespace_of(&ing.metadata);
        let object = &parsed.object;
        if let Some(backend) = &parsed.default_backend {
            let field = "spec.defaultBackend";
            if let Some((winner, _)) = &self.default_route {
                let reason = format!(
                    "{winner} already provides the default backend (older, or the same age and first by namespace/name); this one is ignored"
                );
                self.warn(object, field, "", reason, reasons::RULE_CONFLICT);
            } else {
                match backend {
                    Ok(b) => {
                        let route = self.route_for(object, namespace, &parsed.settings, &parsed.tls, b);
                        self.default_route = Some((ObjectRef::clone(object), route));
                    }
                    Err(w) => self.warnings.push(Warning::clone(w)),
                }
            }
        }
        for p in &parsed.paths {
            if !self.claim(object, &p.field, p.claim_key, &p.host, &p.path) {
                continue;
            }
            match &p.backend {
                Ok(b) => {
                    let route = self.route_for(object, namespace, &parsed.settings, &parsed.tls, b);
                    self.rules.push(Rule { host: p.host.clone(), path: p.path.clone(), route });
                }
                Err(w) => {
                    self.warnings.push(Warning::clone(w));
                    self.claims.remove(&p.claim_key);
                }
            }
        }
    }

    /// Take host + path for `object`, or warn that an older object holds it.
    fn claim(&mut self, object: &Arc<ObjectRef>, field: &str, key: u128, host: &HostMatch, path: &PathMatch) -> bool {
        if let Some(claim) = self.claims.get(&key) {
            let reason = if *claim.owner == **object {
                format!("host {host} path {path} appears twice in this object; the first one is used")
            } else if claim.owner.kind == "Ingress" && object.kind == "Service" {
                format!(
                    "host {host} path {path} is routed by {}: an Ingress always wins over a Service-only route; this route is ignored",
                    claim.owner
                )
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

    /// The route of a backend an Ingress names (its rules share one per Service and port).
    fn route_for(
        &mut self,
        object: &ObjectRef,
        namespace: &str,
        settings: &RouteSettings,
        tls: &BackendTlsRequest,
        backend: &BackendRef,
    ) -> Arc<Route> {
        let BackendRef { field, service: service_name, port, port_text, cache_key } = backend;
        if let Some((_, _, route)) = self.routes.iter().find(|(s, p, _)| s == service_name && p == port_text) {
            return route.clone();
        }
        // Reuse the previous translation's route when its inputs are unchanged.
        let index = self.index;
        let found = index.get(namespace, service_name);
        let inputs = found.map_or_else(|| backend_inputs(None, &[]), |b| b.inputs);
        let memo = (*cache_key, inputs);
        if let (cache_key, Some(inputs)) = memo
            && let Some(hit) = self.cache.remove(&cache_key)
        {
            let same_key =
                hit.key.0 == *object && hit.key.1 == *field && hit.key.2 == *service_name && hit.key.3 == *port_text;
            if same_key
                && hit.inputs == inputs
                && hit.settings == *settings
                && hit.tls == *tls
                && (self.secrets.is_none() || tls.ca_secret.is_none())
            {
                self.warnings.extend(hit.warnings.iter().cloned());
                self.routes.push((service_name.clone(), port_text.clone(), hit.route.clone()));
                let route = hit.route.clone();
                self.next_cache.insert(cache_key, hit);
                return route;
            }
        }
        let warned_before = self.warnings.len();
        let backend_label = format!("{service_name}:{port_text}");
        let mut route_settings = settings.clone();
        let endpoints = match found.and_then(|b| b.service.as_deref()) {
            None => {
                self.warn(
                    object,
                    format!("{field}.name"),
                    service_name.as_str(),
                    format!("Service {namespace}/{service_name} not found; the route answers 503 until it exists"),
                    reasons::SERVICE_NOT_FOUND,
                );
                Vec::new()
            }
            Some(svc) => {
                let service_port = match port {
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
                                    "Service {namespace}/{service_name} has no port {}; the route answers 503",
                                    p.text()
                                ),
                                reasons::PORT_NOT_FOUND,
                            );
                        }
                        found
                    }
                };
                match service_port {
                    // A refused route answers 503 whatever its endpoints.
                    Some(sp) if settings.refused.is_none() => {
                        route_settings.backend_tls = self.backend_tls(object, tls, svc, sp);
                        self.service_endpoints(object, field, &backend_label, svc, sp)
                    }
                    _ => Vec::new(),
                }
            }
        };
        let route = Arc::new(Route {
            id: object.id(),
            backend: backend_label,
            pool: Pool::new(endpoints),
            settings: route_settings,
        });
        if let (cache_key, Some(inputs)) = memo {
            let cached = CachedRoute {
                key: (object.clone(), field.clone(), service_name.clone(), port_text.clone()),
                settings: settings.clone(),
                tls: tls.clone(),
                inputs,
                route: route.clone(),
                warnings: self.warnings[warned_before..].to_vec(),
            };
            self.next_cache.insert(cache_key, cached);
        }
        self.routes.push((service_name.clone(), port_text.clone(), route.clone()));
        route
    }

    /// Whether this controller routes a Service that asks to be exposed; warns where the
    /// Service is this controller's business (it names a class served here, or, in a
    /// manifests file, any class) and the gate refuses it.
    fn service_route_allowed(&mut self, object: &ObjectRef, annotations: Option<&BTreeMap<String, String>>) -> bool {
        let gate = &self.defaults.service_routes;
        let field = annotations::annotation_field(annotations::INGRESS_CLASS);
        let class = annotations.and_then(|a| a.get(annotations::INGRESS_CLASS)).map(|c| c.trim());
        let served: Vec<&str> = self.classes.names.iter().map(String::as_str).collect();
        match class {
            Some(c) if !self.classes.names.contains(c) => {
                // Another install's class: none of our business, unless there is no other install.
                if !gate.require_class {
                    let why =
                        format!("names class `{c}`, which this controller does not serve ({served:?}); not exposed");
                    self.warn(object, field, c, why, reasons::INVALID_ANNOTATION);
                }
                return false;
            }
            None if gate.require_class => {
                if gate.enabled {
                    let why = format!(
                        "a Service-only route must name a class this controller serves ({served:?}) in {}; not exposed",
                        annotations::INGRESS_CLASS
                    );
                    self.warn(object, field, "", why, reasons::INVALID_ANNOTATION);
                }
                return false;
            }
            _ => {}
        }
        let expose = annotations::annotation_field(annotations::EXPOSE);
        if !gate.enabled {
            let why = "Service-only routes are disabled on this controller (--enable-service-routes); not exposed";
            self.warn(object, expose, "true", why, reasons::SERVICE_ROUTES_DISABLED);
            return false;
        }
        if !gate.namespaces.is_empty() && !gate.namespaces.contains(&object.namespace) {
            let why = format!(
                "namespace {} may not define Service-only routes (--service-routes-namespaces {}); not exposed",
                object.namespace,
                gate.namespaces.join(",")
            );
            self.warn(object, expose, "true", why, reasons::SERVICE_ROUTES_DISABLED);
            return false;
        }
        true
    }

    /// A Service annotated `wsingress.io/expose: "true"` becomes a route of its own, when the
    /// Service-only route gate lets it.
    fn exposed_service(&mut self, svc: &'a Service) {
        let object = ObjectRef::new("Service", &svc.metadata);
        let annotations = svc.metadata.annotations.as_ref();
        let Some(exposure) = annotations::exposure(&object, annotations, &mut self.warnings) else {
            return;
        };
        if !self.service_route_allowed(&object, annotations) {
            return;
        }
        let mut settings = annotations::route_settings(
            &object,
            annotations,
            AnnotatedKind::Service,
            &self.defaults.settings,
            self.defaults.unsupported_security,
            &mut self.warnings,
        );
        let tls = annotations::backend_tls_request(&object, annotations, &mut self.warnings);
        let host = HostMatch::parse(&exposure.host);
        let path = PathMatch::prefix(&exposure.path);
        let field = annotations::annotation_field(annotations::EXPOSE);
        if !self.claim(&Arc::new(object.clone()), &field, claim_key(&host, &path), &host, &path) {
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
            // The one port marked `appProtocol: kubernetes.io/ws` is the WebSocket port.
            None if ports.iter().filter(|p| is_ws_port(p)).count() == 1 => ports.iter().find(|p| is_ws_port(p)),
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
            Some(sp) if settings.refused.is_none() => {
                settings.backend_tls = self.backend_tls(&object, &tls, svc, sp);
                self.service_endpoints(&object, "spec", &backend_label, svc, sp)
            }
            _ => Vec::new(),
        };
        let route = Arc::new(Route { id: object.id(), backend: backend_label, pool: Pool::new(endpoints), settings });
        self.rules.push(Rule { host, path, route });
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
            // Resolved at connect time, on the Service port (ExternalName has no endpoints).
            let external = spec.and_then(|s| s.external_name.as_deref()).map(str::trim).unwrap_or("");
            let port = u16::try_from(port.port).ok().filter(|&p| p > 0);
            return match port {
                Some(port) if valid_host(external) => vec![Endpoint::external(external, port)],
                _ => {
                    self.warn(
                        object,
                        field,
                        backend_label,
                        format!(
                            "ExternalName Service {namespace}/{name} has no valid spec.externalName ({external:?}) or port; the route answers 503"
                        ),
                        reasons::UNSUPPORTED_BACKEND,
                    );
                    Vec::new()
                }
            };
        }
        let port_name = port.name.as_deref().unwrap_or("");
        let mut out = Vec::new();
        let index = self.index;
        let slices: &[Arc<EndpointSlice>] = index.get(namespace, name).map_or(&[], |b| b.slices.as_slice());
        // Dual-stack: a pod has an address in each family's slices; count it once, in the
        // Service's primary family.
        let family = primary_family(svc, slices);
        let used = |s: &&Arc<EndpointSlice>| {
            let ip = matches!(s.address_type.as_str(), "IPv4" | "IPv6");
            family.is_none_or(|f| s.address_type == f) || !ip
        };
        for slice in slices.iter().filter(used) {
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
                let state = endpoint_state(ep.conditions.as_ref());
                let target = ep.target_ref.as_ref().and_then(|t| t.name.clone());
                for address in &ep.addresses {
                    let Ok(ip) = address.trim().parse::<IpAddr>() else {
                        continue;
                    };
                    if ip.is_ipv6() != v6 {
                        continue;
                    }
                    let mut endpoint = Endpoint::with_state(SocketAddr::new(ip, number), state);
                    endpoint.target = target.clone();
                    out.push(endpoint);
                }
            }
        }
        if !out.iter().any(Endpoint::is_ready) {
            let reason = if out.is_empty() {
                format!(
                    "Service {namespace}/{name} has no ready endpoints for port {backend_label}; the route answers 503"
                )
            } else {
                format!(
                    "Service {namespace}/{name} has only not-ready or terminating endpoints for port {backend_label}; the route answers 503"
                )
            };
            self.warn(object, field, backend_label, reason, reasons::NO_READY_ENDPOINTS);
        }
        out
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
        *self.cache = std::mem::take(&mut self.next_cache);
        *self.parsed = std::mem::take(&mut self.next_parsed);
        sort_warnings(&mut self.warnings);
        let table = RouteTable::new(self.rules, self.default_route.map(|(_, r)| r));
        (table, self.warnings)
    }
}

pub(crate) fn claim_key(host: &HostMatch, path: &PathMatch) -> u128 {
    hash128(&(host, path))
}

/// Read one Ingress alone: its settings, rules, paths and backends, and the warnings about
/// them. Pure on the Ingress and the settings defaults.
fn parse_ingress(ing: &Ingress, defaults: &Defaults) -> ParsedIngress {
    let object = Arc::new(ObjectRef::new("Ingress", &ing.metadata));
    let mut warnings = Vec::new();
    let settings = annotations::route_settings(
        &object,
        ing.metadata.annotations.as_ref(),
        AnnotatedKind::Ingress,
        &defaults.settings,
        defaults.unsupported_security,
        &mut warnings,
    );
    let tls = annotations::backend_tls_request(&object, ing.metadata.annotations.as_ref(), &mut warnings);
    let mut parsed =
        ParsedIngress { object: object.clone(), settings, tls, warnings, default_backend: None, paths: Vec::new() };
    let warn = |w: &mut Vec<Warning>, field: String, value: &str, reason: &str, event: &'static str| {
        w.push(Warning::new(&object, field, value, reason, event));
    };
    let Some(spec) = &ing.spec else {
        warn(&mut parsed.warnings, "spec".into(), "", "the Ingress has no spec", reasons::INVALID_RULE);
        return parsed;
    };
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() && spec.default_backend.is_none() {
        let why = "the Ingress has neither rules nor a defaultBackend: nothing to route";
        warn(&mut parsed.warnings, "spec.rules".into(), "", why, reasons::INVALID_RULE);
    }
    if let Some(backend) = &spec.default_backend {
        parsed.default_backend = Some(backend_ref(&object, backend, "spec.defaultBackend"));
    }
    for (i, rule) in rules.iter().enumerate() {
        let host_text = rule.host.as_deref().unwrap_or("");
        if !host_text.is_empty() && !valid_host(host_text) {
            let why = "not a host name (e.g. chat.example.com or *.example.com); rule ignored";
            warn(&mut parsed.warnings, format!("spec.rules[{i}].host"), host_text, why, reasons::INVALID_RULE);
            continue;
        }
        let host = HostMatch::parse(host_text);
        let Some(http) = &rule.http else {
            let why = "the rule has no http paths; nothing is routed for it";
            warn(&mut parsed.warnings, format!("spec.rules[{i}].http"), host_text, why, reasons::INVALID_RULE);
            continue;
        };
        for (j, p) in http.paths.iter().enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let Some(path) = path_match(&object, &field, p.path.as_deref(), &p.path_type, &mut parsed.warnings) else {
                continue;
            };
            let backend = backend_ref(&object, &p.backend, &field);
            let claim_key = claim_key(&host, &path);
            parsed.paths.push(ParsedPath { host: host.clone(), path, field, claim_key, backend });
        }
    }
    parsed
}

/// The Service and port a backend names (`field` is where the backend sits in the Ingress),
/// or the warning that it names none (a resource backend): then its path is ignored.
fn backend_ref(object: &ObjectRef, backend: &IngressBackend, field: &str) -> Result<BackendRef, Box<Warning>> {
    let Some(service) = &backend.service else {
        let (value, reason) = match &backend.resource {
            Some(r) => (format!("{}/{}", r.kind, r.name), "resource backends are not supported; only Service backends"),
            None => (String::new(), "the backend names no Service"),
        };
        let why = format!("{reason}; path ignored");
        let field = format!("{field}.backend");
        return Err(Box::new(Warning::new(object, field, value, why, reasons::UNSUPPORTED_BACKEND)));
    };
    let field =
        if field == "spec.defaultBackend" { format!("{field}.service") } else { format!("{field}.backend.service") };
    let port = service.port.as_ref().and_then(|p| match (&p.name, p.number) {
        (Some(name), _) if !name.is_empty() => Some(PortRef::Name(name.clone())),
        (_, Some(n)) => Some(PortRef::Number(n)),
        _ => None,
    });
    let port_text = port.as_ref().map(PortRef::text).unwrap_or_default();
    let cache_key = hash_of(&(object, &field, &service.name, &port_text));
    Ok(BackendRef { field, service: service.name.clone(), port, port_text, cache_key })
}

/// The path of one HTTPIngressPath, or a warning.
fn path_match(
    object: &ObjectRef,
    field: &str,
    path: Option<&str>,
    path_type: &str,
    warnings: &mut Vec<Warning>,
) -> Option<PathMatch> {
    let implementation_specific = path_type == "ImplementationSpecific";
    let path = match path {
        Some(p) if !p.is_empty() => p,
        // Only ImplementationSpecific may leave the path out; it then means every path.
        _ if implementation_specific => "/",
        _ => {
            let why = format!("pathType {path_type} needs a path; path ignored");
            warnings.push(Warning::new(object, format!("{field}.path"), "", why, reasons::INVALID_RULE));
            return None;
        }
    };
    if !path.starts_with('/') {
        let why = "a path must start with `/`; path ignored";
        warnings.push(Warning::new(object, format!("{field}.path"), path, why, reasons::INVALID_RULE));
        return None;
    }
    match path_type {
        "Exact" => Some(PathMatch::exact(path)),
        "Prefix" | "ImplementationSpecific" => Some(PathMatch::prefix(path)),
        other => {
            let why = "pathType must be Exact, Prefix or ImplementationSpecific; path ignored";
            warnings.push(Warning::new(object, format!("{field}.pathType"), other, why, reasons::INVALID_RULE));
            None
        }
    }
}

/// `appProtocol: kubernetes.io/ws` (the Kubernetes name for WebSocket over cleartext).
pub const APP_PROTOCOL_WS: &str = "kubernetes.io/ws";

fn is_ws_port(p: &ServicePort) -> bool {
    p.app_protocol.as_deref() == Some(APP_PROTOCOL_WS)
}

/// The address family (`IPv4`/`IPv6`) whose endpoints a Service's pool uses: its first
/// `spec.ipFamilies` entry, else its cluster IP's family, else IPv4 when it has IPv4 slices,
/// else any (`None`: a single-family Service).
fn primary_family(svc: &Service, slices: &[Arc<EndpointSlice>]) -> Option<&'static str> {
    let spec = svc.spec.as_ref();
    let declared = spec.and_then(|s| s.ip_families.as_ref()).and_then(|f| f.first()).map(String::as_str);
    let cluster_ip = spec.and_then(|s| s.cluster_ip.as_deref()).and_then(|ip| ip.parse::<IpAddr>().ok());
    let from_ip = cluster_ip.map(|ip| if ip.is_ipv6() { "IPv6" } else { "IPv4" });
    match declared.or(from_ip) {
        Some("IPv4") => Some("IPv4"),
        Some("IPv6") => Some("IPv6"),
        _ => {
            let has = |f: &str| slices.iter().any(|s| s.address_type == f);
            (has("IPv4") && has("IPv6")).then_some("IPv4")
        }
    }
}

/// An endpoint's lifecycle from its EndpointSlice conditions: `terminating` (serving or not)
/// is Terminating; otherwise `ready` decides, and unset `ready` counts as ready (the API's
/// "unknown, interpret as ready").
pub fn endpoint_state(conditions: Option<&EndpointConditions>) -> EndpointState {
    let terminating = conditions.and_then(|c| c.terminating) == Some(true);
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    match (terminating, ready) {
        (true, _) => EndpointState::Terminating,
        (false, true) => EndpointState::Ready,
        (false, false) => EndpointState::NotReady,
    }
}

/// A 128-bit hash (two independent 64-bit ones), the same for every call in this process:
/// keys that need no stored copy to tell values apart.
fn hash128(value: &impl Hash) -> u128 {
    static STATES: std::sync::OnceLock<(ahash::RandomState, ahash::RandomState)> = std::sync::OnceLock::new();
    let (a, b) = STATES.get_or_init(|| (ahash::RandomState::new(), ahash::RandomState::new()));
    (u128::from(a.hash_one(value)) << 64) | u128::from(b.hash_one(value))
}

/// A fast hash, the same for every call in this process (keys of [`RouteCache`]).
fn hash_of(value: &impl Hash) -> u64 {
    static STATE: std::sync::OnceLock<ahash::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(ahash::RandomState::new).hash_one(value)
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
