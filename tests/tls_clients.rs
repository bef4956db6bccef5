//! Real TLS clients against the real binary (`wsingress serve --manifests` with `spec.tls`,
//! `kind: Secret` and `--default-tls-secret`): `openssl s_client` sees the certificate SNI picks
//! (checked by subject, exact and wildcard), the default one without SNI or for an unknown
//! name, ALPN `http/1.1` for an `h2,http/1.1` offer and the `no_application_protocol` alert for
//! an `h2`-only offer; websocat echoes over `wss://` trusting the test CA; and bad input (a
//! handshake stalled mid-way, a truncated ClientHello, bytes that are no TLS, an unknown SNI to
//! a verifying client) each gets its documented answer and count in
//! `wsingress_tls_handshakes_total{result}` while a healthy wss tunnel keeps echoing.
//!
//! openssl is required (it is on every machine these tests run on); websocat is skipped with
//! the reason printed unless WSINGRESS_REQUIRE_TOOLS=1 (scripts/install-tools.sh websocat).

mod common;
mod tls_common;
#[path = "peers/tools.rs"]
mod tools;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tls_common::{Pki, Scratch, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tools::Ran;
use wsingress::tls::generate::Generated;

const BIN: &str = env!("CARGO_BIN_EXE_wsingress");
/// `--header-timeout` of the proxy under test: a stalled handshake is closed after it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// The binary serving a manifests file: its three listeners; killed on drop.
struct Served {
    _child: common::ServeProcess,
    tls: SocketAddr,
    admin: SocketAddr,
}

/// Start `wsingress serve` (the real binary) with `args` on ephemeral ports and read the
/// proxy, TLS and admin addresses from its "wsingress serving" line.
fn serve_binary(args: &[&str]) -> Served {
    let mut child: Child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start wsingress");
    let stdout = child.stdout.take().unwrap();
    let guard = common::ServeProcess(Some(child));
    let mut lines = BufReader::new(stdout).lines();
    let field = |line: &str, name: &str| -> Option<SocketAddr> {
        let start = line.find(&format!(" {name}="))? + name.len() + 2;
        line[start..].split_whitespace().next()?.trim_matches('"').parse().ok()
    };
    let line = loop {
        let line = lines.next().expect("wsingress exited before serving").unwrap();
        if line.contains("wsingress serving") {
            break line;
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Served {
        tls: field(&line, "tls").unwrap_or_else(|| panic!("no tls= in {line}")),
        admin: field(&line, "admin").unwrap_or_else(|| panic!("no admin= in {line}")),
        _child: guard,
    }
}

/// A manifests file and the PKI behind it: Secrets `chat-tls` (CN=chat, chat.example.com),
/// `games-tls` (CN=games, `*.games.example.com`), `local-tls` (CN=local, `localhost`, for
/// clients that cannot be told where a name lives) and `default-tls` (CN=default), an Ingress
/// naming the first three in `spec.tls` with rules for their hosts, and the echo Service.
struct Site {
    pki: Pki,
    dir: Scratch,
    manifests: PathBuf,
    ca_file: PathBuf,
}

impl Site {
    fn new(tag: &str, backend: SocketAddr) -> Self {
        let pki = Pki::new("tls-clients CA");
        let dir = Scratch::new(tag);
        let secret = |name: &str, g: &Generated| {
            let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: prod}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\n",
                indent(&g.cert_pem),
                indent(&g.key_pem)
            )
        };
        let rule = |host: &str| {
            format!(
                "    - host: \"{host}\"\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}]}}\n"
            )
        };
        let text = format!(
            "{}{}{}{}apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: chat, namespace: prod}}\nspec:\n  ingressClassName: wsingress\n  tls: [{{hosts: [chat.example.com], secretName: chat-tls}}, {{hosts: [\"*.games.example.com\"], secretName: games-tls}}, {{hosts: [localhost], secretName: local-tls}}]\n  rules:\n{}{}{}\
---\napiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: prod}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: echo-1, namespace: prod, labels: {{kubernetes.io/service-name: echo}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n",
            secret("chat-tls", &pki.leaf("chat", &["chat.example.com"])),
            secret("games-tls", &pki.leaf("games", &["*.games.example.com"])),
            secret("local-tls", &pki.leaf("local", &["localhost"])),
            secret("default-tls", &pki.leaf("default", &["default.example.com"])),
            rule("chat.example.com"),
            rule("*.games.example.com"),
            rule("localhost"),
            port = backend.port(),
            ip = backend.ip(),
        );
        let manifests = dir.write("site.yaml", &text);
        let ca_file = dir.write("ca.pem", &pki.ca_pem);
        Self { pki, dir, manifests, ca_file }
    }

    fn serve(&self, extra: &[&str]) -> Served {
        let header_timeout = format!("{}ms", HEADER_TIMEOUT.as_millis());
        let mut args = vec![
            "--manifests",
            self.manifests.to_str().unwrap(),
            "--default-tls-secret",
            "prod/default-tls",
            "--header-timeout",
            &header_timeout,
        ];
        args.extend_from_slice(extra);
        serve_binary(&args)
    }
}

/// `openssl s_client` to `addr` with `args`; its stdin closes once it prints (`CONNECTED`), so
/// it handshakes, prints what it negotiated, and leaves.
async fn s_client(addr: SocketAddr, ca: &Path, args: &[&str]) -> Ran {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string(), "-CAfile"]).arg(ca).args(args);
    let ran = tokio::task::spawn_blocking(move || tools::run_bounded(cmd, b"", |_| true, TIMEOUT)).await.unwrap();
    assert!(!ran.timed_out, "openssl s_client did not finish: {ran:?}");
    ran
}

