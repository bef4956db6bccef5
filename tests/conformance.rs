//! Protocol conformance through the proxy: differential raw-frame tests (hand-built frame
//! sequences sent directly to a backend and through wsingress — its plain listener and its TLS
//! listener — must get byte-identical answers, except for framing RFC 6455 forbids, which the
//! proxy refuses itself with a stated difference),
//! byte-exact pass-through in both directions to a raw backend, the proxy's own Close 1002 for
//! every framing violation from either side (the bad frame never forwarded), and the
//! Autobahn|Testsuite fast run (`scripts/autobahn.sh --fast`) when Python 2.7 is available.

mod common;
mod tls_common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use rustls::pki_types::ServerName;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
/// How long one raw session may take from connect to the server's end of stream.
const SESSION_DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Frames on the wire (RFC 6455 §5.2)

/// Masks differ per frame (as a client's must) but are the same in every run.
fn mask_for(payload: &[u8], opcode_byte: u8) -> [u8; 4] {
    let x = (payload.len() as u32).wrapping_mul(2_654_435_761) ^ u32::from(opcode_byte).wrapping_mul(40_503);
    (x | 0x0101_0101).to_be_bytes()
}

/// A masked client frame.
fn cf(fin: bool, flags: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let first = if fin { 0x80 } else { 0 } | flags | opcode;
    raw_frame(first, payload, Some(mask_for(payload, first)), Len::Minimal)
}

fn text(payload: &[u8]) -> Vec<u8> {
    cf(true, 0, TEXT, payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn close(code: u16, reason: &str) -> Vec<u8> {
    cf(true, 0, CLOSE, &close_payload(code, reason.as_bytes()))
}

/// A frame as parsed from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl Parsed {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parses complete frames from `buf` (unmasking masked ones); stops at an incomplete frame or a
/// length that cannot be right, returning the frames and the bytes they used.
fn parse_frames(buf: &[u8]) -> (Vec<Parsed>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            break;
        }
        let masked = rest[1] & 0x80 != 0;
        let (len, mut off) = match rest[1] & 0x7F {
            126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => break,
            n => (u64::from(n), 2),
        };
        if len > (1 << 32) {
            break;
        }
        let key = if masked {
            if rest.len() < off + 4 {
                break;
            }
            let k = [rest[off], rest[off + 1], rest[off + 2], rest[off + 3]];
            off += 4;
            Some(k)
        } else {
            None
        };
        let len = len as usize;
        if rest.len() < off + len {
            break;
        }
        let mut payload = rest[off..off + len].to_vec();
        if let Some(k) = key {
            payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= k[i % 4]);
        }
        frames.push(Parsed { fin: rest[0] & 0x80 != 0, rsv: rest[0] & 0x70, opcode: rest[0] & 0x0F, masked, payload });
        at += off + len;
    }
    (frames, at)
}

// ---------------------------------------------------------------------------------------------
// Raw client sessions

/// What came back on one raw connection.
#[derive(Debug, Clone)]
struct Session {
    /// Status line of the handshake response.
    status: String,
    /// Sec-WebSocket-Accept of the handshake response.
    accept: Option<String>,
    /// Every byte after the response head, up to the server's end of stream.
    bytes: Vec<u8>,
}

impl Session {
    fn frames(&self) -> Vec<Parsed> {
        parse_frames(&self.bytes).0
    }
    fn last_close(&self) -> Option<Parsed> {
        self.frames().into_iter().rfind(|f| f.opcode == CLOSE)
    }
}

/// How the client writes its frames.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    /// One `write_all` for the whole sequence.
    AtOnce,
    /// One byte per write (the proxy's scanner sees every split point).
    Dribble,
}

/// A client stream: plain TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where a raw session goes: a plain listener, or a TLS listener (SNI `conformance.test`,
/// verified against the test CA the client configuration trusts).
#[derive(Clone)]
enum Via {
    Plain(SocketAddr),
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(a) => write!(f, "ws://{a}"),
            Self::Tls(a, _) => write!(f, "wss://{a}"),
        }
    }
}

/// Handshake on a fresh connection, read the response head; returns the stream, the status line,
/// the accept value and any bytes read past the head.
async fn open_raw(addr: SocketAddr, extra_headers: &str) -> (TcpStream, String, Option<String>, Vec<u8>) {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    upgrade_on(s, extra_headers).await
}

/// [`open_raw`] over `via`.
async fn open_via(via: &Via) -> (Box<dyn Io>, String, Option<String>, Vec<u8>) {
    match via {
        Via::Plain(addr) => {
            let (s, status, accept, early) = open_raw(*addr, "").await;
            (Box::new(s), status, accept, early)
        }
        Via::Tls(addr, config) => {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(ServerName::try_from("conformance.test").unwrap(), tcp)
                .await
                .expect("TLS handshake with the proxy");
            let (s, status, accept, early) = upgrade_on(tls, "").await;
            (Box::new(s), status, accept, early)
        }
    }
}

/// Sends the upgrade request on `s` and reads the response head.
async fn upgrade_on<S: Io>(mut s: S, extra_headers: &str) -> (S, String, Option<String>, Vec<u8>) {
    s.write_all(upgrade_request("conformance.test", "/raw", extra_headers).as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk)).await.expect("response head in time").unwrap();
        assert!(n > 0, "connection closed before the response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.lines().next().unwrap_or_default().to_string();
    let accept = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-accept")))
        .map(|(_, v)| v.trim().to_string());
    (s, status, accept, buf[end..].to_vec())
}

