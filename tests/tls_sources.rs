//! Where certificates come from, end to end: `wsingress echo --tls-cert/--tls-key` serving
//! wss and https (in-process and the real binary), `serve --tls-cert/--tls-key` reloaded on a
//! Kubernetes-style `..data` symlink swap, `serve --manifests` with `kind: Secret` and
//! `spec.tls` shown on `/routes` and in the expiry metric, and bad TLS flags exiting 64.

mod common;
mod tls_common;
#[path = "peers/tools.rs"]
mod tools;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tls_common::{Pki, Scratch, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsingress::app::{self, RouteSource};
use wsingress::echo::{self, EchoConfig};
use wsingress::tls::{self, CertHandle, material};

/// wss echo through tokio-rustls (trusting `pki`) and tungstenite; returns the echo of `text`.
async fn wss_round_trip(addr: SocketAddr, pki: &Pki, host: &str, text: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap().unwrap().unwrap();
    ws.close(None).await.unwrap();
    reply.into_text().unwrap().to_string()
}

/// `GET path` over TLS; returns the whole response.
async fn https_get(addr: SocketAddr, pki: &Pki, host: &str, path: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_string(&mut out)).await.unwrap().unwrap();
    out
}

#[tokio::test]
async fn the_echo_server_serves_wss_and_https() {
    let pki = Pki::new("echo CA");
    let handle = Arc::new(CertHandle::new(pki.entry(tls::CertSource::SelfSigned, "echo", &["echo.test"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = EchoConfig { prefix: "tls: ".into(), instance: "e1".into() };
    let task = tokio::spawn(echo::serve_tls(listener, config, tls::server::config(handle).unwrap(), stop.clone()));
    assert_eq!(wss_round_trip(addr, &pki, "echo.test", "hello").await, "tls: hello");
    let page = https_get(addr, &pki, "echo.test", "/").await;
    assert!(page.starts_with("HTTP/1.1 200 OK") && page.contains("x-echo-instance: e1"), "{page}");
    assert!(page.contains("\"wss://\""), "the page picks wss:// when loaded over https");
    // Plain HTTP to the TLS port gets the 400, and the server keeps serving.
    let (status, _, _) = common::http_get(addr, "echo.test", "/healthz").await;
    assert_eq!(status, 400);
    assert_eq!(wss_round_trip(addr, &pki, "echo.test", "again").await, "tls: again");
    stop.cancel();
    tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap().unwrap();
}

/// The real binary: `wsingress echo --tls-cert F --tls-key K`.
#[tokio::test]
async fn the_echo_binary_takes_tls_cert_and_key() {
    let pki = Pki::new("binary CA");
    let leaf = pki.leaf("echo", &["echo.test"]);
    let dir = Scratch::new("echo-tls");
    let cert = dir.write("tls.crt", &leaf.cert_pem);
    let key = dir.write("tls.key", &leaf.key_pem);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsingress"))
        .args(["echo", "--listen", "127.0.0.1:0", "--instance", "bin"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let addr = tokio::task::spawn_blocking(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("local=").nth(1) {
                return rest.split_whitespace().next().unwrap().parse::<SocketAddr>().unwrap();
            }
        }
        panic!("the echo server never said where it listens");
    });
    let addr = tokio::time::timeout(TIMEOUT, addr).await.unwrap().unwrap();
    let reply = wss_round_trip(addr, &pki, "echo.test", "from a test").await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(reply, "from a test");
}

/// Node `ws` (OpenSSL underneath) with `ca:` against the echo server over wss: the
/// certificate verifies, a message echoes, the close handshake completes.
#[tokio::test]
async fn node_ws_with_ca_echoes_over_wss() {
    if tools::node_with("ws").is_none() {
        tools::skip("Node ws client: node or the ws package not found (scripts/install-tools.sh node)");
        return;
    }
    let pki = Pki::new("node CA");
    let dir = Scratch::new("node-wss");
    let ca = dir.write("ca.crt", &pki.ca_pem);
    let handle = Arc::new(CertHandle::new(pki.entry(tls::CertSource::SelfSigned, "echo", &["127.0.0.1"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = EchoConfig { prefix: "node: ".into(), instance: "e".into() };
    tokio::spawn(echo::serve_tls(listener, config, tls::server::config(handle).unwrap(), stop.clone()));
    const SCRIPT: &str = r#"
const WebSocket = require('ws');
const ws = new WebSocket(process.argv[1], { ca: require('fs').readFileSync(process.argv[2]) });
ws.on('open', () => ws.send('hello'));
ws.on('message', (d) => { console.log('got:' + d.toString()); ws.close(1000); });
ws.on('close', (code) => { console.log('closed:' + code); process.exit(0); });
ws.on('error', (e) => { console.log('error:' + e.message); process.exit(1); });
"#;
    let mut cmd = Command::new("node");
    cmd.args(["-e", SCRIPT, &format!("wss://{addr}/ws")]).arg(&ca).env("NODE_PATH", tools::node_path());
    let ran = tokio::task::spawn_blocking(move || tools::run_bounded(cmd, b"", |_| false, TIMEOUT)).await.unwrap();
    assert!(ran.success, "{ran:?}");
    assert!(ran.stdout.contains("got:node: hello") && ran.stdout.contains("closed:1000"), "{ran:?}");
    stop.cancel();
}

async fn routes_json(admin: SocketAddr) -> serde_json::Value {
    let (status, _, body) = common::http_get(admin, "admin", "/routes").await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

async fn metrics_text(admin: SocketAddr) -> String {
    let (_, _, body) = common::http_get(admin, "admin", "/metrics").await;
    String::from_utf8(body).unwrap()
}

#[tokio::test]
async fn serve_tls_cert_files_reload_on_a_symlink_swap() {
    let pki = Pki::new("sidecar CA");
    let dir = Scratch::new("sidecar-tls");
    let v1 = pki.leaf("v1", &["sidecar.test"]);
    dir.swap("v1", &v1.cert_pem, &v1.key_pem);
    let backend = common::echo("b", "").await;
    let crt = dir.0.join("tls.crt").display().to_string();
    let key = dir.0.join("tls.key").display().to_string();
    let running = common::proxy(&[backend.addr], &["--tls-cert", &crt, "--tls-key", &key]).await;
    let admin = running.admin_addr;
    let subject = |v: &serde_json::Value| v["tls"]["fallback"]["subject"].as_str().unwrap_or("").to_string();
    assert_eq!(subject(&routes_json(admin).await), "CN=v1");
    assert!(metrics_text(admin).await.contains(&format!("secret=\"file:{crt}\"")));
    let v2 = pki.leaf("v2", &["sidecar.test"]);
    dir.swap("v2", &v2.cert_pem, &v2.key_pem);
    common::wait_until(TIMEOUT, "the reload", || async move { subject(&routes_json(admin).await) == "CN=v2" }).await;
    // The handle the TLS listener will read has it too.
    assert_eq!(running.certs.fallback().info.subject, "CN=v2");
    running.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn manifests_secrets_and_spec_tls_show_on_routes_and_metrics() {
    let pki = Pki::new("manifests CA");
    let chat = pki.leaf("chat", &["chat.example.com"]);
    let default = pki.leaf("default", &["default.example.com"]);
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let secret = |name: &str, g: &tls::generate::Generated| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: prod}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
            indent(&g.cert_pem),
            indent(&g.key_pem)
        )
    };
    let text = format!(
        "{}{}{}",
        secret("chat-tls", &chat),
        secret("default-tls", &default),
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: chat, namespace: prod}
spec:
  ingressClassName: wsingress
  tls: [{hosts: [chat.example.com], secretName: chat-tls}, {hosts: [broken.example.com], secretName: missing}]
  rules:
    - host: chat.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: chat, port: {number: 80}}}}]}
    - host: plain.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: chat, port: {number: 80}}}}]}
