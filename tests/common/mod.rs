//! Helpers for loopback integration tests: real echo backends, an in-process proxy on
//! ephemeral ports, a real WebSocket client, a raw HTTP client, and polling with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wsingress::app::{self, RouteSource, Running};
use wsingress::cli::{Cli, Command, ServeArgs};
use wsingress::echo::{self, EchoConfig};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running echo backend; stops when dropped.
pub struct Echo {
    pub addr: SocketAddr,
    pub instance: String,
    stop: CancellationToken,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn echo(instance: &str, prefix: &str) -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = EchoConfig { prefix: prefix.to_string(), instance: instance.to_string() };
    tokio::spawn(echo::serve(listener, config, stop.clone()));
    Echo { addr, instance: instance.to_string(), stop }
}

/// `serve` arguments on ephemeral loopback ports, plus `extra` flags.
pub fn serve_args(extra: &[&str]) -> ServeArgs {
    let mut argv = vec!["wsingress", "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    // An ephemeral TLS listener unless the test chooses one (the default port would collide).
    if !extra.contains(&"--tls-listen") {
        argv.extend(["--tls-listen", "127.0.0.1:0"]);
    }
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(s) => *s,
        _ => unreachable!(),
    }
}

/// A proxy in front of `backends` (static upstream mode) with extra flags.
pub async fn proxy(backends: &[SocketAddr], extra: &[&str]) -> Running {
    let args = serve_args(extra);
    app::start(&args, RouteSource::Static(backends.to_vec())).await.unwrap()
}

pub fn ws_url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

/// Connect with extra request headers.
pub async fn connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tokio_tungstenite::tungstenite::handshake::client::Response), tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
}

pub async fn connect(url: &str) -> Ws {
    connect_with(url, &[]).await.unwrap().0
}

/// Next data message (skipping control frames), with a deadline.
pub async fn next_data(ws: &mut Ws) -> Message {
    let deadline = Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout(deadline, ws.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
            .expect("read error");
        match msg {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// Send text and return the echoed text.
pub async fn round_trip(ws: &mut Ws, text: &str) -> String {
    send_text(ws, text).await;
    match next_data(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The backend's view of the handshake: `__headers__` → JSON.
pub async fn backend_view(ws: &mut Ws) -> serde_json::Value {
    let text = round_trip(ws, "__headers__").await;
    serde_json::from_str(&text).unwrap()
}

/// A raw HTTP/1.1 exchange on a fresh connection (`Connection: close`); returns status, head and body.
pub async fn http_raw(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    read.expect("response in time").ok();
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> (u16, String, Vec<u8>) {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map_or(buf.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, buf[end..].to_vec())
}

pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String, Vec<u8>) {
    http_raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")).await
}

/// Sum of the samples of `name` whose labels include every `labels` pair.
pub fn metric(m: &wsingress::metrics::Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = String::from_utf8(m.encode()).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Poll `cond` every 20 ms until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A handshake request for raw-socket tests.
pub fn upgrade_request(host: &str, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A port nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A route table for manual publishing: `(host, path prefix, route id, backends)`.
pub fn table(
    rules: &[(&str, &str, &str, &[SocketAddr])],
    settings: wsingress::routes::RouteSettings,
) -> wsingress::routes::RouteTable {
    use std::sync::Arc;
    use wsingress::routes::{Endpoint, HostMatch, PathMatch, Pool, Route, RouteTable, Rule};
    let rules = rules
        .iter()
        .map(|(host, path, id, addrs)| Rule {
            host: HostMatch::parse(host),
            path: PathMatch::prefix(path),
            route: Arc::new(Route {
                id: id.to_string(),
                backend: format!("{id}:80"),
                pool: Pool::new(addrs.iter().map(|a| Endpoint::new(*a, true)).collect()),
                settings: settings.clone(),
            }),
        })
        .collect();
    RouteTable::new(rules, None)
}

/// A proxy whose tables the test publishes itself.
pub async fn manual_proxy(extra: &[&str]) -> Running {
    let args = serve_args(extra);
    app::start(&args, RouteSource::Manual).await.unwrap()
}

/// Which echo instance serves a new connection to `url`.
pub async fn instance_of(url: &str) -> (Ws, String) {
    let mut ws = connect(url).await;
    let v = backend_view(&mut ws).await;
    let inst = v["instance"].as_str().unwrap().to_string();
    (ws, inst)
}

/// Read until a Close frame arrives; returns its code (None for a Close without code,
/// panics when the stream ends without one).
pub async fn expect_close(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await.expect("no Close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before Close: {e}"),
            None => panic!("stream ended without Close"),
        }
    }
}

/// A `wsingress serve` process started from a binary; killed when dropped.
pub struct ServeProcess(pub Option<std::process::Child>);

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `BIN serve` on ephemeral loopback ports with `args` and `RUST_LOG=log`, and read the
/// bound proxy and admin addresses from its "wsingress serving" log line.
pub fn spawn_serve_binary(bin: &str, args: &[&str], log: &str) -> (ServeProcess, SocketAddr, SocketAddr) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(if args.contains(&"--tls-listen") { &[][..] } else { &["--tls-listen", "127.0.0.1:0"][..] })
        .args(args)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start wsingress");
    let stdout = child.stdout.take().unwrap();
    let process = ServeProcess(Some(child));
    let mut lines = BufReader::new(stdout).lines();
    let field = |line: &str, name: &str| -> Option<SocketAddr> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        line[start..].split_whitespace().next()?.trim_matches('"').parse().ok()
    };
    let (proxy, admin) = loop {
        let line = lines.next().expect("wsingress exited before serving").unwrap();
        if line.contains("wsingress serving") {
            break (field(&line, "proxy").unwrap(), field(&line, "admin").unwrap());
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (process, proxy, admin)
}

/// How a frame's payload length is written (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Len {
    /// The shortest form.
    Minimal,
    /// 16-bit form even when 7 bits would do.
    Wide16,
    /// 64-bit form even when a shorter one would do.
    Wide64,
}

/// One raw frame: first byte (FIN, RSV bits, opcode), payload, the client's mask key (or none),
/// and the length form.
pub fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, len: Len) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    match len {
        Len::Minimal if n < 126 => out.push(mask_bit | n as u8),
        Len::Minimal | Len::Wide16 if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A plain HTTP backend that records the head of every request it gets and answers
/// `200 ok` (keep-alive).
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<Mutex<usize>>,
}

impl Recorder {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rec = Self { addr: listener.local_addr().unwrap(), heads: Arc::default(), accepted: Arc::default() };
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                *r.accepted.lock().unwrap() += 1;
                let heads = r.heads.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..p + 4]).to_string();
                            buf.drain(..p + 4);
                            // Bodies are small here and arrive with their head: skip a
                            // Content-Length body, or a chunked one up to its last chunk.
                            if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
                                let end = buf.windows(5).position(|w| w == b"0\r\n\r\n").map_or(buf.len(), |p| p + 5);
                                buf.drain(..end);
                            } else {
                                let have = buf.len().min(content_length(&head));
                                buf.drain(..have);
                            }
                            heads.lock().unwrap().push(head);
                            let reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if s.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        rec
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Read whatever the proxy sends until it closes the connection (or `within` passes).
pub async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return (buf, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A manifests file in the temp folder, removed when dropped.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    /// A fresh path named after `tag`, this process and the clock.
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Self(std::env::temp_dir().join(format!("wsingress-{tag}-{}-{nanos}.yaml", std::process::id())))
    }
    /// Write aside and rename over, as most editors save.
    pub fn save(&self, text: &str) {
        let tmp = self.0.with_extension("swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`; 0 without /proc).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
