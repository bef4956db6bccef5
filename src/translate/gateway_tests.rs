//! Gateway API translation and status, checked against the specification's text: hostname
//! intersection, listener admission, match precedence, weights, filters, ReferenceGrant,
//! every route status reason, `observedGeneration`, and Ingress/HTTPRoute conflicts.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

use super::gateway::{gateway_duration, intersect};
use super::gateway_status::{GatewayStatuses, gateway_statuses};
use super::*;
use crate::gateway_api::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant, RouteParentStatus};
use crate::routes::{NoFacts, Pick, RouteTable, SslRedirect};

/// Objects of a multi-document YAML (the kinds translation reads).
fn snapshot(yaml: &str) -> ClusterSnapshot {
    let mut s = ClusterSnapshot::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_yaml::Value::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        match v["kind"].as_str().unwrap() {
            "GatewayClass" => s.gateway_classes.push(Arc::new(serde_yaml::from_value::<GatewayClass>(v).unwrap())),
            "Gateway" => s.gateways.push(Arc::new(serde_yaml::from_value::<Gateway>(v).unwrap())),
            "HTTPRoute" => s.http_routes.push(Arc::new(serde_yaml::from_value::<HTTPRoute>(v).unwrap())),
            "ReferenceGrant" => s.reference_grants.push(Arc::new(serde_yaml::from_value::<ReferenceGrant>(v).unwrap())),
            "Namespace" => s.namespaces.push(Arc::new(serde_yaml::from_value::<Namespace>(v).unwrap())),
            "Service" => s.services.push(Arc::new(serde_yaml::from_value::<Service>(v).unwrap())),
            "EndpointSlice" => s.endpoint_slices.push(Arc::new(serde_yaml::from_value::<EndpointSlice>(v).unwrap())),
            "Ingress" => s.ingresses.push(Arc::new(serde_yaml::from_value::<Ingress>(v).unwrap())),
            other => panic!("unexpected kind {other}"),
        }
    }
    s
}

/// Our class and a Gateway `gw` in `default` with the given listeners (YAML flow list).
fn gateway(listeners: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: wsingress, generation: 1}}
spec: {{controllerName: wsingress.io/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: other}}
spec: {{controllerName: example.com/other}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default, generation: 3}}
spec:
  gatewayClassName: wsingress
  listeners: {listeners}
"#
    )
}

const WEB: &str = "[{name: web, protocol: HTTP, port: 80}]";

/// Service `name` in `ns` (port 80) with one ready endpoint at `ip`:8080.
fn service(ns: &str, name: &str, ip: &str) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{ports: [{{name: ws, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: {ns}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: ws, port: 8080}}]
endpoints: [{{addresses: ["{ip}"]}}]
"#
    )
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
}

fn statuses(s: &ClusterSnapshot) -> GatewayStatuses {
    gateway_statuses(s, &Defaults::default(), &["192.0.2.10".to_string()], &now())
}

/// `(type, status, reason)` of one route's parent entry.
fn conditions(st: &GatewayStatuses, route: &str) -> Vec<Vec<(String, String, String)>> {
    let (_, parents) =
        st.routes.iter().find(|(o, _)| o.id() == route).unwrap_or_else(|| panic!("no status for {route}"));
    parents
        .iter()
        .map(|p| p.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect())
        .collect()
}

fn accepted_reason(st: &GatewayStatuses, route: &str) -> (String, String) {
    let c = &conditions(st, route)[0];
    let a = c.iter().find(|c| c.0 == "Accepted").unwrap();
    (a.1.clone(), a.2.clone())
}

fn resolved_reason(st: &GatewayStatuses, route: &str) -> (String, String) {
    let c = &conditions(st, route)[0];
    let a = c.iter().find(|c| c.0 == "ResolvedRefs").unwrap();
    (a.1.clone(), a.2.clone())
}

/// The route id and backend a request reaches.
fn reach(t: &RouteTable, host: &str, path_and_query: &str, headers: &[(&str, &str)], method: &str) -> Option<String> {
    let mut req = http::Request::builder().method(method).uri(path_and_query);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).unwrap();
    let found = t.lookup_request(Some(host), req.uri().path(), false, &req)?;
    let g = found.route.settings.gateway.as_ref();
    let backend =
        g.and_then(|g| g.backends.first()).map_or_else(|| found.route.backend.clone(), |(_, r)| r.backend.clone());
    Some(format!("{} {backend}", found.route.id))
}

