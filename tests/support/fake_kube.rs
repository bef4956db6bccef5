//! A fake Kubernetes API server over real HTTP/1.1 on loopback: a test double for the
//! controller, not a conformance implementation (the kind e2e suite is the real-cluster check).
//!
//! It stores objects as JSON under one global resourceVersion counter and serves what the
//! real `kube::Client` and kube-runtime reflectors ask of it:
//! - list (`metadata.resourceVersion` on every list), namespaced and cluster-wide paths, paged
//!   with `limit`/`continue` like the real server (every page carries the first page's
//!   resourceVersion; a continue token whose version was compacted gets 410 `Expired`);
//! - `?watch=true`: ADDED/MODIFIED/DELETED/BOOKMARK as newline-delimited JSON over chunked
//!   HTTP, replaying history newer than `resourceVersion`; a compacted (stale) version gets
//!   HTTP 200 with an `ERROR` event carrying a 410 `Status`, like the real API server;
//! - get, create (409 AlreadyExists), replace (409 Conflict on a stale resourceVersion),
//!   merge patch (on the object or its `status` subresource), delete;
//! - simple label (`k=v`, `k!=v`, `k`) and field (`metadata.name=`, `metadata.namespace=`,
//!   Secrets' `type=`) selectors;
//! - what the API server stamps: a `uid`, a distinct `creationTimestamp` per object (one second
//!   apart, in creation order), and `metadata.generation` (1 on create, +1 whenever anything
//!   but metadata and status changes);
//! - `events.k8s.io/v1` Event validation as the real server does it (eventTime, type,
//!   reason, action, reportingController/-Instance, note length, series, and the Event's
//!   namespace matching its `regarding` object's): invalid Events get 422 `Invalid`;
//! - discovery (`/apis/GROUP/VERSION`) of the custom resources a test installs
//!   ([`FakeKube::install_gateway_api`]), 404 before, as without the CRDs; `PUT .../status`
//!   replacing status only, 409 on a stale resourceVersion.
//!
//! Test hooks: [`FakeKube::apply`]/[`FakeKube::delete`] objects,
//! [`FakeKube::compact`] history
//! (forces 410 on every watch behind it), [`FakeKube::go_down`] (drop every connection and
//! refuse new ones) and [`FakeKube::come_back`], [`FakeKube::forbid`] (403 for a verb on a
//! resource, as RBAC answers), [`FakeKube::set_fault`] (any status for requests a test picks),
//! [`FakeKube::expire_next_continue`], and a log of every request for assertions.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One collection: API group ("" = core), version, plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Collection {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl Collection {
    pub fn of<K: k8s_openapi::Resource>() -> Self {
        Self { group: K::GROUP.to_string(), version: K::VERSION.to_string(), plural: K::URL_PATH_SEGMENT.to_string() }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    fn kind(&self) -> String {
        match self.plural.as_str() {
            "ingresses" => "Ingress",
            "ingressclasses" => "IngressClass",
            "services" => "Service",
            "endpointslices" => "EndpointSlice",
            "nodes" => "Node",
            "events" => "Event",
            "leases" => "Lease",
            "configmaps" => "ConfigMap",
            "pods" => "Pod",
            "secrets" => "Secret",
            "namespaces" => "Namespace",
            "gatewayclasses" => "GatewayClass",
            "gateways" => "Gateway",
            "httproutes" => "HTTPRoute",
            "referencegrants" => "ReferenceGrant",
            other => other,
        }
        .to_string()
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

impl RequestRecord {
    /// `(group, resource[/subresource], verb)` as RBAC names it, when the path is a resource path.
    pub fn access(&self) -> Option<(String, String, &'static str)> {
        let p = parse_path(&self.path)?;
        let watching = query_param(&self.query, "watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match (self.method.as_str(), p.name.is_some()) {
            ("GET", _) if watching => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        let resource = match p.sub {
            Some(s) => format!("{}/{}", p.coll.plural, s),
            None => p.coll.plural,
        };
        Some((p.coll.group, resource, verb))
    }
}

#[derive(Debug, Clone)]
struct HistoryEvent {
    rv: u64,
    coll: Collection,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    objects: BTreeMap<(Collection, String, String), Value>,
    history: Vec<HistoryEvent>,
    requests: Vec<RequestRecord>,
    uid: u64,
    /// The next request carrying a `continue` token gets 410 Expired.
    expire_continue: bool,
    /// Discovery of installed custom resources: `GROUP/VERSION` → (plural, kind, namespaced).
    /// `/apis/GROUP/VERSION` answers 404 for a group version not here, as without its CRD.
    api_resources: BTreeMap<String, Vec<(String, String, bool)>>,
}

/// What a fault hook sees of a request.
#[derive(Debug, Clone)]
pub struct FaultRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
    /// `(group, resource[/subresource], verb)` as RBAC names it.
    pub access: Option<(String, String, &'static str)>,
}

/// Decides, per request, an error status to answer instead of serving it.
pub type FaultHook = Arc<dyn Fn(&FaultRequest<'_>) -> Option<u16> + Send + Sync>;

struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion, for watch streams to wake on.
    changed: watch::Sender<u64>,
    down: AtomicBool,
    /// Cancelled to drop every open connection (go down / stop).
    connections: Mutex<CancellationToken>,
    bookmark_every: Duration,
    stop: CancellationToken,
    fault: Mutex<Option<FaultHook>>,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connections(&self) -> CancellationToken {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running fake API server; stops when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.connections().cancel();
    }
}

impl FakeKube {
    /// Start on 127.0.0.1:0 with BOOKMARK events every second.
    pub async fn start() -> Self {
        Self::start_with(Duration::from_secs(1)).await
    }

    pub async fn start_with(bookmark_every: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake api");
        let addr = listener.local_addr().expect("local addr");
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed,
            down: AtomicBool::new(false),
            connections: Mutex::new(CancellationToken::new()),
            bookmark_every,
            stop: CancellationToken::new(),
            fault: Mutex::new(None),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real `kube::Client` pointed at this server.
    pub fn client(&self) -> kube::Client {
        let uri: http::Uri = self.url().parse().expect("uri");
        let mut config = kube::Config::new(uri);
        config.default_namespace = "default".to_string();
        kube::Client::try_from(config).expect("kube client")
    }

    /// Create or replace an object (ADDED or MODIFIED).
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) {
        let value = serde_json::to_value(object).expect("serialize");
        self.apply_value(Collection::of::<K>(), value);
    }

    pub fn apply_value(&self, coll: Collection, mut value: Value) {
        let ns = value["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let name = value["metadata"]["name"].as_str().expect("metadata.name").to_string();
        value["apiVersion"] = json!(coll.api_version());
        value["kind"] = json!(coll.kind());
        let mut s = self.shared.store();
        let key = (coll.clone(), ns.clone(), name);
        let kind = if let Some(old) = s.objects.get(&key) {
            keep_server_fields(old, &mut value);
            "MODIFIED"
        } else {
            stamp_new(&mut s, &mut value);
            "ADDED"
        };
        let rv = commit(&mut s, &coll, &ns, kind, &mut value);
        s.objects.insert(key, value);
        drop(s);
        self.shared.changed.send_replace(rv);
    }

    /// An object as stored (JSON), for fields a typed view might drop.
    pub fn get_value(&self, coll: &Collection, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store().objects.get(&(coll.clone(), namespace.to_string(), name.to_string())).cloned()
    }

    /// Serve discovery for `group_version` (`/apis/GROUP/VERSION`) listing `resources`
    /// (plural, kind, namespaced), as once its CRDs are installed.
    pub fn install_api(&self, group_version: &str, resources: &[(&str, &str, bool)]) {
        let list = resources.iter().map(|(p, k, n)| (p.to_string(), k.to_string(), *n)).collect();
        self.shared.store().api_resources.insert(group_version.to_string(), list);
    }

    /// The Gateway API standard channel's CRDs: GatewayClass, Gateway, HTTPRoute (v1) and
    /// ReferenceGrant (v1beta1).
    pub fn install_gateway_api(&self) {
        self.install_api(
            "gateway.networking.k8s.io/v1",
            &[
                ("gatewayclasses", "GatewayClass", false),
                ("gateways", "Gateway", true),
                ("httproutes", "HTTPRoute", true),
                ("grpcroutes", "GRPCRoute", true),
            ],
        );
        self.install_api("gateway.networking.k8s.io/v1beta1", &[("referencegrants", "ReferenceGrant", true)]);
    }

    /// Delete an object (DELETED); false if it did not exist.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        delete_object(&self.shared, &Collection::of::<K>(), namespace, name).is_some()
    }

    pub fn get<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let key = (Collection::of::<K>(), namespace.to_string(), name.to_string());
        let v = self.shared.store().objects.get(&key).cloned()?;
        Some(serde_json::from_value(v).expect("deserialize stored object"))
    }

    pub fn list<K: k8s_openapi::Resource + serde::de::DeserializeOwned>(&self) -> Vec<K> {
        let coll = Collection::of::<K>();
        let values: Vec<Value> =
            self.shared.store().objects.iter().filter(|((c, _, _), _)| *c == coll).map(|(_, v)| v.clone()).collect();
        values.into_iter().map(|v| serde_json::from_value(v).expect("deserialize stored object")).collect()
    }

    /// Forget all history up to now: every watch behind the new version ends with an ERROR
    /// 410 event, and watches resumed from an older version get 410 too (they must re-list).
    pub fn compact(&self) {
        let mut s = self.shared.store();
        s.rv += 1;
        s.compacted = s.rv;
        s.history.clear();
        let rv = s.rv;
        drop(s);
        self.shared.changed.send_replace(rv);
    }

    /// Stop answering: drop every open connection (watches included) and close new ones at once.
    pub fn go_down(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        let mut c = self.shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        c.cancel();
        *c = CancellationToken::new();
    }

    pub fn come_back(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// Answer 403 Forbidden, as RBAC does, to `verb` on `resource` (`ingresses`,
    /// `ingresses/status`, ...) of API group `group` ("" for core).
    pub fn forbid(&self, group: &str, resource: &str, verb: &'static str) {
        let (group, resource) = (group.to_string(), resource.to_string());
        self.set_fault(move |r: &FaultRequest<'_>| {
            r.access.as_ref().is_some_and(|(g, res, v)| *g == group && *res == resource && *v == verb).then_some(403)
        });
    }

    /// Answer requests `hook` picks with the status it returns (a Kubernetes `Status` body)
    /// instead of serving them; replaces any earlier hook.
    pub fn set_fault(&self, hook: impl Fn(&FaultRequest<'_>) -> Option<u16> + Send + Sync + 'static) {
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(hook));
    }

    pub fn clear_fault(&self) {
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The next list request that carries a `continue` token gets 410 Expired, as when the
    /// API server compacted the version the token was issued for.
    pub fn expire_next_continue(&self) {
        self.shared.store().expire_continue = true;
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.store().requests.clone()
    }

    /// How many list (non-watch GET collection) requests hit `plural`.
    pub fn list_count(&self, plural: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.access().is_some_and(|(_, res, verb)| res == plural && verb == "list"))
            .count()
    }
}

/// Stamp a new resourceVersion on `value` and record the change.
fn commit(s: &mut Store, coll: &Collection, ns: &str, kind: &'static str, value: &mut Value) -> u64 {
    s.rv += 1;
    let rv = s.rv;
    value["metadata"]["resourceVersion"] = json!(rv.to_string());
    s.history.push(HistoryEvent { rv, coll: coll.clone(), namespace: ns.to_string(), kind, object: value.clone() });
    rv
}

/// The first creationTimestamp handed out; each new object gets one second more.
const EPOCH_SECONDS: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// RFC 3339 UTC time of a Unix timestamp (the fake's only clock format).
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// What the API server sets on a new object: uid, a creationTimestamp one second after the
/// previous object's, generation 1.
fn stamp_new(s: &mut Store, value: &mut Value) {
    s.uid += 1;
    value["metadata"]["uid"] = json!(format!("uid-{}", s.uid));
    value["metadata"]["creationTimestamp"] = json!(rfc3339(EPOCH_SECONDS + s.uid));
    value["metadata"]["generation"] = json!(1);
}

/// On an update: uid and creationTimestamp stay; generation grows when anything but
/// metadata and status changed.
fn keep_server_fields(old: &Value, value: &mut Value) {
    value["metadata"]["uid"] = old["metadata"]["uid"].clone();
    value["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
    let generation = old["metadata"]["generation"].as_u64().unwrap_or(1);
    let bump = u64::from(spec_part(old) != spec_part(value));
    value["metadata"]["generation"] = json!(generation + bump);
}

/// The object without metadata, status, kind and apiVersion: what `generation` tracks.
fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["metadata", "status", "kind", "apiVersion"] {
            o.remove(k);
        }
    }
    v
}

/// events.k8s.io/v1 validation as kube-apiserver does it (pkg/apis/core/validation/events.go).
fn validate_event(coll: &Collection, ns: &str, value: &Value) -> Result<(), String> {
    if coll.group != "events.k8s.io" {
        return Ok(());
    }
    let mut errors = Vec::new();
    let text = |k: &str| value[k].as_str().unwrap_or("");
    if value["eventTime"].as_str().unwrap_or("").is_empty() {
        errors.push("eventTime: Required value".to_string());
    }
    if !matches!(text("type"), "Normal" | "Warning") {
        errors.push(format!("type: Unsupported value: {:?}: supported values: \"Normal\", \"Warning\"", text("type")));
    }
    for (key, max) in [("reason", 128), ("action", 128), ("reportingController", 253), ("reportingInstance", 128)] {
        let v = text(key);
        if v.is_empty() {
            errors.push(format!("{key}: Required value"));
        } else if v.len() > max {
            errors.push(format!("{key}: Too long: must have at most {max} bytes"));
        }
    }
    if text("note").len() > 1024 {
        errors.push("note: Too long: must have at most 1024 bytes".to_string());
    }
    if let Some(series) = value.get("series").filter(|v| !v.is_null()) {
        if series["count"].as_i64().unwrap_or(0) < 2 {
            errors.push("series.count: Invalid value: should be at least 2".to_string());
        }
        if series["lastObservedTime"].as_str().unwrap_or("").is_empty() {
            errors.push("series.lastObservedTime: Required value".to_string());
        }
    }
    let regarding_ns = value["regarding"]["namespace"].as_str().unwrap_or("");
    if regarding_ns.is_empty() {
        if !matches!(ns, "" | "default" | "kube-system") {
            errors.push(format!("metadata.namespace: Invalid value: {ns:?}: does not match event.namespace"));
        }
    } else if regarding_ns != ns {
        errors.push(format!("regarding.namespace: Invalid value: {regarding_ns:?}: does not match event.namespace"));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.join(", ")) }
}

