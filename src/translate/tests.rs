//! Table-driven translate tests: every fixture in `tests/fixtures/translate/*.yaml` holds
//! Kubernetes objects (multi-document YAML) and a final `kind: Expectations` document
//! listing requests with the route they must reach and the exact warnings expected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::units::{parse_bytes, parse_optional_duration, parse_positive_duration};
use super::*;
use crate::routes::Policy;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Expectations {
    #[allow(dead_code)]
    kind: String,
    /// `--ingress-class` for this fixture (default `wsingress`).
    class_name: Option<String>,
    #[serde(default)]
    requests: Vec<Request>,
    /// `[object, field, eventReason]` with object as `Kind/namespace/name`; the exact list.
    #[serde(default)]
    warnings: Vec<(String, String, String)>,
    /// Substrings the warning reasons must contain, by index into `warnings`.
    #[serde(default)]
    reasons: BTreeMap<usize, String>,
    /// `namespace/name` of the Ingresses served, when the fixture checks it.
    served: Option<Vec<String>>,
    /// Number of rules in the table, when the fixture checks it.
    rules: Option<usize>,
    /// `--controller-name` (default `wsingress.io/ingress-controller`).
    controller_name: Option<String>,
    /// Serve `className` when no IngressClass declares it (default true, as for a file).
    class_fallback: Option<bool>,
    /// The Service-only route gate (default: on, no class needed, every namespace).
    service_routes: Option<GateSpec>,
    /// `--unsupported-security-annotations` (default refuse).
    unsupported_security: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GateSpec {
    enabled: bool,
    require_class: bool,
    #[serde(default)]
    namespaces: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Request {
    host: Option<String>,
    path: String,
    /// Route id, or absent/null when nothing may match (404).
    route: Option<String>,
    backend: Option<String>,
    /// Ready endpoints as `ip:port` (`[v6]:port`), in any order; checked when given.
    ready: Option<Vec<String>>,
    /// Terminating endpoints (draining); must be exactly these (none when absent).
    #[serde(default)]
    terminating: Vec<String>,
    /// Not-ready endpoints (kept, no new tunnels); must be exactly these (none when absent).
    #[serde(default)]
    not_ready: Vec<String>,
    /// `ip:port` → targetRef name.
    #[serde(default)]
    targets: BTreeMap<String, String>,
    #[serde(default)]
    settings: BTreeMap<String, String>,
    /// `host:port` of the ExternalName endpoints (resolved at connect time), exactly.
    #[serde(default)]
    external: Vec<String>,
    /// A substring of why the route refuses every request (fail closed), or absent: served.
    refused: Option<String>,
    /// The route's unsupported ingress-nginx keys, exactly (none when absent).
    #[serde(default)]
    unsupported: Vec<String>,
}

struct Fixture {
    name: String,
    snapshot: ClusterSnapshot,
    expect: Expectations,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/translate")
}

fn load_fixture(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut snapshot = ClusterSnapshot::default();
    let mut expect = None;
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: document {i}: {e}"));
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let ctx = format!("{name}: document {i} ({kind})");
        match kind.as_str() {
            "Ingress" => snapshot
                .ingresses
                .push(Arc::new(serde_yaml::from_value::<Ingress>(value).unwrap_or_else(|e| panic!("{ctx}: {e}")))),
            "Service" => snapshot
                .services
                .push(Arc::new(serde_yaml::from_value::<Service>(value).unwrap_or_else(|e| panic!("{ctx}: {e}")))),
            "EndpointSlice" => snapshot.endpoint_slices.push(Arc::new(
                serde_yaml::from_value::<EndpointSlice>(value).unwrap_or_else(|e| panic!("{ctx}: {e}")),
            )),
            "IngressClass" => snapshot
                .ingress_classes
                .push(Arc::new(serde_yaml::from_value::<IngressClass>(value).unwrap_or_else(|e| panic!("{ctx}: {e}")))),
            "Expectations" => {
                expect = Some(serde_yaml::from_value::<Expectations>(value).unwrap_or_else(|e| panic!("{ctx}: {e}")))
            }
            other => panic!("{name}: document {i}: unexpected kind {other}"),
        }
    }
    Fixture { name, snapshot, expect: expect.unwrap_or_else(|| panic!("{}: no Expectations document", path.display())) }
}

fn all_fixtures() -> Vec<Fixture> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "fixtures missing: {paths:?}");
    paths.iter().map(|p| load_fixture(p)).collect()
}

