//! The WebSocket handshake, upstream first (RFC 6455 §4): validate, connect to the chosen
//! endpoint, send the upgrade with the client's `Sec-WebSocket-Key`, `-Protocol`,
//! `-Extensions` and `Origin`, check the backend's 101 (`Sec-WebSocket-Accept` must match
//! the client's key), then answer the client with the backend's 101 headers — so
//! subprotocols and permessage-deflate are negotiated end to end. A non-101 answer is passed
//! back as is. After both upgrades, the raw sockets are recovered and handed to the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::balance;
use super::error::ProxyError;
use super::headers::{self, ClientInfo};
use super::relay::{self, RelaySettings, Signals};
use super::service::{ProxyState, RequestInfo};
use super::{ProxyBody, forward};
use crate::metrics::{ConnMetrics, UpgradeResult, close_code_class};
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
    let info = RequestInfo {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
    };
    let fail = |e: ProxyError| (e, info.clone());
    let settings = &route.settings;
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    if !settings.origin_allowed(origin) {
        return Err(fail(ProxyError::OriginForbidden));
    }
    let route_slot = match settings.max_connections {
        Some(limit) => Some(
            state
                .route_conns
                .acquire(&route.id, limit as usize)
                .ok_or_else(|| fail(ProxyError::RouteLimit))?,
        ),
        None => None,
    };
    let key = hash_key(&route, &req, &client);
    let candidates = balance::pick(&route.pool, &settings.policy, key.as_deref());
    if candidates.is_empty() {
        return Err(fail(ProxyError::NoEndpoints));
    }
    let client_key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let on_client_upgrade = hyper::upgrade::on(&mut req);
    let upstream_req = upstream_request(&req, &client);

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
        let attempt = handshake(
            stream,
            &upstream_req,
            settings.handshake_timeout,
            client_key.as_ref(),
        )
        .await;
        return match attempt {
            Ok(Handshake::Switched {
                response,
                upstream,
                upstream_pre,
            }) => {
                let resp = client_response(&response);
                let tunnel = Tunnel {
                    state: state.clone(),
                    route: route.clone(),
                    endpoint: endpoint.clone(),
                    client,
                    _route_slot: route_slot,
                };
                state.metrics.upgrade(&route.id, UpgradeResult::Ok);
                state.metrics.handshake(&route.id, started.elapsed());
                let conn_metrics = state.metrics.connection(&route.id, &route.backend);
                state.drain.spawn(async move {
                    match on_client_upgrade.await {
                        Ok(upgraded) => {
                            tunnel
                                .run(upgraded, upstream, upstream_pre, conn_metrics)
                                .await
                        }
                        Err(e) => tracing::debug!(error = %e, "client upgrade failed after 101"),
                    }
                });
                Ok(resp)
            }
            Ok(Handshake::Refused(resp)) => {
                state
                    .metrics
                    .upgrade(&route.id, UpgradeResult::BackendRefused);
                tracing::info!(
                    target: "access",
                    kind = "websocket",
                    route = %route.id,
                    endpoint = %endpoint.addr,
                    client = %client.client,
                    path = %info.path,
                    status = resp.status().as_u16(),
                    "backend refused the upgrade",
                );
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
        state
            .metrics
            .upstream_error(&route.id, &route.backend, reason);
    }
}

/// The balancing key for hash policies.
fn hash_key(route: &Route, req: &Request<Incoming>, client: &ClientInfo) -> Option<Vec<u8>> {
    match &route.settings.policy {
        crate::routes::Policy::IpHash => Some(match client.client {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        }),
        crate::routes::Policy::HeaderHash(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec()),
        _ => None,
    }
}

/// The request sent to the backend: the client's end-to-end headers (Host preserved),
/// hop-by-hop fields removed (RFC 9110 §7.6.1), X-Forwarded-* added, and the upgrade
/// fields set again (RFC 6455 §4.1).
fn upstream_request(req: &Request<Incoming>, client: &ClientInfo) -> Request<Empty<bytes::Bytes>> {
    let mut out = Request::new(Empty::new());
    *out.method_mut() = http::Method::GET;
    *out.uri_mut() = req.uri().path_and_query().map_or_else(
        || http::Uri::from_static("/"),
        |pq| http::Uri::try_from(pq.as_str()).unwrap_or_else(|_| http::Uri::from_static("/")),
    );
    let mut h = req.headers().clone();
    headers::strip_hop_by_hop(&mut h);
    let host = req.headers().get(header::HOST).cloned();
    headers::add_forwarded(&mut h, client, host.as_ref());
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    *out.headers_mut() = h;
    out
}

