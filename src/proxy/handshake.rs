//! The backend side of a WebSocket upgrade, over the raw socket: write the request head,
//! read and parse the response head (RFC 9112 §4, with `httparse`), check a 101 (RFC 6455
//! §4.2.2: `Sec-WebSocket-Accept` must answer the client's key, `Upgrade: websocket`), or
//! read a refusal's body so it can be passed back as is. No HTTP client object, no extra
//! task, no buffer kept once the tunnel starts.

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::ProxyError;
use super::headers;

/// Largest response head accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// Largest refusal body passed back (bigger ones are answered with 502).
const MAX_REFUSAL_BODY: usize = 1024 * 1024;
const MAX_HEADERS: usize = 96;

/// What the backend answered.
#[derive(Debug)]
pub enum Answer {
    /// 101: the socket is now a WebSocket stream; `early` are bytes it sent after the head.
    Switched { headers: HeaderMap, stream: TcpStream, early: Bytes },
    /// Anything else, with its body (read completely).
    Refused { status: StatusCode, headers: HeaderMap, body: Bytes },
}

/// Serialise a request head: `GET target HTTP/1.1`, the fields, an empty line.
pub fn request_head(target: &str, fields: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Send `head` and read the answer. `client_key` is the client's `Sec-WebSocket-Key`.
pub async fn exchange(mut stream: TcpStream, head: &[u8], client_key: &[u8]) -> Result<Answer, ProxyError> {
    stream.write_all(head).await.map_err(io_error)?;
    let mut buf = Vec::with_capacity(1024);
    let (status, fields, head_len) = loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                return Err(ProxyError::BadHandshake("backend response head too large"));
            }
            buf.reserve(buf.len());
        }
        let n = stream.read_buf(&mut buf).await.map_err(io_error)?;
        if n == 0 {
            return Err(ProxyError::BadHandshake("backend closed the connection before answering"));
        }
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let expected = headers::accept_key(client_key);
        let accept = fields.get(header::SEC_WEBSOCKET_ACCEPT).map(HeaderValue::as_bytes);
        if accept != Some(expected.as_bytes()) {
            return Err(ProxyError::BadHandshake("Sec-WebSocket-Accept does not match the client's key"));
        }
        if !headers::has_token(&fields, &header::UPGRADE, "websocket") {
            return Err(ProxyError::BadHandshake("101 without Upgrade: websocket"));
        }
        let early = Bytes::copy_from_slice(&buf[head_len..]);
        return Ok(Answer::Switched { headers: fields, stream, early });
    }
    let body = read_body(&mut stream, status, &fields, buf.split_off(head_len)).await?;
    Ok(Answer::Refused { status, headers: fields, body })
}

fn io_error(e: std::io::Error) -> ProxyError {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
            ProxyError::BadHandshake("backend reset the connection")
        }
        _ => ProxyError::BadHandshake("backend I/O error during the handshake"),
    }
}

/// Parse a complete response head: status, fields and its length; `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> Result<Option<(StatusCode, HeaderMap, usize)>, ProxyError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ProxyError::BadHandshake("malformed backend response head")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ProxyError::BadHandshake("invalid backend status code"))?;
    let mut fields = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ProxyError::BadHandshake("invalid backend header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| ProxyError::BadHandshake("invalid backend header value"))?;
        fields.append(name, value);
    }
    Ok(Some((status, fields, len)))
}

/// Read a refusal's body per RFC 9112 §6.3: none for 1xx/204/304, chunked, Content-Length,
/// or until the backend closes.
async fn read_body(
    stream: &mut TcpStream,
    status: StatusCode,
    fields: &HeaderMap,
    mut have: Vec<u8>,
) -> Result<Bytes, ProxyError> {
    if status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Bytes::new());
    }
    if headers::has_token(fields, &header::TRANSFER_ENCODING, "chunked") {
        return read_chunked(stream, have).await;
    }
    if let Some(len) = fields.get(header::CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(ProxyError::BadHandshake("invalid Content-Length from the backend"))?;
        if len > MAX_REFUSAL_BODY {
            return Err(ProxyError::BadHandshake("backend refusal body too large"));
        }
        while have.len() < len {
            fill(stream, &mut have).await?;
        }
        have.truncate(len);
        return Ok(Bytes::from(have));
    }
    loop {
        let before = have.len();
        fill_or_eof(stream, &mut have).await?;
        if have.len() == before {
            return Ok(Bytes::from(have));
        }
    }
}