fn table(s: &ClusterSnapshot) -> (RouteTable, Vec<Warning>) {
    translate(s, &Defaults::default())
}

#[test]
fn hostname_intersection_follows_the_spec() {
    // Listener hostname, route hostname → the hostname served (or none).
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("chat.example.com", "chat.example.com", Some("chat.example.com")),
        ("*.example.com", "chat.example.com", Some("chat.example.com")),
        ("*.example.com", "a.b.example.com", Some("a.b.example.com")),
        ("*.example.com", "example.com", None),
        ("chat.example.com", "*.example.com", Some("chat.example.com")),
        ("*.example.com", "*.chat.example.com", Some("*.chat.example.com")),
        ("*.chat.example.com", "*.example.com", Some("*.chat.example.com")),
        ("chat.example.com", "other.example.com", None),
        ("*.example.com", "*.example.org", None),
        ("Chat.Example.com", "chat.example.com", Some("chat.example.com")),
    ];
    for (listener, route, want) in cases {
        assert_eq!(intersect(listener, route).as_deref(), *want, "{listener} ∩ {route}");
    }
}

#[test]
fn gateway_durations() {
    assert_eq!(gateway_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(gateway_duration("1h1m1s"), Ok(Duration::from_secs(3661)));
    assert_eq!(gateway_duration("500ms"), Ok(Duration::from_millis(500)));
    assert!(gateway_duration("1.5s").is_err());
    assert!(gateway_duration("10").is_err());
    assert!(gateway_duration("").is_err());
}

#[test]
fn a_route_is_served_and_every_status_says_so_with_observed_generation() {
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: chat, namespace: default, generation: 7}}
spec:
  parentRefs: [{{name: gw, sectionName: web}}, {{name: gw, namespace: default, port: 80}}]
  hostnames: [chat.example.com]
  rules: [{{backendRefs: [{{name: chat, port: 80}}]}}]
status:
  parents:
    - parentRef: {{name: foreign}}
      controllerName: example.com/other
      conditions: []
{}"#,
        gateway(WEB),
        service("default", "chat", "10.0.0.1")
    ));
    let (t, warnings) = table(&s);
    assert_eq!(reach(&t, "chat.example.com", "/anything", &[], "GET").as_deref(), Some("default/chat chat:80"));
    assert!(reach(&t, "other.example.com", "/", &[], "GET").is_none());
    assert!(warnings.is_empty(), "{warnings:?}");
    let st = statuses(&s);
    assert_eq!(st.classes.len(), 1, "only our class");
    assert_eq!(st.classes[0].1.conditions[0].type_, "Accepted");
    assert_eq!(st.classes[0].1.conditions[0].status, "True");
    assert_eq!(st.classes[0].1.conditions[0].observed_generation, Some(1));
    let (_, gw) = &st.gateways[0];
    assert_eq!(gw.addresses[0].value, "192.0.2.10");
    assert_eq!(gw.addresses[0].type_.as_deref(), Some("IPAddress"));
    assert!(gw.conditions.iter().all(|c| c.status == "True" && c.observed_generation == Some(3)));
    assert_eq!(gw.listeners[0].attached_routes, 1, "one route, however many of its parentRefs name the listener");
    assert_eq!(gw.listeners[0].supported_kinds[0].kind, "HTTPRoute");
    let parents: &Vec<RouteParentStatus> = &st.routes[0].1;
    assert_eq!(parents.len(), 2, "one entry per parentRef of ours; the foreign entry is not ours to write");
    for p in parents {
        assert_eq!(p.controller_name, "wsingress.io/gateway-controller");
        for c in &p.conditions {
            assert_eq!((c.status.as_str(), c.observed_generation), ("True", Some(7)), "{c:?}");
            assert_eq!(c.last_transition_time, now());
        }
    }
}

#[test]
fn listeners_admit_namespaces_same_all_and_selector() {
    let listeners = r#"
    - {name: same, protocol: HTTP, port: 80, hostname: same.example.com}
    - {name: all, protocol: HTTP, port: 81, hostname: all.example.com, allowedRoutes: {namespaces: {from: All}}}
    - name: picked
      protocol: HTTP
      port: 82
      hostname: picked.example.com
      allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {gateway: "yes"}}}}"#;
    let route = |ns: &str, section: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r-{section}, namespace: {ns}}}