/// Sends `frames` on a fresh WebSocket to `addr` and reads everything until the server ends the
/// stream. When the server sends a Close and the sequence held none, the client answers with
/// Close 1000 (a well-behaved client finishing the closing handshake, RFC 6455 §5.5.1).
async fn session(via: &Via, frames: &[u8], how: Write) -> Session {
    let addr = via;
    let (mut s, status, accept, mut bytes) = open_via(via).await;
    assert!(status.contains(" 101 "), "handshake with {addr} failed: {status}");
    match how {
        Write::AtOnce => s.write_all(frames).await.unwrap(),
        Write::Dribble => {
            // Over TLS each byte is a record of its own.
            for b in frames {
                s.write_all(std::slice::from_ref(b)).await.unwrap();
                s.flush().await.unwrap();
            }
        }
    }
    s.flush().await.unwrap();
    let mut client_closed = parse_frames(frames).0.iter().any(|f| f.opcode == CLOSE);
    let deadline = Instant::now() + SESSION_DEADLINE;
    loop {
        if !client_closed && parse_frames(&bytes).0.iter().any(|f| f.opcode == CLOSE) {
            client_closed = true;
            // The peer may already be gone; what it sent so far is what counts.
            let _ = s.write_all(&close(1000, "")).await;
            let _ = s.flush().await;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => panic!("{addr}: no end of stream within {SESSION_DEADLINE:?}; got {:?}", parse_frames(&bytes).0),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            // A reset after the server's last bytes (it closed with our Close unread) ends the stream
            // too, and over TLS so does a FIN without close_notify.
            Ok(Err(e))
                if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof) =>
            {
                break;
            }
            Ok(Err(e)) => panic!("{addr}: read failed: {e}"),
        }
    }
    Session { status, accept, bytes }
}

/// What the backend's answer to a scenario must show (checked on the direct run, so that each
/// scenario provably exercises what its name says).
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Data echoed, then the client's Close 1000 echoed.
    CleanEcho,
    /// The backend fails the connection with this close code.
    Fails(u16),
    /// The backend echoes the client's Close with this code.
    ClosesWith(u16),
    /// The backend answers a Close without a code with a Close without a code.
    ClosesEmpty,
    /// A frame header RFC 6455 forbids (§5.1, §5.2, §5.4, §5.5). Directly, the backend fails
    /// the connection with Close 1002 "protocol error". Through the proxy, the scanner refuses
    /// the header before forwarding any of it and sends the backend its own Close 1002 without
    /// a reason, which the backend echoes: the client gets the same bytes except that the final
    /// Close carries no reason. That difference is the proof that the bad frame never reached
    /// the backend (had it, the backend would have said "protocol error").
    ProxyRefuses,
}

struct Scenario {
    name: &'static str,
    frames: Vec<u8>,
    expect: Expect,
}

fn scenario(name: &'static str, frames: Vec<Vec<u8>>, expect: Expect) -> Scenario {
    let mut frames: Vec<u8> = frames.concat();
    if matches!(expect, Expect::CleanEcho) {
        frames.extend(close(1000, "done"));
    }
    Scenario { name, frames, expect }
}

fn check_expectation(s: &Scenario, direct: &Session) -> Result<(), String> {
    let frames = direct.frames();
    let last = direct.last_close().ok_or_else(|| format!("no Close came back: {frames:?}"))?;
    let code = last.close_code();
    match s.expect {
        Expect::CleanEcho if code == Some(1000) => Ok(()),
        Expect::Fails(want) | Expect::ClosesWith(want) if code == Some(want) => Ok(()),
        Expect::ProxyRefuses if code == Some(1002) && last.payload.len() > 2 => Ok(()),
        Expect::ClosesEmpty if last.payload.is_empty() => Ok(()),
        other => Err(format!("expected {other:?}, backend answered Close {code:?}; frames {frames:?}")),
    }
}

/// The bytes a client must get through the proxy, given what it got directly: the same, or
/// for [`Expect::ProxyRefuses`] the same with the backend's final Close 1002 "protocol error"
/// replaced by a Close 1002 without a reason.
fn expected_through_proxy(s: &Scenario, direct: &Session) -> Vec<u8> {
    if !matches!(s.expect, Expect::ProxyRefuses) {
        return direct.bytes.clone();
    }
    let last = direct.last_close().expect("checked by check_expectation");
    let encoded = raw_frame(0x80 | CLOSE, &last.payload, None, Len::Minimal);
    assert!(direct.bytes.ends_with(&encoded), "{}: the backend's Close is not its last frame", s.name);
    let mut bytes = direct.bytes[..direct.bytes.len() - encoded.len()].to_vec();
    bytes.extend(raw_frame(0x80 | CLOSE, &1002u16.to_be_bytes(), None, Len::Minimal));
    bytes
}