/// Read more bytes; EOF is an error.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ProxyError> {
    let before = buf.len();
    fill_or_eof(stream, buf).await?;
    if buf.len() == before {
        return Err(ProxyError::BadHandshake("backend closed the connection mid-body"));
    }
    Ok(())
}

async fn fill_or_eof(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), ProxyError> {
    if buf.len() >= MAX_REFUSAL_BODY + MAX_HEAD {
        return Err(ProxyError::BadHandshake("backend refusal body too large"));
    }
    buf.reserve(4096);
    stream.read_buf(buf).await.map_err(io_error)?;
    Ok(())
}

async fn read_chunked(stream: &mut TcpStream, mut raw: Vec<u8>) -> Result<Bytes, ProxyError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = loop {
            if let Some(i) = raw[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            fill(stream, &mut raw).await?;
        };
        let size_text = std::str::from_utf8(&raw[pos..line_end]).unwrap_or("");
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| ProxyError::BadHandshake("invalid chunk size from the backend"))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailer fields are dropped; wait for the final empty line.
            loop {
                if let Some(i) = raw[pos..].windows(2).position(|w| w == b"\r\n") {
                    if i == 0 {
                        return Ok(Bytes::from(body));
                    }
                    pos += i + 2;
                } else {
                    fill(stream, &mut raw).await?;
                }
            }
        }
        if body.len() + size > MAX_REFUSAL_BODY {
            return Err(ProxyError::BadHandshake("backend refusal body too large"));
        }
        while raw.len() < pos + size + 2 {
            fill(stream, &mut raw).await?;
        }
        body.extend_from_slice(&raw[pos..pos + size]);
        pos += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_incrementally() {
        let full = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-A: 1\r\nX-A: 2\r\n\r\nextra";
        for cut in 0..full.len() - 5 {
            assert!(parse_head(&full[..cut]).unwrap().is_none(), "complete at {cut}");
        }
        let (status, fields, len) = parse_head(full).unwrap().unwrap();
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(fields.get_all("x-a").iter().count(), 2);
        assert_eq!(&full[len..], b"extra");
        assert!(parse_head(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn request_heads_serialise_fields_in_order() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("chat.example.com"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let head = request_head("/ws?room=1", &h);
        assert_eq!(head, b"GET /ws?room=1 HTTP/1.1\r\nhost: chat.example.com\r\nupgrade: websocket\r\n\r\n");
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
        let stream = TcpStream::connect(addr).await.unwrap();
        exchange(stream, b"GET / HTTP/1.1\r\n\r\n", b"dGhlIHNhbXBsZSBub25jZQ==").await
    }

    #[tokio::test]
    async fn refusal_bodies_are_read_in_every_framing() {
        let cases: [(&'static [u8], &[u8]); 3] = [
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nnope!", b"nope!"),
            (b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nT: v\r\n\r\n", b"abcde"),
            (b"HTTP/1.1 500 Oops\r\n\r\nuntil close", b"until close"),
        ];
        for (reply, want) in cases {
            match answer_with(reply).await.unwrap() {
                Answer::Refused { body, .. } => assert_eq!(&body[..], want),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_101_must_carry_the_right_accept_key() {
        let good: &'static [u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
        match answer_with(good).await.unwrap() {
            Answer::Switched { early, .. } => assert_eq!(&early[..], b"\x81\x02hi"),
            other => panic!("unexpected {other:?}"),
        }
        let bad: &'static [u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAA\r\n\r\n";
        assert!(matches!(answer_with(bad).await, Err(ProxyError::BadHandshake(_))));
        let no_upgrade: &'static [u8] =
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(matches!(answer_with(no_upgrade).await, Err(ProxyError::BadHandshake(_))));
    }
}
