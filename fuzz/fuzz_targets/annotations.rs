//! Fuzz target: the annotation parser (`translate::annotations::route_settings` and
//! `exposure`, `backend_tls_request`) over arbitrary annotation maps, with keys drawn mostly from the real
//! `wsingress.io/*` and ingress-nginx keys. Invariants: no panic; every warning names one
//! of the annotations present; parsing is deterministic.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wsingress::routes::RouteSettings;
use wsingress::translate::{ObjectRef, UnsupportedSecurity};
use wsingress::translate::annotations::{self as ann, AnnotatedKind};

const KEYS: &[&str] = &[
    ann::LOAD_BALANCE,
    ann::IDLE_TIMEOUT,
    ann::PING_INTERVAL,
    ann::PONG_TIMEOUT,
    ann::CONNECT_TIMEOUT,
    ann::HANDSHAKE_TIMEOUT,
    ann::DRAIN_TIMEOUT,
    ann::MAX_MESSAGE_BYTES,
    ann::MAX_CONNECTIONS,
    ann::ALLOWED_ORIGINS,
    ann::WEBSOCKET_ONLY,
    ann::EXPOSE,
    ann::HOST,
    ann::PATH,
    ann::PORT,
    ann::NGINX_PROXY_READ_TIMEOUT,
    ann::NGINX_PROXY_SEND_TIMEOUT,
    ann::NGINX_PROXY_CONNECT_TIMEOUT,
    ann::NGINX_UPSTREAM_HASH_BY,
    ann::NGINX_LOAD_BALANCE,
    ann::NGINX_LIMIT_CONNECTIONS,
    ann::NGINX_AFFINITY,
    ann::SSL_REDIRECT,
    ann::BACKEND_PROTOCOL,
    ann::BACKEND_TLS_SERVER_NAME,
    ann::BACKEND_CA_SECRET,
    ann::BACKEND_TLS_VERIFY,
    ann::NGINX_SSL_REDIRECT,
    ann::NGINX_FORCE_SSL_REDIRECT,
    ann::NGINX_BACKEND_PROTOCOL,
    ann::ALLOW_SOURCE_RANGES,
    ann::DENY_SOURCE_RANGES,
    ann::MAX_CONNECTIONS_PER_CLIENT,
    ann::HANDSHAKE_RATE,
    ann::HANDSHAKE_BURST,
    ann::MAX_MESSAGE_RATE,
    ann::NGINX_WHITELIST_SOURCE_RANGE,
    ann::NGINX_ALLOWLIST_SOURCE_RANGE,
    ann::NGINX_DENYLIST_SOURCE_RANGE,
    ann::NGINX_LIMIT_RPS,
    ann::NGINX_LIMIT_RPM,
    ann::NGINX_LIMIT_BURST_MULTIPLIER,
];

#[derive(Debug, Arbitrary)]
enum Key {
    Known(u8),
    Prefixed(String),
    Other(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    service: bool,
    ignore_security: bool,
    pairs: Vec<(Key, String)>,
}

fuzz_target!(|input: Input| {
    let map: BTreeMap<String, String> = input
        .pairs
        .into_iter()
        .map(|(k, v)| {
            let k = match k {
                Key::Known(i) => KEYS[usize::from(i) % KEYS.len()].to_string(),
                Key::Prefixed(s) => format!("{}{s}", ann::PREFIX),
                Key::Other(s) => s,
            };
            (k, v)
        })
        .collect();
    let object = ObjectRef { kind: "Ingress".into(), namespace: "default".into(), name: "fuzz".into() };
    let kind = if input.service { AnnotatedKind::Service } else { AnnotatedKind::Ingress };
    let base = RouteSettings::default();
    let security = if input.ignore_security { UnsupportedSecurity::Ignore } else { UnsupportedSecurity::Refuse };

    let mut warnings = Vec::new();
    let settings = ann::route_settings(&object, Some(&map), kind, &base, security, &mut warnings);
    let exposure = ann::exposure(&object, Some(&map), &mut warnings);
    let backend_tls = ann::backend_tls_request(&object, Some(&map), &mut warnings);
    for w in &warnings {
        assert!(
            map.keys().any(|k| w.field == ann::annotation_field(k)),
            "warning about an annotation that is not there: {}",
            w.field
        );
    }

    let mut again = Vec::new();
    assert_eq!(settings, ann::route_settings(&object, Some(&map), kind, &base, security, &mut again));
    assert_eq!(exposure, ann::exposure(&object, Some(&map), &mut again));
    assert_eq!(backend_tls, ann::backend_tls_request(&object, Some(&map), &mut again));
    assert_eq!(warnings.len(), again.len());
});
