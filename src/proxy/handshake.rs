//! The backend side of a WebSocket upgrade, over the raw stream: write the request head, read
//! the response head (RFC 9112 §4, with `httparse`), skip interim `1xx` answers (RFC 9110
//! §15.2: only 101 is final among them here), check a 101 (RFC 6455 §4.2.2:
//! `Sec-WebSocket-Accept` must answer the client's key, `Upgrade: websocket`), or hand back a
//! refusal whose body is streamed, never buffered whole, and capped. No HTTP client object, no
//! extra task, no buffer kept once the tunnel starts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::body::{Body, Frame, SizeHint};

use super::error::ProxyError;
use super::headers;
use super::http1::{ChunkedDecoder, Field, Span, tokens};
use super::stream::Stream;

/// Largest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// Largest refusal body passed back; a longer one is cut and the client connection closed.
pub const MAX_REFUSAL_BODY: u64 = 1024 * 1024;
const MAX_FIELDS: usize = 96;
/// Bytes read from a backend per refusal-body read.
const BODY_READ: usize = 8 * 1024;

/// A backend's response head: its bytes, status and field spans into them.
#[derive(Debug)]
pub struct ResponseHead {
    buf: Vec<u8>,
    pub status: u16,
    fields: Vec<Field>,
}

impl ResponseHead {
    /// Every field line as `(name, value)`.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields.iter().map(|f| (f.name.get(&self.buf), f.value.get(&self.buf)))
    }
    /// Lines of the field `name` (lower-case).
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + Clone {
        self.fields().filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }
    /// The end-to-end fields (hop-by-hop ones removed, RFC 9110 §7.6.1), for passing on.
    pub fn end_to_end(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.fields().filter(|(n, _)| !headers::is_hop_by_hop(n, self.values("connection")))
    }
    /// The end-to-end fields as a `HeaderMap`, for hyper.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len());
        for (n, v) in self.end_to_end() {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                map.append(n, v);
            }
        }
        map
    }
}

/// What the backend answered.
#[derive(Debug)]
pub enum Answer {
    /// 101: the stream is now a WebSocket stream; `early` are bytes it sent after the head.
    Switched { head: ResponseHead, stream: Stream, early: Bytes },
    /// Anything else; the body is read from the backend as the client takes it.
    Refused { head: ResponseHead, body: RefusalBody },
}

/// Send `head` and read the answer. `client_key` is the client's `Sec-WebSocket-Key`;
/// `read_timeout` bounds each wait for refusal-body bytes.
pub async fn exchange(
    mut stream: Stream,
    head: &[u8],
    client_key: &[u8],
    read_timeout: Duration,
) -> Result<Answer, ProxyError> {
    stream.write_all_within(head, read_timeout).await.map_err(io_error)?;
    let mut buf = Vec::with_capacity(1024);
    let (status, fields, head_len) = loop {
        if let Some((status, fields, len)) = parse_head(&buf)? {
            if (100..200).contains(&status) && status != 101 {
                // An interim answer (100 Continue, 102, 103 Early Hints): not the one we wait for.
                buf.drain(..len);
                continue;
            }
            break (status, fields, len);
        }
        if buf.len() >= MAX_HEAD {
            return Err(ProxyError::BadHandshake("backend response head too large"));
        }
        let want = (MAX_HEAD - buf.len()).min(4096);
        let n = stream.read_more(&mut buf, want).await.map_err(io_error)?;
        if n == 0 {
            return Err(ProxyError::BadHandshake("backend closed the connection before answering"));
        }
    };
    let rest = buf.split_off(head_len);
    let head = ResponseHead { buf, status, fields };
    if status == 101 {
        let expected = headers::accept_key(client_key);
        if head.values("sec-websocket-accept").next() != Some(expected.as_bytes()) {
            return Err(ProxyError::BadHandshake("Sec-WebSocket-Accept does not match the client's key"));
        }
        if !head.values("upgrade").any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"websocket"))) {
            return Err(ProxyError::BadHandshake("101 without Upgrade: websocket"));
        }
        return Ok(Answer::Switched { head, stream, early: Bytes::from(rest) });
    }
    let framing = refusal_framing(&head)?;
    let body = RefusalBody { stream, buf: rest, pos: 0, framing, passed: 0, read_timeout, timer: None, done: false };
    Ok(Answer::Refused { head, body })
}

fn io_error(e: std::io::Error) -> ProxyError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            ProxyError::BadHandshake("backend reset the connection")
        }
        std::io::ErrorKind::TimedOut => ProxyError::ResponseTimeout,
        _ => ProxyError::BadHandshake("backend I/O error during the handshake"),
    }
}

