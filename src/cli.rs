//! The command line: `serve` (cluster / `--manifests FILE` / `--upstream ADDR,...`), `echo`, `demo`,
//! `client`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::routes::{Policy, RouteSettings};

#[derive(Debug, Parser)]
#[command(
    name = "wsingress",
    version,
    about = "A Kubernetes ingress controller and sidecar proxy built for WebSocket traffic first"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WSINGRESS_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::metrics::LogFormat;

/// `--log-format text|json` (the enum lives with the logging it configures).
impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Text, Self::Json]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            Self::Text => "text",
            Self::Json => "json",
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy. Routes come from the Kubernetes API (default), a manifests file, or a static upstream list.
    Serve(Box<ServeArgs>),
    /// Run a WebSocket echo server (for verification and tests).
    Echo(EchoArgs),
    /// Start two echo backends and the proxy on loopback, print how to connect, run until Ctrl-C.
    Demo(DemoArgs),
    /// Connect to a WebSocket URL, send messages and check the replies (exit 0 only when every
    /// expectation held). For probes, `helm test` and scripts.
    Client(ClientArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Proxy listener.
    #[arg(long, default_value = "0.0.0.0:8080", env = "WSINGRESS_LISTEN")]
    pub listen: SocketAddr,
    /// TLS listener (wss:// and https://, TLS 1.2 and 1.3, ALPN http/1.1): the same routes as
    /// --listen, certificates chosen by SNI ("off" to disable).
    #[arg(long, default_value = "0.0.0.0:8443", value_parser = parse_optional_addr, env = "WSINGRESS_TLS_LISTEN")]
    pub tls_listen: OptionalAddr,
    /// Admin listener (/metrics, /healthz, /readyz, /routes). Never served on the proxy port.
    #[arg(long, default_value = "0.0.0.0:9090", env = "WSINGRESS_ADMIN_LISTEN")]
    pub admin_listen: SocketAddr,
    /// Sidecar mode: send every request to this pool (HOST:PORT[,HOST:PORT...]).
    #[arg(long, conflicts_with = "manifests")]
    pub upstream: Option<String>,
    /// Local mode: routes from a multi-document YAML of Ingress/Service/EndpointSlice objects, reloaded on change.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Cluster mode: watch only this namespace (default: all namespaces).
    #[arg(long, env = "WSINGRESS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// IngressClass name served (its spec.controller must be wsingress.io/ingress-controller).
    #[arg(long, default_value = crate::translate::DEFAULT_CLASS)]
    pub ingress_class: String,
    /// Serve the IngressClasses whose spec.controller is this (run installs side by side with different names).
    #[arg(long, default_value = crate::translate::CONTROLLER_NAME)]
    pub controller_name: String,
    /// Serve the GatewayClasses whose spec.controllerName is this (Gateway API).
    #[arg(long, default_value = crate::translate::GATEWAY_CONTROLLER_NAME)]
    pub gateway_controller_name: String,
    /// Cluster mode: route Services annotated wsingress.io/expose (they must also name a served class in wsingress.io/ingress-class).
    #[arg(long)]
    pub enable_service_routes: bool,
    /// Cluster mode: only Services in these namespaces may define Service-only routes (comma separated; default: all).
    #[arg(long, value_delimiter = ',')]
    pub service_routes_namespaces: Vec<String>,
    /// A route with an ingress-nginx security annotation wsingress does not enforce: refuse (503) or ignore (serve it unprotected).
    #[arg(long, value_parser = crate::translate::UnsupportedSecurity::parse, default_value = "refuse")]
    pub unsupported_security_annotations: crate::translate::UnsupportedSecurity,
    /// Cluster mode: write Ingress status from this Service's addresses (NAMESPACE/NAME).
    #[arg(long)]
    pub publish_service: Option<String>,
    /// Cluster mode: write this address (IP or hostname) into Ingress status.
    #[arg(long, conflicts_with = "publish_service")]
    pub publish_address: Option<String>,
    /// Cluster mode: namespace of the leader-election Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub election_namespace: Option<String>,
    /// Cluster mode: name of the leader-election Lease.
    #[arg(long, default_value = "wsingress-leader")]
    pub election_lease: String,
    /// Cluster mode: this replica's identity for leader election (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Cluster mode: watch Gateway API objects (GatewayClass, Gateway, HTTPRoute, ReferenceGrant)
    /// when their CRDs are installed ("auto", checked at start and every --gateway-api-recheck), or never ("off").
    #[arg(long, value_parser = crate::source::gateway_watch::GatewayApiMode::parse, default_value = "auto")]
    pub gateway_api: crate::source::gateway_watch::GatewayApiMode,
    /// Cluster mode: while the Gateway API CRDs are missing, look for them again this often.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub gateway_api_recheck: Duration,
    /// Drain the tunnels of an endpoint that stays not ready (and not terminating) this long
    /// ("never": keep them until it is ready again, terminates or leaves its EndpointSlice).
    #[arg(long, value_parser = parse_optional_duration, default_value = "never")]
    pub unready_drain_after: OptionalDuration,
    /// Proxy worker threads (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// On SIGTERM/SIGINT: how long to wait for tunnels to close after sending them Close 1001.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub shutdown_timeout: Duration,
    /// Closing a slow client that has not sent its request head in time (slowloris).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// Largest request head accepted (bigger: 431): bytes, or Ki/Mi/Gi (k/M/G) as in the annotations.
    #[arg(long, value_parser = parse_byte_limit, default_value = "16Ki")]
    pub max_header_bytes: usize,
    /// Live connections allowed per client address (after --trusted-proxies resolution; 0 = unlimited); more get 429.
    #[arg(long, default_value_t = 0)]
    pub max_connections_per_client: u32,
    /// Open client connections allowed in total (0 = unlimited); more get 503 and are closed.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// A write to a client or backend that makes no progress for this long closes the connection.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub write_timeout: Duration,
    /// On SIGTERM, tunnels send their Close 1001 at random instants within this window (default: a third of --shutdown-timeout).
    #[arg(long, value_parser = parse_duration)]
    pub shutdown_spread: Option<Duration>,
    /// TCP keepalive on client and backend sockets: first probe after this idle time ("off" to disable).
    #[arg(long, value_parser = parse_optional_duration, default_value = "60s")]
    pub tcp_keepalive: OptionalDuration,
    /// CIDRs whose X-Forwarded-For is trusted to name the client (comma separated). Empty: trust none.
    #[arg(long, value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Read a PROXY protocol header (v1 or v2, within --header-timeout) before anything else on
    /// the plain and TLS listeners: its client address becomes the peer for everything after.
    #[arg(long, env = "WSINGRESS_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    /// With --proxy-protocol: the CIDRs (comma separated) allowed to send a header, which they
    /// must then send; a header from any other peer is refused. Empty: every peer must send one.
    #[arg(long, value_delimiter = ',', requires = "proxy_protocol")]
    pub proxy_protocol_from: Vec<String>,
    /// TLS certificate chain (PEM) for clients with an unknown or no SNI (in sidecar mode, for every host); reloaded when the file changes.
    #[arg(long, requires = "tls_key", conflicts_with = "default_tls_secret")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Default certificate from a kubernetes.io/tls Secret (NAMESPACE/NAME) for clients with an unknown or no SNI. Without it or --tls-cert, a self-signed one is generated at start.
    #[arg(long, value_parser = crate::translate::tls::parse_secret_ref)]
    pub default_tls_secret: Option<(String, String)>,
    /// Serve GET /drain?after=DURATION on the admin port: drain like SIGTERM without exiting
    /// (a native sidecar's preStop hook; its SIGTERM comes only after the app has stopped).
    #[arg(long)]
    pub admin_drain: bool,
    /// Secret for cookie-affinity tokens; give every replica the same one (the chart keeps one
    /// in a Secret). Without it a built-in key is used and a cookie can be mapped back to an
    /// endpoint address by anyone trying candidate addresses.
    #[arg(long, env = "WSINGRESS_AFFINITY_KEY", hide_env_values = true)]
    pub affinity_key: Option<String>,
    #[command(flatten)]
    pub route: RouteDefaults,
}

