//! Header rules of a proxy, pure: hop-by-hop removal (RFC 9110 §7.6.1) and the forwarding
//! fields (X-Forwarded-*, X-Real-IP, RFC 7239 `Forwarded`). Who the client is
//! (`--trusted-proxies`, the X-Forwarded-For walk) is `client_addr`'s, re-exported here.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// The listener a request came in on: its scheme and port (for X-Forwarded-Proto/-Port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub https: bool,
    pub port: u16,
}

impl Listener {
    pub fn proto(self) -> &'static str {
        if self.https { "https" } else { "http" }
    }
}

/// Fields the proxy itself sets towards a backend. What a client sent under these names is
/// never passed on as is: it is dropped from an untrusted peer, and extended (X-Forwarded-For,
/// Forwarded) or kept (the rest) from a trusted one, by [`write_forwarding`].
pub const FORWARDING: [&str; 7] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "forwarded",
];

/// Whether a field named `name` is hop-by-hop (RFC 9110 §7.6.1): one of the fixed ones, or one
/// that a `Connection` field of the same message lists (`connection_values`).
pub fn is_hop_by_hop<'a>(name: &[u8], mut connection_values: impl Iterator<Item = &'a [u8]>) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
        || connection_values.any(|v| super::http1::tokens(v).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Whether `name` is one of the [`FORWARDING`] fields.
pub fn is_forwarding(name: &[u8]) -> bool {
    FORWARDING.iter().any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
}

/// Receives the fields [`write_forwarding`] decides on.
pub trait FieldSink {
    fn put(&mut self, name: &'static str, value: std::fmt::Arguments<'_>);
}

/// Appends `name: value\r\n` to a raw request head, with no intermediate string.
impl FieldSink for Vec<u8> {
    fn put(&mut self, name: &'static str, value: std::fmt::Arguments<'_>) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(self, "{name}: {value}\r\n");
    }
}

impl FieldSink for HeaderMap {
    fn put(&mut self, name: &'static str, value: std::fmt::Arguments<'_>) {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.insert(HeaderName::from_static(name), v);
        }
    }
}

/// An address as RFC 7239 §6 writes it: IPv6 quoted and bracketed.
struct NodeName(IpAddr);

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "\"[{a}]\""),
        }
    }
}

/// Joins a field's lines with ", " (RFC 9110 §5.3), trimmed, skipping empty ones.
struct Joined<F>(F);

impl<'a, F, I> std::fmt::Display for Joined<F>
where
    F: Fn() -> I,
    I: Iterator<Item = &'a [u8]>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for v in (self.0)().map(<[u8]>::trim_ascii).filter(|v| !v.is_empty()) {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            f.write_str(&String::from_utf8_lossy(v))?;
        }
        Ok(())
    }
}

/// The forwarding fields for a backend (RFC 7239 `Forwarded` and the de-facto X-Forwarded-*):
/// - `X-Forwarded-For`: the trusted peer's chain plus the peer, or just the peer;
/// - `X-Real-IP`: the resolved client;
/// - `X-Forwarded-Proto`/`-Host`/`-Port`: a trusted peer's values when it sent them, else the
///   listener's scheme, the request's host and the listener's port;
/// - `X-Forwarded-Prefix`: only a trusted peer's (the proxy strips no prefix of its own);
/// - `Forwarded`: a trusted peer's elements plus one for this hop, or just this hop's.
///
/// `prev(name)` yields the client's lines of a forwarding field; it is consulted only when the
/// peer is trusted, so an untrusted client can never place a value here.
pub fn write_forwarding<'a, P, I>(
    sink: &mut impl FieldSink,
    info: &ClientInfo,
    listener: Listener,
    host: Option<&[u8]>,
    prev: P,
) where
    P: Fn(&'static str) -> I,
    I: Iterator<Item = &'a [u8]>,
{
    let has = |name| info.trusted_peer && prev(name).any(|v: &[u8]| !v.trim_ascii().is_empty());
    let peer = info.peer;
    if has("x-forwarded-for") {
        sink.put("x-forwarded-for", format_args!("{}, {peer}", Joined(|| prev("x-forwarded-for"))));
    } else {
        sink.put("x-forwarded-for", format_args!("{peer}"));
    }
    sink.put("x-real-ip", format_args!("{}", info.client));
    if has("x-forwarded-proto") {
        sink.put("x-forwarded-proto", format_args!("{}", Joined(|| prev("x-forwarded-proto"))));
    } else {
        sink.put("x-forwarded-proto", format_args!("{}", listener.proto()));
    }
    if has("x-forwarded-host") {
        sink.put("x-forwarded-host", format_args!("{}", Joined(|| prev("x-forwarded-host"))));
    } else if let Some(h) = host {
        sink.put("x-forwarded-host", format_args!("{}", Joined(|| std::iter::once(h))));
    }
    if has("x-forwarded-port") {
        sink.put("x-forwarded-port", format_args!("{}", Joined(|| prev("x-forwarded-port"))));
    } else {
        sink.put("x-forwarded-port", format_args!("{}", listener.port));
    }
    if has("x-forwarded-prefix") {
        sink.put("x-forwarded-prefix", format_args!("{}", Joined(|| prev("x-forwarded-prefix"))));
    }
    let this_hop = ForwardedElement { peer, host, proto: listener.proto() };
    if has("forwarded") {
        sink.put("forwarded", format_args!("{}, {this_hop}", Joined(|| prev("forwarded"))));
    } else {
        sink.put("forwarded", format_args!("{this_hop}"));
    }
}

/// This hop's element of `Forwarded` (RFC 7239 §4): `for=...;host="...";proto=...`.
struct ForwardedElement<'a> {
    peer: IpAddr,
    host: Option<&'a [u8]>,
    proto: &'static str,
}

