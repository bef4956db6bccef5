//! Fuzz target: the upgrade-request validator and the header rules of the proxy
//! (`proxy::headers`: `classify`, `accept_key`, `strip_hop_by_hop`, `TrustedProxies`,
//! `add_forwarded`) over arbitrary methods, versions and header maps. Invariants: no panic;
//! a request classified as WebSocket really carries every RFC 6455 §4.2.1 field; the accept
//! key is 28 base64 characters; no hop-by-hop field survives stripping; the resolved client
//! is the peer or an address taken from X-Forwarded-For.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use libfuzzer_sys::fuzz_target;
use wsingress::proxy::client_addr::Hop;
use wsingress::proxy::headers::{self, RequestKind, TrustedProxies};

/// Header names the validator cares about, so the fuzzer reaches them often.
const NAMES: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "keep-alive",
    "te",
    "transfer-encoding",
    "host",
];

#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Other(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    method: Vec<u8>,
    version: u8,
    headers: Vec<(Name, Vec<u8>)>,
    peer: [u8; 4],
    trusted: Vec<String>,
}

fuzz_target!(|input: Input| {
    let method = Method::from_bytes(&input.method).unwrap_or(Method::GET);
    let version =
        [Version::HTTP_09, Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][usize::from(input.version % 4)];
    let mut map = HeaderMap::new();
    for (name, value) in &input.headers {
        let name = match name {
            Name::Known(i) => HeaderName::from_static(NAMES[usize::from(*i) % NAMES.len()]),
            Name::Other(bytes) => match HeaderName::from_bytes(bytes) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.append(name, value);
        }
    }

    match headers::classify(&method, version, &map) {
        Ok(RequestKind::WebSocket) => {
            assert_eq!(method, Method::GET);
            assert_eq!(version, Version::HTTP_11);
            assert!(headers::has_token(&map, &header::UPGRADE, "websocket"));
            assert!(headers::has_token(&map, &header::CONNECTION, "upgrade"));
            assert_eq!(map.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()), Some(&b"13"[..]));
            let key = map.get(header::SEC_WEBSOCKET_KEY).expect("a WebSocket request has a key");
            let accept = headers::accept_key(key.as_bytes());
            assert_eq!(accept.len(), 28, "SHA-1 in base64 is 28 characters");
        }
        Ok(RequestKind::Plain) => assert!(!headers::has_token(&map, &header::UPGRADE, "websocket")),
        Err(why) => assert!(!why.is_empty()),
    }
    for (_, value) in map.iter() {
        let _ = headers::accept_key(value.as_bytes());
    }

    let trusted = TrustedProxies::parse(&input.trusted).unwrap_or_default();
    let peer = IpAddr::from(input.peer);
    let info = trusted.client_info(peer, &map);
    assert_eq!(info.peer, peer);
    if info.client != peer {
        assert!(info.trusted_peer, "only a trusted peer may name another client");
        let listed = map
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|e| matches!(Hop::parse(e), Hop::Address(ip) | Hop::Endpoint(ip) if ip == info.client));
        assert!(listed, "client {} is neither the peer nor in X-Forwarded-For", info.client);
    }

    let mut stripped = map.clone();
    headers::strip_hop_by_hop(&mut stripped);
    for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        assert!(!stripped.contains_key(name), "{name} survived stripping");
    }
    let host = map.get(header::HOST).cloned();
    headers::add_forwarded(&mut stripped, &info, host.as_ref());
    assert!(stripped.contains_key("x-forwarded-for"));
    assert!(stripped.contains_key("x-real-ip"));
});
