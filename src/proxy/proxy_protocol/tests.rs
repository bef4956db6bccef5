//! The PROXY protocol parser, field by field: v1 TCP4/TCP6/UNKNOWN and its syntax errors, v2
//! commands, families, TLVs and lengths, incomplete input at every split, and the signature
//! check for untrusted peers.

use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn complete(buf: &[u8]) -> Header {
    match parse(buf) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// A v2 header: command, family byte, address block and TLVs.
pub fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = addresses.to_vec();
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn inet(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&dst);
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&dport.to_be_bytes());
    a
}

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let line = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
    let h = complete(line);
    assert_eq!(h.len, 46);
    assert_eq!(&line[h.len..h.len + 3], b"GET", "the header ends right after its CRLF");
    assert_eq!((h.version, h.source, h.destination), (1, Some(sa("192.0.2.10:56324")), Some(sa("198.51.100.1:443"))));

    let h = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 4711 80\r\n");
    assert_eq!(h.source, Some(sa("[2001:db8::1]:4711")));
    assert_eq!(h.destination, Some(sa("[2001:db8::2]:80")));

    let h = complete(b"PROXY UNKNOWN\r\n");
    assert_eq!((h.len, h.source), (15, None));
    let h = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
    assert_eq!(h.source, None, "UNKNOWN ignores the rest of the line");

    // The longest v1 headers parse (107 bytes is the specification's worst case).
    let f = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let longest = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(longest.len(), V1_MAX);
    assert_eq!(complete(longest.as_bytes()).len, V1_MAX);
    let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(complete(tcp6.as_bytes()).source, Some(sa(&format!("[{f}]:65535"))));
}

#[test]
fn v1_errors_name_the_problem() {
    let cases: &[(&[u8], HeaderError)] = &[
        (b"GET / HTTP/1.1\r\n", HeaderError::Missing),
        (b"PUT / HTTP/1.1\r\n", HeaderError::Missing),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", HeaderError::V1Syntax("line not ended by CRLF")),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", HeaderError::V1Syntax("protocol is not TCP4, TCP6 or UNKNOWN")),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", HeaderError::V1Syntax("missing field")),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", HeaderError::V1Syntax("extra field")),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", HeaderError::V1Syntax("extra field")),
        (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", HeaderError::V1Syntax("bad IPv4 address")),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", HeaderError::V1Syntax("bad IPv4 address")),
        (b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n", HeaderError::V1Syntax("bad IPv4 address")),
        (b"PROXY TCP6 1.2.3.4 2001:db8::2 1 2\r\n", HeaderError::V1Syntax("bad IPv6 address")),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", HeaderError::V1Syntax("bad port")),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", HeaderError::V1Syntax("bad port")),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n", HeaderError::V1Syntax("bad port")),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", HeaderError::V1Syntax("bad port")),
    ];
    for (buf, want) in cases {
        assert_eq!(parse(buf), Err(*want), "{:?}", String::from_utf8_lossy(buf));
    }
    let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
    assert_eq!(parse(&endless), Err(HeaderError::V1TooLong));
    assert_eq!(parse(&endless[..V1_MAX - 1]), Ok(Parsed::Incomplete { need: None }));
}

#[test]
fn v2_inet_with_tlvs() {
    let addresses = inet([203, 0, 113, 7], [10, 0, 0, 1], 40000, 8080);
    let buf = v2(1, 0x11, &addresses, &[(0x01, b"http/1.1"), (0x04, &[0; 4]), (0x20, &[1, 0, 0, 0, 0])]);
    let mut with_data = buf.clone();
    with_data.extend_from_slice(b"\x16\x03\x01");
    let h = complete(&with_data);
    assert_eq!(h.len, buf.len());
    assert_eq!((h.version, h.tlvs), (2, 3));
    assert_eq!(h.source, Some(sa("203.0.113.7:40000")));
    assert_eq!(h.destination, Some(sa("10.0.0.1:8080")));
}

#[test]
fn v2_inet6_local_unspec_and_unix() {
    let mut a = Vec::new();
    a.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
    a.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    a.extend_from_slice(&1234u16.to_be_bytes());
    a.extend_from_slice(&443u16.to_be_bytes());
    let h = complete(&v2(1, 0x21, &a, &[]));
    assert_eq!(h.source, Some(sa("[2001:db8::7]:1234")));
    assert_eq!(h.destination, Some(sa("[2001:db8::1]:443")));

    // LOCAL (a health check): the address block is ignored, the socket's peer is kept.
    let h = complete(&v2(0, 0x11, &inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &[]));
    assert_eq!((h.source, h.len), (None, 16 + 12));
    let h = complete(&v2(0, 0x00, &[], &[]));
    assert_eq!((h.source, h.len), (None, 16));
    // UNSPEC and AF_UNIX keep the socket's peer.
    assert_eq!(complete(&v2(1, 0x00, &[], &[])).source, None);
    assert_eq!(complete(&v2(1, 0x31, &[0u8; 216], &[(0x05, b"id")])).source, None);
    // UDP over IPv4 carries addresses too.
    assert!(complete(&v2(1, 0x12, &inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &[])).source.is_some());
}