fn defaults_for(f: &Fixture) -> Defaults {
    let e = &f.expect;
    let d = Defaults::default();
    Defaults {
        class_name: e.class_name.clone().unwrap_or(d.class_name),
        controller_name: e.controller_name.clone().unwrap_or(d.controller_name),
        class_fallback: e.class_fallback.unwrap_or(d.class_fallback),
        service_routes: e.service_routes.as_ref().map_or(d.service_routes, |g| ServiceRoutes {
            enabled: g.enabled,
            require_class: g.require_class,
            namespaces: g.namespaces.clone(),
        }),
        unsupported_security: e
            .unsupported_security
            .as_deref()
            .map_or(d.unsupported_security, |v| UnsupportedSecurity::parse(v).unwrap()),
        ..d
    }
}

fn object_text(o: &ObjectRef) -> String {
    format!("{}/{}/{}", o.kind, o.namespace, o.name)
}

fn check_settings(ctx: &str, s: &RouteSettings, want: &BTreeMap<String, String>) {
    for (k, v) in want {
        let ok = match k.as_str() {
            "policy" => s.policy == Policy::parse(v).unwrap(),
            "idleTimeout" => s.idle_timeout == parse_optional_duration(v).unwrap(),
            "pingInterval" => s.ping_interval == parse_optional_duration(v).unwrap(),
            "drainTimeout" => s.drain_timeout == parse_optional_duration(v).unwrap(),
            "pongTimeout" => s.pong_timeout == parse_positive_duration(v).unwrap(),
            "connectTimeout" => s.connect_timeout == parse_positive_duration(v).unwrap(),
            "handshakeTimeout" => s.handshake_timeout == parse_positive_duration(v).unwrap(),
            "maxMessageBytes" => s.max_message_bytes == parse_bytes(v).unwrap(),
            "maxConnections" => {
                s.max_connections
                    == match v.as_str() {
                        "unlimited" => None,
                        n => Some(n.parse().unwrap()),
                    }
            }
            "allowedOrigins" => s.allowed_origins.join(",") == *v,
            "websocketOnly" => s.websocket_only.to_string() == *v,
            other => panic!("{ctx}: unknown setting {other}"),
        };
        assert!(ok, "{ctx}: setting {k}: want {v}, got {s:?}");
    }
}

