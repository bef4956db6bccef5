//! A minimal WebSocket client for measuring: RFC 6455 opening handshake over plain TCP or TLS
//! (`wss://`: TLS 1.3 only, one pinned suite and group, session resumption off, so every
//! handshake is a full one), masked client frames out, unmasked server frames in, and payloads
//! that carry a sequence number so every echo can be checked.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// RFC 6455 §1.3: the GUID appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest response head accepted from the server.
const MAX_HEAD: usize = 16 * 1024;
/// Smallest read: enough for a few small frames, small enough that 10,000 idle clients stay cheap.
const READ_CHUNK: usize = 4 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Everything that can go wrong on one benchmark connection.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("connection closed by peer (close code {0:?})")]
    Closed(Option<u16>),
    #[error("connection closed by peer without a close frame")]
    Eof,
    #[error("echo mismatch: {0}")]
    Mismatch(String),
    #[error("timed out")]
    Timeout,
}

pub type Result<T> = std::result::Result<T, WsError>;

/// TLS settings of a `wss://` target.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    /// SNI and the name the certificate must carry.
    pub server_name: ServerName<'static>,
}

impl Tls {
    /// A client trusting the CA certificates in `ca_file`: TLS 1.3 with AES-128-GCM and X25519
    /// only (what every peer then negotiates alike), ALPN `http/1.1`, session resumption off.
    pub fn new(ca_file: &Path, server_name: &str) -> std::result::Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("--ca {}: {e}", ca_file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("--ca {}: {e}", ca_file.display()))?;
            roots.add(cert).map_err(|e| format!("--ca {}: {e}", ca_file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("--ca {}: no certificate", ca_file.display()));
        }
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
        provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        let server_name =
            ServerName::try_from(server_name.to_owned()).map_err(|e| format!("server name `{server_name}`: {e}"))?;
        Ok(Self { config: Arc::new(config), server_name })
    }
}

/// Where to connect: resolved once at start-up.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
    /// `wss://`: the TLS client (set by [`Target::with_tls`]).
    pub tls: Option<Tls>,
    /// The URL said `wss://`.
    pub secure: bool,
}

impl Target {
    /// Parse `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH` (the latter needs [`Target::with_tls`]).
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let (secure, rest) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(format!("`{url}`: only ws:// and wss:// URLs are supported")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:{}", if secure { 443 } else { 80 })
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
            .map_err(|e| format!("`{authority}`: {e}"))?
            .next()
            .ok_or_else(|| format!("`{authority}` resolves to no address"))?;
        Ok(Self { addr, host_header: authority.to_owned(), path: path.to_owned(), tls: None, secure })
    }

    /// The host of the URL, without its port.
    pub fn host(&self) -> &str {
        self.host_header.rsplit_once(':').map_or(self.host_header.as_str(), |(h, _)| h)
    }

