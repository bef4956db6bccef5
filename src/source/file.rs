//! `wsingress serve --manifests FILE`: routes from a multi-document YAML of Ingress,
//! Service, EndpointSlice and IngressClass objects (what you would `kubectl apply`),
//! translated by the same pure [`translate`] as the controller, and reloaded on change.
//! `kind: Secret` objects (`kubernetes.io/tls` for `spec.tls`, `ca.crt` for backend
//! verification) become the certificate table published with the routes ([`load_all`]).
//!
//! **Why polling, not inotify.** The file is checked every [`POLL_INTERVAL`]: its metadata
//! (modification time and length, following symlinks), and its content hash when those
//! change (and every few seconds regardless, for coarse timestamps). inotify watches an
//! inode, so editors that save by writing a new file and renaming it over the old one, and
//! Kubernetes ConfigMap volumes, which swap a `..data` symlink, both leave a naive watch
//! on a dead inode; doing it right means watching the directory and re-arming, and it still
//! fails on some network and overlay filesystems. A `stat` twice a second costs nothing
//! and works everywhere, with no extra dependency.
//!
//! **Settling.** A change is applied once the same content (or the same read error) has
//! been seen on two consecutive polls, so a half-written file or the instant between an
//! editor's delete and rename is not applied. Reload latency is 0.5–1 s.
//!
//! **Last good table wins.** A file that does not parse (or cannot be read) is reported with
//! the document index, kind/name and field, and the previous table keeps serving.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::gateway_api::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant};
use crate::routes::{Route, RouteTable};
use crate::source::Publisher;
use crate::tls::CertTable;
use crate::translate::tls::TlsDefaults;
use crate::translate::{ClusterSnapshot, Defaults, ObjectRef, Warning, reasons, sort_warnings, translate_all};

/// Label of this source in metrics and logs.
pub const SOURCE: &str = "file";
/// How often the file is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Re-read and hash the file at least this often even when its metadata looks unchanged
/// (filesystems with one-second or coarser timestamps).
const FULL_CHECK_EVERY: u32 = 10;

/// Why a manifests file produced no table.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Documents are numbered from 1, in file order.
    #[error("document {index}{}: {message}", describe(.kind, .name))]
    Document { index: usize, kind: Option<String>, name: Option<String>, message: String },
    #[error(
        "the file holds no documents (an empty file is refused so that a truncated save never empties the route table)"
    )]
    Empty,
}

fn describe(kind: &Option<String>, name: &Option<String>) -> String {
    match (kind, name) {
        (Some(k), Some(n)) => format!(" ({k} {n})"),
        (Some(k), None) => format!(" ({k})"),
        (None, Some(n)) => format!(" ({n})"),
        (None, None) => String::new(),
    }
}

/// Translate a manifests text: the table and every warning (sorted).
pub fn load(text: &str, defaults: &Defaults) -> Result<(RouteTable, Vec<Warning>), LoadError> {
    let (table, _, warnings) =
        load_all(text, defaults, &TlsDefaults::default(), &CertTable::default(), crate::tls::unix_now())?;
    Ok((table, warnings))
}

/// Translate a manifests text with its Secrets: the route table, the certificate table and
/// every warning (sorted). `previous` and `now` as for [`translate_all`].
pub fn load_all(
    text: &str,
    defaults: &Defaults,
    tls: &TlsDefaults,
    previous: &CertTable,
    now: i64,
) -> Result<(RouteTable, CertTable, Vec<Warning>), LoadError> {
    let (snapshot, secrets, mut warnings) = parse_all(text)?;
    let (table, certs, more) = translate_all(&snapshot, &secrets, defaults, tls, previous, now);
    warnings.extend(more);
    sort_warnings(&mut warnings);
    Ok((table, certs, warnings))
}

fn read_file(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })
}

/// Read and translate the file once: the app calls this before binding any port, so a bad
/// initial file exits with the configuration-error code instead of serving nothing.
pub fn load_file(path: &Path, defaults: &Defaults) -> Result<(RouteTable, Vec<Warning>), LoadError> {
    load(&read_file(path)?, defaults)
}