spec:
  parentRefs: [{{name: gw, namespace: default, sectionName: {section}}}]
  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]
"#
        )
    };
    let s = snapshot(&format!(
        "{}{}{}{}{}{}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: team, labels: {{gateway: \"yes\"}}}}\n",
        gateway(listeners),
        route("team", "same"),
        route("team", "all"),
        route("team", "picked"),
        route("default", "same"),
        service("team", "svc", "10.0.0.2") + &service("default", "svc", "10.0.0.3"),
    ));
    let st = statuses(&s);
    assert_eq!(accepted_reason(&st, "team/r-same"), ("False".into(), "NotAllowedByListeners".into()));
    assert_eq!(accepted_reason(&st, "team/r-all"), ("True".into(), "Accepted".into()));
    assert_eq!(accepted_reason(&st, "team/r-picked"), ("True".into(), "Accepted".into()));
    assert_eq!(accepted_reason(&st, "default/r-same"), ("True".into(), "Accepted".into()));
    let (t, warnings) = table(&s);
    assert!(reach(&t, "same.example.com", "/", &[], "GET").is_some_and(|r| r.starts_with("default/r-same")));
    assert!(reach(&t, "all.example.com", "/", &[], "GET").is_some_and(|r| r.starts_with("team/r-all")));
    assert!(reach(&t, "picked.example.com", "/", &[], "GET").is_some_and(|r| r.starts_with("team/r-picked")));
    assert!(warnings.iter().any(|w| w.object.id() == "team/r-same" && w.event_reason == "NotAllowedByListeners"));
    // Without the label the Selector listener refuses it.
    let unlabelled = ClusterSnapshot { namespaces: Vec::new(), ..s.clone() };
    assert_eq!(
        accepted_reason(&statuses(&unlabelled), "team/r-picked"),
        ("False".into(), "NotAllowedByListeners".into())
    );
}

#[test]
fn parent_refs_hostnames_and_kinds_give_the_spec_reasons() {
    let listeners = r#"
    - {name: web, protocol: HTTP, port: 80, hostname: "*.example.com"}
    - {name: grpc, protocol: HTTP, port: 90, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
    - {name: tcp, protocol: TCP, port: 9000}"#;
    let route = |name: &str, parent: &str, hostnames: &str, backend: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: default}}
spec:
  parentRefs: [{parent}]
  hostnames: {hostnames}
  rules: [{{backendRefs: [{backend}]}}]
"#
        )
    };
    let s = snapshot(&format!(
        "{}{}{}{}{}{}{}{}",
        gateway(listeners),
        route("no-section", "{name: gw, sectionName: nope}", "[]", "{name: svc, port: 80}"),
        route("no-port", "{name: gw, port: 8080}", "[]", "{name: svc, port: 80}"),
        route("no-host", "{name: gw, sectionName: web}", "[chat.example.org]", "{name: svc, port: 80}"),
        route("kinds", "{name: gw, sectionName: grpc}", "[]", "{name: svc, port: 80}"),
        route("missing", "{name: gw, sectionName: web}", "[a.example.com]", "{name: gone, port: 80}"),
        route(
            "bucket",
            "{name: gw, sectionName: web}",
            "[b.example.com]",
            "{group: storage.example.com, kind: Bucket, name: x}"
        ),
        service("default", "svc", "10.0.0.4"),
    ));
    let st = statuses(&s);
    assert_eq!(accepted_reason(&st, "default/no-section"), ("False".into(), "NoMatchingParent".into()));
    assert_eq!(accepted_reason(&st, "default/no-port"), ("False".into(), "NoMatchingParent".into()));
    assert_eq!(accepted_reason(&st, "default/no-host"), ("False".into(), "NoMatchingListenerHostname".into()));
    assert_eq!(accepted_reason(&st, "default/kinds"), ("False".into(), "NotAllowedByListeners".into()));
    assert_eq!(resolved_reason(&st, "default/missing"), ("False".into(), "BackendNotFound".into()));
    assert_eq!(accepted_reason(&st, "default/missing"), ("True".into(), "Accepted".into()));
    assert_eq!(resolved_reason(&st, "default/bucket"), ("False".into(), "InvalidKind".into()));
    // The listeners themselves.
    let (_, gw) = &st.gateways[0];
    let listener = |name: &str| gw.listeners.iter().find(|l| l.name == name).unwrap();
    let cond = |name: &str, t: &str| {
        let c = listener(name).conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.clone(), c.reason.clone())
    };
    assert_eq!(cond("tcp", "Accepted"), ("False".into(), "UnsupportedProtocol".into()));
    assert_eq!(cond("tcp", "Programmed"), ("False".into(), "Invalid".into()));
    assert_eq!(cond("grpc", "ResolvedRefs"), ("False".into(), "InvalidRouteKinds".into()));
    assert!(listener("grpc").supported_kinds.is_empty());
    assert_eq!(listener("web").attached_routes, 2, "missing and bucket attach (their backends fail, not the parent)");
    // A missing Service: the rule is served, all of it the invalid share (500); nothing
    // routes elsewhere.
    let (t, _) = table(&s);
    assert_eq!(reach(&t, "a.example.com", "/", &[], "GET").as_deref(), Some("default/missing none"));
    let g = t.find(Some("a.example.com"), "/").unwrap().settings.gateway.clone().unwrap();
    assert!(g.backends.is_empty());
    assert_eq!(g.invalid_weight, 1);
    assert!(matches!(g.pick(), Some(Pick::Invalid)));
}

