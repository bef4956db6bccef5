//! Every metric family, registered on an owned registry (no globals, so each test and each
//! app instance has its own). Labels are bounded: route (`namespace/name`), backend
//! (`service:port`), direction, result, reason, state, close-code class; never a client
//! address, and an endpoint (pod name, else address) only in `wsingress_endpoint_tunnels`, for
//! rebalancing routes, bounded by their pool size. The data path resolves its label handles
//! once per connection ([`Metrics::connection`]) and then only touches atomics.
//!
//! The same module owns the log side of observability: [`init_tracing`] (the subscriber,
//! `RUST_LOG` filter, `--log-format json|text`) and the two access-log lines
//! ([`WebSocketAccess`], [`HttpAccess`]) whose field names docs/observability.md documents.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ahash::{AHashMap, AHashSet};
use arc_swap::ArcSwapOption;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::routes::{EndpointState, Route, RouteTable};

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// Route label for requests that matched no route (unknown host or path).
pub const UNMATCHED: &str = "unmatched";

/// Which way bytes flowed through a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientToBackend => "client_to_backend",
            Self::BackendToClient => "backend_to_client",
        }
    }
}

/// Who sent the first Close frame (or dropped the TCP connection) of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    Client,
    Backend,
    Proxy,
}

impl Initiator {
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Backend => "backend",
            Self::Proxy => "proxy",
        }
    }
}

/// Bounded label for a close code: the registered codes by number, application ranges
/// by class, `none` for a Close without a code and `abnormal` when no Close frame was seen.
pub fn close_code_class(code: Option<u16>, close_frame_seen: bool) -> &'static str {
    CLOSE_CLASSES[close_class_index(code, close_frame_seen)]
}

/// Every close-code class label, indexed by [`close_class_index`].
const CLOSE_CLASSES: [&str; 17] = [
    "abnormal", "none", "1000", "1001", "1002", "1003", "1007", "1008", "1009", "1010", "1011", "1012", "1013", "1014",
    "3xxx", "4xxx", "invalid",
];

fn close_class_index(code: Option<u16>, close_frame_seen: bool) -> usize {
    if !close_frame_seen {
        return 0;
    }
    match code {
        None => 1,
        Some(c @ 1000..=1003) => 2 + usize::from(c - 1000),
        Some(c @ 1007..=1014) => 6 + usize::from(c - 1007),
        Some(3000..=3999) => 14,
        Some(4000..=4999) => 15,
        Some(_) => 16,
    }
}

/// Result label of one upgrade attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeResult {
    /// 101 from the backend, tunnel established.
    Ok,
    /// Invalid upgrade request (400), forbidden origin (403), limits (429/503), an invalid
    /// Gateway API backendRef (500): no backend contacted.
    Rejected,
    /// The backend answered the handshake with something other than 101.
    BackendRefused,
    /// Connect or handshake failure (502).
    BackendError,
    /// No complete handshake answer in time (504).
    Timeout,
    /// No ready endpoint (503).
    NoEndpoints,
}

impl UpgradeResult {
    pub const ALL: [Self; 6] =
        [Self::Ok, Self::Rejected, Self::BackendRefused, Self::BackendError, Self::Timeout, Self::NoEndpoints];

    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
            Self::BackendRefused => "backend_refused",
            Self::BackendError => "backend_error",
            Self::Timeout => "timeout",
            Self::NoEndpoints => "no_endpoints",
        }
    }
}

/// Handshake latency buckets: 100 µs to 10 s.
const HANDSHAKE_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Connection lifetime buckets: 100 ms to 24 h.
const LIFETIME_BUCKETS: &[f64] =
    &[0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0];
/// Plain HTTP request duration buckets: 500 µs to 30 s.
const REQUEST_BUCKETS: &[f64] = &[0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections_active: IntGaugeVec,
    pub upgrades: IntCounterVec,
    pub handshake_seconds: HistogramVec,
    pub connection_seconds: HistogramVec,
    pub messages: IntCounterVec,
    pub bytes: IntCounterVec,
    pub closes: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub policy_refusals: IntCounterVec,
    pub endpoints: IntGaugeVec,
    pub config_generation: IntGauge,
    pub config_updates: IntCounterVec,
    pub config_warnings: IntGauge,
    pub build_info: IntGaugeVec,
    pub client_connections: IntGauge,
    pub connections_rejected: IntCounterVec,
    /// Per-route handles of the table generation most recently asked for.
    table_handles: ArcSwapOption<TableMetrics>,
    build_lock: Mutex<()>,
    pub controller_watch_errors: IntCounterVec,
    pub controller_last_sync: GaugeVec,
    pub controller_leader: IntGauge,
    pub routes_conflicts: IntGauge,
    /// The routes last published (by address; held, so an address is not reused), so a
    /// publish updates only the series of routes that changed.
    published_routes: std::sync::Mutex<AHashMap<usize, Arc<Route>>>,
    pub tls_handshakes: IntCounterVec,
    pub tls_handshake_seconds: Histogram,
    pub tls_certificate_expiry: IntGaugeVec,
    pub rebalance_closes: IntCounterVec,
    pub endpoint_tunnels: IntGaugeVec,
    /// Every family as registered (the registry's `gather()` omits vectors with no series yet).
    docs: Vec<FamilyDoc>,
}

/// One family as documented in the README's metrics table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyDoc {
    pub name: String,
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