/// [`load_file`] with the certificate table ([`load_all`]).
pub fn load_file_all(
    path: &Path,
    defaults: &Defaults,
    tls: &TlsDefaults,
    previous: &CertTable,
    now: i64,
) -> Result<(RouteTable, CertTable, Vec<Warning>), LoadError> {
    load_all(&read_file(path)?, defaults, tls, previous, now)
}

/// The `kind` and `namespace/name` of a document, read loosely for messages.
fn identity(value: &serde_yaml::Value) -> (Option<String>, Option<String>) {
    let kind = value.get("kind").and_then(|k| k.as_str()).map(str::to_string);
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str()).map(|n| {
        let ns = meta.and_then(|m| m.get("namespace")).and_then(|n| n.as_str()).unwrap_or("default");
        format!("{ns}/{n}")
    });
    (kind, name)
}

/// The objects of a multi-document YAML. Kinds translation does not read are skipped with
/// an info line; an object defined twice keeps its last definition, with a warning.
pub fn parse(text: &str) -> Result<(ClusterSnapshot, Vec<Warning>), LoadError> {
    parse_all(text).map(|(snapshot, _, warnings)| (snapshot, warnings))
}

/// [`parse`], with the file's Secrets.
pub fn parse_all(text: &str) -> Result<(ClusterSnapshot, Vec<Secret>, Vec<Warning>), LoadError> {
    // Pass 1: every document as a loose value, to learn its kind and name (and to catch
    // YAML syntax errors with the document's position).
    let mut values = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| LoadError::Document {
            index: i + 1,
            kind: None,
            name: None,
            message: e.to_string(),
        })?;
        values.push(value);
    }
    if values.iter().all(serde_yaml::Value::is_null) {
        return Err(LoadError::Empty);
    }
    // Pass 2: the kinds we read, deserialized straight from the text so that errors carry
    // the field path and line.
    let mut objects = Objects::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let Some(value) = values.get(i) else { break };
        if value.is_null() {
            continue;
        }
        let (kind, name) = identity(value);
        let fail = |message: String| LoadError::Document { index, kind: kind.clone(), name: name.clone(), message };
        if !value.is_mapping() {
            return Err(fail("a document must be a Kubernetes object (a mapping with `kind`)".into()));
        }
        match kind.as_deref() {
            Some("Ingress") => {
                let obj = Ingress::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                objects.add(index, "Ingress", obj, |o| &o.metadata).map_err(fail)?;
            }
            Some("Service") => {
                let obj = Service::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                objects.add(index, "Service", obj, |o| &o.metadata).map_err(fail)?;
            }
            Some("EndpointSlice") => {
                let obj = EndpointSlice::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                objects.add(index, "EndpointSlice", obj, |o| &o.metadata).map_err(fail)?;
            }
            Some("IngressClass") => {
                let obj = IngressClass::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                objects.add(index, "IngressClass", obj, |o| &o.metadata).map_err(fail)?;
            }
            Some("Secret") => {
                let obj = Secret::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                objects.add(index, "Secret", obj, |o| &o.metadata).map_err(fail)?;
            }
            Some("Namespace") => {
                let obj = Namespace::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                objects.add(index, "Namespace", obj, |o| &o.metadata).map_err(fail)?;
            }
            Some(kind @ ("GatewayClass" | "Gateway" | "HTTPRoute" | "ReferenceGrant")) => {
                let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
                if !api_version.starts_with("gateway.networking.k8s.io/") {
                    return Err(fail(format!(
                        "apiVersion `{api_version}`: a {kind} must be gateway.networking.k8s.io/v1 (ReferenceGrant: v1beta1)"
                    )));
                }
                match kind {
                    "GatewayClass" => {
                        let obj = GatewayClass::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                        objects.add(index, kind, obj, |o| &o.metadata).map_err(fail)?;
                    }
                    "Gateway" => {
                        let obj = Gateway::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                        objects.add(index, kind, obj, |o| &o.metadata).map_err(fail)?;
                    }
                    "HTTPRoute" => {
                        let obj = HTTPRoute::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                        objects.add(index, kind, obj, |o| &o.metadata).map_err(fail)?;
                    }
                    _ => {
                        let obj = ReferenceGrant::deserialize(doc).map_err(|e| fail(e.to_string()))?;
                        objects.add(index, kind, obj, |o| &o.metadata).map_err(fail)?;
                    }
                }
            }
            Some(other) => {
                tracing::info!(
                    source = SOURCE,
                    document = index,
                    kind = other,
                    name = name.as_deref().unwrap_or(""),
                    "skipping an object of a kind wsingress does not read"
                );
            }
            None => return Err(fail("the document has no `kind`".into())),
        }
    }
    Ok(objects.finish())
}

