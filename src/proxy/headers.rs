//! Header rules of a proxy, pure: hop-by-hop removal (RFC 9110 §7.6.1), X-Forwarded-*,
//! and validation of a WebSocket upgrade request (RFC 6455 §4.2.1).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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

/// The client as seen by the proxy: the TCP peer, and the address it speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The TCP peer (appended to X-Forwarded-For).
    pub peer: IpAddr,
    /// The original client (X-Real-IP, ip-hash): the peer, or when the peer is a trusted
    /// proxy, the right-most untrusted address of its X-Forwarded-For.
    pub client: IpAddr,
    /// The peer is a trusted proxy, so its X-Forwarded-Proto/-Host are kept.
    pub trusted_peer: bool,
}

impl ClientInfo {
    /// A client that connected directly (no trusted proxy in between).
    pub fn direct(peer: IpAddr) -> Self {
        let peer = canonical(peer);
        Self { peer, client: peer, trusted_peer: false }
    }
}

/// CIDR list for `--trusted-proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let (ip, len) = match item.split_once('/') {
                Some((ip, len)) => (ip, Some(len)),
                None => (item, None),
            };
            let ip: IpAddr = ip.parse().map_err(|_| format!("--trusted-proxies: `{item}` is not an IP or CIDR"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            // An IPv4-mapped entry (::ffff:a.b.c.d/n) is the IPv4 network a.b.c.d/(n-96).
            let (ip, mapped) = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or((ip, false), |v4| (IpAddr::V4(v4), true)),
                v4 => (v4, false),
            };
            let len = match len {
                Some(l) => l.parse::<u8>().ok().filter(|&l| l <= max),
                None => Some(max),
            }
            .ok_or_else(|| format!("--trusted-proxies: `{item}` has an invalid prefix length"))?;
            let len = if mapped {
                len.checked_sub(96)
                    .ok_or_else(|| format!("--trusted-proxies: `{item}` has an invalid prefix length"))?
            } else {
                len
            };
            out.push((ip, len));
        }
        Ok(Self(out))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|&(net, len)| match (canonical(net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            _ => false,
        })
    }

    /// Resolve who the client is from the peer and the X-Forwarded-For field lines: walking
    /// right to left from a trusted peer, the client is the first entry that is not a trusted
    /// address; an entry that cannot be parsed ends the walk at the last trusted hop.
    pub fn client_info<'a>(&self, peer: IpAddr, xff: impl DoubleEndedIterator<Item = &'a [u8]>) -> ClientInfo {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return ClientInfo::direct(peer);
        }
        let mut client = peer;
        for line in xff.rev() {
            for item in line.rsplit(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|i| !i.is_empty()) {
                let Some(hop) = std::str::from_utf8(item).ok().and_then(|t| t.parse::<IpAddr>().ok()) else {
                    return ClientInfo { peer, client, trusted_peer: true };
                };
                client = canonical(hop);
                if !self.contains(client) {
                    return ClientInfo { peer, client, trusted_peer: true };
                }
            }
        }
        ClientInfo { peer, client, trusted_peer: true }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (a[full] & mask) == (b[full] & mask)
    }
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
        let info = trusted
            .client_info(peer.parse().unwrap(), sent.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes));
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
    fn the_walk_stops_at_an_entry_it_cannot_read() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap();
        // Azure-style `ip:port` entries: the spoofed address left of it is never believed.
        let info = trusted
            .client_info("10.0.0.5".parse().unwrap(), [b"6.6.6.6, 1.2.3.4:5555, 10.0.0.7".as_slice()].into_iter());
        assert_eq!(info.client, "10.0.0.7".parse::<IpAddr>().unwrap());
        let info = trusted.client_info("10.0.0.5".parse().unwrap(), [b"6.6.6.6, garbage".as_slice()].into_iter());
        assert_eq!(info.client, "10.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv4_mapped_trusted_entries_are_ipv4_networks() {
        // Once a panic on every IPv4 request.
        let trusted = TrustedProxies::parse(&["::ffff:10.0.0.1".into(), "::ffff:192.168.0.0/112".into()]).unwrap();
        assert!(trusted.contains("10.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("10.0.0.2".parse().unwrap()));
        assert!(trusted.contains("192.168.7.7".parse().unwrap()));
        assert!(TrustedProxies::parse(&["::ffff:10.0.0.1/64".into()]).is_err());
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
