use super::*;

const MAX: usize = 16 * 1024;

fn parse(raw: &str) -> Result<RequestHead, HeadError> {
    parse_request(raw.as_bytes(), MAX).map(|h| h.expect("complete head"))
}

fn status(raw: &str) -> u16 {
    match parse(raw) {
        Ok(_) => 200,
        Err(e) => e.status(),
    }
}

#[test]
fn a_plain_get_parses_into_spans() {
    let raw = "GET /chat/room?x=1 HTTP/1.1\r\nHost: Chat.Example.com:8080\r\nX-A: 1\r\nx-a: 2\r\n\r\nrest";
    let h = parse(raw).unwrap();
    let b = raw.as_bytes();
    assert_eq!(h.len, raw.len() - 4);
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.target.str(b), "/chat/room?x=1");
    assert_eq!(h.path.str(b), "/chat/room");
    assert_eq!(h.query.str(b), "?x=1");
    assert_eq!(h.host.map(|s| s.str(b)), Some("Chat.Example.com:8080"));
    assert_eq!(h.values(b, "x-a").collect::<Vec<_>>(), [b"1", b"2"]);
    assert!(h.keep_alive);
    assert_eq!(h.body, BodyFraming::None);
    assert!(!h.wants_websocket());
}

#[test]
fn incomplete_heads_ask_for_more_until_the_limit() {
    let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for cut in 0..raw.len() {
        assert!(parse_request(&raw[..cut], MAX).unwrap().is_none(), "complete at {cut}");
    }
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "y".repeat(100));
    assert_eq!(parse_request(long.as_bytes(), 64).unwrap_err(), HeadError::TooLarge);
    let complete = format!("{long}\r\n");
    assert_eq!(parse_request(complete.as_bytes(), 64).unwrap_err().status(), 431);
}

/// Every refusal RFC 9112 asks for, with its status.
#[test]
fn refusals_have_exact_statuses() {
    let cases: &[(&str, u16, &str)] = &[
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "duplicate Host"),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "two different Hosts"),
        ("GET / HTTP/1.1\r\nX: 1\r\n\r\n", 400, "missing Host on 1.1"),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid Host"),
        ("GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400, "invalid Host port"),
        ("GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", 400, "Host disagrees with authority"),
        ("GET http://u@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", 400, "userinfo in authority"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "CL+TE"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400, "TE+CL"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "differing CLs"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n", 400, "differing CL list"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "negative CL"),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400, "CL overflow"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unknown coding"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400, "chunked not last"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "chunked twice",
        ),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "TE in 1.0"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n", 400, "obs-fold"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400, "control byte in a value"),
        ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n", 400, "space in a field name"),
        ("GET / HTTP/1.1\r\nHost: a\r\nX : 1\r\n\r\n", 400, "space before the colon"),
        ("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", 400, "non-ASCII target"),
        ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, "fragment"),
        ("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "relative target"),
        ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk for GET"),
        ("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "ftp scheme"),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501, "CONNECT"),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0 over HTTP/1 framing"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 5\r\n\r\n",
            400,
            "upgrade with a body",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "upgrade with a chunked body",
        ),
    ];
    for (raw, want, what) in cases {
        assert_eq!(status(raw), *want, "{what}: {raw:?}");
    }
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", "X: 1\r\n".repeat(MAX_FIELDS));
    assert_eq!(status(&many), 431, "too many fields");
}

#[test]
fn acceptable_heads_are_accepted() {
    let cases: &[&str] = &[
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost:\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a.example:80/x HTTP/1.1\r\nHost: A.example\r\n\r\n",
        "GET https://a.example/x HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n",
        "GET / HTTP/1.1\nHost: a\n\n",
    ];
    for raw in cases {
        assert!(parse(raw).is_ok(), "{raw:?}: {:?}", parse(raw));
    }
}

