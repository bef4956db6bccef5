//! Plain HTTP forwarding over pooled HTTP/1.1 connections to the endpoints, and the TCP
//! connect shared with the upgrade path. A request is retried on a fresh connection only when
//! it was never sent (hyper hands it back), or when it is safe (RFC 9110 §9.2.1), bodiless
//! and failed on a reused connection; never a POST, PUT, DELETE or PATCH that may have reached
//! the backend.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::balance;
use super::dispatch::Dispatched;
use super::error::ProxyError;
use super::headers::{self, ClientInfo, Listener};
use super::service::ProxyState;
use super::stream::Stream;
use super::{BodyError, ProxyBody};
use crate::metrics::RouteMetrics;
use crate::policy::affinity;
use crate::routes::{Affinity, BackendTls, BackendVerify, Endpoint, Route};
use crate::tls::TlsConn;

/// Request bodies towards a backend: the client's, or none (so a bodiless request can be
/// retried on a fresh connection when a pooled one turns out to be closed).
type UpBody = Either<Incoming, Empty<Bytes>>;

/// Idle connections per endpoint kept for reuse.
const IDLE_PER_ENDPOINT: usize = 64;
/// An idle connection older than this is not reused (backends often close at 5 s).
const IDLE_FOR: Duration = Duration::from_secs(4);

/// Connect to one endpoint with a timeout; `TCP_NODELAY` on. An ExternalName endpoint's DNS
/// name is resolved here, at each connect, and its addresses tried in turn.
pub async fn connect(ep: &Endpoint, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let connecting = async {
        match &ep.hostname {
            Some(host) => TcpStream::connect((host.as_ref(), ep.addr.port()))
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("{host}:{}: {e}", ep.addr.port()))),
            None => TcpStream::connect(ep.addr).await,
        }
    };
    let stream = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| ProxyError::ConnectTimeout(ep.addr))?
        .map_err(|source| ProxyError::Connect { addr: ep.addr, source })?;
    // Failing to set NODELAY only costs latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Connect to one endpoint of `route`: TCP, then TLS when the route asks for it
/// (`backend-protocol: https` or a Service port's `appProtocol`), within the connect timeout.
pub async fn connect_stream(state: &ProxyState, route: &Route, ep: &Endpoint) -> Result<Stream, ProxyError> {
    let timeout = route.settings.connect_timeout;
    let tcp = connect(ep, timeout).await?;
    let Some(tls) = &route.settings.backend_tls else {
        return Ok(Stream::from(tcp));
    };
    let fail = |reason: String| ProxyError::BackendTls { addr: ep.addr, reason };
    let configs = state.backend_tls().map_err(|e| fail(e.to_string()))?;
    let config = configs.get(&route.id, tls).map_err(|e| fail(e.to_string()))?;
    let name = crate::tls::client::server_name(tls).map_err(|e| fail(e.to_string()))?;
    let session = TlsConn::connect(tcp, config, name, timeout).await.map_err(|e| fail(e.to_string()))?;
    Ok(Stream::Tls(Box::new(session)))
}

/// A reusable connection and when it went idle.
type IdleConn = (SendRequest<UpBody>, Instant);

/// What a pooled connection may be reused for: the endpoint, and the TLS it was opened with
/// (0 for plain TCP), so a connection verified for one route never serves a route that asks
/// for other verification.
type PoolKey = (SocketAddr, u64);

fn pool_key(addr: SocketAddr, tls: Option<&BackendTls>) -> PoolKey {
    use std::hash::{Hash, Hasher};
    let Some(tls) = tls else { return (addr, 0) };
    let mut h = std::hash::DefaultHasher::new();
    tls.server_name.hash(&mut h);
    match &tls.verify {
        BackendVerify::SystemRoots => 1u8.hash(&mut h),
        BackendVerify::Off => 2u8.hash(&mut h),
        BackendVerify::Ca(ca) => {
            3u8.hash(&mut h);
            ca.pem.hash(&mut h);
        }
    }
    (addr, h.finish() | 1)
}