/// The proxy's TLS certificate (`conformance.test`, from a test CA) in a scratch folder, and a
/// client configuration trusting that CA.
struct TlsSite {
    dir: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl TlsSite {
    fn new() -> Self {
        let pki = tls_common::Pki::new("conformance CA");
        let leaf = pki.leaf("conformance", &["conformance.test"]);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("wsingress-conformance-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
        Self { dir, client: pki.client(&["http/1.1"], &[]) }
    }

    /// `--tls-cert FILE --tls-key FILE`.
    fn args(&self) -> [String; 4] {
        let file = |n: &str| self.dir.join(n).display().to_string();
        ["--tls-cert".into(), file("tls.crt"), "--tls-key".into(), file("tls.key")]
    }
}

impl Drop for TlsSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Byte by byte, the proxy may read the byte that decides a second-byte rule (mask bit, control
/// length) in a later read than the header's first byte — over TLS, where each byte is a record,
/// it usually does. Then the split-header rule applies (docs/conformance.md): the backend's
/// connection ends without a Close and the client gets the proxy's Close 1002 at once, so echoes
/// the backend had not sent yet never come. Accepted only over TLS, only for refusals and only in
/// that shape: the data frames that came are the first ones expected, then the proxy's Close 1002.
fn split_refusal(s: &Scenario, through: &Session, expected: &[u8]) -> bool {
    if !matches!(s.expect, Expect::ProxyRefuses) {
        return false;
    }
    let (got, want) = (through.frames(), parse_frames(expected).0);
    let Some((last, data)) = got.split_last() else { return false };
    last.opcode == CLOSE
        && last.payload == 1002u16.to_be_bytes()
        && data.iter().all(|f| f.opcode != CLOSE)
        && want.starts_with(data)
        && parse_frames(&through.bytes).1 == through.bytes.len()
}

/// Runs every scenario directly against `wsingress echo` and through a proxy in front of it —
/// its plain listener and its TLS listener — written at once and dribbled byte by byte (over
/// TLS: one record per byte), and demands identical bytes back (up to the difference
/// [`Expect::ProxyRefuses`] states).
async fn differential(scenarios: Vec<Scenario>) {
    let backend = echo("conformance", "").await;
    let site = TlsSite::new();
    let args = site.args();
    let proxy = proxy(&[backend.addr], &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let ways = [
        ("", Via::Plain(proxy.proxy_addr)),
        (", TLS", Via::Tls(proxy.tls_addr.expect("the TLS listener"), site.client.clone())),
    ];
    let mut failures = Vec::new();
    for s in &scenarios {
        let direct = session(&Via::Plain(backend.addr), &s.frames, Write::AtOnce).await;
        if let Err(why) = check_expectation(s, &direct) {
            failures.push(format!("{}: direct: {why}", s.name));
            continue;
        }
        for ((way, via), how) in ways.iter().flat_map(|w| [(w, Write::AtOnce), (w, Write::Dribble)]) {
            let through = session(via, &s.frames, how).await;
            let mode = if how == Write::AtOnce { format!("at once{way}") } else { format!("byte by byte{way}") };
            if through.accept != direct.accept || !through.status.contains(" 101 ") {
                failures
                    .push(format!("{} ({mode}): handshake {:?} vs direct {:?}", s.name, through.status, direct.status));
            }
            let expected = expected_through_proxy(s, &direct);
            let tls = matches!(via, Via::Tls(..));
            if through.bytes != expected && !(tls && how == Write::Dribble && split_refusal(s, &through, &expected)) {
                failures.push(format!(
                    "{} ({mode}): through the proxy {:?}\n    expected {:?}",
                    s.name,
                    through.frames(),
                    parse_frames(&expected).0
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios differ:\n  {}",
        failures.len(),
        scenarios.len(),
        failures.join("\n  ")
    );
}

fn filled(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| b'a' + ((i + seed as usize) % 26) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// Differential tests

#[tokio::test]
async fn framing_and_lengths_come_back_byte_identical() {
    let mut scenarios = Vec::new();
    for (name, n) in [("text 0", 0), ("text 125", 125), ("text 126", 126), ("text 65535", 65535), ("text 65536", 65536)]
    {
        scenarios.push(scenario(name, vec![text(&filled(n, 1))], Expect::CleanEcho));
    }
    for (name, n) in [("binary 0", 0), ("binary 125", 125), ("binary 126", 126), ("binary 65535", 65535)] {
        scenarios.push(scenario(name, vec![cf(true, 0, BINARY, &filled(n, 2))], Expect::CleanEcho));
    }
    scenarios.push(scenario("binary 65536", vec![cf(true, 0, BINARY, &vec![0xFF; 65536])], Expect::CleanEcho));
    scenarios.push(scenario("binary 1 MiB", vec![cf(true, 0, BINARY, &filled(1 << 20, 3))], Expect::CleanEcho));
    // Non-minimal length encodings (§5.2 says "minimal", most receivers accept them).
    let wide16 = raw_frame(0x80 | TEXT, b"wide16", Some([1, 2, 3, 4]), Len::Wide16);
    let wide64 = raw_frame(0x80 | BINARY, b"wide64", Some([5, 6, 7, 8]), Len::Wide64);
    scenarios.push(scenario("non-minimal 16-bit length", vec![wide16], Expect::CleanEcho));
    scenarios.push(scenario("non-minimal 64-bit length", vec![wide64], Expect::CleanEcho));
    // A zero mask key and a pipeline of many small frames in one write.
    scenarios.push(scenario(
        "zero mask key",
        vec![raw_frame(0x80 | TEXT, b"zero mask", Some([0; 4]), Len::Minimal)],
        Expect::CleanEcho,
    ));
    let many: Vec<Vec<u8>> = (0..200).map(|i| text(format!("message {i}").as_bytes())).collect();
    scenarios.push(scenario("200 frames in one write", many, Expect::CleanEcho));
    differential(scenarios).await;
}

#[tokio::test]
async fn fragments_and_control_frames_come_back_byte_identical() {
    let s = vec![
        scenario(
            "three fragments",
            vec![cf(false, 0, TEXT, b"frag"), cf(false, 0, CONT, b"men"), cf(true, 0, CONT, b"ted")],
            Expect::CleanEcho,
        ),
        scenario(
            "ping and pong between fragments",
            vec![
                cf(false, 0, BINARY, &[1, 2]),
                cf(true, 0, PING, b"between"),
                cf(false, 0, CONT, &[3]),
                cf(true, 0, PONG, b"unsolicited"),
                cf(true, 0, CONT, &[4, 5]),
            ],
            Expect::CleanEcho,
        ),
        scenario(
            "empty fragments",
            vec![cf(false, 0, TEXT, b""), cf(false, 0, CONT, b""), cf(true, 0, CONT, b"")],
            Expect::CleanEcho,
        ),
        scenario("ping with 125 bytes", vec![cf(true, 0, PING, &filled(125, 4))], Expect::CleanEcho),
        scenario("empty ping", vec![cf(true, 0, PING, b"")], Expect::CleanEcho),
        scenario("unsolicited pong", vec![cf(true, 0, PONG, b"pong")], Expect::CleanEcho),
        scenario(
            "close between fragments",
            vec![cf(false, 0, TEXT, b"half"), close(1000, "mid-message")],
            Expect::ClosesWith(1000),
        ),
        scenario("data after close", vec![close(1000, "bye"), text(b"after close")], Expect::ClosesWith(1000)),
    ];
    differential(s).await;
}

/// Reserved bits are left to the endpoints (they belong to extensions negotiated end to end,
/// RFC 6455 §5.2 and §5.4; see `src/ws/frame.rs`): the backend's own verdict comes back.
#[tokio::test]
async fn reserved_bits_come_back_byte_identical() {
    let mut s = Vec::new();
    for (name, flags) in [("RSV1 on text", RSV1), ("RSV2 on text", RSV2), ("RSV3 on text", RSV3)] {
        s.push(scenario(name, vec![cf(true, flags, TEXT, b"reserved")], Expect::Fails(1002)));
    }
    s.push(scenario("RSV1 on ping", vec![cf(true, RSV1, PING, b"p")], Expect::Fails(1002)));
    s.push(scenario(
        "RSV2 on a continuation",
        vec![cf(false, 0, BINARY, b"a"), cf(true, RSV2, CONT, b"b")],
        Expect::Fails(1002),
    ));
    differential(s).await;
}

/// Client frames RFC 6455 forbids, one scenario per rule the proxy enforces, the last frame of
/// each list being the bad one (after good frames, whose echo must come back, where that makes
/// sense).
fn client_violations() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut v: Vec<(&'static str, Vec<Vec<u8>>)> = vec![
        // §5.1: "a client MUST mask all frames that it sends to the server".
        ("unmasked client frame", vec![raw_frame(0x80 | TEXT, b"no mask", None, Len::Minimal)]),
        ("unmasked ping after a text", vec![text(b"masked"), raw_frame(0x80 | PING, b"p", None, Len::Minimal)]),
        // §5.5: control frames at most 125 bytes and never fragmented.
        ("ping with 126 bytes", vec![cf(true, 0, PING, &filled(126, 5))]),
        ("pong with 126 bytes", vec![text(b"before"), cf(true, 0, PONG, &filled(126, 6))]),
        ("close with 126 bytes", vec![cf(true, 0, CLOSE, &close_payload(1000, &filled(124, 7)))]),
        ("fragmented ping", vec![cf(false, 0, PING, b"a")]),
        ("fragmented pong", vec![text(b"before"), cf(false, 0, PONG, b"")]),
        ("fragmented close", vec![cf(false, 0, CLOSE, &close_payload(1000, b""))]),
        // §5.4: continuations continue a started message, which nothing else interrupts.
        ("continuation without a start", vec![cf(true, 0, CONT, b"orphan")]),
        ("continuation after a complete message", vec![text(b"complete"), cf(false, 0, CONT, b"late")]),
        ("new message inside a fragmented one", vec![cf(false, 0, TEXT, b"first"), cf(true, 0, TEXT, b"second")]),
        (
            "binary inside a fragmented text, after a ping",
            vec![cf(false, 0, TEXT, b"first"), cf(true, 0, PING, b""), cf(false, 0, BINARY, b"x")],
        ),
    ];
    // §5.2: reserved opcodes, data (0x3–0x7) and control (0xB–0xF).
    for (name, op) in [
        ("opcode 3", 3),
        ("opcode 4", 4),
        ("opcode 5", 5),
        ("opcode 6", 6),
        ("opcode 7", 7),
        ("opcode 0xB", 0xB),
        ("opcode 0xC", 0xC),
        ("opcode 0xD", 0xD),
        ("opcode 0xE", 0xE),
        ("opcode 0xF", 0xF),
    ] {
        v.push((name, vec![text(b"before"), cf(true, 0, op, b"reserved")]));
    }
    v
}

#[tokio::test]
async fn framing_violations_get_the_proxys_close_1002_instead_of_the_backends() {
    let s =
        client_violations().into_iter().map(|(name, frames)| scenario(name, frames, Expect::ProxyRefuses)).collect();
    differential(s).await;
}

#[tokio::test]
async fn invalid_utf8_comes_back_byte_identical() {
    let s = vec![
        scenario("valid multi-byte UTF-8", vec![text("κόσμε €𝄞".as_bytes())], Expect::CleanEcho),
        scenario(
            "invalid UTF-8 in a text frame",
            vec![text(&[0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xED, 0xA0, 0x80])],
            Expect::Fails(1007),
        ),
        scenario("lone continuation byte", vec![text(&[b'a', 0x80, b'b'])], Expect::Fails(1007)),
        scenario(
            "code point split across fragments",
            vec![cf(false, 0, TEXT, &[0xE2, 0x82]), cf(true, 0, CONT, &[0xAC])],
            Expect::CleanEcho,
        ),
        scenario(
            "invalid UTF-8 in a later fragment",
            vec![cf(false, 0, TEXT, b"ok so far "), cf(true, 0, CONT, &[0xFF, 0xFE])],
            Expect::Fails(1007),
        ),
        scenario("invalid UTF-8 in binary is fine", vec![cf(true, 0, BINARY, &[0xFF, 0xFE, 0xC0])], Expect::CleanEcho),
    ];
    differential(s).await;
}

#[tokio::test]
async fn close_codes_come_back_byte_identical() {
    let mut s = Vec::new();
    for (name, code) in
        [("close 1000", 1000), ("close 1001", 1001), ("close 1011", 1011), ("close 3000", 3000), ("close 4999", 4999)]
    {
        s.push(scenario(name, vec![close(code, "reason")], Expect::ClosesWith(code)));
    }
    for (name, code) in [
        ("close 999", 999),
        ("close 1004", 1004),
        ("close 1005", 1005),
        ("close 1006", 1006),
        ("close 1015", 1015),
        ("close 2999", 2999),
        ("close 5000", 5000),
        ("close 65535", 65535),
    ] {
        s.push(scenario(name, vec![close(code, "")], Expect::Fails(1002)));
    }
    s.push(scenario("close with a 1-byte payload", vec![cf(true, 0, CLOSE, &[0x03])], Expect::Fails(1002)));
    s.push(scenario(
        "close with 123-byte reason",
        vec![cf(true, 0, CLOSE, &close_payload(1000, &filled(123, 6)))],
        Expect::ClosesWith(1000),
    ));
    s.push(scenario(
        "close with invalid UTF-8 reason",
        vec![cf(true, 0, CLOSE, &close_payload(1000, &[0xFF, 0xFE]))],
        Expect::Fails(1007),
    ));
    s.push(scenario(
        "close without a code",
        vec![text(b"then an empty close"), cf(true, 0, CLOSE, b"")],
        Expect::ClosesEmpty,
    ));
    differential(s).await;
}

// ---------------------------------------------------------------------------------------------
// Byte-exact pass-through to a raw backend

/// A backend that completes the handshake by hand, records every byte it receives until the
/// end of stream and, once told to, writes a scripted byte string and ends its output.
struct RawBackend {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    /// Its input ended (EOF or reset): the proxy closed the connection.
    closed: Arc<AtomicBool>,
    script: tokio::sync::mpsc::Sender<Vec<u8>>,
}

async fn raw_backend() -> RawBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(AtomicBool::new(false));
    let (script, mut script_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let rec = Arc::clone(&received);
    let ended = Arc::clone(&closed);
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "raw backend: request head incomplete");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let key = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
            .map(|(_, v)| v.trim().to_string())
            .expect("raw backend: no Sec-WebSocket-Key");
        rec.lock().unwrap().extend_from_slice(&buf[end..]);
        let accept = accept_for(&key);
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        s.write_all(response.as_bytes()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let reader = tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = r.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                rec.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            ended.store(true, Ordering::SeqCst);
        });
        if let Some(bytes) = script_rx.recv().await {
            // The proxy may already have closed the connection; what was written is what counts.
            let _ = w.write_all(&bytes).await;
            w.shutdown().await.ok();
        }
        let _ = reader.await;
    });
    RawBackend { addr, received, closed, script }
}

impl RawBackend {
    /// Wait until the connection's input ended; returns every byte received.
    async fn until_closed(&self, within: Duration) -> Vec<u8> {
        let closed = Arc::clone(&self.closed);
        wait_until(within, "the backend connection closed", || {
            let closed = Arc::clone(&closed);
            async move { closed.load(Ordering::SeqCst) }
        })
        .await;
        self.received.lock().unwrap().clone()
    }
}

/// RFC 6455 §4.2.2: base64(SHA-1(key + GUID)).
fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Frames an endpoint may refuse, but whose headers break no rule an intermediary can judge:
/// the relay leaves judging reserved bits, UTF-8 and Close codes to the endpoints, so it must
/// pass them on untouched.
fn odd_but_well_framed(masked: bool) -> Vec<u8> {
    let m = |k: u8| masked.then_some([k, k ^ 0x5A, 7, 0x5A]);
    let f = |first: u8, p: &[u8], k: u8| raw_frame(first, p, m(k), Len::Minimal);
    [
        f(0x80 | TEXT, b"plain", 1),
        f(0x80 | RSV1 | RSV2 | RSV3 | TEXT, b"all reserved bits", 2),
        f(RSV1 | BINARY, b"RSV1 on a first fragment", 3),
        f(0x80 | RSV2 | CONT, b"RSV2 on the last one", 4),
        f(0x80 | TEXT, &[0xFF, 0xFE, 0xC0, 0x80], 5),
        f(TEXT, b"frag-", 6),
        f(0x80 | PING, &filled(125, 7), 7),
        f(CONT, b"ment", 8),
        f(0x80 | PONG, b"", 9),
        f(0x80 | CONT, b"ed", 10),
        raw_frame(0x80 | BINARY, &filled(300, 8), m(11), Len::Wide64),
        f(0x80 | BINARY, &filled(70_000, 9), 12),
        f(0x80 | CLOSE, &close_payload(999, b"invalid code, still a frame"), 13),
    ]
    .concat()
}

#[tokio::test]
async fn relay_passes_odd_frames_byte_for_byte_in_both_directions() {
    let backend = raw_backend().await;
    let proxy = proxy(&[backend.addr], &[]).await;
    let (mut client, status, accept, early) = open_raw(proxy.proxy_addr, "").await;
    assert!(status.contains(" 101 "), "{status}");
    assert_eq!(accept.as_deref(), Some(accept_for("dGhlIHNhbXBsZSBub25jZQ==").as_str()));
    assert!(early.is_empty());

    // Client → backend: masked frames, written one byte at a time, arrive exactly as sent.
    let upstream = odd_but_well_framed(true);
    for b in &upstream {
        client.write_all(std::slice::from_ref(b)).await.unwrap();
    }
    let received = Arc::clone(&backend.received);
    let want = upstream.len();
    wait_until(Duration::from_secs(10), "the backend received every byte", || {
        let received = Arc::clone(&received);
        async move { received.lock().unwrap().len() >= want }
    })
    .await;
    assert_eq!(*backend.received.lock().unwrap(), upstream, "backend got different bytes than the client sent");

    // Backend → client: unmasked frames arrive exactly as sent, then the end of stream.
    let downstream = odd_but_well_framed(false);
    backend.script.send(downstream.clone()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "no end of stream from the proxy; got {} of {} bytes", got.len(), downstream.len());
    assert_eq!(got.len(), downstream.len(), "frames added or dropped: {:?}", parse_frames(&got).0);
    assert_eq!(got, downstream);
}

// ---------------------------------------------------------------------------------------------
// Limits the proxy enforces itself

/// A 64-bit length with the most significant bit set (RFC 6455 §5.2: "the most significant bit
/// MUST be 0").
fn overflow_frame() -> Vec<u8> {
    let mut f = vec![0x80 | BINARY, 0x80 | 127];
    f.extend_from_slice(&(0x8000_0000_0000_0005u64).to_be_bytes());
    f.extend_from_slice(&[9, 9, 9, 9]);
    f.extend_from_slice(b"xxxxx");
    f
}

#[tokio::test]
async fn length_with_msb_set_gets_close_1002_from_the_proxy_on_both_sides() {
    let backend = raw_backend().await;
    let proxy = proxy(&[backend.addr], &[]).await;
    let (mut client, status, _, _) = open_raw(proxy.proxy_addr, "").await;
    assert!(status.contains(" 101 "), "{status}");
    let before = text(b"before the bad frame");
    client.write_all(&before).await.unwrap();
    let received = Arc::clone(&backend.received);
    wait_until(Duration::from_secs(10), "the good frame reached the backend", || {
        let received = Arc::clone(&received);
        let n = before.len();
        async move { received.lock().unwrap().len() >= n }
    })
    .await;
    client.write_all(&overflow_frame()).await.unwrap();

    // The client gets the proxy's Close 1002 (unmasked, server side of the connection).
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while parse_frames(&got).0.is_empty() {
        let mut chunk = [0u8; 256];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, client.read(&mut chunk)).await.expect("Close 1002 in time").unwrap();
        assert!(n > 0, "stream ended without a Close");
        got.extend_from_slice(&chunk[..n]);
    }
    let frames = parse_frames(&got).0;
    assert_eq!(frames.len(), 1, "exactly one frame: {frames:?}");
    assert_eq!((frames[0].opcode, frames[0].masked, frames[0].close_code()), (CLOSE, false, Some(1002)));

    // The backend got the good frame unchanged, then the proxy's masked Close 1002; none of the bad frame.
    let received = Arc::clone(&backend.received);
    wait_until(Duration::from_secs(10), "the backend got the proxy's Close", || {
        let received = Arc::clone(&received);
        async move { parse_frames(&received.lock().unwrap()).0.len() >= 2 }
    })
    .await;
    let upstream = backend.received.lock().unwrap().clone();
    assert!(upstream.starts_with(&before), "good frame changed");
    let (frames, used) = parse_frames(&upstream[before.len()..]);
    assert_eq!(used, upstream.len() - before.len(), "stray bytes after the Close: {upstream:?}");
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].opcode, frames[0].masked, frames[0].close_code()), (CLOSE, true, Some(1002)));
}