/// Parse a complete response head: status, field spans and its length; `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<(u16, Vec<Field>, usize)>, ProxyError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ProxyError::BadHandshake("malformed backend response head")),
    };
    let status =
        resp.code.filter(|c| (100..600).contains(c)).ok_or(ProxyError::BadHandshake("invalid backend status code"))?;
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| {
        let start = (s.as_ptr() as usize).saturating_sub(base);
        Span::new(start..start + s.len())
    };
    let fields = resp.headers.iter().map(|h| Field { name: span(h.name.as_bytes()), value: span(h.value) }).collect();
    Ok(Some((status, fields, len)))
}

/// How a refusal's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone)]
pub enum Framing {
    /// No body (1xx, 204, 304).
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the backend closes.
    UntilClose,
}

fn refusal_framing(head: &ResponseHead) -> Result<Framing, ProxyError> {
    if head.status == 204 || head.status == 304 || head.status < 200 {
        return Ok(Framing::None);
    }
    if head.values("transfer-encoding").any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(b"chunked"))) {
        return Ok(Framing::Chunked(ChunkedDecoder::default()));
    }
    let mut length = None;
    for v in head.values("content-length") {
        let n: u64 = std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or(ProxyError::BadHandshake("invalid Content-Length from the backend"))?;
        if length.is_some_and(|l| l != n) {
            return Err(ProxyError::BadHandshake("conflicting Content-Length from the backend"));
        }
        length = Some(n);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A refusal's body, decoded from its framing as the client reads it: at most one read buffer
/// at a time, each wait bounded by `read_timeout`, and at most [`MAX_REFUSAL_BODY`] bytes.
#[derive(Debug)]
pub struct RefusalBody {
    stream: Stream,
    buf: Vec<u8>,
    pos: usize,
    framing: Framing,
    passed: u64,
    read_timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl RefusalBody {
    /// How the body is delimited (the client's response head says the same).
    pub fn framing(&self) -> &Framing {
        &self.framing
    }

    /// The next piece of body data; `None` at its end.
    pub async fn next_data(&mut self) -> Option<Result<Bytes, ProxyError>> {
        std::future::poll_fn(|cx| self.poll_data(cx)).await
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, ProxyError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if self.pos < self.buf.len() {
                let avail = &self.buf[self.pos..];
                let (used, data) = match &mut self.framing {
                    Framing::None => (avail.len(), None),
                    Framing::Length(rem) => {
                        let take = (avail.len() as u64).min(*rem) as usize;
                        *rem -= take as u64;
                        (take, Some(0..take))
                    }
                    Framing::Chunked(dec) => match dec.decode(avail) {
                        Ok(r) => r,
                        Err(_) => {
                            return Poll::Ready(Some(Err(ProxyError::BadHandshake(
                                "invalid chunked body from the backend",
                            ))));
                        }
                    },
                    Framing::UntilClose => (avail.len(), Some(0..avail.len())),
                };
                let start = self.pos;
                self.pos += used;
                self.done = match &self.framing {
                    Framing::None => true,
                    Framing::Length(rem) => *rem == 0,
                    Framing::Chunked(dec) => dec.is_done(),
                    Framing::UntilClose => false,
                };
                if let Some(r) = data.filter(|r| !r.is_empty()) {
                    self.passed += r.len() as u64;
                    if self.passed > MAX_REFUSAL_BODY {
                        self.done = true;
                        return Poll::Ready(Some(Err(ProxyError::BadHandshake("backend refusal body too large"))));
                    }
                    let bytes = Bytes::copy_from_slice(&self.buf[start + r.start..start + r.end]);
                    return Poll::Ready(Some(Ok(bytes)));
                }
                continue;
            }
            if matches!(self.framing, Framing::None | Framing::Length(0)) {
                self.done = true;
                continue;
            }
            // Read more, within the read timeout.
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => {
                    let timeout = self.read_timeout;
                    let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if timer.as_mut().poll(cx).is_ready() {
                        self.done = true;
                        return Poll::Ready(Some(Err(ProxyError::ResponseTimeout)));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(ProxyError::BadHandshake("backend reset the connection"))));
                }
                Poll::Ready(Ok(())) => {}
            }
            self.buf.clear();
            self.buf.resize(BODY_READ, 0);
            self.pos = 0;
            match self.stream.read_some(&mut self.buf) {
                Ok(0) => {
                    self.buf.clear();
                    self.done = true;
                    if !matches!(self.framing, Framing::UntilClose) {
                        return Poll::Ready(Some(Err(ProxyError::BadHandshake(
                            "backend closed the connection mid-body",
                        ))));
                    }
                }
                Ok(n) => {
                    self.buf.truncate(n);
                    self.timer = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.buf.clear(),
                Err(_) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(ProxyError::BadHandshake("backend reset the connection"))));
                }
            }
        }
    }
}

