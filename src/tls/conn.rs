//! [`TlsConn`]: one TLS session (server or client role) over a `tokio::net::TcpStream`,
//! exposing what the relay needs — readiness, one non-blocking read of plaintext into the
//! caller's buffer, a non-blocking write — plus `AsyncRead`/`AsyncWrite` for hyper.
//!
//! **Why rustls' unbuffered API.** Measured with a counting allocator (`tests/tls_memory.rs`):
//! a buffered `ServerConnection` keeps its receive buffer (grown to the last burst, shrunk only
//! at the next read) and its plaintext and send queues, about 36 KB after a 30 KB message, while
//! the unbuffered connection leaves every buffer to the caller. Here ciphertext is read into a
//! per-thread scratch buffer and decrypted from there; what an idle connection keeps is the
//! rustls session state and, only when the peer stopped in the middle of a record, the bytes
//! of that partial record. Ciphertext the socket does not take is held (at most one record per
//! `try_write`; post-handshake messages up to [`OUTBOX_READ_LIMIT`], after which reading waits
//! for the peer to read), so a peer that never reads cannot make it buffer without bound.
//!
//! Post-handshake messages (TLS 1.3 session tickets, key updates, alerts) are handled inside
//! rustls while reading; what they make us send goes out with the next flush.

use std::cell::RefCell;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus};
use rustls::{AlertDescription, ProtocolVersion};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use super::material::CertEntry;
use super::server::{self, Resolved};
use super::table::Choice;

/// Largest plaintext of one record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// Largest record on the wire (TLS 1.2 allows 2 KiB of expansion) plus room for a key update
/// that rustls may put before a record.
const MAX_RECORD: usize = MAX_FRAGMENT + 2048 + 5 + 256;
/// Ciphertext read per burst at most (plus a partial record carried over).
const READ_CHUNK: usize = 64 * 1024;
/// Largest handshake flight accepted (certificate chains included).
const MAX_HANDSHAKE: usize = 128 * 1024;
/// Above this much unsent ciphertext, reading stops until the peer takes some.
pub const OUTBOX_READ_LIMIT: usize = 32 * 1024;
/// How long a plain HTTP client gets to read our 400 before the socket closes.
const PLAINTEXT_LINGER: Duration = Duration::from_secs(2);

thread_local! {
    /// Ciphertext being decrypted (per worker thread, never held across an await).
    static SCRATCH_IN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// One encrypted record before it goes to the socket.
    static SCRATCH_OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Why a TLS handshake failed, classified once for metrics (`label`) and logs.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("plain HTTP was sent to the TLS port (answered 400)")]
    PlaintextHttp,
    #[error("the peer closed the connection during the TLS handshake")]
    Eof,
    #[error("no certificate could be served: {0}")]
    NoCertificate(rustls::Error),
    #[error("the client offers no ALPN protocol this server speaks (only http/1.1)")]
    UnsupportedAlpn,
    #[error("the peer rejected our certificate ({0:?})")]
    CertificateRejected(AlertDescription),
    #[error("the peer's certificate is not trusted: {0}")]
    BadCertificate(rustls::Error),
    #[error("the peer supports no TLS version, cipher suite or signature scheme in common: {0}")]
    Incompatible(rustls::Error),
    #[error("TLS protocol error: {0}")]
    Protocol(rustls::Error),
    #[error("I/O error during the TLS handshake: {0}")]
    Io(#[from] io::Error),
}

impl TlsError {
    /// Every `label`, for registering metric series up front.
    pub const LABELS: [&'static str; 10] = [
        "timeout",
        "plaintext_http",
        "eof",
        "no_certificate",
        "unsupported_alpn",
        "certificate_rejected",
        "bad_certificate",
        "incompatible",
        "protocol_error",
        "io_error",
    ];

    /// The `result` label of `wsingress_tls_handshakes_total` (`ok` is a success).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::PlaintextHttp => "plaintext_http",
            Self::Eof => "eof",
            Self::NoCertificate(_) => "no_certificate",
            Self::UnsupportedAlpn => "unsupported_alpn",
            Self::CertificateRejected(_) => "certificate_rejected",
            Self::BadCertificate(_) => "bad_certificate",
            Self::Incompatible(_) => "incompatible",
            Self::Protocol(_) => "protocol_error",
            Self::Io(_) => "io_error",
        }
    }

    fn from_rustls(e: rustls::Error) -> Self {
        use rustls::Error as E;
        match e {
            E::NoApplicationProtocol => Self::UnsupportedAlpn,
            E::AlertReceived(AlertDescription::CloseNotify) => Self::Eof,
            E::General(ref m) if m.contains("no server certificate") => Self::NoCertificate(e),
            E::PeerIncompatible(_) => Self::Incompatible(e),
            E::InvalidCertificate(_) => Self::BadCertificate(e),
            E::AlertReceived(
                d @ (AlertDescription::BadCertificate
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnknownCA),
            ) => Self::CertificateRejected(d),
            other => Self::Protocol(other),
        }
    }
}