/// Everything `s` sends until its end of stream (a reset after the last bytes counts as the end
/// too), within `within`.
async fn read_until_end(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => panic!("no end of stream within {within:?}; got {:?}", parse_frames(&got).0),
            Ok(Ok(0)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
}

/// `bytes` is exactly one Close frame with `code`, masked or not.
fn assert_only_close(what: &str, bytes: &[u8], masked: bool, code: u16) {
    let (frames, used) = parse_frames(bytes);
    assert_eq!(used, bytes.len(), "{what}: stray bytes {bytes:?}");
    let summary: Vec<_> = frames.iter().map(|f| (f.opcode, f.masked, f.close_code())).collect();
    assert_eq!(summary, [(CLOSE, masked, Some(code))], "{what}: expected only a Close {code}");
}

/// A frame from a server (unmasked).
fn sf(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(if fin { 0x80 } else { 0 } | opcode, payload, None, Len::Minimal)
}

/// A header that declares a 1 GiB ping (§5.5: at most 125 bytes), and a few bytes of it.
fn gib_ping(mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | PING, if mask.is_some() { 0x80 } else { 0 } | 127];
    f.extend_from_slice(&(1u64 << 30).to_be_bytes());
    f.extend(mask.into_iter().flatten());
    f.extend_from_slice(b"not a boundary for a gigabyte");
    f
}

