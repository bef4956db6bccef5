//! The route model: an immutable `RouteTable` snapshot of hosts, paths, pools, endpoints,
//! balancing policy and per-route timeouts. Sources build tables; the proxy reads them.
//!
//! Everything here is plain data shared through `Arc`. The only mutable parts are the
//! per-endpoint live counters (`EndpointLive`), which are carried over from one table to
//! the next by [`handle::RouteHandle::publish`] so that least-conn counts, ejection and
//! draining survive a reload, and so an endpoint that is briefly not ready keeps them.

pub mod cidr;
pub mod client_policy;
pub mod gateway;
pub mod handle;
pub mod matching;
pub mod ring;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use client_policy::ClientPolicy;
pub use gateway::{
    GatewayRoute, HeaderEdits, NoFacts, PathRewrite, Pick, Redirect, RequestConditions, RequestFacts, Rewrite,
};
pub use handle::RouteHandle;
pub use matching::{HostMatch, PathMatch};
pub use ring::HashRing;

/// How a pool picks an endpoint for a new connection or request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// Fewest live tunnels (ties broken round-robin). The default.
    #[default]
    LeastConn,
    RoundRobin,
    /// Consistent hash of the client address (after `--trusted-proxies` resolution).
    IpHash,
    /// Consistent hash of a request header's value (lower-case name); falls back to
    /// least-conn when the header is absent.
    HeaderHash(String),
}

impl Policy {
    /// Parse the annotation/flag form: `least-conn`, `round-robin`, `ip-hash`, `header-hash:NAME`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        match v {
            "least-conn" => Ok(Self::LeastConn),
            "round-robin" => Ok(Self::RoundRobin),
            "ip-hash" => Ok(Self::IpHash),
            _ => match v.strip_prefix("header-hash:") {
                Some(name) if is_header_name(name) => Ok(Self::HeaderHash(name.to_ascii_lowercase())),
                Some(name) => Err(format!("`{name}` is not a valid HTTP header name")),
                None => {
                    Err(format!("unknown policy `{v}` (expected least-conn, round-robin, ip-hash or header-hash:NAME)"))
                }
            },
        }
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LeastConn => f.write_str("least-conn"),
            Self::RoundRobin => f.write_str("round-robin"),
            Self::IpHash => f.write_str("ip-hash"),
            Self::HeaderHash(h) => write!(f, "header-hash:{h}"),
        }
    }
}

/// Per-route behaviour. Defaults match nginx's WebSocket recipe where one exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    pub policy: Policy,
    /// Close a tunnel with no bytes in either direction for this long (nginx `proxy_read_timeout`).
    /// `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Send a ping to the client after this long without traffic from it. `None` = off.
    pub ping_interval: Option<Duration>,
    /// After a ping, close if the client sends nothing for this long.
    pub pong_timeout: Duration,
    /// TCP connect to one endpoint.
    pub connect_timeout: Duration,
    /// From sending the upgrade request upstream to its complete response head (504 after).
    pub handshake_timeout: Duration,
    /// When an endpoint leaves the pool, its tunnels get Close 1001 at random instants within
    /// this window. `None` = never.
    pub drain_timeout: Option<Duration>,
    /// Plain HTTP: from the request sent upstream to its response head, and between two reads
    /// of the response body (nginx `proxy_read_timeout`); 504 when the head does not come.
    pub response_timeout: Duration,
    /// Close with 1009 when one message (sum of its fragments) exceeds this. `None` = unlimited.
    pub max_message_bytes: Option<u64>,
    /// Live WebSocket tunnels allowed on this route; more get 503. `None` = unlimited.
    pub max_connections: Option<u32>,
    /// Allowed `Origin` values (exact, lower-case, or `*`). Empty = any origin.
    pub allowed_origins: Vec<String>,
    /// Refuse plain HTTP on this route (426 Upgrade Required).
    pub websocket_only: bool,
    /// ingress-nginx annotations on the object that wsingress does not implement (each also
    /// reported by an Event); listed in `/routes`.
    pub unsupported_annotations: Vec<String>,
    /// Why the route answers every request with 503: it carries a security annotation
    /// wsingress does not enforce (fail closed). Its pool is then empty.
    pub refused: Option<String>,
    /// When plain HTTP is redirected to https (308).
    pub ssl_redirect: SslRedirect,
    /// TLS towards the endpoints; `None` speaks plain TCP.
    pub backend_tls: Option<BackendTls>,
    /// Per-client policy: source ranges, per-client limits, message rate.
    pub client: ClientPolicy,
    /// What a Gateway API rule adds (conditions, split, filters, `timeouts.request`); `None`
    /// for Ingress and Service-only routes.
    pub gateway: Option<Arc<GatewayRoute>>,
    /// Session affinity (`affinity: cookie`): a request carrying the route's cookie goes to
    /// the endpoint it names while that endpoint is ready.
    pub affinity: Affinity,
    /// The affinity cookie's name and attributes (used with [`Affinity::Cookie`]).
    pub session_cookie: SessionCookie,
    /// Active rebalancing of this route's pool (`wsingress.io/rebalance`).
    pub rebalance: Rebalance,
    /// Close a tunnel with 1001 once it is this old (±10% jitter). `None` = never.
    pub max_connection_age: Option<Duration>,
}