#[test]
fn invalid_backend_refs_keep_their_weight_as_a_share_answered_500() {
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mixed, namespace: default, generation: 2}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [mixed.example.com]
  rules:
    - backendRefs:
        - {{name: a, port: 80, weight: 4}}
        - {{name: gone, port: 80}}
        - {{group: storage.example.com, kind: Bucket, name: x, weight: 2}}
        - {{name: store, namespace: shop, port: 80, weight: 3}}
        - {{name: a, weight: 5}}
        - {{name: gone-too, port: 80, weight: 0}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: broken, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [broken.example.com]
  rules:
    - backendRefs:
        - {{name: gone, port: 80, weight: 2}}
        - {{name: store, namespace: shop, port: 80}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: zero, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [zero.example.com]
  rules: [{{backendRefs: [{{name: gone, port: 80, weight: 0}}]}}]
{}{}"#,
        gateway(WEB),
        service("default", "a", "10.0.0.5"),
        service("shop", "store", "10.0.0.6"),
    ));
    let (t, warnings) = table(&s);
    let split = |host: &str| t.find(Some(host), "/").unwrap().settings.gateway.clone().unwrap();
    // Valid: a (4). Invalid: not found (1), kind (2), no ReferenceGrant (3), no port (5).
    // Weight 0 counts nowhere.
    let g = split("mixed.example.com");
    let weights: Vec<(u32, &str)> = g.backends.iter().map(|(w, r)| (*w, r.backend.as_str())).collect();
    assert_eq!(weights, [(4, "a:80")]);
    assert_eq!(g.invalid_weight, 11);
    let invalid = (0..15_000).filter(|_| matches!(g.pick(), Some(Pick::Invalid))).count();
    assert!((10_600..=11_400).contains(&invalid), "{invalid} of 15000 to the invalid share (11 of 15)");
    // All invalid: still served, everything 500.
    let g = split("broken.example.com");
    assert!(g.backends.is_empty());
    assert_eq!(g.invalid_weight, 3);
    assert!((0..100).all(|_| matches!(g.pick(), Some(Pick::Invalid))));
    // Only weight 0: no split at all (the rule's own empty pool answers 503, as before).
    let g = split("zero.example.com");
    assert!(g.backends.is_empty() && g.invalid_weight == 0 && g.pick().is_none());
    // Status and warnings are unchanged: ResolvedRefs=False with the first problem's reason.
    let st = statuses(&s);
    assert_eq!(resolved_reason(&st, "default/mixed"), ("False".into(), "BackendNotFound".into()));
    assert_eq!(accepted_reason(&st, "default/mixed"), ("True".into(), "Accepted".into()));
    assert_eq!(resolved_reason(&st, "default/broken"), ("False".into(), "BackendNotFound".into()));
    assert_eq!(accepted_reason(&st, "default/broken"), ("True".into(), "Accepted".into()));
    let warned = warnings.iter().find(|w| w.object.id() == "default/mixed").expect("a warning for mixed");
    assert!(warned.reason.contains("answered 500"), "{warned:?}");
}

