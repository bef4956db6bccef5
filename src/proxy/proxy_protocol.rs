//! The PROXY protocol (HAProxy's specification, versions 1 and 2), read on the plain and TLS
//! listeners before anything else (`--proxy-protocol`): an L4 load balancer in front (an AWS
//! NLB, HAProxy `send-proxy`) tells who the client is, and that address becomes the peer for
//! everything downstream (`--trusted-proxies`, `X-Real-IP`/`X-Forwarded-For`, ip-hash, limits,
//! source ranges, logs).
//!
//! - Only peers in `--proxy-protocol-from` may send a header; the header is then required. A
//!   header from any other peer is refused (the connection is closed, counted in
//!   `wsingress_connections_rejected_total` and logged at most once a minute per peer); such a
//!   peer may still connect directly, as the client it is.
//! - The whole header is read within `--header-timeout`.
//! - The header is consumed exactly: its bytes are peeked, and only the bytes that belong to
//!   it are read off the socket, so the request head or TLS ClientHello that follows is left
//!   in the socket for the front door or TLS, untouched. Nothing is read ahead, so nothing has
//!   to be handed on.
//! - v2 `LOCAL` (a load balancer's own health check), `UNSPEC` and `AF_UNIX` addresses, and
//!   v1 `UNKNOWN`, keep the socket's peer. v2 TLVs are checked for structure and skipped.
//!
//! [`parse`] is pure, allocation-free and fuzzed (`fuzz/fuzz_targets/proxy_protocol.rs`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::routes::cidr::CidrSet;

/// The longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a v2 header: signature, version and command, family, length.
pub const V2_FIXED: usize = 16;
const V1_PREFIX: &[u8] = b"PROXY ";

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes on the wire.
    pub len: usize,
    /// 1 or 2.
    pub version: u8,
    /// The original client; `None` keeps the socket's peer (v2 LOCAL, UNSPEC or AF_UNIX, v1
    /// UNKNOWN).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
    /// v2 TLVs seen (and skipped).
    pub tlvs: u16,
}

/// What the bytes so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Complete(Header),
    /// A header has begun; `need` is its total length once known (v2 after 16 bytes).
    Incomplete {
        need: Option<usize>,
    },
}

/// Why bytes are not a valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("v1 header: {0}")]
    V1Syntax(&'static str),
    #[error("v2 header: version {0} (only 2 exists)")]
    V2Version(u8),
    #[error("v2 header: unknown command {0}")]
    V2Command(u8),
    #[error("v2 header: unknown address family or protocol {0:#04x}")]
    V2Family(u8),
    #[error("v2 header: length {0} too short for its address family")]
    V2Length(u16),
    #[error("v2 header: a TLV runs past the end of the header")]
    V2Tlv,
}

/// Parse a header at the start of `buf`. Bytes after a complete header are not looked at.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: None }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(HeaderError::Missing),
    }
}

/// Whether the first bytes a peer sent start a PROXY header, for peers not allowed to send
/// one: `None` while they could still be either (a prefix of a signature).
pub fn starts_header(buf: &[u8]) -> Option<bool> {
    for sig in [V1_PREFIX, &V2_SIGNATURE[..]] {
        let n = buf.len().min(sig.len());
        if buf[..n] == sig[..n] {
            return if n == sig.len() { Some(true) } else { None };
        }
    }
    Some(false)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(HeaderError::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX { Err(HeaderError::V1TooLong) } else { Ok(Parsed::Incomplete { need: None }) };
    };
    if lf < V1_PREFIX.len() || window[lf - 1] != b'\r' {
        return Err(HeaderError::V1Syntax("line not ended by CRLF"));
    }
    let line = &window[V1_PREFIX.len()..lf - 1];
    let line = std::str::from_utf8(line).map_err(|_| HeaderError::V1Syntax("not ASCII"))?;
    let mut fields = line.split(' ');
    let len = lf + 1;
    let (source, destination) = match fields.next() {
        // "the receiver must ignore anything presented before the CRLF is found"
        Some("UNKNOWN") => (None, None),
        Some(proto @ ("TCP4" | "TCP6")) => {
            let v6 = proto == "TCP6";
            let mut next = || fields.next().ok_or(HeaderError::V1Syntax("missing field"));
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(HeaderError::V1Syntax("extra field"));
            }
            let src = v1_addr(src, v6)?;
            let dst = v1_addr(dst, v6)?;
            (Some(SocketAddr::new(src, v1_port(sport)?)), Some(SocketAddr::new(dst, v1_port(dport)?)))
        }
        _ => return Err(HeaderError::V1Syntax("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Complete(Header { len, version: 1, source, destination, tlvs: 0 }))
}

fn v1_addr(text: &str, v6: bool) -> Result<IpAddr, HeaderError> {
    if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| HeaderError::V1Syntax("bad IPv6 address"))
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| HeaderError::V1Syntax("bad IPv4 address"))
    }
}

