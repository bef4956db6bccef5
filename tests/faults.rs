//! Fault injection on loopback: backends that die, hang or lie during the handshake, clients
//! that vanish or half-close, oversized and malformed frames. Each test checks what the
//! client sees, that the proxy keeps serving (a connection opened before the fault still
//! works, and a new one too), and what the metrics record.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wsingress::app::Running;
use wsingress::metrics::Metrics;
use wsingress::routes::RouteSettings;

const FAULTY: &str = "faulty.test";
const HEALTHY: &str = "echo.test";

// ---------------------------------------------------------------- raw frames

/// One WebSocket frame as read off the wire (payload unmasked).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Encode a frame; masked (as a client must) when `mask` is given.
fn encode(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    raw_frame(if fin { 0x80 } else { 0 } | (opcode & 0x0f), payload, mask, Len::Minimal)
}

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode(true, opcode, payload, Some(KEY))
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// Parse one complete frame at the start of `buf`: (frame, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])), 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        k
    } else {
        [0; 4]
    };
    let end = at + usize::try_from(len).ok()?;
    let payload = buf.get(at..end)?.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
    Some((Frame { fin: buf[0] & 0x80 != 0, opcode: buf[0] & 0x0f, payload }, end))
}

/// A raw WebSocket peer: a socket plus the bytes read but not yet parsed.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

/// What a raw reader got.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Frame(Frame),
    Eof,
    Reset,
}

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// Next frame, EOF or reset, within `within` (panics on timeout).
    async fn next(&mut self, within: Duration) -> Got {
        let deadline = Instant::now() + within;
        loop {
            if let Some((f, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Got::Frame(f);
            }
            let mut chunk = [0u8; 8192];
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await.expect("nothing read in time") {
                Ok(0) => return Got::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Got::Reset,
            }
        }
    }

    /// Frames until a Close; returns the Close.
    async fn until_close(&mut self, within: Duration) -> Frame {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())).await {
                Got::Frame(f) if f.opcode == 0x8 => return f,
                Got::Frame(_) => continue,
                other => panic!("expected a Close frame, got {other:?}"),
            }
        }
    }

    /// After a Close: the connection ends (EOF or reset) within `within`.
    async fn expect_end(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())).await {
                Got::Frame(f) => assert_ne!(f.opcode, 0x1, "unexpected data after close: {f:?}"),
                Got::Eof | Got::Reset => return,
            }
        }
    }
}

async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(p + 4);
            return (String::from_utf8_lossy(&buf).to_string(), rest);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.expect("head in time").unwrap();
        assert!(n > 0, "connection closed before a complete head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A raw client upgrade through the proxy: the status, the head and the socket.
async fn raw_upgrade(proxy: SocketAddr, host: &str) -> (u16, String, Raw) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(upgrade_request(host, "/", "").as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut s).await;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head, Raw { s, buf: rest })
}

// ---------------------------------------------------------------- raw backends

/// How a raw backend answers the handshake.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// A correct 101.
    Switch,
    /// A 101 whose Sec-WebSocket-Accept does not match the key.
    WrongAccept,
    /// Reads the request and never answers.
    Silent,
}

/// A backend speaking raw bytes; every accepted connection (after its handshake) is handed
/// to the test, which drives it.
async fn raw_backend(answer: Answer) -> (SocketAddr, mpsc::UnboundedReceiver<Raw>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (head, rest) = read_head(&mut s).await;
                let key = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("sec-websocket-key").then(|| v.trim().to_string())
                    })
                    .unwrap_or_default();
                let accept = match answer {
                    Answer::Switch => wsingress::proxy::headers::accept_key(key.as_bytes()),
                    Answer::WrongAccept => wsingress::proxy::headers::accept_key(b"not the client's key"),
                    Answer::Silent => String::new(),
                };
                if !matches!(answer, Answer::Silent) {
                    let resp = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    );
                    s.write_all(resp.as_bytes()).await.unwrap();
                }
                let _ = tx.send(Raw { s, buf: rest });
            });
        }
    });
    (addr, rx)
}

async fn next_backend_conn(rx: &mut mpsc::UnboundedReceiver<Raw>) -> Raw {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("backend connection in time").unwrap()
}

