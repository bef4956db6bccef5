//! The route model: an immutable `RouteTable` snapshot of hosts, paths, pools, endpoints,
//! balancing policy and per-route timeouts. Sources build tables; the proxy reads them.
//!
//! Everything here is plain data shared through `Arc`. The only mutable parts are the
//! per-endpoint live counters (`EndpointLive`), which are carried over from one table to
//! the next by [`handle::RouteHandle::publish`] so that least-conn counts and draining
//! survive a reload.

pub mod handle;
pub mod matching;
pub mod ring;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

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
    /// When an endpoint leaves the pool, close its tunnels with 1001 after this long. `None` = never.
    pub drain_timeout: Option<Duration>,
    /// Close with 1009 when one message (sum of its fragments) exceeds this. `None` = unlimited.
    pub max_message_bytes: Option<u64>,
    /// Live WebSocket tunnels allowed on this route; more get 503. `None` = unlimited.
    pub max_connections: Option<u32>,
    /// Allowed `Origin` values (exact, lower-case, or `*`). Empty = any origin.
    pub allowed_origins: Vec<String>,
    /// Refuse plain HTTP on this route (426 Upgrade Required).
    pub websocket_only: bool,
    /// When plain HTTP is redirected to https (308).
    pub ssl_redirect: SslRedirect,
    /// TLS towards the endpoints; `None` speaks plain TCP.
    pub backend_tls: Option<BackendTls>,
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
            max_message_bytes: None,
            max_connections: None,
            allowed_origins: Vec::new(),
            websocket_only: false,
            ssl_redirect: SslRedirect::default(),
            backend_tls: None,
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

/// Live state of one upstream address, shared by every table that contains it.
#[derive(Debug, Default)]
pub struct EndpointLive {
    active: AtomicUsize,
    /// Fired when the endpoint leaves every pool: its tunnels start their drain timers.
    removed: CancellationToken,
    /// Milliseconds since the process epoch until which connect failures keep it out of rotation.
    ejected_until_ms: AtomicU64,
}

impl EndpointLive {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
    /// Count one live connection until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
    pub fn removed(&self) -> &CancellationToken {
        &self.removed
    }
    pub fn is_removed(&self) -> bool {
        self.removed.is_cancelled()
    }
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }
    pub fn eject_until_ms(&self, until: u64) {
        self.ejected_until_ms.store(until, Ordering::Relaxed);
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

/// One upstream address. `ready == false` means serving-but-terminating: kept only so the
/// tunnels already on it are not drained early; it gets no new connections.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    /// Pod or target name, for `/routes` and logs only (never a metric label).
    pub target: Option<String>,
    pub live: Arc<EndpointLive>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, ready: bool) -> Self {
        Self { addr, ready, target: None, live: Arc::default() }
    }
}

/// The endpoints of one backend, in canonical order (sorted by address), with the hash
/// ring built once over the ready ones.
#[derive(Debug)]
pub struct Pool {
    endpoints: Vec<Endpoint>,
    /// Indexes into `endpoints` of the ready ones.
    ready: Vec<usize>,
    ring: HashRing,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(mut endpoints: Vec<Endpoint>) -> Self {
        endpoints.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.ready.cmp(&a.ready)));
        endpoints.dedup_by(|a, b| a.addr == b.addr);
        let ready: Vec<usize> = (0..endpoints.len()).filter(|&i| endpoints[i].ready).collect();
        let ring = HashRing::new(ready.iter().map(|&i| endpoints[i].addr));
        Self { endpoints, ready, ring, next: AtomicUsize::new(0) }
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
        &self.ring
    }
    /// A rotating start index for round-robin and tie breaking.
    pub fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
    /// The same pool (order, ready set, hash ring) with each endpoint's live state taken from
    /// `live` by address; nothing is sorted or hashed again.
    fn relinked(&self, live: &HashMap<SocketAddr, Arc<EndpointLive>>) -> Pool {
        let endpoints = self
            .endpoints
            .iter()
            .map(|ep| Endpoint { live: live.get(&ep.addr).cloned().unwrap_or_else(|| ep.live.clone()), ..ep.clone() })
            .collect();
        Pool { endpoints, ready: self.ready.clone(), ring: self.ring.clone(), next: AtomicUsize::new(0) }
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
}

impl RouteTable {
    /// Build a table; rules are ordered by precedence here, once.
    pub fn new(mut rules: Vec<Rule>, default_route: Option<Arc<Route>>) -> Self {
        rules.sort_by_key(|r| matching::precedence_key(&r.host, &r.path));
        Self { generation: 0, rules, default_route }
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
        matching::find(&self.rules, host, path).or(self.default_route.as_ref())
    }