enum Handshake {
    Switched {
        response: Response<Incoming>,
        upstream: TcpStream,
        upstream_pre: bytes::Bytes,
    },
    Refused(Response<ProxyBody>),
}

async fn handshake(
    stream: TcpStream,
    template: &Request<Empty<bytes::Bytes>>,
    timeout: std::time::Duration,
    client_key: Option<&HeaderValue>,
) -> Result<Handshake, ProxyError> {
    let mut req = Request::new(Empty::new());
    *req.method_mut() = template.method().clone();
    *req.uri_mut() = template.uri().clone();
    *req.headers_mut() = template.headers().clone();
    if !req.headers().contains_key(header::HOST)
        && let Ok(peer) = stream.peer_addr()
        && let Ok(v) = HeaderValue::from_str(&peer.to_string())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    let exchange = async move {
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        let mut response = sender.send_request(req).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok::<_, ProxyError>(Handshake::Refused(passthrough(response)));
        }
        let expected = client_key.map(|k| headers::accept_key(k.as_bytes()));
        let accept = response
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .and_then(|v| v.to_str().ok());
        if expected.is_none() || accept != expected.as_deref() {
            return Err(ProxyError::BadHandshake(
                "Sec-WebSocket-Accept does not match the client's key",
            ));
        }
        if !headers::has_token(response.headers(), &header::UPGRADE, "websocket") {
            return Err(ProxyError::BadHandshake("101 without Upgrade: websocket"));
        }
        let upgraded = hyper::upgrade::on(&mut response).await?;
        let (upstream, upstream_pre) =
            into_tcp(upgraded).ok_or(ProxyError::BadHandshake("upgrade lost the socket"))?;
        Ok(Handshake::Switched {
            response,
            upstream,
            upstream_pre,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ProxyError::ResponseTimeout)?
}

/// A backend's non-101 answer, passed back as is (hop-by-hop fields removed).
fn passthrough(response: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// The 101 for the client: the backend's headers, with our own hop-by-hop upgrade fields.
fn client_response(backend: &Response<Incoming>) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(
        http_body_util::Full::new(bytes::Bytes::new()),
    ));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut h = backend.headers().clone();
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

/// An established tunnel, owned by its task.
struct Tunnel {
    state: Arc<ProxyState>,
    route: Arc<Route>,
    endpoint: Endpoint,
    client: ClientInfo,
    _route_slot: Option<super::limits::Slot>,
}

impl Tunnel {
    async fn run(
        self,
        client_upgraded: Upgraded,
        upstream: TcpStream,
        upstream_pre: bytes::Bytes,
        metrics: ConnMetrics,
    ) {
        let Some((client, client_pre)) = into_tcp(client_upgraded) else {
            tracing::error!("client upgrade did not yield a TCP socket");
            return;
        };
        let _active = self.endpoint.live.track();
        let s = &self.route.settings;
        let settings = RelaySettings {
            idle_timeout: s.idle_timeout,
            ping_interval: s.ping_interval,
            pong_timeout: s.pong_timeout,
            drain_timeout: s.drain_timeout,
            max_message: s.max_message_bytes,
        };
        let signals = Signals {
            shutdown: self.state.drain.token().clone(),
            endpoint_removed: self.endpoint.live.removed().clone(),
        };
        let opened = Instant::now();
        let out = relay::relay(
            client,
            &client_pre,
            upstream,
            &upstream_pre,
            &settings,
            &signals,
            &metrics,
        )
        .await;
        let lifetime = opened.elapsed();
        metrics.closed(
            out.initiator,
            close_code_class(out.close_code, out.close_seen),
            lifetime,
        );
        tracing::info!(
            target: "access",
            kind = "websocket",
            route = %self.route.id,
            backend = %self.route.backend,
            endpoint = %endpoint_addr(&self.endpoint.addr),
            client = %self.client.client,
            duration_ms = lifetime.as_secs_f64() * 1000.0,
            msgs_in = out.messages[0],
            msgs_out = out.messages[1],
            bytes_in = out.bytes[0],
            bytes_out = out.bytes[1],
            close_code = out.close_code.map_or(-1, i32::from),
            initiator = out.initiator.label(),
            reason = out.reason.label(),
        );
    }
}

fn endpoint_addr(a: &SocketAddr) -> String {
    a.to_string()
}
