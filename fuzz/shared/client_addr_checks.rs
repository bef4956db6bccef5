//! Shared by the `trusted_proxies` and `forwarded_for` fuzz targets and
//! `tests/fuzz_regressions.rs`: how a raw input becomes a trusted list, a peer and
//! X-Forwarded-For lines, and the invariants `proxy::client_addr` must keep for any of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wsingress::proxy::client_addr::{Cidr, Hop, TrustedProxies};

fn v6_at(bytes: &[u8]) -> Ipv6Addr {
    let mut b = [0u8; 16];
    b[..bytes.len().min(16)].copy_from_slice(&bytes[..bytes.len().min(16)]);
    Ipv6Addr::from(b)
}

fn v4_at(bytes: &[u8]) -> Ipv4Addr {
    let mut b = [0u8; 4];
    b[..bytes.len().min(4)].copy_from_slice(&bytes[..bytes.len().min(4)]);
    Ipv4Addr::from(b)
}

/// `trusted_proxies` input: 20 bytes of probe addresses (an IPv6, then an IPv4), then text
/// whose comma-separated items are `--trusted-proxies` entries.
///
/// Invariants: parsing never panics; a parsed entry prints as a CIDR that parses back to
/// itself and contains its own network address; an IPv4 address and its IPv4-mapped form
/// are in the same entries; an IPv4-mapped entry of /96 or longer is an IPv4 network; the
/// list holds an address exactly when one of its entries does.
pub fn check_trusted_proxies(input: &[u8]) {
    let (probes, text) = input.split_at(input.len().min(20));
    let v6 = v6_at(probes);
    let v4 = v4_at(probes.get(16..).unwrap_or_default());
    let text = String::from_utf8_lossy(text);
    let items: Vec<String> = text.split(',').map(str::to_string).collect();
    let list = TrustedProxies::parse(&items);
    let mut parsed = Vec::new();
    for item in &items {
        match Cidr::parse(item) {
            Ok(cidr) => {
                let shown = cidr.to_string();
                assert_eq!(Cidr::parse(&shown), Ok(cidr), "{item:?} printed as {shown}");
                let (net, _) = shown.split_once('/').expect("a CIDR prints with its prefix");
                let net: IpAddr = net.parse().expect("a CIDR prints a valid address");
                assert!(cidr.contains(net), "{shown} does not contain its own network");
                for a in [v4, Ipv4Addr::from(u32::from(v4) ^ 1), Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST] {
                    let mapped = IpAddr::V6(a.to_ipv6_mapped());
                    assert_eq!(cidr.contains(IpAddr::V4(a)), cidr.contains(mapped), "{shown} and {a}");
                }
                let _ = cidr.contains(IpAddr::V6(v6));
                let (addr, len) = item.trim().split_once('/').unwrap_or((item.trim(), "128"));
                if let (Ok(addr), Ok(len)) = (addr.parse::<Ipv6Addr>(), len.parse::<u8>())
                    && addr.to_ipv4_mapped().is_some()
                    && len >= 96
                {
                    assert!(matches!(cidr, Cidr::V4 { .. }), "{item:?} is an IPv4 network, not {shown}");
                }
                parsed.push(cidr);
            }
            Err(_) => assert!(list.is_err() || item.trim().is_empty(), "{item:?} refused alone, accepted in a list"),
        }
    }
    if let Ok(list) = list {
        assert_eq!(list.networks(), parsed.as_slice());
        for probe in [IpAddr::V6(v6), IpAddr::V4(v4), IpAddr::V6(v4.to_ipv6_mapped())] {
            assert_eq!(list.contains(probe), parsed.iter().any(|c| c.contains(probe)), "{probe}");
        }
    }
}

/// A `forwarded_for` input: the peer, the trusted list and the X-Forwarded-For lines.
pub struct Walk<'a> {
    pub peer: IpAddr,
    pub trusted: TrustedProxies,
    pub lines: Vec<&'a [u8]>,
}