impl Metrics {
    /// Register every family on a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let docs = RefCell::new(Vec::new());
        let register = |c: Box<dyn Collector>, kind: &'static str| {
            for d in c.desc() {
                docs.borrow_mut().push(FamilyDoc {
                    name: d.fq_name.clone(),
                    kind,
                    labels: d.variable_labels.clone(),
                    help: d.help.clone(),
                });
            }
            registry.register(c)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            register(Box::new(c.clone()), "counter")?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            register(Box::new(g.clone()), "gauge")?;
            Ok(g)
        };
        let histogram =
            |name: &str, help: &str, labels: &[&str], buckets: &[f64]| -> Result<HistogramVec, prometheus::Error> {
                let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)?;
                register(Box::new(h.clone()), "histogram")?;
                Ok(h)
            };
        let config_generation =
            IntGauge::new("wsingress_config_generation", "Generation of the route table currently serving.")?;
        register(Box::new(config_generation.clone()), "gauge")?;
        let config_warnings = IntGauge::new(
            "wsingress_config_warnings",
            "Configuration warnings (bad annotations, missing Services, ...) in the last translation.",
        )?;
        register(Box::new(config_warnings.clone()), "gauge")?;
        let client_connections = IntGauge::new(
            "wsingress_client_connections",
            "Client connections open on the proxy listeners (plain HTTP, upgrades in progress and tunnels).",
        )?;
        register(Box::new(client_connections.clone()), "gauge")?;
        let controller_leader = IntGauge::new(
            "wsingress_controller_leader",
            "1 while this replica holds the leader-election Lease (writes Ingress status and Events), else 0.",
        )?;
        register(Box::new(controller_leader.clone()), "gauge")?;
        let routes_conflicts = IntGauge::new(
            "wsingress_routes_conflicts",
            "Host and path rules lost to another object in the last translation (each also a RuleConflict Event).",
        )?;
        register(Box::new(routes_conflicts.clone()), "gauge")?;
        let controller_last_sync = GaugeVec::new(
            Opts::new(
                "wsingress_controller_last_sync_timestamp_seconds",
                "Unix time each watched kind's cache was last known in sync with the API server: its last complete (re-)list or the last change it received.",
            ),
            &["kind"],
        )?;
        register(Box::new(controller_last_sync.clone()), "gauge")?;
        let tls_handshake_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wsingress_tls_handshake_duration_seconds",
                "TLS handshakes on the TLS listener, from the first byte to the handshake's end (successful ones).",
            )
            .buckets(HANDSHAKE_BUCKETS.to_vec()),
        )?;
        register(Box::new(tls_handshake_seconds.clone()), "histogram")?;
        let mut m = Self {
            connections_active: gauge(
                "wsingress_websocket_connections_active",
                "WebSocket tunnels currently open.",
                &["route", "backend"],
            )?,
            upgrades: counter(
                "wsingress_websocket_upgrades_total",
                "WebSocket upgrade requests by result: ok, rejected (400/403/429, or 500 for an invalid Gateway API backendRef; no backend contacted), backend_refused (non-101 answer), backend_error (502), timeout (504), no_endpoints (503).",
                &["route", "result"],
            )?,
            handshake_seconds: histogram(
                "wsingress_websocket_handshake_duration_seconds",
                "From the client's upgrade request to the 101 sent back (includes backend connect).",
                &["route"],
                HANDSHAKE_BUCKETS,
            )?,
            connection_seconds: histogram(
                "wsingress_websocket_connection_duration_seconds",
                "Lifetime of WebSocket tunnels, from 101 to close.",
                &["route", "backend"],
                LIFETIME_BUCKETS,
            )?,
            messages: counter(
                "wsingress_websocket_messages_total",
                "Complete WebSocket data messages relayed (control frames excluded), by direction: client_to_backend, backend_to_client.",
                &["route", "backend", "direction"],
            )?,
            bytes: counter(
                "wsingress_websocket_bytes_total",
                "Bytes relayed through WebSocket tunnels (frames with headers, as on the wire), by direction: client_to_backend, backend_to_client.",
                &["route", "backend", "direction"],
            )?,
            closes: counter(
                "wsingress_websocket_closes_total",
                "Closed WebSocket tunnels by who closed first (client, backend, proxy) and close code: 1000-1014 by number, 3xxx, 4xxx, none (Close without code), invalid, abnormal (no Close frame).",
                &["route", "initiator", "code"],
            )?,
            http_requests: counter(
                "wsingress_http_requests_total",
                "Plain HTTP requests by status class (1xx to 5xx).",
                &["route", "status_class"],
            )?,
            http_request_seconds: histogram(
                "wsingress_http_request_duration_seconds",
                "Plain HTTP request duration until the response head.",
                &["route"],
                REQUEST_BUCKETS,
            )?,
            upstream_errors: counter(
                "wsingress_upstream_errors_total",
                "Failures talking to backends by reason: connect_refused, connect_error, connect_timeout, response_timeout, bad_handshake, backend_io, tls_error (TLS to a backend failed: handshake or certificate).",
                &["route", "backend", "reason"],
            )?,
            policy_refusals: counter(
                "wsingress_policy_refusals_total",
                "Clients refused by a route's per-client policy, by reason: source_range (403), connections_per_client (429), handshake_rate (429 with Retry-After), message_rate (tunnel closed with 1008).",
                &["route", "reason"],
            )?,
            endpoints: gauge(
                "wsingress_endpoints",
                "Endpoints per backend pool by state: ready (gets new tunnels), not_ready (keeps its tunnels and live state, gets no new ones), terminating (its tunnels are drained, gets no new ones).",
                &["route", "backend", "state"],
            )?,
            config_generation,
            config_updates: counter(
                "wsingress_config_updates_total",
                "Route table updates by source and result: applied, rejected (the last good table keeps serving).",
                &["source", "result"],
            )?,
            config_warnings,
            build_info: gauge("wsingress_build_info", "Build information; always 1.", &["version"])?,
            client_connections,
            connections_rejected: counter(
                "wsingress_connections_rejected_total",
                "Client connections refused before their request was read, by reason: max_connections (--max-connections reached; answered 503), proxy_protocol_untrusted (a PROXY header from a peer outside --proxy-protocol-from), proxy_protocol_missing (a trusted peer sent no PROXY header), proxy_protocol_malformed, proxy_protocol_timeout (no complete header within --header-timeout); PROXY protocol refusals are closed without an answer.",
                &["reason"],
            )?,
            table_handles: ArcSwapOption::empty(),
            build_lock: Mutex::new(()),
            controller_watch_errors: counter(
                "wsingress_controller_watch_errors_total",
                "Failed list or watch requests of the controller's caches by kind (each retried with backoff; the last good routes keep serving).",
                &["kind"],
            )?,
            controller_last_sync,
            controller_leader,
            routes_conflicts,
            published_routes: std::sync::Mutex::default(),
            tls_handshakes: counter(
                "wsingress_tls_handshakes_total",
                "TLS handshakes on the TLS listener by result: ok, timeout, plaintext_http (answered 400), eof (closed mid-handshake), no_certificate, unsupported_alpn (no http/1.1 offered), certificate_rejected (the client refused our certificate), bad_certificate, incompatible (no common version or cipher), protocol_error, io_error.",
                &["result"],
            )?,
            tls_handshake_seconds,
            tls_certificate_expiry: gauge(
                "wsingress_tls_certificate_expiry_timestamp_seconds",
                "Expiry (notAfter, Unix seconds) of each certificate in use, by source: namespace/name of its Secret, file:PATH for --tls-cert, self-signed for the generated default.",
                &["secret"],
            )?,
            rebalance_closes: counter(
                "wsingress_rebalance_closes_total",
                "Tunnels closed with 1001 `rebalancing` by wsingress.io/rebalance, counted when the Close went out on the client's connection (closes at wsingress.io/max-connection-age count only in wsingress_websocket_closes_total).",
                &["route"],
            )?,
            endpoint_tunnels: gauge(
                "wsingress_endpoint_tunnels",
                "Live tunnels per endpoint of routes with wsingress.io/rebalance on (endpoint: the pod name, else its address; a series per endpoint of the pool, removed when the endpoint leaves). For HPA or KEDA.",
                &["route", "backend", "endpoint"],
            )?,
            registry,
            docs: Vec::new(),
        };
        m.docs = docs.into_inner();
        m.docs.sort_by(|a, b| a.name.cmp(&b.name));
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(m)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on invalid metric data, which registration rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Handles for one tunnel of `route`/`backend`, resolved now (the proxy uses the handles
    /// resolved once per table instead: [`Metrics::for_table`]).
    pub fn connection(&self, route: &str, backend: &str) -> ConnMetrics {
        Arc::new(RouteMetrics::new(self, route, backend)).tunnel()
    }

    /// One route's handles, resolved now (for a table that was never published).
    pub fn route_handles(&self, route: &str, backend: &str) -> Arc<RouteMetrics> {
        Arc::new(RouteMetrics::new(self, route, backend))
    }

    /// Every route's handles for `table`, resolved once per table generation: the data path
    /// then touches only atomics, never a label lookup.
    pub fn for_table(&self, table: &RouteTable) -> Arc<TableMetrics> {
        if let Some(cached) = self.table_handles.load_full()
            && cached.generation == table.generation
            && cached.routes.len() == table.routes().len()
        {
            return cached;
        }
        let _one_builder = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cached) = self.table_handles.load_full()
            && cached.generation == table.generation
            && cached.routes.len() == table.routes().len()
        {
            return cached;
        }
        // Handles of routes the previous generation had already are reused, not looked up again.
        let previous = self.table_handles.load_full();
        let reuse: std::collections::HashMap<(&str, &str), &Arc<RouteMetrics>> =
            previous.iter().flat_map(|t| t.routes.iter()).map(|r| ((&*r.route, &*r.backend), r)).collect();
        let built = Arc::new(TableMetrics {
            generation: table.generation,
            routes: table
                .routes()
                .map(|r| match reuse.get(&(r.id.as_str(), r.backend.as_str())) {
                    Some(h) => Arc::clone(h),
                    None => Arc::new(RouteMetrics::new(self, &r.id, &r.backend)),
                })
                .collect(),
        });
        let newest = self.table_handles.load().as_ref().is_none_or(|c| c.generation <= table.generation);
        if newest {
            self.table_handles.store(Some(built.clone()));
        }
        built
    }

    pub fn upgrade(&self, route: &str, result: UpgradeResult) {
        self.upgrades.with_label_values(&[route, result.label()]).inc();
    }

    pub fn handshake(&self, route: &str, elapsed: Duration) {
        self.handshake_seconds.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }

    pub fn http_request(&self, route: &str, status: u16, elapsed: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests.with_label_values(&[route, class]).inc();
        self.http_request_seconds.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, route: &str, backend: &str, reason: &'static str) {
        self.upstream_errors.with_label_values(&[route, backend, reason]).inc();
    }

    /// Record a newly published table: generation, update result and endpoint counts.
    ///
    /// Every route of the table also gets its zero-valued series (active connections,
    /// successful upgrades), so dashboards and `rate()` see a route before its first tunnel.
    pub fn table_published(&self, source: &str, table: &RouteTable, warnings: usize) {
        self.config_generation.set(table.generation as i64);
        self.config_updates.with_label_values(&[source, "applied"]).inc();
        self.config_warnings.set(warnings as i64);
        const STATES: [EndpointState; 3] = [EndpointState::Ready, EndpointState::NotReady, EndpointState::Terminating];
        let mut published = self.published_routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut previous = std::mem::take(&mut *published);
        for route in table.routes() {
            let key = Arc::as_ptr(route) as usize;
            // The same route as last time: its series are right.
            if let Some(same) = previous.remove(&key) {
                published.insert(key, same);
                continue;
            }
            let mut counts = [0i64; 3];
            for ep in route.pool.endpoints() {
                counts[ep.state as usize] += 1;
            }
            for state in STATES {
                let series = self.endpoints.with_label_values(&[&route.id, &route.backend, state.label()]);
                series.set(counts[state as usize]);
            }
            self.connections_active.with_label_values(&[&route.id, &route.backend]);
            self.upgrades.with_label_values(&[&route.id, UpgradeResult::Ok.label()]);
            published.insert(key, route.clone());
        }
        // Routes gone from the table lose their endpoint series (unless a route of the new
        // table carries the same labels).
        if !previous.is_empty() {
            let now: AHashSet<(&str, &str)> = table.routes().map(|r| (r.id.as_str(), r.backend.as_str())).collect();
            for gone in previous.values() {
                if !now.contains(&(gone.id.as_str(), gone.backend.as_str())) {
                    for state in STATES {
                        let _ = self.endpoints.remove_label_values(&[&gone.id, &gone.backend, state.label()]);
                    }
                }
            }
        }
    }

    /// A list or watch of `kind` failed (it is retried).
    pub fn watch_error(&self, kind: &str) {
        self.controller_watch_errors.with_label_values(&[kind]).inc();
    }

    /// `kind`'s cache is in sync now (a list completed or a change arrived).
    pub fn watch_synced(&self, kind: &str) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.controller_last_sync.with_label_values(&[kind]).set(now.as_secs_f64());
    }

    /// One TLS handshake on the TLS listener: `result` is `ok` or a `TlsError` label.
    pub fn tls_handshake(&self, result: &str, elapsed: Duration) {
        self.tls_handshakes.with_label_values(&[result]).inc();
        if result == "ok" {
            self.tls_handshake_seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// The certificates now in use, as `(source label, notAfter)`: replaces the expiry series.
    pub fn tls_certificates<'a>(&self, certificates: impl IntoIterator<Item = (String, i64)> + 'a) {
        self.tls_certificate_expiry.reset();
        for (source, not_after) in certificates {
            self.tls_certificate_expiry.with_label_values(&[&source]).set(not_after);
        }
    }

    /// A source produced no new table (parse error, API error): the last good one keeps serving.
    pub fn table_rejected(&self, source: &str) {
        self.config_updates.with_label_values(&[source, "rejected"]).inc();
    }

    /// Name, type, labels and help of every registered family (sorted by name), including
    /// families that have no series yet. Source of the README's metrics table.
    pub fn families(&self) -> Vec<FamilyDoc> {
        self.docs.clone()
    }
}