/// Active rebalancing: when the busiest endpoint holds more than `threshold` × the pool mean,
/// close the oldest tunnels of over-target endpoints with 1001, at most `max_rate` of the
/// pool's tunnels per 10 s (at least one), none younger than `min_age`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebalance {
    pub enabled: bool,
    /// The trigger and the target, in thousandths of the pool mean (1250 = 1.25×).
    pub threshold_milli: u32,
    /// Closes allowed per 10 s window, in basis points of the pool's tunnels (200 = 2%).
    pub max_rate_bp: u32,
    /// Tunnels younger than this are never closed by rebalancing.
    pub min_age: Duration,
}

impl Default for Rebalance {
    fn default() -> Self {
        Self { enabled: false, threshold_milli: 1250, max_rate_bp: 200, min_age: Duration::from_secs(300) }
    }
}

/// Session affinity of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    /// The balancing policy alone picks.
    #[default]
    None,
    /// A cookie names the endpoint (an opaque keyed token, see `policy::affinity`).
    Cookie,
}

/// The `SameSite` attribute of the affinity cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

/// Name and attributes of the affinity cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCookie {
    /// Cookie name (an RFC 6265 token).
    pub name: String,
    /// `Path` attribute.
    pub path: String,
    /// `Max-Age` in seconds; `None` = a session cookie (gone when the browser closes).
    pub max_age: Option<u64>,
    /// `SameSite` attribute; `None` = not sent (the browser's default, `Lax`).
    pub same_site: Option<SameSite>,
    /// `Secure` attribute.
    pub secure: bool,
}

/// Default name of the affinity cookie.
pub const DEFAULT_SESSION_COOKIE: &str = "WSINGRESS";

impl Default for SessionCookie {
    fn default() -> Self {
        Self { name: DEFAULT_SESSION_COOKIE.into(), path: "/".into(), max_age: None, same_site: None, secure: false }
    }
}

/// When a plain HTTP request (or `ws://` upgrade) is answered with a 308 to `https://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslRedirect {
    /// For hosts with a certificate of their own (listed in an Ingress `spec.tls`), as
    /// ingress-nginx does by default.
    #[default]
    TlsHosts,
    /// Never.
    Off,
    /// Always, even for hosts without a certificate (ingress-nginx `force-ssl-redirect`).
    Force,
}

impl SslRedirect {
    /// Whether a plain request to a host redirects; `host_has_certificate` comes from the
    /// certificate table published with this route table.
    pub fn redirects(self, host_has_certificate: bool) -> bool {
        match self {
            Self::TlsHosts => host_has_certificate,
            Self::Off => false,
            Self::Force => true,
        }
    }
}

/// TLS towards a route's endpoints, as plain data: the proxy turns it into a client
/// configuration through `tls::client`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTls {
    /// Sent as SNI, and the name the backend's certificate must carry.
    pub server_name: String,
    pub verify: BackendVerify,
}

/// How a backend's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendVerify {
    /// Against the system's trust store.
    SystemRoots,
    /// Against the `ca.crt` of a Secret.
    Ca(Arc<CaBundle>),
    /// Not at all (`wsingress.io/backend-tls-verify: "false"`).
    Off,
}

/// A PEM bundle of trust anchors and where it came from.
#[derive(Debug, PartialEq, Eq)]
pub struct CaBundle {
    /// `namespace/name` of the Secret.
    pub id: String,
    pub pem: Vec<u8>,
}

impl Default for RouteSettings {
    fn default() -> Self {
        Self {
            policy: Policy::LeastConn,
            idle_timeout: Some(Duration::from_secs(60)),
            ping_interval: None,
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Some(Duration::from_secs(30)),
            response_timeout: Duration::from_secs(60),
            max_message_bytes: None,
            max_connections: None,
            allowed_origins: Vec::new(),
            websocket_only: false,
            unsupported_annotations: Vec::new(),
            refused: None,
            ssl_redirect: SslRedirect::default(),
            backend_tls: None,
            client: ClientPolicy::default(),
            gateway: None,
            affinity: Affinity::None,
            session_cookie: SessionCookie::default(),
            rebalance: Rebalance::default(),
            max_connection_age: None,
        }
    }
}