"#
    );
    let dir = Scratch::new("manifests-tls");
    let path = dir.write("routes.yaml", &text);
    let args = common::serve_args(&["--default-tls-secret", "prod/default-tls"]);
    let running = app::start(&args, RouteSource::Manifests(path.clone())).await.unwrap();
    let v = routes_json(running.admin_addr).await;
    let hosts = v["tls"]["hosts"].as_array().unwrap();
    let of = |h: &str| hosts.iter().find(|x| x["host"] == h).unwrap_or_else(|| panic!("{h} in {v}")).clone();
    assert_eq!(of("chat.example.com")["certificate"]["subject"], "CN=chat");
    assert_eq!(of("chat.example.com")["choice"], "host");
    assert_eq!(of("plain.example.com")["certificate"]["subject"], "CN=default");
    assert_eq!(of("plain.example.com")["choice"], "default");
    assert_eq!(v["tls"]["generation"], v["generation"]);
    let metrics = metrics_text(running.admin_addr).await;
    for secret in ["prod/chat-tls", "prod/default-tls"] {
        assert!(
            metrics.contains(&format!("wsingress_tls_certificate_expiry_timestamp_seconds{{secret=\"{secret}\"}}"))
        );
    }
    // The missing Secret is a warning, counted; nothing else broke.
    assert!(metrics.contains("wsingress_config_warnings "), "{metrics}");
    let serial = |e: &tls::CertEntry| e.info.serial.clone();
    let before = serial(running.certs.load().lookup("chat.example.com").unwrap());
    // Rotate the Secret in the file: the new serial is served.
    let rotated = pki.leaf("chat", &["chat.example.com"]);
    std::fs::write(
        &path,
        text.replace(&indent(&chat.cert_pem), &indent(&rotated.cert_pem))
            .replace(&indent(&chat.key_pem), &indent(&rotated.key_pem)),
    )
    .unwrap();
    let certs = running.certs.clone();
    common::wait_until(TIMEOUT, "the rotation", || {
        let certs = certs.clone();
        let before = before.clone();
        async move { certs.load().lookup("chat.example.com").is_some_and(|e| e.info.serial != before) }
    })
    .await;
    let want = material::load(
        rotated.cert_pem.as_bytes(),
        rotated.key_pem.as_bytes(),
        tls::CertSource::SelfSigned,
        tls::unix_now(),
        &tls::provider(),
    )
    .unwrap();
    assert_eq!(serial(running.certs.load().lookup("chat.example.com").unwrap()), want.info.serial);
    running.shutdown(Duration::from_secs(2)).await;
}

fn exit_code(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wsingress")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_tls_flags_exit_64_before_binding() {
    let dir = Scratch::new("bad-tls");
    let pki = Pki::new("bad CA");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let cert = dir.write("a.crt", &a.cert_pem);
    let other_key = dir.write("b.key", &b.key_pem);
    let base = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        "127.0.0.1:1",
    ];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    let path = |p: &Path| p.display().to_string();
    let (code, err) = exit_code(&with(&base, &["--tls-cert", &path(&cert), "--tls-key", &path(&other_key)]));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("does not match the certificate"), "{err}");
    let (code, err) = exit_code(&with(&base, &["--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"]));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("cannot read /nonexistent.crt"), "{err}");
    let (code, err) = exit_code(&with(&base, &["--default-tls-secret", "prod/default-tls"]));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
    let (code, _) = exit_code(&with(&base, &["--default-tls-secret", "no-namespace"]));
    assert_eq!(code, Some(2), "clap rejects a malformed NAMESPACE/NAME");
}
