//! Who the client is, pure: the `--trusted-proxies` CIDR list (IPv4-mapped entries
//! normalised), and the right-to-left walk over `X-Forwarded-For` field lines taken as raw
//! bytes, without allocating.
//!
//! # The walk
//!
//! A peer outside the trusted list is the client, whatever it sends. A trusted peer's
//! `X-Forwarded-For` is read from its right end (the entry the nearest proxy appended) towards
//! the left, across field lines in the order received (RFC 9110 §5.3: several lines are one
//! comma-separated list). Each element is one of:
//!
//! - an address (`192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`): it becomes the client; the walk
//!   goes on to the left only while the address is itself a trusted proxy;
//! - an address with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`), as Azure Application
//!   Gateway appends: its address becomes the client and the walk **ends** there, even when
//!   that address is in a trusted range. The element was written by the trusted proxy to its
//!   right, so its address is as credible as a bare one in that place (taking the proxy's own
//!   address instead would make every client behind such a gateway one client, for `ip-hash`
//!   and per-client limits alike); but an address with a port names a connecting client, never
//!   a proxy hop whose own list could be believed, so nothing to its left is read;
//! - empty (`a, , b`): skipped, as RFC 9110 §5.6.1 asks of list recipients;
//! - anything else (`unknown`, an obfuscated name, `010.0.0.1`, a zone index, a bad port): the
//!   walk **ends** and the client is the last trusted address reached (the peer, or the trusted
//!   proxy that wrote the element). Skipping it instead would let the entries further left,
//!   which the original client wrote itself, name any address it likes.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are the IPv4 address everywhere: as the
//! peer, in the header and in the trusted list (`::ffff:10.0.0.0/104` is `10.0.0.0/8`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::HeaderMap;

/// The client as seen by the proxy: the TCP peer, and the address it speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The TCP peer (appended to X-Forwarded-For).
    pub peer: IpAddr,
    /// The original client (X-Real-IP, ip-hash): the peer, or when the peer is a trusted
    /// proxy, what the X-Forwarded-For walk found (see the module documentation).
    pub client: IpAddr,
    /// The peer is a trusted proxy, so its X-Forwarded-Proto/-Host are kept.
    pub trusted_peer: bool,
}

impl ClientInfo {
    /// A client that connected directly (no trusted proxy in between).
    pub fn direct(peer: IpAddr) -> Self {
        let peer = peer.to_canonical();
        Self { peer, client: peer, trusted_peer: false }
    }
}

/// The CIDR parser lives with the route model (source ranges share it); re-exported here for
/// `--trusted-proxies`.
pub use crate::routes::cidr::{Cidr, CidrError};

/// CIDR list for `--trusted-proxies`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parse the flag's items (blank ones are skipped); the error names the bad item.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        items
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|item| Cidr::parse(item).map_err(|e| format!("--trusted-proxies: `{item}` {e}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// The networks, normalised.
    pub fn networks(&self) -> &[Cidr] {
        &self.0
    }

    /// No peer is trusted: the client is always the peer.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// Resolve who the client is from the TCP peer and the raw `X-Forwarded-For` field lines
    /// in the order they were received (see the module documentation). Allocates nothing.
    pub fn resolve<'a, I>(&self, peer: IpAddr, forwarded_for: I) -> ClientInfo
    where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: DoubleEndedIterator,
    {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return ClientInfo::direct(peer);
        }
        let mut client = peer;
        'walk: for line in forwarded_for.into_iter().rev() {
            for element in line.rsplit(|&b| b == b',') {
                match Hop::parse(element) {
                    Hop::Empty => {}
                    Hop::Address(ip) => {
                        client = ip;
                        if !self.contains(ip) {
                            break 'walk;
                        }
                    }
                    Hop::Endpoint(ip) => {
                        client = ip;
                        break 'walk;
                    }
                    Hop::Unreadable => break 'walk,
                }
            }
        }
        ClientInfo { peer, client, trusted_peer: true }
    }

    /// [`TrustedProxies::resolve`] over the `X-Forwarded-For` lines of a header map.
    pub fn client_info(&self, peer: IpAddr, headers: &HeaderMap) -> ClientInfo {
        self.resolve(peer, headers.get_all("x-forwarded-for").iter().map(|v| v.as_bytes()))
    }
}

/// One element of an `X-Forwarded-For` list, as the walk reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// A bare address (IPv6 possibly in brackets), IPv4-mapped ones as IPv4.
    Address(IpAddr),
    /// An address with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`): the address.
    Endpoint(IpAddr),
    /// Nothing but optional whitespace.
    Empty,
    /// Anything else.
    Unreadable,
}

impl Hop {
    /// Read one list element (the bytes between two commas; spaces and tabs around it are
    /// optional whitespace, RFC 9110 §5.6.3).
    pub fn parse(element: &[u8]) -> Self {
        let element = element.trim_ascii_start().trim_ascii_end();
        if element.is_empty() {
            return Self::Empty;
        }
        let Ok(text) = std::str::from_utf8(element) else { return Self::Unreadable };
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Self::Address(ip.to_canonical());
        }
        if let Some(rest) = text.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else { return Self::Unreadable };
            let Ok(v6) = v6.parse::<Ipv6Addr>() else { return Self::Unreadable };
            let ip = IpAddr::V6(v6).to_canonical();
            return match after {
                "" => Self::Address(ip),
                _ if after.strip_prefix(':').is_some_and(is_port) => Self::Endpoint(ip),
                _ => Self::Unreadable,
            };
        }
        // Only IPv4 takes an unbracketed port: an IPv6 address with one would be ambiguous.
        match text.split_once(':') {
            Some((v4, port)) if is_port(port) => match v4.parse::<Ipv4Addr>() {
                Ok(v4) => Self::Endpoint(IpAddr::V4(v4)),
                Err(_) => Self::Unreadable,
            },
            _ => Self::Unreadable,
        }
    }
}

/// 1–5 ASCII digits, at most 65535.
fn is_port(text: &str) -> bool {
    (1..=5).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests;
