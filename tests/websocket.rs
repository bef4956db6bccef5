//! WebSocket through the proxy with real echo backends and a real client: message shapes,
//! control frames, close codes, negotiation, balancing, timeouts, table swaps and drains.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use wsingress::routes::RouteSettings;

#[tokio::test]
async fn every_message_shape_round_trips_unchanged() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &[]).await;
    let mut ws = connect(&ws_url(p.proxy_addr, "/chat")).await;

    assert_eq!(round_trip(&mut ws, "hello").await, "hello");
    ws.send(Message::text("")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text(""));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    ws.send(Message::binary(Vec::<u8>::new())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(Vec::<u8>::new()));
    // 16-bit and 64-bit length forms.
    let mid: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(mid.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(mid));
    let big: Vec<u8> = (0..1_048_576u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(big));
    let text_1m = "w".repeat(1 << 20);
    assert_eq!(round_trip(&mut ws, &text_1m).await, text_1m);

    // A fragmented text message with a ping between its fragments.
    ws.send(Message::Frame(Frame::message("frag", OpCode::Data(Data::Text), false))).await.unwrap();
    ws.send(Message::Frame(Frame::ping(b"mid".to_vec()))).await.unwrap();
    ws.send(Message::Frame(Frame::message("men", OpCode::Data(Data::Continue), false))).await.unwrap();
    ws.send(Message::Frame(Frame::message("ted", OpCode::Data(Data::Continue), true))).await.unwrap();
    let mut saw_pong = false;
    let text = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"mid");
                saw_pong = true;
            }
            Message::Text(t) => break t.to_string(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(text, "fragmented");
    assert!(saw_pong, "the ping between fragments was answered");
}

#[tokio::test]
async fn ping_is_answered_by_the_backend() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &[]).await;
    let mut ws = connect(&ws_url(p.proxy_addr, "/")).await;
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[tokio::test]
async fn client_close_code_reaches_backend_and_its_answer_comes_back() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &[]).await;
    let mut ws = connect(&ws_url(p.proxy_addr, "/")).await;
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::from(4000), reason: "bye".into() }))).await.unwrap();
    // The echo mirrors the code, so 4000 back proves it crossed both ways.
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, Some(4000));
    wait_until(Duration::from_secs(5), "tunnel closed", || async {
        p.metrics.connections_active.with_label_values(&["static/upstream", "static:upstream"]).get() == 0
    })
    .await;
}

/// A backend that closes every connection with 4001 after the first message.
async fn closing_backend() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                let _ = ws.next().await;
                let _ = ws.close(Some(CloseFrame { code: CloseCode::from(4001), reason: "server bye".into() })).await;
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn backend_close_code_reaches_client() {
    let b = closing_backend().await;
    let p = proxy(&[b], &[]).await;
    let mut ws = connect(&ws_url(p.proxy_addr, "/")).await;
    send_text(&mut ws, "anything").await;
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, Some(4001));
}

#[tokio::test]
async fn subprotocol_and_extension_offer_are_negotiated_with_the_backend() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &[]).await;
    let offer = [("Sec-WebSocket-Protocol", "v2.chat, v1.chat"), ("Origin", "http://app.example")];
    let (mut ws, resp) = connect_with(&ws_url(p.proxy_addr, "/"), &offer).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "v2.chat", "the backend's choice reaches the client");
    assert_eq!(resp.headers()["x-echo-instance"], "e1", "backend response headers pass through");
    let seen = backend_view(&mut ws).await;
    assert_eq!(seen["headers"]["sec-websocket-protocol"], "v2.chat, v1.chat");
    assert_eq!(seen["headers"]["origin"], "http://app.example");
    assert_eq!(seen["headers"]["upgrade"], "websocket");
}