// ---------------------------------------------------------------- proxy and metrics

/// A proxy with two routes: `faulty.test` → `faulty`, `echo.test` → a real echo backend.
struct Setup {
    running: Running,
    _echo: Echo,
}

async fn setup(faulty: SocketAddr, settings: RouteSettings) -> Setup {
    let echo = echo("healthy", "");
    let echo = echo.await;
    let running = manual_proxy(&[]).await;
    let t = table(&[(FAULTY, "/", "faulty", &[faulty]), (HEALTHY, "/", "echo", &[echo.addr])], settings);
    running.publisher().publish(t, &[]);
    Setup { running, _echo: echo }
}

impl Setup {
    fn url(&self) -> String {
        ws_url(self.running.proxy_addr, "/")
    }

    async fn connect(&self, host: &str) -> Ws {
        connect_with(&self.url(), &[("host", host)]).await.unwrap().0
    }

    /// A healthy tunnel opened now still round-trips: the process is up and serving.
    async fn assert_serving(&self) {
        let mut ws = self.connect(HEALTHY).await;
        assert_eq!(round_trip(&mut ws, "still serving").await, "still serving");
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.running.metrics
    }
}

/// `wsingress_websocket_closes_total` recorded exactly one close of this kind (the message
/// lists what was recorded instead).
fn assert_one_close(m: &Metrics, route: &str, initiator: &str, code: &str) {
    let got = closes(m, route, initiator, code);
    let text = String::from_utf8(m.encode()).unwrap();
    let recorded: Vec<&str> = text.lines().filter(|l| l.starts_with("wsingress_websocket_closes_total{")).collect();
    assert_eq!(
        got, 1.0,
        "expected one close {{initiator={initiator}, code={code}}} on {route}; recorded: {recorded:#?}"
    );
}

fn active(m: &Metrics, route: &str) -> f64 {
    metric(m, "wsingress_websocket_connections_active", &[("route", route)])
}

fn closes(m: &Metrics, route: &str, initiator: &str, code: &str) -> f64 {
    metric(m, "wsingress_websocket_closes_total", &[("route", route), ("initiator", initiator), ("code", code)])
}

async fn wait_inactive(m: &Arc<Metrics>, route: &str, within: Duration) {
    wait_until(within, "connections_active back to 0", || {
        let m = m.clone();
        let route = route.to_string();
        async move { active(&m, &route) == 0.0 }
    })
    .await;
}

fn fast_settings() -> RouteSettings {
    RouteSettings { handshake_timeout: Duration::from_millis(500), ..RouteSettings::default() }
}

// ---------------------------------------------------------------- upstream faults

