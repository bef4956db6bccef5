//! Abuse and limits on loopback: slow and oversized request heads, request-smuggling shapes,
//! per-client and per-route connection limits, allowed origins, unknown hosts and
//! non-WebSocket upgrades. Requests that must be refused are checked never to reach a
//! backend: the backends here record every request head they receive.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsingress::app::Running;
use wsingress::routes::RouteSettings;

async fn proxy_to(rec: &Recorder, extra: &[&str]) -> Running {
    proxy(&[rec.addr], extra).await
}

fn status_of(buf: &[u8]) -> u16 {
    parse_response(buf).0
}

// ---------------------------------------------------------------- request heads

#[tokio::test]
async fn slow_header_sender_is_closed_after_the_header_timeout() {
    let rec = Recorder::start().await;
    let p = proxy_to(&rec, &["--header-timeout", "500ms"]).await;
    // Half a head, then silence.
    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ").await.unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed, "a stalled head must be closed");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "closed after {took:?}");

    // Dribbling one byte every 100 ms does not reset the clock (slowloris).
    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow\r\n").await.unwrap();
    let mut closed_after = None;
    for _ in 0..50 {
        if s.write_all(b"X-Drip: a\r\n").await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        let mut b = [0u8; 512];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut b)).await {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("a dribbling head must be closed");
    assert!(closed_after < Duration::from_secs(3), "closed after {closed_after:?}");
    assert!(rec.heads().is_empty(), "no incomplete head may reach the backend");
    // The proxy is still serving.
    assert_eq!(http_get(p.proxy_addr, "ok", "/").await.0, 200);
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let rec = Recorder::start().await;
    let p = proxy_to(&rec, &["--max-header-bytes", "16384"]).await;
    let big = "a".repeat(20 * 1024);
    let (status, head, _) =
        http_raw(p.proxy_addr, &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"))
            .await;
    assert_eq!(status, 431, "{head}");
    // The same as an upgrade.
    let (status, head, _) = http_raw(p.proxy_addr, &upgrade_request("x", "/", &format!("X-Big: {big}\r\n"))).await;
    assert_eq!(status, 431, "{head}");
    assert!(rec.heads().is_empty());
    // Under the limit passes.
    let fits = "a".repeat(12 * 1024);
    let (status, _, _) =
        http_raw(p.proxy_addr, &format!("GET / HTTP/1.1\r\nHost: x\r\nX-Fits: {fits}\r\nConnection: close\r\n\r\n"))
            .await;
    assert_eq!(status, 200);
    assert_eq!(rec.heads().len(), 1);
}

#[tokio::test]
async fn request_smuggling_shapes_get_400_and_never_reach_the_backend() {
    let rec = Recorder::start().await;
    let p = proxy_to(&rec, &[]).await;
    let shapes: &[(&str, &str)] = &[
        (
            "two different Content-Length values",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "Content-Length list with different values",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "Transfer-Encoding: chunked folded onto an obs-fold line",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding whose last coding is not chunked",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        ),
        // RFC 9112 §6.1: an unknown transfer coding gets 501 (Not Implemented).
        ("unknown Transfer-Encoding", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
        (
            "whitespace before the colon",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        ("negative Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        ("bare LF line ends in Content-Length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\n0\r\n\r\nx"),
    ];
    let mut failures = Vec::new();
    // Content-Length together with Transfer-Encoding: RFC 9112 §6.3 lets a server refuse
    // it, and a proxy should (a backend that honours the other one is smuggled a request).
    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let (buf, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let responses = String::from_utf8_lossy(&buf).matches("HTTP/1.1 ").count();
    assert_eq!(status_of(&buf), 400, "{}", String::from_utf8_lossy(&buf));
    assert_eq!((responses, closed), (1, true), "one response, then the connection closes");
    let heads = rec.heads();
    assert!(heads.is_empty(), "{heads:#?}");
    let forwarded_before = heads.len();

    for (name, request) in shapes {
        let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let (buf, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
        let status = status_of(&buf);
        let responses = String::from_utf8_lossy(&buf).matches("HTTP/1.1 ").count();
        let want = if name.starts_with("unknown Transfer-Encoding") { 501 } else { 400 };
        if status != want || !closed || responses != 1 {
            failures.push(format!("{name}: status {status}, {responses} responses, closed: {closed}"));
        }
    }
    let heads = rec.heads()[forwarded_before..].to_vec();
    assert!(
        failures.is_empty() && heads.is_empty(),
        "smuggling shapes must get one 400 (501 for an unknown coding) and a close, and never reach the backend:\n{}\nbackend saw: {heads:#?}",
        failures.join("\n")
    );
    assert_eq!(http_get(p.proxy_addr, "x", "/").await.0, 200);
}

// ---------------------------------------------------------------- connection limits

#[tokio::test]
async fn too_many_connections_from_one_client_get_429() {
    let echo = echo("e1", "").await;
    let p = proxy(&[echo.addr], &["--max-connections-per-client", "2"]).await;
    let url = ws_url(p.proxy_addr, "/");
    let mut a = connect(&url).await;
    let b = connect(&url).await;
    // A third WebSocket from the same address is refused...
    match connect_with(&url, &[]).await {
        Ok(_) => panic!("a third tunnel from the same client was accepted with --max-connections-per-client 2"),
        Err(err) => assert!(err.to_string().contains("429"), "{err}"),
    }
    // ... and so is plain HTTP.
    let (status, head, _) = http_get(p.proxy_addr, "x", "/").await;
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    // Existing tunnels are untouched; a freed slot is usable again.
    assert_eq!(round_trip(&mut a, "still here").await, "still here");
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    let c = loop {
        // The slot is released when the proxy notices the client left: poll with a deadline.
        match connect_with(&url, &[]).await {
            Ok((ws, _)) => break Some(ws),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => break None,
        }
    };
    let mut c = c.expect("a freed slot is usable again");
    assert_eq!(round_trip(&mut c, "again").await, "again");
}

#[tokio::test]
async fn route_max_connections_gives_503_when_full() {
    let echo = echo("e1", "").await;
    let p = manual_proxy(&[]).await;
    let settings = RouteSettings { max_connections: Some(2), ..RouteSettings::default() };
    p.publisher().publish(table(&[("limited.test", "/", "limited", &[echo.addr])], settings), &[]);
    let url = ws_url(p.proxy_addr, "/");
    let host = [("host", "limited.test")];
    let mut a = connect_with(&url, &host).await.unwrap().0;
    let b = connect_with(&url, &host).await.unwrap().0;
    let err = connect_with(&url, &host).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(round_trip(&mut a, "untouched").await, "untouched");
    drop(b);
    wait_until(Duration::from_secs(5), "a route slot frees up", || {
        let url = url.clone();
        async move { connect_with(&url, &[("host", "limited.test")]).await.is_ok() }
    })
    .await;
}

// ---------------------------------------------------------------- routing decisions

#[tokio::test]
async fn disallowed_origin_gets_403_before_any_upstream_contact() {
    let rec = Recorder::start().await;
    let p = manual_proxy(&[]).await;
    let settings = RouteSettings { allowed_origins: vec!["https://good.example".into()], ..RouteSettings::default() };
    p.publisher().publish(table(&[("guarded.test", "/", "guarded", &[rec.addr])], settings), &[]);
    for origin in ["Origin: https://evil.example\r\n", "Origin: https://good.example.evil\r\n", ""] {
        let (status, head, _) = http_raw(p.proxy_addr, &upgrade_request("guarded.test", "/", origin)).await;
        assert_eq!(status, 403, "{origin:?}: {head}");
    }
    assert_eq!(rec.accepted(), 0, "a refused origin must not open an upstream connection");
    // An allowed origin (any case) does reach the backend (which refuses the upgrade with 200).
    let (status, _, _) =
        http_raw(p.proxy_addr, &upgrade_request("guarded.test", "/", "Origin: HTTPS://Good.Example\r\n")).await;
    assert_eq!(status, 200);
    assert_eq!(rec.accepted(), 1);
}

#[tokio::test]
async fn unknown_host_never_reaches_an_upstream() {
    let rec = Recorder::start().await;
    let p = manual_proxy(&[]).await;
    p.publisher().publish(table(&[("known.test", "/", "known", &[rec.addr])], RouteSettings::default()), &[]);
    assert_eq!(http_get(p.proxy_addr, "unknown.test", "/").await.0, 404);
    assert_eq!(http_raw(p.proxy_addr, &upgrade_request("unknown.test", "/", "")).await.0, 404);
    // No Host at all: refused (400) or unmatched (404), never forwarded.
    let status = http_raw(p.proxy_addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await.0;
    assert!(status == 400 || status == 404, "{status}");
    assert_eq!(rec.accepted(), 0);
    assert_eq!(http_get(p.proxy_addr, "known.test", "/").await.0, 200);
    assert_eq!(rec.heads().len(), 1);
}

#[tokio::test]
async fn non_websocket_upgrades_are_forwarded_as_plain_http_never_tunnelled() {
    let rec = Recorder::start().await;
    let p = proxy_to(&rec, &[]).await;
    for upgrade in ["h2c", "TLS/1.2", "foo"] {
        let req = format!(
            "GET /up HTTP/1.1\r\nHost: x\r\nUpgrade: {upgrade}\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        );
        let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let (buf, _) = read_until_closed(&mut s, Duration::from_secs(2)).await;
        assert_eq!(status_of(&buf), 200, "Upgrade: {upgrade}: {}", String::from_utf8_lossy(&buf));
    }
    let heads = rec.heads();
    assert!(heads.len() >= 3, "{heads:#?}");
    for head in &heads[..3] {
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("\r\nupgrade:"), "Upgrade must be stripped: {head}");
        assert!(!lower.contains("http2-settings"), "fields named in Connection must be stripped: {head}");
        assert!(!lower.contains("connection: upgrade"), "{head}");
    }
    // The HTTP/2 preface sent after the head is not a valid request: it must not be tunnelled
    // to the backend as raw bytes.
    assert!(heads.iter().all(|h| !h.starts_with("PRI ")), "{heads:#?}");
    // `Upgrade: websocket` without `Connection: upgrade` is an invalid upgrade: 400, no backend.
    let before = rec.heads().len();
    let (status, _, _) = http_raw(
        p.proxy_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(rec.heads().len(), before);
}

#[tokio::test]
async fn backend_answering_101_to_a_plain_request_is_not_tunnelled() {
    // A backend that switches protocols although nobody asked, then streams raw bytes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 4096];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nRAW-TUNNEL-BYTES")
                    .await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            });
        }
    });
    let p = proxy(&[addr], &[]).await;
    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let (buf, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("RAW-TUNNEL-BYTES"), "raw bytes after a 101 were tunnelled: {text}");
    // RFC 9110 §15.2.2: a server "MUST NOT switch to a protocol that was not indicated by
    // the client in the corresponding request's Upgrade header field": a bad gateway.
    assert_eq!(status_of(&buf), 502, "an unrequested 101 must become a 502, got: {text}");
}