fn invalid(coll: &Collection, name: &str, why: &str) -> Response<Body> {
    error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &format!("{} \"{name}\" is invalid: {why}", coll.kind()))
}

fn delete_object(shared: &Shared, coll: &Collection, ns: &str, name: &str) -> Option<Value> {
    let mut s = shared.store();
    let mut value = s.objects.remove(&(coll.clone(), ns.to_string(), name.to_string()))?;
    let rv = commit(&mut s, coll, ns, "DELETED", &mut value);
    drop(s);
    shared.changed.send_replace(rv);
    Some(value)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shared.stop.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        if shared.down.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        // Without TCP_NODELAY every request waits ~40 ms for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let token = shared.connections();
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let svc = service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                () = token.cancelled() => {}
            }
        });
    }
}

struct ResourcePath {
    coll: Collection,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn cluster_scoped(plural: &str) -> bool {
    matches!(plural, "ingressclasses" | "nodes" | "namespaces" | "clusterroles" | "gatewayclasses")
}

fn parse_path(path: &str) -> Option<ResourcePath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(ResourcePath {
        coll: Collection { group: group.to_string(), version: version.to_string(), plural: plural.to_string() },
        namespace,
        name,
        sub,
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed_unsync())
        .expect("response")
}

fn status_value(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_value(code.as_u16(), reason, message))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type =
        req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let hook = shared.fault.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let record = RequestRecord { method: method.to_string(), path: path.clone(), query: query.clone(), status: 0 };
    let fault = hook.and_then(|h| {
        h(&FaultRequest { method: method.as_str(), path: &path, query: &query, body: &body, access: record.access() })
    });
    let response = match fault {
        Some(403) => {
            let (group, resource, verb) = record.access().unwrap_or_default();
            let what = if group.is_empty() { resource.clone() } else { format!("{resource}.{group}") };
            error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!(
                    "{what} is forbidden: User \"system:serviceaccount:test:wsingress\" cannot {verb} resource \"{resource}\" in API group \"{group}\""
                ),
            )
        }
        Some(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(status, status.canonical_reason().unwrap_or("Error"), "injected by the test")
        }
        None => route(&shared, &method, &path, &query, &content_type, &body),
    };
    shared.store().requests.push(RequestRecord { status: response.status().as_u16(), ..record });
    response
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let Some(p) = parse_path(path) else {
        if *method == Method::GET
            && let Some(list) = discovery(shared, path)
        {
            return json_response(StatusCode::OK, &list);
        }
        return error(StatusCode::NOT_FOUND, "NotFound", "no such path");
    };
    let ns = if cluster_scoped(&p.coll.plural) { None } else { p.namespace.clone() };
    match (method, &p.name) {
        (&Method::GET, None) => {
            if query_param(query, "watch").is_some_and(|w| w == "true" || w == "1") {
                watch_collection(shared, p.coll, ns, query)
            } else {
                list_collection(shared, &p.coll, ns.as_deref(), query)
            }
        }
        (&Method::GET, Some(name)) => {
            let key = (p.coll, ns.unwrap_or_default(), name.clone());
            match shared.store().objects.get(&key) {
                Some(v) => json_response(StatusCode::OK, v),
                None => error(StatusCode::NOT_FOUND, "NotFound", &format!("\"{name}\" not found")),
            }
        }
        (&Method::POST, None) => create(shared, p.coll, ns.unwrap_or_default(), body),
        (&Method::PUT, Some(name)) => match p.sub.as_deref() {
            None => replace(shared, p.coll, ns.unwrap_or_default(), name, body),
            Some("status") => replace_status(shared, p.coll, ns.unwrap_or_default(), name, body),
            Some(other) => {
                error(StatusCode::NOT_FOUND, "NotFound", &format!("subresource {other} not supported by the fake"))
            }
        },
        (&Method::PATCH, Some(name)) => {
            patch(shared, p.coll, ns.unwrap_or_default(), name, p.sub.as_deref(), content_type, body)
        }
        (&Method::DELETE, Some(name)) => match delete_object(shared, &p.coll, &ns.unwrap_or_default(), name) {
            Some(v) => json_response(StatusCode::OK, &v),
            None => error(StatusCode::NOT_FOUND, "NotFound", "not found"),
        },
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported by the fake"),
    }
}

