//! Per-client route policy on loopback, with exact counts: source ranges (403 before any
//! upstream contact, IPv4 from 127.0.0.x, IPv6 from ::1, and behind a trusted proxy with
//! `X-Forwarded-For`), connections per client (429 above the limit, freed by a close, other
//! clients unaffected), the handshake token bucket (a burst, then 429 with `Retry-After`, a
//! token after the stated seconds) and the message rate (Close 1008 with its reason).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use wsingress::routes::RouteSettings;
use wsingress::routes::cidr::{SourceRanges, parse_list};
use wsingress::routes::client_policy::{ClientPolicy, Rate};

type RawWs = WebSocketStream<TcpStream>;

/// A TCP connection to `to` from loopback address `from`.
async fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let from: std::net::IpAddr = from.parse().unwrap();
    let socket = if from.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A raw request from `from`; status, head and body.
async fn raw_from(from: &str, to: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = tcp_from(from, to).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    read.expect("an answer in time").ok();
    parse_response(&buf)
}

fn get(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// A WebSocket from `from` to `host` through the proxy at `to`.
async fn ws_from(from: &str, to: SocketAddr, host: &str) -> Result<RawWs, tungstenite::Error> {
    let tcp = tcp_from(from, to).await;
    let req = format!("ws://{host}/").into_client_request().unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::client_async(req, tcp)).await;
    r.expect("handshake in time").map(|(ws, _)| ws)
}

fn status_of(e: &tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("not an HTTP refusal: {other}"),
    }
}

async fn echo_round(ws: &mut RawWs, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an echo in time") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("tunnel ended: {other:?}"),
        }
    }
}

fn refusals(p: &wsingress::app::Running, route: &str, reason: &str) -> f64 {
    metric(&p.metrics, "wsingress_policy_refusals_total", &[("route", route), ("reason", reason)])
}

fn ranges(allow: Option<&str>, deny: &str) -> SourceRanges {
    SourceRanges { allow: allow.map(|a| parse_list(a).0), deny: parse_list(deny).0 }
}

fn with_policy(client: ClientPolicy) -> RouteSettings {
    RouteSettings { client, ..RouteSettings::default() }
}

// ---------------------------------------------------------------- source ranges

#[tokio::test]
async fn source_ranges_refuse_ipv4_clients_with_403_before_any_upstream() {
    let rec = Recorder::start().await;
    let p = manual_proxy(&[]).await;
    let policy = ClientPolicy { source_ranges: ranges(Some("127.0.0.0/30"), "127.0.0.2"), ..ClientPolicy::default() };
    p.publisher().publish(table(&[("ranges.test", "/", "default/ranges", &[rec.addr])], with_policy(policy)), &[]);
    // 127.0.0.2 is denied (deny wins over allow); 127.0.0.9 is outside the allow list.
    for from in ["127.0.0.2", "127.0.0.9"] {
        let (status, head, _) = raw_from(from, p.proxy_addr, &upgrade_request("ranges.test", "/", "")).await;
        assert_eq!(status, 403, "{from} upgrade: {head}");
        let (status, head, _) = raw_from(from, p.proxy_addr, &get("ranges.test")).await;
        assert_eq!(status, 403, "{from} plain: {head}");
    }
    assert_eq!(rec.accepted(), 0, "a refused client never reaches an upstream");
    assert_eq!(refusals(&p, "default/ranges", "source_range"), 4.0);
    // 127.0.0.1 is allowed: the backend sees both requests.
    let (status, _, _) = raw_from("127.0.0.1", p.proxy_addr, &get("ranges.test")).await;
    assert_eq!(status, 200);
    let (status, _, _) = raw_from("127.0.0.1", p.proxy_addr, &upgrade_request("ranges.test", "/", "")).await;
    assert_eq!(status, 200, "the recorder answers an upgrade with 200");
    assert_eq!(rec.heads().len(), 2);
    assert_eq!(refusals(&p, "default/ranges", "source_range"), 4.0);
}

