//! Graceful shutdown of the real binary: SIGTERM → readiness false, Close 1001 to every
//! WebSocket client, exit 0 once all are closed.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;

#[tokio::test]
async fn sigterm_sends_1001_to_every_client_and_exits() {
    let e = echo("e1", "").await;
    let upstream = e.addr.to_string();
    let args = ["--upstream", upstream.as_str(), "--shutdown-timeout", "10s"];
    let (mut guard, proxy, admin) = spawn_serve_binary(env!("CARGO_BIN_EXE_wsingress"), &args, "info");
    assert_eq!(http_get(admin, "x", "/readyz").await.0, 200);
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut ws = connect(&ws_url(proxy, "/")).await;
        assert_eq!(round_trip(&mut ws, &format!("c{i}")).await, format!("c{i}"));
        clients.push(ws);
    }
    let pid = guard.0.as_ref().map(|c| c.id()).unwrap();
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    for ws in &mut clients {
        assert_eq!(expect_close(ws, Duration::from_secs(10)).await, Some(1001));
    }
    // The clients answered the Close, so the drain completes and the process exits cleanly.
    let mut child = guard.0.take().unwrap();
    let exit = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let exit = exit.expect("wsingress did not exit within 10 s of SIGTERM");
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test]
async fn readiness_goes_false_before_connections_close() {
    let e = echo("e1", "").await;
    let p = proxy(&[e.addr], &[]).await;
    let admin = p.admin_addr;
    assert_eq!(http_get(admin, "x", "/readyz").await.0, 200);
    let mut ws = connect(&ws_url(p.proxy_addr, "/")).await;
    let readiness = p.readiness.clone();
    let shutdown = tokio::spawn(p.shutdown(Duration::from_secs(5)));
    // The first thing a drain does is flip readiness.
    wait_until(Duration::from_secs(2), "readiness false", || async { !readiness.is_ready() }).await;
    assert_eq!(expect_close(&mut ws, Duration::from_secs(5)).await, Some(1001));
    // Keep reading so tungstenite sends its Close reply (it goes out with the next poll); a
    // client that never answers costs the proxy its close linger.
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(shutdown.await.unwrap(), "every tunnel closed within the drain timeout");
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let out = Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-listen", "off", "--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not-an-address"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .args(["serve", "--upstream", "127.0.0.1:1", "--trusted-proxies", "10.0.0.0/99"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.0.0.0/99"));
}