#[test]
fn absolute_form_authority_is_the_host() {
    let raw = "GET http://Chat.example.com/ws?a=b HTTP/1.1\r\nHost: chat.example.com\r\n\r\n";
    let h = parse(raw).unwrap();
    let b = raw.as_bytes();
    assert!(h.absolute);
    assert_eq!(h.host.unwrap().str(b), "Chat.example.com");
    assert_eq!(h.path.str(b), "/ws");
    assert_eq!(h.query.str(b), "?a=b");
    // Without a Host field the authority still names the host.
    let raw = "GET http://a.example HTTP/1.0\r\n\r\n";
    let h = parse(raw).unwrap();
    assert_eq!(h.host.unwrap().str(raw.as_bytes()), "a.example");
    assert_eq!(h.path.str(raw.as_bytes()), "");
}

#[test]
fn body_framing_and_connection_state() {
    let b = |raw: &str| parse(raw).unwrap();
    assert_eq!(b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n").body, BodyFraming::Length(12));
    assert_eq!(b("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").body, BodyFraming::None);
    assert_eq!(b("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").body, BodyFraming::Chunked);
    assert!(!b("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!b("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(b("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(b("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    let ws = b(
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(ws.upgrade.websocket && ws.upgrade.connection_upgrade);
    assert_eq!(ws.upgrade.key_count, 1);
    assert!(ws.upgrade.version.is_some());
}

#[test]
fn paths_are_normalised_for_matching() {
    let cases: &[(&str, &str)] = &[
        ("/", "/"),
        ("/chat/room", "/chat/room"),
        ("/%61dmin", "/admin"),
        ("/%2e%2e/admin", "/admin"),
        ("/a/%2E%2E/b", "/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a//b", "/a/b"),
        ("//admin", "/admin"),
        ("/a/b/", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/..", "/"),
        ("/../../x", "/x"),
        ("/a%2fb", "/a%2Fb"),
        ("/%7euser", "/~user"),
        ("/a%20b", "/a%20b"),
        ("*", "*"),
        ("", "/"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw).unwrap(), *want, "{raw}");
    }
    assert!(matches!(normalize_path("/plain/path").unwrap(), Cow::Borrowed(_)));
    assert!(normalize_path("/a%2").is_err());
    assert!(normalize_path("/a%zz").is_err());
}

fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() && !d.is_done() {
        let end = (pos + step).min(input.len());
        let mut piece = &input[pos..end];
        while !piece.is_empty() && !d.is_done() {
            let (used, data) = d.decode(piece)?;
            if let Some(r) = data {
                out.extend_from_slice(&piece[r]);
            }
            piece = &piece[used..];
            pos += used;
        }
    }
    assert!(d.is_done(), "body not complete");
    Ok((out, pos))
}

#[test]
fn chunked_bodies_decode_in_any_split() {
    let body = b"3\r\nabc\r\n5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    for step in 1..body.len() {
        let (data, used) = decode_all(body, step).unwrap();
        assert_eq!(data, b"abchello0123456789", "step {step}");
        assert_eq!(&body[used..], b"NEXT", "step {step}");
    }
    let lf_only = b"2\nhi\n0\n\n";
    assert_eq!(decode_all(lf_only, 3).unwrap().0, b"hi");
}

#[test]
fn chunked_refuses_bad_sizes_and_overflow() {
    assert_eq!(decode_all(b"x\r\n", 8).unwrap_err(), ChunkError::InvalidSize);
    assert_eq!(decode_all(b"\r\n", 8).unwrap_err(), ChunkError::InvalidSize);
    assert_eq!(decode_all(b"3\rx", 8).unwrap_err(), ChunkError::InvalidSize);
    assert_eq!(decode_all(b"2\r\nabX", 8).unwrap_err(), ChunkError::MissingCrlf);
    // A size near u64::MAX overflows instead of wrapping.
    assert_eq!(decode_all(b"fffffffffffffffff\r\n", 4).unwrap_err(), ChunkError::Overflow);
    let trailer = format!("0\r\n{}", "T: v\r\n".repeat(4000));
    assert_eq!(decode_all(trailer.as_bytes(), 64).unwrap_err(), ChunkError::TrailerTooLarge);
}
