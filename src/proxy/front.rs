//! The front door: what happens on an accepted connection before a tunnel or a plain HTTP
//! exchange starts. The request head is read once, by our own strict parser ([`http1`]),
//! under the header size and time limits; the client address is resolved; the per-client
//! limit is taken on that address. A WebSocket upgrade then goes straight to the
//! upstream-first handshake on this stream — no hyper connection, task or buffers. Plain HTTP
//! is handed to hyper together with the bytes already read, and hyper serves the rest of that
//! keep-alive connection (its later requests pass the same checks in [`service`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ProxyError;
use super::headers::ClientInfo;
use super::http1::{self, HeadError, RequestHead};
use super::server::{ConnGuard, ListenerCtx, ProxyConfig};
use super::service::{self, ProxyState};
use super::stream::Stream;
use super::upgrade;
use crate::metrics::{HttpAccess, RouteMetrics, UNMATCHED};
use crate::policy::limits::Slot;

/// What a connection holds while it lives: its place in `--max-connections` and its
/// per-client slot. A tunnel that outlives the HTTP connection it came from keeps it.
#[derive(Debug)]
pub struct ConnHold {
    pub _conn: ConnGuard,
    pub _client: Option<Slot<std::net::IpAddr>>,
}

/// Serve one accepted connection.
pub async fn serve_connection(
    mut stream: Stream,
    peer: SocketAddr,
    state: Arc<ProxyState>,
    ctx: Arc<ListenerCtx>,
    conn: ConnGuard,
) {
    let started = Instant::now();
    let mut buf = Vec::new();
    let head = match read_head(&mut stream, &mut buf, &ctx.config).await {
        HeadRead::Head(head) => head,
        HeadRead::Closed => return,
        HeadRead::TimedOut => {
            // Only a client that started a head hears why; an idle connection is just closed.
            if !buf.is_empty() {
                let _ = stream.write_all_within(REQUEST_TIMEOUT, ctx.config.write_timeout).await;
            }
            return;
        }
        HeadRead::Refused(e) => {
            let client = ClientInfo::direct(peer.ip());
            let log = RequestLog { method: "-", path: "-" };
            let err = ProxyError::BadRequest(e);
            refuse(&state, &ctx, &mut stream, None, &err, &log, &client, started, false).await;
            return;
        }
    };
    let client = state.trusted.resolve(peer.ip(), head.values(&buf, "x-forwarded-for"));
    let client_slot = match ctx.config.max_connections_per_client {
        0 => None,
        limit => match state.clients.acquire(&client.client, limit) {
            Some(slot) => Some(slot),
            None => {
                let log = RequestLog { method: head.method_span.str(&buf), path: head.path.str(&buf) };
                let err = ProxyError::ClientLimit;
                refuse(&state, &ctx, &mut stream, None, &err, &log, &client, started, head.wants_websocket()).await;
                return;
            }
        },
    };
    let hold = ConnHold { _conn: conn, _client: client_slot };
    if head.wants_websocket() {
        upgrade::serve(&state, &ctx, stream, buf, head, client, started, hold).await;
    } else {
        plain(state, ctx, stream, buf, peer, hold).await;
    }
}

const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 25\r\nConnection: close\r\n\r\nrequest head not received\n";

/// How reading the first request head ended.
enum HeadRead {
    Head(RequestHead),
    /// The client closed (or reset) before a complete head.
    Closed,
    /// `--header-timeout` passed before a complete head.
    TimedOut,
    Refused(HeadError),
}

