//! Tests of the trusted-proxy list and the X-Forwarded-For walk: CIDR forms (IPv4-mapped ones
//! normalised, every prefix length without a panic), element forms, and the walk's verdicts,
//! spoofing attempts included.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn trusted(items: &[&str]) -> TrustedProxies {
    TrustedProxies::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

#[test]
fn cidr_forms() {
    let cases: &[(&str, &str)] = &[
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        (" 192.168.1.1 ", "192.168.1.1/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("::/0", "::/0"),
        // IPv4-mapped networks are the IPv4 networks they map.
        ("::ffff:10.0.0.1", "10.0.0.1/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:a00:1/120", "10.0.0.0/24"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        // Shorter than /96 it covers IPv6 addresses too: it stays IPv6.
        ("::ffff:10.0.0.0/95", "::fffe:0:0/95"),
        ("::ffff:10.0.0.0/64", "::/64"),
    ];
    for (text, want) in cases {
        let cidr = Cidr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(cidr.to_string(), *want, "{text}");
        assert_eq!(Cidr::parse(&cidr.to_string()), Ok(cidr), "{text} round trip");
    }
    for text in [
        "10.0.0.0/33",
        "::/129",
        "::ffff:10.0.0.1/129",
        "10.0.0.0/",
        "10.0.0.0/+8",
        "10.0.0.0/-1",
        "10.0.0.0/0008",
        "10.0.0.0/8/9",
    ] {
        assert_eq!(Cidr::parse(text), Err(CidrError::PrefixLength), "{text}");
    }
    for text in ["", "nope", "/8", "[::1]", "fe80::1%eth0", "10.0.0", "010.0.0.1", "1.2.3.4:80"] {
        assert_eq!(Cidr::parse(text), Err(CidrError::Address), "{text}");
    }
}

#[test]
fn flag_errors_name_the_item_and_blank_items_are_skipped() {
    let items = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let err = TrustedProxies::parse(&items(&["10.0.0.0/8", "10.0.0.0/33"])).unwrap_err();
    assert_eq!(err, "--trusted-proxies: `10.0.0.0/33` has an invalid prefix length (0-32 for IPv4, 0-128 for IPv6)");
    let err = TrustedProxies::parse(&items(&["nope"])).unwrap_err();
    assert_eq!(err, "--trusted-proxies: `nope` is not an IP address or CIDR");
    let t = TrustedProxies::parse(&items(&["", " ", "10.0.0.0/8"])).unwrap();
    assert_eq!(t.networks().len(), 1);
    assert!(TrustedProxies::parse(&[]).unwrap().is_empty());
}

/// Issue 11: `--trusted-proxies ::ffff:10.0.0.1` passed validation and then every IPv4 request
/// panicked (a /128 prefix compared over a 4-byte address).
#[test]
fn an_ipv4_mapped_entry_matches_ipv4_peers_without_a_panic() {
    let t = trusted(&["::ffff:10.0.0.1"]);
    assert!(t.contains(ip("10.0.0.1")));
    assert!(t.contains(ip("::ffff:10.0.0.1")));
    assert!(!t.contains(ip("10.0.0.2")));
    assert!(!t.contains(ip("::1")));
    let info = t.resolve(ip("10.0.0.1"), [&b"203.0.113.9"[..]]);
    assert_eq!((info.client, info.trusted_peer), (ip("203.0.113.9"), true));

    // Every prefix length of a mapped network, against IPv4, mapped and IPv6 addresses.
    let probes = ["10.0.0.1", "10.255.0.0", "11.0.0.1", "0.0.0.0", "255.255.255.255", "::ffff:10.0.0.1", "::1", "::"];
    for len in 0..=128 {
        let t = trusted(&[&format!("::ffff:10.0.0.1/{len}")]);
        for probe in probes {
            let probe = ip(probe);
            let expected = if len >= 96 {
                Cidr::parse(&format!("10.0.0.1/{}", len - 96)).unwrap().contains(probe)
            } else {
                // An IPv6 network: IPv4 addresses (mapped ones included) never match it.
                probe.to_canonical().is_ipv6()
                    && Cidr::parse(&format!("::ffff:10.0.0.1/{len}")).unwrap().contains(probe)
            };
            assert_eq!(t.contains(probe), expected, "/{len} {probe}");
        }
    }
}

#[test]
fn prefix_lengths_at_the_edges() {
    let t = trusted(&["0.0.0.0/0"]);
    assert!(t.contains(ip("1.2.3.4")) && t.contains(ip("::ffff:1.2.3.4")) && !t.contains(ip("::1")));
    let t = trusted(&["::/0"]);
    assert!(t.contains(ip("2001:db8::1")) && !t.contains(ip("1.2.3.4")));
    let t = trusted(&["192.0.2.128/25"]);
    assert!(t.contains(ip("192.0.2.128")) && t.contains(ip("192.0.2.255")) && !t.contains(ip("192.0.2.127")));
    let t = trusted(&["2001:db8::1/127"]);
    assert!(t.contains(ip("2001:db8::")) && t.contains(ip("2001:db8::1")) && !t.contains(ip("2001:db8::2")));
}

#[test]
fn element_forms() {
    use Hop::*;
    let cases: &[(&[u8], Hop)] = &[
        (b"192.0.2.1", Address(ip("192.0.2.1"))),
        (b" \t192.0.2.1 ", Address(ip("192.0.2.1"))),
        (b"2001:db8::1", Address(ip("2001:db8::1"))),
        (b"[2001:db8::1]", Address(ip("2001:db8::1"))),
        (b"::ffff:192.0.2.1", Address(ip("192.0.2.1"))),
        (b"::1:80", Address(ip("::1:80"))),
        (b"192.0.2.1:4711", Endpoint(ip("192.0.2.1"))),
        (b"192.0.2.1:65535", Endpoint(ip("192.0.2.1"))),
        (b"[2001:db8::1]:4711", Endpoint(ip("2001:db8::1"))),
        (b"[::ffff:192.0.2.1]:80", Endpoint(ip("192.0.2.1"))),
        (b"", Empty),
        (b"  ", Empty),
        (b"unknown", Unreadable),
        (b"_hidden", Unreadable),
        (b"010.0.0.1", Unreadable),
        (b"fe80::1%eth0", Unreadable),
        (b"192.0.2.1:", Unreadable),
        (b"192.0.2.1:65536", Unreadable),
        (b"192.0.2.1:0x50", Unreadable),
        (b"192.0.2.1:+80", Unreadable),
        (b"192.0.2.1:80:81", Unreadable),
        (b"[2001:db8::1]:", Unreadable),
        (b"[2001:db8::1]x", Unreadable),
        (b"[2001:db8::1", Unreadable),
        (b"[192.0.2.1]", Unreadable),
        (b"example.com:80", Unreadable),
        (b"\xff\xfe", Unreadable),
        (b"1.2.3.4 5.6.7.8", Unreadable),
    ];
    for (element, want) in cases {
        assert_eq!(Hop::parse(element), *want, "{:?}", String::from_utf8_lossy(element));
    }
}

/// (peer, X-Forwarded-For lines, expected client) with `10.0.0.0/8` and `fd00::/8` trusted.
const WALKS: &[(&str, &[&str], &str)] = &[
    // A trusted peer without the header is the client.
    ("10.0.0.5", &[], "10.0.0.5"),
    ("10.0.0.5", &["1.2.3.4, 10.9.9.9"], "1.2.3.4"),
    // Every hop trusted: the left-most one reached.
    ("10.0.0.5", &["10.1.1.1, 10.2.2.2"], "10.1.1.1"),
    // Several field lines are one list (RFC 9110 §5.3), read from the last.
    ("10.0.0.5", &["1.2.3.4", "10.0.0.7"], "1.2.3.4"),
    ("10.0.0.5", &["6.6.6.6, 1.2.3.4", "10.0.0.7"], "1.2.3.4"),
    // Issue 11, spoofing behind a trusted proxy: an address with a port (Azure appends one)
    // ends the walk with its address; the client's own entries to its left are never read.
    ("10.0.0.5", &["6.6.6.6, 198.51.100.7:5555"], "198.51.100.7"),
    ("10.0.0.5", &["6.6.6.6", "198.51.100.7:5555"], "198.51.100.7"),
    ("10.0.0.5", &["6.6.6.6, [2001:db8::7]:443"], "2001:db8::7"),
    // ... even when that address is in a trusted range.
    ("10.0.0.5", &["6.6.6.6, 10.0.0.9:80"], "10.0.0.9"),
    // An element nobody can read ends the walk at the last trusted address.
    ("10.0.0.5", &["6.6.6.6, unknown"], "10.0.0.5"),
    ("10.0.0.5", &["6.6.6.6, unknown, 10.0.0.7"], "10.0.0.7"),
    ("10.0.0.5", &["6.6.6.6, 010.0.0.1"], "10.0.0.5"),
    ("10.0.0.5", &["6.6.6.6, 1.2.3.4:99999"], "10.0.0.5"),
    // Empty elements are skipped (RFC 9110 §5.6.1).
    ("10.0.0.5", &["1.2.3.4, , 10.0.0.7,"], "1.2.3.4"),
    ("10.0.0.5", &[",,, "], "10.0.0.5"),
    ("10.0.0.5", &["", "1.2.3.4", ""], "1.2.3.4"),
    // IPv6 and IPv4-mapped forms.
    ("fd00::1", &["2001:db8::9, [fd00::2]"], "2001:db8::9"),
    ("::ffff:10.0.0.5", &["::ffff:1.2.3.4"], "1.2.3.4"),
    ("10.0.0.5", &["\t1.2.3.4\t,\t10.0.0.7 "], "1.2.3.4"),
    // An untrusted peer is the client, whatever it sends.
    ("192.0.2.1", &["1.2.3.4"], "192.0.2.1"),
    ("::ffff:192.0.2.1", &["1.2.3.4"], "192.0.2.1"),
];

#[test]
fn the_walk_stops_at_the_first_untrusted_or_unreadable_entry() {
    let t = trusted(&["10.0.0.0/8", "fd00::/8"]);
    for &(peer, lines, want) in WALKS {
        let info = t.resolve(ip(peer), lines.iter().map(|l| l.as_bytes()));
        assert_eq!(info.client, ip(want), "peer {peer}, lines {lines:?}");
        assert_eq!(info.peer, ip(peer).to_canonical());
        assert_eq!(info.trusted_peer, t.contains(ip(peer)), "peer {peer}");

        // The same lines joined into one give the same answer.
        let joined = lines.join(",");
        assert_eq!(t.resolve(ip(peer), [joined.as_bytes()]), info, "joined {joined:?}");

        // And so does a header map carrying them.
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", http::HeaderValue::from_str(line).unwrap());
        }
        assert_eq!(t.client_info(ip(peer), &map), info);
    }
}

#[test]
fn nobody_trusted_means_the_peer_is_the_client() {
    let t = TrustedProxies::default();
    let info = t.resolve(ip("10.1.2.3"), [&b"6.6.6.6"[..]]);
    assert_eq!(info, ClientInfo { peer: ip("10.1.2.3"), client: ip("10.1.2.3"), trusted_peer: false });
}