#[test]
fn listener_conflicts_on_one_gateway() {
    let listeners = r#"
    - {name: a, protocol: HTTP, port: 80, hostname: x.example.com}
    - {name: b, protocol: HTTP, port: 80, hostname: x.example.com}
    - {name: c, protocol: HTTPS, port: 80, tls: {certificateRefs: [{name: cert}]}}"#;
    let st = statuses(&snapshot(&gateway(listeners)));
    let (_, gw) = &st.gateways[0];
    let conflicted =
        |i: usize| gw.listeners[i].conditions.iter().find(|c| c.type_ == "Conflicted").unwrap().reason.clone();
    assert_eq!(conflicted(0), "ProtocolConflict");
    assert_eq!(conflicted(1), "ProtocolConflict");
    assert_eq!(conflicted(2), "ProtocolConflict");
}

#[test]
fn matches_take_precedence_in_the_spec_order() {
    // Each rule routes to its own Service so the request shows which rule won.
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default, creationTimestamp: "2026-01-01T00:00:00Z"}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [app.example.com]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /}}}}]
      backendRefs: [{{name: root, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
      backendRefs: [{{name: prefix, port: 80}}]
    - matches: [{{path: {{type: Exact, value: /api}}}}]
      backendRefs: [{{name: exact, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /api}}, method: POST}}]
      backendRefs: [{{name: method, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-a, value: "1"}}]}}]
      backendRefs: [{{name: one-header, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-a, value: "1"}}, {{name: x-b, value: "1"}}]}}]
      backendRefs: [{{name: two-headers, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /api}}, queryParams: [{{name: v, value: "2"}}]}}]
      backendRefs: [{{name: query, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: newer, namespace: default, creationTimestamp: "2026-02-01T00:00:00Z"}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [app.example.com]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /api}}, queryParams: [{{name: v, value: "2"}}]}}]
      backendRefs: [{{name: newer, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: wild, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["*.example.com"]
  rules: [{{backendRefs: [{{name: wild, port: 80}}]}}]
{}"#,
        gateway(WEB),
        ["root", "prefix", "exact", "method", "one-header", "two-headers", "query", "newer", "wild"]
            .iter()
            .enumerate()
            .map(|(i, name)| service("default", name, &format!("10.0.2.{i}")))
            .collect::<String>()
    ));
    let (t, warnings) = table(&s);
    let to = |path: &str, headers: &[(&str, &str)], method: &str| {
        reach(&t, "app.example.com", path, headers, method).map(|r| r.split(' ').nth(1).unwrap().to_string())
    };
    assert_eq!(to("/api", &[("x-a", "1")], "POST").as_deref(), Some("exact:80"), "Exact path first");
    assert_eq!(to("/api/x", &[("x-a", "1"), ("x-b", "1")], "POST").as_deref(), Some("method:80"), "then method");
    assert_eq!(
        to("/api/x", &[("x-a", "1"), ("x-b", "1")], "GET").as_deref(),
        Some("two-headers:80"),
        "then more headers"
    );
    assert_eq!(to("/api/x?v=2", &[("x-a", "1")], "GET").as_deref(), Some("one-header:80"), "headers before query");
    assert_eq!(to("/api/x?v=2", &[], "GET").as_deref(), Some("query:80"), "the older route wins a tie");
    assert_eq!(to("/api/x", &[("x-a", "2")], "GET").as_deref(), Some("prefix:80"), "header values are exact");
    assert_eq!(to("/apis", &[], "GET").as_deref(), Some("root:80"), "prefixes are element-wise");
    assert_eq!(
        reach(&t, "a.b.example.com", "/", &[], "GET").map(|r| r.split(' ').nth(1).unwrap().to_string()).as_deref(),
        Some("wild:80"),
        "a Gateway wildcard covers several labels"
    );
    // The same conditions on the same host and path: the newer route's rule loses, with a warning.
    let conflict: Vec<_> = warnings.iter().filter(|w| w.event_reason == reasons::RULE_CONFLICT).collect();
    assert_eq!(conflict.len(), 1, "{warnings:?}");
    assert_eq!(conflict[0].object.id(), "default/newer");
}