/// Idle HTTP/1.1 connections to endpoints.
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<HashMap<PoolKey, Vec<IdleConn>>>,
}

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool").finish_non_exhaustive()
    }
}

impl HttpPool {
    fn take(&self, key: PoolKey) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&key)?;
        let now = Instant::now();
        list.retain(|(s, at)| !s.is_closed() && now.duration_since(*at) < IDLE_FOR);
        let pos = list.iter().position(|(s, _)| s.is_ready())?;
        Some(list.swap_remove(pos).0)
    }

    fn put(&self, key: PoolKey, sender: SendRequest<UpBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < IDLE_PER_ENDPOINT {
            list.push((sender, Instant::now()));
        }
    }

    async fn open(
        &self,
        state: &ProxyState,
        route: &Route,
        ep: &Endpoint,
        write_timeout: Duration,
    ) -> Result<SendRequest<UpBody>, ProxyError> {
        let stream = connect_stream(state, route, ep).await?;
        let io = super::front::HyperIo::new(stream, Bytes::new(), write_timeout);
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, UpBody>(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend HTTP connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Forward a plain HTTP request through `route`. Returns the response and the endpoint.
pub async fn forward(
    state: &ProxyState,
    req: Request<Incoming>,
    d: &Dispatched,
    client: &ClientInfo,
    listener: Listener,
    write_timeout: Duration,
) -> Result<(Response<ProxyBody>, SocketAddr), ProxyError> {
    let (route, rm) = (&*d.route, &*d.rm);
    let settings = &route.settings;
    if settings.websocket_only {
        return Err(ProxyError::WebSocketOnly);
    }
    // Cookie affinity first, then the route's policy on the key dispatch computed.
    let (candidates, named) =
        d.candidates(state, req.headers().get_all(header::COOKIE).iter().map(HeaderValue::as_bytes))?;
    let host = super::service::request_host(&req);
    let safe =
        matches!(*req.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE);
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // The client's forwarding fields, set aside: write_forwarding decides what of them stays.
    let mut sent = HeaderMap::new();
    for name in headers::FORWARDING {
        let name = HeaderName::from_static(name);
        for v in parts.headers.get_all(&name) {
            sent.append(name.clone(), v.clone());
        }
        parts.headers.remove(&name);
    }
    headers::write_forwarding(&mut parts.headers, client, listener, host.as_deref().map(str::as_bytes), |name| {
        sent.get_all(name).iter().map(HeaderValue::as_bytes)
    });
    if !parts.headers.contains_key(header::HOST)
        && let Some(h) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok())
    {
        // An absolute-form target's authority becomes the Host of the origin-form request.
        parts.headers.insert(header::HOST, h);
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .and_then(|pq| http::Uri::try_from(pq.as_str()).ok())
        .unwrap_or_else(|| http::Uri::from_static("/"));
    parts.version = http::Version::HTTP_11;
    let bodiless = body.is_end_stream();
    let mut body = if bodiless { None } else { Some(body) };

    let mut last_err = ProxyError::NoEndpoints;
    for &i in candidates.as_slice() {
        let Some(ep) = route.pool.ready_at(i) else {
            continue;
        };
        if !parts.headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&ep.addr.to_string())
        {
            parts.headers.insert(header::HOST, v);
        }
        let key = pool_key(ep.addr, settings.backend_tls.as_ref());
        let pooled = state.http_pool.take(key);
        let reused = pooled.is_some();
        let sender = match pooled {
            Some(s) => s,
            None => match state.http_pool.open(state, route, ep, write_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    record(rm, &e);
                    balance::eject(ep);
                    last_err = e;
                    continue;
                }
            },
        };
        let up = Request::from_parts(parts.clone(), body.take().map_or(Either::Right(Empty::new()), Either::Left));
        let resp = match send(&state.http_pool, key, sender, up, settings.response_timeout).await {
            Ok(resp) => resp,
            Err(Failure::NotSent(up, e)) => {
                // Never written: safe to send again on a fresh connection, whatever the method.
                tracing::debug!(error = %e, "pooled backend connection closed before the request was sent; retrying");
                let fresh =
                    state.http_pool.open(state, route, ep, write_timeout).await.inspect_err(|e| record(rm, e))?;
                send(&state.http_pool, key, fresh, *up, settings.response_timeout)
                    .await
                    .map_err(|f| f.into_error())
                    .inspect_err(|e| record(rm, e))?
            }
            Err(f) if reused && bodiless && safe && !matches!(f, Failure::Sent(ProxyError::ResponseTimeout)) => {
                tracing::debug!(error = %f.as_error(), "reused backend connection failed; retrying a safe request");
                let fresh =
                    state.http_pool.open(state, route, ep, write_timeout).await.inspect_err(|e| record(rm, e))?;
                let up = Request::from_parts(parts.clone(), Either::Right(Empty::new()));
                send(&state.http_pool, key, fresh, up, settings.response_timeout)
                    .await
                    .map_err(|f| f.into_error())
                    .inspect_err(|e| record(rm, e))?
            }
            Err(f) => {
                let e = f.into_error();
                record(rm, &e);
                return Err(e);
            }
        };
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // RFC 9110 §15.2.2: a server must not switch protocols unasked. The connection is not
            // reused and nothing of it reaches the client.
            let e = ProxyError::BadHandshake("101 Switching Protocols to a request that did not ask to upgrade");
            record(rm, &e);
            return Err(e);
        }
        let (mut rparts, rbody) = resp.into_parts();
        headers::strip_hop_by_hop(&mut rparts.headers);
        if settings.affinity == Affinity::Cookie
            && let Some(c) =
                affinity::set_cookie_for(&route.pool, &state.affinity_key, named, i, &settings.session_cookie)
                    .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            // Appended: the backend's own cookies stay.
            rparts.headers.append(header::SET_COOKIE, c);
        }
        let body = BackendBody::new(rbody, settings.response_timeout);
        return Ok((Response::from_parts(rparts, ProxyBody::Backend(body)), ep.addr));
    }
    Err(last_err)
}

