//! The WebSocket handshake, upstream first (RFC 6455 §4): validate, connect to the chosen
//! endpoint, send the upgrade with the client's `Sec-WebSocket-Key`, `-Protocol`,
//! `-Extensions` and `Origin`, check the backend's 101 (`Sec-WebSocket-Accept` must match
//! the client's key), then answer the client with the backend's 101 headers — so
//! subprotocols and permessage-deflate are negotiated end to end. A non-101 answer is passed
//! back as is. After both upgrades, the raw sockets are recovered and handed to the relay.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::balance;
use super::error::ProxyError;
use super::handshake::{self, Answer};
use super::headers::{self, ClientInfo};
use super::relay::{self, RelaySettings, Signals};
use super::service::{ProxyState, RequestInfo};
use super::{ProxyBody, forward};
use crate::metrics::{ConnMetrics, HttpAccess, Initiator, UpgradeResult, WebSocketAccess, close_code_class};
use crate::routes::{Endpoint, Route};

type Failed = (ProxyError, RequestInfo);

/// Upgrade `req` through `route`. On success the returned 101 is sent by hyper and a tracked
/// task relays the tunnel until it closes.
pub async fn upgrade(
    state: &Arc<ProxyState>,
    mut req: Request<Incoming>,
    route: Arc<Route>,
    client: ClientInfo,
    started: Instant,
) -> Result<Response<ProxyBody>, Failed> {
    let info = RequestInfo { method: req.method().clone(), path: req.uri().path().to_string() };
    let fail = |e: ProxyError| (e, info.clone());
    let settings = &route.settings;
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !settings.origin_allowed(origin) {
        return Err(fail(ProxyError::OriginForbidden));
    }
    let route_slot = match settings.max_connections {
        Some(limit) => {
            Some(state.route_conns.acquire(&route.id, limit as usize).ok_or_else(|| fail(ProxyError::RouteLimit))?)
        }
        None => None,
    };
    let key = balance::hash_key(&settings.policy, req.headers(), client.client);
    let candidates = balance::pick(&route.pool, &settings.policy, key.as_deref());
    if candidates.is_empty() {
        return Err(fail(ProxyError::NoEndpoints));
    }
    let client_slot = req.extensions().get::<super::server::ClientSlot>().cloned();
    let client_key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned().unwrap_or(HeaderValue::from_static(""));
    let on_client_upgrade = hyper::upgrade::on(&mut req);
    let mut fields = upstream_fields(&req, &client);
    let target = headers::origin_form(req.uri());

    let mut last_err = ProxyError::NoEndpoints;
    for &i in candidates.as_slice() {
        let Some(endpoint) = route.pool.ready_at(i) else {
            continue;
        };
        let stream = match forward::connect(endpoint, settings.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                record_upstream_error(state, &route, &e);
                balance::eject(endpoint);
                last_err = e;
                continue;
            }
        };
        if !fields.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&endpoint.addr.to_string())
        {
            fields.insert(header::HOST, v);
        }
        let head = handshake::request_head(&target.to_string(), &fields);
        let exchange = handshake::exchange(stream, &head, client_key.as_bytes());
        let attempt = tokio::time::timeout(settings.handshake_timeout, exchange)
            .await
            .unwrap_or(Err(ProxyError::ResponseTimeout));
        return match attempt {
            Ok(Answer::Switched { headers: backend_headers, stream: upstream, early: upstream_pre }) => {
                let resp = client_response(backend_headers);
                state.metrics.upgrade(&route.id, UpgradeResult::Ok);
                state.metrics.handshake(&route.id, started.elapsed());
                let s = &route.settings;
                let tunnel = Box::new(Tunnel {
                    metrics: state.metrics.connection(&route.id, &route.backend),
                    settings: RelaySettings {
                        idle_timeout: s.idle_timeout,
                        ping_interval: s.ping_interval,
                        pong_timeout: s.pong_timeout,
                        drain_timeout: s.drain_timeout,
                        max_message: s.max_message_bytes,
                    },
                    signals: Signals {
                        shutdown: state.drain.token().clone(),
                        endpoint_removed: endpoint.live.removed().clone(),
                    },
                    upstream: Some(upstream),
                    upstream_pre,
                    route: route.clone(),
                    endpoint: endpoint.clone(),
                    client,
                    _route_slot: route_slot,
                    _client_slot: client_slot,
                });
                state.drain.spawn(tunnel.run(on_client_upgrade));
                Ok(resp)
            }
            Ok(Answer::Refused { status, headers: backend_headers, body }) => {
                let resp = passthrough(status, backend_headers, body);
                state.metrics.upgrade(&route.id, UpgradeResult::BackendRefused);
                HttpAccess {
                    route: &route.id,
                    method: info.method.as_str(),
                    path: &info.path,
                    status: resp.status().as_u16(),
                    duration: started.elapsed(),
                    client: client.client,
                    endpoint: Some(endpoint.addr),
                    upgrade: true,
                    error: None,
                }
                .emit();
                Ok(resp)
            }
            Err(e) => {
                record_upstream_error(state, &route, &e);
                Err(fail(e))
            }
        };
    }
    Err(fail(last_err))
}

