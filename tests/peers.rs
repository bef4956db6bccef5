//! The peer matrix through the proxy: clients tokio-tungstenite, Node `ws`, websocat and k6
//! against backends `wsingress echo`, a Node `ws` echo and websocat's echo, each pair making a
//! round trip with a text message, a binary message and a 1 MiB message through wsingress, then
//! a clean close whose code the client reports. Node `ws` on both ends also proves that
//! permessage-deflate is negotiated end to end through the proxy.
//!
//! Third-party tools come from scripts/install-tools.sh (node, websocat, k6); a missing one is
//! skipped with the reason printed, or fails the test when WSINGRESS_REQUIRE_TOOLS=1.

mod common;
#[path = "peers/tools.rs"]
mod tools;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tools::*;

const MIB: usize = 1 << 20;
/// Bound for one client run (start-up included).
const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

/// The payload every client uses for its 1 MiB binary message (same formula in the JS clients).
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + 7) & 0xff) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Backends

struct Backend {
    name: &'static str,
    /// The close code a client observes after closing with 1000 (websocat answers an empty Close: 1005).
    close_code: u16,
    /// Keeps the backend running while the proxy in front of it is used.
    _keep: Box<dyn std::any::Any + Send>,
    proxy: wsingress::app::Running,
}

async fn wsingress_echo_backend() -> Backend {
    let e = echo("peers-echo", "").await;
    let proxy = proxy(&[e.addr], &[]).await;
    Backend { name: "wsingress echo", close_code: 1000, _keep: Box::new(e), proxy }
}

fn node_echo_process() -> Option<(Background, SocketAddr)> {
    if node_with("ws").is_none() {
        skip("Node ws backend: node or the ws package not found (scripts/install-tools.sh node)");
        return None;
    }
    let mut cmd = node_command("echo-server.js");
    cmd.arg("--deflate");
    let bg = Background::spawn("node echo-server.js", cmd);
    let port: u16 = bg.wait_line(Duration::from_secs(10), |l| {
        serde_json::from_str::<serde_json::Value>(l).ok()?.get("listening")?.as_u64().map(|p| p as u16)
    });
    Some((bg, SocketAddr::from(([127, 0, 0, 1], port))))
}

async fn node_backend() -> Option<Backend> {
    let (bg, addr) = tokio::task::spawn_blocking(node_echo_process).await.unwrap()?;
    let proxy = proxy(&[addr], &[]).await;
    Some(Backend { name: "Node ws", close_code: 1000, _keep: Box::new(bg), proxy })
}

fn websocat() -> Option<std::path::PathBuf> {
    let found = tool("WSINGRESS_WEBSOCAT", "websocat", "--version");
    if found.is_none() {
        skip("websocat not found (WSINGRESS_WEBSOCAT, .tools/bin/websocat; scripts/install-tools.sh websocat)");
    }
    found
}

async fn websocat_backend() -> Option<Backend> {
    let bin = websocat()?;
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // `mirror:` answers every message with one type; the prefixes carry the type through it
    // (a binary message comes back binary, a text message text). Without -E it answers a Close
    // with an empty Close (-E drops TCP instead).
    let mut cmd = Command::new(bin);
    cmd.args(["-b", "-B", "4000000", "--binary-prefix", "B", "--text-prefix", "T"])
        .arg(format!("ws-l:{addr}"))
        .arg("mirror:");
    let bg = Background::spawn("websocat mirror", cmd);
    tokio::task::spawn_blocking(move || wait_listening(addr, Duration::from_secs(10), "websocat mirror"))
        .await
        .unwrap();
    let proxy = proxy(&[addr], &[]).await;
    Some(Backend { name: "websocat", close_code: 1005, _keep: Box::new(bg), proxy })
}

// ---------------------------------------------------------------------------------------------
// Clients: each returns the close code it observed, or why the round trip failed.

