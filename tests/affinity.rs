//! Cookie affinity (issue 15 item 4) with real Socket.IO: two npm `socket.io` servers behind
//! one route, 50 `socket.io-client` clients that poll first and then upgrade to WebSocket.
//! Round-robin without affinity sends a session's polls and its upgrade to both servers, which
//! answer "Session ID unknown" (HTTP 400); with `affinity: cookie` every client connects,
//! upgrades and exchanges its messages with no such error. A raw HTTP check shows the cookie
//! itself: set on the first response and on a 101, kept while its endpoint is ready, replaced
//! when the endpoint is gone.
//!
//! The Socket.IO packages come from scripts/install-tools.sh (node); when they are missing the
//! test is skipped with that advice, or fails when WSINGRESS_REQUIRE_TOOLS=1.

mod common;
#[path = "peers/tools.rs"]
mod tools;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tools::*;
use wsingress::routes::{Affinity, Policy, RouteSettings};

const CLIENTS: usize = 50;
const MESSAGES: usize = 3;

fn socketio_server(name: &str) -> (Background, SocketAddr) {
    let mut cmd = node_command("socketio.js");
    cmd.args(["server", name]);
    let bg = Background::spawn(&format!("socket.io server {name}"), cmd);
    let port: u16 = bg.wait_line(Duration::from_secs(15), |l| l.strip_prefix("listening ")?.trim().parse().ok());
    (bg, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn settings(affinity: Affinity) -> RouteSettings {
    RouteSettings { policy: Policy::RoundRobin, affinity, ..RouteSettings::default() }
}

/// Run the clients through `proxy`; returns their JSON summary.
fn run_clients(proxy: SocketAddr) -> serde_json::Value {
    let mut cmd = node_command("socketio.js");
    cmd.args(["clients", &format!("http://{proxy}"), &CLIENTS.to_string(), &MESSAGES.to_string()]);
    let ran = run_bounded(cmd, b"", |_| false, Duration::from_secs(120));
    assert!(!ran.timed_out, "the Socket.IO clients did not finish: {}\n{}", ran.stdout, ran.stderr);
    let line = ran.stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| {
        panic!("no summary from the Socket.IO clients:\n{}\n{}", ran.stdout, ran.stderr);
    });
    serde_json::from_str(line).unwrap()
}

fn session_unknown(servers: &[&Background]) -> usize {
    servers.iter().map(|s| s.lines.lock().unwrap().iter().filter(|l| *l == "session-unknown").count()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_polls_then_upgrades_through_cookie_affinity_and_fails_without_it() {
    if node_with("socket.io").is_none() || node_with("socket.io-client").is_none() {
        skip("socket.io / socket.io-client not found (run scripts/install-tools.sh node)");
        return;
    }
    let ((a, a_addr), (b, b_addr)) =
        tokio::task::spawn_blocking(|| (socketio_server("A"), socketio_server("B"))).await.unwrap();
    let backends = [a_addr, b_addr];
    let p = manual_proxy(&[]).await;

    // Without affinity: round-robin splits each session's requests over both servers.
    p.publisher().publish(table(&[("", "/", "default/sio", &backends)], settings(Affinity::None)), &[]);
    let proxy = p.proxy_addr;
    let without = tokio::task::spawn_blocking(move || run_clients(proxy)).await.unwrap();
    let unknown_without = session_unknown(&[&a, &b]);
    println!("without affinity: {without} ({unknown_without} \"Session ID unknown\" on the servers)");
    assert!(unknown_without > 0, "round-robin without affinity should break Socket.IO sessions");
    assert!(without["acked"].as_u64().unwrap() < (CLIENTS * MESSAGES) as u64);

    // With cookie affinity: every session stays on its server.
    p.publisher().publish(table(&[("", "/", "default/sio", &backends)], settings(Affinity::Cookie)), &[]);
    let with = tokio::task::spawn_blocking(move || run_clients(proxy)).await.unwrap();
    let unknown_with = session_unknown(&[&a, &b]) - unknown_without;
    println!("with affinity: {with} ({unknown_with} \"Session ID unknown\")");
    assert_eq!(with["errors"], serde_json::json!([]), "{with}");
    assert_eq!(unknown_with, 0);
    assert_eq!(with["connected"], CLIENTS);
    assert_eq!(with["upgraded"], CLIENTS);
    assert_eq!(with["acked"], CLIENTS * MESSAGES);
    // Both servers got sessions: affinity sticks, round-robin still spreads new clients.
    let servers = with["servers"].as_object().unwrap();
    assert_eq!(servers.len(), 2, "{with}");
    assert!(p.shutdown(Duration::from_secs(5)).await);
}

/// The `Set-Cookie` header of a raw response head, if any.
fn set_cookie(head: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("set-cookie").then(|| value.trim().to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_names_an_endpoint_opaquely_sticks_and_is_replaced_when_it_leaves() {
    let e1 = echo("e1", "").await;
    let e2 = echo("e2", "").await;
    let p = manual_proxy(&["--affinity-key", "test-secret"]).await;
    p.publisher().publish(table(&[("", "/", "default/aff", &[e1.addr, e2.addr])], settings(Affinity::Cookie)), &[]);

    // The first plain response sets the cookie: opaque (no address), HttpOnly, Path=/.
    let (status, head, _) = http_get(p.proxy_addr, "aff.localhost", "/").await;
    assert!(status < 500, "{head}");
    let cookie = set_cookie(&head).expect("Set-Cookie on the first response");
    assert!(cookie.starts_with("WSINGRESS=") && cookie.ends_with("; Path=/; HttpOnly"), "{cookie}");
    let value = cookie["WSINGRESS=".len()..].split(';').next().unwrap().to_string();
    assert_eq!(value.len(), 32);
    for addr in [e1.addr, e2.addr] {
        assert!(!cookie.contains(&addr.ip().to_string()) && !cookie.contains(&addr.port().to_string()));
    }

    // With the cookie, round-robin no longer moves the client: every upgrade lands on one
    // instance, and no new cookie is set.
    let sent = format!("WSINGRESS={value}");
    let mut instances = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (mut ws, resp) =
            connect_with(&ws_url(p.proxy_addr, "/"), &[("Cookie", &sent), ("Host", "aff.localhost")]).await.unwrap();
        assert!(resp.headers().get("set-cookie").is_none(), "the cookie already names this endpoint");
        instances.insert(backend_view(&mut ws).await["instance"].as_str().unwrap().to_string());
    }
    assert_eq!(instances.len(), 1, "{instances:?}");
    let stuck = instances.into_iter().next().unwrap();

    // The same key on another replica gives the same cookie the same meaning.
    let q = manual_proxy(&["--affinity-key", "test-secret"]).await;
    q.publisher().publish(table(&[("", "/", "default/aff", &[e1.addr, e2.addr])], settings(Affinity::Cookie)), &[]);
    for _ in 0..4 {
        let (mut ws, _) = connect_with(&ws_url(q.proxy_addr, "/"), &[("Cookie", &sent)]).await.unwrap();
        assert_eq!(backend_view(&mut ws).await["instance"], stuck.as_str(), "another replica, same endpoint");
    }

    // Its endpoint leaves: the policy picks again and the 101 replaces the cookie.
    let stays = if stuck == "e1" { &e2 } else { &e1 };
    p.publisher().publish(table(&[("", "/", "default/aff", &[stays.addr])], settings(Affinity::Cookie)), &[]);
    let (mut ws, resp) = connect_with(&ws_url(p.proxy_addr, "/"), &[("Cookie", &sent)]).await.unwrap();
    let replaced = resp.headers().get("set-cookie").expect("a new cookie on the 101").to_str().unwrap().to_string();
    assert!(replaced.starts_with("WSINGRESS=") && !replaced.contains(&value), "{replaced}");
    assert_eq!(backend_view(&mut ws).await["instance"], stays.instance.as_str());

    // Without a cookie the route still balances, and sets one.
    let (_ws, resp) = connect_with(&ws_url(p.proxy_addr, "/"), &[]).await.unwrap();
    assert!(resp.headers().get("set-cookie").is_some());
    assert!(p.shutdown(Duration::from_secs(5)).await);
    assert!(q.shutdown(Duration::from_secs(5)).await);
}