    pub fn with_tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// The connection under the WebSocket: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A cheap, non-cryptographic random source (splitmix64 over a global counter): keys and masks
/// only need to differ, not to be secret.
pub fn random_u64() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let seed = if seed == 0 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        STATE.fetch_add(now, Ordering::Relaxed).wrapping_add(now)
    } else {
        seed
    };
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2, item 5.4).
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Append a masked client frame header (FIN set) for `len` payload bytes.
fn push_header(buf: &mut Vec<u8>, opcode: u8, len: usize, mask: [u8; 4]) {
    buf.push(0x80 | opcode);
    if len < 126 {
        buf.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        buf.push(0x80 | 126);
        buf.extend_from_slice(&short.to_be_bytes());
    } else {
        buf.push(0x80 | 127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    buf.extend_from_slice(&mask);
}

/// One binary message, kept both as the expected plain payload and as a ready masked frame.
/// The first (up to) 8 payload bytes hold a sequence number, so a stale or reordered echo is
/// caught; changing it re-masks only those bytes.
#[derive(Debug, Clone)]
pub struct Payload {
    plain: Vec<u8>,
    frame: Vec<u8>,
    header_len: usize,
    mask: [u8; 4],
}

impl Payload {
    pub fn new(size: usize, seed: u64) -> Self {
        let plain: Vec<u8> = (0..size).map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed) as u8).collect();
        let mask = (random_u64() as u32).to_ne_bytes();
        let mut frame = Vec::with_capacity(size + 14);
        push_header(&mut frame, OP_BINARY, size, mask);
        let header_len = frame.len();
        frame.extend(plain.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        Self { plain, frame, header_len, mask }
    }

    pub fn set_seq(&mut self, seq: u64) {
        let bytes = seq.to_le_bytes();
        let n = self.plain.len().min(8);
        for (i, b) in bytes.iter().take(n).enumerate() {
            self.plain[i] = *b;
            self.frame[self.header_len + i] = b ^ self.mask[i % 4];
        }
    }

    #[cfg(test)]
    pub fn plain(&self) -> &[u8] {
        &self.plain
    }

    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Check an echoed message against this payload.
    pub fn check(&self, msg: &Message) -> Result<()> {
        if !msg.binary {
            return Err(WsError::Mismatch("echo came back as text".into()));
        }
        if msg.payload.len() != self.plain.len() {
            return Err(WsError::Mismatch(format!("sent {} bytes, echo has {}", self.plain.len(), msg.payload.len())));
        }
        if msg.payload[..] != self.plain[..] {
            let at = msg.payload.iter().zip(&self.plain).position(|(a, b)| a != b).unwrap_or(0);
            return Err(WsError::Mismatch(format!("payload differs at byte {at} of {}", self.plain.len())));
        }
        Ok(())
    }
}

/// A data message from the server.
#[derive(Debug)]
pub struct Message {
    pub binary: bool,
    pub payload: BytesMut,
}

/// Reads server frames out of a buffer that may already hold bytes that followed the 101 head.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// Next complete data message; fragments are joined, pings and pongs skipped.
    pub async fn next_message<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<Message> {
        let mut assembling: Option<(bool, BytesMut)> = None;
        loop {
            let Some((fin, opcode, header_len, len)) = self.parse_header()? else {
                self.fill(io, 2 + 8).await?;
                continue;
            };
            let total = header_len + len;
            if self.buf.len() < total {
                self.fill(io, total).await?;
                continue;
            }
            let mut frame = self.buf.split_to(total);
            frame.advance(header_len);
            match opcode {
                OP_TEXT | OP_BINARY => {
                    if assembling.is_some() {
                        return Err(WsError::Protocol("new message inside a fragmented one".into()));
                    }
                    let binary = opcode == OP_BINARY;
                    if fin {
                        return Ok(Message { binary, payload: frame });
                    }
                    assembling = Some((binary, frame));
                }
                OP_CONTINUATION => {
                    let Some((binary, mut acc)) = assembling.take() else {
                        return Err(WsError::Protocol("continuation without a message".into()));
                    };
                    acc.extend_from_slice(&frame);
                    if fin {
                        return Ok(Message { binary, payload: acc });
                    }
                    assembling = Some((binary, acc));
                }
                OP_CLOSE => {
                    let code = (frame.len() >= 2).then(|| u16::from_be_bytes([frame[0], frame[1]]));
                    return Err(WsError::Closed(code));
                }
                OP_PING | OP_PONG => {}
                other => return Err(WsError::Protocol(format!("unknown opcode {other:#x}"))),
            }
        }
    }

    /// `(fin, opcode, header length, payload length)` if a whole header is buffered.
    fn parse_header(&self) -> Result<Option<(bool, u8, usize, usize)>> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WsError::Protocol("RSV bits set without an extension".into()));
        }
        let opcode = b[0] & 0x0F;
        if b[1] & 0x80 != 0 {
            // RFC 6455 §5.1: a server MUST NOT mask frames it sends to the client.
            return Err(WsError::Protocol("server frame is masked".into()));
        }
        let (header_len, len) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (4, u16::from_be_bytes([b[2], b[3]]) as usize)
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                let len =
                    usize::try_from(u64::from_be_bytes(l)).map_err(|_| WsError::Protocol("frame too long".into()))?;
                (10, len)
            }
            n => (2, n as usize),
        };
        if opcode >= 0x8 && (!fin || len > 125) {
            return Err(WsError::Protocol("bad control frame".into()));
        }
        Ok(Some((fin, opcode, header_len, len)))
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R, want: usize) -> Result<()> {
        let need = want.saturating_sub(self.buf.len()).max(READ_CHUNK);
        self.buf.reserve(need);
        if io.read_buf(&mut self.buf).await? == 0 {
            return Err(WsError::Eof);
        }
        Ok(())
    }
}

/// An upgraded connection.
#[derive(Debug)]
pub struct WsConn {
    stream: Stream,
    reader: FrameReader,
}

