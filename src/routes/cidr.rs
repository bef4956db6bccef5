//! CIDR networks and sets of them, pure: the parser shared by `--trusted-proxies`,
//! `--proxy-protocol-from` and the source-range annotations, and [`CidrSet`], the matcher a
//! request consults (sorted prefix lists: one binary search per distinct prefix length, no
//! allocation per lookup). IPv4-mapped IPv6 addresses and networks are their IPv4 form
//! everywhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a CIDR entry (`--trusted-proxies`, `--proxy-protocol-from`, a source range) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("is not an IP address or CIDR")]
    Address,
    #[error("has an invalid prefix length (0-32 for IPv4, 0-128 for IPv6)")]
    PrefixLength,
}

/// One network of a CIDR list, IPv4-mapped IPv6 networks of /96 or longer stored as
/// the IPv4 network they are. `net` has its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { net: u32, len: u8 },
    V6 { net: u128, len: u8 },
}

/// The first `len` bits of a `BITS`-bit number, as a mask (`len` ≤ `BITS`).
fn mask_u32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_u128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). An IPv4-mapped
    /// network (`::ffff:10.0.0.0/104`, `::ffff:10.0.0.1`) is the IPv4 network it maps
    /// (`10.0.0.0/8`, `10.0.0.1/32`); with a prefix shorter than /96 it also covers IPv6
    /// addresses and stays an IPv6 network, which IPv4 clients never match. Host bits are
    /// ignored (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn parse(text: &str) -> Result<Self, CidrError> {
        let text = text.trim();
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            // Digits only: `u8::from_str` would also take a sign.
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
                l.parse::<u8>().map_err(|_| CidrError::PrefixLength)?
            }
            Some(_) => return Err(CidrError::PrefixLength),
            None => max,
        };
        if len > max {
            return Err(CidrError::PrefixLength);
        }
        Ok(match addr {
            IpAddr::V4(v4) => Self::v4(v4, len),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if len >= 96 => Self::v4(v4, len - 96),
                _ => Self::V6 { net: u128::from(v6) & mask_u128(len), len },
            },
        })
    }

    fn v4(addr: Ipv4Addr, len: u8) -> Self {
        Self::V4 { net: u32::from(addr) & mask_u32(len), len }
    }

    /// Whether `ip` (IPv4-mapped addresses taken as IPv4) is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip.to_canonical()) {
            (Self::V4 { net, len }, IpAddr::V4(a)) => u32::from(a) & mask_u32(len) == net,
            (Self::V6 { net, len }, IpAddr::V6(a)) => u128::from(a) & mask_u128(len) == net,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4 { net, len } => write!(f, "{}/{len}", Ipv4Addr::from(net)),
            Self::V6 { net, len } => write!(f, "{}/{len}", Ipv6Addr::from(net)),
        }
    }
}

/// A set of networks, matched by one binary search per distinct prefix length present
/// (at most 33 for IPv4 and 129 for IPv6; real lists use a handful). Built once when a
/// route table is translated; a lookup allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet {
    /// Per prefix length (ascending), the sorted, deduplicated network addresses.
    v4: Vec<(u8, Vec<u32>)>,
    v6: Vec<(u8, Vec<u128>)>,
}

impl CidrSet {
    pub fn new(networks: impl IntoIterator<Item = Cidr>) -> Self {
        let mut v4: Vec<(u8, u32)> = Vec::new();
        let mut v6: Vec<(u8, u128)> = Vec::new();
        for n in networks {
            match n {
                Cidr::V4 { net, len } => v4.push((len, net)),
                Cidr::V6 { net, len } => v6.push((len, net)),
            }
        }
        Self { v4: group(v4), v6: group(v6) }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Number of distinct networks.
    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, n)| n.len()).sum::<usize>() + self.v6.iter().map(|(_, n)| n.len()).sum::<usize>()
    }

    /// Whether `ip` (an IPv4-mapped address taken as IPv4) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().any(|(len, nets)| nets.binary_search(&(a & mask_u32(*len))).is_ok())
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().any(|(len, nets)| nets.binary_search(&(a & mask_u128(*len))).is_ok())
            }
        }
    }

    /// The networks, IPv4 first, each family by prefix length then address.
    pub fn networks(&self) -> impl Iterator<Item = Cidr> + '_ {
        let v4 = self.v4.iter().flat_map(|(len, nets)| nets.iter().map(|&net| Cidr::V4 { net, len: *len }));
        let v6 = self.v6.iter().flat_map(|(len, nets)| nets.iter().map(|&net| Cidr::V6 { net, len: *len }));
        v4.chain(v6)
    }
}

fn group<T: Ord + Copy>(mut items: Vec<(u8, T)>) -> Vec<(u8, Vec<T>)> {
    items.sort_unstable();
    items.dedup();
    let mut out: Vec<(u8, Vec<T>)> = Vec::new();
    for (len, net) in items {
        match out.last_mut() {
            Some((l, nets)) if *l == len => nets.push(net),
            _ => out.push((len, vec![net])),
        }
    }
    out
}

/// Who may use a route, by resolved client address (`wsingress.io/allow-source-ranges`,
/// `wsingress.io/deny-source-ranges`). Deny wins over allow; with an allow list, an address
/// outside it is refused. An allow list whose entries were all malformed is present and
/// empty, so it admits nobody (fail closed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRanges {
    /// `None`: every address not denied is allowed.
    pub allow: Option<CidrSet>,
    pub deny: CidrSet,
}