async fn upstream_killed(reset: bool) {
    let (addr, mut backends) = raw_backend(Answer::Switch).await;
    let s = setup(addr, fast_settings()).await;
    let mut bystander = s.connect(HEALTHY).await;
    let mut ws = s.connect(FAULTY).await;
    let backend = next_backend_conn(&mut backends).await;
    assert_eq!(active(s.metrics(), "faulty"), 1.0);

    if reset {
        socket2::SockRef::from(&backend.s).set_linger(Some(Duration::ZERO)).unwrap();
    }
    let killed = Instant::now();
    drop(backend);
    assert_eq!(expect_close(&mut ws, Duration::from_secs(1)).await, Some(1011), "client must get 1011, not a hang");
    assert!(killed.elapsed() < Duration::from_secs(1), "Close 1011 took {:?}", killed.elapsed());

    wait_inactive(s.metrics(), "faulty", Duration::from_secs(5)).await;
    assert_one_close(s.metrics(), "faulty", "backend", "abnormal");
    // The tunnel on the other route and new connections are untouched.
    assert_eq!(round_trip(&mut bystander, "untouched").await, "untouched");
    s.assert_serving().await;
    // A new tunnel to the same (restarted) backend works too.
    let mut again = s.connect(FAULTY).await;
    let mut backend = next_backend_conn(&mut backends).await;
    backend.send(&encode(true, 0x1, b"hi", None)).await;
    match next_data(&mut again).await {
        tokio_tungstenite::tungstenite::Message::Text(t) => assert_eq!(t.as_str(), "hi"),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn upstream_killed_with_fin_gives_the_client_1011_promptly() {
    upstream_killed(false).await;
}

#[tokio::test]
async fn upstream_killed_with_rst_gives_the_client_1011_promptly() {
    upstream_killed(true).await;
}

#[tokio::test]
async fn upstream_that_never_answers_the_handshake_gives_504_after_the_handshake_timeout() {
    let (addr, _backends) = raw_backend(Answer::Silent).await;
    let s = setup(addr, fast_settings()).await;
    let mut bystander = s.connect(HEALTHY).await;
    let started = Instant::now();
    let (status, head, _raw) = raw_upgrade(s.running.proxy_addr, FAULTY).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{head}");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "504 after {took:?}");
    let m = s.metrics();
    assert_eq!(metric(m, "wsingress_websocket_upgrades_total", &[("route", "faulty"), ("result", "timeout")]), 1.0);
    assert_eq!(
        metric(m, "wsingress_upstream_errors_total", &[("route", "faulty"), ("reason", "response_timeout")]),
        1.0
    );
    assert_eq!(active(m, "faulty"), 0.0);
    assert_eq!(round_trip(&mut bystander, "untouched").await, "untouched");
    s.assert_serving().await;
}

#[tokio::test]
async fn upstream_101_with_a_wrong_accept_key_gives_502() {
    let (addr, _backends) = raw_backend(Answer::WrongAccept).await;
    let s = setup(addr, fast_settings()).await;
    let (status, head, _raw) = raw_upgrade(s.running.proxy_addr, FAULTY).await;
    assert_eq!(status, 502, "{head}");
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-accept"), "the bad 101 must not reach the client");
    // tokio-tungstenite, which checks the accept key itself, sees a plain 502 too.
    let err = connect_with(&s.url(), &[("host", FAULTY)]).await.unwrap_err();
    assert!(err.to_string().contains("502"), "{err}");
    let m = s.metrics();
    assert_eq!(
        metric(m, "wsingress_websocket_upgrades_total", &[("route", "faulty"), ("result", "backend_error")]),
        2.0
    );
    assert_eq!(metric(m, "wsingress_upstream_errors_total", &[("route", "faulty"), ("reason", "bad_handshake")]), 2.0);
    assert_eq!(active(m, "faulty"), 0.0);
    s.assert_serving().await;
}

// ---------------------------------------------------------------- clients that vanish

/// The client completes the handshake, then neither reads nor writes (no FIN: it is just
/// gone). The backend must get a Close 1001 and the tunnel must be freed.
async fn vanished_client(settings: RouteSettings, within: Duration) {
    let (addr, mut backends) = raw_backend(Answer::Switch).await;
    let s = setup(addr, settings).await;
    let (status, head, silent_client) = raw_upgrade(s.running.proxy_addr, FAULTY).await;
    assert_eq!(status, 101, "{head}");
    let mut backend = next_backend_conn(&mut backends).await;
    assert_eq!(active(s.metrics(), "faulty"), 1.0);
    let started = Instant::now();
    let close = backend.until_close(within).await;
    assert_eq!(close.close_code(), Some(1001), "backend must see Close 1001, got {close:?}");
    wait_inactive(s.metrics(), "faulty", within).await;
    let freed_after = started.elapsed();
    assert!(freed_after < within, "freed after {freed_after:?}");
    assert_one_close(s.metrics(), "faulty", "proxy", "1001");
    drop(silent_client);
    s.assert_serving().await;
}

#[tokio::test]
async fn vanished_client_is_dropped_after_a_missed_pong() {
    let settings = RouteSettings {
        ping_interval: Some(Duration::from_millis(300)),
        pong_timeout: Duration::from_millis(300),
        ..fast_settings()
    };
    vanished_client(settings, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn vanished_client_is_dropped_after_the_idle_timeout() {
    let settings = RouteSettings { idle_timeout: Some(Duration::from_millis(400)), ..fast_settings() };
    // Idle close waits up to 2 s for the silent client's Close reply, then drops it.
    vanished_client(settings, Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------- half-close

#[tokio::test]
async fn client_close_then_fin_is_a_clean_close_both_ways() {
    let s = setup(dead_addr().await, fast_settings()).await;
    let (status, _, mut client) = raw_upgrade(s.running.proxy_addr, HEALTHY).await;
    assert_eq!(status, 101);
    client.send(&client_frame(0x1, b"before close")).await;
    client.send(&client_frame(0x8, &close_payload(1000))).await;
    client.s.shutdown().await.unwrap(); // FIN after our Close
    let echoed = client.next(Duration::from_secs(5)).await;
    assert_eq!(echoed, Got::Frame(Frame { fin: true, opcode: 0x1, payload: b"before close".to_vec() }));
    let close = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(close.close_code(), Some(1000));
    client.expect_end(Duration::from_secs(5)).await;
    wait_inactive(s.metrics(), "echo", Duration::from_secs(5)).await;
    assert_one_close(s.metrics(), "echo", "client", "1000");
}

#[tokio::test]
async fn backend_close_then_fin_is_a_clean_close_both_ways() {
    let (addr, mut backends) = raw_backend(Answer::Switch).await;
    let s = setup(addr, fast_settings()).await;
    let mut ws = s.connect(FAULTY).await;
    let mut backend = next_backend_conn(&mut backends).await;
    backend.send(&encode(true, 0x8, &close_payload(1000), None)).await;
    backend.s.shutdown().await.unwrap(); // FIN after its Close
    assert_eq!(expect_close(&mut ws, Duration::from_secs(2)).await, Some(1000));
    // tungstenite sends its Close reply when polled again, then sees the EOF.
    let client_end = tokio::spawn(async move {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    });
    let reply = backend.until_close(Duration::from_secs(5)).await;
    assert_eq!(reply.close_code(), Some(1000));
    backend.expect_end(Duration::from_secs(5)).await;
    client_end.await.unwrap();
    wait_inactive(s.metrics(), "faulty", Duration::from_secs(5)).await;
    assert_one_close(s.metrics(), "faulty", "backend", "1000");
}

#[tokio::test]
async fn client_fin_without_close_reaches_the_backend_as_eof() {
    let (addr, mut backends) = raw_backend(Answer::Switch).await;
    let s = setup(addr, fast_settings()).await;
    let (status, _, mut client) = raw_upgrade(s.running.proxy_addr, FAULTY).await;
    assert_eq!(status, 101);
    let mut backend = next_backend_conn(&mut backends).await;
    client.send(&client_frame(0x2, b"last words")).await;
    client.s.shutdown().await.unwrap(); // FIN, no Close
    let data = backend.next(Duration::from_secs(5)).await;
    assert_eq!(data, Got::Frame(Frame { fin: true, opcode: 0x2, payload: b"last words".to_vec() }));
    // The proxy tells the backend the client went away (1001), then passes the EOF on.
    let close = backend.until_close(Duration::from_secs(5)).await;
    assert_eq!(close.close_code(), Some(1001));
    backend.expect_end(Duration::from_secs(5)).await;
    wait_inactive(s.metrics(), "faulty", Duration::from_secs(5)).await;
    assert_one_close(s.metrics(), "faulty", "client", "abnormal");
    s.assert_serving().await;
}

// ---------------------------------------------------------------- frames

#[tokio::test]
async fn frames_over_max_message_bytes_get_close_1009() {
    let settings = RouteSettings { max_message_bytes: Some(1024), ..fast_settings() };
    let s = setup(dead_addr().await, settings).await;
    let mut bystander = s.connect(HEALTHY).await;
    let mut ws = s.connect(HEALTHY).await;
    assert_eq!(round_trip(&mut ws, &"a".repeat(1024)).await.len(), 1024, "a message at the limit passes");
    send_text(&mut ws, &"b".repeat(2000)).await;
    assert_eq!(expect_close(&mut ws, Duration::from_secs(3)).await, Some(1009));
    // Fragments count together: 3 × 400 bytes is over the limit too.
    let (_, _, mut raw) = raw_upgrade(s.running.proxy_addr, HEALTHY).await;
    for (fin, opcode) in [(false, 0x1), (false, 0x0), (true, 0x0)] {
        raw.send(&encode(fin, opcode, &[b'x'; 400], Some(KEY))).await;
    }
    assert_eq!(raw.until_close(Duration::from_secs(3)).await.close_code(), Some(1009));
    wait_until(Duration::from_secs(5), "both oversized tunnels closed", || {
        let m = s.metrics().clone();
        async move { closes(&m, "echo", "proxy", "1009") == 2.0 }
    })
    .await;
    assert_eq!(round_trip(&mut bystander, "untouched").await, "untouched");
    s.assert_serving().await;
}

/// The close code the echo backend answers `frame` with: directly, and through the proxy.
async fn echo_verdict(frame: &[u8]) -> (Option<u16>, Option<u16>, Setup) {
    let s = setup(dead_addr().await, fast_settings()).await;
    let direct_echo = echo("direct", "").await;
    let (status, _, mut direct) = raw_upgrade(direct_echo.addr, "direct.test").await;
    assert_eq!(status, 101);
    direct.send(frame).await;
    let direct_code = direct.until_close(Duration::from_secs(5)).await.close_code();
    let (status, _, mut proxied) = raw_upgrade(s.running.proxy_addr, HEALTHY).await;
    assert_eq!(status, 101);
    proxied.send(frame).await;
    let proxied_code = proxied.until_close(Duration::from_secs(5)).await.close_code();
    (direct_code, proxied_code, s)
}

#[tokio::test]
async fn invalid_utf8_passes_through_and_the_backend_answers_1007() {
    let (direct, proxied, s) = echo_verdict(&client_frame(0x1, &[0xce, 0xba, 0xff, 0xfe])).await;
    assert_eq!(direct, Some(1007));
    assert_eq!(proxied, Some(1007), "the proxy must pass the bytes on untouched and let the backend decide");
    wait_until(Duration::from_secs(5), "closes recorded", || {
        let m = s.metrics().clone();
        async move { closes(&m, "echo", "backend", "1007") == 1.0 }
    })
    .await;
    s.assert_serving().await;
}

/// A reserved opcode breaks framing (RFC 6455 §5.2): the proxy refuses it itself, so the close
/// is the proxy's 1002 (the backend only echoes it), where directly the backend answers 1002.
#[tokio::test]
async fn reserved_opcode_gets_the_proxys_own_close_1002() {
    let (direct, proxied, s) = echo_verdict(&client_frame(0x3, b"reserved")).await;
    assert_eq!(direct, Some(1002));
    assert_eq!(proxied, Some(1002));
    wait_until(Duration::from_secs(5), "closes recorded", || {
        let m = s.metrics().clone();
        async move { closes(&m, "echo", "proxy", "1002") == 1.0 }
    })
    .await;
    assert_eq!(closes(s.metrics(), "echo", "backend", "1002"), 0.0);
    s.assert_serving().await;
}

#[tokio::test]
async fn broken_framing_gets_the_proxys_own_close_1002() {
    let (addr, mut backends) = raw_backend(Answer::Switch).await;
    let s = setup(addr, fast_settings()).await;
    let mut bystander = s.connect(HEALTHY).await;
    let (status, _, mut client) = raw_upgrade(s.running.proxy_addr, FAULTY).await;
    assert_eq!(status, 101);
    let mut backend = next_backend_conn(&mut backends).await;
    // 64-bit length with its most significant bit set (RFC 6455 §5.2 "MUST be 0").
    let mut bad = vec![0x82, 0x80 | 127];
    bad.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    bad.extend_from_slice(&KEY);
    bad.extend_from_slice(b"xxxxx");
    client.send(&bad).await;
    assert_eq!(client.until_close(Duration::from_secs(3)).await.close_code(), Some(1002));
    // The broken frame never reaches the backend; the proxy's Close 1002 does.
    let close = backend.until_close(Duration::from_secs(3)).await;
    assert_eq!(close.close_code(), Some(1002));
    wait_inactive(s.metrics(), "faulty", Duration::from_secs(5)).await;
    assert_one_close(s.metrics(), "faulty", "proxy", "1002");
    assert_eq!(round_trip(&mut bystander, "untouched").await, "untouched");
    s.assert_serving().await;
}