/// The `subject=` line of an s_client run (`CN = chat`).
fn subject(o: &Ran) -> String {
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix("subject="))
        .unwrap_or_else(|| panic!("no subject in:\n{}\n{}", o.stdout, o.stderr))
        .trim()
        .to_string()
}

fn alpn(o: &Ran) -> String {
    o.stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("ALPN protocol: ")
                .map(str::to_string)
                .or_else(|| l.contains("No ALPN").then(|| "none".into()))
        })
        .unwrap_or_else(|| panic!("no ALPN line in:\n{}\n{}", o.stdout, o.stderr))
}

fn verified(o: &Ran) -> bool {
    o.stdout.contains("Verify return code: 0 (ok)")
}

async fn metrics_text(admin: SocketAddr) -> String {
    let (status, _, body) = common::http_get(admin, "admin", "/metrics").await;
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// `wsingress_tls_handshakes_total{result}` from the binary's /metrics.
async fn handshakes(admin: SocketAddr, result: &str) -> f64 {
    let text = metrics_text(admin).await;
    text.lines()
        .filter(|l| l.starts_with("wsingress_tls_handshakes_total{") && l.contains(&format!("result=\"{result}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls until the counter for `result` reaches `want`.
async fn wait_count(admin: SocketAddr, result: &str, want: f64) {
    let what = format!("wsingress_tls_handshakes_total{{result=\"{result}\"}} = {want}");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let have = handshakes(admin, result).await;
        if have == want {
            return;
        }
        if Instant::now() >= deadline {
            let text = metrics_text(admin).await;
            let all: Vec<&str> = text.lines().filter(|l| l.starts_with("wsingress_tls_handshakes_total{")).collect();
            panic!("timed out waiting for {what} (have {have}): {all:#?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn openssl_s_client_sees_the_certificate_sni_picks_and_never_h2() {
    let backend = common::echo("e", "").await;
    let site = Site::new("tls-clients-openssl", backend.addr);
    let served = site.serve(&[]);
    let ca = site.ca_file.as_path();

    // SNI picks the certificate: exact name, one-label wildcard, and verification passes.
    let chat = s_client(served.tls, ca, &["-servername", "chat.example.com", "-verify_return_error"]).await;
    assert!(chat.success && verified(&chat), "{}\n{}", chat.stdout, chat.stderr);
    assert_eq!(subject(&chat), "CN = chat");
    let games = s_client(
        served.tls,
        ca,
        &["-servername", "lobby.games.example.com", "-verify_hostname", "lobby.games.example.com"],
    )
    .await;
    assert_eq!(subject(&games), "CN = games");
    assert!(verified(&games), "{}", games.stdout);
    // The wildcard covers one label only: a deeper name gets the default certificate.
    let deep = s_client(served.tls, ca, &["-servername", "a.lobby.games.example.com"]).await;
    assert_eq!(subject(&deep), "CN = default");

    // No SNI, or a name nobody serves: the default certificate (`--default-tls-secret`).
    let none = s_client(served.tls, ca, &["-noservername"]).await;
    assert!(none.success, "{}", none.stderr);
    assert_eq!(subject(&none), "CN = default");
    let unknown = s_client(served.tls, ca, &["-servername", "unknown.example.org"]).await;
    assert_eq!(subject(&unknown), "CN = default");

    // ALPN: offered h2 and http/1.1, http/1.1 is chosen; without ALPN none is negotiated.
    let both = s_client(served.tls, ca, &["-servername", "chat.example.com", "-alpn", "h2,http/1.1"]).await;
    assert!(both.success, "{}", both.stderr);
    assert_eq!(alpn(&both), "http/1.1");
    assert_eq!(alpn(&chat), "none");
    // h2 only: the handshake fails with the no_application_protocol alert (120).
    let h2 = s_client(served.tls, ca, &["-servername", "chat.example.com", "-alpn", "h2"]).await;
    assert!(!h2.success, "an h2-only offer must not complete:\n{}", h2.stdout);
    assert!(h2.stderr.contains("no application protocol") || h2.stderr.contains("alert number 120"), "{}", h2.stderr);
    assert!(!h2.stdout.contains("ALPN protocol: h2"), "{}", h2.stdout);

    // TLS 1.2 and 1.3 are both served.
    let v12 = s_client(served.tls, ca, &["-servername", "chat.example.com", "-tls1_2"]).await;
    assert!(v12.success && v12.stdout.contains("Protocol  : TLSv1.2"), "{}\n{}", v12.stdout, v12.stderr);
    let v13 = s_client(served.tls, ca, &["-servername", "chat.example.com", "-tls1_3"]).await;
    assert!(v13.success && v13.stdout.contains("TLSv1.3"), "{}\n{}", v13.stdout, v13.stderr);

    wait_count(served.admin, "unsupported_alpn", 1.0).await;
    wait_count(served.admin, "ok", 8.0).await;
}

/// websocat (a Rust client on OpenSSL, trusting the CA through SSL_CERT_FILE) echoes over
/// `wss://localhost:PORT` through the proxy: SNI `localhost` picks `local-tls`, which websocat
/// verifies (its `--tls-domain` sets the SNI but not the name checked, so the URL names the host).
#[tokio::test]
async fn websocat_echoes_over_wss_trusting_the_test_ca() {
    let Some(websocat) = tools::tool("WSINGRESS_WEBSOCAT", "websocat", "--version") else {
        tools::skip("websocat not found (scripts/install-tools.sh websocat)");
        return;
    };
    let backend = common::echo("e", "wss: ").await;
    let site = Site::new("tls-clients-websocat", backend.addr);
    let served = site.serve(&[]);
    let url = format!("wss://localhost:{}/ws", served.tls.port());
    let mut cmd = Command::new(&websocat);
    cmd.args(["-1", &url]).env("SSL_CERT_FILE", &site.ca_file);
    let ran = tokio::task::spawn_blocking(move || {
        tools::run_bounded(cmd, b"hello over wss\n", |out| out.contains('\n'), TIMEOUT)
    })
    .await
    .unwrap();
    assert_eq!(ran.stdout.trim(), "wss: hello over wss", "{ran:?}");
    assert!(ran.success, "{ran:?}");

    // Without the CA it refuses the (otherwise identical) server: verification was on.
    let mut cmd = Command::new(&websocat);
    cmd.args(["-1", &url]).env("SSL_CERT_FILE", site.dir.0.join("missing.pem"));
    let refused =
        tokio::task::spawn_blocking(move || tools::run_bounded(cmd, b"x\n", |_| false, TIMEOUT)).await.unwrap();
    assert!(!refused.success && refused.stdout.is_empty(), "{refused:?}");

    wait_count(served.admin, "ok", 1.0).await;
    wait_count(served.admin, "certificate_rejected", 1.0).await;
}

async fn wss_connect(addr: SocketAddr, pki: &Pki, host: &str) -> Wss {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy");
    let (ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls).await.expect("wss handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// One echo on the healthy tunnel, within `within` (a slow answer means a bad client held it up).
async fn still_echoes(ws: &mut Wss, text: &str, within: Duration) {
    let started = Instant::now();
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(within, ws.next()).await.expect("the healthy tunnel stopped echoing") {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), text);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("the healthy tunnel ended: {other:?}"),
        }
    }
    assert!(started.elapsed() < within, "echo took {:?}", started.elapsed());
}

/// A real ClientHello (rustls, SNI chat.example.com, ALPN http/1.1) as the bytes on the wire.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(
        pki.client(&["http/1.1"], &[]),
        ServerName::try_from("chat.example.com").unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert!(out.len() > 100 && out[0] == 0x16, "not a handshake record: {out:?}");
    out
}

/// Reads until the proxy closes the connection; returns the bytes and when it closed.
async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(TIMEOUT, s.read(&mut chunk)).await.expect("the proxy never closed the connection") {
            Ok(0) | Err(_) => return (buf, Instant::now()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A TLS alert record (content type 21) with this description, anywhere in `bytes`.
fn has_alert(bytes: &[u8], description: u8) -> bool {
    bytes.windows(7).any(|w| w[0] == 21 && w[1] == 3 && w[3] == 0 && w[4] == 2 && w[6] == description)
}

/// Bad input, each on its own connection while a healthy wss tunnel keeps echoing:
/// - a handshake that stops after the ClientHello (the server's flight read, no Finished) and
///   one that stops inside the ClientHello: closed after `--header-timeout`, `timeout`;
/// - a truncated ClientHello followed by FIN: closed at once, `eof`;
/// - bytes that are no TLS: a `decode_error` alert, `protocol_error`;
/// - an unknown SNI: the default certificate, which a verifying client refuses
///   (`certificate_rejected`), while a non-verifying one completes (`ok`).
#[tokio::test]
async fn bad_tls_clients_get_their_answer_and_count_while_a_tunnel_keeps_echoing() {
    let backend = common::echo("e", "").await;
    let site = Site::new("tls-clients-bad", backend.addr);
    let served = site.serve(&[]);
    let pki = &site.pki;
    let mut healthy = wss_connect(served.tls, pki, "chat.example.com").await;
    let quick = Duration::from_millis(500);
    still_echoes(&mut healthy, "before", quick).await;
    let hello = client_hello(pki);

    // Stalled after the ClientHello, having read the server's flight.
    let mut stalled = TcpStream::connect(served.tls).await.unwrap();
    let opened = Instant::now();
    stalled.write_all(&hello).await.unwrap();
    // Stalled inside the ClientHello.
    let mut partial = TcpStream::connect(served.tls).await.unwrap();
    partial.write_all(&hello[..hello.len() / 2]).await.unwrap();
    // While both wait for their deadline, the tunnel answers at once, several times.
    for i in 0..5 {
        still_echoes(&mut healthy, &format!("during the stall {i}"), quick).await;
    }
    let (flight, stalled_closed) = until_closed(&mut stalled).await;
    assert!(flight.first() == Some(&0x16), "the server answered the ClientHello with its flight: {flight:?}");
    let (nothing, partial_closed) = until_closed(&mut partial).await;
    assert!(nothing.is_empty(), "nothing is sent for half a ClientHello: {nothing:?}");
    for (what, at) in [("stalled", stalled_closed), ("partial", partial_closed)] {
        let after = at - opened;
        assert!(
            after >= HEADER_TIMEOUT - Duration::from_millis(50),
            "{what}: closed after {after:?}, before the deadline"
        );
        assert!(after < HEADER_TIMEOUT + Duration::from_secs(3), "{what}: closed only after {after:?}");
    }
    wait_count(served.admin, "timeout", 2.0).await;
    still_echoes(&mut healthy, "after the stall", quick).await;

    // Truncated ClientHello, then FIN: closed without waiting for the deadline.
    let mut truncated = TcpStream::connect(served.tls).await.unwrap();
    let sent = Instant::now();
    truncated.write_all(&hello[..hello.len() - 10]).await.unwrap();
    truncated.shutdown().await.unwrap();
    let (_, closed) = until_closed(&mut truncated).await;
    assert!(closed - sent < HEADER_TIMEOUT, "a truncated ClientHello waited for the deadline");
    wait_count(served.admin, "eof", 1.0).await;
    still_echoes(&mut healthy, "after the truncation", quick).await;

    // A handshake record holding an empty ClientHello: alert decode_error (50), then closed.
    let mut garbage = TcpStream::connect(served.tls).await.unwrap();
    garbage.write_all(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00").await.unwrap();
    let (answer, _) = until_closed(&mut garbage).await;
    assert!(has_alert(&answer, 50), "expected a decode_error alert: {answer:?}");
    wait_count(served.admin, "protocol_error", 1.0).await;
    still_echoes(&mut healthy, "after the garbage", quick).await;

    // An unknown SNI gets the default certificate: a verifying client refuses it.
    let tcp = TcpStream::connect(served.tls).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from("unknown.example.org").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "the default certificate does not name unknown.example.org");
    wait_count(served.admin, "certificate_rejected", 1.0).await;
    still_echoes(&mut healthy, "after the unknown name", quick).await;

    // None of it cost the healthy tunnel or new clients anything.
    let mut fresh = wss_connect(served.tls, pki, "lobby.games.example.com").await;
    still_echoes(&mut fresh, "a new tunnel", quick).await;
    wait_count(served.admin, "ok", 2.0).await;
    healthy.close(None).await.unwrap();
}
