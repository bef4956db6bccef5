//! HTTP/1.1 request heads, read once and strictly (RFC 9112), with no I/O: the parse of a
//! complete head into spans of the caller's buffer, the refusals RFC 9112 asks a server to make,
//! the request path normalised for matching (RFC 3986 §6.2.2), and an incremental decoder of
//! the chunked transfer coding (RFC 9112 §7.1) with checked arithmetic.
//!
//! Nothing here allocates on the common path: fields are spans into the buffer the head was
//! read into (one `Vec` of spans per head), and the normalised path borrows the target unless
//! normalisation changed it.

use std::borrow::Cow;
use std::ops::Range;

/// Most field lines accepted in one head (more: 431).
pub const MAX_FIELDS: usize = 128;

/// Why a request head is refused. Each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head too large")]
    TooLarge,
    #[error("too many header fields")]
    TooManyFields,
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    UnsupportedVersion,
    #[error("HTTP/1.1 request without a Host field")]
    MissingHost,
    #[error("more than one Host field")]
    DuplicateHost,
    #[error("invalid Host field")]
    InvalidHost,
    #[error("Host field disagrees with the request target's authority")]
    HostMismatch,
    #[error("invalid request target: {0}")]
    InvalidTarget(&'static str),
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("invalid Content-Length")]
    InvalidLength,
    #[error("Content-Length values differ")]
    ConflictingLength,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    EncodingInHttp10,
    #[error("unsupported transfer coding (only chunked)")]
    UnsupportedEncoding,
    #[error("method not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("an upgrade request must not carry a body")]
    UpgradeWithBody,
}

impl HeadError {
    /// The status code answered (RFC 9110 §15, RFC 9112 §3.2 and §6).
    pub fn status(self) -> u16 {
        match self {
            Self::TooLarge | Self::TooManyFields => 431,
            Self::UnsupportedVersion => 505,
            Self::UnsupportedEncoding | Self::NotImplemented(_) => 501,
            _ => 400,
        }
    }
}

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn new(r: Range<usize>) -> Self {
        // Heads are bounded far below 4 GiB by the header size limit.
        Self { start: r.start as u32, end: r.end as u32 }
    }
    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
    pub fn get(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or_default()
    }
    /// As text; heads only ever hold visible ASCII here (checked by the parse), so lossless.
    pub fn str(self, buf: &[u8]) -> &str {
        std::str::from_utf8(self.get(buf)).unwrap_or_default()
    }
    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// One field line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

/// How the request's body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// The methods the proxy treats specially; the rest are `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Options,
    Trace,
    Post,
    Put,
    Delete,
    Patch,
    Other,
}

impl Method {
    fn parse(m: &str) -> Self {
        match m {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "OPTIONS" => Self::Options,
            "TRACE" => Self::Trace,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }
    /// Safe methods (RFC 9110 §9.2.1): the only ones retried after a backend failure.
    pub fn is_safe(self) -> bool {
        matches!(self, Self::Get | Self::Head | Self::Options | Self::Trace)
    }
}

/// What a WebSocket opening handshake carries (RFC 6455 §4.2.1), found during the parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpgradeFields {
    /// `Upgrade` lists `websocket`.
    pub websocket: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    pub key: Option<Span>,
    pub key_count: u8,
    pub version: Option<Span>,
}

/// A parsed and checked request head. Spans point into the buffer it was parsed from.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes of the head, including the empty line.
    pub len: usize,
    pub method: Method,
    pub method_span: Span,
    /// The request target as sent.
    pub target: Span,
    /// The path of the target (before `?`), as sent; `*` for an asterisk-form OPTIONS.
    pub path: Span,
    /// From `?` to the end of the target, `?` included; empty when there is none.
    pub query: Span,
    /// HTTP/1.`minor`.
    pub minor: u8,
    pub fields: Vec<Field>,
    /// The host the request is for: an absolute-form target's authority, else the Host field.
    pub host: Option<Span>,
    /// The Host field, when present.
    pub host_field: Option<Span>,
    /// The target was in absolute form (its authority is `host`).
    pub absolute: bool,
    pub body: BodyFraming,
    /// The client asked to keep the connection open after this exchange (RFC 9112 §9.3).
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub upgrade: UpgradeFields,
}