#[tokio::test]
async fn forwarded_headers_as_the_backend_sees_them() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &[]).await;
    let headers = [
        ("Host", "chat.example.com"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Connection", "Upgrade, X-Drop-Me"),
        ("X-Drop-Me", "1"),
    ];
    let (mut ws, _) = connect_with(&ws_url(p.proxy_addr, "/"), &headers).await.unwrap();
    let seen = backend_view(&mut ws).await;
    let h = &seen["headers"];
    assert_eq!(h["host"], "chat.example.com", "Host preserved");
    // The peer is not a trusted proxy: its X-Forwarded-For is replaced, not extended.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "chat.example.com");
    assert!(h.get("x-drop-me").is_none(), "fields named in Connection are hop-by-hop");

    // Behind a trusted proxy, the chain is extended and the real client is the original one.
    let p2 = proxy(&[e.addr], &["--trusted-proxies", "127.0.0.0/8"]).await;
    let headers = [("X-Forwarded-For", "203.0.113.9")];
    let (mut ws, _) = connect_with(&ws_url(p2.proxy_addr, "/"), &headers).await.unwrap();
    let seen = backend_view(&mut ws).await;
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["headers"]["x-real-ip"], "203.0.113.9");
}

/// Issue 11: an IPv4-mapped `--trusted-proxies` entry used to make every IPv4 request panic,
/// and an `X-Forwarded-For` element the proxy could not read (`ip:port`, as Azure's gateway
/// appends) was skipped, so the entries a client wrote itself named the client.
#[tokio::test]
async fn client_address_behind_a_trusted_proxy_with_mapped_entries_and_ports() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &["--trusted-proxies", "::ffff:127.0.0.1"]).await;
    let cases = [
        // The mapped entry trusts the IPv4 peer 127.0.0.1.
        ("203.0.113.9", "203.0.113.9"),
        // The trusted proxy appended the client with its port; 6.6.6.6 is the client's own claim.
        ("6.6.6.6, 198.51.100.7:5555", "198.51.100.7"),
        ("6.6.6.6, [2001:db8::7]:443", "2001:db8::7"),
        // An element nobody can read ends the walk at the trusted peer.
        ("6.6.6.6, unknown", "127.0.0.1"),
    ];
    for (xff, client) in cases {
        let (mut ws, _) = connect_with(&ws_url(p.proxy_addr, "/"), &[("X-Forwarded-For", xff)]).await.unwrap();
        let seen = backend_view(&mut ws).await;
        assert_eq!(seen["headers"]["x-real-ip"], client, "X-Forwarded-For: {xff}");
        assert_eq!(seen["headers"]["x-forwarded-for"], format!("{xff}, 127.0.0.1"));
    }
}

async fn instances(url: &str, n: usize, headers: &[(&str, &str)], hold: bool) -> (Vec<String>, Vec<Ws>) {
    let mut names = Vec::new();
    let mut held = Vec::new();
    for _ in 0..n {
        let (mut ws, _) = connect_with(url, headers).await.unwrap();
        let v = backend_view(&mut ws).await;
        names.push(v["instance"].as_str().unwrap().to_string());
        if hold {
            held.push(ws);
        } else {
            ws.close(None).await.unwrap();
            let _ = expect_close(&mut ws, Duration::from_secs(5)).await;
        }
    }
    (names, held)
}

fn counts(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn least_conn_spreads_live_tunnels_evenly() {
    let (a, b) = (echo("a", "").await, echo("b", "").await);
    let p = proxy(&[a.addr, b.addr], &[]).await;
    let url = ws_url(p.proxy_addr, "/");
    // Held open, so each pick sees the live counts.
    let (names, _held) = instances(&url, 6, &[], true).await;
    assert_eq!(counts(&names), HashMap::from([("a".to_string(), 3), ("b".to_string(), 3)]), "{names:?}");
    // With three live on `a` and one of `b`'s closed, the next two go to `b`.
    let mut held = _held;
    let idx = names.iter().position(|n| n == "b").unwrap();
    let mut closing = held.remove(idx);
    closing.close(None).await.unwrap();
    let _ = expect_close(&mut closing, Duration::from_secs(5)).await;
    let route = p.routes.load();
    let pool = &route.default_route().unwrap().pool;
    wait_until(Duration::from_secs(5), "b has 2 live tunnels", || async {
        pool.endpoints().iter().any(|e| e.addr == b.addr && e.live.active() == 2)
    })
    .await;
    let (next, _more) = instances(&url, 1, &[], true).await;
    assert_eq!(next, ["b"]);
}

#[tokio::test]
async fn round_robin_alternates() {
    let (a, b) = (echo("a", "").await, echo("b", "").await);
    let p = proxy(&[a.addr, b.addr], &["--load-balance", "round-robin"]).await;
    let (names, _) = instances(&ws_url(p.proxy_addr, "/"), 6, &[], false).await;
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "round-robin alternates: {names:?}");
    }
}