fn matches_selectors(obj: &Value, query: &str) -> bool {
    if let Some(fields) = query_param(query, "fieldSelector") {
        for term in fields.split(',').filter(|t| !t.is_empty()) {
            let (key, want, eq) = match term.split_once("!=") {
                Some((k, v)) => (k, v, false),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((k, v)) => (k, v, true),
                    None => continue,
                },
            };
            let have = match key {
                "metadata.name" => obj["metadata"]["name"].as_str().unwrap_or(""),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str().unwrap_or(""),
                // Secrets' one selectable field besides metadata (an unset type is Opaque).
                "type" => obj["type"].as_str().unwrap_or("Opaque"),
                _ => continue,
            };
            if (have == want) != eq {
                return false;
            }
        }
    }
    if let Some(labels) = query_param(query, "labelSelector") {
        let have = &obj["metadata"]["labels"];
        for term in labels.split(',').filter(|t| !t.is_empty()) {
            let ok = if let Some((k, v)) = term.split_once("!=") {
                have[k].as_str() != Some(v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                have[k].as_str() == Some(v)
            } else if let Some(k) = term.strip_prefix('!') {
                have.get(k).is_none()
            } else {
                have.get(term).is_some()
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// A list, paged when `limit` is given: the `continue` token carries the first page's
/// resourceVersion and the last key served; every page reports that resourceVersion, and a
/// token whose version was compacted away gets 410 Expired (the client must list again).
fn list_collection(shared: &Shared, coll: &Collection, ns: Option<&str>, query: &str) -> Response<Body> {
    let mut s = shared.store();
    let limit = query_param(query, "limit").and_then(|l| l.parse::<usize>().ok()).filter(|&l| l > 0);
    let token = query_param(query, "continue").filter(|c| !c.is_empty());
    let (list_rv, after) = match &token {
        None => (s.rv, None),
        Some(t) => {
            let parsed = t.split_once('/').and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.to_string())));
            let Some((rv, key)) = parsed else {
                return error(StatusCode::BAD_REQUEST, "BadRequest", "invalid continue token");
            };
            if std::mem::take(&mut s.expire_continue) || rv < s.compacted {
                return error(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            (rv, Some(key))
        }
    };
    let mut items: Vec<Value> = Vec::new();
    let mut more = None;
    for ((c, n, name), v) in &s.objects {
        let key = format!("{n}/{name}");
        if c != coll || ns.is_some_and(|ns| ns != n) || after.as_ref().is_some_and(|a| key <= *a) {
            continue;
        }
        if !matches_selectors(v, query) {
            continue;
        }
        if limit.is_some_and(|l| items.len() == l) {
            more = Some(());
            break;
        }
        items.push(v.clone());
    }
    let continue_token = more.and_then(|()| {
        let last = items.last()?;
        let key = format!(
            "{}/{}",
            last["metadata"]["namespace"].as_str().unwrap_or(""),
            last["metadata"]["name"].as_str().unwrap_or("")
        );
        Some(format!("{list_rv}/{key}"))
    });
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if let Some(t) = continue_token {
        metadata["continue"] = json!(t);
    }
    let list = json!({
        "apiVersion": coll.api_version(),
        "kind": format!("{}List", coll.kind()),
        "metadata": metadata,
        "items": items,
    });
    drop(s);
    json_response(StatusCode::OK, &list)
}

fn create(shared: &Shared, coll: Collection, ns: String, body: &[u8]) -> Response<Body> {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let mut s = shared.store();
    let name = match value["metadata"]["name"].as_str() {
        Some(n) => n.to_string(),
        None => match value["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{}", s.uid + 1),
            None => return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "name required"),
        },
    };
    let key = (coll.clone(), ns.clone(), name.clone());
    if s.objects.contains_key(&key) {
        return error(StatusCode::CONFLICT, "AlreadyExists", &format!("\"{name}\" already exists"));
    }
    if let Err(why) = validate_event(&coll, &ns, &value) {
        return invalid(&coll, &name, &why);
    }
    value["apiVersion"] = json!(coll.api_version());
    value["kind"] = json!(coll.kind());
    value["metadata"]["name"] = json!(name);
    if !ns.is_empty() {
        value["metadata"]["namespace"] = json!(ns);
    }
    stamp_new(&mut s, &mut value);
    let rv = commit(&mut s, &coll, &ns, "ADDED", &mut value);
    s.objects.insert(key, value.clone());
    drop(s);
    shared.changed.send_replace(rv);
    json_response(StatusCode::CREATED, &value)
}

fn replace(shared: &Shared, coll: Collection, ns: String, name: &str, body: &[u8]) -> Response<Body> {
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let mut s = shared.store();
    let key = (coll.clone(), ns.clone(), name.to_string());
    let Some(old) = s.objects.get(&key) else {
        return error(StatusCode::NOT_FOUND, "NotFound", &format!("\"{name}\" not found"));
    };
    let sent = value["metadata"]["resourceVersion"].as_str().unwrap_or("");
    let have = old["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !sent.is_empty() && sent != have {
        return error(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                coll.plural
            ),
        );
    }
    if let Err(why) = validate_event(&coll, &ns, &value) {
        return invalid(&coll, name, &why);
    }
    value["apiVersion"] = json!(coll.api_version());
    value["kind"] = json!(coll.kind());
    let old = old.clone();
    keep_server_fields(&old, &mut value);
    let rv = commit(&mut s, &coll, &ns, "MODIFIED", &mut value);
    s.objects.insert(key, value.clone());
    drop(s);
    shared.changed.send_replace(rv);
    json_response(StatusCode::OK, &value)
}