impl RequestHead {
    /// Field lines named `name` (lower-case), in order.
    pub fn values<'a>(&'a self, buf: &'a [u8], name: &'a str) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.name.get(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(move |f| f.value.get(buf))
    }
    /// The first field line named `name`.
    pub fn value<'a>(&'a self, buf: &'a [u8], name: &'a str) -> Option<&'a [u8]> {
        self.values(buf, name).next()
    }
    /// The request carries a WebSocket opening handshake (`Upgrade: websocket`).
    pub fn wants_websocket(&self) -> bool {
        self.upgrade.websocket
    }
}

/// Parse the head at the start of `buf`. `Ok(None)`: incomplete, read more. A head longer than
/// `max_len` is refused whether or not it is complete.
pub fn parse_request(buf: &[u8], max_len: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_len { Err(HeadError::TooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(httparse::Error::Version) => return Err(HeadError::UnsupportedVersion),
        Err(e) => return Err(HeadError::Malformed(httparse_reason(e))),
    };
    if len > max_len {
        return Err(HeadError::TooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let span_of = |s: &[u8]| Span::new(offset(buf, s)..offset(buf, s) + s.len());
    let method_span = span_of(method.as_bytes());
    let target_span = span_of(target.as_bytes());
    let fields: Vec<Field> =
        req.headers.iter().map(|h| Field { name: span_of(h.name.as_bytes()), value: span_of(h.value) }).collect();
    let mut head = RequestHead {
        len,
        method: Method::parse(method),
        method_span,
        target: target_span,
        path: target_span,
        query: Span::new(target_span.end as usize..target_span.end as usize),
        minor,
        fields,
        host: None,
        host_field: None,
        absolute: false,
        body: BodyFraming::None,
        keep_alive: minor == 1,
        expect_continue: false,
        upgrade: UpgradeFields::default(),
    };
    check(buf, &mut head)?;
    Ok(Some(head))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid field name",
        httparse::Error::HeaderValue => "invalid byte in a field value (or obs-fold)",
        httparse::Error::NewLine | httparse::Error::Status => "invalid line ending",
        httparse::Error::Token => "invalid method or request target",
        _ => "invalid request head",
    }
}

/// Offset of `part` inside `whole` (`part` is a subslice of it).
fn offset(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

/// The RFC 9112 checks, and the facts the proxy needs, in one pass over the fields.
fn check(buf: &[u8], head: &mut RequestHead) -> Result<(), HeadError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut encoded = false;
    let mut close = false;
    let mut keep_alive_token = false;
    for f in &head.fields {
        let name = f.name.get(buf);
        let value = f.value.get(buf);
        if name.eq_ignore_ascii_case(b"host") {
            if head.host_field.is_some() {
                return Err(HeadError::DuplicateHost);
            }
            if !valid_host(value) {
                return Err(HeadError::InvalidHost);
            }
            head.host_field = Some(f.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // A list of identical values is one length (RFC 9110 §8.6); differing values are not.
            for item in value.split(|&b| b == b',') {
                let n = parse_length(item.trim_ascii()).ok_or(HeadError::InvalidLength)?;
                match length {
                    Some(prev) if prev != n => return Err(HeadError::ConflictingLength),
                    _ => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in tokens(value) {
                if chunked {
                    // Anything after chunked (chunked must be last, and only once: RFC 9112 §6.1).
                    return Err(HeadError::Malformed("chunked is not the final transfer coding"));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(HeadError::UnsupportedEncoding);
                }
            }
            encoded = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    head.upgrade.connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            if tokens(value).any(|t| t.eq_ignore_ascii_case(b"websocket")) {
                head.upgrade.websocket = true;
            }
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            head.upgrade.key = Some(f.value);
            head.upgrade.key_count = head.upgrade.key_count.saturating_add(1);
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            head.upgrade.version = Some(f.value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            head.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    if encoded {
        if head.minor == 0 {
            // RFC 9112 §6.1: a server MUST NOT rely on Transfer-Encoding from HTTP/1.0.
            return Err(HeadError::EncodingInHttp10);
        }
        if length.is_some() {
            // RFC 9112 §6.3 ¶3: a server MAY reject a request with both; a proxy that does not
            // leaves the door open to request smuggling behind it.
            return Err(HeadError::LengthAndChunked);
        }
        if !chunked {
            return Err(HeadError::UnsupportedEncoding);
        }
    }
    head.body = match (chunked, length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0) | None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    head.keep_alive = !close && (head.minor == 1 || keep_alive_token);
    if head.upgrade.websocket && head.body != BodyFraming::None {
        // RFC 6455 §4.1 defines no body; one here would be read by a backend as frames.
        return Err(HeadError::UpgradeWithBody);
    }
    check_target(buf, head)
}

/// Request-target forms (RFC 9112 §3.2) and the host the request is for (§3.2.2, §3.3).
fn check_target(buf: &[u8], head: &mut RequestHead) -> Result<(), HeadError> {
    let target = head.target.get(buf);
    if !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(HeadError::InvalidTarget("non-ASCII byte"));
    }
    if target.contains(&b'#') {
        return Err(HeadError::InvalidTarget("fragment in the request target"));
    }
    let start = head.target.start as usize;
    let method = head.method_span.get(buf);
    if method == b"CONNECT" {
        return Err(HeadError::NotImplemented("CONNECT"));
    }
    let path_start = if target.first() == Some(&b'/') {
        start
    } else if target == b"*" {
        if head.method != Method::Options {
            return Err(HeadError::InvalidTarget("asterisk form is for OPTIONS only"));
        }
        head.path = head.target;
        return host_from_field(head);
    } else {
        let Some(scheme_end) = target.windows(3).position(|w| w == b"://") else {
            return Err(HeadError::InvalidTarget("not origin, absolute or asterisk form"));
        };
        let scheme = &target[..scheme_end];
        if !["http", "https", "ws", "wss"].iter().any(|s| scheme.eq_ignore_ascii_case(s.as_bytes())) {
            return Err(HeadError::InvalidTarget("unsupported scheme"));
        }
        let auth_start = scheme_end + 3;
        let auth_len =
            target[auth_start..].iter().position(|&b| b == b'/' || b == b'?').unwrap_or(target.len() - auth_start);
        let authority = Span::new(start + auth_start..start + auth_start + auth_len);
        let auth_bytes = authority.get(buf);
        if auth_bytes.is_empty() || auth_bytes.contains(&b'@') || !valid_host(auth_bytes) {
            return Err(HeadError::InvalidTarget("invalid authority"));
        }
        if let Some(field) = head.host_field
            && !same_authority(scheme, auth_bytes, field.get(buf))
        {
            return Err(HeadError::HostMismatch);
        }
        head.absolute = true;
        head.host = Some(authority);
        start + auth_start + auth_len
    };
    let end = head.target.end as usize;
    let q = buf[path_start..end].iter().position(|&b| b == b'?').map_or(end, |i| path_start + i);
    head.path = Span::new(path_start..q);
    head.query = Span::new(q..end);
    if head.absolute { Ok(()) } else { host_from_field(head) }
}

fn host_from_field(head: &mut RequestHead) -> Result<(), HeadError> {
    match head.host_field {
        Some(h) => head.host = Some(h),
        // RFC 9112 §3.2: an HTTP/1.1 request without Host gets 400; HTTP/1.0 may omit it.
        None if head.minor == 1 => return Err(HeadError::MissingHost),
        None => {}
    }
    Ok(())
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2), or empty.
pub(crate) fn valid_host(v: &[u8]) -> bool {
    let v = v.trim_ascii();
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(close) = v.iter().position(|&b| b == b']') else { return false };
        let literal = &v[1..close];
        if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        (&v[..=close], &v[close + 1..])
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let reg_name_ok = host.first() == Some(&b'[')
        || host.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    port_ok && reg_name_ok
}

/// Whether an absolute-form authority and a Host field name the same origin: host compared
/// case-insensitively, and a missing port equal to the scheme's default.
pub(crate) fn same_authority(scheme: &[u8], authority: &[u8], host: &[u8]) -> bool {
    let default =
        if scheme.eq_ignore_ascii_case(b"https") || scheme.eq_ignore_ascii_case(b"wss") { "443" } else { "80" };
    let split = |v: &[u8]| -> (String, String) {
        let v = String::from_utf8_lossy(v.trim_ascii()).to_ascii_lowercase();
        let (h, p) = match v.rfind(':') {
            Some(i) if !v[i..].contains(']') => (v[..i].to_string(), v[i + 1..].to_string()),
            _ => (v.clone(), String::new()),
        };
        let p = if p.is_empty() { default.to_string() } else { p };
        (h.trim_end_matches('.').to_string(), p)
    };
    split(authority) == split(host)
}

/// A Content-Length value: 1*DIGIT, within u64.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// The non-empty comma-separated tokens of a list field, trimmed.
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// The request path normalised for route matching (RFC 3986 §6.2.2): percent-encoded
/// unreserved characters decoded, other percent-encodings upper-cased, dot-segments removed
/// (§5.2.4), and empty segments (`//`) merged — a documented choice: `/a//b` matches `/a/b`,
/// as nginx's `merge_slashes` does. The target forwarded to the backend is always the one the
/// client sent. Borrows `path` when nothing changes.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, HeadError> {
    let b = path.as_bytes();
    let clean = b.first() == Some(&b'/')
        && !b.contains(&b'%')
        && !b.windows(2).any(|w| w == b"//" || w == b"/.")
        && !path.is_empty();
    if clean || path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Percent-decoding of unreserved characters only.
    let mut decoded = String::with_capacity(b.len() + 1);
    if b.first() != Some(&b'/') {
        decoded.push('/');
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(HeadError::InvalidTarget("truncated percent-encoding"))?;
            let v = hex_pair(hex).ok_or(HeadError::InvalidTarget("invalid percent-encoding"))?;
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                decoded.push(char::from(v));
            } else {
                decoded.push('%');
                decoded.push(char::from(hex[0].to_ascii_uppercase()));
                decoded.push(char::from(hex[1].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            decoded.push(char::from(b[i]));
            i += 1;
        }
    }
    // 2. Dot-segments and empty segments, over whole segments.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut norm = String::with_capacity(decoded.len());
    for seg in &out {
        norm.push('/');
        norm.push_str(seg);
    }
    if norm.is_empty() || trailing {
        norm.push('/');
    }
    Ok(Cow::Owned(norm))
}

fn hex_pair(h: &[u8]) -> Option<u8> {
    let d = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
    Some(d(h[0])? << 4 | d(h[1])?)
}

/// Error of the chunked decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    InvalidSize,
    #[error("chunk size overflows")]
    Overflow,
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
    #[error("trailer section too large")]
    TrailerTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of the size; `any` once one was read.
    Size {
        any: bool,
    },
    /// After the size: chunk extensions up to the line end.
    Ext,
    /// A CR ended the size line: LF must follow.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After data: CR then LF.
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line starts, or the final empty line.
    TrailerStart,
    TrailerLine,
    /// A CR at the start of a line: the final LF must follow.
    EndLf,
    Done,
}

/// Incremental decoder of a chunked body (RFC 9112 §7.1). Sizes use checked arithmetic, lines
/// end in CRLF or a bare LF (§2.2), and the trailer section is bounded; trailer fields are read
/// and discarded.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self { state: ChunkState::Size { any: false }, remaining: 0, trailer_bytes: 0 }
    }
}

/// Largest trailer section read.
const MAX_TRAILER: usize = 16 * 1024;

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consume bytes of `input` from its start. Returns how many were consumed and the range of
    /// chunk data among them (at most one contiguous range per call; call again with the rest).
    /// Nothing is consumed once the body is complete.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Range<usize>>), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                ChunkState::Size { any } => match (b as char).to_digit(16) {
                    Some(d) => {
                        self.remaining = self
                            .remaining
                            .checked_mul(16)
                            .and_then(|v| v.checked_add(u64::from(d)))
                            .ok_or(ChunkError::Overflow)?;
                        ChunkState::Size { any: true }
                    }
                    None if !any => return Err(ChunkError::InvalidSize),
                    None => match b {
                        b';' | b' ' | b'\t' => ChunkState::Ext,
                        b'\r' => ChunkState::SizeLf,
                        b'\n' => self.after_size(),
                        _ => return Err(ChunkError::InvalidSize),
                    },
                },
                ChunkState::Ext => match b {
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.after_size(),
                    b'\t' => ChunkState::Ext,
                    c if c < 0x20 || c == 0x7f => return Err(ChunkError::InvalidSize),
                    _ => ChunkState::Ext,
                },
                ChunkState::SizeLf => match b {
                    b'\n' => self.after_size(),
                    _ => return Err(ChunkError::InvalidSize),
                },
                ChunkState::Data => {
                    let take = ((input.len() - i) as u64).min(self.remaining) as usize;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok((i + take, Some(i..i + take)));
                }
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => ChunkState::Size { any: false },
                    _ => return Err(ChunkError::MissingCrlf),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::Size { any: false },
                    _ => return Err(ChunkError::MissingCrlf),
                },
                state @ (ChunkState::TrailerStart | ChunkState::TrailerLine | ChunkState::EndLf) => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_TRAILER {
                        return Err(ChunkError::TrailerTooLarge);
                    }
                    match (state, b) {
                        (ChunkState::TrailerStart | ChunkState::EndLf, b'\n') => ChunkState::Done,
                        (ChunkState::TrailerStart, b'\r') => ChunkState::EndLf,
                        (ChunkState::EndLf, _) => return Err(ChunkError::MissingCrlf),
                        (_, b'\n') => ChunkState::TrailerStart,
                        _ => ChunkState::TrailerLine,
                    }
                }
                ChunkState::Done => return Ok((i, None)),
            };
            i += 1;
            if self.state == ChunkState::Done {
                return Ok((i, None));
            }
        }
        Ok((i, None))
    }

    fn after_size(&self) -> ChunkState {
        if self.remaining == 0 { ChunkState::TrailerStart } else { ChunkState::Data }
    }
}