#[tokio::test]
async fn ip_hash_is_sticky_per_client_address() {
    let (a, b) = (echo("a", "").await, echo("b", "").await);
    let p = proxy(&[a.addr, b.addr], &["--load-balance", "ip-hash", "--trusted-proxies", "127.0.0.1"]).await;
    let url = ws_url(p.proxy_addr, "/");
    let mut seen = HashMap::new();
    for i in 0..16 {
        let client = format!("198.51.100.{i}");
        let (names, _) = instances(&url, 3, &[("X-Forwarded-For", &client)], false).await;
        assert!(names.iter().all(|n| n == &names[0]), "client {client} moved: {names:?}");
        *seen.entry(names[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "16 clients all landed on one backend: {seen:?}");
}

#[tokio::test]
async fn header_hash_is_sticky_per_header_value() {
    let (a, b) = (echo("a", "").await, echo("b", "").await);
    let p = proxy(&[a.addr, b.addr], &["--load-balance", "header-hash:X-User"]).await;
    let url = ws_url(p.proxy_addr, "/");
    let mut seen = HashMap::new();
    for i in 0..16 {
        let user = format!("user-{i}");
        let (names, _) = instances(&url, 3, &[("X-User", &user)], false).await;
        assert!(names.iter().all(|n| n == &names[0]), "{user} moved: {names:?}");
        *seen.entry(names[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "16 users all landed on one backend: {seen:?}");
}

#[tokio::test]
async fn a_dead_endpoint_is_skipped() {
    let live = echo("live", "").await;
    let dead = dead_addr().await;
    let p = proxy(&[dead, live.addr], &["--load-balance", "round-robin"]).await;
    let (names, _) = instances(&ws_url(p.proxy_addr, "/"), 4, &[], false).await;
    assert_eq!(names, ["live"; 4]);
    let refused =
        p.metrics.upstream_errors.with_label_values(&["static/upstream", "static:upstream", "connect_refused"]).get();
    assert!(refused >= 1, "the failed connect is counted");
}

/// A TCP listener that counts connections and does whatever `answer` says with each.
async fn raw_backend(answer: &'static [u8]) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                if !answer.is_empty() {
                    let _ = s.write_all(answer).await;
                }
                // Hold the socket open (a backend that never finishes).
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn error_statuses() {
    // 400: invalid upgrade, and the backend is never contacted.
    let (counted, accepts) = raw_backend(b"").await;
    let p = proxy(&[counted], &[]).await;
    let bad = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n";
    let (status, _, body) = http_raw(p.proxy_addr, bad).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("Sec-WebSocket-Key"));
    let post = "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(http_raw(p.proxy_addr, post).await.0, 400);
    assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 0, "no upstream contact for a bad request");

    // 504: the backend accepts TCP but never answers the handshake.
    let p = proxy(&[counted], &["--handshake-timeout", "300ms"]).await;
    let started = Instant::now();
    let (status, _, _) = http_raw(p.proxy_addr, &upgrade_request("x", "/", "Connection-Extra: 1\r\n")).await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(5));

    // 502: every endpoint refuses.
    let p = proxy(&[dead_addr().await, dead_addr().await], &[]).await;
    assert_eq!(http_raw(p.proxy_addr, &upgrade_request("x", "/", "")).await.0, 502);

    // 502: a 101 with the wrong Sec-WebSocket-Accept is not passed on.
    let (liar, _) = raw_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
    )
    .await;
    let p = proxy(&[liar], &[]).await;
    assert_eq!(http_raw(p.proxy_addr, &upgrade_request("x", "/", "")).await.0, 502);

    // A non-101 answer is passed back as is.
    let (refuser, _) =
        raw_backend(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nX-Why: policy\r\n\r\nnot for you\n").await;
    let p = proxy(&[refuser], &[]).await;
    let (status, head, body) = http_raw(p.proxy_addr, &upgrade_request("x", "/", "")).await;
    assert_eq!(status, 403);
    assert!(head.to_ascii_lowercase().contains("x-why: policy"));
    assert_eq!(body, b"not for you\n");

    // 503: the route exists but its pool is empty; 404: no route for the host.
    let m = manual_proxy(&[]).await;
    m.publisher().publish(table(&[("chat.example.com", "/", "default/chat", &[])], RouteSettings::default()), &[]);
    assert_eq!(http_raw(m.proxy_addr, &upgrade_request("chat.example.com", "/", "")).await.0, 503);
    assert_eq!(http_raw(m.proxy_addr, &upgrade_request("other.example.com", "/", "")).await.0, 404);
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_connection_with_1001() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &["--idle-timeout", "300ms"]).await;
    let mut ws = connect(&ws_url(p.proxy_addr, "/")).await;
    assert_eq!(round_trip(&mut ws, "x").await, "x");
    let started = Instant::now();
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, Some(1001));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "closed after {took:?}");
}