/// The README's metrics table, generated from [`Metrics::families`]: one row per family
/// with its type, labels and meaning (the family's help text).
pub fn readme_table(metrics: &Metrics) -> String {
    let mut out = String::from("| family | type | labels | meaning |\n|---|---|---|---|\n");
    for f in metrics.families() {
        let labels = if f.labels.is_empty() {
            "—".to_string()
        } else {
            f.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
        };
        let help = f.help.replace('|', "\\|");
        // Writing into a String cannot fail.
        let _ = writeln!(out, "| `{}` | {} | {} | {} |", f.name, f.kind, labels, help);
    }
    out
}

/// Every route's handles for one table generation, indexed by route slot.
#[derive(Debug)]
pub struct TableMetrics {
    generation: u64,
    routes: Vec<Arc<RouteMetrics>>,
}

impl TableMetrics {
    /// The handles of the route in `slot` of the table these were built for.
    pub fn route(&self, slot: usize) -> Option<&Arc<RouteMetrics>> {
        self.routes.get(slot)
    }
}

/// The handles of one route, resolved once: what a tunnel keeps of its route (the ids for
/// logs, and counters), instead of the route itself.
#[derive(Debug)]
pub struct RouteMetrics {
    pub route: Arc<str>,
    pub backend: Arc<str>,
    upgrades: [IntCounter; 6],
    handshake: Histogram,
    active: IntGauge,
    /// Indexed by direction: 0 client→backend, 1 backend→client.
    messages: [IntCounter; 2],
    bytes: [IntCounter; 2],
    duration: Histogram,
    http: [IntCounter; 5],
    http_seconds: Histogram,
    closes: IntCounterVec,
    /// Rebalancing closes sent to clients.
    rebalance_closes: IntCounter,
    /// Close counters by initiator and close class, resolved on first use.
    close_handles: [[OnceLock<IntCounter>; CLOSE_CLASSES.len()]; 3],
    upstream_errors: IntCounterVec,
    policy_refusals: IntCounterVec,
}