/// The invariants the `request_head` fuzz target checks, shared with the corpus replay in
/// `tests/fuzz_regressions.rs`: no input panics the parser, the path normaliser or the chunked
/// decoder; a parsed head's spans lie inside it; its facts agree with the RFC 9112 rules; the
/// normalised path is canonical and stable; chunked decoding does not depend on how the input
/// is split.
#[doc(hidden)]
pub fn check_invariants(data: &[u8]) {
    if let Ok(Some(head)) = parse_request(data, 64 * 1024) {
        assert!(head.len <= data.len());
        for f in &head.fields {
            assert!(f.name.range().end <= head.len && f.value.range().end <= head.len);
            assert!(!f.value.get(data).contains(&b'\n'), "a field value holds a line break");
        }
        let framed_by_length = matches!(head.body, BodyFraming::Length(_));
        let has_te = head.value(data, "transfer-encoding").is_some();
        assert!(!(framed_by_length && has_te), "Content-Length framing with Transfer-Encoding present");
        if head.upgrade.websocket {
            assert_eq!(head.body, BodyFraming::None, "an upgrade with a body was accepted");
        }
        if head.minor == 1 {
            assert!(head.host.is_some(), "HTTP/1.1 without a host was accepted");
        }
        if let Some(h) = head.host {
            assert!(valid_host(h.get(data)));
        }
        if let Ok(path) = normalize_path(head.path.str(data)) {
            assert!(path.starts_with('/') || path == "*", "{path}");
            if path != "*" {
                assert!(
                    !path.contains("//") && !path.contains("/./") && !path.ends_with("/.") && !path.contains("/../"),
                    "{path}"
                );
            }
            assert_eq!(
                normalize_path(&path).map(Cow::into_owned).as_deref(),
                Ok(&*path),
                "normalising twice changed it"
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = normalize_path(text);
    }
    let (whole, bytewise) = (decode_chunked(data, data.len().max(1)), decode_chunked(data, 1));
    assert_eq!((&whole.0, whole.2), (&bytewise.0, bytewise.2), "chunked decoding depends on the split");
    if whole.2.is_none() {
        assert_eq!(whole.1, bytewise.1, "the body's end depends on the split");
    }
}

/// Decode `data` as a chunked body fed in pieces of `step`: (data, consumed, error).
fn decode_chunked(data: &[u8], step: usize) -> (Vec<u8>, usize, Option<ChunkError>) {
    let mut d = ChunkedDecoder::default();
    let (mut out, mut pos) = (Vec::new(), 0);
    while pos < data.len() && !d.is_done() {
        let end = (pos + step).min(data.len());
        let mut piece = &data[pos..end];
        while !piece.is_empty() && !d.is_done() {
            match d.decode(piece) {
                Ok((used, range)) => {
                    if let Some(r) = range {
                        out.extend_from_slice(&piece[r]);
                    }
                    piece = &piece[used..];
                    pos += used;
                    if used == 0 {
                        break;
                    }
                }
                Err(e) => return (out, pos, Some(e)),
            }
        }
        if pos < end {
            break;
        }
    }
    (out, pos, None)
}

#[cfg(test)]
mod tests;
