//! `wsingress client` as a user runs it (the real binary): round trips through the proxy to the
//! echo server, a reply that differs fails with exit 1, retries until a route appears, `--host`
//! and `--header` reach the server, wss with `--ca` against a rustls server whose CA the test
//! makes with openssl, and flag mistakes exit 64 (2 for what clap rejects) before anything is sent.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const PREFIX: &str = "Server received from client: ";

async fn client(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .arg("client")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run wsingress client")
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn round_trips_through_the_proxy_and_exits_zero() {
    let a = common::echo("a", PREFIX).await;
    let b = common::echo("b", PREFIX).await;
    let proxy = common::proxy(&[a.addr, b.addr], &["--load-balance", "round-robin"]).await;
    let url = common::ws_url(proxy.proxy_addr, "/");
    let out = client(&[
        &url,
        "--send",
        "hello",
        "--expect",
        &format!("{PREFIX}hello"),
        "--send",
        "again",
        "--expect",
        &format!("{PREFIX}again"),
        "--count",
        "4",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok 4/4"), "{}", text(&out));
    // Four connections, round-robin over two echoes: both answered.
    assert!(stdout.contains("x-echo-instance: a") && stdout.contains("x-echo-instance: b"), "{}", text(&out));
}

#[tokio::test]
async fn a_reply_that_differs_fails_with_exit_1() {
    let a = common::echo("a", PREFIX).await;
    let proxy = common::proxy(&[a.addr], &[]).await;
    let url = common::ws_url(proxy.proxy_addr, "/");
    let started = Instant::now();
    let out = client(&[&url, "--send", "hello", "--expect", "hello"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("got \"{PREFIX}hello\", want \"hello\"")), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(5), "a mismatch without --retry-for fails at once");
    // Expecting a reply the server never sends: the attempt times out.
    let out = client(&[&url, "--expect", "a push from the server", "--timeout", "500ms"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer within"), "{}", text(&out));
}

#[tokio::test]
async fn refused_upgrades_and_dead_ports_fail_with_exit_1() {
    let proxy = common::manual_proxy(&[]).await;
    let url = common::ws_url(proxy.proxy_addr, "/");
    let out = client(&[&url, "--send", "x", "--expect", "x"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 404"), "{}", text(&out));
    let dead = common::dead_addr().await;
    let out = client(&[&common::ws_url(dead, "/")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("connecting to {dead}")), "{}", text(&out));
}

#[tokio::test]
async fn retries_until_the_route_appears() {
    let a = common::echo("a", PREFIX).await;
    let proxy = common::manual_proxy(&[]).await;
    let url = common::ws_url(proxy.proxy_addr, "/");
    let publisher = proxy.publisher();
    let routes = common::table(&[("", "/", "default/echo", &[a.addr])], wsingress::routes::RouteSettings::default());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .args(["client", &url, "--send", "hi", "--expect", &format!("{PREFIX}hi"), "--retry-for", "20s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run wsingress client");
    // The client is refused (404) until the route exists: wait for its first "not yet" line.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let retrying = line.contains("not yet");
            seen.push(line);
            if retrying {
                return;
            }
        }
    })
    .await;
    assert!(first.is_ok(), "no retry line: {seen:?}");
    assert!(seen.iter().any(|l| l.contains("HTTP 404")), "{seen:?}");
    publisher.publish(routes, &[]);
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("client ends").unwrap();
    assert_eq!(status.code(), Some(0), "{seen:?}");
    assert!(seen.last().is_some_and(|l| l.contains("ok 1/1")), "{seen:?}");
}

/// A WebSocket server that records each handshake's headers and echoes text unchanged.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<Vec<(String, String)>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let callback = |req: &Request, resp: Response| {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    record.lock().unwrap().push(headers);
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn host_and_headers_reach_the_server() {
    let (addr, seen) = recording_server().await;
    let url = common::ws_url(addr, "/chat?room=1");
    let out =
        client(&[&url, "--host", "echo.example.com", "--header", "X-User: alice", "--send", "x", "--expect", "x"])
            .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let get = |name: &str| seen[0].iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    assert_eq!(get("host"), ["echo.example.com"]);
    assert_eq!(get("x-user"), ["alice"]);
}

#[tokio::test]
async fn host_selects_the_route_through_the_proxy() {
    let a = common::echo("a", PREFIX).await;
    let proxy = common::manual_proxy(&[]).await;
    let routes = common::table(
        &[("echo.example.com", "/", "default/echo", &[a.addr])],
        wsingress::routes::RouteSettings::default(),
    );
    proxy.publisher().publish(routes, &[]);
    let url = common::ws_url(proxy.proxy_addr, "/");
    let want = format!("{PREFIX}x");
    let out = client(&[&url, "--host", "echo.example.com", "--send", "x", "--expect", &want]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = client(&[&url, "--send", "x", "--expect", &want]).await;
    assert_eq!(out.status.code(), Some(1), "without --host no route matches: {}", text(&out));
}

#[tokio::test]
async fn flag_mistakes_exit_64_before_connecting() {
    for args in [
        &["http://127.0.0.1:1/"][..],
        &["ws://127.0.0.1:1/", "--ca", "/nonexistent.pem"],
        &["wss://127.0.0.1:1/", "--ca", "/nonexistent.pem"],
        &["ws://127.0.0.1:1/", "--header", "no-colon"],
        &["ws://127.0.0.1:1/", "--count", "0"],
    ] {
        let out = client(args).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
    }
    // What clap itself rejects exits 2, as for every subcommand.
    let out = client(&["ws://127.0.0.1:1/", "--timeout", "soon"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

// ---- wss --------------------------------------------------------------------------------

/// A CA and a leaf for `name` (ECDSA P-256, made with the openssl CLI) in a fresh folder.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn pki(tag: &str, name: &str) -> Pki {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("client-pki-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let mut ca = vec!["req", "-x509", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj"];
    let ca_subject = format!("/CN=wsingress test CA {tag}");
    ca.push(&ca_subject);
    ca.extend_from_slice(&ec);
    openssl(&dir, &ca);
    let subject = format!("/CN={name}");
    let mut req = vec!["req", "-new", "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &subject];
    req.extend_from_slice(&ec);
    openssl(&dir, &req);
    std::fs::write(dir.join("ext.cnf"), format!("subjectAltName=DNS:{name}\n")).unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Pki { dir }
}

/// A wss echo server (rustls, ring) serving `pki`'s leaf.
async fn wss_echo(pki: &Pki) -> SocketAddr {
    let certs =
        CertificateDer::pem_file_iter(pki.dir.join("leaf.pem")).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.dir.join("leaf.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && ws.send(Message::text(format!("tls: {}", t.as_str()))).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn wss_with_ca_verifies_the_server() {
    let good = pki("good", "echo.test");
    let other = pki("other", "echo.test");
    let addr = wss_echo(&good).await;
    let url = format!("wss://{addr}/");
    let ca = good.dir.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let base = ["--host", "echo.test", "--send", "hi", "--expect", "tls: hi"];

    let out = client(&[&[url.as_str(), "--ca", ca][..], &base].concat()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Another CA, no CA (system roots), the wrong name: the handshake is refused.
    let wrong_ca = other.dir.join("ca.pem");
    let cases: [Vec<&str>; 3] = [
        [&[url.as_str(), "--ca", wrong_ca.to_str().unwrap()][..], &base].concat(),
        [&[url.as_str()][..], &base].concat(),
        vec![url.as_str(), "--ca", ca, "--host", "other.test", "--send", "hi", "--expect", "tls: hi"],
    ];
    for args in cases {
        let out = client(&args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("TLS handshake"), "{args:?}: {}", text(&out));
    }
}

// The proxy's own TLS listener (issue 12) gets its wss check here once it lands: `wsingress
// client wss://… --ca` through `serve --tls-listen` to the echo.