/// Objects collected from the documents, last definition winning.
#[derive(Default)]
struct Objects {
    ingresses: Vec<Option<Ingress>>,
    services: Vec<Option<Service>>,
    endpoint_slices: Vec<Option<EndpointSlice>>,
    ingress_classes: Vec<Option<IngressClass>>,
    secrets: Vec<Option<Secret>>,
    namespaces: Vec<Option<Namespace>>,
    gateway_classes: Vec<Option<GatewayClass>>,
    gateways: Vec<Option<Gateway>>,
    http_routes: Vec<Option<HTTPRoute>>,
    reference_grants: Vec<Option<ReferenceGrant>>,
    /// (kind, namespace, name) → (document index, position in its list).
    seen: HashMap<(String, String, String), (usize, usize)>,
    warnings: Vec<Warning>,
}

trait Collect<T> {
    fn list(&mut self) -> &mut Vec<Option<T>>;
}
impl Collect<Ingress> for Objects {
    fn list(&mut self) -> &mut Vec<Option<Ingress>> {
        &mut self.ingresses
    }
}
impl Collect<Service> for Objects {
    fn list(&mut self) -> &mut Vec<Option<Service>> {
        &mut self.services
    }
}
impl Collect<EndpointSlice> for Objects {
    fn list(&mut self) -> &mut Vec<Option<EndpointSlice>> {
        &mut self.endpoint_slices
    }
}
impl Collect<IngressClass> for Objects {
    fn list(&mut self) -> &mut Vec<Option<IngressClass>> {
        &mut self.ingress_classes
    }
}

impl Collect<Secret> for Objects {
    fn list(&mut self) -> &mut Vec<Option<Secret>> {
        &mut self.secrets
    }
}

macro_rules! collect {
    ($ty:ty, $field:ident) => {
        impl Collect<$ty> for Objects {
            fn list(&mut self) -> &mut Vec<Option<$ty>> {
                &mut self.$field
            }
        }
    };
}
collect!(Namespace, namespaces);
collect!(GatewayClass, gateway_classes);
collect!(Gateway, gateways);
collect!(HTTPRoute, http_routes);
collect!(ReferenceGrant, reference_grants);

impl Objects {
    fn add<T>(&mut self, index: usize, kind: &str, obj: T, meta: impl Fn(&T) -> &ObjectMeta) -> Result<(), String>
    where
        Self: Collect<T>,
    {
        let m = meta(&obj);
        let Some(name) = m.name.clone().filter(|n| !n.is_empty()) else {
            return Err("metadata.name: required".into());
        };
        let namespace = if matches!(kind, "IngressClass" | "GatewayClass" | "Namespace") {
            String::new() // cluster-scoped
        } else {
            m.namespace.clone().unwrap_or_else(|| "default".into())
        };
        let key = (kind.to_string(), namespace.clone(), name.clone());
        let position = self.list().len();
        if let Some((earlier, old_position)) = self.seen.insert(key, (index, position)) {
            self.list()[old_position] = None;
            self.warnings.push(Warning {
                object: ObjectRef { kind: kind.to_string(), namespace, name },
                field: "metadata.name".into(),
                value: format!("documents {earlier} and {index}"),
                reason: format!("defined twice (documents {earlier} and {index}); the last definition is used"),
                event_reason: reasons::DUPLICATE_OBJECT,
            });
        }
        self.list().push(Some(obj));
        Ok(())
    }