impl RouteMetrics {
    fn new(m: &Metrics, route: &str, backend: &str) -> Self {
        let dir = |v: &IntCounterVec, d: Direction| v.with_label_values(&[route, backend, d.label()]);
        let class = |c: &str| m.http_requests.with_label_values(&[route, c]);
        Self {
            route: route.into(),
            backend: backend.into(),
            upgrades: UpgradeResult::ALL.map(|r| m.upgrades.with_label_values(&[route, r.label()])),
            handshake: m.handshake_seconds.with_label_values(&[route]),
            active: m.connections_active.with_label_values(&[route, backend]),
            messages: [dir(&m.messages, Direction::ClientToBackend), dir(&m.messages, Direction::BackendToClient)],
            bytes: [dir(&m.bytes, Direction::ClientToBackend), dir(&m.bytes, Direction::BackendToClient)],
            duration: m.connection_seconds.with_label_values(&[route, backend]),
            http: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(class),
            http_seconds: m.http_request_seconds.with_label_values(&[route]),
            closes: m.closes.clone(),
            rebalance_closes: m.rebalance_closes.with_label_values(&[route]),
            close_handles: Default::default(),
            upstream_errors: m.upstream_errors.clone(),
            policy_refusals: m.policy_refusals.clone(),
        }
    }