impl WsConn {
    /// TCP connect (from `source` if given, so the 4-tuple space of one address is not the limit),
    /// then the opening handshake, checking the 101 status, `Upgrade` and `Sec-WebSocket-Accept`.
    pub async fn connect(target: &Target, source: Option<IpAddr>) -> Result<Self> {
        let stream = match source {
            None => TcpStream::connect(target.addr).await?,
            Some(ip) => {
                let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(target.addr).await?
            }
        };
        stream.set_nodelay(true)?;
        let stream = match &target.tls {
            None if target.secure => return Err(WsError::Handshake("wss:// needs TLS settings (--ca)".into())),
            None => Stream::Plain(stream),
            Some(tls) => {
                let tls = tokio_rustls::TlsConnector::from(tls.config.clone())
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|e| WsError::Handshake(format!("TLS: {e}")))?;
                Stream::Tls(Box::new(tls))
            }
        };
        let mut conn = Self { stream, reader: FrameReader::default() };
        conn.handshake(target).await?;
        Ok(conn)
    }

    async fn handshake(&mut self, target: &Target) -> Result<()> {
        let key_bytes = [random_u64().to_ne_bytes(), random_u64().to_ne_bytes()].concat();
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path, target.host_header
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.stream.flush().await?;
        let buf = &mut self.reader.buf;
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return Err(WsError::Handshake("response head too large".into()));
            }
            buf.reserve(READ_CHUNK);
            if self.stream.read_buf(buf).await? == 0 {
                return Err(WsError::Handshake("connection closed before the response head".into()));
            }
        };
        let head = buf.split_to(head_len);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        response.parse(&head).map_err(|e| WsError::Handshake(format!("bad response head: {e}")))?;
        if response.code != Some(101) {
            return Err(WsError::Handshake(format!(
                "status {} {}",
                response.code.unwrap_or(0),
                response.reason.unwrap_or("")
            )));
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
            return Err(WsError::Handshake("101 without `Upgrade: websocket`".into()));
        }
        if header("sec-websocket-accept").as_deref() != Some(accept_for(&key).as_str()) {
            return Err(WsError::Handshake("wrong Sec-WebSocket-Accept".into()));
        }
        Ok(())
    }

    pub async fn send(&mut self, frame: &[u8]) -> Result<()> {
        self.stream.write_all(frame).await?;
        self.stream.flush().await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Message> {
        self.reader.next_message(&mut self.stream).await
    }

    /// Send `payload`, read one message back and check it is the same.
    pub async fn echo(&mut self, payload: &Payload) -> Result<()> {
        self.send(payload.frame()).await?;
        let msg = self.recv().await?;
        payload.check(&msg)
    }

    /// Closing handshake (RFC 6455 §7.1.1): send Close 1000, wait for the server's Close, then for
    /// the server to close TCP first (so TIME_WAIT stays on the server side, as with browsers).
    pub async fn close(mut self) -> Result<()> {
        let mask = (random_u64() as u32).to_ne_bytes();
        let mut frame = Vec::with_capacity(8);
        push_header(&mut frame, OP_CLOSE, 2, mask);
        frame.extend(1000u16.to_be_bytes().iter().enumerate().map(|(i, b)| b ^ mask[i]));
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        match self.recv().await {
            Err(WsError::Closed(_)) => {}
            Err(e) => return Err(e),
            Ok(_) => return Err(WsError::Protocol("data after our Close".into())),
        }
        let mut sink = [0u8; 64];
        loop {
            match self.stream.read(&mut sink).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // A TLS server that ends with FIN but no close_notify: the connection is over all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Split for a writer and a reader running at the same time (streaming with a window).
    pub fn into_split(self) -> (ReadSide, WriteSide) {
        match self.stream {
            Stream::Plain(s) => {
                let (read, write) = s.into_split();
                (ReadSide { io: Box::new(read), reader: self.reader }, Box::new(write))
            }
            Stream::Tls(s) => {
                let (read, write) = tokio::io::split(*s);
                (ReadSide { io: Box::new(read), reader: self.reader }, Box::new(write))
            }
        }
    }
}

/// The writing half of a split connection (flush after each write: TLS may hold a record).
pub type WriteSide = Box<dyn AsyncWrite + Unpin + Send>;

/// The reading half of a split connection.
pub struct ReadSide {
    io: Box<dyn AsyncRead + Unpin + Send>,
    reader: FrameReader,
}

impl ReadSide {
    pub async fn recv(&mut self) -> Result<Message> {
        self.reader.next_message(&mut self.io).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(accept_for("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn payload_frame_unmasks_to_plain_after_seq_change() {
        for size in [0usize, 3, 125, 126, 65_535, 65_536] {
            let mut p = Payload::new(size, 7);
            p.set_seq(0x0102_0304_0506_0708);
            let f = p.frame();
            let unmasked: Vec<u8> = f[p.header_len..].iter().enumerate().map(|(i, b)| b ^ p.mask[i % 4]).collect();
            assert_eq!(unmasked, p.plain(), "size {size}");
            assert_eq!(f.len() - p.header_len, size);
        }
    }

    #[test]
    fn target_parses_port_and_path() {
        let t = Target::parse("ws://127.0.0.1:9000/chat?x=1").unwrap();
        assert_eq!(t.addr.port(), 9000);
        assert_eq!(t.path, "/chat?x=1");
        assert_eq!(Target::parse("ws://127.0.0.1:9000").unwrap().path, "/");
        assert!(Target::parse("http://127.0.0.1:1/").is_err());
        let t = Target::parse("wss://127.0.0.1:9443/x").unwrap();
        assert!(t.secure && t.tls.is_none());
        assert_eq!(t.host(), "127.0.0.1");
    }

    /// A real echo server (tungstenite), on an ephemeral port.
    async fn tungstenite_echo() -> Target {
        use futures_util::{SinkExt, StreamExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_binary() || msg.is_text() {
                            ws.send(msg).await.unwrap();
                        }
                    }
                });
            }
        });
        Target::parse(&format!("ws://{addr}/")).unwrap()
    }

    /// A raw server: answers the handshake, then writes `reply(payload)` for each message read.
    async fn raw_server(reply: fn(&[u8]) -> Vec<u8>) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let key = head.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap().trim().to_owned();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                accept_for(&key)
            );
            tcp.write_all(resp.as_bytes()).await.unwrap();
            // One small masked client frame (< 126 bytes) is all these tests send.
            let mut hdr = [0u8; 6];
            tcp.read_exact(&mut hdr).await.unwrap();
            let len = (hdr[1] & 0x7F) as usize;
            let mut payload = vec![0u8; len];
            tcp.read_exact(&mut payload).await.unwrap();
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= hdr[2 + i % 4];
            }
            tcp.write_all(&reply(&payload)).await.unwrap();
            let _ = tcp.read(&mut chunk).await;
        });
        Target::parse(&format!("ws://{addr}/")).unwrap()
    }

    #[tokio::test]
    async fn echoes_check_out_against_a_real_server_in_all_length_forms() {
        let target = tungstenite_echo().await;
        let mut conn = WsConn::connect(&target, None).await.unwrap();
        for (seq, size) in [1usize, 125, 126, 4000, 65_535, 65_536, 200_000].into_iter().enumerate() {
            let mut p = Payload::new(size, 3);
            p.set_seq(seq as u64);
            conn.echo(&p).await.unwrap();
        }
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn binds_the_requested_source_address() {
        let target = tungstenite_echo().await;
        let source: IpAddr = "127.0.0.7".parse().unwrap();
        let mut conn = WsConn::connect(&target, Some(source)).await.unwrap();
        let Stream::Plain(tcp) = &conn.stream else { panic!("a plain target") };
        assert_eq!(tcp.local_addr().unwrap().ip(), source);
        conn.echo(&Payload::new(10, 1)).await.unwrap();
    }

    #[tokio::test]
    async fn fragmented_echo_is_reassembled() {
        let target = raw_server(|p| {
            let (a, b) = p.split_at(p.len() / 2);
            let mut out = vec![0x02, a.len() as u8];
            out.extend_from_slice(a);
            out.extend_from_slice(&[0x89, 0]); // a ping in between
            out.extend_from_slice(&[0x80, b.len() as u8]);
            out.extend_from_slice(b);
            out
        })
        .await;
        let mut conn = WsConn::connect(&target, None).await.unwrap();
        conn.echo(&Payload::new(100, 9)).await.unwrap();
    }

    #[tokio::test]
    async fn a_changed_byte_is_reported_as_a_mismatch() {
        let target = raw_server(|p| {
            let mut out = vec![0x82, p.len() as u8];
            out.extend_from_slice(p);
            let last = out.len() - 1;
            out[last] ^= 1;
            out
        })
        .await;
        let mut conn = WsConn::connect(&target, None).await.unwrap();
        let err = conn.echo(&Payload::new(50, 9)).await.unwrap_err();
        assert!(matches!(err, WsError::Mismatch(ref m) if m.contains("byte 49")), "{err}");
    }

    #[tokio::test]
    async fn a_wrong_accept_key_fails_the_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut chunk = [0u8; 4096];
            let _ = tcp.read(&mut chunk).await;
            let resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                        Connection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n";
            tcp.write_all(resp.as_bytes()).await.unwrap();
        });
        let target = Target::parse(&format!("ws://{addr}/")).unwrap();
        let err = WsConn::connect(&target, None).await.unwrap_err();
        assert!(matches!(err, WsError::Handshake(_)), "{err}");
    }
}