/// `PUT .../NAME/status`: only `status` changes; a stale resourceVersion gets 409 Conflict.
fn replace_status(shared: &Shared, coll: Collection, ns: String, name: &str, body: &[u8]) -> Response<Body> {
    let Ok(sent) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let mut s = shared.store();
    let key = (coll.clone(), ns.clone(), name.to_string());
    let Some(mut value) = s.objects.get(&key).cloned() else {
        return error(StatusCode::NOT_FOUND, "NotFound", &format!("\"{name}\" not found"));
    };
    let rv = sent["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if !rv.is_empty() && rv != value["metadata"]["resourceVersion"].as_str().unwrap_or("") {
        return error(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                coll.plural
            ),
        );
    }
    match sent.get("status") {
        Some(status) if !status.is_null() => value["status"] = status.clone(),
        _ => {
            value.as_object_mut().map(|o| o.remove("status"));
        }
    }
    let rv = commit(&mut s, &coll, &ns, "MODIFIED", &mut value);
    s.objects.insert(key, value.clone());
    drop(s);
    shared.changed.send_replace(rv);
    json_response(StatusCode::OK, &value)
}

/// `GET /apis/GROUP/VERSION` of an installed group version: its `APIResourceList`.
fn discovery(shared: &Shared, path: &str) -> Option<Value> {
    let gv = path.trim_matches('/').strip_prefix("apis/")?;
    let s = shared.store();
    let resources = s.api_resources.get(gv)?;
    let list: Vec<Value> = resources
        .iter()
        .flat_map(|(plural, kind, namespaced)| {
            [
                json!({"name": plural, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind,
                       "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]}),
                json!({"name": format!("{plural}/status"), "singularName": "", "namespaced": namespaced,
                       "kind": kind, "verbs": ["get", "patch", "update"]}),
            ]
        })
        .collect();
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn patch(
    shared: &Shared,
    coll: Collection,
    ns: String,
    name: &str,
    sub: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    if !content_type.starts_with("application/merge-patch+json")
        && !content_type.starts_with("application/strategic-merge-patch+json")
    {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the fake supports merge patches only",
        );
    }
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let mut s = shared.store();
    let key = (coll.clone(), ns.clone(), name.to_string());
    let Some(mut value) = s.objects.get(&key).cloned() else {
        return error(StatusCode::NOT_FOUND, "NotFound", &format!("\"{name}\" not found"));
    };
    match sub {
        // The status subresource only changes status.
        Some("status") => {
            let mut status = value.get("status").cloned().unwrap_or(json!({}));
            merge_patch(&mut status, patch.get("status").unwrap_or(&Value::Null));
            if status.is_null() {
                value.as_object_mut().map(|o| o.remove("status"));
            } else {
                value["status"] = status;
            }
        }
        Some(other) => {
            return error(StatusCode::NOT_FOUND, "NotFound", &format!("subresource {other} not supported by the fake"));
        }
        None => {
            let mut patch = patch;
            // Spec changes only through the main resource; status is kept.
            if let Some(o) = patch.as_object_mut() {
                o.remove("status");
            }
            let old = value.clone();
            merge_patch(&mut value, &patch);
            keep_server_fields(&old, &mut value);
        }
    }
    if let Err(why) = validate_event(&coll, &ns, &value) {
        return invalid(&coll, name, &why);
    }
    let rv = commit(&mut s, &coll, &ns, "MODIFIED", &mut value);
    s.objects.insert(key, value.clone());
    drop(s);
    shared.changed.send_replace(rv);
    json_response(StatusCode::OK, &value)
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_collection(shared: &Arc<Shared>, coll: Collection, ns: Option<String>, query: &str) -> Response<Body> {
    let from = query_param(query, "resourceVersion").unwrap_or_default();
    let bookmarks = query_param(query, "allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    let query = query.to_string();
    let (tx, rx) = mpsc::channel::<Bytes>(64);

    let (mut cursor, initial) = {
        let s = shared.store();
        match from.parse::<u64>() {
            Ok(rv) if rv != 0 => {
                if rv < s.compacted {
                    let gone =
                        status_value(410, "Expired", &format!("too old resource version: {rv} ({})", s.compacted));
                    drop(s);
                    // The real API server answers 200 and reports 410 inside the stream.
                    let line = watch_line("ERROR", &gone);
                    let stream = futures_util::stream::once(async move { Ok(Frame::data(line)) });
                    return Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(StreamBody::new(stream).boxed_unsync())
                        .expect("response");
                }
                (rv, Vec::new())
            }
            // "" or "0": start with synthetic ADDED events for what exists now.
            _ => {
                let now: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((c, n, _), v)| {
                        *c == coll && ns.as_deref().is_none_or(|ns| ns == n) && matches_selectors(v, &query)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (s.rv, now)
            }
        }
    };

    let shared2 = shared.clone();
    let conn = shared.connections();
    tokio::spawn(async move {
        let shared = shared2;
        for obj in initial {
            if tx.send(watch_line("ADDED", &obj)).await.is_err() {
                return;
            }
        }
        let mut changed = shared.changed.subscribe();
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(shared.bookmark_every);
        tick.tick().await;
        loop {
            let (events, rv, gone) = {
                let s = shared.store();
                let gone = cursor < s.compacted;
                let events: Vec<HistoryEvent> = s
                    .history
                    .iter()
                    .filter(|e| {
                        e.rv > cursor
                            && e.coll == coll
                            && ns.as_deref().is_none_or(|ns| ns == e.namespace)
                            && matches_selectors(&e.object, &query)
                    })
                    .cloned()
                    .collect();
                (events, s.rv, gone)
            };
            if gone {
                let st = status_value(410, "Expired", "too old resource version");
                let _ = tx.send(watch_line("ERROR", &st)).await;
                return;
            }
            for e in events {
                cursor = e.rv;
                if tx.send(watch_line(e.kind, &e.object)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = tick.tick() => {
                    if bookmarks {
                        // Everything up to `rv` of this collection has been sent.
                        cursor = cursor.max(rv);
                        let bm = json!({
                            "apiVersion": coll.api_version(),
                            "kind": coll.kind(),
                            "metadata": {"resourceVersion": cursor.to_string()},
                        });
                        if tx.send(watch_line("BOOKMARK", &bm)).await.is_err() {
                            return;
                        }
                    }
                }
                () = &mut deadline => return,
                () = conn.cancelled() => return,
                () = tx.closed() => return,
            }
        }
    });

    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(Frame::data(b)), rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("response")
}