    pub fn upgrade(&self, result: UpgradeResult) {
        self.upgrades[result as usize].inc();
    }

    pub fn handshake(&self, elapsed: Duration) {
        self.handshake.observe(elapsed.as_secs_f64());
    }

    pub fn http_request(&self, status: u16, elapsed: Duration) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.http[i].inc();
        self.http_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors.with_label_values(&[&self.route, &self.backend, reason]).inc();
    }

    /// A client refused by this route's per-client policy (`reason` from a fixed set).
    pub fn policy_refusal(&self, reason: &'static str) {
        self.policy_refusals.with_label_values(&[&self.route, reason]).inc();
    }

    /// One Close 1001 `rebalancing` sent to a client.
    pub fn rebalance_close(&self) {
        self.rebalance_closes.inc();
    }

    /// Count a tunnel open until the returned handles drop.
    pub fn tunnel(self: Arc<Self>) -> ConnMetrics {
        self.active.inc();
        ConnMetrics { route: self }
    }
}

/// Handles for one tunnel. Dropping it decrements the active gauge.
#[derive(Debug)]
pub struct ConnMetrics {
    route: Arc<RouteMetrics>,
}

impl ConnMetrics {
    /// The route's handles and ids.
    pub fn route(&self) -> &RouteMetrics {
        &self.route
    }

    pub fn add(&self, dir: Direction, messages: u64, bytes: u64) {
        let i = dir as usize;
        if messages > 0 {
            self.route.messages[i].inc_by(messages);
        }
        if bytes > 0 {
            self.route.bytes[i].inc_by(bytes);
        }
    }

    /// Called once when the tunnel ends.
    pub fn closed(&self, initiator: Initiator, code: Option<u16>, close_frame_seen: bool, lifetime: Duration) {
        let class = close_class_index(code, close_frame_seen);
        let r = &self.route;
        // The lifetime first: a scrape gathers families by name (closes_total, then
        // connection_duration_seconds, then connections_active), so a close it sees always
        // comes with its lifetime, and a tunnel no longer active with both.
        r.duration.observe(lifetime.as_secs_f64());
        r.close_handles[initiator as usize][class]
            .get_or_init(|| r.closes.with_label_values(&[&r.route, initiator.label(), CLOSE_CLASSES[class]]))
            .inc();
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.route.active.dec();
    }
}

/// Target of both access-log lines: `RUST_LOG=info,wsingress::access=off` silences them,
/// `RUST_LOG=warn,wsingress::access=info` keeps only them.
pub const ACCESS_LOG_TARGET: &str = "wsingress::access";

/// Install the process-wide tracing subscriber: level filter from `RUST_LOG` (default
/// `info`), one line per event on stdout, as JSON objects (fields at the top level) or as
/// human-readable text. A second call is a no-op (tests may call it freely).
///
/// Lines are written synchronously, one `write` each: measured against a logging thread
/// (tracing-appender), which spun and woke on every line and cost more CPU per tunnel than
/// the writes it saved.
pub fn init_tracing(format: LogFormat) {
    let (filter, bad_filter) = env_filter();
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let installed = tracing::subscriber::set_global_default(subscriber(format, filter, std::io::stdout, ansi)).is_ok();
    if installed && let Some(e) = bad_filter {
        tracing::warn!(error = %e, "RUST_LOG is not a valid filter; logging at info");
    }
}

/// The `RUST_LOG` filter, or `info` (and the parse error) when it is unset or invalid.
fn env_filter() -> (tracing_subscriber::EnvFilter, Option<String>) {
    use tracing_subscriber::EnvFilter;
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
        },
        _ => (EnvFilter::new("info"), None),
    }
}

/// The subscriber [`init_tracing`] installs, writing to `writer` (tests capture it).
fn subscriber<W>(
    format: LogFormat,
    filter: tracing_subscriber::EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(true);
    match format {
        LogFormat::Json => {
            Box::new(builder.json().flatten_event(true).with_current_span(false).with_span_list(false).finish())
        }
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
    }
}

/// Milliseconds with microsecond resolution, for `duration_ms`.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The access-log line written when a WebSocket tunnel ends (one per tunnel).
/// "in" is client→backend, "out" is backend→client, counted as the metrics count them.
#[derive(Debug, Clone)]
pub struct WebSocketAccess<'a> {
    /// Route id (`namespace/name`).
    pub route: &'a str,
    /// Backend (`service:port`).
    pub backend: &'a str,
    /// The endpoint (pod address) the tunnel went to.
    pub endpoint: SocketAddr,
    /// The client: the TCP peer, or the address a trusted proxy named in X-Forwarded-For.
    pub client: IpAddr,
    /// From the 101 to the end of the tunnel.
    pub duration: Duration,
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Code of the first Close frame; `None` when it had no code or no Close was seen.
    pub close_code: Option<u16>,
    /// Whether a Close frame started the end (else the close is `abnormal`).
    pub close_frame_seen: bool,
    pub initiator: Initiator,
    /// Why the tunnel ended (`closed`, `disconnected`, `idle_timeout`, `pong_timeout`,
    /// `drained`, `shutdown`, `protocol_error`, `message_too_big`).
    pub reason: &'static str,
}