/// Every client-side violation (and a ping declaring 1 GiB, which a direct backend would try to
/// read whole), after a good frame and followed by one, through the proxy to a backend that
/// records what it gets and never answers: the backend receives every frame before the bad one
/// unchanged and then the proxy's masked Close 1002, nothing of the bad frame or what follows;
/// the client gets the proxy's Close 1002 (once the backend left the proxy's Close unanswered for
/// the 2 s linger); both connections end. Written at once or byte by byte, alternately.
#[tokio::test]
async fn client_framing_violations_never_reach_the_backend() {
    let mut cases = client_violations();
    cases.push(("ping declaring 1 GiB", vec![text(b"before"), gib_ping(Some([3, 1, 4, 1]))]));
    let runs = cases.into_iter().enumerate().map(|(i, (name, mut frames))| async move {
        let backend = raw_backend().await;
        let proxy = proxy(&[backend.addr], &[]).await;
        let (mut client, status, _, early) = open_raw(proxy.proxy_addr, "").await;
        assert!(status.contains(" 101 "), "{name}: {status}");
        let bad = frames.pop().expect("a bad frame");
        let forwarded = [text(b"good frame first"), frames.concat()].concat();
        let sent = [forwarded.clone(), bad, text(b"never forwarded")].concat();
        if i % 2 == 0 {
            client.write_all(&sent).await.unwrap();
        } else {
            for b in &sent {
                client.write_all(std::slice::from_ref(b)).await.unwrap();
            }
        }
        let got = [early, read_until_end(&mut client, Duration::from_secs(10)).await].concat();
        assert_only_close(&format!("{name}: client"), &got, false, 1002);
        let received = backend.until_closed(Duration::from_secs(10)).await;
        assert!(received.starts_with(&forwarded), "{name}: the frames before the bad one changed: {received:?}");
        assert_only_close(&format!("{name}: backend"), &received[forwarded.len()..], true, 1002);
    });
    futures_util::future::join_all(runs).await;
}