#[test]
fn v2_errors() {
    let good = v2(1, 0x11, &inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &[]);
    let mut bad_version = good.clone();
    bad_version[12] = 0x11;
    assert_eq!(parse(&bad_version), Err(HeaderError::V2Version(1)));
    let mut bad_command = good.clone();
    bad_command[12] = 0x22;
    assert_eq!(parse(&bad_command), Err(HeaderError::V2Command(2)));
    let mut bad_family = good.clone();
    bad_family[13] = 0x41;
    assert_eq!(parse(&bad_family), Err(HeaderError::V2Family(0x41)));
    let mut bad_proto = good.clone();
    bad_proto[13] = 0x13;
    assert_eq!(parse(&bad_proto), Err(HeaderError::V2Family(0x13)));
    assert_eq!(parse(&v2(1, 0x11, &[0u8; 8], &[])), Err(HeaderError::V2Length(8)));
    assert_eq!(parse(&v2(1, 0x21, &[0u8; 12], &[])), Err(HeaderError::V2Length(12)));
    // A TLV whose length runs past the header, and a stray byte after the last TLV.
    let mut tlv = inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
    tlv.extend_from_slice(&[0x01, 0x00, 0x09, b'a']);
    assert_eq!(parse(&v2(1, 0x11, &tlv, &[])), Err(HeaderError::V2Tlv));
    let mut stray = inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2);
    stray.extend_from_slice(&[0x01, 0x00]);
    assert_eq!(parse(&v2(1, 0x11, &stray, &[])), Err(HeaderError::V2Tlv));
    let mut not_sig = good.clone();
    not_sig[6] = b'X';
    assert_eq!(parse(&not_sig), Err(HeaderError::Missing));
    assert_eq!(parse(b"\x16\x03\x01\x02\x00"), Err(HeaderError::Missing), "a TLS ClientHello is no header");
}

#[test]
fn every_split_is_incomplete_until_the_end() {
    let v1 = b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n".to_vec();
    let v2h = v2(1, 0x11, &inet([1, 2, 3, 4], [5, 6, 7, 8], 1, 2), &[(0x01, b"h2")]);
    for buf in [v1, v2h] {
        for cut in 0..buf.len() {
            match parse(&buf[..cut]) {
                Ok(Parsed::Incomplete { need }) => {
                    if cut >= V2_FIXED && buf[0] == b'\r' {
                        assert_eq!(need, Some(buf.len()), "v2 knows its length after 16 bytes");
                    }
                }
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert_eq!(complete(&buf).len, buf.len());
    }
}

#[test]
fn signature_sniffing_for_untrusted_peers() {
    assert_eq!(starts_header(b"PROXY TCP4"), Some(true));
    assert_eq!(starts_header(&V2_SIGNATURE), Some(true));
    assert_eq!(starts_header(b"PRO"), None);
    assert_eq!(starts_header(b"\r\n\r\n"), None);
    assert_eq!(starts_header(b"POST / HTTP/1.1"), Some(false));
    assert_eq!(starts_header(b"PUT"), Some(false));
    assert_eq!(starts_header(b"GET / HTTP/1.1"), Some(false));
    assert_eq!(starts_header(b"\x16\x03\x01"), Some(false));
}

#[test]
fn refusal_labels() {
    assert_eq!(Refused::Untrusted.label(), Some("proxy_protocol_untrusted"));
    assert_eq!(Refused::Malformed(HeaderError::Missing).label(), Some("proxy_protocol_missing"));
    assert_eq!(Refused::Malformed(HeaderError::V2Tlv).label(), Some("proxy_protocol_malformed"));
    assert_eq!(Refused::Timeout.label(), Some("proxy_protocol_timeout"));
    assert_eq!(Refused::Closed.label(), None);
}

#[test]
fn trust_list() {
    let any = ProxyProtocol::new(CidrSet::default());
    assert!(any.trusts("192.0.2.1".parse().unwrap()));
    let only = ProxyProtocol::new(crate::routes::cidr::parse_list("127.0.0.1/32").0);
    assert!(only.trusts("127.0.0.1".parse().unwrap()));
    assert!(only.trusts("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!only.trusts("127.0.0.2".parse().unwrap()));
}

/// The header is read off the socket exactly: the bytes after it stay for the front door,
/// whether they arrived with it or later, and a header split across writes is reassembled.
#[tokio::test]
async fn reads_exactly_the_header() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let header = v2(1, 0x11, &inet([198, 51, 100, 9], [10, 0, 0, 1], 5555, 80), &[(0x02, b"example.com")]);
    let writer = {
        let header = header.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.set_nodelay(true).unwrap();
            for piece in header.chunks(5) {
                c.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            c
        })
    };
    let (mut tcp, peer) = listener.accept().await.unwrap();
    let pp = ProxyProtocol::new(CidrSet::default());
    let client = pp.accept(&mut tcp, peer, Duration::from_secs(5)).await.unwrap();
    assert_eq!(client, sa("198.51.100.9:5555"));
    let _c = writer.await.unwrap();
    let mut rest = [0u8; 18];
    tcp.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"GET / HTTP/1.1\r\n\r\n");
}