async fn tungstenite_client(url: &str) -> Result<u16, String> {
    let mut ws = connect(url).await;
    ws.send(Message::text("hello from tokio-tungstenite")).await.map_err(|e| e.to_string())?;
    if next_data(&mut ws).await != Message::text("hello from tokio-tungstenite") {
        return Err("text echo differs".into());
    }
    let bin = vec![0u8, 1, 2, 0x80, 0xfe, 0xff];
    ws.send(Message::binary(bin.clone())).await.map_err(|e| e.to_string())?;
    if next_data(&mut ws).await != Message::binary(bin) {
        return Err("binary echo differs".into());
    }
    let big = pattern(MIB);
    ws.send(Message::binary(big.clone())).await.map_err(|e| e.to_string())?;
    match next_data(&mut ws).await {
        Message::Binary(b) if b[..] == big[..] => {}
        other => return Err(format!("1 MiB echo differs ({} bytes)", other.len())),
    }
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })))
        .await
        .map_err(|e| e.to_string())?;
    Ok(expect_close(&mut ws, Duration::from_secs(10)).await.unwrap_or(1005))
}

/// Node `ws` client; also returns the extensions it negotiated.
fn node_client(url: &str) -> Result<(u16, String), String> {
    let mut cmd = node_command("client.js");
    cmd.arg(url);
    let ran = run_bounded(cmd, b"", |_| false, CLIENT_DEADLINE);
    let line = ran.stdout.lines().last().unwrap_or_default().to_string();
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|_| format!("no result line: {:?} {:?}", ran.stdout, ran.stderr))?;
    if v["ok"] != true {
        return Err(format!("{}", v["error"]));
    }
    Ok((v["close"].as_u64().unwrap_or(0) as u16, v["extensions"].as_str().unwrap_or_default().to_string()))
}

/// websocat client: lines on stdin (`T` text, `B` base64 binary), echoes on stdout, close code
/// from its debug log.
fn websocat_client(bin: &std::path::Path, url: &str) -> Result<u16, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let lines = [
        "Thello from websocat".to_string(),
        format!("B{}", b64.encode([0u8, 1, 2, 0x80, 0xfe, 0xff])),
        format!("B{}", b64.encode(pattern(MIB))),
    ];
    let input = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let mut cmd = Command::new(bin);
    cmd.args(["-vv", "-B", "4000000", "--binary-prefix", "B", "--text-prefix", "T", "--base64"]).args([
        "--close-status-code",
        "1000",
        url,
    ]);
    // Close stdin (websocat then sends its Close) once all three echoes are back.
    let ran =
        run_bounded(cmd, input.as_bytes(), |out| out.lines().count() >= 3 && out.ends_with('\n'), CLIENT_DEADLINE);
    let got: Vec<&str> = ran.stdout.lines().collect();
    for (i, want) in lines.iter().enumerate() {
        if got.get(i) != Some(&want.as_str()) {
            let seen = got.get(i).map(|g| g.chars().take(40).collect::<String>());
            return Err(format!("echo {} differs: got {seen:?} (timed out: {})", i + 1, ran.timed_out));
        }
    }
    // "[DEBUG websocat::ws_peer] The close message is Some(CloseData { status_code: 1000, ... })"
    let close = ran.stderr.lines().find(|l| l.contains("The close message is"));
    match close {
        Some(l) if l.contains("is None") => Ok(1005),
        Some(l) => l
            .split("status_code: ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("unreadable close line {l:?}")),
        None => Err(format!("websocat saw no Close (timed out: {}): {}", ran.timed_out, ran.stderr.trim())),
    }
}

fn k6() -> Option<std::path::PathBuf> {
    let found = tool("WSINGRESS_K6", "k6", "version");
    if found.is_none() {
        skip("k6 not found (WSINGRESS_K6, .tools/bin/k6; scripts/install-tools.sh k6)");
    }
    found
}

