//! Fuzz target: the manifests-file loader (`source::file::load`) over structurally valid
//! YAML: Ingress, Service, EndpointSlice and IngressClass documents whose names, hosts,
//! paths, ports, addresses and annotations the fuzzer chooses (names from a small pool, so
//! objects refer to each other), plus arbitrary extra values spliced into any object.
//! Invariants: no panic; loading is deterministic; a table is produced whenever the file
//! holds at least one document (bad objects become warnings, not errors).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_yaml::{Mapping, Value};
use wsingress::source::file;
use wsingress::translate::Defaults;

const NAMES: &[&str] = &["chat", "api", "admin", "", "wsingress", "a.b"];
const NAMESPACES: &[&str] = &["default", "prod", ""];
const ANNOTATIONS: &[&str] = &[
    "wsingress.io/load-balance",
    "wsingress.io/idle-timeout",
    "wsingress.io/ping-interval",
    "wsingress.io/max-message-bytes",
    "wsingress.io/max-connections",
    "wsingress.io/allowed-origins",
    "wsingress.io/websocket-only",
    "wsingress.io/expose",
    "wsingress.io/host",
    "wsingress.io/path",
    "wsingress.io/port",
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/upstream-hash-by",
    "kubernetes.io/ingress.class",
];

#[derive(Debug, Arbitrary)]
enum Scalar {
    Str(String),
    Int(i64),
    Bool(bool),
    Null,
    Pick(u8),
}

