//! Per-request decisions: classify (plain or WebSocket), match the route, then forward or
//! upgrade. Errors become responses here, once, through [`ProxyError`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, header};
use hyper::body::Incoming;

use super::error::ProxyError;
use super::forward::HttpPool;
use super::headers::{self, ClientInfo, RequestKind, TrustedProxies};
use super::limits::RouteCounters;
use super::{ProxyBody, forward, text_response, upgrade};
use crate::drain::Drain;
use crate::metrics::{HttpAccess, Metrics, UNMATCHED};
use crate::routes::RouteHandle;

/// Everything the proxy shares between connections.
#[derive(Debug)]
pub struct ProxyState {
    pub routes: Arc<RouteHandle>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub trusted: TrustedProxies,
    pub http_pool: HttpPool,
    pub route_conns: RouteCounters,
}

impl ProxyState {
    pub fn new(routes: Arc<RouteHandle>, metrics: Arc<Metrics>, drain: Drain, trusted: TrustedProxies) -> Self {
        Self { routes, metrics, drain, trusted, http_pool: HttpPool::default(), route_conns: RouteCounters::default() }
    }
}

/// Handle one request from `peer`. `over_client_limit` is set when the connection exceeded
/// `--max-connections-per-client`.
pub async fn handle(
    state: Arc<ProxyState>,
    req: Request<Incoming>,
    peer: SocketAddr,
    over_client_limit: bool,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let client = state.trusted.client_info(peer.ip(), req.headers());
    let kind = headers::classify(req.method(), req.version(), req.headers());
    let table = state.routes.load();
    let host = request_host(&req);
    let route = table.find(host.as_deref(), req.uri().path()).cloned();
    let route_id = route.as_ref().map_or(UNMATCHED, |r| r.id.as_str()).to_string();

    let info =
        |req: &Request<Incoming>| RequestInfo { method: req.method().clone(), path: req.uri().path().to_string() };
    match kind {
        Err(why) => error_response(&state, &route_id, ProxyError::BadUpgrade(why), &info(&req), &client, started, true),
        Ok(RequestKind::WebSocket) => {
            let Some(route) = route else {
                return error_response(&state, &route_id, ProxyError::NoRoute, &info(&req), &client, started, true);
            };
            if over_client_limit {
                return error_response(&state, &route_id, ProxyError::ClientLimit, &info(&req), &client, started, true);
            }
            match upgrade::upgrade(&state, req, route, client, started).await {
                Ok(resp) => resp,
                Err((err, req_info)) => error_response(&state, &route_id, err, &req_info, &client, started, true),
            }
        }
        Ok(RequestKind::Plain) => {
            let Some(route) = route else {
                return error_response(&state, &route_id, ProxyError::NoRoute, &info(&req), &client, started, false);
            };
            if over_client_limit {
                return error_response(
                    &state,
                    &route_id,
                    ProxyError::ClientLimit,
                    &info(&req),
                    &client,
                    started,
                    false,
                );
            }
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let (resp, err) = match forward::forward(&state, req, &route, &client).await {
                Ok(resp) => (resp, None),
                Err(err) => {
                    let mut resp = text_response(err.status(), &err.to_string());
                    error_headers(&err, &mut resp, false);
                    (resp, Some(err))
                }
            };
            let status = resp.status().as_u16();
            state.metrics.http_request(&route_id, status, started.elapsed());
            HttpAccess {
                route: &route_id,
                method: method.as_str(),
                path: &path,
                status,
                duration: started.elapsed(),
                client: client.client,
                endpoint: None,
                upgrade: false,
                error: err.as_ref().map(|e| e as &dyn std::error::Error),
            }
            .emit();
            resp
        }
    }
}

/// What a failed upgrade leaves for its log line.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub method: http::Method,
    pub path: String,
}

/// Answer a request the proxy refuses or could not serve: counted (as an upgrade result, or
/// as an HTTP request), logged with the error, and given the error headers.
fn error_response(
    state: &ProxyState,
    route_id: &str,
    err: ProxyError,
    req: &RequestInfo,
    client: &ClientInfo,
    started: Instant,
    websocket: bool,
) -> Response<ProxyBody> {
    if websocket {
        state.metrics.upgrade(route_id, err.upgrade_result());
    } else {
        state.metrics.http_request(route_id, err.status().as_u16(), started.elapsed());
    }
    HttpAccess {
        route: route_id,
        method: req.method.as_str(),
        path: &req.path,
        status: err.status().as_u16(),
        duration: started.elapsed(),
        client: client.client,
        endpoint: None,
        upgrade: websocket,
        error: Some(&err),
    }
    .emit();
    let mut resp = text_response(err.status(), &err.to_string());
    error_headers(&err, &mut resp, websocket);
    resp
}

/// Headers every generated error carries: `Retry-After` for overload, and `Connection:
/// close` after a refused upgrade (the client expected to switch protocols on it).
fn error_headers(err: &ProxyError, resp: &mut Response<ProxyBody>, websocket: bool) {
    if websocket {
        resp.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    if matches!(err, ProxyError::ClientLimit | ProxyError::RouteLimit | ProxyError::NoEndpoints) {
        resp.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
}

/// The request's host: the `Host` header, or the authority of an absolute-form target.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
}