fn k6_client(bin: &std::path::Path, url: &str) -> Result<u16, String> {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "-q", "--no-summary", "--log-format", "raw", "-e"])
        .arg(format!("URL={url}"))
        .arg(root().join("tests/peers/k6-client.js"))
        .env("K6_NO_USAGE_REPORT", "true");
    let ran = run_bounded(cmd, b"", |_| false, CLIENT_DEADLINE);
    let all = format!("{}\n{}", ran.stdout, ran.stderr);
    let line = all
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, j)| j.to_string()))
        .ok_or_else(|| format!("no RESULT line (timed out: {}): {}", ran.timed_out, all.trim()))?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
    if v["ok"] != true {
        return Err(format!("{} after {}", v["error"], v["steps"]));
    }
    Ok(v["close"].as_u64().unwrap_or(0) as u16)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_and_backend_pair_round_trips_through_the_proxy() {
    let started = Instant::now();
    let mut backends = vec![wsingress_echo_backend().await];
    backends.extend(node_backend().await);
    backends.extend(websocat_backend().await);
    let node = node_with("ws");
    if node.is_none() {
        skip("Node ws client: node or the ws package not found (scripts/install-tools.sh node)");
    }
    let websocat = websocat();
    let k6 = k6();

    let mut table = Vec::new();
    let mut failures = Vec::new();
    for b in &backends {
        let url = ws_url(b.proxy.proxy_addr, "/peers");
        let mut results: Vec<(&str, Result<u16, String>)> = Vec::new();
        results.push(("tokio-tungstenite", tungstenite_client(&url).await));
        if node.is_some() {
            let u = url.clone();
            let r = tokio::task::spawn_blocking(move || node_client(&u)).await.unwrap();
            results.push(("Node ws", r.map(|(code, _)| code)));
        }
        if let Some(bin) = websocat.clone() {
            let u = url.clone();
            results.push(("websocat", tokio::task::spawn_blocking(move || websocat_client(&bin, &u)).await.unwrap()));
        }
        if let Some(bin) = k6.clone() {
            let u = url.clone();
            results.push(("k6", tokio::task::spawn_blocking(move || k6_client(&bin, &u)).await.unwrap()));
        }
        for (client, result) in results {
            // k6/ws hands its close handler the code it sent itself when it started the close.
            let want = if client == "k6" { 1000 } else { b.close_code };
            let cell = match &result {
                Ok(code) if *code == want => format!("ok, close {code}"),
                Ok(code) => {
                    failures.push(format!("{client} → {}: close {code}, expected {want}", b.name));
                    format!("WRONG close {code}")
                }
                Err(why) => {
                    failures.push(format!("{client} → {}: {why}", b.name));
                    "FAILED".to_string()
                }
            };
            table.push(format!("| {client} | {} | {cell} |", b.name));
        }
    }
    println!("| client | backend (through wsingress) | text, binary, 1 MiB, close |\n|---|---|---|");
    println!("{}", table.join("\n"));
    println!("peer matrix: {} pairs in {:.1} s", table.len(), started.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "peer matrix failures:\n  {}", failures.join("\n  "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_negotiates_permessage_deflate_end_to_end_through_the_proxy() {
    let Some((server, addr)) = tokio::task::spawn_blocking(node_echo_process).await.unwrap() else {
        return;
    };
    let p = proxy(&[addr], &[]).await;
    let url = ws_url(p.proxy_addr, "/deflate");
    let (close, extensions) = tokio::task::spawn_blocking(move || node_client(&url)).await.unwrap().unwrap();
    assert_eq!(close, 1000);
    // The client's view: the backend's answer, passed through by the proxy.
    assert!(extensions.starts_with("permessage-deflate"), "client negotiated {extensions:?}");
    // The backend's view: the client's offer arrived, and it accepted it.
    let handshake = server.wait_line(Duration::from_secs(5), |l| {
        serde_json::from_str::<serde_json::Value>(l).ok()?.get("handshake").cloned()
    });
    assert!(handshake["offered"].as_str().unwrap_or_default().contains("permessage-deflate"), "{handshake}");
    assert_eq!(handshake["extensions"].as_str(), Some(extensions.as_str()), "{handshake}");

    // wsingress echo declines the offer: the proxy must not pretend otherwise.
    let e = echo("no-deflate", "").await;
    let p2 = proxy(&[e.addr], &[]).await;
    let url = ws_url(p2.proxy_addr, "/plain");
    let (_, extensions) = tokio::task::spawn_blocking(move || node_client(&url)).await.unwrap().unwrap();
    assert_eq!(extensions, "", "no extension when the backend declines");
}