/// What a server handshake negotiated.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The client's SNI, if it sent one.
    pub sni: Option<String>,
    /// `Some(b"http/1.1")` when the client used ALPN.
    pub alpn: Option<Vec<u8>>,
    /// The certificate served and how it was chosen.
    pub certificate: Option<Arc<CertEntry>>,
    pub choice: Option<Choice>,
    pub version: Option<ProtocolVersion>,
    /// The client resumed an earlier session (no certificate sent).
    pub resumed: bool,
    /// From the client's first byte to the handshake's end (a client that connects and waits
    /// is not counted against the server).
    pub elapsed: Duration,
}

enum Session {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

impl Session {
    fn common(&self) -> &rustls::CommonState {
        match self {
            Self::Server(c) => c,
            Self::Client(c) => c,
        }
    }
}

/// What to do when the session can take application data.
enum Action<'a> {
    Read,
    Encrypt(&'a [u8], &'a mut [u8]),
    CloseNotify(&'a mut [u8]),
}

/// The outcome of one `process_tls_records` call, once handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Something was done (plaintext delivered, a message encoded): call again.
    Progress,
    /// More ciphertext from the peer is needed.
    NeedInput,
    /// `n` bytes of ciphertext were written into the action's buffer.
    Encrypted(usize),
    /// The action's buffer must hold at least this many bytes.
    NeedSpace(usize),
    /// close_notify received.
    PeerClosed,
    /// close_notify sent and received.
    Closed,
}

/// Run the session over `incoming` once; returns how many bytes of `incoming` are consumed.
fn process(
    session: &mut Session,
    incoming: &mut [u8],
    action: Action<'_>,
    outbox: &mut Vec<u8>,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(usize, Step), rustls::Error> {
    match session {
        Session::Server(c) => handle(c.process_tls_records(incoming), action, outbox, sink),
        Session::Client(c) => handle(c.process_tls_records(incoming), action, outbox, sink),
    }
}

fn handle<D>(
    status: UnbufferedStatus<'_, '_, D>,
    action: Action<'_>,
    outbox: &mut Vec<u8>,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<(usize, Step), rustls::Error> {
    let UnbufferedStatus { mut discard, state } = status;
    let step = match state? {
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(record) = r.next_record() {
                let record = record?;
                discard += record.discard;
                sink(record.payload);
            }
            Step::Progress
        }
        // Early data is never enabled (max_early_data_size stays 0).
        ConnectionState::ReadEarlyData(_) => {
            return Err(rustls::Error::General("unexpected TLS early data".into()));
        }
        ConnectionState::EncodeTlsData(mut e) => {
            let start = outbox.len();
            let mut room = 4096;
            loop {
                outbox.resize(start + room, 0);
                match e.encode(&mut outbox[start..]) {
                    Ok(n) => {
                        outbox.truncate(start + n);
                        break;
                    }
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        room = required_size;
                    }
                    Err(EncodeError::AlreadyEncoded) => {
                        outbox.truncate(start);
                        break;
                    }
                }
            }
            Step::Progress
        }
        // The encoded messages wait in the outbox, which is flushed before any later record.
        ConnectionState::TransmitTlsData(t) => {
            t.done();
            Step::Progress
        }
        ConnectionState::WriteTraffic(mut w) => {
            let written = match action {
                Action::Read => return Ok((discard, Step::NeedInput)),
                Action::Encrypt(plain, out) => w.encrypt(plain, out),
                Action::CloseNotify(out) => w.queue_close_notify(out),
            };
            match written {
                Ok(n) => Step::Encrypted(n),
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                    Step::NeedSpace(required_size)
                }
                Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
            }
        }
        ConnectionState::BlockedHandshake => Step::NeedInput,
        ConnectionState::PeerClosed => Step::PeerClosed,
        ConnectionState::Closed => Step::Closed,
        _ => return Err(rustls::Error::General("unexpected TLS connection state".into())),
    };
    Ok((discard, step))
}

