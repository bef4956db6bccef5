//! The PROXY protocol on loopback (`--proxy-protocol`): v1 and v2 headers (v2 with TLVs) from a
//! trusted peer make the carried address the client (the echo backend's `/headers` shows it in
//! `X-Real-IP` and `X-Forwarded-For`), on the plain and the TLS listener; a header from an
//! untrusted peer (bound to 127.0.0.2 while only 127.0.0.1/32 is trusted) is refused, a
//! trusted peer without a header is refused, and a malformed header closes only its own
//! connection while an established tunnel keeps echoing. With HAProxy installed
//! (`scripts/install-tools.sh haproxy`), HAProxy's own `send-proxy` and `send-proxy-v2` are
//! put in front.

mod common;
mod tls_common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const TRUST_LOCALHOST: &[&str] = &["--proxy-protocol", "--proxy-protocol-from", "127.0.0.1/32"];

/// A TCP connection to `to` from the loopback address `from` (any port).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

const GET_HEADERS: &[u8] = b"GET /headers HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n";

/// Send `prefix` then `GET /headers`; the response (status, head, body) and whether the
/// connection was closed without any answer.
async fn exchange(mut s: TcpStream, prefix: &[u8]) -> (u16, String, Vec<u8>) {
    let mut out = prefix.to_vec();
    out.extend_from_slice(GET_HEADERS);
    // The proxy may close before reading everything (a refused header): a failed write is fine.
    let _ = s.write_all(&out).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    read.expect("the proxy answers or closes in time").ok();
    parse_response(&buf)
}

/// Send a text message over a WebSocket on a raw TCP stream and return the echoed text.
async fn ws_round(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, text: &str) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an answer in time") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("tunnel ended: {other:?}"),
        }
    }
}

fn headers_of(body: &[u8]) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(body).expect("the backend's /headers JSON");
    v["headers"].clone()
}

fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = addresses.to_vec();
    for (t, v) in tlvs {
        body.push(*t);
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    let mut out = wsingress::proxy::proxy_protocol::V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A v2 PROXY header for TCP over IPv6 from `src`, with an ALPN and an authority TLV.
fn v2_tcp6(src: &str, sport: u16) -> Vec<u8> {
    let mut a = src.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    a.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&8080u16.to_be_bytes());
    v2(1, 0x21, &a, &[(0x01, b"http/1.1"), (0x02, b"pp.test")])
}

fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&[127, 0, 0, 1]);
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&8080u16.to_be_bytes());
    v2(1, 0x11, &a, &[(0x04, &[0xde, 0xad, 0xbe, 0xef])])
}