    /// Every distinct route of the table (rules first, then the default).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        let mut seen: Vec<*const Route> = Vec::new();
        self.rules.iter().map(|r| &r.route).chain(self.default_route.iter()).filter(move |r| {
            let p = Arc::as_ptr(r);
            if seen.contains(&p) {
                false
            } else {
                seen.push(p);
                true
            }
        })
    }

    /// Swap each endpoint's live state for the one of the same address in `previous`,
    /// so counters and drain signals carry over a reload.
    pub(crate) fn adopt_live(self, previous: &RouteTable) -> RouteTable {
        // One live state per address: the previous table's first, else the first in this one.
        let mut live: HashMap<SocketAddr, Arc<EndpointLive>> = HashMap::new();
        for r in previous.routes().chain(self.routes()) {
            for ep in r.pool.endpoints() {
                live.entry(ep.addr).or_insert_with(|| ep.live.clone());
            }
        }
        // Routes are shared between rules; rebuild each once and remap by pointer.
        let mut remap: Vec<(*const Route, Arc<Route>)> = Vec::new();
        let mut convert = |r: &Arc<Route>| -> Arc<Route> {
            let p = Arc::as_ptr(r);
            if let Some((_, n)) = remap.iter().find(|(q, _)| *q == p) {
                return n.clone();
            }
            let pool = r.pool.relinked(&live);
            let n =
                Arc::new(Route { id: r.id.clone(), backend: r.backend.clone(), pool, settings: r.settings.clone() });
            remap.push((p, n.clone()));
            n
        };
        let rules = self
            .rules
            .iter()
            .map(|rule| Rule { host: rule.host.clone(), path: rule.path.clone(), route: convert(&rule.route) })
            .collect();
        let default_route = self.default_route.as_ref().map(&mut convert);
        RouteTable { generation: self.generation, rules, default_route }
    }

    /// Addresses present in `self` but in no pool of `next`.
    pub(crate) fn removed_in(&self, next: &RouteTable) -> Vec<Arc<EndpointLive>> {
        let keep: std::collections::HashSet<SocketAddr> =
            next.routes().flat_map(|r| r.pool.endpoints().iter().map(|e| e.addr)).collect();
        let mut out: Vec<Arc<EndpointLive>> = Vec::new();
        for r in self.routes() {
            for ep in r.pool.endpoints() {
                if !keep.contains(&ep.addr) && !out.iter().any(|l| Arc::ptr_eq(l, &ep.live)) {
                    out.push(ep.live.clone());
                }
            }
        }
        out
    }

    /// A JSON-friendly view for the admin `/routes` endpoint.
    pub fn view(&self) -> TableView {
        let route_view = |r: &Route| RouteView {
            id: r.id.clone(),
            backend: r.backend.clone(),
            policy: r.settings.policy.to_string(),
            idle_timeout_seconds: r.settings.idle_timeout.map(|d| d.as_secs_f64()),
            ping_interval_seconds: r.settings.ping_interval.map(|d| d.as_secs_f64()),
            drain_timeout_seconds: r.settings.drain_timeout.map(|d| d.as_secs_f64()),
            endpoints: r
                .pool
                .endpoints()
                .iter()
                .map(|e| EndpointView {
                    address: e.addr.to_string(),
                    state: if e.ready { "ready" } else { "terminating" },
                    target: e.target.clone(),
                    active_connections: e.live.active(),
                })
                .collect(),
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
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub address: String,
    pub state: &'static str,
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
    fn reload_keeps_live_state_and_reports_removed_endpoints() {
        let route = |eps: Vec<Endpoint>| Route {
            id: "default/chat".into(),
            backend: "chat:80".into(),
            pool: Pool::new(eps),
            settings: RouteSettings::default(),
        };
        let old = RouteTable::single(route(vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)]));
        let live1 = old.default_route().unwrap().pool.endpoints()[0].live.clone();
        let _guard = live1.track();
        let new = RouteTable::single(route(vec![ep("10.0.0.1:80", true), ep("10.0.0.3:80", true)]));
        let removed = old.removed_in(&new);
        let new = new.adopt_live(&old);
        let adopted = &new.default_route().unwrap().pool.endpoints()[0];
        assert!(Arc::ptr_eq(&adopted.live, &live1));
        assert_eq!(adopted.live.active(), 1);
        assert_eq!(removed.len(), 1);
        assert!(Arc::ptr_eq(&removed[0], &old.default_route().unwrap().pool.endpoints()[1].live));
    }
}