/// One TLS session over a TCP socket.
pub struct TlsConn {
    tcp: TcpStream,
    session: Box<Session>,
    /// Ciphertext received and not yet consumed: a partial record, or whole records left when
    /// the reader's buffer filled up. Empty (no allocation) otherwise.
    incoming: Vec<u8>,
    /// `incoming` may hold whole records (processing stopped for room, not for input).
    incoming_ready: bool,
    /// Plaintext decrypted but not yet returned (a record larger than the reader's buffer).
    plain: Vec<u8>,
    plain_start: usize,
    /// Ciphertext the socket has not taken yet, from `outbox_start`.
    outbox: Vec<u8>,
    outbox_start: usize,
    /// The peer finished sending (close_notify or FIN); reads return 0 once `plain` is empty.
    eof: bool,
    /// That end came with a close_notify.
    close_notify: bool,
    /// `shutdown_write` was called: close_notify queued, FIN once the outbox is flushed.
    write_shut: bool,
    fin_sent: bool,
    /// rustls failed: the session is not driven again (its state may point into input that
    /// is gone), every call reports the failure.
    broken: bool,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("tcp", &self.tcp)
            .field("server", &matches!(*self.session, Session::Server(_)))
            .field("incoming", &self.incoming.len())
            .field("plain", &(self.plain.len() - self.plain_start))
            .field("outbox", &(self.outbox.len() - self.outbox_start))
            .field("eof", &self.eof)
            .finish()
    }
}

impl TlsConn {
    fn new(tcp: TcpStream, session: Session) -> Self {
        Self {
            tcp,
            session: Box::new(session),
            incoming: Vec::new(),
            incoming_ready: false,
            plain: Vec::new(),
            plain_start: 0,
            outbox: Vec::new(),
            outbox_start: 0,
            eof: false,
            close_notify: false,
            write_shut: false,
            fin_sent: false,
            broken: false,
        }
    }