/// A rule is enforced from the header byte that decides it, without waiting for the rest of
/// the header: a client that sends only the first byte (or the first two) of a bad frame and
/// then nothing gets the proxy's Close 1002 (echoed by the backend, no reason) after the echo
/// of its good frame. This is what keeps the bad frame's first bytes from reaching the backend
/// when a client sends its header in pieces (Autobahn 5.11 and 5.14 chop it octet by octet).
#[tokio::test]
async fn violations_are_refused_from_the_header_byte_that_decides_them() {
    let cases: [(&str, Vec<u8>); 6] = [
        ("orphan continuation, first byte", vec![0x00]),
        ("reserved opcode, first byte", vec![0x80 | 0x5]),
        ("fragmented ping, first byte", vec![PING]),
        ("interleaved text, first byte", [cf(false, 0, BINARY, b"open"), vec![0x80 | TEXT]].concat()),
        ("unmasked text, two bytes", vec![0x80 | TEXT, 5]),
        ("ping declaring 1 GiB, two bytes", vec![0x80 | PING, 0x80 | 127]),
    ];
    let backend = echo("early", "").await;
    let proxied = proxy(&[backend.addr], &[]).await;
    let runs = cases.into_iter().map(|(name, partial)| async move {
        let (mut client, status, _, early) = open_raw(proxied.proxy_addr, "").await;
        assert!(status.contains(" 101 "), "{name}: {status}");
        client.write_all(&[text(b"good"), partial].concat()).await.unwrap();
        let got = [early, read_until_end(&mut client, Duration::from_secs(10)).await].concat();
        let frames = parse_frames(&got).0;
        let summary: Vec<_> = frames.iter().map(|f| (f.opcode, f.payload.clone())).collect();
        assert_eq!(summary, [(TEXT, b"good".to_vec()), (CLOSE, 1002u16.to_be_bytes().to_vec())], "{name}");
    });
    futures_util::future::join_all(runs).await;
}