/// 0–65535 in decimal, without a sign or leading zeros.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let ok = (1..=5).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    match text.parse::<u16>() {
        Ok(p) if ok => Ok(p),
        _ => Err(HeaderError::V1Syntax("bad port")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(HeaderError::Missing);
    }
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete { need: None });
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(HeaderError::V2Version(version));
    }
    let family = buf[13];
    let length = u16::from_be_bytes([buf[14], buf[15]]);
    let total = V2_FIXED + usize::from(length);
    // The version, command and family are refused before waiting for the body.
    if command > 1 {
        return Err(HeaderError::V2Command(command));
    }
    let (af, proto) = (family >> 4, family & 0x0f);
    if af > 3 || proto > 2 {
        return Err(HeaderError::V2Family(family));
    }
    if buf.len() < total {
        return Ok(Parsed::Incomplete { need: Some(total) });
    }
    let body = &buf[V2_FIXED..total];
    let done =
        |source, destination, tlvs| Ok(Parsed::Complete(Header { len: total, version: 2, source, destination, tlvs }));
    // LOCAL: the proxy's own connection (health checks); the address block is ignored.
    if command == 0 {
        return done(None, None, 0);
    }
    let addr_len = match af {
        0 => return done(None, None, 0), // UNSPEC: the receiver keeps the socket's addresses
        1 => 12,
        2 => 36,
        _ => 216, // AF_UNIX
    };
    if body.len() < addr_len {
        return Err(HeaderError::V2Length(length));
    }
    let tlvs = count_tlvs(&body[addr_len..])?;
    let (source, destination) = match af {
        1 => {
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3]));
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            (Some(SocketAddr::new(ip(0), port(8))), Some(SocketAddr::new(ip(4), port(10))))
        }
        2 => {
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            (Some(SocketAddr::new(ip(0), port(32))), Some(SocketAddr::new(ip(16), port(34))))
        }
        _ => (None, None), // AF_UNIX: no IP address to use
    };
    done(source, destination, tlvs)
}

/// Walk the TLVs (type, 16-bit length, value) to check they fill the rest exactly.
fn count_tlvs(mut rest: &[u8]) -> Result<u16, HeaderError> {
    let mut n: u16 = 0;
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(HeaderError::V2Tlv);
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if rest.len() < 3 + len {
            return Err(HeaderError::V2Tlv);
        }
        rest = &rest[3 + len..];
        n = n.saturating_add(1);
    }
    Ok(n)
}

/// Why a connection was refused before the front door saw it.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("PROXY protocol header from a peer outside --proxy-protocol-from")]
    Untrusted,
    #[error("{0}")]
    Malformed(HeaderError),
    #[error("no complete PROXY protocol header within --header-timeout")]
    Timeout,
    #[error("closed before the PROXY protocol header was complete")]
    Closed,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

impl Refused {
    /// `reason` label of `wsingress_connections_rejected_total`; `None` for a peer that just
    /// left (a load balancer's TCP health check, say), which is not counted.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            Self::Untrusted => Some("proxy_protocol_untrusted"),
            Self::Malformed(HeaderError::Missing) => Some("proxy_protocol_missing"),
            Self::Malformed(_) => Some("proxy_protocol_malformed"),
            Self::Timeout => Some("proxy_protocol_timeout"),
            Self::Closed | Self::Io(_) => None,
        }
    }
}

/// Peers whose refusals were logged recently (at most this many remembered).
const LOGGED_PEERS: usize = 1024;
/// One log line per peer per this long.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Peeked at once while the header's length is not known yet (a v1 line is at most 107).
const PEEK: usize = 256;
/// Largest single peek once a v2 header's length is known.
const PEEK_MAX: usize = 16 * 1024;

