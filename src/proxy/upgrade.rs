//! The WebSocket handshake, upstream first (RFC 6455 §4): validate the client's opening
//! handshake, match the route, apply its policy (origin, limits), pick an endpoint, connect,
//! send the upgrade with the client's end-to-end fields (`Sec-WebSocket-Key`, `-Protocol`,
//! `-Extensions`, `Origin`, ...), check the backend's 101, then answer the client with the
//! backend's 101 fields — so subprotocols and permessage-deflate are negotiated end to end. A
//! non-101 answer is passed back with its body streamed. Then the relay runs the tunnel.
//!
//! Two doors lead here: the front door's own head parse (the common case: no hyper, no
//! `HeaderMap`, no per-request string; the tunnel runs in the connection's task), and hyper,
//! for an upgrade that arrives as a later request of a keep-alive connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::balance::{self, Candidates};
use super::dispatch::{self, Ask, Failed};
use super::error::ProxyError;
use super::front::{self, ConnHold, HyperIo, RequestLog};
use super::handshake::{self, Answer, Framing, RefusalBody, ResponseHead};
use super::headers::{self, ClientInfo, Listener};
use super::http1::{Field, Method, RequestHead};
use super::relay::{self, RelaySettings, Signals};
use super::server::ListenerCtx;
use super::service::ProxyState;
use super::stream::Stream;
use super::{ProxyBody, forward};
use crate::metrics::{ConnMetrics, HttpAccess, RouteMetrics, UpgradeResult, WebSocketAccess};
use crate::policy::affinity;
use crate::policy::clients::ClientSlot;
use crate::policy::limits::Slot;
use crate::routes::{
    ActiveGuard, Affinity, EndpointLive, GatewayRoute, HeaderEdits, PendingGuard, RebalanceGuard, RequestFacts, Route,
    RouteTable,
};

/// The client's request fields, from the front door's parse (spans of its buffer) or from
/// hyper's (`(name, value)` pairs of its `HeaderMap`).
#[derive(Clone, Copy)]
enum ReqFields<'a> {
    Raw(&'a [Field], &'a [u8]),
    Pairs(&'a [(&'a [u8], &'a [u8])]),
}

/// Iterator over `(name, value)` of [`ReqFields`].
#[derive(Clone)]
enum FieldIter<'a> {
    Raw(std::slice::Iter<'a, Field>, &'a [u8]),
    Pairs(std::slice::Iter<'a, (&'a [u8], &'a [u8])>),
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Raw(it, buf) => it.next().map(|f| (f.name.get(buf), f.value.get(buf))),
            Self::Pairs(it) => it.next().copied(),
        }
    }
}

impl<'a> ReqFields<'a> {
    fn iter(self) -> FieldIter<'a> {
        match self {
            Self::Raw(f, buf) => FieldIter::Raw(f.iter(), buf),
            Self::Pairs(p) => FieldIter::Pairs(p.iter()),
        }
    }
    fn values<'n>(self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + Clone + use<'a, 'n> {
        self.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }
    fn value(self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v)| v)
    }
}

/// What the handshake needs of the client's request.
struct UpgradeReq<'a> {
    fields: ReqFields<'a>,
    /// The host the request is for (absolute-form authority or Host), as sent.
    host: Option<&'a str>,
    /// The Host field is absent (the authority came from an absolute-form target).
    host_missing: bool,
    /// The path as sent (normalised here for matching).
    path: &'a str,
    /// `path?query`, as sent to the backend (origin form, RFC 9112 §3.2.1).
    path_and_query: &'a [u8],
}

/// Gateway API matches read the upgrade request as it came (always a GET, checked before).
impl RequestFacts for UpgradeReq<'_> {
    fn method(&self) -> &str {
        "GET"
    }
    fn has_header(&self, name: &str, value: &str) -> bool {
        self.fields.values(name).any(|v| v == value.as_bytes())
    }
    fn query(&self) -> Option<&str> {
        std::str::from_utf8(self.path_and_query).ok()?.split_once('?').map(|(_, q)| q)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.value(name)
    }
}