/// When the byte that decides a rule comes in a later read than the header's first byte, that
/// first byte has already gone to the backend, so the proxy cannot put a Close there and ends
/// the backend's connection instead. The client must still get its Close 1002 — at once, not
/// after the linger: the backend (`wsingress echo`) closes as soon as it sees the end, which
/// used to end the tunnel before the client's Close went out.
#[tokio::test]
async fn a_header_split_before_its_deciding_byte_still_gets_the_sender_a_close() {
    let backend = echo("split", "").await;
    let proxied = proxy(&[backend.addr], &[]).await;
    let (mut client, status, _, _) = open_raw(proxied.proxy_addr, "").await;
    assert!(status.contains(" 101 "), "{status}");
    let first = [text(b"good"), vec![0x80 | TEXT]].concat();
    client.write_all(&first).await.unwrap();
    // The proxy has read (and forwarded) the first byte of the bad header.
    let metrics = Arc::clone(&proxied.metrics);
    wait_until(Duration::from_secs(10), "the proxy read the first header byte", || {
        let m = Arc::clone(&metrics);
        let want = first.len() as f64;
        async move { metric(&m, "wsingress_websocket_bytes_total", &[("direction", "client_to_backend")]) >= want }
    })
    .await;
    // The second byte says "unmasked" (§5.1).
    client.write_all(&[5]).await.unwrap();
    let got = read_until_end(&mut client, Duration::from_secs(10)).await;
    let codes: Vec<_> = parse_frames(&got).0.iter().map(|f| (f.opcode, f.close_code())).collect();
    assert_eq!(codes, [(TEXT, None), (CLOSE, Some(1002))], "the client must get a Close 1002");
}

/// Server frames RFC 6455 forbids, the last one of each list being the bad one.
fn server_violations() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    vec![
        // §5.1: "A server MUST NOT mask any frames that it sends to the client."
        ("masked server frame", vec![raw_frame(0x80 | TEXT, b"masked", Some([9, 8, 7, 6]), Len::Minimal)]),
        ("masked close from the server", vec![cf(true, 0, CLOSE, &close_payload(1000, b""))]),
        ("ping with 126 bytes", vec![sf(true, PING, &filled(126, 1))]),
        ("ping declaring 1 GiB", vec![gib_ping(None)]),
        ("fragmented pong", vec![sf(false, PONG, b"")]),
        ("continuation without a start", vec![sf(true, CONT, b"orphan")]),
        ("new message inside a fragmented one", vec![sf(false, TEXT, b"first"), sf(true, BINARY, b"x")]),
        ("opcode 3", vec![sf(true, 3, b"reserved")]),
        ("opcode 0xB", vec![sf(true, 0xB, b"reserved")]),
    ]
}

/// The server-side rules, each shown both ways. Directly, a client receives the bad frame as
/// the server sent it and has to fail the connection itself. Through the proxy it never sees
/// it: it gets the frames before it unchanged, then the proxy's Close 1002, then the end of
/// stream; the backend gets the proxy's masked Close 1002 (the client here never answers, so
/// it comes after the 2 s linger) and nothing else, and its connection ends.
#[tokio::test]
async fn server_framing_violations_never_reach_the_client() {
    let runs = server_violations().into_iter().map(|(name, mut frames)| async move {
        let bad = frames.pop().expect("a bad frame");
        let forwarded = [sf(true, TEXT, b"good frame first"), frames.concat()].concat();
        let sent = [forwarded.clone(), bad, sf(true, TEXT, b"never forwarded")].concat();

        let direct = raw_backend().await;
        let (mut client, status, _, early) = open_raw(direct.addr, "").await;
        assert!(status.contains(" 101 "), "{name}: {status}");
        direct.script.send(sent.clone()).await.unwrap();
        let got = [early, read_until_end(&mut client, Duration::from_secs(10)).await].concat();
        assert_eq!(got, sent, "{name}: directly, the client gets what the server sent");

        let backend = raw_backend().await;
        let proxy = proxy(&[backend.addr], &[]).await;
        let (mut client, status, _, early) = open_raw(proxy.proxy_addr, "").await;
        assert!(status.contains(" 101 "), "{name}: {status}");
        backend.script.send(sent).await.unwrap();
        let got = [early, read_until_end(&mut client, Duration::from_secs(10)).await].concat();
        assert!(got.starts_with(&forwarded), "{name}: the frames before the bad one changed: {got:?}");
        assert_only_close(&format!("{name}: client"), &got[forwarded.len()..], false, 1002);
        let received = backend.until_closed(Duration::from_secs(10)).await;
        assert_only_close(&format!("{name}: backend"), &received, true, 1002);
    });
    futures_util::future::join_all(runs).await;
}