fn record_upstream_error(state: &ProxyState, route: &Route, e: &ProxyError) {
    if let Some(reason) = e.upstream_reason() {
        state.metrics.upstream_error(&route.id, &route.backend, reason);
    }
}

/// The fields sent to the backend: the client's end-to-end headers (Host preserved, and
/// `Sec-WebSocket-Key`/`-Protocol`/`-Extensions`/`Origin` with them), hop-by-hop fields
/// removed (RFC 9110 §7.6.1), X-Forwarded-* added, and the upgrade fields set again
/// (RFC 6455 §4.1).
fn upstream_fields(req: &Request<Incoming>, client: &ClientInfo) -> http::HeaderMap {
    let mut h = req.headers().clone();
    headers::strip_hop_by_hop(&mut h);
    let host = req.headers().get(header::HOST).cloned();
    headers::add_forwarded(&mut h, client, host.as_ref());
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h
}

/// A backend's non-101 answer, passed back as is (hop-by-hop fields removed).
fn passthrough(status: StatusCode, mut fields: http::HeaderMap, body: bytes::Bytes) -> Response<ProxyBody> {
    headers::strip_hop_by_hop(&mut fields);
    fields.remove(header::CONTENT_LENGTH);
    let mut resp = Response::new(Either::Right(http_body_util::Full::new(body)));
    *resp.status_mut() = status;
    *resp.headers_mut() = fields;
    resp
}

/// The 101 for the client: the backend's headers, with our own hop-by-hop upgrade fields.
fn client_response(mut h: http::HeaderMap) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(http_body_util::Full::new(bytes::Bytes::new())));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut h);
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    *resp.headers_mut() = h;
    resp
}

/// Recover the raw socket and the bytes hyper had already read past the head.
fn into_tcp(upgraded: Upgraded) -> Option<(TcpStream, bytes::Bytes)> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

/// An established tunnel. Everything it keeps lives in this one heap block, so the task's
/// future holds a pointer instead of copies of each piece at every await level.
struct Tunnel {
    metrics: ConnMetrics,
    settings: RelaySettings,
    signals: Signals,
    upstream: Option<TcpStream>,
    upstream_pre: bytes::Bytes,
    route: Arc<Route>,
    endpoint: Endpoint,
    client: ClientInfo,
    _route_slot: Option<super::limits::Slot>,
    _client_slot: Option<super::server::ClientSlot>,
}

impl Tunnel {
    async fn run(mut self: Box<Self>, on_client_upgrade: hyper::upgrade::OnUpgrade) {
        let opened = Instant::now();
        let client_upgraded = match on_client_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                // The client left between our 101 and its upgrade: the tunnel ended.
                self.metrics.closed(Initiator::Client, close_code_class(None, false), opened.elapsed());
                tracing::debug!(error = %e, "client upgrade failed after 101");
                return;
            }
        };
        let (Some((client, client_pre)), Some(upstream)) = (into_tcp(client_upgraded), self.upstream.take()) else {
            tracing::error!("client upgrade did not yield a TCP socket");
            return;
        };
        let upstream_pre = std::mem::take(&mut self.upstream_pre);
        let _active = self.endpoint.live.track();
        let out =
            relay::relay(client, client_pre, upstream, upstream_pre, &self.settings, &self.signals, &self.metrics)
                .await;
        let lifetime = opened.elapsed();
        self.metrics.closed(out.initiator, close_code_class(out.close_code, out.close_seen), lifetime);
        WebSocketAccess {
            route: &self.route.id,
            backend: &self.route.backend,
            endpoint: self.endpoint.addr,
            client: self.client.client,
            duration: lifetime,
            msgs_in: out.messages[0],
            msgs_out: out.messages[1],
            bytes_in: out.bytes[0],
            bytes_out: out.bytes[1],
            close_code: out.close_code,
            close_frame_seen: out.close_seen,
            initiator: out.initiator,
            reason: out.reason.label(),
        }
        .emit();
    }
}