/// Read and parse the request head into `buf`, within the header timeout (one deadline for
/// the whole head: a client dribbling bytes does not extend it) and size limit.
async fn read_head(stream: &mut Stream, buf: &mut Vec<u8>, config: &ProxyConfig) -> HeadRead {
    let deadline = tokio::time::Instant::now() + config.header_timeout;
    loop {
        if !buf.is_empty() {
            match http1::parse_request(buf, config.max_header_bytes) {
                Ok(Some(head)) => return HeadRead::Head(head),
                Ok(None) => {}
                Err(e) => return HeadRead::Refused(e),
            }
        }
        // Never read more than one byte past the limit into the head buffer.
        let want = (config.max_header_bytes + 1).saturating_sub(buf.len()).clamp(1, 4096);
        match tokio::time::timeout_at(deadline, stream.read_more(buf, want)).await {
            Err(_) => return HeadRead::TimedOut,
            Ok(Ok(0) | Err(_)) => return HeadRead::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// Method and path of a request, for its log line (the query is never logged).
#[derive(Debug, Clone, Copy)]
pub struct RequestLog<'a> {
    pub method: &'a str,
    pub path: &'a str,
}

/// Count and log a request the proxy refuses or could not serve.
pub fn account(
    state: &ProxyState,
    route: Option<&RouteMetrics>,
    err: &ProxyError,
    log: &RequestLog<'_>,
    client: &ClientInfo,
    started: Instant,
    websocket: bool,
) {
    let status = err.status().as_u16();
    match (route, websocket) {
        (Some(r), true) => r.upgrade(err.upgrade_result()),
        (Some(r), false) => r.http_request(status, started.elapsed()),
        (None, true) => state.metrics.upgrade(UNMATCHED, err.upgrade_result()),
        (None, false) => state.metrics.http_request(UNMATCHED, status, started.elapsed()),
    }
    HttpAccess {
        route: route.map_or(UNMATCHED, |r| &r.route),
        method: log.method,
        path: log.path,
        status,
        duration: started.elapsed(),
        client: client.client,
        endpoint: None,
        upgrade: websocket,
        error: Some(err),
    }
    .emit();
}

/// Answer `err` on a connection the front door owns, then close it: counted, logged, and
/// written within the write timeout.
#[allow(clippy::too_many_arguments)]
pub async fn refuse(
    state: &ProxyState,
    ctx: &ListenerCtx,
    stream: &mut Stream,
    route: Option<&RouteMetrics>,
    err: &ProxyError,
    log: &RequestLog<'_>,
    client: &ClientInfo,
    started: Instant,
    websocket: bool,
) {
    account(state, route, err, log, client, started, websocket);
    let answer = error_head(err, true);
    if stream.write_all_within(&answer, ctx.config.write_timeout).await.is_ok() {
        stream.shutdown_write();
    }
}

/// A complete error response for `err`: status, the error's extra fields, a text body, and
/// `Connection: close` when `close`.
pub fn error_head(err: &ProxyError, close: bool) -> Vec<u8> {
    use std::io::Write;
    let status = err.status();
    let body = format!("{err}\n");
    let mut out = Vec::with_capacity(160 + body.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    for (name, value) in err.extra_fields() {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some(to) = err.location() {
        let _ = write!(out, "location: {to}\r\n");
    }
    if let Some(secs) = err.retry_after() {
        let _ = write!(out, "retry-after: {secs}\r\n");
    }
    if err.extra_fields().iter().any(|(n, _)| *n == "upgrade") {
        // Upgrade is hop-by-hop: the Connection field names it (RFC 9110 §7.8).
        out.extend_from_slice(if close { b"connection: upgrade, close\r\n" } else { b"connection: upgrade\r\n" });
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let _ = write!(out, "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    out
}

/// Plain HTTP: hyper serves the connection, starting with the bytes already read.
async fn plain(
    state: Arc<ProxyState>,
    ctx: Arc<ListenerCtx>,
    stream: Stream,
    buf: Vec<u8>,
    peer: SocketAddr,
    hold: ConnHold,
) {
    let io = HyperIo::new(stream, Bytes::from(buf), ctx.config.write_timeout);
    let hold = Arc::new(hold);
    let (svc_state, svc_ctx) = (state.clone(), ctx.clone());
    let svc = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // An upgrade served by hyper hands the connection's hold on to its tunnel.
        req.extensions_mut().insert(hold.clone());
        let (state, ctx) = (svc_state.clone(), svc_ctx.clone());
        async move { Ok::<_, std::convert::Infallible>(service::handle(state, ctx, req, peer).await) }
    });
    let conn = ctx.http.serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = state.drain.started() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "client connection error");
    }
}

/// The client stream as hyper sees it: the bytes the front door already read come first, and
/// a write that makes no progress for the write timeout fails the connection.
#[derive(Debug)]
pub struct HyperIo {
    stream: Stream,
    prefix: Bytes,
    write_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HyperIo {
    pub fn new(stream: Stream, prefix: Bytes, write_timeout: Duration) -> Self {
        Self { stream, prefix, write_timeout, stall: None }
    }

    /// The stream and the bytes read ahead that hyper has not consumed.
    pub fn into_parts(self) -> (Stream, Bytes) {
        (self.stream, self.prefix)
    }

    fn on_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::ErrorKind::TimedOut.into())),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.stall = None;
                ready
            }
        }
    }
}

use std::future::Future as _;

impl AsyncRead for HyperIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HyperIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.on_write(cx, r)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.on_write(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.on_write(cx, r)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