impl std::fmt::Display for ForwardedElement<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "for={}", NodeName(self.peer))?;
        if let Some(h) = self.host {
            f.write_str(";host=\"")?;
            for &b in h.trim_ascii() {
                if b.is_ascii_graphic() && b != b'"' && b != b'\\' {
                    std::fmt::Write::write_char(f, char::from(b))?;
                }
            }
            f.write_str("\"")?;
        }
        write!(f, ";proto={}", self.proto)
    }
}

/// A `Sec-WebSocket-Key` is 16 random bytes in base64 (RFC 6455 §4.1).
pub fn valid_key(key: &[u8]) -> bool {
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

    fn forwarding_of(trusted: &TrustedProxies, peer: &str, sent: &HeaderMap, host: Option<&str>) -> HeaderMap {
        let info =
            trusted.resolve(peer.parse().unwrap(), sent.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes));
        let mut out = HeaderMap::new();
        let listener = Listener { https: false, port: 8080 };
        write_forwarding(&mut out, &info, listener, host.map(str::as_bytes), |name| {
            sent.get_all(name).iter().map(HeaderValue::as_bytes)
        });
        out
    }

    const SPOOFED: [(&str, &str); 7] = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "1"),
        ("x-forwarded-prefix", "/evil"),
        ("forwarded", "for=6.6.6.6;proto=https"),
    ];

    #[test]
    fn an_untrusted_peer_cannot_place_any_forwarding_field() {
        let out = forwarding_of(&TrustedProxies::default(), "10.1.2.3", &map(&SPOOFED), Some("chat.example.com"));
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-real-ip"], "10.1.2.3");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "chat.example.com");
        assert_eq!(out["x-forwarded-port"], "8080");
        assert!(!out.contains_key("x-forwarded-prefix"));
        assert_eq!(out["forwarded"], "for=10.1.2.3;host=\"chat.example.com\";proto=http");
        let v6 = forwarding_of(&TrustedProxies::default(), "::1", &HeaderMap::new(), None);
        assert_eq!(v6["forwarded"], "for=\"[::1]\";proto=http");
    }

    #[test]
    fn a_trusted_peer_extends_the_chain_and_keeps_its_values() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into(), "192.168.1.1".into()]).unwrap();
        let sent = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "10.9.9.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/app"),
            ("forwarded", "for=1.2.3.4;proto=https"),
        ]);
        let out = forwarding_of(&trusted, "10.0.0.5", &sent, Some("chat.example.com"));
        assert_eq!(out["x-forwarded-for"], "1.2.3.4, 10.9.9.9, 10.0.0.5");
        assert_eq!(out["x-real-ip"], "1.2.3.4");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "chat.example.com");
        assert_eq!(out["x-forwarded-prefix"], "/app");
        assert_eq!(out["forwarded"], "for=1.2.3.4;proto=https, for=10.0.0.5;host=\"chat.example.com\";proto=http");
        assert!(trusted.contains("192.168.1.1".parse().unwrap()));
        assert!(!trusted.contains("192.168.1.2".parse().unwrap()));
        assert!(trusted.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