/// Layout: byte 0 the peer's kind (low 2 bits: 0 IPv4, 1 IPv6, 2 IPv4-mapped); 16 bytes of
/// peer address; a count (mod 9) of trusted networks, each 18 bytes (kind byte, 16 address
/// bytes, prefix byte, made valid); the rest is X-Forwarded-For, one field line per `\n`.
pub fn decode_walk(input: &[u8]) -> Option<Walk<'_>> {
    let (&kind, rest) = input.split_first()?;
    let peer_bytes = rest.get(..16)?;
    let as_ip = |kind: u8, bytes: &[u8]| match kind % 3 {
        0 => IpAddr::V4(v4_at(bytes)),
        1 => IpAddr::V6(v6_at(bytes)),
        _ => IpAddr::V6(v4_at(bytes).to_ipv6_mapped()),
    };
    let peer = as_ip(kind, peer_bytes);
    let (&count, mut rest) = rest[16..].split_first()?;
    let mut items = Vec::new();
    for _ in 0..count % 9 {
        let Some(entry) = rest.get(..18) else { break };
        rest = &rest[18..];
        let ip = as_ip(entry[0], &entry[1..17]);
        let max = match (entry[0] % 3, ip) {
            (2, _) => 128,
            (_, IpAddr::V4(_)) => 32,
            _ => 128,
        };
        items.push(format!("{ip}/{}", entry[17] % (max + 1)));
    }
    let trusted = TrustedProxies::parse(&items).expect("generated entries are valid");
    Some(Walk { peer, trusted, lines: rest.split(|&b| b == b'\n').collect() })
}

/// The walk as the module documentation states it, the slow way: every element collected,
/// then read from the right.
fn reference(w: &Walk<'_>) -> IpAddr {
    let peer = w.peer.to_canonical();
    if !w.trusted.contains(peer) {
        return peer;
    }
    let elements: Vec<&[u8]> = w.lines.iter().flat_map(|l| l.split(|&b| b == b',')).collect();
    let mut client = peer;
    for element in elements.into_iter().rev() {
        match Hop::parse(element) {
            Hop::Empty => continue,
            Hop::Unreadable => break,
            Hop::Endpoint(ip) => return ip,
            Hop::Address(ip) => {
                client = ip;
                if !w.trusted.contains(ip) {
                    break;
                }
            }
        }
    }
    client
}

/// What an element must be, given how `Hop::parse` read it.
fn check_hop(element: &[u8]) {
    let text = String::from_utf8_lossy(element);
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    let unbracketed = |s: &str| s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(s).to_string();
    match Hop::parse(element) {
        Hop::Empty => assert!(text.is_empty(), "{text:?} read as empty"),
        Hop::Address(ip) => {
            let parsed: IpAddr = unbracketed(text).parse().expect("an address element parses");
            assert_eq!(parsed.to_canonical(), ip, "{text:?}");
        }
        Hop::Endpoint(ip) => {
            let (addr, port) = text.rsplit_once(':').expect("an endpoint has a port");
            assert!(port.parse::<u16>().is_ok() && port.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
            let parsed: IpAddr = unbracketed(addr).parse().expect("an endpoint's address parses");
            assert_eq!(parsed.to_canonical(), ip, "{text:?}");
        }
        Hop::Unreadable => assert!(text.parse::<IpAddr>().is_err(), "{text:?} is an address"),
    }
}

/// `forwarded_for` invariants: no panic; an untrusted peer is the client; the client is the
/// peer or an address some element names; the walk agrees with the slow reference; the same
/// elements in one field line give the same answer; every element reads as what it is.
pub fn check_forwarded_for(input: &[u8]) {
    let Some(w) = decode_walk(input) else { return };
    let info = w.trusted.resolve(w.peer, w.lines.iter().copied());
    assert_eq!(info.peer, w.peer.to_canonical());
    assert_eq!(info.trusted_peer, w.trusted.contains(w.peer));
    if !info.trusted_peer {
        assert_eq!(info.client, info.peer, "an untrusted peer named another client");
    }
    assert_eq!(info.client, reference(&w), "walk vs reference");
    let joined = w.lines.join(&b","[..]);
    assert_eq!(w.trusted.resolve(w.peer, [joined.as_slice()]), info, "one line vs several");
    let named = w
        .lines
        .iter()
        .flat_map(|l| l.split(|&b| b == b','))
        .any(|e| matches!(Hop::parse(e), Hop::Address(ip) | Hop::Endpoint(ip) if ip == info.client));
    assert!(info.client == info.peer || named, "client {} is neither the peer nor named", info.client);
    for element in w.lines.iter().flat_map(|l| l.split(|&b| b == b',')) {
        check_hop(element);
    }
}