#[test]
fn weights_choose_services_and_zero_takes_nothing() {
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
    - backendRefs:
        - {{name: a, port: 80, weight: 3}}
        - {{name: b, port: 80}}
        - {{name: c, port: 80, weight: 0}}
{}{}{}"#,
        gateway(WEB),
        service("default", "a", "10.0.0.5"),
        service("default", "b", "10.0.0.6"),
        service("default", "c", "10.0.0.7"),
    ));
    let (t, _) = table(&s);
    let found = t.find(Some("any.example.com"), "/").unwrap();
    let g = found.settings.gateway.as_ref().unwrap();
    let weights: Vec<(u32, &str)> = g.backends.iter().map(|(w, r)| (*w, r.backend.as_str())).collect();
    assert_eq!(weights, [(3, "a:80"), (1, "b:80")], "weight defaults to 1; weight 0 is left out");
    assert_eq!(g.invalid_weight, 0);
    let mut to_a = 0;
    for _ in 0..4000 {
        if g.pick().and_then(Pick::service).unwrap().backend == "a:80" {
            to_a += 1;
        }
    }
    assert!((2800..=3200).contains(&to_a), "{to_a} of 4000 to the weight-3 Service");
    // The split's Services are in the table (endpoint state, metrics) with slots of their own.
    for (_, r) in &g.backends {
        assert!(t.split_slot(r).is_some());
    }
}

#[test]
fn reference_grants_allow_cross_namespace_backends() {
    let route = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: store, namespace: shop, port: 80}]}]
"#;
    let grant = |from_ns: &str, to_name: &str| {
        format!(
            r#"
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {{name: g, namespace: shop}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {from_ns}}}]
  to: [{{group: "", kind: Service, name: {to_name}}}]
"#
        )
    };
    let base = format!("{}{route}{}", gateway(WEB), service("shop", "store", "10.0.0.8"));
    for (extra, want) in [
        (String::new(), "RefNotPermitted"),
        (grant("elsewhere", "store"), "RefNotPermitted"),
        (grant("default", "other"), "RefNotPermitted"),
        (grant("default", "store"), "ResolvedRefs"),
    ] {
        let s = snapshot(&format!("{base}{extra}"));
        assert_eq!(resolved_reason(&statuses(&s), "default/cross").1, want, "grant: {extra}");
        let (t, _) = table(&s);
        let reached = reach(&t, "x", "/", &[], "GET").unwrap();
        assert_eq!(reached.ends_with("store:80"), want == "ResolvedRefs", "{reached}");
    }
}

#[test]
fn unsupported_values_and_filters_are_reported_not_skipped() {
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: regex, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [regex.example.com]
  rules: [{{matches: [{{path: {{type: RegularExpression, value: "/a.*"}}}}], backendRefs: [{{name: svc, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: mirror, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [mirror.example.com]
  rules:
    - matches: [{{path: {{value: /mirrored}}}}]
      filters: [{{type: RequestMirror}}]
      backendRefs: [{{name: svc, port: 80}}]
    - backendRefs: [{{name: svc, port: 80}}]
{}"#,
        gateway(WEB),
        service("default", "svc", "10.0.0.9"),
    ));
    let st = statuses(&s);
    assert_eq!(accepted_reason(&st, "default/regex"), ("False".into(), "UnsupportedValue".into()));
    // One rule of two is refused: the route is accepted and says it is partially invalid.
    assert_eq!(accepted_reason(&st, "default/mirror"), ("True".into(), "Accepted".into()));
    let partial = &conditions(&st, "default/mirror")[0];
    assert!(partial.contains(&("PartiallyInvalid".into(), "True".into(), "UnsupportedValue".into())), "{partial:?}");
    let (t, warnings) = table(&s);
    assert!(reach(&t, "regex.example.com", "/a", &[], "GET").is_none());
    // The refused rule is not served: its path falls to the other rule (PathPrefix /).
    assert!(reach(&t, "mirror.example.com", "/mirrored", &[], "GET").is_some());
    assert_eq!(t.rules().iter().filter(|r| r.path == PathMatch::prefix("/mirrored")).count(), 0);
    assert!(
        warnings.iter().any(|w| w.object.id() == "default/mirror" && w.reason.contains("RequestMirror")),
        "{warnings:?}"
    );
}

#[test]
fn filters_and_timeouts_reach_the_route() {
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: f, namespace: default, annotations: {{wsingress.io/idle-timeout: 5m}}}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /v1}}}}]
      filters:
        - {{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: X-A, value: b}}], remove: [x-c]}}}}
        - {{type: URLRewrite, urlRewrite: {{hostname: internal.example.com, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}}}
      timeouts: {{request: 2s, backendRequest: 1s}}
      backendRefs: [{{name: svc, port: 80}}]
    - matches: [{{path: {{type: Exact, value: /moved}}}}]
      filters: [{{type: RequestRedirect, requestRedirect: {{scheme: https, hostname: new.example.com, statusCode: 301}}}}]
{}"#,
        gateway(WEB),
        service("default", "svc", "10.0.0.10"),
    ));
    let (t, warnings) = table(&s);
    assert!(warnings.is_empty(), "{warnings:?}");
    let r = t.find(Some("x"), "/v1/a").unwrap();
    let g = r.settings.gateway.as_ref().unwrap();
    assert_eq!(g.request_headers.set, [("x-a".to_string(), "b".to_string())]);
    assert_eq!(g.request_headers.remove, ["x-c"]);
    assert_eq!(g.request_timeout, Some(Duration::from_secs(2)));
    assert_eq!(g.matched_prefix.as_deref(), Some("/v1"));
    let rewrite = g.rewrite.as_ref().unwrap();
    assert_eq!(rewrite.hostname.as_deref(), Some("internal.example.com"));
    assert_eq!(rewrite.path.as_ref().unwrap().apply("/v1/a", g.matched_prefix.as_deref()), "/v2/a");
    // backendRequest bounds each attempt's handshake; annotations apply as on an Ingress.
    let backend = &g.backends[0].1;
    assert_eq!(backend.settings.handshake_timeout, Duration::from_secs(1));
    assert_eq!(backend.settings.idle_timeout, Some(Duration::from_secs(300)));
    let moved = t.find(Some("x"), "/moved").unwrap();
    let redirect = moved.settings.gateway.as_ref().unwrap().redirect.as_ref().unwrap();
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.location(false, "x:8080", "/moved", None, None), "https://new.example.com/moved");
}

