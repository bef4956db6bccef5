//! Requests hyper serves: plain HTTP, and every request after the first on a keep-alive
//! connection. hyper's own parse already refuses obs-fold, invalid bytes and conflicting
//! Content-Lengths; the RFC 9112 checks it leaves visible (one valid `Host`, a `Host` that
//! agrees with an absolute-form authority, no body on an upgrade, no CONNECT) are made here,
//! as the front door makes them for first requests. Then match, then forward or upgrade.
//! Errors become responses here, once, through [`ProxyError`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use super::dispatch::{self, Ask};
use super::error::ProxyError;
use super::forward::HttpPool;
use super::front::{self, RequestLog};
use super::headers::{self, Listener, TrustedProxies};
use super::http1::{self, HeadError};
use super::server::{ListenerCtx, OpenConnections};
use super::{ProxyBody, forward, text_response, upgrade};
use crate::drain::Drain;
use crate::metrics::{HttpAccess, Metrics};
use crate::policy::affinity::AffinityKey;
use crate::policy::limits::{ClientCounters, RouteCounters};
use crate::routes::{GatewayRoute, RouteHandle, SslRedirect};
use crate::tls::CertHandle;
use crate::tls::client::BackendConfigs;

/// Everything the proxy shares between connections.
#[derive(Debug)]
pub struct ProxyState {
    pub routes: Arc<RouteHandle>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    pub trusted: TrustedProxies,
    pub http_pool: HttpPool,
    /// Live tunnels per route (`max-connections`).
    pub route_conns: Arc<RouteCounters>,
    /// Live connections per resolved client address (`--max-connections-per-client`).
    pub clients: Arc<ClientCounters>,
    /// Per-route, per-client policy state (connections and handshake buckets per client).
    pub client_policy: crate::policy::clients::ClientLimits,
    /// Open client connections (`--max-connections`).
    pub open: OpenConnections,
    /// The TLS listener's certificates (`None` without one): plain requests to a host with a
    /// certificate of its own are redirected to https (`ssl-redirect`).
    pub certs: Option<Arc<CertHandle>>,
    /// The key of cookie-affinity tokens (`--affinity-key`; a built-in one by default).
    pub affinity_key: Arc<AffinityKey>,
    /// TLS client configurations for `backend-protocol: https`, built at the first use (the
    /// system trust store is read then, once).
    backend_tls: OnceLock<Result<Arc<BackendConfigs>, String>>,
}

impl ProxyState {
    pub fn new(routes: Arc<RouteHandle>, metrics: Arc<Metrics>, drain: Drain, trusted: TrustedProxies) -> Self {
        Self {
            routes,
            metrics,
            drain,
            trusted,
            http_pool: HttpPool::default(),
            route_conns: Arc::default(),
            clients: Arc::default(),
            client_policy: Default::default(),
            open: OpenConnections::default(),
            certs: None,
            affinity_key: Arc::default(),
            backend_tls: OnceLock::new(),
        }
    }