impl SourceRanges {
    /// No range is configured: nothing to check.
    pub fn is_unrestricted(&self) -> bool {
        self.allow.is_none() && self.deny.is_empty()
    }

    /// Whether `client` may use the route.
    pub fn permits(&self, client: IpAddr) -> bool {
        if self.deny.contains(client) {
            return false;
        }
        self.allow.as_ref().is_none_or(|a| a.contains(client))
    }
}

/// Parse a comma-separated CIDR list (blank items skipped). Good entries make the set; each
/// malformed one is returned with its error, so the caller can report it: it matches nothing.
pub fn parse_list(text: &str) -> (CidrSet, Vec<(String, CidrError)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Cidr::parse(item) {
            Ok(c) => good.push(c),
            Err(e) => bad.push((item.to_string(), e)),
        }
    }
    (CidrSet::new(good), bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(items: &str) -> CidrSet {
        let (s, bad) = parse_list(items);
        assert!(bad.is_empty(), "{bad:?}");
        s
    }

    #[test]
    fn set_matches_like_a_linear_scan() {
        let items = "10.0.0.0/8, 192.168.1.0/24, 192.168.1.7, 172.16.0.0/12, 2001:db8::/32, ::1, ::ffff:100.64.0.0/106";
        let s = set(items);
        let nets: Vec<Cidr> = items.split(',').map(|i| Cidr::parse(i).unwrap()).collect();
        assert_eq!(s.len(), nets.len());
        let probes = [
            "10.1.2.3",
            "11.0.0.1",
            "192.168.1.200",
            "192.168.2.1",
            "172.31.255.255",
            "172.32.0.0",
            "2001:db8::5",
            "2001:db9::",
            "::1",
            "::2",
            "::ffff:10.9.9.9",
            "100.64.0.1",
            "100.128.0.1",
            "0.0.0.0",
        ];
        for p in probes {
            let linear = nets.iter().any(|n| n.contains(ip(p)));
            assert_eq!(s.contains(ip(p)), linear, "{p}");
        }
    }

    #[test]
    fn every_prefix_length_matches_at_its_edges() {
        for len in 0..=32u8 {
            let s = set(&format!("10.20.30.40/{len}"));
            let base = u32::from(Ipv4Addr::new(10, 20, 30, 40)) & mask_u32(len);
            assert!(s.contains(IpAddr::V4(Ipv4Addr::from(base))), "/{len} first");
            assert!(s.contains(IpAddr::V4(Ipv4Addr::from(base | !mask_u32(len)))), "/{len} last");
            if len > 0 {
                let outside = base.wrapping_sub(1);
                assert!(!s.contains(IpAddr::V4(Ipv4Addr::from(outside))), "/{len} before");
            }
        }
        for len in [0u8, 1, 63, 64, 127, 128] {
            let s = set(&format!("2001:db8::1/{len}"));
            assert!(s.contains(ip("2001:db8::1")), "/{len}");
        }
    }

    #[test]
    fn ipv4_mapped_clients_are_ipv4() {
        let s = set("127.0.0.0/8");
        assert!(s.contains(ip("::ffff:127.0.0.1")));
        let s = set("::ffff:127.0.0.2");
        assert!(s.contains(ip("127.0.0.2")));
        assert!(!s.contains(ip("::1")));
    }

    #[test]
    fn malformed_entries_are_returned_and_match_nothing() {
        let (s, bad) = parse_list("10.0.0.0/8, nonsense, 10.0.0.0/33, ,2001:db8::/129");
        assert_eq!(s.len(), 1);
        let names: Vec<&str> = bad.iter().map(|(i, _)| i.as_str()).collect();
        assert_eq!(names, ["nonsense", "10.0.0.0/33", "2001:db8::/129"]);
        assert_eq!(bad[0].1, CidrError::Address);
        assert_eq!(bad[1].1, CidrError::PrefixLength);
    }

    #[test]
    fn source_ranges_deny_wins_and_an_empty_allow_list_admits_nobody() {
        let open = SourceRanges::default();
        assert!(open.is_unrestricted() && open.permits(ip("203.0.113.9")));
        let r = SourceRanges { allow: Some(set("10.0.0.0/8")), deny: set("10.0.0.66") };
        assert!(r.permits(ip("10.1.1.1")));
        assert!(!r.permits(ip("10.0.0.66")), "deny wins");
        assert!(!r.permits(ip("192.0.2.1")), "outside the allow list");
        let closed = SourceRanges { allow: Some(CidrSet::default()), deny: CidrSet::default() };
        assert!(!closed.is_unrestricted());
        assert!(!closed.permits(ip("10.1.1.1")), "an allow list of malformed entries fails closed");
        let deny_only = SourceRanges { allow: None, deny: set("::1, 127.0.0.2") };
        assert!(!deny_only.permits(ip("::1")) && !deny_only.permits(ip("127.0.0.2")));
        assert!(deny_only.permits(ip("127.0.0.1")));
    }

    #[test]
    fn networks_round_trip() {
        let s = set("10.0.0.0/8,10.0.0.0/8, ::1");
        let shown: Vec<String> = s.networks().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);
    }
}