impl UpgradeReq<'_> {
    /// The path as sent, without the query.
    fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }
}

/// Validate an opening handshake (RFC 6455 §4.2.1): GET, HTTP/1.1, `Connection: upgrade`, one
/// 16-byte base64 `Sec-WebSocket-Key`, and `Sec-WebSocket-Version: 13` (another version gets
/// 426 with `Sec-WebSocket-Version: 13`, §4.4).
pub fn check_opening<'a>(
    get: bool,
    http11: bool,
    connection_upgrade: bool,
    mut keys: impl Iterator<Item = &'a [u8]>,
    mut versions: impl Iterator<Item = &'a [u8]>,
) -> Result<(), ProxyError> {
    if !connection_upgrade {
        return Err(ProxyError::BadUpgrade("Upgrade: websocket without Connection: upgrade"));
    }
    if !get {
        return Err(ProxyError::BadUpgrade("a WebSocket upgrade must use GET"));
    }
    if !http11 {
        return Err(ProxyError::BadUpgrade("a WebSocket upgrade must use HTTP/1.1"));
    }
    let key = keys.next().ok_or(ProxyError::BadUpgrade("missing Sec-WebSocket-Key"))?;
    if keys.next().is_some() {
        return Err(ProxyError::BadUpgrade("more than one Sec-WebSocket-Key"));
    }
    if !headers::valid_key(key) {
        return Err(ProxyError::BadUpgrade("Sec-WebSocket-Key is not 16 bytes of base64"));
    }
    match versions.next().map(<[u8]>::trim_ascii) {
        Some(b"13") => Ok(()),
        Some(_) => Err(ProxyError::VersionMismatch),
        None => Err(ProxyError::BadUpgrade("missing Sec-WebSocket-Version")),
    }
}

/// A backend that answered, and everything the tunnel or the refusal needs afterwards.
struct Opened {
    route: Arc<RouteMetrics>,
    relay: RelaySettings,
    endpoint: SocketAddr,
    live: Arc<EndpointLive>,
    /// Counts the endpoint in least-conn until the tunnel is tracked.
    _handshaking: PendingGuard,
    route_slot: Slots,
    /// `Set-Cookie` for the client (cookie affinity, when its cookie does not name this endpoint).
    set_cookie: Option<String>,
    /// The route rebalances: the tunnel registers with its endpoint so it can be picked.
    rebalance: bool,
    answer: Answer,
    /// The Gateway API rule (its `ResponseHeaderModifier` edits the 101).
    gateway: Option<Arc<GatewayRoute>>,
}

/// The places a tunnel holds while it lives: on its route (`max-connections`) and as one of
/// its client's connections on that route (`max-connections-per-client`).
type Slots = (Option<Slot<Arc<str>>>, Option<ClientSlot>);