fn check_fixture(f: &Fixture) {
    let defaults = defaults_for(f);
    let (table, warnings) = translate(&f.snapshot, &defaults);
    let name = &f.name;

    let got: Vec<(String, String, String)> =
        warnings.iter().map(|w| (object_text(&w.object), w.field.clone(), w.event_reason.to_string())).collect();
    let mut want = f.expect.warnings.clone();
    want.sort();
    let mut got_sorted = got.clone();
    got_sorted.sort();
    assert_eq!(got_sorted, want, "{name}: warnings (all: {warnings:#?})");
    for (i, needle) in &f.expect.reasons {
        let (obj, field, reason) = &f.expect.warnings[*i];
        let w = warnings
            .iter()
            .find(|w| &object_text(&w.object) == obj && &w.field == field && w.event_reason == reason)
            .unwrap();
        assert!(w.reason.contains(needle.as_str()), "{name}: warning {i}: {:?} lacks {needle:?}", w.reason);
    }

    if let Some(served) = &f.expect.served {
        let got: Vec<String> = served_ingresses(&f.snapshot, &defaults).iter().map(ObjectRef::id).collect();
        assert_eq!(&got, served, "{name}: served Ingresses");
    }
    if let Some(n) = f.expect.rules {
        assert_eq!(table.rules().len(), n, "{name}: rule count");
    }

    for r in &f.expect.requests {
        let ctx = format!("{name}: {:?} {}", r.host, r.path);
        let route = table.find(r.host.as_deref(), &r.path);
        let Some(want_id) = &r.route else {
            assert!(route.is_none(), "{ctx}: expected no route, got {:?}", route.map(|r| &r.id));
            continue;
        };
        let route = route.unwrap_or_else(|| panic!("{ctx}: no route"));
        assert_eq!(&route.id, want_id, "{ctx}: route id");
        if let Some(b) = &r.backend {
            assert_eq!(&route.backend, b, "{ctx}: backend");
        }
        let in_state = |state: EndpointState| -> Vec<String> {
            let mut v: Vec<String> =
                route.pool.endpoints().iter().filter(|e| e.state == state).map(|e| e.addr.to_string()).collect();
            v.sort();
            v
        };
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        if let Some(want) = &r.ready {
            assert_eq!(in_state(EndpointState::Ready), sorted(want), "{ctx}: ready endpoints");
        }
        assert_eq!(in_state(EndpointState::Terminating), sorted(&r.terminating), "{ctx}: terminating endpoints");
        assert_eq!(in_state(EndpointState::NotReady), sorted(&r.not_ready), "{ctx}: not-ready endpoints");
        for (addr, target) in &r.targets {
            let ep = route
                .pool
                .endpoints()
                .iter()
                .find(|e| &e.addr.to_string() == addr)
                .unwrap_or_else(|| panic!("{ctx}: no endpoint {addr}"));
            assert_eq!(ep.target.as_deref(), Some(target.as_str()), "{ctx}: target of {addr}");
        }
        check_settings(&ctx, &route.settings, &r.settings);
        let external: Vec<String> = route
            .pool
            .endpoints()
            .iter()
            .filter_map(|e| e.hostname.as_ref().map(|h| format!("{h}:{}", e.addr.port())))
            .collect();
        assert_eq!(external, r.external, "{ctx}: ExternalName endpoints");
        match (&r.refused, &route.settings.refused) {
            (None, None) => {}
            (Some(want), Some(got)) => assert!(got.contains(want.as_str()), "{ctx}: refused {got:?} lacks {want:?}"),
            (want, got) => panic!("{ctx}: refused: want {want:?}, got {got:?}"),
        }
        if route.settings.refused.is_some() {
            assert_eq!(route.pool.endpoints().len(), 0, "{ctx}: a refused route has no endpoints (503)");
        }
        assert_eq!(route.settings.unsupported_annotations, r.unsupported, "{ctx}: unsupported annotations");
    }
}

#[test]
fn fixtures() {
    for f in all_fixtures() {
        check_fixture(&f);
    }
}

fn rendered(snapshot: &ClusterSnapshot, defaults: &Defaults) -> String {
    let (table, warnings) = translate(snapshot, defaults);
    format!("{}\n{}", serde_json::to_string(&table.view()).unwrap(), serde_json::to_string(&warnings).unwrap())
}

/// Replicas see objects in different orders; the table and warnings must not change.
#[test]
fn output_does_not_depend_on_input_order() {
    for f in all_fixtures() {
        let defaults = defaults_for(&f);
        let base = rendered(&f.snapshot, &defaults);
        for shift in 1..4 {
            let mut s = f.snapshot.clone();
            s.ingresses.reverse();
            s.services.reverse();
            s.endpoint_slices.reverse();
            s.ingress_classes.reverse();
            let n = s.ingresses.len().max(1);
            s.ingresses.rotate_left(shift % n);
            let n = s.endpoint_slices.len().max(1);
            s.endpoint_slices.rotate_left(shift % n);
            for slice in &mut s.endpoint_slices {
                if let Some(eps) = &mut Arc::make_mut(slice).endpoints {
                    eps.reverse();
                }
            }
            assert_eq!(rendered(&s, &defaults), base, "{}: order changed the output", f.name);
        }
    }
}

#[test]
fn empty_snapshot_is_an_empty_table() {
    let (table, warnings) = translate(&ClusterSnapshot::default(), &Defaults::default());
    assert!(table.rules().is_empty());
    assert!(table.default_route().is_none());
    assert!(warnings.is_empty());
}

#[test]
fn flag_defaults_reach_routes_without_annotations() {
    let f = load_fixture(&fixtures_dir().join("basic.yaml"));
    let mut defaults = defaults_for(&f);
    defaults.settings.idle_timeout = None;
    defaults.settings.policy = Policy::RoundRobin;
    let (table, _) = translate(&f.snapshot, &defaults);
    // `default/api` carries no annotations: the flags decide.
    let api = table.find(Some("chat.example.com"), "/api").unwrap();
    assert_eq!(api.id, "default/api");
    assert_eq!(api.settings.policy, Policy::RoundRobin);
    assert_eq!(api.settings.idle_timeout, None);
}