    fn finish(self) -> (ClusterSnapshot, Vec<Secret>, Vec<Warning>) {
        let snapshot = ClusterSnapshot {
            ingresses: self.ingresses.into_iter().flatten().map(Arc::new).collect(),
            services: self.services.into_iter().flatten().map(Arc::new).collect(),
            endpoint_slices: self.endpoint_slices.into_iter().flatten().map(Arc::new).collect(),
            ingress_classes: self.ingress_classes.into_iter().flatten().map(Arc::new).collect(),
            gateway_classes: self.gateway_classes.into_iter().flatten().map(Arc::new).collect(),
            gateways: self.gateways.into_iter().flatten().map(Arc::new).collect(),
            http_routes: self.http_routes.into_iter().flatten().map(Arc::new).collect(),
            reference_grants: self.reference_grants.into_iter().flatten().map(Arc::new).collect(),
            namespaces: self.namespaces.into_iter().flatten().map(Arc::new).collect(),
        };
        (snapshot, self.secrets.into_iter().flatten().collect(), self.warnings)
    }
}

/// What one look at the file found: its content hash, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Content(u64),
    Unreadable(String),
}

async fn observe(path: &Path) -> (Seen, Option<String>) {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => {
            let mut h = std::hash::DefaultHasher::new();
            text.hash(&mut h);
            (Seen::Content(h.finish()), Some(text))
        }
        Err(e) => (Seen::Unreadable(format!("cannot read {}: {e}", path.display())), None),
    }
}

/// Modification time and length (following symlinks), or `None` when unavailable.
async fn stat(path: &Path) -> Option<(Option<SystemTime>, u64)> {
    let m = tokio::fs::metadata(path).await.ok()?;
    Some((m.modified().ok(), m.len()))
}

/// Apply one settled observation: publish new tables, or keep the last good ones.
fn apply(seen: &Seen, text: Option<&str>, config: &Config, publisher: &Publisher, path: &Path) {
    match (seen, text) {
        (Seen::Content(_), Some(text)) => match config.load(text, publisher) {
            Ok((table, certs, warnings)) => {
                publisher.publish_all(table, certs, &warnings);
            }
            Err(e) => publisher.rejected(&format!("{}: {e}", path.display())),
        },
        (Seen::Unreadable(why), _) => publisher.rejected(why),
        (Seen::Content(_), None) => {}
    }
}

/// What translation of the file needs besides its text.
struct Config {
    defaults: Defaults,
    tls: TlsDefaults,
}

impl Config {
    /// Translate `text` against the certificates now serving.
    fn load(&self, text: &str, publisher: &Publisher) -> Result<(RouteTable, CertTable, Vec<Warning>), LoadError> {
        load_all(text, &self.defaults, &self.tls, &publisher.current_certs(), crate::tls::unix_now())
    }
}

/// Whether two certificate tables serve the same certificates for the same hosts.
pub fn same_certs(a: &CertTable, b: &CertTable) -> bool {
    let hosts = |t: &CertTable| -> Vec<(String, u64)> { t.hosts().into_iter().map(|(h, e)| (h, e.digest)).collect() };
    hosts(a) == hosts(b) && a.default_certificate().map(|e| e.digest) == b.default_certificate().map(|e| e.digest)
}

/// Whether two tables route the same way: same rules, routes, settings and endpoints.
pub fn same_routes(a: &RouteTable, b: &RouteTable) -> bool {
    fn same_route(x: &Route, y: &Route) -> bool {
        x.id == y.id
            && x.backend == y.backend
            && x.settings == y.settings
            && x.pool.endpoints().len() == y.pool.endpoints().len()
            && x.pool.endpoints().iter().zip(y.pool.endpoints()).all(|(e, f)| {
                e.addr == f.addr && e.state == f.state && e.target == f.target && e.hostname == f.hostname
            })
    }
    a.rules().len() == b.rules().len()
        && a.rules()
            .iter()
            .zip(b.rules())
            .all(|(r, s)| r.host == s.host && r.path == s.path && same_route(&r.route, &s.route))
        && match (a.default_route(), b.default_route()) {
            (None, None) => true,
            (Some(x), Some(y)) => same_route(x, y),
            _ => false,
        }
}