impl Body for RefusalBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        self.get_mut().poll_data(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
    fn is_end_stream(&self) -> bool {
        self.done
    }
    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Serialise the start of a request head: `GET target HTTP/1.1`.
pub fn request_line(out: &mut Vec<u8>, target: &[u8]) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn heads_parse_incrementally() {
        let full = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-A: 1\r\nX-A: 2\r\n\r\nextra";
        for cut in 0..full.len() - 5 {
            assert!(parse_head(&full[..cut]).unwrap().is_none(), "complete at {cut}");
        }
        let (status, fields, len) = parse_head(full).unwrap().unwrap();
        assert_eq!(status, 101);
        assert_eq!(fields.len(), 4);
        assert_eq!(&full[len..], b"extra");
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 999 Nope\r\n\r\n").is_err());
    }

    async fn answer_with(reply: &'static [u8]) -> Result<Answer, ProxyError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(reply).await.unwrap();
        });
        let stream = Stream::from(tokio::net::TcpStream::connect(addr).await.unwrap());
        exchange(stream, b"GET / HTTP/1.1\r\n\r\n", b"dGhlIHNhbXBsZSBub25jZQ==", Duration::from_secs(5)).await
    }

    async fn body_of(mut body: RefusalBody) -> Result<Vec<u8>, ProxyError> {
        let mut out = Vec::new();
        while let Some(piece) = body.next_data().await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn refusal_bodies_are_read_in_every_framing() {
        let cases: [(&'static [u8], &[u8]); 4] = [
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!", b"nope!"),
            (b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nT: v\r\n\r\n", b"abcde"),
            (b"HTTP/1.1 500 Oops\r\n\r\nuntil close", b"until close"),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        ];
        for (reply, want) in cases {
            match answer_with(reply).await.unwrap() {
                Answer::Refused { body, .. } => assert_eq!(body_of(body).await.unwrap(), want),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn interim_answers_before_the_101_are_skipped() {
        let reply: &'static [u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
        match answer_with(reply).await.unwrap() {
            Answer::Switched { head, early, .. } => {
                assert_eq!(head.status, 101);
                assert_eq!(&early[..], b"\x81\x02hi");
            }
            other => panic!("the 1xx was taken as final: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_101_must_carry_the_right_accept_key() {
        let bad: &'static [u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
        assert!(matches!(answer_with(bad).await, Err(ProxyError::BadHandshake(_))));
        let no_upgrade: &'static [u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(matches!(answer_with(no_upgrade).await, Err(ProxyError::BadHandshake(_))));
    }

    #[tokio::test]
    async fn a_chunk_size_near_the_u64_limit_is_an_error_not_a_wrap() {
        let reply: &'static [u8] = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc";
        let Answer::Refused { body, .. } = answer_with(reply).await.unwrap() else { panic!("not refused") };
        assert!(matches!(body_of(body).await, Err(ProxyError::BadHandshake(_))));
    }

    #[tokio::test]
    async fn refusal_bodies_are_capped() {
        let big: &'static [u8] = Box::leak(
            format!(
                "HTTP/1.1 403 F\r\nContent-Length: {}\r\n\r\n{}",
                MAX_REFUSAL_BODY + 10,
                "x".repeat(MAX_REFUSAL_BODY as usize + 10)
            )
            .into_bytes()
            .into_boxed_slice(),
        );
        let Answer::Refused { body, .. } = answer_with(big).await.unwrap() else { panic!("not refused") };
        assert!(matches!(body_of(body).await, Err(ProxyError::BadHandshake(_))));
    }

    #[test]
    fn hop_by_hop_fields_of_a_response_are_not_passed_on() {
        let raw = b"HTTP/1.1 101 S\r\nConnection: Upgrade, X-Private\r\nX-Private: 1\r\nKeep-Alive: 5\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
        let (status, fields, len) = parse_head(raw).unwrap().unwrap();
        let head = ResponseHead { buf: raw[..len].to_vec(), status, fields };
        let names: Vec<&[u8]> = head.end_to_end().map(|(n, _)| n).collect();
        assert_eq!(names, [b"Sec-WebSocket-Protocol".as_slice()]);
    }
}
