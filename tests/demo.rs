//! The README's first command: `wsingress demo` starts two echo backends and the proxy, prints
//! where to connect, echoes through the proxy, and stops cleanly on SIGTERM. `demo --tls` also
//! serves wss:// with a certificate from a CA it writes, and the client command it prints works.

mod common;

use std::io::{BufRead, BufReader};

use futures_util::{SinkExt, StreamExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Start `wsingress demo` with `extra` flags; the process and its stdout up to the line
/// "Press Ctrl-C to stop." (the rest is drained in the background).
fn start_demo(extra: &[&str]) -> (ServeProcess, Vec<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let mut guard = ServeProcess(Some(child));
    let stdout = guard.0.as_mut().and_then(|c| c.stdout.take()).unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    loop {
        let line = lines.next().expect("demo exited before it was ready").unwrap();
        let done = line.contains("Press Ctrl-C to stop.");
        printed.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (guard, printed)
}

/// The value printed after `label` (e.g. "WebSocket URL :").
fn printed_value(printed: &[String], label: &str) -> String {
    printed
        .iter()
        .find_map(|l| l.trim().strip_prefix(label).map(|r| r.trim().to_string()))
        .unwrap_or_else(|| panic!("the demo printed no `{label}` line: {printed:#?}"))
}

#[tokio::test]
async fn demo_prints_a_working_url_and_stops_on_sigterm() {
    let (mut guard, printed) = start_demo(&[]);
    let url = printed_value(&printed, "WebSocket URL :");
    assert!(!printed.iter().any(|l| l.contains("wss://")), "no TLS without --tls: {printed:#?}");
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

#[tokio::test]
async fn demo_tls_serves_wss_with_the_ca_it_writes_and_its_client_command_works() {
    use rustls::pki_types::ServerName;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("wsingress-demo-tls-test-{}-{nanos}", std::process::id()));
    let dir_text = dir.to_str().unwrap().to_string();
    let (_guard, printed) = start_demo(&["--tls", "--tls-listen", "127.0.0.1:0", "--tls-dir", &dir_text]);
    let wss = printed_value(&printed, "wss URL       :");
    assert!(wss.starts_with("wss://127.0.0.1:") && wss.ends_with('/'), "{wss}");
    let ws_url = printed_value(&printed, "WebSocket URL :");
    assert!(ws_url.starts_with("ws://127.0.0.1:"), "the plain demo still runs: {ws_url}");
    let ca = dir.join("ca.crt");
    assert!(printed_value(&printed, "CA to trust   :").starts_with(&*ca.to_string_lossy()), "{printed:#?}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("tls.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is the owner's only: {mode:o}");
    }

    // The printed client command, run as printed (plus an expectation), verifies and echoes.
    let command = printed_value(&printed, "try it (wss)  :");
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words[..2], ["wsingress", "client"], "{command}");
    let bin = env!("CARGO_BIN_EXE_wsingress");
    let out = tokio::process::Command::new(bin)
        .args(&words[1..])
        .args(["--expect", "Server received from client: hello"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A rustls client trusting only the written CA, by IP address and by name.
    let pem = std::fs::read(&ca).unwrap();
    let roots = wsingress::tls::material::ca_roots(&pem).expect("the written CA is PEM");
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(wsingress::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let addr: std::net::SocketAddr = wss.trim_start_matches("wss://").trim_end_matches('/').parse().unwrap();
    for name in ["127.0.0.1", "localhost"] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
            .await
            .unwrap_or_else(|e| panic!("{name}: the demo's certificate verifies against its CA: {e}"));
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{name}/"), tls).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(tokio_tungstenite::tungstenite::Message::text("over tls")).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "Server received from client: over tls");
    }

    // openssl's own check of the printed alternative, where openssl is installed.
    match std::process::Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => {
            let out = tokio::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr.to_string(), "-CAfile", ca.to_str().unwrap()])
                .args(["-alpn", "http/1.1", "-verify_return_error"])
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
            assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
        }
        _ => eprintln!("skipping the openssl s_client check: openssl is not installed"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