/// Load `path` now, then poll it until `shutdown` and reload on change. Load errors are
/// reported through `publisher.rejected` and never replace the last good table. Validate the
/// file with [`load_file`] first when a bad initial file must stop the process.
pub async fn run(path: PathBuf, defaults: Defaults, publisher: Publisher, shutdown: CancellationToken) {
    run_tls(path, defaults, TlsDefaults::default(), publisher, shutdown).await
}

/// [`run`], with `--default-tls-secret` for the certificate tables it publishes.
pub async fn run_tls(
    path: PathBuf,
    defaults: Defaults,
    tls: TlsDefaults,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let config = Config { defaults, tls };
    let mut last_stat = stat(&path).await;
    let (seen, text) = observe(&path).await;
    let already_served = match (&seen, text.as_deref()) {
        // The app usually publishes `load_file_all`'s tables before starting us: do not publish
        // the same routes and certificates twice (but do if the file changed in between).
        (Seen::Content(_), Some(text)) if publisher.routes().has_published() => {
            config.load(text, &publisher).is_ok_and(|(table, certs, _)| {
                same_routes(&publisher.routes().load(), &table) && same_certs(&publisher.current_certs(), &certs)
            })
        }
        _ => false,
    };
    if !already_served {
        apply(&seen, text.as_deref(), &config, &publisher, &path);
    }
    let mut applied = seen.clone();
    let mut previous = seen;
    let mut unchanged_ticks = 0u32;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        let now = stat(&path).await;
        unchanged_ticks += 1;
        if now == last_stat && previous == applied && unchanged_ticks < FULL_CHECK_EVERY {
            continue;
        }
        last_stat = now;
        unchanged_ticks = 0;
        let (seen, text) = observe(&path).await;
        if seen == applied || seen != previous {
            // Unchanged, or changed since the last look: wait for it to settle.
            previous = seen;
            continue;
        }
        apply(&seen, text.as_deref(), &config, &publisher, &path);
        applied = seen.clone();
        previous = seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::routes::RouteHandle;
    use crate::source::test_support::until;
    use std::sync::Arc;

    const GOOD: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: chat}
spec:
  ingressClassName: wsingress
  rules:
    - host: chat.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: chat, port: {name: ws}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