impl WebSocketAccess<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            kind = "websocket",
            route = self.route,
            backend = self.backend,
            endpoint = %self.endpoint,
            client = %self.client,
            duration_ms = millis(self.duration),
            msgs_in = self.msgs_in,
            msgs_out = self.msgs_out,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            close_code = self.close_code,
            close_class = close_code_class(self.close_code, self.close_frame_seen),
            initiator = self.initiator.label(),
            reason = self.reason,
            "websocket closed"
        );
    }
}

/// The access-log line written for each plain HTTP request, and for each upgrade request
/// that did not become a tunnel (refused by wsingress or by the backend).
#[derive(Debug, Clone)]
pub struct HttpAccess<'a> {
    /// Route id, or [`UNMATCHED`].
    pub route: &'a str,
    pub method: &'a str,
    /// The path only: query strings often carry tokens and are never logged.
    pub path: &'a str,
    pub status: u16,
    /// From the request head to the response head.
    pub duration: Duration,
    /// The client: the TCP peer, or the address a trusted proxy named in X-Forwarded-For.
    pub client: IpAddr,
    /// The endpoint the request went to, when one was chosen.
    pub endpoint: Option<SocketAddr>,
    /// A WebSocket upgrade request that got no tunnel (`kind="upgrade"`).
    pub upgrade: bool,
    /// Why wsingress answered with an error, when it did.
    pub error: Option<&'a dyn std::error::Error>,
}