/// Defaults for every route; annotations override them per route.
#[derive(Debug, Clone, Args)]
pub struct RouteDefaults {
    /// Balancing policy: least-conn, round-robin, ip-hash, header-hash:NAME.
    #[arg(long, default_value = "least-conn", value_parser = Policy::parse)]
    pub load_balance: Policy,
    /// Close a tunnel after this long without traffic ("never" to disable). nginx: proxy_read_timeout.
    #[arg(long, value_parser = parse_optional_duration, default_value = "60s")]
    pub idle_timeout: OptionalDuration,
    /// Ping the client after this long without traffic from it ("off" to disable).
    #[arg(long, value_parser = parse_optional_duration, default_value = "off")]
    pub ping_interval: OptionalDuration,
    /// After a ping, close if the client stays silent this long.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub pong_timeout: Duration,
    /// TCP connect to one endpoint.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub connect_timeout: Duration,
    /// From upgrade request sent upstream to its response head (504 after).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// Plain HTTP: from request sent upstream to its response head (504 after), and between two reads of its body.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub response_timeout: Duration,
    /// When an endpoint leaves its pool, close its tunnels with 1001 after this long ("never" to keep them).
    #[arg(long, value_parser = parse_optional_duration, default_value = "30s")]
    pub drain_timeout: OptionalDuration,
    /// Largest WebSocket message (sum of fragments) or control frame before Close 1009: bytes, or
    /// Ki/Mi/Gi (k/M/G) as in the annotation; 0 or "unlimited" for no limit.
    #[arg(long, value_parser = parse_optional_byte_limit, default_value = "unlimited")]
    pub max_message_bytes: u64,
    /// Rebalance every route's pool by default (annotation wsingress.io/rebalance overrides it):
    /// close the oldest tunnels of over-target endpoints with 1001 after endpoints join.
    #[arg(long)]
    pub rebalance: bool,
}