    /// Server handshake on an accepted socket, within `timeout`. Plain HTTP gets a 400 answer
    /// (and [`TlsError::PlaintextHttp`]); every failure is classified for metrics.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<(TlsConn, Accepted), TlsError> {
        let session = UnbufferedServerConnection::new(config).map_err(TlsError::from_rustls)?;
        let mut conn = TlsConn::new(tcp, Session::Server(session));
        let mut resolved: Option<Resolved> = None;
        server::take_resolved();
        let handshake = conn.handshake(Some(&mut resolved));
        let started = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => return Err(TlsError::Timeout(timeout)),
            Ok(Err(TlsError::PlaintextHttp)) => {
                conn.answer_plaintext_http().await;
                return Err(TlsError::PlaintextHttp);
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(first_byte)) => first_byte,
        };
        let common = conn.session.common();
        let accepted = Accepted {
            sni: resolved.as_ref().and_then(|r| r.sni.clone()),
            alpn: common.alpn_protocol().map(<[u8]>::to_vec),
            certificate: resolved.as_ref().map(|r| r.entry.clone()),
            choice: resolved.as_ref().map(|r| r.choice),
            version: common.protocol_version(),
            resumed: common.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            elapsed: started.elapsed(),
        };
        Ok((conn, accepted))
    }

    /// Client handshake (to a backend) within `timeout`, sending `server_name` as SNI.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        timeout: Duration,
    ) -> Result<TlsConn, TlsError> {
        let session = UnbufferedClientConnection::new(config, server_name).map_err(TlsError::from_rustls)?;
        let mut conn = TlsConn::new(tcp, Session::Client(session));
        match tokio::time::timeout(timeout, conn.handshake(None)).await {
            Err(_) => Err(TlsError::Timeout(timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => Ok(conn),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Bytes this connection holds in its own buffers now (partial record, undelivered
    /// plaintext, unsent ciphertext); 0 for an idle connection between records.
    pub fn held_bytes(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outbox.capacity()
    }

    /// The peer ended with a close_notify (rather than a bare FIN).
    pub fn received_close_notify(&self) -> bool {
        self.close_notify
    }

    /// Ciphertext (or a FIN after `shutdown_write`) is waiting for the socket: the owner must
    /// keep calling [`poll_write_ready`](Self::poll_write_ready) until this is false, even when
    /// it has nothing more to write.
    pub fn has_pending_write(&self) -> bool {
        self.outbox_start < self.outbox.len() || (self.write_shut && !self.fin_sent)
    }

    /// Drive the handshake to its end; returns when the peer's first bytes arrived.
    async fn handshake(&mut self, mut resolved: Option<&mut Option<Resolved>>) -> Result<Instant, TlsError> {
        let mut buf = vec![0u8; 8 * 1024];
        let mut filled = 0usize;
        let mut first_byte: Option<Instant> = None;
        loop {
            let Self { session, outbox, plain, .. } = self;
            let result =
                process(session, &mut buf[..filled], Action::Read, outbox, &mut |p| plain.extend_from_slice(p));
            if let Some(slot) = resolved.as_deref_mut()
                && let Some(r) = server::take_resolved()
            {
                *slot = Some(r);
            }
            let (discard, step) = match result {
                Ok(x) => x,
                Err(e) => {
                    self.send_alerts();
                    return Err(TlsError::from_rustls(e));
                }
            };
            buf.copy_within(discard..filled, 0);
            filled -= discard;
            self.write_outbox().await?;
            match step {
                Step::Progress | Step::Encrypted(_) | Step::NeedSpace(_) => continue,
                // A client that finishes and closes at once (its Finished and close_notify in
                // one read, as `openssl s_client </dev/null` does) completed the handshake: the
                // first read reports the end of the stream.
                Step::PeerClosed | Step::Closed if !self.session.common().is_handshaking() => {
                    self.eof = true;
                    self.close_notify = true;
                    filled = 0;
                    break;
                }
                Step::PeerClosed | Step::Closed => return Err(TlsError::Eof),
                Step::NeedInput => {}
            }
            if !self.session.common().is_handshaking() {
                break;
            }
            if filled == buf.len() {
                if buf.len() >= MAX_HANDSHAKE {
                    return Err(TlsError::Protocol(rustls::Error::General("handshake flight too large".into())));
                }
                buf.resize(buf.len() * 2, 0);
            }
            self.tcp.readable().await?;
            match self.tcp.try_read(&mut buf[filled..]) {
                Ok(0) => return Err(TlsError::Eof),
                Ok(n) => {
                    if first_byte.is_none() {
                        first_byte = Some(Instant::now());
                        if matches!(*self.session, Session::Server(_)) && buf[0].is_ascii_uppercase() {
                            return Err(TlsError::PlaintextHttp);
                        }
                    }
                    filled += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(TlsError::Io(e)),
            }
        }
        if filled > 0 {
            self.incoming = buf[..filled].to_vec();
            self.incoming_ready = true;
        }
        Ok(first_byte.unwrap_or_else(Instant::now))
    }

    /// Write the whole outbox (handshake only: waits for the socket).
    async fn write_outbox(&mut self) -> io::Result<()> {
        while self.outbox_start < self.outbox.len() {
            self.tcp.writable().await?;
            self.flush_outbox()?;
        }
        Ok(())
    }

    /// nginx-style answer to plain HTTP on the TLS port, then close. Best effort and bounded:
    /// the request is drained for a moment so closing does not reset the answer away.
    async fn answer_plaintext_http(&mut self) {
        const BODY: &str = "This port speaks TLS: use https:// or wss://.\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        let linger = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            self.tcp.write_all(answer.as_bytes()).await?;
            let _ = SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 1024];
            let mut drained = 0;
            while drained < 64 * 1024 {
                match self.tcp.read(&mut sink).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<(), io::Error>(())
        };
        let _ = tokio::time::timeout(PLAINTEXT_LINGER, linger).await;
    }

    /// After a fatal error: put the alert rustls queued on the wire, best effort. Only queued
    /// messages are taken: rustls hands them out before it looks at the input again, so the
    /// (empty) buffer passed here is never read.
    fn send_alerts(&mut self) {
        for _ in 0..4 {
            if !self.session.common().wants_write() {
                break;
            }
            let Self { session, outbox, .. } = self;
            if !matches!(process(session, &mut [], Action::Read, outbox, &mut |_| {}), Ok((_, Step::Progress))) {
                break;
            }
        }
        let _ = self.flush_outbox();
    }

    /// Write what the socket takes of the outbox now. `Ok(true)` when it is empty.
    fn flush_outbox(&mut self) -> io::Result<bool> {
        while self.outbox_start < self.outbox.len() {
            match self.tcp.try_write(&self.outbox[self.outbox_start..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.outbox_start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if !self.outbox.is_empty() {
            self.outbox = Vec::new();
            self.outbox_start = 0;
        }
        if self.write_shut && !self.fin_sent {
            self.fin_sent = true;
            // ENOTCONN after the peer left is harmless.
            let _ = SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        }
        Ok(true)
    }

    fn outbox_len(&self) -> usize {
        self.outbox.len() - self.outbox_start
    }

    /// Ready when decrypted bytes (or the end of the stream) are waiting, or the socket is
    /// readable — or writable while held ciphertext waits, so that `read_some` flushes it.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plain_start < self.plain.len() || self.eof || self.incoming_ready {
            return Poll::Ready(Ok(()));
        }
        if self.outbox_len() > 0 {
            if let Poll::Ready(r) = self.tcp.poll_write_ready(cx) {
                return Poll::Ready(r);
            }
            if self.outbox_len() > OUTBOX_READ_LIMIT {
                return Poll::Pending;
            }
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Non-blocking: decrypted bytes into `buf`. `Ok(0)` is the end of the stream (close_notify
    /// or FIN); `Err(WouldBlock)` when nothing is available (socket readiness cleared).
    pub fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Held ciphertext goes first; a failure shows up on the next write.
        let _ = self.flush_outbox();
        if self.plain_start < self.plain.len() {
            return Ok(self.take_plain(buf));
        }
        if self.eof {
            return Ok(0);
        }
        if self.broken {
            return Err(broken());
        }
        if self.outbox_len() > OUTBOX_READ_LIMIT {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let result = SCRATCH_IN.with(|cell| {
            let mut scratch = cell.borrow_mut();
            if scratch.len() < READ_CHUNK + MAX_RECORD {
                scratch.resize(READ_CHUNK + MAX_RECORD, 0);
            }
            self.read_with(&mut scratch, buf)
        });
        let _ = self.flush_outbox();
        result
    }

    fn take_plain(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plain.len() - self.plain_start);
        buf[..n].copy_from_slice(&self.plain[self.plain_start..self.plain_start + n]);
        self.plain_start += n;
        if self.plain_start == self.plain.len() {
            self.plain = Vec::new();
            self.plain_start = 0;
        }
        n
    }

    fn read_with(&mut self, scratch: &mut [u8], buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = self.incoming.len();
        scratch[..filled].copy_from_slice(&self.incoming);
        self.incoming = Vec::new();
        self.incoming_ready = false;
        let mut out = 0usize;
        let mut may_read = true;
        let result = loop {
            let Self { session, outbox, plain, .. } = self;
            let mut sink = |p: &[u8]| {
                let n = p.len().min(buf.len() - out);
                buf[out..out + n].copy_from_slice(&p[..n]);
                out += n;
                plain.extend_from_slice(&p[n..]);
            };
            let (discard, step) = match process(session, &mut scratch[..filled], Action::Read, outbox, &mut sink) {
                Ok(x) => x,
                Err(e) => {
                    self.send_alerts();
                    self.broken = true;
                    filled = 0;
                    break Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            scratch.copy_within(discard..filled, 0);
            filled -= discard;
            match step {
                Step::Progress | Step::Encrypted(_) | Step::NeedSpace(_) => {
                    if out == buf.len() || !self.plain.is_empty() {
                        self.incoming_ready = filled > 0;
                        break Ok(out);
                    }
                }
                Step::PeerClosed | Step::Closed => {
                    self.eof = true;
                    self.close_notify = true;
                    filled = 0;
                    break Ok(out);
                }
                Step::NeedInput => {
                    if out > 0 {
                        break Ok(out);
                    }
                    if !may_read {
                        break Err(io::ErrorKind::WouldBlock.into());
                    }
                    let room = (scratch.len() - filled).min(buf.len().max(MAX_RECORD));
                    if room == 0 {
                        // Only a handshake message spanning many records could fill it.
                        self.broken = true;
                        filled = 0;
                        break Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "TLS message larger than the read buffer",
                        ));
                    }
                    match read_socket(&self.tcp, &mut scratch[filled..filled + room]) {
                        Ok((0, _)) => {
                            self.eof = true;
                            if filled > 0 {
                                filled = 0;
                                break Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "the peer closed the connection in the middle of a TLS record",
                                ));
                            }
                            break Ok(0);
                        }
                        Ok((n, drained)) => {
                            filled += n;
                            may_read = !drained;
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
        };
        if filled > 0 {
            self.incoming = scratch[..filled].to_vec();
        }
        result
    }

    /// Ready when the socket can take more; ciphertext held from an earlier write (and a FIN
    /// after `shutdown_write`) is flushed first.
    pub fn poll_write_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.has_pending_write() {
                return self.tcp.poll_write_ready(cx);
            }
            ready!(self.tcp.poll_write_ready(cx))?;
            if let Err(e) = self.flush_outbox() {
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Non-blocking: encrypt up to `buf.len()` bytes (one record per socket write) and write.
    /// Ciphertext the socket does not take now is held (at most one record) and flushed by
    /// `poll_write_ready`; `Err(WouldBlock)` while some is held.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.flush_outbox()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.write_shut {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.broken {
            return Err(broken());
        }
        let mut done = 0;
        while done < buf.len() {
            let chunk = &buf[done..buf.len().min(done + MAX_FRAGMENT)];
            match self.write_record(Some(chunk)) {
                Ok(()) => done += chunk.len(),
                Err(e) if done > 0 => {
                    tracing::debug!(error = %e, "TLS write failed after {done} bytes");
                    break;
                }
                Err(e) => return Err(e),
            }
            if self.outbox_len() > 0 {
                break;
            }
        }
        Ok(done)
    }

    /// Encrypt `chunk` (or a close_notify for `None`) into one record and write it, holding
    /// what the socket does not take.
    fn write_record(&mut self, chunk: Option<&[u8]>) -> io::Result<()> {
        SCRATCH_OUT.with(|cell| {
            let mut out = cell.borrow_mut();
            if out.len() < MAX_RECORD {
                out.resize(MAX_RECORD, 0);
            }
            let n = loop {
                let Self { session, incoming, outbox, plain, eof, close_notify, .. } = self;
                let action = match chunk {
                    Some(c) => Action::Encrypt(c, &mut out[..]),
                    None => Action::CloseNotify(&mut out[..]),
                };
                let processed =
                    process(session, &mut incoming[..], action, outbox, &mut |p| plain.extend_from_slice(p));
                let (discard, step) = match processed {
                    Ok(x) => x,
                    Err(e) => {
                        self.broken = true;
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                };
                incoming.drain(..discard);
                if incoming.is_empty() {
                    *incoming = Vec::new();
                }
                match step {
                    Step::Encrypted(n) => break n,
                    Step::NeedSpace(required) => {
                        let len = out.len();
                        out.resize(required.max(len), 0);
                    }
                    Step::Progress => {}
                    Step::PeerClosed => {
                        *eof = true;
                        *close_notify = true;
                    }
                    Step::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                    Step::NeedInput => {
                        return Err(io::Error::other("the TLS handshake is not complete"));
                    }
                }
            };
            if self.outbox_len() > 0 {
                self.outbox.extend_from_slice(&out[..n]);
                self.flush_outbox()?;
                return Ok(());
            }
            let mut written = 0;
            while written < n {
                match self.tcp.try_write(&out[written..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(w) => written += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if written < n {
                self.outbox = out[written..n].to_vec();
                self.outbox_start = 0;
            }
            Ok(())
        })
    }

    /// close_notify, then FIN (once held ciphertext is out: see [`has_pending_write`](Self::has_pending_write)).
    pub fn shutdown_write(&mut self) {
        if self.write_shut {
            return;
        }
        if self.broken {
            self.write_shut = true;
            let _ = self.flush_outbox();
            return;
        }
        if let Err(e) = self.write_record(None) {
            tracing::debug!(error = %e, "could not queue a TLS close_notify");
        }
        self.write_shut = true;
        if let Err(e) = self.flush_outbox() {
            tracing::debug!(error = %e, "TLS shutdown: the socket failed");
            self.outbox = Vec::new();
            self.outbox_start = 0;
        }
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "the TLS session failed earlier")
}

/// One `recv` into `buf`, returning `(n, drained)`. A short read means the socket was drained,
/// so tokio's readiness is cleared with it and the next wait goes straight to epoll.
pub fn read_socket(s: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut got = None;
    let r = s.try_io(Interest::READABLE, || {
        let n = loop {
            match Read::read(&mut &*SockRef::from(s), buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        got = Some(n);
        if n > 0 && n < buf.len() { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }
    });
    match (r, got) {
        (Ok(n), _) => Ok((n, false)),
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok((n, true)),
        (Err(e), _) => Err(e),
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.poll_read_ready(cx))?;
            match this.read_some(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_write_ready(cx))?;
            match this.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.has_pending_write() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.shutdown_write();
        if !this.has_pending_write() {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_ready(cx))?;
        Poll::Ready(Ok(()))
    }
}
