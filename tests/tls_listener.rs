//! The TLS listener (`serve --tls-listen`) end to end: wss and https through the proxy to a
//! plain backend with `X-Forwarded-Proto: https`, a large message both ways and the shutdown
//! Close over TLS, plain HTTP on the TLS port, certificate rotation while a tunnel stays open,
//! `ssl-redirect` (308 from the plain listener for hosts with a certificate), and
//! `--tls-listen off`.

mod common;
mod tls_common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{echo, metric, proxy};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tls_common::{Pki, TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use wsingress::tls::generate::Generated;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// Certificate and key files in a scratch folder (removed on drop).
struct CertFiles {
    dir: PathBuf,
}

impl CertFiles {
    fn new(leaf: &Generated) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("wsingress-tls-listener-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = Self { dir };
        files.replace(leaf);
        files
    }

    fn cert(&self) -> String {
        self.dir.join("tls.crt").display().to_string()
    }

    fn key(&self) -> String {
        self.dir.join("tls.key").display().to_string()
    }

    /// Write both files aside, then rename them into place (as a renewal tool does).
    fn replace(&self, leaf: &Generated) {
        for (name, text) in [("tls.key", &leaf.key_pem), ("tls.crt", &leaf.cert_pem)] {
            let tmp = self.dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.join(name)).unwrap();
        }
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS connection to `addr` with SNI `host`, trusting `pki`.
async fn tls_connect(addr: SocketAddr, pki: &Pki, host: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from(host.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the proxy")
}

/// The DER of the certificate the server presented.
fn served_certificate(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

async fn wss_connect(addr: SocketAddr, pki: &Pki, host: &str) -> (Wss, Vec<u8>) {
    let tls = tls_connect(addr, pki, host).await;
    let der = served_certificate(&tls);
    let (ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), tls).await.expect("wss handshake");
    assert_eq!(resp.status(), 101);
    (ws, der)
}

async fn next_message(ws: &mut Wss) -> Message {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await.expect("no message in time") {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

async fn round_trip(ws: &mut Wss, text: &str) -> String {
    ws.send(Message::text(text)).await.unwrap();
    next_message(ws).await.into_text().unwrap().to_string()
}

/// The DER of a leaf's certificate (the first block of its PEM).
fn der_of(leaf: &Generated) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .next()
        .expect("a PEM block")
        .expect("a certificate")
        .to_vec()
}

#[tokio::test]
async fn wss_and_https_through_the_tls_listener_reach_a_plain_backend() {
    let pki = Pki::new("listener CA");
    let leaf = pki.leaf("chat", &["chat.example.com"]);
    let files = CertFiles::new(&leaf);
    let e = echo("e", "").await;
    let p = proxy(&[e.addr], &["--tls-cert", &files.cert(), "--tls-key", &files.key()]).await;
    let tls_addr = p.tls_addr.expect("the TLS listener is on by default");

    let (mut ws, der) = wss_connect(tls_addr, &pki, "chat.example.com").await;
    assert_eq!(der, der_of(&leaf), "the --tls-cert certificate is served");
    // The backend speaks plain ws:// and learns the client used TLS on our TLS port (the
    // first message `__headers__` asks the echo server for the request it saw).
    let reply = round_trip(&mut ws, "__headers__").await;
    let view: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    let headers = &view["headers"];
    assert_eq!(headers["x-forwarded-proto"], "https", "{view}");
    assert_eq!(headers["x-forwarded-port"], tls_addr.port().to_string(), "{view}");
    assert_eq!(round_trip(&mut ws, "over tls").await, "over tls");
    ws.close(None).await.unwrap();

    // Plain HTTP over TLS too.
    let mut tls = tls_connect(tls_addr, &pki, "chat.example.com").await;
    tls.write_all(b"GET /headers HTTP/1.1\r\nHost: chat.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_string(&mut out)).await.unwrap().unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"x-forwarded-proto\":\"https\""), "{out}");

    assert_eq!(metric(&p.metrics, "wsingress_tls_handshakes_total", &[("result", "ok")]), 2.0);
    assert_eq!(metric(&p.metrics, "wsingress_tls_handshake_duration_seconds_count", &[]), 2.0);
    p.shutdown(Duration::from_secs(2)).await;
}

/// A 4 MiB message each way (many TLS records, the socket not taking them at once) arrives
/// intact, and on shutdown the client still gets the proxy's Close 1001 through TLS.
#[tokio::test]
async fn a_large_message_and_the_shutdown_close_cross_tls() {
    let pki = Pki::new("listener CA");
    let leaf = pki.leaf("chat", &["chat.example.com"]);
    let files = CertFiles::new(&leaf);
    let e = echo("e", "").await;
    let p = proxy(&[e.addr], &["--tls-cert", &files.cert(), "--tls-key", &files.key()]).await;
    let (mut ws, _) = wss_connect(p.tls_addr.unwrap(), &pki, "chat.example.com").await;
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let back = next_message(&mut ws).await.into_data();
    assert_eq!(back.len(), big.len());
    assert!(back[..] == big[..], "the echo differs");

    let shutdown = tokio::spawn(p.shutdown(Duration::from_secs(5)));
    let code = loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await.expect("no Close in time") {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("the tunnel ended without a Close: {other:?}"),
        }
    };
    assert_eq!(code, Some(1001));
    // Keep reading so tungstenite sends its Close reply (it goes out with the next poll); a
    // client that never answers costs the proxy its close linger.
    let _ = tokio::time::timeout(TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(shutdown.await.unwrap(), "the drain finished in time");
}

/// Plain HTTP sent to the TLS port gets a readable 400, counted as `plaintext_http`.
#[tokio::test]
async fn plain_http_on_the_tls_port_gets_400_and_is_counted() {
    let e = echo("e", "").await;
    let p = proxy(&[e.addr], &[]).await;
    let mut s = TcpStream::connect(p.tls_addr.unwrap()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let (buf, _) = common::read_until_closed(&mut s, TIMEOUT).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    common::wait_until(TIMEOUT, "the plaintext handshake to be counted", || {
        let m = p.metrics.clone();
        async move { metric(&m, "wsingress_tls_handshakes_total", &[("result", "plaintext_http")]) == 1.0 }
    })
    .await;
    // The plain listener is unaffected.
    assert_eq!(common::http_get(p.proxy_addr, "a", "/healthz").await.0, 200);
}

/// Renewed certificate files are served to new handshakes while a tunnel opened before keeps
/// working on its session.
#[tokio::test]
async fn rotation_keeps_open_tunnels_and_new_handshakes_get_the_new_certificate() {
    let pki = Pki::new("listener CA");
    let first = pki.leaf("chat", &["chat.example.com"]);
    let files = CertFiles::new(&first);
    let e = echo("e", "").await;
    let p = proxy(&[e.addr], &["--tls-cert", &files.cert(), "--tls-key", &files.key()]).await;
    let tls_addr = p.tls_addr.unwrap();
    let (mut open, der) = wss_connect(tls_addr, &pki, "chat.example.com").await;
    assert_eq!(der, der_of(&first));

    let renewed = pki.leaf("chat", &["chat.example.com"]);
    files.replace(&renewed);
    let want = der_of(&renewed);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tls = tls_connect(tls_addr, &pki, "chat.example.com").await;
        if served_certificate(&tls) == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..3 {
        let text = format!("still here {i}");
        assert_eq!(round_trip(&mut open, &text).await, text);
    }
    let (mut fresh, _) = wss_connect(tls_addr, &pki, "chat.example.com").await;
    assert_eq!(round_trip(&mut fresh, "new session").await, "new session");
}

#[tokio::test]
async fn tls_listen_off_serves_no_tls() {
    let e = echo("e", "").await;
    let p = proxy(&[e.addr], &["--tls-listen", "off"]).await;
    assert_eq!(p.tls_addr, None);
    assert_eq!(common::http_get(p.proxy_addr, "a", "/healthz").await.0, 200);
}

/// A manifests file: Secret `chat-tls` for chat.example.com in the Ingress's `spec.tls`, rules
/// for chat.example.com and plain.example.com (no certificate), and Ingress `open` for
/// open.example.com (a certificate, `ssl-redirect: "false"`), all to the echo backend.
fn redirect_manifests(pki: &Pki, backend: SocketAddr) -> String {
    let chat = pki.leaf("chat", &["chat.example.com", "open.example.com"]);
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let rule = |host: &str| {
        format!(
            "    - host: {host}\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}]}}\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: chat-tls, namespace: default}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{crt}  tls.key: |\n{key}\
---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: chat, namespace: default}}\nspec:\n  ingressClassName: wsingress\n  tls: [{{hosts: [chat.example.com], secretName: chat-tls}}]\n  rules:\n{chat_rule}{plain_rule}\
---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: open, namespace: default, annotations: {{wsingress.io/ssl-redirect: \"false\"}}}}\nspec:\n  ingressClassName: wsingress\n  tls: [{{hosts: [open.example.com], secretName: chat-tls}}]\n  rules:\n{open_rule}\
---\napiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: default}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n\
---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n",
        crt = indent(&chat.cert_pem),
        key = indent(&chat.key_pem),
        chat_rule = rule("chat.example.com"),
        plain_rule = rule("plain.example.com"),
        open_rule = rule("open.example.com"),
        port = backend.port(),
        ip = backend.ip(),
    )
}

/// Plain HTTP and `ws://` to a host with its own certificate get 308 to `https://` (path and
/// query kept); a host without one, or a route with `ssl-redirect: "false"`, is served; the
/// same host over TLS is served.
#[tokio::test]
async fn hosts_with_a_certificate_redirect_plain_requests_to_https() {
    let pki = Pki::new("redirect CA");
    let e = echo("e", "").await;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let path = std::env::temp_dir().join(format!("wsingress-redirect-{}-{nanos}.yaml", std::process::id()));
    std::fs::write(&path, redirect_manifests(&pki, e.addr)).unwrap();
    let args = common::serve_args(&[]);
    let p = wsingress::app::start(&args, wsingress::app::RouteSource::Manifests(path.clone())).await.unwrap();
    let _ = std::fs::remove_file(&path);

    let (status, head, _) = common::http_get(p.proxy_addr, "chat.example.com:8080", "/room/1?x=y").await;
    assert_eq!(status, 308, "{head}");
    assert!(head.to_ascii_lowercase().contains("location: https://chat.example.com/room/1?x=y"), "{head}");

    let mut s = TcpStream::connect(p.proxy_addr).await.unwrap();
    s.write_all(common::upgrade_request("chat.example.com", "/ws", "").as_bytes()).await.unwrap();
    let (buf, _) = common::read_until_closed(&mut s, TIMEOUT).await;
    let (status, head, _) = common::parse_response(&buf);
    assert_eq!(status, 308, "a ws:// upgrade is redirected too: {head}");
    assert!(head.to_ascii_lowercase().contains("location: https://chat.example.com/ws"), "{head}");

    assert_eq!(common::http_get(p.proxy_addr, "plain.example.com", "/headers").await.0, 200, "no certificate");
    assert_eq!(common::http_get(p.proxy_addr, "open.example.com", "/headers").await.0, 200, "ssl-redirect off");

    let (mut ws, _) = wss_connect(p.tls_addr.unwrap(), &pki, "chat.example.com").await;
    assert_eq!(round_trip(&mut ws, "secure").await, "secure");
    assert_eq!(
        metric(&p.metrics, "wsingress_http_requests_total", &[("route", "default/chat"), ("status_class", "3xx")]),
        1.0
    );
}