#[test]
fn ingress_and_httproute_conflicts_go_to_the_oldest() {
    let ingress = |ts: &str| {
        format!(
            r#"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: ing, namespace: default, creationTimestamp: "{ts}"}}
spec:
  ingressClassName: wsingress
  rules: [{{host: chat.example.com, http: {{paths: [{{path: /ws, pathType: Prefix, backend: {{service: {{name: from-ingress, port: {{number: 80}}}}}}}}]}}}}]
"#
        )
    };
    let route = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: route, namespace: default, creationTimestamp: "2026-06-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw}]
  hostnames: [chat.example.com]
  rules: [{matches: [{path: {value: /ws}}], backendRefs: [{name: from-route, port: 80}]}]
"#;
    let base = format!(
        "{}{route}{}{}",
        gateway(WEB),
        service("default", "from-ingress", "10.0.1.1"),
        service("default", "from-route", "10.0.1.2")
    );
    for (ts, winner, loser) in
        [("2026-01-01T00:00:00Z", "Ingress", "HTTPRoute"), ("2026-12-01T00:00:00Z", "HTTPRoute", "Ingress")]
    {
        let s = snapshot(&format!("{base}{}", ingress(ts)));
        let (t, warnings) = table(&s);
        let r = t.find(Some("chat.example.com"), "/ws").unwrap();
        let from = if r.settings.gateway.is_some() { "HTTPRoute" } else { "Ingress" };
        assert_eq!(from, winner);
        let lost: Vec<_> = warnings.iter().filter(|w| w.event_reason == reasons::RULE_CONFLICT).collect();
        assert_eq!(lost.len(), 1, "{warnings:?}");
        assert_eq!(lost[0].object.kind, loser);
    }
}

#[test]
fn https_listeners_need_permitted_certificates() {
    let listeners = r#"
    - {name: tls, protocol: HTTPS, port: 443, hostname: secure.example.com, tls: {certificateRefs: [{name: cert, namespace: certs}]}}
    - {name: none, protocol: HTTPS, port: 8443}"#;
    let st = statuses(&snapshot(&gateway(listeners)));
    let (_, gw) = &st.gateways[0];
    let resolved =
        |i: usize| gw.listeners[i].conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap().reason.clone();
    assert_eq!(resolved(0), "RefNotPermitted");
    assert_eq!(resolved(1), "InvalidCertificateRef");
    let granted = format!(
        "{}\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: certs}}\nspec: {{from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: default}}], to: [{{group: \"\", kind: Secret}}]}}\n",
        gateway(listeners)
    );
    let st = statuses(&snapshot(&granted));
    let c = st.gateways[0].1.listeners[0].conditions.iter().find(|c| c.type_ == "ResolvedRefs").unwrap().clone();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "ResolvedRefs"));
}