impl RouteSettings {
    /// Whether `origin` (the request's `Origin` header, if any) may open a tunnel.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        if self.allowed_origins.is_empty() {
            return true;
        }
        let Some(origin) = origin else { return false };
        let origin = origin.trim().to_ascii_lowercase();
        self.allowed_origins.iter().any(|o| o == "*" || *o == origin)
    }
}

/// Where an endpoint is in its life, read from its EndpointSlice conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointState {
    /// Ready: takes new tunnels.
    Ready,
    /// Not ready and not terminating (a failed readiness probe, a pod starting): no new
    /// tunnels; its tunnels stay open and its live state (counts, ejection) is kept for when
    /// it returns. Drained only once it has stayed not ready for `--unready-drain-after`.
    NotReady,
    /// Terminating (serving or not): no new tunnels; its tunnels are drained from now.
    Terminating,
}

impl EndpointState {
    /// The label in metrics and `/routes`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::NotReady => "not_ready",
            Self::Terminating => "terminating",
        }
    }
}

/// The part of an endpoint's live state that changes with its lifecycle.
#[derive(Debug, Default)]
struct Lifecycle {
    /// Cancelled to drain the tunnels opened while it was current. Replaced by a fresh one
    /// when a drained endpoint is ready again, so new tunnels are not drained with the old.
    drain: CancellationToken,
    /// Since when it has been not ready (`None` while ready or terminating).
    unready_since: Option<Instant>,
}

/// Live state of one upstream address, shared by every table that contains it.
#[derive(Debug, Default)]
pub struct EndpointLive {
    active: AtomicUsize,
    /// Upgrades in flight towards this endpoint (connect and handshake under way).
    handshaking: AtomicUsize,
    lifecycle: Mutex<Lifecycle>,
    /// Milliseconds since the process epoch until which connect failures keep it out of rotation.
    ejected_until_ms: AtomicU64,
    /// Tunnels of routes with rebalancing on, oldest first (by opening order): when each
    /// opened, and the signal that closes it. Empty for every other route.
    rebalanceable: Mutex<std::collections::BTreeMap<u64, (Instant, CancellationToken)>>,
}

/// Opening order of rebalanceable tunnels (process-wide, so older means smaller).
static TUNNEL_SEQ: AtomicU64 = AtomicU64::new(0);