impl RouteDefaults {
    pub fn settings(&self) -> RouteSettings {
        RouteSettings {
            policy: self.load_balance.clone(),
            idle_timeout: self.idle_timeout.0,
            ping_interval: self.ping_interval.0,
            pong_timeout: self.pong_timeout,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            response_timeout: self.response_timeout,
            drain_timeout: self.drain_timeout.0,
            max_message_bytes: (self.max_message_bytes > 0).then_some(self.max_message_bytes),
            rebalance: crate::routes::Rebalance { enabled: self.rebalance, ..Default::default() },
            ..RouteSettings::default()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Listener.
    #[arg(long, default_value = "0.0.0.0:8080", env = "WSINGRESS_LISTEN")]
    pub listen: SocketAddr,
    /// Prepended to every echoed message.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Name sent in the x-echo-instance header (default: $HOSTNAME, else the listen address).
    #[arg(long, env = "HOSTNAME")]
    pub instance: Option<String>,
    /// Serve https and wss with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Proxy listener of the demo.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin listener of the demo.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Also serve wss:// and https:// on --tls-listen, with a certificate for 127.0.0.1 and
    /// localhost from a CA generated now (its PEM is written for clients to trust).
    #[arg(long)]
    pub tls: bool,
    /// TLS listener of the demo (with --tls).
    #[arg(long, default_value = "127.0.0.1:8443", requires = "tls")]
    pub tls_listen: SocketAddr,
    /// Where --tls writes ca.crt (the CA to trust), tls.crt and tls.key (default: the folder
    /// wsingress-demo-tls in the system's temporary directory).
    #[arg(long, requires = "tls")]
    pub tls_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH.
    pub url: String,
    /// Host header (and, for wss, the TLS server name) instead of the URL's host.
    #[arg(long)]
    pub host: Option<String>,
    /// Extra request header NAME:VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME:VALUE")]
    pub headers: Vec<String>,
    /// A text message to send (repeatable; the Nth is sent before the Nth reply is read).
    #[arg(long)]
    pub send: Vec<String>,
    /// The exact text the Nth reply must be (repeatable).
    #[arg(long)]
    pub expect: Vec<String>,
    /// Do the whole exchange this many times, each on a new connection.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// PEM file of the CA certificates a wss:// server must chain to (default: the system's).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Limit for one attempt: connect, handshake, every reply and the close.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Retry a failed attempt (once a second) until this long has passed; 0: one attempt.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub retry_for: Duration,
}

impl ClientArgs {
    /// The validated plan (every flag checked before anything is sent).
    pub fn plan(&self) -> Result<crate::client::ClientPlan, crate::client::ClientError> {
        crate::client::ClientPlan::new(
            &self.url,
            self.host.as_deref(),
            &self.headers,
            &self.send,
            &self.expect,
            self.count,
            self.ca.as_deref(),
            self.timeout,
            self.retry_for,
        )
    }
}

/// A listen address that may be switched off (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

/// `ADDR:PORT`, or `off`.
pub fn parse_optional_addr(value: &str) -> Result<OptionalAddr, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(OptionalAddr(None));
    }
    v.parse().map(|a| OptionalAddr(Some(a))).map_err(|_| format!("`{value}` is not ADDRESS:PORT or `off`"))
}

/// A duration that may be switched off (`never`, `off`, `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalDuration(pub Option<Duration>);

/// `300s`, `5m`, `1h`, `250ms`, or a bare number of seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    crate::translate::units::parse_duration(value)
}

/// Like [`parse_duration`], plus `never`/`off` (and `0`) for none.
pub fn parse_optional_duration(value: &str) -> Result<OptionalDuration, String> {
    crate::translate::units::parse_optional_duration(value).map(OptionalDuration)
}