#[test]
fn unchanged_conditions_keep_their_transition_time() {
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default, generation: 2}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]
{}"#,
        gateway(WEB),
        service("default", "svc", "10.0.0.11")
    ));
    let first = statuses(&s);
    // Write the status back as the cluster side would, then compute again later.
    let mut route = HTTPRoute::clone(&s.http_routes[0]);
    route.status = Some(crate::gateway_api::HTTPRouteStatus { parents: first.routes[0].1.clone() });
    let again = ClusterSnapshot { http_routes: vec![Arc::new(route)], ..s.clone() };
    let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_900_000_000).unwrap());
    let second = gateway_statuses(&again, &Defaults::default(), &["192.0.2.10".to_string()], &later);
    assert_eq!(first.routes, second.routes, "an unchanged status is identical (nothing to write)");
}

#[test]
fn app_protocol_selects_plain_or_tls_upstreams() {
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
    - matches: [{{path: {{value: /wss}}}}]
      backendRefs: [{{name: secure, port: 443}}]
    - matches: [{{path: {{value: /ws}}}}]
      backendRefs: [{{name: plain, port: 80}}]
    - matches: [{{path: {{value: /none}}}}]
      backendRefs: [{{name: bare, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: secure, namespace: default}}
spec: {{ports: [{{name: wss, port: 443, appProtocol: kubernetes.io/wss}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: plain, namespace: default}}
spec: {{ports: [{{name: ws, port: 80, appProtocol: kubernetes.io/ws}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: bare, namespace: default}}
spec: {{ports: [{{name: ws, port: 80}}]}}
"#,
        gateway(WEB)
    ));
    let (t, _) = table(&s);
    let backend_tls = |path: &str| {
        let r = t.find(Some("x"), path).unwrap();
        r.settings.gateway.as_ref().unwrap().backends[0].1.settings.backend_tls.clone()
    };
    let tls = backend_tls("/wss").expect("kubernetes.io/wss speaks TLS to the pods");
    assert_eq!(tls.server_name, "secure.default.svc");
    assert!(backend_tls("/ws").is_none());
    assert!(backend_tls("/none").is_none(), "no appProtocol: plain, and upgrades still pass");
}

#[test]
fn each_host_is_served_on_the_listeners_it_attached_through() {
    // plain.test only through the HTTP listener, secure.test only through the HTTPS one,
    // both.test through both.
    let listeners = r#"
    - {name: web, protocol: HTTP, port: 80, hostname: plain.test}
    - {name: web-both, protocol: HTTP, port: 8080, hostname: both.test}
    - {name: tls, protocol: HTTPS, port: 443, hostname: secure.test, tls: {certificateRefs: [{name: cert}]}}
    - {name: tls-both, protocol: HTTPS, port: 8443, hostname: both.test, tls: {certificateRefs: [{name: cert}]}}"#;
    let s = snapshot(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]
{}"#,
        gateway(listeners),
        service("default", "svc", "10.0.0.10"),
    ));
    let (t, warnings) = table(&s);
    assert!(warnings.is_empty(), "{warnings:?}");
    let found = |host: &str, tls: bool| t.lookup_request(Some(host), "/", tls, &NoFacts).map(|f| f.route.clone());
    // The HTTP-only host is not reachable over TLS; the others are.
    assert!(found("plain.test", false).is_some());
    assert!(found("plain.test", true).is_none(), "an HTTP listener's host answered on the TLS listener");
    assert!(found("secure.test", true).is_some());
    assert!(found("both.test", true).is_some());
    // Plain requests for the HTTPS-only host are redirected to https; the others are served.
    let redirect = |host: &str| found(host, false).map(|r| r.settings.ssl_redirect);
    assert_eq!(redirect("secure.test"), Some(SslRedirect::Force));
    assert_ne!(redirect("plain.test"), Some(SslRedirect::Force));
    assert_ne!(redirect("both.test"), Some(SslRedirect::Force));
    // One rule still means one Service route: the split is shared by the three fronts.
    let backend = |host: &str, tls: bool| {
        let r = found(host, tls).unwrap();
        Arc::as_ptr(&r.settings.gateway.as_ref().unwrap().backends[0].1)
    };
    assert_eq!(backend("plain.test", false), backend("secure.test", true));
    assert_eq!(backend("plain.test", false), backend("both.test", true));
}