fn record(rm: &RouteMetrics, e: &ProxyError) {
    if let Some(reason) = e.upstream_reason() {
        rm.upstream_error(reason);
    }
}

/// Why a send failed.
enum Failure {
    /// hyper never wrote the request: it comes back for another try.
    NotSent(Box<Request<UpBody>>, ProxyError),
    Sent(ProxyError),
}

impl Failure {
    fn as_error(&self) -> &ProxyError {
        match self {
            Self::NotSent(_, e) | Self::Sent(e) => e,
        }
    }
    fn into_error(self) -> ProxyError {
        match self {
            Self::NotSent(_, e) | Self::Sent(e) => e,
        }
    }
}

/// Send on `sender` and wait for the response head within `timeout`. A connection that answered
/// goes back to the pool (hyper queues the next request until this response's body is read).
async fn send(
    pool: &HttpPool,
    key: PoolKey,
    mut sender: SendRequest<UpBody>,
    req: Request<UpBody>,
    timeout: Duration,
) -> Result<Response<Incoming>, Failure> {
    match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
        Err(_) => Err(Failure::Sent(ProxyError::ResponseTimeout)),
        Ok(Err(mut e)) => match e.take_message() {
            Some(req) => Err(Failure::NotSent(Box::new(req), ProxyError::Backend(e.into_error()))),
            None => Err(Failure::Sent(ProxyError::Backend(e.into_error()))),
        },
        Ok(Ok(resp)) => {
            if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                pool.put(key, sender);
            }
            Ok(resp)
        }
    }
}

/// A backend's response body, failing when the backend sends nothing for the response
/// timeout between two reads (nginx's `proxy_read_timeout`).
#[derive(Debug)]
pub struct BackendBody {
    inner: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl BackendBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self { inner, idle, timer: None }
    }
}

/// The backend stopped sending mid-body.
#[derive(Debug, thiserror::Error)]
#[error("backend sent nothing for the response timeout mid-body")]
pub struct BodyIdle;

impl Body for BackendBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyIdle.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