    /// The backend TLS configurations, or why they cannot be built.
    pub fn backend_tls(&self) -> Result<&Arc<BackendConfigs>, &str> {
        self.backend_tls
            .get_or_init(|| BackendConfigs::new().map(Arc::new).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(String::as_str)
    }

    /// Where a plain request for `host` and `target` (path and query as sent) is redirected
    /// by the route's `ssl-redirect`, if it is: never on the TLS listener or without one.
    pub fn https_redirect(
        &self,
        listener: Listener,
        redirect: SslRedirect,
        host: Option<&str>,
        target: &str,
    ) -> Option<String> {
        let certs = self.certs.as_ref()?;
        let host = host.filter(|_| !listener.https)?;
        if !redirect.redirects(certs.load().has_host(host)) {
            return None;
        }
        // The https port is the default one (the Service's 443), as ingress-nginx redirects.
        Some(format!("https://{}{target}", crate::tls::table::host_name(host)))
    }
}

/// Handle one request hyper parsed, from `peer`.
pub async fn handle(
    state: Arc<ProxyState>,
    ctx: Arc<ListenerCtx>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let xff = req.headers().get_all(headers::X_FORWARDED_FOR);
    let client = state.trusted.resolve(peer.ip(), xff.iter().map(HeaderValue::as_bytes));
    let websocket = headers::has_token(req.headers(), &header::UPGRADE, "websocket");
    if let Err(e) = check_parsed(&req, websocket) {
        let err = ProxyError::BadRequest(e);
        let log = RequestLog { method: req.method().as_str(), path: req.uri().path() };
        front::account(&state, None, &err, &log, &client, started, websocket);
        return error_response(&err, true);
    }
    if websocket {
        return upgrade::serve_hyper(&state, &ctx, req, client, started).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let log = RequestLog { method: method.as_str(), path: &path };
    let host = request_host(&req);
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let ask = Ask { host: host.as_deref(), path: &path, target, facts: &req, upgrade: false };
    // A request in flight holds its per-client slot until its response head is back.
    let dispatched = dispatch::dispatch(&state, ctx.listener, &state.routes.load(), ask, client.client, started);
    let d = match dispatched {
        Ok(d) => d,
        Err((rm, err)) => {
            front::account(&state, rm.as_deref(), &err, &log, &client, started, false);
            // A malformed path closes the connection: what follows it cannot be trusted.
            let close = matches!(err, ProxyError::BadRequest(_));
            return error_response(&err, close);
        }
    };
    if let Some(g) = &d.gateway {
        apply_request_filters(g, &mut req);
    }
    let forwarded = forward::forward(&state, req, &d, &client, ctx.listener, ctx.config.write_timeout);
    // Gateway API `timeouts.request`: the whole response (504 before its head, cut short after).
    let forwarded = match d.gateway.as_ref().and_then(|g| g.request_timeout) {
        Some(limit) => {
            let deadline = tokio::time::Instant::now() + limit;
            match tokio::time::timeout_at(deadline, forwarded).await {
                Ok(Ok((resp, ep))) => {
                    let sleep = Box::pin(tokio::time::sleep_until(deadline));
                    Ok((resp.map(|body| ProxyBody::Deadline(Box::new(body), sleep)), ep))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ProxyError::RequestTimeout),
            }
        }
        None => forwarded.await,
    };
    let (mut resp, endpoint, err) = match forwarded {
        Ok((resp, ep)) => (resp, Some(ep), None),
        Err(err) => (error_response(&err, false), None, Some(err)),
    };
    if let Some(g) = &d.gateway {
        g.response_headers.apply(resp.headers_mut());
    }
    let status = resp.status().as_u16();
    d.rm.http_request(status, started.elapsed());
    HttpAccess {
        route: &d.rm.route,
        method: log.method,
        path: log.path,
        status,
        duration: started.elapsed(),
        client: client.client,
        endpoint,
        upgrade: false,
        error: err.as_ref().map(|e| e as &dyn std::error::Error),
    }
    .emit();
    resp
}

/// A Gateway API rule's `URLRewrite` and `RequestHeaderModifier`, applied to a request
/// before it is forwarded.
fn apply_request_filters<B>(g: &GatewayRoute, req: &mut Request<B>) {
    if let Some(rewrite) = &g.rewrite {
        if let Some(p) = &rewrite.path {
            let mut target = p.apply(req.uri().path(), g.matched_prefix.as_deref());
            if let Some(q) = req.uri().query() {
                target.push('?');
                target.push_str(q);
            }
            if let Ok(uri) = http::Uri::try_from(target) {
                // An absolute-form authority moves to Host first, so it is not lost.
                if let Some(a) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                    req.headers_mut().insert(header::HOST, a);
                }
                *req.uri_mut() = uri;
            }
        }
        if let Some(h) = rewrite.hostname.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
            if req.uri().authority().is_some() {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                if let Ok(uri) = http::Uri::try_from(pq) {
                    *req.uri_mut() = uri;
                }
            }
            req.headers_mut().insert(header::HOST, h);
        }
    }
    g.request_headers.apply(req.headers_mut());
}

/// The answer for `err`: its status, its extra fields, a text body; `Connection: close` when
/// `close` (always after a refused upgrade: the client expected to switch protocols on it).
pub fn error_response(err: &ProxyError, close: bool) -> Response<ProxyBody> {
    let mut resp = text_response(err.status(), &err.to_string());
    let h = resp.headers_mut();
    let mut upgrade = false;
    for (name, value) in err.extra_fields() {
        upgrade |= *name == "upgrade";
        h.insert(*name, HeaderValue::from_static(value));
    }
    if let Some(to) = err.location().and_then(|l| HeaderValue::from_str(l).ok()) {
        h.insert(header::LOCATION, to);
    }
    if let Some(secs) = err.retry_after() {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    let close = close || matches!(err, ProxyError::BadRequest(_) | ProxyError::ClientLimit);
    let connection = match (upgrade, close) {
        (true, true) => Some("upgrade, close"),
        (true, false) => Some("upgrade"),
        (false, true) => Some("close"),
        (false, false) => None,
    };
    if let Some(c) = connection {
        h.insert(header::CONNECTION, HeaderValue::from_static(c));
    }
    resp
}

/// The checks of RFC 9112 §3.2 and RFC 6455 §4.1 that hyper's parse leaves to us.
fn check_parsed<B>(req: &Request<B>, websocket: bool) -> Result<(), HeadError> {
    if req.method() == http::Method::CONNECT {
        return Err(HeadError::NotImplemented("CONNECT"));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::DuplicateHost);
    }
    if let Some(h) = host
        && !http1::valid_host(h.as_bytes())
    {
        return Err(HeadError::InvalidHost);
    }
    match (req.uri().authority(), host) {
        (Some(authority), Some(h)) => {
            let scheme = req.uri().scheme_str().unwrap_or("http");
            if !http1::same_authority(scheme.as_bytes(), authority.as_str().as_bytes(), h.as_bytes()) {
                return Err(HeadError::HostMismatch);
            }
        }
        (None, None) if req.version() == http::Version::HTTP_11 => return Err(HeadError::MissingHost),
        _ => {}
    }
    if websocket {
        let length = req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
        if length || req.headers().contains_key(header::TRANSFER_ENCODING) {
            return Err(HeadError::UpgradeWithBody);
        }
    }
    Ok(())
}

/// The host a request is for: an absolute-form target's authority (RFC 9112 §3.2.2), else
/// the `Host` field.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
}