data: {a: b}
---
apiVersion: v1
kind: Service
metadata: {name: chat}
spec: {ports: [{name: ws, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: chat-1, labels: {kubernetes.io/service-name: chat}}
addressType: IPv4
ports: [{name: ws, port: 8010}]
endpoints:
  - addresses: [127.0.0.1]
---
"#;

    fn endpoints(table: &RouteTable, host: &str) -> Vec<String> {
        table.find(Some(host), "/").map(|r| r.pool.ready().map(|e| e.addr.to_string()).collect()).unwrap_or_default()
    }

    #[test]
    fn loads_objects_and_skips_other_kinds() {
        let (table, warnings) = load(GOOD, &Defaults::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let route = table.find(Some("chat.example.com"), "/x").unwrap();
        assert_eq!(route.id, "default/chat");
        assert_eq!(route.backend, "chat:ws");
        assert_eq!(endpoints(&table, "chat.example.com"), ["127.0.0.1:8010"]);
        let (snapshot, _) = parse(GOOD).unwrap();
        assert_eq!(snapshot.ingresses.len(), 1);
        assert_eq!(snapshot.services.len(), 1);
        assert_eq!(snapshot.endpoint_slices.len(), 1);
    }

    #[test]
    fn bad_documents_name_index_kind_name_and_field() {
        let cases: &[(&str, &[&str])] = &[
            // A wrong type, deep inside the Ingress.
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: chat, namespace: prod}\nspec:\n  rules:\n    - http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend: {service: {name: a, port: {number: eighty}}}\n",
                &[
                    "document 2",
                    "Ingress prod/chat",
                    "spec.rules[0].http.paths[0].backend.service.port.number",
                    "line 14",
                ],
            ),
            // A wrong type.
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n    - port: eighty\n",
                &["document 1", "Service default/a", "spec.ports[0].port"],
            ),
            // YAML syntax.
            ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n", &["document 2"]),
            // An old apiVersion.
            (
                "apiVersion: extensions/v1beta1\nkind: Ingress\nmetadata: {name: old}\n",
                &["document 1", "Ingress default/old", "networking.k8s.io/v1"],
            ),
            ("kind: Service\napiVersion: v1\nmetadata: {}\n", &["document 1", "metadata.name"]),
            ("- a\n- b\n", &["document 1", "mapping"]),
            ("metadata: {name: x}\n", &["document 1", "no `kind`"]),
            ("", &["no documents"]),
            ("---\n---\n", &["no documents"]),
        ];
        for (text, needles) in cases {
            let err = load(text, &Defaults::default()).map(|_| ()).expect_err(text).to_string();
            for n in *needles {
                assert!(err.contains(n), "{err:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn duplicate_objects_keep_the_last_definition() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\nspec: {ports: [{port: 2}]}\n";
        let (snapshot, warnings) = parse(text).unwrap();
        assert_eq!(snapshot.services.len(), 1);
        assert_eq!(snapshot.services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 2);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].event_reason, "DuplicateObject");
    }

    #[test]
    fn local_example_reproduces_the_nginx_setup() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/local-example.yaml");
        let (table, warnings) = load_file(&path, &Defaults::default()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        for host in [None, Some("localhost"), Some("localhost:8080")] {
            let route = table.find(host, "/any/path").unwrap();
            assert_eq!(route.id, "default/echo");
            assert_eq!(route.backend, "echo:ws");
            let ready: Vec<String> = route.pool.ready().map(|e| e.addr.to_string()).collect();
            assert_eq!(ready, ["127.0.0.1:8010", "127.0.0.1:8011"]);
            assert_eq!(route.settings.idle_timeout, Some(Duration::from_secs(300)));
        }
    }

    /// A file in the temp dir, removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(tag: &str) -> Self {
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
            Self(std::env::temp_dir().join(format!("wsingress-{tag}-{}-{nanos}.yaml", std::process::id())))
        }
        /// Write aside and rename over, as editors and ConfigMap updates do.
        fn replace(&self, text: &str) {
            let tmp = self.0.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &self.0).unwrap();
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[tokio::test]
    async fn run_reloads_on_change_and_keeps_the_last_good_table() {
        let file = TempFile::new("run");
        file.replace(GOOD);
        let metrics = Arc::new(Metrics::new().unwrap());
        let routes = Arc::new(RouteHandle::new());
        let publisher = Publisher::new(routes.clone(), metrics.clone(), SOURCE);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(file.0.clone(), Defaults::default(), publisher.clone(), shutdown.clone()));
        let rejected = || metrics.config_updates.with_label_values(&[SOURCE, "rejected"]).get();

        until("the first table", || publisher.routes().generation() == 1).await;
        assert_eq!(endpoints(&routes.load(), "chat.example.com"), ["127.0.0.1:8010"]);

        // Scale out, edited in place (same inode).
        let scaled =
            GOOD.replace("  - addresses: [127.0.0.1]\n", "  - addresses: [127.0.0.1]\n  - addresses: [127.0.0.2]\n");
        std::fs::write(&file.0, &scaled).unwrap();
        until("the scaled table", || routes.generation() == 2).await;
        assert_eq!(endpoints(&routes.load(), "chat.example.com"), ["127.0.0.1:8010", "127.0.0.2:8010"]);

        // Corrupt it (rename-on-save): rejected, the last good table keeps serving.
        file.replace(&scaled.replace("pathType: Prefix", "pathType: [oops"));
        until("the rejection", || rejected() == 1).await;
        assert_eq!(routes.generation(), 2);
        assert_eq!(endpoints(&routes.load(), "chat.example.com"), ["127.0.0.1:8010", "127.0.0.2:8010"]);

        // Fixed, with another setting: applied.
        file.replace(&GOOD.replace(
            "metadata: {name: chat}\nspec:\n  ingressClassName",
            "metadata: {name: chat, annotations: {wsingress.io/idle-timeout: 300s}}\nspec:\n  ingressClassName",
        ));
        until("the fixed table", || routes.generation() == 3).await;
        let table = routes.load();
        let route = table.find(Some("chat.example.com"), "/").unwrap();
        assert_eq!(route.settings.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(endpoints(&table, "chat.example.com"), ["127.0.0.1:8010"]);

        // Touching the file without changing it publishes nothing new.
        std::fs::write(&file.0, std::fs::read(&file.0).unwrap()).unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(routes.generation(), 3);
        assert_eq!(rejected(), 1);

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[test]
    fn same_routes_sees_every_setting_and_endpoint() {
        let d = Defaults::default();
        let (a, _) = load(GOOD, &d).unwrap();
        let (b, _) = load(GOOD, &d).unwrap();
        assert!(same_routes(&a, &b));
        let limited = GOOD.replace(
            "metadata: {name: chat}",
            "metadata: {name: chat, annotations: {wsingress.io/max-connections: '5'}}",
        );
        let (c, _) = load(&limited, &d).unwrap();
        assert!(!same_routes(&a, &c));
        let (e, _) = load(&GOOD.replace("127.0.0.1]", "127.0.0.3]"), &d).unwrap();
        assert!(!same_routes(&a, &e));
    }

    const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: wsingress}