impl Scalar {
    fn value(&self) -> Value {
        match self {
            Self::Str(s) => Value::String(s.clone()),
            Self::Int(i) => Value::Number((*i).into()),
            Self::Bool(b) => Value::Bool(*b),
            Self::Null => Value::Null,
            Self::Pick(i) => Value::String(pick(NAMES, *i).to_string()),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Meta {
    name: u8,
    namespace: u8,
    annotations: Vec<(u8, Scalar)>,
}

#[derive(Debug, Arbitrary)]
enum Port {
    Number(i32),
    Name(u8),
    Any(Scalar),
}

#[derive(Debug, Arbitrary)]
struct PathRule {
    path: Scalar,
    path_type: u8,
    service: u8,
    port: Port,
}

#[derive(Debug, Arbitrary)]
enum Object {
    Ingress {
        meta: Meta,
        class: Option<u8>,
        default_backend: Option<(u8, Port)>,
        rules: Vec<(Option<Scalar>, Vec<PathRule>)>,
    },
    Service {
        meta: Meta,
        ports: Vec<(Option<u8>, i32, Option<Port>)>,
    },
    Slice {
        meta: Meta,
        service: u8,
        ports: Vec<(Option<u8>, i32)>,
        endpoints: Vec<(Vec<[u8; 4]>, Option<bool>, Option<bool>)>,
    },
    Class {
        name: u8,
        controller: Scalar,
        default: Option<bool>,
    },
    Other {
        kind: Scalar,
        body: Vec<(String, Scalar)>,
    },
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Mapping(m)
}

fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

fn meta(m: &Meta) -> Value {
    let mut annotations = Mapping::new();
    for (k, v) in &m.annotations {
        annotations.insert(s(pick(ANNOTATIONS, *k)), v.value());
    }
    map(vec![
        ("name", s(pick(NAMES, m.name))),
        ("namespace", s(pick(NAMESPACES, m.namespace))),
        ("annotations", Value::Mapping(annotations)),
    ])
}

fn port(p: &Port) -> Value {
    match p {
        Port::Number(n) => map(vec![("number", Value::Number((*n).into()))]),
        Port::Name(i) => map(vec![("name", s(pick(NAMES, *i)))]),
        Port::Any(v) => v.value(),
    }
}

fn backend(service: u8, p: &Port) -> Value {
    map(vec![("service", map(vec![("name", s(pick(NAMES, service))), ("port", port(p))]))])
}

fn document(o: &Object) -> Value {
    match o {
        Object::Ingress { meta: m, class, default_backend, rules } => {
            let mut spec = Vec::new();
            if let Some(c) = class {
                spec.push(("ingressClassName", s(pick(NAMES, *c))));
            }
            if let Some((svc, p)) = default_backend {
                spec.push(("defaultBackend", backend(*svc, p)));
            }
            let rules = rules
                .iter()
                .map(|(host, paths)| {
                    let paths = paths
                        .iter()
                        .map(|r| {
                            map(vec![
                                ("path", r.path.value()),
                                (
                                    "pathType",
                                    s(pick(&["Prefix", "Exact", "ImplementationSpecific", "Bogus"], r.path_type)),
                                ),
                                ("backend", backend(r.service, &r.port)),
                            ])
                        })
                        .collect();
                    let mut rule = vec![("http", map(vec![("paths", Value::Sequence(paths))]))];
                    if let Some(h) = host {
                        rule.push(("host", h.value()));
                    }
                    map(rule)
                })
                .collect();
            spec.push(("rules", Value::Sequence(rules)));
            map(vec![
                ("apiVersion", s("networking.k8s.io/v1")),
                ("kind", s("Ingress")),
                ("metadata", meta(m)),
                ("spec", map(spec)),
            ])
        }
        Object::Service { meta: m, ports } => {
            let ports = ports
                .iter()
                .map(|(name, number, target)| {
                    let mut p = vec![("port", Value::Number((*number).into()))];
                    if let Some(n) = name {
                        p.push(("name", s(pick(NAMES, *n))));
                    }
                    if let Some(t) = target {
                        p.push((
                            "targetPort",
                            match t {
                                Port::Number(n) => Value::Number((*n).into()),
                                Port::Name(i) => s(pick(NAMES, *i)),
                                Port::Any(v) => v.value(),
                            },
                        ));
                    }
                    map(p)
                })
                .collect();
            map(vec![
                ("apiVersion", s("v1")),
                ("kind", s("Service")),
                ("metadata", meta(m)),
                ("spec", map(vec![("ports", Value::Sequence(ports))])),
            ])
        }
        Object::Slice { meta: m, service, ports, endpoints } => {
            let mut md = meta(m);
            if let Value::Mapping(mm) = &mut md {
                mm.insert(s("labels"), map(vec![("kubernetes.io/service-name", s(pick(NAMES, *service)))]));
            }
            let ports = ports
                .iter()
                .map(|(name, number)| {
                    let mut p = vec![("port", Value::Number((*number).into()))];
                    if let Some(n) = name {
                        p.push(("name", s(pick(NAMES, *n))));
                    }
                    map(p)
                })
                .collect();
            let endpoints = endpoints
                .iter()
                .map(|(addrs, ready, terminating)| {
                    let addrs = addrs.iter().map(|a| s(&std::net::Ipv4Addr::from(*a).to_string())).collect();
                    let mut cond = Vec::new();
                    if let Some(r) = ready {
                        cond.push(("ready", Value::Bool(*r)));
                    }
                    if let Some(t) = terminating {
                        cond.push(("terminating", Value::Bool(*t)));
                    }
                    map(vec![("addresses", Value::Sequence(addrs)), ("conditions", map(cond))])
                })
                .collect();
            map(vec![
                ("apiVersion", s("discovery.k8s.io/v1")),
                ("kind", s("EndpointSlice")),
                ("metadata", md),
                ("addressType", s("IPv4")),
                ("ports", Value::Sequence(ports)),
                ("endpoints", Value::Sequence(endpoints)),
            ])
        }
        Object::Class { name, controller, default } => {
            let mut md = vec![("name", s(pick(NAMES, *name)))];
            if let Some(d) = default {
                md.push((
                    "annotations",
                    map(vec![("ingressclass.kubernetes.io/is-default-class", s(if *d { "true" } else { "false" }))]),
                ));
            }
            map(vec![
                ("apiVersion", s("networking.k8s.io/v1")),
                ("kind", s("IngressClass")),
                ("metadata", map(md)),
                ("spec", map(vec![("controller", controller.value())])),
            ])
        }
        Object::Other { kind, body } => {
            let mut m = Mapping::new();
            m.insert(s("kind"), kind.value());
            for (k, v) in body {
                m.insert(s(k), v.value());
            }
            Value::Mapping(m)
        }
    }
}

fuzz_target!(|objects: Vec<Object>| {
    let text = objects
        .iter()
        .map(|o| serde_yaml::to_string(&document(o)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n");
    let defaults = Defaults::default();
    let first = file::load(&text, &defaults);
    let second = file::load(&text, &defaults);
    match (&first, &second) {
        (Ok((a, wa)), Ok((b, wb))) => {
            assert!(file::same_routes(a, b), "the same text gave two tables");
            assert_eq!(wa.len(), wb.len());
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("the same text loaded differently"),
    }
});
