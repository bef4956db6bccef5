//! Every metric family, registered on an owned registry (no globals, so each test and each
//! app instance has its own). Labels are bounded: route (`namespace/name`), backend
//! (`service:port`), direction, result, reason, state, close-code class; never a client
//! address or pod IP. The data path resolves its label handles once per connection
//! ([`Metrics::connection`]) and then only touches atomics.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::routes::RouteTable;

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
    if !close_frame_seen {
        return "abnormal";
    }
    match code {
        None => "none",
        Some(1000) => "1000",
        Some(1001) => "1001",
        Some(1002) => "1002",
        Some(1003) => "1003",
        Some(1007) => "1007",
        Some(1008) => "1008",
        Some(1009) => "1009",
        Some(1010) => "1010",
        Some(1011) => "1011",
        Some(1012) => "1012",
        Some(1013) => "1013",
        Some(1014) => "1014",
        Some(3000..=3999) => "3xxx",
        Some(4000..=4999) => "4xxx",
        Some(_) => "invalid",
    }
}

/// Result label of one upgrade attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeResult {
    /// 101 from the backend, tunnel established.
    Ok,
    /// Invalid upgrade request (400), forbidden origin (403), limits (429/503): no backend contacted.
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
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Connection lifetime buckets: 1 s to 24 h.
const LIFETIME_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];
/// Plain HTTP request duration buckets: 500 µs to 30 s.
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

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
    pub endpoints: IntGaugeVec,
    pub config_generation: IntGauge,
    pub config_updates: IntCounterVec,
    pub config_warnings: IntGauge,
    pub build_info: IntGaugeVec,
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
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let histogram = |name: &str,
                         help: &str,
                         labels: &[&str],
                         buckets: &[f64]|
         -> Result<HistogramVec, prometheus::Error> {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let config_generation = IntGauge::new(
            "wsingress_config_generation",
            "Generation of the route table currently serving.",
        )?;
        registry.register(Box::new(config_generation.clone()))?;
        let config_warnings = IntGauge::new(
            "wsingress_config_warnings",
            "Configuration warnings (bad annotations, missing Services, ...) in the last translation.",
        )?;
        registry.register(Box::new(config_warnings.clone()))?;
        let m = Self {
            connections_active: gauge(
                "wsingress_websocket_connections_active",
                "WebSocket tunnels currently open.",
                &["route", "backend"],
            )?,
            upgrades: counter(
                "wsingress_websocket_upgrades_total",
                "WebSocket upgrade requests by result.",
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
                "Complete WebSocket data messages relayed (control frames excluded).",
                &["route", "backend", "direction"],
            )?,
            bytes: counter(
                "wsingress_websocket_bytes_total",
                "Bytes relayed through WebSocket tunnels (frames with headers, as on the wire).",
                &["route", "backend", "direction"],
            )?,
            closes: counter(
                "wsingress_websocket_closes_total",
                "Closed WebSocket tunnels by who closed first and close-code class.",
                &["route", "initiator", "code"],
            )?,
            http_requests: counter(
                "wsingress_http_requests_total",
                "Plain HTTP requests by status class.",
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
                "Failures talking to backends by reason.",
                &["route", "backend", "reason"],
            )?,
            endpoints: gauge(
                "wsingress_endpoints",
                "Endpoints per pool by state.",
                &["route", "backend", "state"],
            )?,
            config_generation,
            config_updates: counter(
                "wsingress_config_updates_total",
                "Route table updates by source and result.",
                &["source", "result"],
            )?,
            config_warnings,
            build_info: gauge(
                "wsingress_build_info",
                "Build information; always 1.",
                &["version"],
            )?,
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
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

    /// Resolve the per-tunnel handles once, at upgrade time.
    pub fn connection(&self, route: &str, backend: &str) -> ConnMetrics {
        let dir =
            |v: &IntCounterVec, d: Direction| v.with_label_values(&[route, backend, d.label()]);
        let active = self.connections_active.with_label_values(&[route, backend]);
        active.inc();
        ConnMetrics {
            active,
            messages: [
                dir(&self.messages, Direction::ClientToBackend),
                dir(&self.messages, Direction::BackendToClient),
            ],
            bytes: [
                dir(&self.bytes, Direction::ClientToBackend),
                dir(&self.bytes, Direction::BackendToClient),
            ],
            duration: self.connection_seconds.with_label_values(&[route, backend]),
            closes: self.closes.clone(),
            route: route.to_string(),
        }
    }

    pub fn upgrade(&self, route: &str, result: UpgradeResult) {
        self.upgrades
            .with_label_values(&[route, result.label()])
            .inc();
    }

    pub fn handshake(&self, route: &str, elapsed: Duration) {
        self.handshake_seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
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
        self.http_request_seconds
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    pub fn upstream_error(&self, route: &str, backend: &str, reason: &'static str) {
        self.upstream_errors
            .with_label_values(&[route, backend, reason])
            .inc();
    }

    /// Record a newly published table: generation, update result and endpoint counts.
    pub fn table_published(&self, source: &str, table: &RouteTable, warnings: usize) {
        self.config_generation.set(table.generation as i64);
        self.config_updates
            .with_label_values(&[source, "applied"])
            .inc();
        self.config_warnings.set(warnings as i64);
        self.endpoints.reset();
        for route in table.routes() {
            let ready = route.pool.ready_len() as i64;
            let total = route.pool.endpoints().len() as i64;
            self.endpoints
                .with_label_values(&[&route.id, &route.backend, "ready"])
                .set(ready);
            self.endpoints
                .with_label_values(&[&route.id, &route.backend, "terminating"])
                .set(total - ready);
        }
    }

    /// A source produced no new table (parse error, API error): the last good one keeps serving.
    pub fn table_rejected(&self, source: &str) {
        self.config_updates
            .with_label_values(&[source, "rejected"])
            .inc();
    }

    /// Name, type, labels and help of every registered family, for the README table check.
    pub fn families(&self) -> Vec<FamilyDoc> {
        let mut out: Vec<FamilyDoc> = self
            .registry
            .gather()
            .iter()
            .map(|f| {
                let kind = match f.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => "counter",
                    prometheus::proto::MetricType::GAUGE => "gauge",
                    prometheus::proto::MetricType::HISTOGRAM => "histogram",
                    _ => "other",
                };
                let labels = f
                    .get_metric()
                    .first()
                    .map(|m| m.get_label().iter().map(|l| l.name().to_string()).collect())
                    .unwrap_or_default();
                FamilyDoc {
                    name: f.name().to_string(),
                    kind,
                    labels,
                    help: f.help().to_string(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Handles for one tunnel. Dropping it decrements the active gauge.
#[derive(Debug)]
pub struct ConnMetrics {
    active: IntGauge,
    /// Indexed by direction: 0 client→backend, 1 backend→client.
    pub messages: [IntCounter; 2],
    pub bytes: [IntCounter; 2],
    duration: Histogram,
    closes: IntCounterVec,
    route: String,
}

impl ConnMetrics {
    pub fn add(&self, dir: Direction, messages: u64, bytes: u64) {
        let i = dir as usize;
        if messages > 0 {
            self.messages[i].inc_by(messages);
        }
        if bytes > 0 {
            self.bytes[i].inc_by(bytes);
        }
    }

    /// Called once when the tunnel ends.
    pub fn closed(&self, initiator: Initiator, code_class: &'static str, lifetime: Duration) {
        self.closes
            .with_label_values(&[&self.route, initiator.label(), code_class])
            .inc();
        self.duration.observe(lifetime.as_secs_f64());
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.active.dec();
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
            assert_eq!(
                m.connections_active
                    .with_label_values(&["default/chat", "chat:80"])
                    .get(),
                1
            );
            c.closed(
                Initiator::Client,
                close_code_class(Some(1000), true),
                Duration::from_secs(2),
            );
        }
        assert_eq!(
            m.connections_active
                .with_label_values(&["default/chat", "chat:80"])
                .get(),
            0
        );
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            r#"wsingress_websocket_messages_total{backend="chat:80",direction="client_to_backend",route="default/chat"} 2"#
        ));
        assert!(text.contains(r#"wsingress_websocket_closes_total{code="1000",initiator="client",route="default/chat"} 1"#));
    }

    #[test]
    fn close_classes_are_bounded() {
        assert_eq!(close_code_class(None, false), "abnormal");
        assert_eq!(close_code_class(None, true), "none");
        assert_eq!(close_code_class(Some(4321), true), "4xxx");
        assert_eq!(close_code_class(Some(1234), true), "invalid");
        assert_eq!(close_code_class(Some(1001), true), "1001");
    }
}