spec: {controllerName: wsingress.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec: {gatewayClassName: wsingress, listeners: [{name: web, protocol: HTTP, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: chat}
spec:
  parentRefs: [{name: gw}]
  hostnames: [chat.example.com]
  rules: [{backendRefs: [{name: chat, port: 80, weight: 2}, {name: chat, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: stray}
spec:
  parentRefs: [{name: gw, sectionName: nope}]
---
apiVersion: v1
kind: Service
metadata: {name: chat}
spec: {ports: [{name: ws, port: 80}]}
"#;

    #[test]
    fn gateway_api_objects_load_report_and_compare() {
        let d = Defaults::default();
        let (a, warnings) = load(GATEWAY, &d).unwrap();
        assert!(a.find(Some("chat.example.com"), "/").is_some_and(|r| r.settings.gateway.is_some()));
        // A route that is not accepted is reported with its reason (a log line in file mode).
        let stray: Vec<_> = warnings.iter().filter(|w| w.object.name == "stray").collect();
        assert_eq!(stray.len(), 1, "{warnings:?}");
        assert_eq!(stray[0].event_reason, "NoMatchingParent");
        let (b, _) = load(GATEWAY, &d).unwrap();
        assert!(same_routes(&a, &b), "the same file gives the same table");
        let (c, _) = load(&GATEWAY.replace("weight: 2", "weight: 3"), &d).unwrap();
        assert!(!same_routes(&a, &c));
        // A Gateway API kind with another apiVersion is refused with the document named.
        let wrong = GATEWAY
            .replace("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n", "apiVersion: v1\nkind: Gateway\n");
        let err = load(&wrong, &d).unwrap_err().to_string();
        assert!(
            err.contains("document 2 (Gateway default/gw)") && err.contains("gateway.networking.k8s.io/v1"),
            "{err}"
        );
    }

    /// The app publishes `load_file`'s table before starting `run`: no second publish.
    #[tokio::test]
    async fn run_after_the_app_published_does_not_publish_again() {
        let file = TempFile::new("app");
        file.replace(GOOD);
        let metrics = Arc::new(Metrics::new().unwrap());
        let routes = Arc::new(RouteHandle::new());
        let publisher = Publisher::new(routes.clone(), metrics, SOURCE);
        let (table, warnings) = load_file(&file.0, &Defaults::default()).unwrap();
        assert_eq!(publisher.publish(table, &warnings), 1);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(file.0.clone(), Defaults::default(), publisher, shutdown.clone()));
        file.replace(&GOOD.replace("port: 8010", "port: 8020"));
        until("the edit", || endpoints(&routes.load(), "chat.example.com") == ["127.0.0.1:8020"]).await;
        assert_eq!(routes.generation(), 2);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    /// A manifests file with a `kubernetes.io/tls` Secret in `stringData`.
    fn with_tls_secret(cert: &str, key: &str) -> String {
        let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
        let ingress = GOOD.replace(
            "  ingressClassName: wsingress\n",
            "  ingressClassName: wsingress\n  tls: [{hosts: [chat.example.com], secretName: chat-tls}]\n",
        );
        format!(
            "{ingress}apiVersion: v1\nkind: Secret\nmetadata: {{name: chat-tls}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(cert),
            indent(key)
        )
    }

    #[tokio::test]
    async fn secrets_in_the_file_become_certificates_and_rotate_on_edit() {
        use crate::tls::generate::{Validity, self_signed};
        use crate::tls::{CertHandle, unix_now};
        let now = unix_now();
        let v1 = self_signed("v1", &["chat.example.com"], Validity::around(now, 1)).unwrap();
        let v2 = self_signed("v2", &["chat.example.com"], Validity::around(now, 1)).unwrap();
        let file = TempFile::new("tls");
        file.replace(&with_tls_secret(&v1.cert_pem, &v1.key_pem));
        let metrics = Arc::new(Metrics::new().unwrap());
        let routes = Arc::new(RouteHandle::new());
        let fallback = crate::tls::generate::default_certificate(now, &crate::tls::provider()).unwrap();
        let certs = Arc::new(CertHandle::new(Arc::new(fallback)));
        let publisher = Publisher::new(routes.clone(), metrics.clone(), SOURCE).with_certs(certs.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_tls(
            file.0.clone(),
            Defaults::default(),
            TlsDefaults::default(),
            publisher,
            shutdown.clone(),
        ));
        let subject = || certs.load().lookup("chat.example.com").map(|e| e.info.subject.clone());
        until("the first certificate", || subject().as_deref() == Some("CN=v1")).await;
        assert_eq!(certs.load().generation, routes.generation());

        // A key from another certificate: the table is published with the warning, v1 stays.
        file.replace(&with_tls_secret(&v1.cert_pem, &v2.key_pem));
        until("the second publish", || routes.generation() == 2).await;
        assert_eq!(subject().as_deref(), Some("CN=v1"));
        assert_eq!(metrics.config_warnings.get(), 1);

        // Rotated: new handshakes get v2, under the routes' generation.
        file.replace(&with_tls_secret(&v2.cert_pem, &v2.key_pem));
        until("the rotation", || subject().as_deref() == Some("CN=v2")).await;
        assert_eq!(certs.load().generation, routes.generation());
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(
            text.contains("wsingress_tls_certificate_expiry_timestamp_seconds{secret=\"default/chat-tls\"}"),
            "{text}"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_bad_file_at_start_is_rejected_then_picked_up_when_fixed() {
        let file = TempFile::new("start");
        file.replace("kind: Ingress\napiVersion: networking.k8s.io/v1\nmetadata: {}\n");
        assert!(load_file(&file.0, &Defaults::default()).is_err());
        assert!(matches!(
            load_file(&file.0.with_extension("missing"), &Defaults::default()),
            Err(LoadError::Read { .. })
        ));
        let metrics = Arc::new(Metrics::new().unwrap());
        let routes = Arc::new(RouteHandle::new());
        let publisher = Publisher::new(routes.clone(), metrics.clone(), SOURCE);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(file.0.clone(), Defaults::default(), publisher, shutdown.clone()));
        until("the rejection", || metrics.config_updates.with_label_values(&[SOURCE, "rejected"]).get() == 1).await;
        assert!(!routes.has_published());
        file.replace(GOOD);
        until("the first table", || routes.has_published()).await;
        assert_eq!(endpoints(&routes.load(), "chat.example.com"), ["127.0.0.1:8010"]);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    }
}