impl EndpointLive {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// What least-conn balances on: live tunnels plus handshakes in flight, so a burst of
    /// new connections spreads out before any of them is established.
    pub fn load(&self) -> usize {
        self.active() + self.handshaking.load(Ordering::Relaxed)
    }
    /// Count one handshake in flight until the guard drops.
    pub fn handshaking(self: &Arc<Self>) -> PendingGuard {
        self.handshaking.fetch_add(1, Ordering::Relaxed);
        PendingGuard(self.clone())
    }
    /// Count one live connection until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
    fn lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The drain signal a tunnel opened now listens to: cancelled when the endpoint
    /// terminates, leaves every pool, or stays not ready past `--unready-drain-after`.
    pub fn removed(&self) -> CancellationToken {
        self.lifecycle().drain.clone()
    }
    /// Whether the tunnels opened on it so far are being drained.
    pub fn is_removed(&self) -> bool {
        self.lifecycle().drain.is_cancelled()
    }
    /// Start draining its tunnels now (idempotent).
    pub fn drain(&self) {
        self.lifecycle().drain.cancel();
    }
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }
    pub fn eject_until_ms(&self, until: u64) {
        self.ejected_until_ms.store(until, Ordering::Relaxed);
    }
    /// Register a tunnel that rebalancing may close: the returned token (a child of the
    /// endpoint's drain signal, so a drain still reaches it) is cancelled when rebalancing
    /// picks it; the guard unregisters it when the tunnel ends.
    pub fn rebalanceable(self: &Arc<Self>, opened: Instant) -> (CancellationToken, RebalanceGuard) {
        let token = self.lifecycle().drain.child_token();
        let seq = TUNNEL_SEQ.fetch_add(1, Ordering::Relaxed);
        self.registry().insert(seq, (opened, token.clone()));
        (token, RebalanceGuard { live: self.clone(), seq })
    }
    fn registry(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, (Instant, CancellationToken)>> {
        self.rebalanceable.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Rebalanceable tunnels not yet picked.
    pub fn rebalanceable_len(&self) -> usize {
        self.registry().len()
    }
    /// Pick the oldest rebalanceable tunnel if it opened at or before `opened_by`: it leaves
    /// the registry and its signal fires. True when one was picked.
    pub fn close_oldest(&self, opened_by: Instant) -> bool {
        let picked = {
            let mut reg = self.registry();
            match reg.first_key_value() {
                Some((_, (opened, _))) if *opened <= opened_by => reg.pop_first(),
                _ => None,
            }
        };
        match picked {
            Some((_, (_, token))) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
    /// Since when it has been not ready, if it is.
    pub fn unready_since(&self) -> Option<Instant> {
        self.lifecycle().unready_since
    }

    /// Record the state a newly published table gives it: ready clears the not-ready clock
    /// (and re-arms the drain signal if an earlier drain fired), not ready starts the clock
    /// (once), terminating drains now.
    pub(crate) fn observe(&self, state: EndpointState, now: Instant) {
        let mut l = self.lifecycle();
        match state {
            EndpointState::Ready => {
                l.unready_since = None;
                if l.drain.is_cancelled() {
                    l.drain = CancellationToken::new();
                }
            }
            EndpointState::NotReady => {
                l.unready_since.get_or_insert(now);
            }
            EndpointState::Terminating => {
                l.unready_since = None;
                l.drain.cancel();
            }
        }
    }

    /// Drain it if it has been not ready since `limit` or earlier; true when this call drained it.
    pub(crate) fn drain_if_unready_since(&self, limit: Instant) -> bool {
        let l = self.lifecycle();
        let due = l.unready_since.is_some_and(|t| t <= limit) && !l.drain.is_cancelled();
        if due {
            l.drain.cancel();
        }
        due
    }
}

/// Decrements an endpoint's in-flight handshake count on drop.
#[derive(Debug)]
pub struct PendingGuard(Arc<EndpointLive>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Unregisters a rebalanceable tunnel on drop.
#[derive(Debug)]
pub struct RebalanceGuard {
    live: Arc<EndpointLive>,
    seq: u64,
}

impl Drop for RebalanceGuard {
    fn drop(&mut self) {
        self.live.registry().remove(&self.seq);
    }
}

/// Decrements an endpoint's live count on drop.
#[derive(Debug)]
pub struct ActiveGuard(Arc<EndpointLive>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One upstream address and its lifecycle state; only ready ones get new connections.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub state: EndpointState,
    /// Pod or target name, for `/routes` and logs only (never a metric label).
    pub target: Option<String>,
    /// An ExternalName Service's DNS name, resolved at connect time. `addr` is then a
    /// stand-in unique to the name (in the discard-only prefix `100::/64`, RFC 6666) that
    /// keys pools and live state; its port is the one connected to.
    pub hostname: Option<Arc<str>>,
    pub live: Arc<EndpointLive>,
}

impl Endpoint {
    /// A ready endpoint, or (`ready == false`) a terminating one.
    pub fn new(addr: SocketAddr, ready: bool) -> Self {
        Self::with_state(addr, if ready { EndpointState::Ready } else { EndpointState::Terminating })
    }

    pub fn with_state(addr: SocketAddr, state: EndpointState) -> Self {
        Self { addr, state, target: None, hostname: None, live: Arc::default() }
    }

    /// A ready endpoint for a DNS name resolved at connect time (an ExternalName Service).
    pub fn external(hostname: &str, port: u16) -> Self {
        let name = hostname.trim().trim_end_matches('.').to_ascii_lowercase();
        let h = ring::hash_key(name.as_bytes());
        let stand_in =
            std::net::Ipv6Addr::new(0x100, 0, 0, 0, (h >> 48) as u16, (h >> 32) as u16, (h >> 16) as u16, h as u16);
        Self {
            hostname: Some(name.into()),
            ..Self::with_state(SocketAddr::new(stand_in.into(), port), EndpointState::Ready)
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state == EndpointState::Ready
    }
}

/// The endpoints of one backend, in canonical order (sorted by address), with the hash
/// ring built once over the ready ones, when a hashing policy first needs it (most pools
/// never do, and a cluster publishes tens of thousands of pools per change).
#[derive(Debug)]
pub struct Pool {
    endpoints: Vec<Endpoint>,
    /// Indexes into `endpoints` of the ready ones.
    ready: Vec<usize>,
    ring: Arc<OnceLock<HashRing>>,
    /// Affinity token of each ready endpoint (same order as `ready`), computed once per pool
    /// when a cookie-affinity route first needs them.
    tokens: Arc<OnceLock<Box<[AffinityToken]>>>,
    next: AtomicUsize,
}

/// Length of an affinity token (the cookie value), in ASCII bytes.
pub const AFFINITY_TOKEN_LEN: usize = 32;
/// The affinity cookie value naming one endpoint: opaque ASCII (made by `policy::affinity`).
pub type AffinityToken = [u8; AFFINITY_TOKEN_LEN];

impl Pool {
    pub fn new(mut endpoints: Vec<Endpoint>) -> Self {
        // One entry per address, the most alive state first (Ready < NotReady < Terminating).
        endpoints.sort_by(|a, b| a.addr.cmp(&b.addr).then(a.state.cmp(&b.state)));
        endpoints.dedup_by(|a, b| a.addr == b.addr);
        let ready: Vec<usize> = (0..endpoints.len()).filter(|&i| endpoints[i].is_ready()).collect();
        Self { endpoints, ready, ring: Arc::default(), tokens: Arc::default(), next: AtomicUsize::new(0) }
    }
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
    /// Ready endpoints, in canonical order.
    pub fn ready(&self) -> impl ExactSizeIterator<Item = &Endpoint> + Clone {
        self.ready.iter().map(|&i| &self.endpoints[i])
    }
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }
    pub fn ready_at(&self, n: usize) -> Option<&Endpoint> {
        self.ready.get(n).map(|&i| &self.endpoints[i])
    }
    pub fn ring(&self) -> &HashRing {
        self.ring.get_or_init(|| HashRing::new(self.ready().map(|e| e.addr)))
    }
    /// The affinity token of each ready endpoint (indexed like [`ready_at`](Self::ready_at)),
    /// made by `token` on the first call for this endpoint set and kept with the pool (a
    /// reload that keeps the endpoints keeps them too).
    pub fn affinity_tokens(&self, token: impl Fn(SocketAddr) -> AffinityToken) -> &[AffinityToken] {
        self.tokens.get_or_init(|| self.ready().map(|e| token(e.addr)).collect())
    }
    /// A rotating start index for round-robin and tie breaking.
    pub fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
    /// The same pool (order, ready set, hash ring) with each endpoint's live state taken from
    /// `live` by address (its own when `live` has none); nothing is sorted or hashed again.
    fn relinked(&self, live: impl Fn(SocketAddr) -> Option<Arc<EndpointLive>>) -> Pool {
        let endpoints = self
            .endpoints
            .iter()
            .map(|ep| Endpoint { live: live(ep.addr).unwrap_or_else(|| ep.live.clone()), ..ep.clone() })
            .collect();
        Pool {
            endpoints,
            ready: self.ready.clone(),
            ring: self.ring.clone(),
            tokens: self.tokens.clone(),
            next: AtomicUsize::new(0),
        }
    }
}

/// A matched destination: which object it came from, which backend, its pool and settings.
#[derive(Debug)]
pub struct Route {
    /// `namespace/name` of the Ingress or Service that defined it (`static/upstream` for `--upstream`).
    pub id: String,
    /// `service:port` (or `static:upstream`): a bounded metric label.
    pub backend: String,
    pub pool: Pool,
    pub settings: RouteSettings,
}

/// A route with no endpoints and default settings, named `id` (unit tests of matching).
#[cfg(test)]
pub(crate) fn test_route(id: &str) -> Arc<Route> {
    Arc::new(Route { id: id.into(), backend: id.into(), pool: Pool::new(vec![]), settings: RouteSettings::default() })
}

/// One host/path rule of the table.
#[derive(Debug, Clone)]
pub struct Rule {
    pub host: HostMatch,
    pub path: PathMatch,
    pub route: Arc<Route>,
}

/// The immutable snapshot the proxy reads per new connection.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Set by [`RouteHandle::publish`].
    pub generation: u64,
    rules: Vec<Rule>,
    default_route: Option<Arc<Route>>,
    /// Every distinct route (rules' first, then the default); a route's index here is its slot.
    routes: Vec<Arc<Route>>,
    /// Slot of each rule's route, in rule order.
    rule_slots: Vec<usize>,
    default_slot: Option<usize>,
    /// Slots of the Services of Gateway API splits, by the address of their route (empty
    /// for tables without splits).
    split_slots: ahash::AHashMap<usize, usize>,
    index: matching::HostIndex,
}

/// A matched route and its slot in the table (the index of per-table data such as metrics).
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub route: &'a Arc<Route>,
    pub slot: usize,
}

impl RouteTable {
    /// Build a table; rules are ordered by precedence and indexed by host here, once.
    pub fn new(mut rules: Vec<Rule>, default_route: Option<Arc<Route>>) -> Self {
        rules.sort_by_cached_key(|r| {
            let conditions = r.route.settings.gateway.as_ref().map_or((false, 0, 0), |g| g.conditions.weight());
            matching::precedence_key(&r.host, &r.path, conditions)
        });
        Self::sorted(rules, default_route)
    }

    /// A table of rules already in precedence order: its distinct routes get their slots and
    /// the rules their host index here, once.
    pub(crate) fn sorted(rules: Vec<Rule>, default_route: Option<Arc<Route>>) -> Self {
        let mut routes: Vec<Arc<Route>> = Vec::with_capacity(rules.len() + 1);
        let mut by_ptr: ahash::AHashMap<*const Route, usize> = ahash::AHashMap::with_capacity(rules.len() + 1);
        let mut slot_of = |r: &Arc<Route>| {
            *by_ptr.entry(Arc::as_ptr(r)).or_insert_with(|| {
                routes.push(r.clone());
                routes.len() - 1
            })
        };
        let rule_slots = rules.iter().map(|r| slot_of(&r.route)).collect();
        let default_slot = default_route.as_ref().map(&mut slot_of);
        let mut split_slots = ahash::AHashMap::new();
        for rule in &rules {
            for (_, backend) in rule.route.settings.gateway.iter().flat_map(|g| &g.backends) {
                split_slots.insert(Arc::as_ptr(backend) as usize, slot_of(backend));
            }
        }
        let index = matching::HostIndex::new(&rules);
        Self { generation: 0, rules, default_route, routes, rule_slots, default_slot, split_slots, index }
    }

    /// Every request goes to one pool (sidecar mode, `--upstream`).
    pub fn single(route: Route) -> Self {
        Self::new(Vec::new(), Some(Arc::new(route)))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
    pub fn default_route(&self) -> Option<&Arc<Route>> {
        self.default_route.as_ref()
    }

    /// The route for a request's host (as sent, may carry a port) and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        self.lookup(host, path).map(|f| f.route)
    }

    /// Like [`find`](Self::find), with the route's slot. The host group is one hash lookup
    /// (exact host, then the one-label wildcard), whatever the number of hosts.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<Found<'_>> {
        self.lookup_request(host, path, false, &NoFacts)
    }

    /// Like [`lookup`](Self::lookup) for a request that came in on the TLS listener when
    /// `tls`, also checking the method, header and query conditions of Gateway API rules
    /// against `req` and skipping rules served only on plain HTTP when `tls` (rules of
    /// Ingresses cost one `Option` test).
    pub fn lookup_request(
        &self,
        host: Option<&str>,
        path: &str,
        tls: bool,
        req: &impl RequestFacts,
    ) -> Option<Found<'_>> {
        let at = |i: usize| Found { route: &self.rules[i].route, slot: self.rule_slots[i] };
        let applies =
            |r: &Rule| {
                r.path.matches(path)
                    && r.route.settings.gateway.as_ref().is_none_or(|g| {
                        !(tls && g.plain_only) && (g.conditions.is_empty() || g.conditions.matches(req))
                    })
            };
        match self.index.group(host).and_then(|g| self.rules[g.clone()].iter().position(applies).map(|i| g.start + i)) {
            Some(i) => Some(at(i)),
            None => self.default_route.as_ref().zip(self.default_slot).map(|(route, slot)| Found { route, slot }),
        }
    }

    /// The slot of a Service of a Gateway API split (one of a rule route's `gateway.backends`).
    pub fn split_slot(&self, route: &Arc<Route>) -> Option<usize> {
        self.split_slots.get(&(Arc::as_ptr(route) as usize)).copied()
    }

    /// Every distinct route of the table (rules first, then the default, then the Services
    /// of Gateway API splits), in slot order.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// A JSON-friendly view for the admin `/routes` endpoint.
    pub fn view(&self) -> TableView {
        let endpoints = |r: &Route| -> Vec<EndpointView> {
            r.pool
                .endpoints()
                .iter()
                .map(|e| EndpointView {
                    address: e.addr.to_string(),
                    hostname: e.hostname.as_deref().map(str::to_string),
                    state: e.state.label(),
                    draining: e.live.is_removed(),
                    target: e.target.clone(),
                    active_connections: e.live.active(),
                })
                .collect()
        };
        let route_view = |r: &Route| RouteView {
            id: r.id.clone(),
            backend: r.backend.clone(),
            policy: r.settings.policy.to_string(),
            idle_timeout_seconds: r.settings.idle_timeout.map(|d| d.as_secs_f64()),
            ping_interval_seconds: r.settings.ping_interval.map(|d| d.as_secs_f64()),
            drain_timeout_seconds: r.settings.drain_timeout.map(|d| d.as_secs_f64()),
            unsupported_annotations: r.settings.unsupported_annotations.clone(),
            refused: r.settings.refused.clone(),
            endpoints: endpoints(r),
            split: r
                .settings
                .gateway
                .iter()
                .flat_map(|g| &g.backends)
                .map(|(weight, b)| SplitView { weight: *weight, backend: b.backend.clone(), endpoints: endpoints(b) })
                .collect(),
            split_invalid_weight: r.settings.gateway.as_ref().map_or(0, |g| g.invalid_weight),
            affinity_cookie: (r.settings.affinity == Affinity::Cookie).then(|| r.settings.session_cookie.name.clone()),
            rebalance: r.settings.rebalance.enabled.then(|| RebalanceView {
                threshold: f64::from(r.settings.rebalance.threshold_milli) / 1000.0,
                max_rate: f64::from(r.settings.rebalance.max_rate_bp) / 10_000.0,
                min_age_seconds: r.settings.rebalance.min_age.as_secs_f64(),
            }),
            max_connection_age_seconds: r.settings.max_connection_age.map(|d| d.as_secs_f64()),
            client_policy: ClientPolicyView::of(&r.settings.client),
        };
        TableView {
            generation: self.generation,
            rules: self
                .rules
                .iter()
                .map(|r| RuleView { host: r.host.to_string(), path: r.path.to_string(), route: route_view(&r.route) })
                .collect(),
            default_route: self.default_route.as_deref().map(route_view),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TableView {
    pub generation: u64,
    pub rules: Vec<RuleView>,
    pub default_route: Option<RouteView>,
}

#[derive(Debug, Serialize)]
pub struct RuleView {
    pub host: String,
    pub path: String,
    pub route: RouteView,
}

#[derive(Debug, Serialize)]
pub struct RouteView {
    pub id: String,
    pub backend: String,
    pub policy: String,
    pub idle_timeout_seconds: Option<f64>,
    pub ping_interval_seconds: Option<f64>,
    pub drain_timeout_seconds: Option<f64>,
    /// ingress-nginx annotations of the object that wsingress does not implement.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unsupported_annotations: Vec<String>,
    /// Why every request gets 503 (an unenforced security annotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub endpoints: Vec<EndpointView>,
    /// A Gateway API rule's Services by weight (its own pool is then empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<SplitView>,
    /// The weight of the rule's invalid backendRefs, whose share is answered 500.
    #[serde(skip_serializing_if = "is_zero")]
    pub split_invalid_weight: u32,
    /// `wsingress.io/affinity: cookie`: the cookie's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity_cookie: Option<String>,
    /// `wsingress.io/rebalance: "on"` and its settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceView>,
    /// `wsingress.io/max-connection-age`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_age_seconds: Option<f64>,
    /// The per-client policy, when the route has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_policy: Option<ClientPolicyView>,
}

#[derive(Debug, Serialize)]
pub struct RebalanceView {
    /// Trigger and target, as a multiple of the pool mean.
    pub threshold: f64,
    /// Closes allowed per 10 s, as a fraction of the pool's tunnels.
    pub max_rate: f64,
    pub min_age_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct ClientPolicyView {
    /// Allowed networks; absent = every address not denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_source_ranges: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_source_ranges: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<u32>,
    /// Handshakes (and plain requests) per second per client, and the bucket's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_rate_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_rate: Option<u32>,
}

impl ClientPolicyView {
    /// `None` for a route without a per-client policy.
    fn of(p: &ClientPolicy) -> Option<Self> {
        if p.admits_all() && p.max_message_rate.is_none() {
            return None;
        }
        let list = |set: &cidr::CidrSet| set.networks().map(|c| c.to_string()).collect::<Vec<_>>();
        Some(Self {
            allow_source_ranges: p.source_ranges.allow.as_ref().map(list),
            deny_source_ranges: list(&p.source_ranges.deny),
            max_connections_per_client: p.max_connections_per_client,
            handshake_rate_per_second: p.handshake_rate.map(|r| r.per_second()),
            handshake_burst: p.handshake_rate.map(|r| r.burst),
            max_message_rate: p.max_message_rate,
        })
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
pub struct SplitView {
    pub weight: u32,
    pub backend: String,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub address: String,
    /// An ExternalName Service's DNS name (resolved at connect time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `ready`, `not_ready` or `terminating`.
    pub state: &'static str,
    /// Its tunnels are being drained (terminating, removed, or not ready for too long).
    pub draining: bool,
    pub target: Option<String>,
    pub active_connections: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str, ready: bool) -> Endpoint {
        Endpoint::new(s.parse().unwrap(), ready)
    }

    #[test]
    fn policy_parses_every_form_and_rejects_junk() {
        assert_eq!(Policy::parse("least-conn"), Ok(Policy::LeastConn));
        assert_eq!(Policy::parse(" round-robin "), Ok(Policy::RoundRobin));
        assert_eq!(Policy::parse("ip-hash"), Ok(Policy::IpHash));
        assert_eq!(Policy::parse("header-hash:X-User"), Ok(Policy::HeaderHash("x-user".into())));
        assert!(Policy::parse("header-hash:").is_err());
        assert!(Policy::parse("header-hash:bad header").is_err());
        assert!(Policy::parse("fastest").is_err());
        assert_eq!(Policy::parse("header-hash:x-user").unwrap().to_string(), "header-hash:x-user");
    }

    #[test]
    fn pool_is_canonical_and_only_ready_endpoints_rotate() {
        let pool = Pool::new(vec![ep("10.0.0.3:80", true), ep("10.0.0.1:80", false), ep("10.0.0.2:80", true)]);
        let addrs: Vec<String> = pool.endpoints().iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let ready: Vec<String> = pool.ready().map(|e| e.addr.to_string()).collect();
        assert_eq!(ready, ["10.0.0.2:80", "10.0.0.3:80"]);
    }

    #[test]
    fn origin_check_is_exact_and_case_insensitive() {
        let mut s = RouteSettings::default();
        assert!(s.origin_allowed(None));
        s.allowed_origins = vec!["https://app.example.com".into()];
        assert!(s.origin_allowed(Some("https://APP.example.com")));
        assert!(!s.origin_allowed(Some("https://evil.example.com")));
        assert!(!s.origin_allowed(None));
    }

    #[test]
    fn routes_view_shows_traffic_policy_only_where_set() {
        let mut settings = RouteSettings {
            affinity: Affinity::Cookie,
            rebalance: Rebalance { enabled: true, ..Rebalance::default() },
            max_connection_age: Some(Duration::from_secs(3600)),
            ..RouteSettings::default()
        };
        settings.session_cookie.name = "ws-sticky".into();
        settings.client.source_ranges.allow = Some(cidr::parse_list("10.0.0.0/8, ::ffff:192.168.1.0/120").0);
        settings.client.source_ranges.deny = cidr::parse_list("10.1.0.0/16").0;
        settings.client.max_connections_per_client = Some(20);
        settings.client.handshake_rate =
            Some(client_policy::Rate { tokens: 10, per: Duration::from_secs(1), burst: 50 });
        settings.client.max_message_rate = Some(100);
        let busy =
            Arc::new(Route { id: "default/busy".into(), backend: "b:80".into(), pool: Pool::new(vec![]), settings });
        let rules = vec![
            Rule { host: HostMatch::Exact("busy.test".into()), path: PathMatch::Prefix("/".into()), route: busy },
            Rule {
                host: HostMatch::Exact("plain.test".into()),
                path: PathMatch::Prefix("/".into()),
                route: test_route("default/plain"),
            },
        ];
        let view = serde_json::to_value(RouteTable::new(rules, None).view()).unwrap();
        let busy = &view["rules"][0]["route"];
        assert_eq!(busy["affinity_cookie"], "ws-sticky");
        assert_eq!(
            busy["rebalance"],
            serde_json::json!({"threshold": 1.25, "max_rate": 0.02, "min_age_seconds": 300.0})
        );
        assert_eq!(busy["max_connection_age_seconds"], 3600.0);
        let policy = &busy["client_policy"];
        assert_eq!(policy["allow_source_ranges"], serde_json::json!(["10.0.0.0/8", "192.168.1.0/24"]));
        assert_eq!(policy["deny_source_ranges"], serde_json::json!(["10.1.0.0/16"]));
        assert_eq!(policy["max_connections_per_client"], 20);
        assert_eq!(policy["handshake_rate_per_second"], 10.0);
        assert_eq!(policy["handshake_burst"], 50);
        assert_eq!(policy["max_message_rate"], 100);
        let plain = view["rules"][1]["route"].as_object().unwrap();
        for key in ["affinity_cookie", "rebalance", "max_connection_age_seconds", "client_policy"] {
            assert!(!plain.contains_key(key), "{key} on a route without it");
        }
    }
}