/// From the request to the backend's answer.
async fn open(
    state: &ProxyState,
    ctx: &ListenerCtx,
    table: &RouteTable,
    req: &UpgradeReq<'_>,
    client: &ClientInfo,
) -> Result<Opened, Failed> {
    let target = std::str::from_utf8(req.path_and_query).unwrap_or("/");
    let ask = Ask { host: req.host, path: req.path_only(), target, facts: req, upgrade: true };
    let d = dispatch::dispatch(state, ctx.listener, table, ask, client.client, Instant::now())?;
    let (route, rm, gateway) = (&*d.route, &d.rm, d.gateway.as_deref());
    let fail = |e: ProxyError| (Some(rm.clone()), e);
    let settings = &route.settings;
    let route_slot = match settings.max_connections {
        Some(limit) => Some(state.route_conns.acquire(&rm.route, limit).ok_or_else(|| fail(ProxyError::RouteLimit))?),
        None => None,
    };
    let (candidates, named) = d.candidates(state, req.fields.values("cookie")).map_err(fail)?;
    let mut head = Vec::with_capacity(512);
    upstream_head(&mut head, req, client, ctx.listener, gateway);
    let client_key = req.fields.value("sec-websocket-key").unwrap_or_default();
    let asked = connect_and_ask(state, route, rm, candidates, &head, client_key);
    // Gateway API `timeouts.request`: the whole way to the 101 (connects, retries, the
    // backend's answer), never the tunnel after it.
    let asked = match gateway.and_then(|g| g.request_timeout) {
        Some(limit) => tokio::time::timeout(limit, asked).await.unwrap_or(Err(ProxyError::RequestTimeout)),
        None => asked.await,
    };
    let (i, handshaking, answer) = asked.map_err(fail)?;
    let Some(ep) = route.pool.ready_at(i) else { return Err(fail(ProxyError::NoEndpoints)) };
    let set_cookie = match settings.affinity {
        Affinity::Cookie => {
            affinity::set_cookie_for(&route.pool, &state.affinity_key, named, i, &settings.session_cookie)
        }
        Affinity::None => None,
    };
    let relay = RelaySettings {
        idle_timeout: settings.idle_timeout,
        ping_interval: settings.ping_interval,
        pong_timeout: settings.pong_timeout,
        drain_timeout: settings.drain_timeout,
        max_message: settings.max_message_bytes,
        max_message_rate: settings.client.max_message_rate,
        max_age: settings.max_connection_age,
    };
    Ok(Opened {
        route: rm.clone(),
        relay,
        endpoint: ep.addr,
        live: ep.live.clone(),
        _handshaking: handshaking,
        route_slot: (route_slot, d.client_slot),
        set_cookie,
        rebalance: settings.rebalance.enabled,
        answer,
        gateway: d.gateway.clone(),
    })
}

/// Try the candidates in order: connect (a failure ejects the endpoint and tries the next),
/// then one handshake exchange within the handshake timeout.
async fn connect_and_ask(
    state: &ProxyState,
    route: &Route,
    rm: &RouteMetrics,
    candidates: Candidates,
    head: &[u8],
    client_key: &[u8],
) -> Result<(usize, PendingGuard, Answer), ProxyError> {
    let settings = &route.settings;
    let mut last_err = ProxyError::NoEndpoints;
    for &i in candidates.as_slice() {
        let Some(endpoint) = route.pool.ready_at(i) else { continue };
        // Least-conn counts a handshake in flight, so a reconnect storm spreads out.
        let handshaking = endpoint.live.handshaking();
        let stream = match forward::connect_stream(state, route, endpoint).await {
            Ok(s) => s,
            Err(e) => {
                record_upstream_error(rm, &e);
                balance::eject(endpoint);
                last_err = e;
                continue;
            }
        };
        let exchange = handshake::exchange(stream, head, client_key, settings.response_timeout);
        let attempt = tokio::time::timeout(settings.handshake_timeout, exchange)
            .await
            .unwrap_or(Err(ProxyError::ResponseTimeout));
        return match attempt {
            Ok(answer) => Ok((i, handshaking, answer)),
            Err(e) => {
                record_upstream_error(rm, &e);
                Err(e)
            }
        };
    }
    Err(last_err)
}

fn record_upstream_error(rm: &RouteMetrics, e: &ProxyError) {
    if let Some(reason) = e.upstream_reason() {
        rm.upstream_error(reason);
    }
}