impl HttpAccess<'_> {
    pub fn emit(&self) {
        let (kind, message) = if self.upgrade { ("upgrade", "upgrade refused") } else { ("http", "http request") };
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            kind,
            route = self.route,
            method = self.method,
            path = self.path,
            status = self.status,
            duration_ms = millis(self.duration),
            client = %self.client,
            endpoint = self.endpoint.map(tracing::field::display),
            error = self.error.map(tracing::field::display),
            "{message}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_handles_count_and_release() {
        let m = Metrics::new().unwrap();
        {
            let c = m.connection("default/chat", "chat:80");
            c.add(Direction::ClientToBackend, 2, 30);
            c.add(Direction::BackendToClient, 1, 10);
            assert_eq!(m.connections_active.with_label_values(&["default/chat", "chat:80"]).get(), 1);
            c.closed(Initiator::Client, Some(1000), true, Duration::from_secs(2));
        }
        assert_eq!(m.connections_active.with_label_values(&["default/chat", "chat:80"]).get(), 0);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            r#"wsingress_websocket_messages_total{backend="chat:80",direction="client_to_backend",route="default/chat"} 2"#
        ));
        assert!(
            text.contains(r#"wsingress_websocket_closes_total{code="1000",initiator="client",route="default/chat"} 1"#)
        );
    }

    #[test]
    fn close_classes_are_bounded() {
        assert_eq!(close_code_class(None, false), "abnormal");
        assert_eq!(close_code_class(None, true), "none");
        assert_eq!(close_code_class(Some(4321), true), "4xxx");
        assert_eq!(close_code_class(Some(1234), true), "invalid");
        assert_eq!(close_code_class(Some(1001), true), "1001");
    }

    #[test]
    fn families_include_vectors_without_series_and_match_the_exposition() {
        let m = Metrics::new().unwrap();
        let names: Vec<String> = m.families().into_iter().map(|f| f.name).collect();
        assert_eq!(names.len(), 27, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("wsingress_")));
        // Give every vector one series; then the exposition lists exactly the documented families.
        let c = m.connection("default/chat", "chat:80");
        c.closed(Initiator::Client, Some(1000), true, Duration::from_millis(5));
        m.upgrade("default/chat", UpgradeResult::Ok);
        m.handshake("default/chat", Duration::from_millis(1));
        m.http_request("default/chat", 200, Duration::from_millis(1));
        m.upstream_error("default/chat", "chat:80", "connect_refused");
        m.route_handles("default/chat", "chat:80").policy_refusal("source_range");
        m.table_rejected("file");
        m.connections_rejected.with_label_values(&["max_connections"]).inc();
        m.endpoints.with_label_values(&["default/chat", "chat:80", "ready"]).set(1);
        m.watch_error("Ingress");
        m.watch_synced("Ingress");
        m.tls_handshake("ok", Duration::from_millis(1));
        m.tls_certificates([("default/chat-tls".to_string(), 1)]);
        m.endpoint_tunnels.with_label_values(&["default/chat", "chat:80", "chat-0"]).set(1);
        let mut gathered: Vec<String> = m.registry().gather().iter().map(|f| f.name().to_string()).collect();
        gathered.sort();
        assert_eq!(gathered, names);
        for f in m.families() {
            let counter = f.kind == "counter";
            assert_eq!(counter, f.name.ends_with("_total"), "{}", f.name);
            assert!(!f.help.is_empty());
            for l in &f.labels {
                assert!(
                    [
                        "route",
                        "backend",
                        "direction",
                        "result",
                        "reason",
                        "state",
                        "code",
                        "initiator",
                        "status_class",
                        "source",
                        "version",
                        "kind",
                        "secret",
                        // Bounded by the pool size, rebalancing routes only.
                        "endpoint"
                    ]
                    .contains(&l.as_str()),
                    "unbounded label {l} on {}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn help_texts_name_every_label_value() {
        let m = Metrics::new().unwrap();
        let help = |name: &str| m.families().into_iter().find(|f| f.name == name).unwrap().help;
        let upgrades = help("wsingress_websocket_upgrades_total");
        for r in UpgradeResult::ALL {
            assert!(upgrades.contains(r.label()), "{}", r.label());
        }
        for d in [Direction::ClientToBackend, Direction::BackendToClient] {
            assert!(help("wsingress_websocket_messages_total").contains(d.label()));
            assert!(help("wsingress_websocket_bytes_total").contains(d.label()));
        }
        let closes = help("wsingress_websocket_closes_total");
        for i in [Initiator::Client, Initiator::Backend, Initiator::Proxy] {
            assert!(closes.contains(i.label()));
        }
        for class in ["3xxx", "4xxx", "none", "invalid", "abnormal"] {
            assert!(closes.contains(class), "{class}");
        }
    }

    #[test]
    fn readme_table_has_one_row_per_family() {
        let m = Metrics::new().unwrap();
        let t = readme_table(&m);
        assert!(t.starts_with("| family | type | labels | meaning |\n|---|---|---|---|\n"));
        assert_eq!(t.lines().count(), 2 + m.families().len());
        assert!(t.contains("| `wsingress_websocket_messages_total` | counter | `route`, `backend`, `direction` | "));
        assert!(t.contains("| `wsingress_config_generation` | gauge | — | "));
    }

    #[test]
    fn tls_handshakes_and_certificate_expiry() {
        let m = Metrics::new().unwrap();
        m.tls_handshake("ok", Duration::from_millis(2));
        m.tls_handshake("timeout", Duration::from_secs(10));
        m.tls_certificates([("prod/chat-tls".to_string(), 1_900_000_000), ("self-signed".to_string(), 1_800_000_000)]);
        m.tls_certificates([("prod/chat-tls".to_string(), 1_900_000_001)]);
        let text = String::from_utf8(m.encode()).unwrap();
        for line in [
            "wsingress_tls_handshakes_total{result=\"ok\"} 1",
            "wsingress_tls_handshakes_total{result=\"timeout\"} 1",
            "wsingress_tls_handshake_duration_seconds_count 1",
            "wsingress_tls_certificate_expiry_timestamp_seconds{secret=\"prod/chat-tls\"} 1900000001",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
        assert!(!text.contains("secret=\"self-signed\""), "a certificate no longer in use keeps no series");
    }

    #[test]
    fn published_table_creates_zero_series_for_each_route() {
        use crate::routes::{Endpoint, Pool, Route, RouteSettings};
        let m = Metrics::new().unwrap();
        let mut t = RouteTable::single(Route {
            id: "static/upstream".into(),
            backend: "static:upstream".into(),
            pool: Pool::new(vec![
                Endpoint::new("127.0.0.1:1".parse().unwrap(), true),
                Endpoint::new("127.0.0.1:2".parse().unwrap(), false),
            ]),
            settings: RouteSettings::default(),
        });
        t.generation = 3;
        m.table_published("static", &t, 0);
        let text = String::from_utf8(m.encode()).unwrap();
        for line in [
            r#"wsingress_websocket_connections_active{backend="static:upstream",route="static/upstream"} 0"#,
            r#"wsingress_websocket_upgrades_total{result="ok",route="static/upstream"} 0"#,
            r#"wsingress_endpoints{backend="static:upstream",route="static/upstream",state="ready"} 1"#,
            r#"wsingress_endpoints{backend="static:upstream",route="static/upstream",state="terminating"} 1"#,
            r#"wsingress_endpoints{backend="static:upstream",route="static/upstream",state="not_ready"} 0"#,
            r#"wsingress_config_updates_total{result="applied",source="static"} 1"#,
            "wsingress_config_generation 3",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }

    #[test]
    fn endpoint_series_follow_changed_and_removed_routes_only() {
        use crate::routes::{Endpoint, Pool, RouteSettings};
        let m = Metrics::new().unwrap();
        let route = |id: &str, n: u8| {
            Arc::new(Route {
                id: id.into(),
                backend: "b:80".into(),
                pool: Pool::new((1..=n).map(|i| Endpoint::new(([10, 0, 0, i], 80).into(), true)).collect()),
                settings: RouteSettings::default(),
            })
        };
        let rule = |host: &str, r: Arc<Route>| crate::routes::Rule {
            host: crate::routes::HostMatch::parse(host),
            path: crate::routes::PathMatch::prefix("/"),
            route: r,
        };
        let ready = |id: &str| m.endpoints.with_label_values(&[id, "b:80", "ready"]).get();
        let (a, b) = (route("x/a", 2), route("x/b", 1));
        m.table_published("kubernetes", &RouteTable::new(vec![rule("a.test", a.clone()), rule("b.test", b)], None), 0);
        assert_eq!((ready("x/a"), ready("x/b")), (2, 1));
        // b rebuilt with 3 endpoints, a carried over untouched.
        let t = RouteTable::new(vec![rule("a.test", a.clone()), rule("b.test", route("x/b", 3))], None);
        m.table_published("kubernetes", &t, 0);
        assert_eq!((ready("x/a"), ready("x/b")), (2, 3));
        // b gone: its series are removed, a's stay.
        m.table_published("kubernetes", &RouteTable::new(vec![rule("a.test", a)], None), 0);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(!text.contains(r#"route="x/b",state="ready""#), "{text}");
        assert!(text.contains(r#"wsingress_endpoints{backend="b:80",route="x/a",state="ready"} 2"#), "{text}");
    }

    /// Collects what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn json_lines(filter: &str, emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let cap = Capture::default();
        let sub = subscriber(LogFormat::Json, tracing_subscriber::EnvFilter::new(filter), cap.clone(), false);
        tracing::subscriber::with_default(sub, emit);
        let out = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn access_lines_carry_the_documented_fields_at_the_top_level() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connect to 10.1.2.4:8080 failed: Connection refused",
        );
        let lines = json_lines("info", || {
            WebSocketAccess {
                route: "default/chat",
                backend: "chat:80",
                endpoint: "10.1.2.3:8080".parse().unwrap(),
                client: "192.0.2.7".parse().unwrap(),
                duration: Duration::from_micros(1_500_250),
                msgs_in: 3,
                msgs_out: 4,
                bytes_in: 30,
                bytes_out: 40,
                close_code: Some(1000),
                close_frame_seen: true,
                initiator: Initiator::Client,
                reason: "closed",
            }
            .emit();
            HttpAccess {
                route: UNMATCHED,
                method: "GET",
                path: "/nope",
                status: 404,
                duration: Duration::from_micros(250),
                client: "192.0.2.7".parse().unwrap(),
                endpoint: None,
                upgrade: false,
                error: None,
            }
            .emit();
            HttpAccess {
                route: "default/dead",
                method: "GET",
                path: "/ws",
                status: 502,
                duration: Duration::from_millis(3),
                client: "2001:db8::7".parse().unwrap(),
                endpoint: Some("10.1.2.4:8080".parse().unwrap()),
                upgrade: true,
                error: Some(&refused),
            }
            .emit();
        });
        assert_eq!(lines.len(), 3);
        let ws = &lines[0];
        assert_eq!(ws["target"], ACCESS_LOG_TARGET);
        assert_eq!(ws["level"], "INFO");
        assert_eq!(ws["message"], "websocket closed");
        assert_eq!(ws["kind"], "websocket");
        assert_eq!(ws["route"], "default/chat");
        assert_eq!(ws["backend"], "chat:80");
        assert_eq!(ws["endpoint"], "10.1.2.3:8080");
        assert_eq!(ws["client"], "192.0.2.7");
        assert_eq!(ws["duration_ms"], 1500.25);
        assert_eq!(ws["msgs_in"], 3);
        assert_eq!(ws["msgs_out"], 4);
        assert_eq!(ws["bytes_in"], 30);
        assert_eq!(ws["bytes_out"], 40);
        assert_eq!(ws["close_code"], 1000);
        assert_eq!(ws["close_class"], "1000");
        assert_eq!(ws["initiator"], "client");
        assert_eq!(ws["reason"], "closed");
        let http = &lines[1];
        assert_eq!(http["kind"], "http");
        assert_eq!(http["route"], "unmatched");
        assert_eq!(http["method"], "GET");
        assert_eq!(http["path"], "/nope");
        assert_eq!(http["status"], 404);
        assert_eq!(http["duration_ms"], 0.25);
        assert_eq!(http["message"], "http request");
        assert_eq!(http["client"], "192.0.2.7");
        assert!(http.get("endpoint").is_none(), "absent, not null: {http}");
        assert!(http.get("error").is_none(), "absent, not null: {http}");
        let up = &lines[2];
        assert_eq!(up["kind"], "upgrade");
        assert_eq!(up["message"], "upgrade refused");
        assert_eq!(up["status"], 502);
        assert_eq!(up["client"], "2001:db8::7");
        assert_eq!(up["endpoint"], "10.1.2.4:8080");
        assert_eq!(up["error"], "connect to 10.1.2.4:8080 failed: Connection refused");
    }

    #[test]
    fn access_lines_can_be_filtered_by_target() {
        let lines = json_lines("info,wsingress::access=off", || {
            HttpAccess {
                route: UNMATCHED,
                method: "GET",
                path: "/",
                status: 404,
                duration: Duration::ZERO,
                client: "127.0.0.1".parse().unwrap(),
                endpoint: None,
                upgrade: false,
                error: None,
            }
            .emit();
            tracing::info!("other line");
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["message"], "other line");
    }

    #[test]
    fn text_format_puts_fields_after_the_message() {
        let cap = Capture::default();
        let sub = subscriber(LogFormat::Text, tracing_subscriber::EnvFilter::new("info"), cap.clone(), false);
        tracing::subscriber::with_default(sub, || {
            WebSocketAccess {
                route: "default/chat",
                backend: "chat:80",
                endpoint: "10.244.0.12:8080".parse().unwrap(),
                client: "203.0.113.9".parse().unwrap(),
                duration: Duration::from_millis(5),
                msgs_in: 1,
                msgs_out: 2,
                bytes_in: 3,
                bytes_out: 4,
                close_code: None,
                close_frame_seen: false,
                initiator: Initiator::Backend,
                reason: "disconnected",
            }
            .emit();
        });
        let out = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.contains(
                r#" INFO wsingress::access: websocket closed kind="websocket" route="default/chat" backend="chat:80" endpoint=10.244.0.12:8080 client=203.0.113.9 duration_ms=5.0 msgs_in=1 msgs_out=2 bytes_in=3 bytes_out=4 close_class="abnormal" initiator="backend" reason="disconnected""#
            ),
            "{out}"
        );
    }
}