/// `--proxy-protocol` with its `--proxy-protocol-from` list.
#[derive(Debug)]
pub struct ProxyProtocol {
    /// `None`: every peer must send a header.
    trusted: Option<CidrSet>,
    logged: Mutex<HashMap<IpAddr, Instant>>,
}

impl ProxyProtocol {
    /// `trusted` empty: every peer is a load balancer and must send a header.
    pub fn new(trusted: CidrSet) -> Self {
        Self { trusted: (!trusted.is_empty()).then_some(trusted), logged: Mutex::default() }
    }

    /// Whether `peer` must (and may) send a header.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.as_ref().is_none_or(|t| t.contains(peer))
    }

    /// Read the header from a trusted peer, or check that an untrusted one sends none, within
    /// `timeout`. Returns the client's address: the header's source, else the socket's peer.
    pub async fn accept(
        &self,
        tcp: &mut TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<SocketAddr, Refused> {
        if !self.trusts(peer.ip()) {
            return match tokio::time::timeout(timeout, sends_header(tcp)).await {
                Ok(Ok(true)) => Err(Refused::Untrusted),
                // No header, or nothing yet: the front door takes it from here.
                Ok(Ok(false)) | Err(_) => Ok(peer),
                Ok(Err(e)) => Err(e.into()),
            };
        }
        let header = tokio::time::timeout(timeout, read_header(tcp)).await.map_err(|_| Refused::Timeout)??;
        Ok(header.source.map_or(peer, |s| SocketAddr::new(s.ip().to_canonical(), s.port())))
    }

    /// Log a refusal, at most once per [`LOG_EVERY`] per peer (debug level otherwise).
    pub fn log_refusal(&self, peer: IpAddr, why: &Refused) {
        let now = Instant::now();
        let first = {
            let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
            let due = logged.get(&peer).is_none_or(|at| now.saturating_duration_since(*at) >= LOG_EVERY);
            if due {
                if logged.len() >= LOGGED_PEERS {
                    logged.retain(|_, at| now.saturating_duration_since(*at) < LOG_EVERY);
                    if logged.len() >= LOGGED_PEERS {
                        logged.clear();
                    }
                }
                logged.insert(peer, now);
            }
            due
        };
        match (first, why.label()) {
            (true, Some(_)) => {
                tracing::warn!(peer = %peer, error = %why, "connection refused (PROXY protocol; logged once a minute per peer)")
            }
            _ => tracing::debug!(peer = %peer, error = %why, "connection refused (PROXY protocol)"),
        }
    }
}

/// Read exactly one header off `tcp`: peek, parse, then consume only what belongs to it.
/// While the header is incomplete every byte peeked belongs to it, so it is consumed and
/// the next peek waits for more.
pub async fn read_header(tcp: &mut TcpStream) -> Result<Header, Refused> {
    let mut head: Vec<u8> = Vec::with_capacity(PEEK);
    let mut need: Option<usize> = None;
    let mut scratch = vec![0u8; PEEK];
    loop {
        let room = need.map_or(PEEK, |n| n.saturating_sub(head.len()).clamp(1, PEEK_MAX));
        if scratch.len() < room {
            scratch.resize(room, 0);
        }
        let got = tcp.peek(&mut scratch[..room]).await?;
        if got == 0 {
            return Err(Refused::Closed);
        }
        let before = head.len();
        head.extend_from_slice(&scratch[..got]);
        match parse(&head).map_err(Refused::Malformed)? {
            Parsed::Complete(h) => {
                let take = h.len.saturating_sub(before);
                tcp.read_exact(&mut scratch[..take]).await?;
                return Ok(h);
            }
            Parsed::Incomplete { need: n } => {
                tcp.read_exact(&mut scratch[..got]).await?;
                need = n;
            }
        }
    }
}

/// Whether a peer's first bytes are a PROXY header (peeked only; nothing is consumed). A peer
/// that closes first sends none.
async fn sends_header(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; V2_SIGNATURE.len()];
    loop {
        let got = tcp.peek(&mut buf).await?;
        if got == 0 {
            return Ok(false);
        }
        match starts_header(&buf[..got]) {
            Some(yes) => return Ok(yes),
            // A prefix of a signature: the peeked bytes stay readable, so wait a moment
            // rather than spin (only a peer splitting its first 12 bytes gets here).
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests;