#[tokio::test]
async fn source_ranges_refuse_ipv6_clients() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: this machine has no IPv6 loopback (::1)");
        return;
    }
    let rec = Recorder::start().await;
    let argv = ["wsingress", "serve", "--listen", "[::1]:0", "--admin-listen", "127.0.0.1:0", "--tls-listen", "off"];
    let args = match <wsingress::cli::Cli as clap::Parser>::try_parse_from(argv).unwrap().command {
        wsingress::cli::Command::Serve(s) => *s,
        _ => unreachable!(),
    };
    let p = wsingress::app::start(&args, wsingress::app::RouteSource::Manual).await.unwrap();
    let publish = |policy: ClientPolicy| {
        p.publisher().publish(table(&[("v6.test", "/", "default/v6", &[rec.addr])], with_policy(policy)), &[]);
    };
    publish(ClientPolicy { source_ranges: ranges(None, "::1/128"), ..ClientPolicy::default() });
    let (status, head, _) = raw_from("::1", p.proxy_addr, &get("v6.test")).await;
    assert_eq!(status, 403, "::1 denied: {head}");
    publish(ClientPolicy { source_ranges: ranges(Some("2001:db8::/32, 127.0.0.1"), ""), ..ClientPolicy::default() });
    let (status, head, _) = raw_from("::1", p.proxy_addr, &upgrade_request("v6.test", "/", "")).await;
    assert_eq!(status, 403, "::1 outside the allow list: {head}");
    assert_eq!(rec.accepted(), 0);
    publish(ClientPolicy { source_ranges: ranges(Some("::1"), ""), ..ClientPolicy::default() });
    let (status, _, _) = raw_from("::1", p.proxy_addr, &get("v6.test")).await;
    assert_eq!(status, 200, "::1 allowed");
    assert_eq!(refusals(&p, "default/v6", "source_range"), 2.0);
}

#[tokio::test]
async fn source_ranges_use_the_client_named_by_a_trusted_proxy() {
    let rec = Recorder::start().await;
    let p = manual_proxy(&["--trusted-proxies", "127.0.0.1/32"]).await;
    let policy = ClientPolicy { source_ranges: ranges(None, "203.0.113.0/24, 127.0.0.2"), ..ClientPolicy::default() };
    p.publisher().publish(table(&[("xff.test", "/", "default/xff", &[rec.addr])], with_policy(policy)), &[]);
    let xff = |client: &str| {
        format!("GET / HTTP/1.1\r\nHost: xff.test\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n\r\n")
    };
    // The trusted proxy at 127.0.0.1 speaks for a denied client: refused.
    let (status, head, _) = raw_from("127.0.0.1", p.proxy_addr, &xff("203.0.113.5")).await;
    assert_eq!(status, 403, "{head}");
    let upgrade = upgrade_request("xff.test", "/", "X-Forwarded-For: 198.51.100.1, 203.0.113.77\r\n");
    let (status, head, _) = raw_from("127.0.0.1", p.proxy_addr, &upgrade).await;
    assert_eq!(status, 403, "the rightmost untrusted entry is the client: {head}");
    // ... for an allowed one: served.
    let (status, _, _) = raw_from("127.0.0.1", p.proxy_addr, &xff("198.51.100.1")).await;
    assert_eq!(status, 200);
    // An untrusted peer cannot forge its way out of the deny list.
    let (status, head, _) = raw_from("127.0.0.2", p.proxy_addr, &xff("198.51.100.1")).await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(rec.heads().len(), 1);
    assert_eq!(refusals(&p, "default/xff", "source_range"), 3.0);
}

// ---------------------------------------------------------------- per-client limits

