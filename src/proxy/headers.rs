//! Header rules of a proxy, pure: hop-by-hop removal (RFC 9110 §7.6.1), X-Forwarded-*,
//! and validation of a WebSocket upgrade request (RFC 6455 §4.2.1). Who the client is
//! (`--trusted-proxies`, the X-Forwarded-For walk) is `client_addr`'s, re-exported here.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

pub use super::client_addr::{ClientInfo, TrustedProxies};

/// Hop-by-hop fields: "Connection", the fields it lists, and the legacy ones (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Remove every hop-by-hop field, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Whether a comma-separated header contains `token` (case-insensitive).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Set X-Real-IP, append the peer to X-Forwarded-For, set X-Forwarded-Proto/-Host (kept
/// as sent when the peer is a trusted proxy). `Host` itself is left untouched (preserved).
pub fn add_forwarded(headers: &mut HeaderMap, info: &ClientInfo, host: Option<&HeaderValue>) {
    let peer = info.peer.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if info.trusted_peer && !prev.trim().is_empty() => format!("{prev}, {peer}"),
        _ => peer,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(&info.client.to_string()) {
        headers.insert(X_REAL_IP, v);
    }
    if !(info.trusted_peer && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !(info.trusted_peer && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// The request target in origin form (`/path?query`), as sent to a backend (RFC 9112 §3.2.1).
pub fn origin_form(uri: &http::Uri) -> http::Uri {
    uri.path_and_query()
        .and_then(|pq| http::Uri::try_from(pq.as_str()).ok())
        .unwrap_or_else(|| http::Uri::from_static("/"))
}

/// What kind of request this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Plain HTTP (including an `Upgrade` to anything but websocket: forwarded as plain
    /// HTTP with the Upgrade field stripped, never tunnelled blindly).
    Plain,
    WebSocket,
}

/// Classify a request and validate it when it asks for a WebSocket (RFC 6455 §4.2.1):
/// GET, HTTP/1.1, `Upgrade: websocket`, `Connection` containing `upgrade`, a 16-byte
/// base64 `Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`.
pub fn classify(method: &Method, version: Version, headers: &HeaderMap) -> Result<RequestKind, &'static str> {
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Ok(RequestKind::Plain);
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err("Upgrade: websocket without Connection: upgrade");
    }
    if method != Method::GET {
        return Err("a WebSocket upgrade must use GET");
    }
    if version != Version::HTTP_11 {
        return Err("a WebSocket upgrade must use HTTP/1.1");
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or("missing Sec-WebSocket-Key")?;
    if !valid_key(key.as_bytes()) {
        return Err("Sec-WebSocket-Key is not 16 bytes of base64");
    }
    match headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) {
        Some(b"13") => Ok(RequestKind::WebSocket),
        Some(_) => Err("unsupported Sec-WebSocket-Version (only 13)"),
        None => Err("missing Sec-WebSocket-Version"),
    }
}

fn valid_key(key: &[u8]) -> bool {
    use base64::Engine;
    let key = key.trim_ascii();
    key.len() == 24 && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|k| k.len() == 16)
}

/// The `Sec-WebSocket-Accept` a server must answer for `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.trim_ascii());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_listed_fields_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
            ("sec-websocket-protocol", "chat"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "sec-websocket-protocol"]);
    }

    #[test]
    fn forwarded_headers_untrusted_peer() {
        let trusted = TrustedProxies::default();
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "https")]);
        let info = trusted.client_info("10.1.2.3".parse().unwrap(), &h);
        assert_eq!(info.client, "10.1.2.3".parse::<IpAddr>().unwrap());
        add_forwarded(&mut h, &info, Some(&HeaderValue::from_static("chat.example.com")));
        // A spoofed chain from an untrusted peer is replaced, not extended.
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-real-ip"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "chat.example.com");
    }

    #[test]
    fn forwarded_headers_trusted_chain() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        let mut h = map(&[("x-forwarded-for", "1.2.3.4, 10.9.9.9"), ("x-forwarded-proto", "https")]);
        let info = trusted.client_info("10.0.0.5".parse().unwrap(), &h);
        assert_eq!(info.client, "1.2.3.4".parse::<IpAddr>().unwrap());
        add_forwarded(&mut h, &info, None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.9.9.9, 10.0.0.5");
        assert_eq!(h["x-real-ip"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(trusted.contains("192.168.1.1".parse().unwrap()));
        assert!(!trusted.contains("192.168.1.2".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn upgrade_validation() {
        let good = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
        ];
        assert_eq!(classify(&Method::GET, Version::HTTP_11, &map(&good)), Ok(RequestKind::WebSocket));
        assert!(classify(&Method::POST, Version::HTTP_11, &map(&good)).is_err());
        assert!(classify(&Method::GET, Version::HTTP_10, &map(&good)).is_err());
        let mut bad_key = good;
        bad_key[2] = ("sec-websocket-key", "short");
        assert!(classify(&Method::GET, Version::HTTP_11, &map(&bad_key)).is_err());
        let mut bad_version = good;
        bad_version[3] = ("sec-websocket-version", "8");
        assert!(classify(&Method::GET, Version::HTTP_11, &map(&bad_version)).is_err());
        let no_conn = [good[0], good[2], good[3]];
        assert!(classify(&Method::GET, Version::HTTP_11, &map(&no_conn)).is_err());
        let h2c = [("upgrade", "h2c"), ("connection", "upgrade")];
        assert_eq!(classify(&Method::GET, Version::HTTP_11, &map(&h2c)), Ok(RequestKind::Plain));
        assert_eq!(classify(&Method::GET, Version::HTTP_11, &HeaderMap::new()), Ok(RequestKind::Plain));
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