/// A size limit that cannot be switched off, in the annotations' units (`16384`, `64Ki`, `1Mi`;
/// [`crate::translate::units::parse_bytes`]).
pub fn parse_byte_limit(value: &str) -> Result<usize, String> {
    match crate::translate::units::parse_bytes(value)? {
        Some(bytes) => usize::try_from(bytes).map_err(|_| format!("`{value}` is out of range")),
        None => Err(format!("`{value}`: this limit cannot be switched off; give a size such as 16Ki")),
    }
}

/// A size limit in the annotations' units where `0` or `unlimited` switch it off (`0` here).
pub fn parse_optional_byte_limit(value: &str) -> Result<u64, String> {
    crate::translate::units::parse_bytes(value).map(|bytes| bytes.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_optional_duration("never"), Ok(OptionalDuration(None)));
        assert_eq!(parse_optional_duration("0"), Ok(OptionalDuration(None)));
        assert_eq!(parse_optional_duration("30s"), Ok(OptionalDuration(Some(Duration::from_secs(30)))));
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["wsingress", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(s) => Ok(*s),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn size_flags_take_the_annotations_units() {
        let defaults = serve(&[]).unwrap();
        assert_eq!(defaults.max_header_bytes, 16 * 1024);
        assert_eq!(defaults.route.settings().max_message_bytes, None);

        let s = serve(&["--max-message-bytes", "1Mi", "--max-header-bytes", "64Ki"]).unwrap();
        assert_eq!(s.route.settings().max_message_bytes, Some(1 << 20));
        assert_eq!(s.max_header_bytes, 64 << 10);
        for off in ["0", "unlimited"] {
            assert_eq!(serve(&["--max-message-bytes", off]).unwrap().route.settings().max_message_bytes, None);
        }
        // The same parser as the annotation, value for value.
        for value in ["1", "1048576", "64Ki", "1Mi", "2Gi", "10k", "3M", "1G", " 8Ki "] {
            let annotation = crate::translate::units::parse_bytes(value).unwrap();
            let flag = serve(&["--max-message-bytes", value]).unwrap().route.settings().max_message_bytes;
            assert_eq!(flag, annotation, "{value}");
            let header = serve(&["--max-header-bytes", value]).unwrap().max_header_bytes;
            assert_eq!(Some(header as u64), annotation, "{value}");
        }
        for bad in ["1MB", "1.5Mi", "-1", "", "lots", "18446744073709551615Gi"] {
            assert!(serve(&["--max-message-bytes", bad]).is_err(), "{bad}");
            assert!(serve(&["--max-header-bytes", bad]).is_err(), "{bad}");
        }
        // A request-head limit cannot be switched off.
        for off in ["0", "unlimited"] {
            let err = serve(&["--max-header-bytes", off]).unwrap_err().to_string();
            assert!(err.contains("cannot be switched off"), "{err}");
        }
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "wsingress",
            "serve",
            "--upstream",
            "127.0.0.1:8010,127.0.0.1:8011",
            "--idle-timeout",
            "300s",
            "--load-balance",
            "ip-hash",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else { panic!("not serve") };
        let settings = s.route.settings();
        assert_eq!(settings.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(settings.policy, Policy::IpHash);
        assert!(Cli::try_parse_from(["wsingress", "serve", "--load-balance", "fastest"]).is_err());
        assert!(Cli::try_parse_from(["wsingress", "serve", "--upstream", "a:1", "--manifests", "f.yaml"]).is_err());
    }

    #[test]
    fn tls_flags_parse_and_conflict() {
        let serve = |extra: &[&str]| {
            let argv = [&["wsingress", "serve"][..], extra].concat();
            Cli::try_parse_from(argv).map(|c| match c.command {
                Command::Serve(s) => s,
                _ => panic!("not serve"),
            })
        };
        let s = serve(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(s.tls_cert.as_deref(), Some(std::path::Path::new("c.pem")));
        let s = serve(&["--default-tls-secret", "ingress/default-tls"]).unwrap();
        assert_eq!(s.default_tls_secret, Some(("ingress".into(), "default-tls".into())));
        assert!(serve(&["--tls-cert", "c.pem"]).is_err(), "a certificate needs its key");
        assert!(serve(&["--tls-key", "k.pem"]).is_err());
        assert!(serve(&["--default-tls-secret", "no-namespace"]).is_err());
        let both = ["--tls-cert", "c", "--tls-key", "k", "--default-tls-secret", "a/b"];
        assert!(serve(&both).is_err());
    }
}