/// `max-message-bytes` applies to control frames too, both ways: a ping at the limit crosses the
/// proxy unchanged, one byte more gets Close 1009 and is never forwarded.
#[tokio::test]
async fn control_frames_count_against_max_message_bytes() {
    let ping = |n: usize| cf(true, 0, PING, &filled(n, 2));
    let backend = raw_backend().await;
    let proxied = proxy(&[backend.addr], &["--max-message-bytes", "100"]).await;
    let (mut client, status, _, _) = open_raw(proxied.proxy_addr, "").await;
    assert!(status.contains(" 101 "), "{status}");
    client.write_all(&[ping(100), ping(101), text(b"after")].concat()).await.unwrap();
    let got = read_until_end(&mut client, Duration::from_secs(10)).await;
    assert_only_close("client", &got, false, 1009);
    let received = backend.until_closed(Duration::from_secs(10)).await;
    assert!(received.starts_with(&ping(100)), "the ping at the limit changed: {received:?}");
    assert_only_close("backend", &received[ping(100).len()..], true, 1009);

    let backend = raw_backend().await;
    let proxied = proxy(&[backend.addr], &["--max-message-bytes", "100"]).await;
    let (mut client, status, _, _) = open_raw(proxied.proxy_addr, "").await;
    assert!(status.contains(" 101 "), "{status}");
    let pong = |n: usize| sf(true, PONG, &filled(n, 3));
    backend.script.send([pong(100), pong(101)].concat()).await.unwrap();
    let got = read_until_end(&mut client, Duration::from_secs(10)).await;
    assert!(got.starts_with(&pong(100)), "the pong at the limit changed: {got:?}");
    assert_only_close("client", &got[pong(100).len()..], false, 1009);
    assert_only_close("backend", &backend.until_closed(Duration::from_secs(10)).await, true, 1009);
}

/// A complete frame read together with a bad length still reaches the backend, and its echo
/// reaches the client before the Close, as without a proxy.
#[tokio::test]
async fn frames_before_a_bad_length_in_the_same_write_still_arrive() {
    let backend = echo("overflow", "").await;
    let proxy = proxy(&[backend.addr], &[]).await;
    let (mut client, status, _, _) = open_raw(proxy.proxy_addr, "").await;
    assert!(status.contains(" 101 "), "{status}");
    client.write_all(&[text(b"good frame first"), overflow_frame()].concat()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "no end of stream in time; got {:?}", parse_frames(&got).0);
    let frames = parse_frames(&got).0;
    let summary: Vec<_> =
        frames.iter().map(|f| (f.opcode, f.close_code(), String::from_utf8_lossy(&f.payload).to_string())).collect();
    assert_eq!(
        frames.first().map(|f| f.payload.as_slice()),
        Some(&b"good frame first"[..]),
        "echo of the good frame missing: {summary:?}"
    );
    assert_eq!(frames.last().and_then(Parsed::close_code), Some(1002), "{summary:?}");
}

/// Autobahn 3.6 and friends through the proxy (seen under load): the backend sends Close 1002
/// and its socket then resets; the proxy forwarded the Close but answered the reset with a
/// second Close, 1011, which a direct client never sees (RFC 6455 §5.5.1: one Close per side).
/// Known gap in src/proxy/relay.rs (`peer_gone` ignores that the departed peer already sent
/// its Close). Run with `--ignored`.
#[tokio::test]
async fn backend_close_then_reset_reaches_the_client_as_one_close() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let key = text
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
            .map(|(_, v)| v.trim().to_string())
            .unwrap();
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(&key)
        );
        s.write_all(response.as_bytes()).await.unwrap();
        // Close 1002, then an abortive close (RST), like a server dropping a connection it failed.
        s.write_all(&raw_frame(0x80 | CLOSE, &close_payload(1002, b"protocol error"), None, Len::Minimal))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
        drop(s);
    });
    let proxy = proxy(&[addr], &[]).await;
    let (mut client, status, _, mut got) = open_raw(proxy.proxy_addr, "").await;
    assert!(status.contains(" 101 "), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.read(&mut chunk)).await.expect("end of stream in time") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let codes: Vec<Option<u16>> = parse_frames(&got).0.iter().map(Parsed::close_code).collect();
    assert_eq!(codes, [Some(1002)], "the client must see exactly the backend's Close");
}

// ---------------------------------------------------------------------------------------------
// Autobahn|Testsuite (fast subset), when Python 2.7 exists here

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python27() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WSINGRESS_PYTHON27") {
        return Some(PathBuf::from(p));
    }
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("2.7"))
        .map(|e| e.path().join("bin/python"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

fn require_tools() -> bool {
    std::env::var("WSINGRESS_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
}

#[test]
fn autobahn_fast_run_gives_the_same_verdicts_through_the_proxy() {
    let Some(py27) = python27() else {
        // Not an install problem: this machine has no Python 2.7 at all.
        eprintln!("SKIP autobahn: no Python 2.7 here ($PYENV_ROOT/versions/2.7*); Autobahn|Testsuite is Python 2 code");
        return;
    };
    let lib = repo().join(".tools/ab27/lib/autobahntestsuite");
    if !lib.exists() {
        let why = "Autobahn|Testsuite is not installed (scripts/install-tools.sh autobahn)";
        assert!(!require_tools(), "{why}, and WSINGRESS_REQUIRE_TOOLS=1");
        eprintln!("SKIP autobahn: {why}");
        return;
    }
    let started = Instant::now();
    let out = Command::new(repo().join("scripts/autobahn.sh"))
        .args(["--fast", "--no-install", "--no-docs"])
        .env("WSINGRESS_BIN", env!("CARGO_BIN_EXE_wsingress"))
        .env("WSINGRESS_PYTHON27", &py27)
        .current_dir(repo())
        .output()
        .expect("run scripts/autobahn.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    if out.status.code() == Some(77) {
        eprintln!("SKIP autobahn: {stderr}");
        return;
    }
    assert!(out.status.success(), "scripts/autobahn.sh --fast failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("Same verdict in every case"), "{stdout}");
    // Two targets, each direct, proxied and proxied over TLS (wss), ~250 cases each.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("| ") && l.contains(", ")).collect();
    assert_eq!(rows.len(), 6, "{stdout}");
    assert_eq!(rows.iter().filter(|r| r.contains("over TLS (wss)")).count(), 2, "{stdout}");
    for row in rows {
        let cases: u32 = row.split('|').nth(2).and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        assert!(cases >= 240, "too few cases ran: {row}");
    }
    eprintln!("autobahn fast run: {:.1} s", started.elapsed().as_secs_f64());
}