#[tokio::test]
async fn connections_per_client_are_limited_exactly() {
    let backend = echo("b1", "").await;
    let p = manual_proxy(&[]).await;
    let policy = ClientPolicy { max_connections_per_client: Some(3), ..ClientPolicy::default() };
    p.publisher().publish(table(&[("conns.test", "/", "default/conns", &[backend.addr])], with_policy(policy)), &[]);
    let mut open = Vec::new();
    for i in 0..3 {
        let mut ws =
            ws_from("127.0.0.1", p.proxy_addr, "conns.test").await.unwrap_or_else(|e| panic!("tunnel {i}: {e}"));
        assert_eq!(echo_round(&mut ws, "hi").await, "hi");
        open.push(ws);
    }
    let err = ws_from("127.0.0.1", p.proxy_addr, "conns.test").await.expect_err("the 4th tunnel is refused");
    assert_eq!(status_of(&err), 429);
    // A plain request in flight counts too.
    let (status, head, _) = raw_from("127.0.0.1", p.proxy_addr, &get("conns.test")).await;
    assert_eq!(status, 429, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(refusals(&p, "default/conns", "connections_per_client"), 2.0);
    // Another client address is unaffected.
    let mut other = ws_from("127.0.0.2", p.proxy_addr, "conns.test").await.expect("127.0.0.2 has its own count");
    assert_eq!(echo_round(&mut other, "other").await, "other");
    // Closing one frees one place, exactly.
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = first.next().await {}
    let active = || metric(&p.metrics, "wsingress_websocket_connections_active", &[("route", "default/conns")]);
    wait_until(Duration::from_secs(5), "the closed tunnel is gone", || async { active() == 3.0 }).await;
    let mut again = ws_from("127.0.0.1", p.proxy_addr, "conns.test").await.expect("a freed place is usable");
    assert_eq!(echo_round(&mut again, "again").await, "again");
    let err = ws_from("127.0.0.1", p.proxy_addr, "conns.test").await.expect_err("full again");
    assert_eq!(status_of(&err), 429);
    assert_eq!(refusals(&p, "default/conns", "connections_per_client"), 3.0);
    for mut ws in open {
        assert_eq!(echo_round(&mut ws, "still").await, "still", "refusals never touch open tunnels");
    }
}

#[tokio::test]
async fn handshake_rate_gives_a_burst_then_429_with_retry_after() {
    let backend = echo("b1", "").await;
    let p = manual_proxy(&[]).await;
    // One token every 2 s, a bucket of 3.
    let rate = Rate::new(1, Duration::from_secs(2), Some(3));
    let policy = ClientPolicy { handshake_rate: Some(rate), ..ClientPolicy::default() };
    p.publisher().publish(table(&[("rate.test", "/", "default/rate", &[backend.addr])], with_policy(policy)), &[]);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(ws_from("127.0.0.1", p.proxy_addr, "rate.test").await.unwrap_or_else(|e| panic!("burst {i}: {e}")));
    }
    let err = ws_from("127.0.0.1", p.proxy_addr, "rate.test").await.expect_err("the bucket is empty");
    let tungstenite::Error::Http(resp) = &err else { panic!("{err}") };
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 2, "seconds until the next token");
    assert_eq!(refusals(&p, "default/rate", "handshake_rate"), 1.0);
    // Another client has its own bucket.
    assert!(ws_from("127.0.0.2", p.proxy_addr, "rate.test").await.is_ok());
    // After the stated wait, exactly one token is there.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let mut refilled = ws_from("127.0.0.1", p.proxy_addr, "rate.test").await.expect("a token after Retry-After");
    assert_eq!(echo_round(&mut refilled, "ok").await, "ok");
    let err = ws_from("127.0.0.1", p.proxy_addr, "rate.test").await.expect_err("one token only");
    assert_eq!(status_of(&err), 429);
    assert_eq!(refusals(&p, "default/rate", "handshake_rate"), 2.0);
}

#[tokio::test]
async fn message_rate_closes_with_1008_and_its_reason() {
    let backend = echo("b1", "").await;
    let p = manual_proxy(&[]).await;
    let policy = ClientPolicy { max_message_rate: Some(5), ..ClientPolicy::default() };
    p.publisher().publish(table(&[("msgs.test", "/", "default/msgs", &[backend.addr])], with_policy(policy)), &[]);
    let mut ws = ws_from("127.0.0.1", p.proxy_addr, "msgs.test").await.unwrap();
    // Five messages within a second are within the rate.
    for i in 0..5 {
        assert_eq!(echo_round(&mut ws, &format!("m{i}")).await, format!("m{i}"));
    }
    // The sixth in the same second is above it.
    ws.send(Message::text("m5")).await.unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("a Close in time") {
            Some(Ok(Message::Close(frame))) => break frame.expect("a Close with a code"),
            Some(Ok(_)) => continue,
            other => panic!("ended without a Close: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "message rate exceeded");
    wait_until(Duration::from_secs(5), "the close is counted", || async {
        refusals(&p, "default/msgs", "message_rate") == 1.0
    })
    .await;

    // A client that stays under the rate across windows is never closed.
    let mut calm = ws_from("127.0.0.1", p.proxy_addr, "msgs.test").await.unwrap();
    for round in 0..3 {
        for i in 0..4 {
            assert_eq!(echo_round(&mut calm, &format!("r{round}m{i}")).await, format!("r{round}m{i}"));
        }
        tokio::time::sleep(Duration::from_millis(1050)).await;
    }
    assert_eq!(refusals(&p, "default/msgs", "message_rate"), 1.0);
}
