//! The README's first command: `wsingress demo` starts two echo backends and the proxy, prints
//! where to connect, echoes through the proxy, and stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test]
async fn demo_prints_a_working_url_and_stops_on_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let mut guard = ServeProcess(Some(child));
    let stdout = guard.0.as_mut().and_then(|c| c.stdout.take()).unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("demo exited before printing its URL").unwrap();
        if let Some(rest) = line.trim().strip_prefix("WebSocket URL :") {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");

    // Two backends behind the proxy, both with the classic tutorial's prefix.
    let mut seen = std::collections::HashSet::new();
    for i in 0..4 {
        let mut ws = connect(&url).await;
        let view = backend_view(&mut ws).await;
        seen.insert(view["instance"].as_str().unwrap().to_string());
        assert_eq!(round_trip(&mut ws, &format!("hello {i}")).await, format!("Server received from client: hello {i}"));
    }
    assert_eq!(seen.len(), 2, "connections spread over both demo backends: {seen:?}");

    let pid = guard.0.as_ref().map(std::process::Child::id).unwrap();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let mut child = guard.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    })
    .await
    .unwrap()
    .expect("the demo did not stop within 10 s of SIGTERM");
    assert!(status.success(), "{status}");
}
