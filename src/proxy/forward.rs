//! Plain HTTP forwarding over pooled HTTP/1.1 connections to the endpoints, and the TCP
//! connect shared with the upgrade path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ProxyBody;
use super::balance;
use super::error::ProxyError;
use super::headers::{self, ClientInfo};
use super::service::ProxyState;
use crate::routes::{Endpoint, Route};

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

/// A reusable connection and when it went idle.
type IdleConn = (SendRequest<UpBody>, Instant);

/// Idle HTTP/1.1 connections to endpoints.
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<HashMap<SocketAddr, Vec<IdleConn>>>,
}

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool").finish_non_exhaustive()
    }
}

impl HttpPool {
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<UpBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        list.retain(|(s, at)| !s.is_closed() && now.duration_since(*at) < IDLE_FOR);
        let pos = list.iter().position(|(s, _)| s.is_ready())?;
        Some(list.swap_remove(pos).0)
    }

    fn put(&self, addr: SocketAddr, sender: SendRequest<UpBody>) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < IDLE_PER_ENDPOINT {
            list.push((sender, Instant::now()));
        }
    }

    async fn open(&self, ep: &Endpoint, timeout: Duration) -> Result<SendRequest<UpBody>, ProxyError> {
        let stream = connect(ep, timeout).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake::<_, UpBody>(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backend HTTP connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Forward a plain HTTP request through `route`.
pub async fn forward(
    state: &ProxyState,
    req: Request<Incoming>,
    route: &Route,
    client: &ClientInfo,
) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = &route.settings;
    if settings.websocket_only {
        return Err(ProxyError::WebSocketOnly);
    }
    let key = balance::hash_key(&settings.policy, req.headers(), client.client);
    let candidates = balance::pick(&route.pool, &settings.policy, key.as_deref());
    if candidates.is_empty() {
        return Err(ProxyError::NoEndpoints);
    }
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::add_forwarded(&mut parts.headers, client, host.as_ref());
    parts.uri = headers::origin_form(&parts.uri);
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
        // A pooled connection first; a bodiless request that fails on one is retried fresh.
        let pooled = state.http_pool.take(ep.addr);
        let reused = pooled.is_some();
        let sender = match pooled {
            Some(s) => s,
            None => match state.http_pool.open(ep, settings.connect_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    if let Some(reason) = e.upstream_reason() {
                        state.metrics.upstream_error(&route.id, &route.backend, reason);
                    }
                    balance::eject(ep);
                    last_err = e;
                    continue;
                }
            },
        };
        let make_body = |body: &mut Option<Incoming>| match body.take() {
            Some(b) => Either::Left(b),
            None => Either::Right(Empty::new()),
        };
        let up = Request::from_parts(parts.clone(), make_body(&mut body));
        match send(state, ep, sender, up, settings.handshake_timeout).await {
            Ok(resp) => return Ok(resp),
            Err(e) if reused && bodiless && !matches!(e, ProxyError::ResponseTimeout) => {
                let fresh = state.http_pool.open(ep, settings.connect_timeout).await?;
                let up = Request::from_parts(parts.clone(), Either::Right(Empty::new()));
                return send(state, ep, fresh, up, settings.handshake_timeout).await.inspect_err(|e| {
                    if let Some(reason) = e.upstream_reason() {
                        state.metrics.upstream_error(&route.id, &route.backend, reason);
                    }
                });
            }
            Err(e) => {
                if let Some(reason) = e.upstream_reason() {
                    state.metrics.upstream_error(&route.id, &route.backend, reason);
                }
                return Err(e);
            }
        }
    }
    Err(last_err)
}

async fn send(
    state: &ProxyState,
    ep: &Endpoint,
    mut sender: SendRequest<UpBody>,
    req: Request<UpBody>,
    timeout: Duration,
) -> Result<Response<ProxyBody>, ProxyError> {
    let resp =
        tokio::time::timeout(timeout, sender.send_request(req)).await.map_err(|_| ProxyError::ResponseTimeout)??;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // RFC 9110 §15.2.2: a server must not switch protocols unasked. The connection is not
        // reused and nothing of it reaches the client.
        return Err(ProxyError::BadHandshake("101 Switching Protocols to a request that did not ask to upgrade"));
    }
    state.http_pool.put(ep.addr, sender);
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Either::Left(body)))
}