fn rejected(p: &wsingress::app::Running, reason: &str) -> u64 {
    p.metrics.connections_rejected.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_client() {
    let backend = echo("b1", "").await;
    let p = proxy(&[backend.addr], TRUST_LOCALHOST).await;

    let s = connect_from("127.0.0.1", p.proxy_addr).await;
    let (status, head, body) = exchange(s, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n").await;
    assert_eq!(status, 200, "{head}");
    let h = headers_of(&body);
    assert_eq!(h["x-real-ip"], "203.0.113.7", "{h}");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7", "{h}");

    let s = connect_from("127.0.0.1", p.proxy_addr).await;
    let (status, head, body) = exchange(s, &v2_tcp6("2001:db8::7", 5555)).await;
    assert_eq!(status, 200, "{head}");
    let h = headers_of(&body);
    assert_eq!(h["x-real-ip"], "2001:db8::7", "v2 over IPv6 with two TLVs: {h}");
    assert_eq!(h["x-forwarded-for"], "2001:db8::7", "{h}");

    let s = connect_from("127.0.0.1", p.proxy_addr).await;
    let (status, _, body) = exchange(s, &v2_tcp4([198, 51, 100, 23], 6000)).await;
    assert_eq!(status, 200);
    assert_eq!(headers_of(&body)["x-real-ip"], "198.51.100.23");

    // LOCAL (a load balancer's health check) and UNKNOWN keep the socket's peer.
    for local in [v2(0, 0x00, &[], &[]), b"PROXY UNKNOWN\r\n".to_vec()] {
        let s = connect_from("127.0.0.1", p.proxy_addr).await;
        let (status, _, body) = exchange(s, &local).await;
        assert_eq!(status, 200);
        assert_eq!(headers_of(&body)["x-real-ip"], "127.0.0.1");
    }

    // A WebSocket tunnel behind a v1 header: the backend's handshake view names the client.
    let mut tcp = connect_from("127.0.0.1", p.proxy_addr).await;
    tcp.write_all(b"PROXY TCP4 192.0.2.44 127.0.0.1 1234 8080\r\n").await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/", p.proxy_addr), tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    let text = ws_round(&mut ws, "__headers__").await;
    let view: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["headers"]["x-real-ip"], "192.0.2.44", "{view}");
    assert_eq!(rejected(&p, "proxy_protocol_malformed"), 0);
}

#[tokio::test]
async fn untrusted_peers_may_not_send_a_header_and_trusted_ones_must() {
    let backend = echo("b1", "").await;
    let p = proxy(&[backend.addr], TRUST_LOCALHOST).await;

    // 127.0.0.2 is outside --proxy-protocol-from: its header is refused with a close.
    for header in [b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n".to_vec(), v2_tcp4([203, 0, 113, 7], 1)] {
        let s = connect_from("127.0.0.2", p.proxy_addr).await;
        let (status, head, _) = exchange(s, &header).await;
        assert_eq!(status, 0, "closed without an answer: {head}");
    }
    assert_eq!(rejected(&p, "proxy_protocol_untrusted"), 2);
    // Without a header it is a direct client, as itself.
    let s = connect_from("127.0.0.2", p.proxy_addr).await;
    let (status, _, body) = exchange(s, b"").await;
    assert_eq!(status, 200);
    assert_eq!(headers_of(&body)["x-real-ip"], "127.0.0.2");

    // A trusted peer must send one.
    let s = connect_from("127.0.0.1", p.proxy_addr).await;
    let (status, head, _) = exchange(s, b"").await;
    assert_eq!(status, 0, "a trusted peer without a header is closed: {head}");
    assert_eq!(rejected(&p, "proxy_protocol_missing"), 1);

    // Without --proxy-protocol-from every peer is a load balancer: 127.0.0.2 is heard too.
    let open = proxy(&[backend.addr], &["--proxy-protocol"]).await;
    let s = connect_from("127.0.0.2", open.proxy_addr).await;
    let (status, _, body) = exchange(s, b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 8080\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(headers_of(&body)["x-real-ip"], "203.0.113.9");
}

#[tokio::test]
async fn a_malformed_or_slow_header_closes_only_its_own_connection() {
    let backend = echo("b1", "").await;
    let p = proxy(&[backend.addr], &["--proxy-protocol", "--header-timeout", "700ms"]).await;
    let mut tcp = TcpStream::connect(p.proxy_addr).await.unwrap();
    tcp.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\r\n").await.unwrap();
    let (mut tunnel, _) = tokio_tungstenite::client_async(format!("ws://{}/", p.proxy_addr), tcp).await.unwrap();
    assert_eq!(ws_round(&mut tunnel, "before").await, "before");

    let malformed: [&[u8]; 4] = [
        b"PROXY TCP4 192.0.2.1 127.0.0.1 99999 2\r\n",
        b"PROXY TCP9 a b c d\r\n",
        b"PROXY xxxxx\n",
        &v2(1, 0x11, &[0u8; 8], &[]),
    ];
    for bad in malformed {
        let s = TcpStream::connect(p.proxy_addr).await.unwrap();
        let (status, head, _) = exchange(s, bad).await;
        assert_eq!(status, 0, "{:?}: {head}", String::from_utf8_lossy(bad));
    }
    assert_eq!(rejected(&p, "proxy_protocol_malformed"), 4);
    // A header that never completes is closed at the header timeout.
    let mut slow = TcpStream::connect(p.proxy_addr).await.unwrap();
    slow.write_all(b"PROXY TCP4 192.0").await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await.expect("closed in time");
    assert!(started.elapsed() >= Duration::from_millis(600), "closed after {:?}", started.elapsed());
    wait_until(Duration::from_secs(5), "the timeout is counted", || async {
        rejected(&p, "proxy_protocol_timeout") == 1
    })
    .await;

    assert_eq!(ws_round(&mut tunnel, "after").await, "after", "the established tunnel kept echoing");
}

#[tokio::test]
async fn the_tls_listener_reads_the_header_before_the_client_hello() {
    use rustls::pki_types::ServerName;
    let backend = echo("b1", "").await;
    let pki = tls_common::Pki::new("pp-ca");
    let leaf = pki.leaf("pp.test", &["pp.test"]);
    let dir = std::env::temp_dir().join(format!("wsingress-pp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let (cert_s, key_s) = (cert.to_string_lossy().to_string(), key.to_string_lossy().to_string());
    let mut flags = TRUST_LOCALHOST.to_vec();
    flags.extend(["--tls-cert", &cert_s, "--tls-key", &key_s]);
    let p = proxy(&[backend.addr], &flags).await;
    let tls_addr = p.tls_addr.expect("a TLS listener");

    let mut tcp = connect_from("127.0.0.1", tls_addr).await;
    tcp.write_all(&v2_tcp4([198, 51, 100, 77], 4242)).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from("pp.test").unwrap(), tcp)
        .await
        .expect("TLS after the PROXY header");
    tls.write_all(GET_HEADERS).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await.expect("answer in time");
    let (status, head, body) = parse_response(&buf);
    assert_eq!(status, 200, "{head}");
    let h = headers_of(&body);
    assert_eq!(h["x-real-ip"], "198.51.100.77", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https", "{h}");

    // The same listener refuses a header from 127.0.0.2.
    let mut tcp = connect_from("127.0.0.2", tls_addr).await;
    tcp.write_all(&v2_tcp4([198, 51, 100, 77], 4242)).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await.expect("closed in time");
    assert!(buf.is_empty());
    assert_eq!(rejected(&p, "proxy_protocol_untrusted"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// HAProxy in TCP mode in front, with `send-proxy` and then `send-proxy-v2`: the address
/// HAProxy saw (127.0.0.3, the test's client) reaches the backend. First the failure this
/// fixes: without the PROXY protocol the backend sees HAProxy's own address as the client.
#[tokio::test]
async fn haproxy_send_proxy_interop() {
    let Some(haproxy) =
        ["/usr/sbin/haproxy", "/usr/bin/haproxy"].into_iter().find(|p| std::path::Path::new(p).exists())
    else {
        println!("skipped: HAProxy is not installed (scripts/install-tools.sh haproxy)");
        return;
    };
    let backend = echo("b1", "").await;
    let p = proxy(&[backend.addr], TRUST_LOCALHOST).await;
    let plain = proxy(&[backend.addr], &[]).await;
    let runs = [
        ("", plain.proxy_addr, "127.0.0.1"),
        ("send-proxy", p.proxy_addr, "127.0.0.3"),
        ("send-proxy-v2", p.proxy_addr, "127.0.0.3"),
    ];
    for (i, (mode, target, want)) in runs.into_iter().enumerate() {
        let front = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dir = std::env::temp_dir().join(format!("wsingress-haproxy-{}-{i}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend f\n  bind {front}\n  default_backend b\nbackend b\n  server wsingress {target} {mode} source 127.0.0.1\n"
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(haproxy)
            .args(["-f", cfg.to_str().unwrap(), "-db"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start haproxy");
        let mut answer = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
            if let Ok(s) = socket.connect(front).await {
                let (status, _, body) = exchange(s, b"").await;
                if status == 200 {
                    answer = Some(body);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        let body = answer.unwrap_or_else(|| panic!("{mode}: no answer through HAProxy"));
        let h = headers_of(&body);
        assert_eq!(h["x-real-ip"], want, "{mode:?}: {h}");
    }
    assert_eq!(rejected(&p, "proxy_protocol_malformed") + rejected(&p, "proxy_protocol_missing"), 0);
}

/// Bad flags are refused before any port is bound, naming the item; `--proxy-protocol-from`
/// means nothing without `--proxy-protocol`.
#[tokio::test]
async fn bad_proxy_protocol_flags_are_refused() {
    let args = serve_args(&["--proxy-protocol", "--proxy-protocol-from", "10.0.0.0/8,office"]);
    let err =
        wsingress::app::start(&args, wsingress::app::RouteSource::Static(vec![])).await.err().map(|e| e.to_string());
    let err = err.expect("a bad CIDR is refused");
    assert!(err.contains("--proxy-protocol-from") && err.contains("`office`"), "{err}");
    let argv = ["wsingress", "serve", "--proxy-protocol-from", "10.0.0.0/8"];
    assert!(<wsingress::cli::Cli as clap::Parser>::try_parse_from(argv).is_err(), "needs --proxy-protocol");
}