#[tokio::test]
async fn pings_keep_a_silent_connection_alive() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &["--idle-timeout", "600ms", "--ping-interval", "150ms", "--pong-timeout", "2s"]).await;
    let mut ws = connect(&ws_url(p.proxy_addr, "/")).await;
    let until = Instant::now() + Duration::from_millis(1800);
    let mut pings = 0;
    // Reading lets tungstenite answer each ping with a pong; the client sends no data.
    while let Ok(msg) = tokio::time::timeout_at(until.into(), ws.next()).await {
        match msg {
            Some(Ok(Message::Ping(p))) => {
                assert_eq!(&p[..], b"wsingress");
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "only {pings} pings in 1.8 s");
    // Three idle timeouts have passed; the tunnel is still up.
    assert_eq!(round_trip(&mut ws, "still here").await, "still here");
}

#[tokio::test]
async fn a_new_table_moves_new_connections_and_keeps_established_ones() {
    let (a, b) = (echo("a", "").await, echo("b", "").await);
    let p = manual_proxy(&[]).await;
    p.publisher().publish(table(&[("", "/", "default/chat", &[a.addr])], RouteSettings::default()), &[]);
    let url = ws_url(p.proxy_addr, "/");
    let (mut old, inst) = instance_of(&url).await;
    assert_eq!(inst, "a");
    // Swap in a table where the route points at `b` only, and `a` is gone with drain "never".
    let keep = RouteSettings { drain_timeout: None, ..RouteSettings::default() };
    p.publisher().publish(table(&[("", "/", "default/chat", &[b.addr])], keep), &[]);
    let (_new, inst) = instance_of(&url).await;
    assert_eq!(inst, "b");
    for i in 0..5 {
        assert_eq!(round_trip(&mut old, &format!("m{i}")).await, format!("m{i}"));
    }
}

#[tokio::test]
async fn a_removed_endpoint_is_drained_with_1001_within_its_timeout() {
    let (a, b) = (echo("a", "").await, echo("b", "").await);
    let p = manual_proxy(&[]).await;
    let settings = RouteSettings { drain_timeout: Some(Duration::from_millis(300)), ..RouteSettings::default() };
    p.publisher().publish(table(&[("", "/", "default/chat", &[a.addr, b.addr])], settings.clone()), &[]);
    let url = ws_url(p.proxy_addr, "/");
    let (mut first, i1) = instance_of(&url).await;
    let (mut second, i2) = instance_of(&url).await;
    assert_ne!(i1, i2);
    let (mut on_a, mut on_b) = if i1 == "a" { (first, second) } else { (second, first) };
    p.publisher().publish(table(&[("", "/", "default/chat", &[a.addr])], settings), &[]);
    let removed_at = Instant::now();
    assert_eq!(expect_close(&mut on_b, Duration::from_secs(5)).await, Some(1001));
    // Each tunnel closes at its own instant within the drain timeout (spread, not all at once).
    assert!(removed_at.elapsed() < Duration::from_millis(300 + 250), "closed after {:?}", removed_at.elapsed());
    assert_eq!(round_trip(&mut on_a, "survivor").await, "survivor");
    first = on_a;
    second = on_b;
    drop((first, second));
}