/// The request head for the backend: the client's end-to-end fields in order (hop-by-hop
/// ones removed, RFC 9110 §7.6.1, and the forwarding fields replaced), `Host` preserved (or
/// taken from an absolute-form authority), then the forwarding fields and the upgrade fields
/// set again (RFC 6455 §4.1).
fn upstream_head(
    out: &mut Vec<u8>,
    req: &UpgradeReq<'_>,
    client: &ClientInfo,
    listener: Listener,
    gateway: Option<&GatewayRoute>,
) {
    let rewrite = gateway.and_then(|g| g.rewrite.as_ref());
    match rewrite.and_then(|r| r.path.as_ref()) {
        // Gateway API URLRewrite: the new path, the query kept.
        Some(p) => {
            let mut target = p.apply(req.path_only(), gateway.and_then(|g| g.matched_prefix.as_deref()));
            if let Some(q) = req.query() {
                target.push('?');
                target.push_str(q);
            }
            handshake::request_line(out, target.as_bytes());
        }
        None => handshake::request_line(out, if req.path_and_query.is_empty() { b"/" } else { req.path_and_query }),
    }
    let host = req.host.map(str::as_bytes);
    let new_host = rewrite.and_then(|r| r.hostname.as_deref());
    if let Some(h) = new_host.map(str::as_bytes).or(host.filter(|_| req.host_missing)) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    let edits = gateway.map(|g| &g.request_headers).filter(|e| !e.is_empty());
    let connection = req.fields.values("connection");
    for (name, value) in req.fields.iter() {
        if headers::is_hop_by_hop(name, connection.clone()) || headers::is_forwarding(name) {
            continue;
        }
        if (new_host.is_some() && name.eq_ignore_ascii_case(b"host")) || edits.is_some_and(|e| e.drops(name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = edits {
        append_fields(out, e);
    }
    headers::write_forwarding(out, client, listener, host, |name| req.fields.values(name));
    out.extend_from_slice(b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n");
}

/// The `set` and `add` fields of a Gateway API header modifier, as head lines.
fn append_fields(out: &mut Vec<u8>, edits: &HeaderEdits) {
    for (name, value) in edits.appended() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The backend's end-to-end fields for the client, without `Content-Length` (the proxy frames
/// what it passes on itself).
fn backend_fields(out: &mut Vec<u8>, backend: &ResponseHead, edits: Option<&HeaderEdits>) {
    for (name, value) in backend.end_to_end() {
        if name.eq_ignore_ascii_case(b"content-length") || edits.is_some_and(|e| e.drops(name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// The 101 for the client: the backend's end-to-end fields (edited by a Gateway API
/// `ResponseHeaderModifier`), the affinity cookie if one is set, and our own upgrade fields.
fn switching_head(out: &mut Vec<u8>, backend: &ResponseHead, edits: Option<&HeaderEdits>, set_cookie: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    backend_fields(out, backend, edits);
    if let Some(e) = edits {
        append_fields(out, e);
    }
    if let Some(c) = set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: Upgrade\r\nupgrade: websocket\r\n\r\n");
}

/// An upgrade read by the front door: answered on this stream, and the tunnel run in this task.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    state: &Arc<ProxyState>,
    ctx: &ListenerCtx,
    mut client: Stream,
    buf: Vec<u8>,
    head: RequestHead,
    info: ClientInfo,
    started: Instant,
    hold: ConnHold,
) {
    let log = RequestLog { method: head.method_span.str(&buf), path: head.path.str(&buf) };
    let checked = check_opening(
        head.method == Method::Get,
        head.minor == 1,
        head.upgrade.connection_upgrade,
        head.values(&buf, "sec-websocket-key"),
        head.values(&buf, "sec-websocket-version"),
    );
    let opened = match checked {
        Ok(()) => {
            let req = UpgradeReq {
                fields: ReqFields::Raw(&head.fields, &buf),
                host: head.host.map(|h| h.str(&buf)),
                host_missing: head.host_field.is_none(),
                path: head.path.str(&buf),
                path_and_query: &buf[head.path.range().start..head.query.range().end],
            };
            let table = state.routes.load();
            open(state, ctx, &table, &req, &info).await
        }
        Err(e) => Err((None, e)),
    };
    let opened = match opened {
        Ok(o) => o,
        Err((route, err)) => {
            front::refuse(state, ctx, &mut client, route.as_deref(), &err, &log, &info, started, true).await;
            return;
        }
    };
    let Opened { route, relay, endpoint, live, _handshaking, route_slot, set_cookie, rebalance, answer, gateway } =
        opened;
    match answer {
        Answer::Switched { head: backend, stream: upstream, early } => {
            let mut out = Vec::with_capacity(256);
            let edits = gateway.as_deref().map(|g| &g.response_headers).filter(|e| !e.is_empty());
            switching_head(&mut out, &backend, edits, set_cookie.as_deref());
            drop(set_cookie);
            drop(backend);
            if let Err(e) = client.write_all_within(&out, ctx.config.write_timeout).await {
                // The client left before its 101: nothing to relay.
                tracing::debug!(error = %e, "client gone before the 101");
                return;
            }
            drop(out);
            route.upgrade(UpgradeResult::Ok);
            route.handshake(started.elapsed());
            let client_pre = Bytes::copy_from_slice(&buf[head.len..]);
            drop(buf);
            let tunnel =
                Tunnel::new(state, route, relay, endpoint, live, info.client, route_slot, Hold::Owned(hold), rebalance);
            drop(_handshaking);
            // The tunnel gets a task of its own: this connection task's future is sized for
            // the handshake (head parsing, connect, exchange), about 3.5 KB that an idle tunnel
            // would otherwise keep for its whole life.
            backend_keepalive(&upstream, ctx.config.tcp_keepalive);
            state.drain.spawn(tunnel.run(client, client_pre, upstream, early));
        }
        Answer::Refused { head: backend, body } => {
            route.upgrade(UpgradeResult::BackendRefused);
            access_refused(&route, &log, backend.status, started, &info, endpoint);
            write_refusal(&mut client, &backend, body, ctx.config.write_timeout).await;
        }
    }
}

fn access_refused(
    route: &RouteMetrics,
    log: &RequestLog<'_>,
    status: u16,
    started: Instant,
    info: &ClientInfo,
    endpoint: SocketAddr,
) {
    HttpAccess {
        route: &route.route,
        method: log.method,
        path: log.path,
        status,
        duration: started.elapsed(),
        client: info.client,
        endpoint: Some(endpoint),
        upgrade: true,
        error: None,
    }
    .emit();
}

/// Pass a backend's refusal to the client: its status and end-to-end fields, the body as the
/// client takes it (one read buffer at a time, each write within the write timeout, at most
/// [`handshake::MAX_REFUSAL_BODY`]), then close (the client expected to switch protocols).
async fn write_refusal(
    client: &mut Stream,
    backend: &ResponseHead,
    mut body: RefusalBody,
    write_timeout: std::time::Duration,
) {
    use std::io::Write;
    let status = StatusCode::from_u16(backend.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    backend_fields(&mut out, backend, None);
    let chunked = match body.framing() {
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
            false
        }
        Framing::Chunked(_) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            true
        }
        Framing::None => {
            if backend.status >= 200 && backend.status != 204 && backend.status != 304 {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            false
        }
        Framing::UntilClose => false,
    };
    out.extend_from_slice(b"connection: close\r\n\r\n");
    if client.write_all_within(&out, write_timeout).await.is_err() {
        return;
    }
    while let Some(piece) = body.next_data().await {
        let Ok(data) = piece else {
            // Cut short (too large, timed out, backend gone): the client sees the close.
            return;
        };
        out.clear();
        if chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if client.write_all_within(&out, write_timeout).await.is_err()
            || client.write_all_within(&data, write_timeout).await.is_err()
            || (chunked && client.write_all_within(b"\r\n", write_timeout).await.is_err())
        {
            return;
        }
    }
    if chunked && client.write_all_within(b"0\r\n\r\n", write_timeout).await.is_err() {
        return;
    }
    client.shutdown_write();
}

/// An upgrade that arrived through hyper (a later request of a keep-alive connection): the 101
/// is hyper's to send, and the tunnel runs in its own task once hyper hands the stream back.
pub async fn serve_hyper(
    state: &Arc<ProxyState>,
    ctx: &Arc<ListenerCtx>,
    mut req: Request<Incoming>,
    info: ClientInfo,
    started: Instant,
) -> Response<ProxyBody> {
    let log_path = req.uri().path().to_string();
    let log_method = req.method().clone();
    let log = RequestLog { method: log_method.as_str(), path: &log_path };
    let checked = check_opening(
        req.method() == http::Method::GET,
        req.version() == http::Version::HTTP_11,
        headers::has_token(req.headers(), &header::CONNECTION, "upgrade"),
        req.headers().get_all(header::SEC_WEBSOCKET_KEY).iter().map(HeaderValue::as_bytes),
        req.headers().get_all(header::SEC_WEBSOCKET_VERSION).iter().map(HeaderValue::as_bytes),
    );
    let host = service::request_host(&req);
    let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_string();
    let opened = match checked {
        Ok(()) => {
            let pairs: Vec<(&[u8], &[u8])> =
                req.headers().iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).collect();
            let upgrade_req = UpgradeReq {
                fields: ReqFields::Pairs(&pairs),
                host: host.as_deref(),
                host_missing: !req.headers().contains_key(header::HOST),
                path: req.uri().path(),
                path_and_query: path_and_query.as_bytes(),
            };
            let table = state.routes.load();
            open(state, ctx, &table, &upgrade_req, &info).await
        }
        Err(e) => Err((None, e)),
    };
    let Opened { route, relay, endpoint, live, _handshaking, route_slot, set_cookie, rebalance, answer, gateway } =
        match opened {
            Ok(o) => o,
            Err((route, err)) => {
                front::account(state, route.as_deref(), &err, &log, &info, started, true);
                return service::error_response(&err, true);
            }
        };
    match answer {
        Answer::Switched { head: backend, stream: upstream, early } => {
            route.upgrade(UpgradeResult::Ok);
            route.handshake(started.elapsed());
            let mut resp = Response::new(ProxyBody::Full(None));
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let mut fields = backend.header_map();
            fields.remove(header::CONTENT_LENGTH);
            if let Some(g) = &gateway {
                g.response_headers.apply(&mut fields);
            }
            fields.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            fields.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Some(c) = set_cookie.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
                fields.append(header::SET_COOKIE, c);
            }
            *resp.headers_mut() = fields;
            let hold = req.extensions_mut().remove::<Arc<ConnHold>>().map_or(Hold::None, Hold::Shared);
            let on_upgrade = hyper::upgrade::on(&mut req);
            let tunnel = Tunnel::new(state, route, relay, endpoint, live, info.client, route_slot, hold, rebalance);
            backend_keepalive(&upstream, ctx.config.tcp_keepalive);
            state.drain.spawn(async move {
                let (client, client_pre) = match on_upgrade.await.map(|u| u.downcast::<TokioIo<HyperIo>>()) {
                    Ok(Ok(parts)) => {
                        let (stream, mut ahead) = parts.io.into_inner().into_parts();
                        if !parts.read_buf.is_empty() {
                            let mut joined = parts.read_buf.to_vec();
                            joined.extend_from_slice(&ahead);
                            ahead = Bytes::from(joined);
                        }
                        (stream, ahead)
                    }
                    _ => {
                        tracing::debug!("client upgrade failed after 101");
                        return;
                    }
                };
                drop(_handshaking);
                tunnel.run(client, client_pre, upstream, early).await;
            });
            resp
        }
        Answer::Refused { head: backend, body } => {
            route.upgrade(UpgradeResult::BackendRefused);
            access_refused(&route, &log, backend.status, started, &info, endpoint);
            let mut resp = Response::new(ProxyBody::Refusal(body));
            *resp.status_mut() = StatusCode::from_u16(backend.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut fields = backend.header_map();
            fields.remove(header::CONTENT_LENGTH);
            fields.insert(header::CONNECTION, HeaderValue::from_static("close"));
            *resp.headers_mut() = fields;
            resp
        }
    }
}

use super::service;

/// What keeps a connection's places (connection limit, per-client slot) while its tunnel lives;
/// held only for what dropping it releases.
#[derive(Debug)]
#[allow(dead_code)]
enum Hold {
    Owned(ConnHold),
    Shared(Arc<ConnHold>),
    None,
}

/// An established tunnel. Everything it keeps lives in this one heap block — ids and handles,
/// never the route or its table — so the task's future holds a pointer instead of copies.
struct Tunnel {
    metrics: ConnMetrics,
    settings: RelaySettings,
    signals: Signals,
    endpoint: SocketAddr,
    client: IpAddr,
    _active: ActiveGuard,
    _hold: Hold,
    /// Places held on routes with limits or rebalancing; `None` (8 bytes, no allocation) for
    /// the others, so every idle tunnel does not carry their 100 bytes.
    _places: Option<Box<Places>>,
}

/// What a tunnel of a route with limits or rebalancing holds until it ends.
struct Places {
    _route: Option<Slot<Arc<str>>>,
    _client: Option<ClientSlot>,
    /// Registered with the endpoint for rebalancing.
    _rebalance: Option<RebalanceGuard>,
}

/// TCP keepalive on a tunnel's backend socket (accepted sockets inherit the listener's).
fn backend_keepalive(upstream: &Stream, idle: Option<std::time::Duration>) {
    if let Some(idle) = idle {
        let _ = socket2::SockRef::from(upstream.tcp()).set_tcp_keepalive(&super::server::keepalive(idle));
    }
}

impl Tunnel {
    #[allow(clippy::too_many_arguments)]
    fn new(
        state: &ProxyState,
        route: Arc<RouteMetrics>,
        settings: RelaySettings,
        endpoint: SocketAddr,
        live: Arc<EndpointLive>,
        client: IpAddr,
        route_slot: Slots,
        hold: Hold,
        rebalance: bool,
    ) -> Box<Self> {
        let (endpoint_removed, rebalance_parent, guard) = if rebalance {
            let (token, guard) = live.rebalanceable(Instant::now());
            (token, Some(live.removed()), Some(guard))
        } else {
            (live.removed(), None, None)
        };
        let signals = Signals {
            shutdown: state.drain.token().clone(),
            shutdown_spread: state.drain.spread(),
            endpoint_removed,
            rebalance_parent,
        };
        let (route_slot, client_slot) = route_slot;
        let places = (route_slot.is_some() || client_slot.is_some() || guard.is_some())
            .then(|| Box::new(Places { _route: route_slot, _client: client_slot, _rebalance: guard }));
        Box::new(Self {
            metrics: route.tunnel(),
            settings,
            signals,
            endpoint,
            _active: live.track(),
            client,
            _hold: hold,
            _places: places,
        })
    }

    async fn run(self: Box<Self>, client: Stream, client_pre: Bytes, upstream: Stream, upstream_pre: Bytes) {
        let opened = Instant::now();
        let out =
            relay::relay(client, client_pre, upstream, upstream_pre, &self.settings, &self.signals, &self.metrics)
                .await;
        let lifetime = opened.elapsed();
        self.metrics.closed(out.initiator, out.close_code, out.close_seen, lifetime);
        let route = self.metrics.route();
        if out.reason == relay::EndReason::MessageRate {
            route.policy_refusal(crate::policy::clients::MESSAGE_RATE);
        }
        if out.reason == relay::EndReason::Rebalanced && out.close_sent_to_client {
            // Counted only when our Close went out to the client: exactly what clients get.
            route.rebalance_close();
        }
        WebSocketAccess {
            route: &route.route,
            backend: &route.backend,
            endpoint: self.endpoint,
            client: self.client,
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

#[cfg(test)]
mod tests {
    /// Every idle tunnel carries this block: limits and rebalancing live behind one pointer
    /// (`Places`), so routes without them do not pay for them.
    #[test]
    fn the_tunnel_block_stays_small() {
        let size = std::mem::size_of::<super::Tunnel>();
        println!("Tunnel: {size} bytes");
        // 264 bytes when this bound was set (376 with the places inline).
        assert!(size <= 264, "Tunnel grew to {size} bytes");
    }
}