#[test]
fn host_validation() {
    for ok in ["chat.example.com", "*.example.com", "localhost", "a-b.c", "Chat.Example.com."] {
        assert!(valid_host(ok), "{ok}");
    }
    for bad in ["", "*", "a*.example.com", "chat.example.com:80", "a..b", "-a.com", "a b", "*.*.a"] {
        assert!(!valid_host(bad), "{bad}");
    }
}

/// Every object stamped with a uid and resourceVersion, as an API server hands them over.
fn versioned(snapshot: &ClusterSnapshot) -> ClusterSnapshot {
    fn stamp<K: k8s_openapi::Metadata<Ty = ObjectMeta> + Clone>(items: &[Arc<K>]) -> Vec<Arc<K>> {
        items
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut k = K::clone(k);
                let m = k.metadata_mut();
                m.uid = Some(format!("uid-{}-{}", m.name.clone().unwrap_or_default(), i));
                m.resource_version = Some("1".into());
                Arc::new(k)
            })
            .collect()
    }
    ClusterSnapshot {
        ingresses: stamp(&snapshot.ingresses),
        services: stamp(&snapshot.services),
        endpoint_slices: stamp(&snapshot.endpoint_slices),
        ingress_classes: stamp(&snapshot.ingress_classes),
        ..ClusterSnapshot::default()
    }
}

/// The route cache changes nothing but the work: for every fixture the cached translation
/// equals a fresh one, reuses every route when nothing changed, and rebuilds exactly the
/// routes of a changed EndpointSlice.
#[test]
fn cached_translation_equals_a_fresh_one_and_reuses_unchanged_routes() {
    for f in all_fixtures() {
        let defaults = defaults_for(&f);
        let snapshot = versioned(&f.snapshot);
        let mut cache = RouteCache::default();
        let (first, _) = translate_cached(&snapshot, &defaults, &mut cache);
        let (second, _) = translate_cached(&snapshot, &defaults, &mut cache);
        assert_eq!(
            rendered(&snapshot, &defaults),
            {
                let (t, w) = translate_cached(&snapshot, &defaults, &mut cache);
                format!("{}\n{}", serde_json::to_string(&t.view()).unwrap(), serde_json::to_string(&w).unwrap())
            },
            "{}: cached output differs",
            f.name
        );
        let before: std::collections::HashSet<*const Route> = first.routes().map(Arc::as_ptr).collect();
        let ingress_ids: Vec<String> =
            snapshot.ingresses.iter().map(|i| ObjectRef::new("Ingress", &i.metadata).id()).collect();
        let mut reused = 0;
        for r in second.routes().filter(|r| ingress_ids.contains(&r.id)) {
            assert!(before.contains(&Arc::as_ptr(r)), "{}: route {} rebuilt though nothing changed", f.name, r.id);
            reused += 1;
        }
        assert_eq!(reused, first.routes().filter(|r| ingress_ids.contains(&r.id)).count(), "{}", f.name);
        // A re-list hands over every object again as a new Arc: nothing may be lost.
        let relisted = versioned(&f.snapshot);
        let (after_relist, _) = translate_cached(&relisted, &defaults, &mut cache);
        assert_eq!(
            serde_json::to_string(&after_relist.view()).unwrap(),
            serde_json::to_string(&translate(&relisted, &defaults).0.view()).unwrap(),
            "{}: after a re-list",
            f.name
        );
        let snapshot = relisted;
        // One slice changes: its routes are rebuilt, the output still equals a fresh translation.
        let Some(slice) = snapshot.endpoint_slices.first() else { continue };
        let mut changed = snapshot.clone();
        let mut s = EndpointSlice::clone(slice);
        s.metadata.resource_version = Some("2".into());
        if let Some(eps) = s.endpoints.as_mut() {
            eps.truncate(eps.len().saturating_sub(1));
        }
        changed.endpoint_slices[0] = Arc::new(s);
        let (cached, w1) = translate_cached(&changed, &defaults, &mut cache);
        let (fresh, w2) = translate(&changed, &defaults);
        assert_eq!(
            serde_json::to_string(&cached.view()).unwrap(),
            serde_json::to_string(&fresh.view()).unwrap(),
            "{}",
            f.name
        );
        assert_eq!(w1, w2, "{}", f.name);
    }
}
