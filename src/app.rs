//! Composition root: validates configuration before binding anything, then wires metrics,
//! readiness, drain and the route handle to a route source, the proxy listener and the
//! admin listener, and turns SIGTERM/SIGINT into a graceful drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::cli::{Cli, ClientArgs, Command, DemoArgs, EchoArgs, ServeArgs};
use crate::drain::Drain;
use crate::echo::{self, EchoConfig};
use crate::metrics::Metrics;
use crate::proxy::headers::TrustedProxies;
use crate::proxy::proxy_protocol::ProxyProtocol;
use crate::proxy::{self, ProxyConfig, ProxyState};
use crate::readiness::Readiness;
use crate::routes::RouteHandle;
use crate::source::cert_files::{self, CertFiles};
use crate::source::gateway_watch::GatewayApiConfig;
use crate::source::kube::KubeConfig;
use crate::source::leader::ElectionConfig;
use crate::source::status::{PublishFrom, StatusConfig};
use crate::source::{self, Publisher};
use crate::tls::{self, CertEntry, CertHandle, generate};
use crate::translate::tls::TlsDefaults;
use crate::translate::{Defaults, ServiceRoutes};

/// Exit code for invalid configuration (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Configuration that was wrong before anything started.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where routes come from.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// `--upstream`: one static pool.
    Static(Vec<SocketAddr>),
    /// `--manifests FILE`.
    Manifests(PathBuf),
    /// The Kubernetes API.
    Kube,
    /// Tables are published by the caller through [`Running::publisher`] (tests, embedding).
    Manual,
}

impl RouteSource {
    fn label(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::Manifests(_) => "file",
            Self::Kube => "kubernetes",
            Self::Manual => "manual",
        }
    }
}

/// Decide the route source from the flags, validating them.
pub fn route_source(args: &ServeArgs) -> Result<RouteSource, ConfigError> {
    match (&args.upstream, &args.manifests) {
        (Some(list), _) => source::static_upstream::parse_upstreams(list)
            .map(RouteSource::Static)
            .map_err(|e| ConfigError(e.to_string())),
        (None, Some(path)) => Ok(RouteSource::Manifests(path.clone())),
        (None, None) => Ok(RouteSource::Kube),
    }
}

/// A running proxy: addresses, shared state, and a way to stop it.
#[derive(Debug)]
pub struct Running {
    pub proxy_addr: SocketAddr,
    /// The TLS listener's address (`None` with `--tls-listen off`).
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub routes: Arc<RouteHandle>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub drain: Drain,
    /// Window over which tunnels spread their Close 1001s on shutdown.
    pub shutdown_spread: Duration,
    /// Certificates by SNI and the fallback certificate.
    pub certs: Arc<CertHandle>,
    publisher: Publisher,
    stop_background: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// A publisher for [`RouteSource::Manual`].
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Graceful shutdown: readiness false, stop accepting, Close 1001 to every tunnel (each
    /// at a random instant within the shutdown spread, never later than `timeout`), wait until
    /// all are closed or `timeout` passed. True when everything closed in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.readiness.set_draining();
        self.drain.start_spread(shutdown_window(self.shutdown_spread, timeout));
        let open = self.drain.active();
        tracing::info!(open_connections = open, timeout_s = timeout.as_secs_f64(), "draining");
        let clean = self.drain.wait(timeout).await;
        if !clean {
            tracing::warn!(still_open = self.drain.active(), "drain timeout passed; exiting with connections open");
        }
        self.stop_background.cancel();
        for t in self.tasks {
            t.abort();
        }
        clean
    }
}

/// The window the shutdown's Close 1001s are spread over: `--shutdown-spread`, but at most two
/// thirds of the timeout, and ending early enough that a peer that never answers its Close is
/// cut by the relay's close linger before the timeout.
fn shutdown_window(spread: Duration, timeout: Duration) -> Duration {
    let linger_room = crate::proxy::relay::CLOSE_LINGER + Duration::from_millis(500);
    spread.min(timeout * 2 / 3).min(timeout.saturating_sub(linger_room))
}

/// The listener settings of `serve`, validated.
fn proxy_config(args: &ServeArgs) -> Result<ProxyConfig, ConfigError> {
    Ok(ProxyConfig {
        header_timeout: args.header_timeout,
        max_header_bytes: args.max_header_bytes,
        max_connections_per_client: args.max_connections_per_client,
        max_connections: args.max_connections,
        write_timeout: args.write_timeout,
        tcp_keepalive: args.tcp_keepalive.0,
        proxy_protocol: proxy_protocol(args)?,
    })
}

/// `--proxy-protocol` and its trusted peers, validated (the error names the bad item).
fn proxy_protocol(args: &ServeArgs) -> Result<Option<Arc<ProxyProtocol>>, ConfigError> {
    if !args.proxy_protocol {
        return Ok(None);
    }
    let (trusted, bad) = crate::routes::cidr::parse_list(&args.proxy_protocol_from.join(","));
    if let Some((item, why)) = bad.first() {
        return Err(ConfigError(format!("--proxy-protocol-from: `{item}` {why}")));
    }
    Ok(Some(Arc::new(ProxyProtocol::new(trusted))))
}

/// The controller's settings from the `serve` flags. `default_namespace` (the client's: the
/// pod's namespace in a cluster, the kubeconfig context's outside) holds the Lease when
/// `--election-namespace` is not given. Pure: called before binding ports to validate flags.
pub fn kube_config(args: &ServeArgs, default_namespace: &str) -> Result<KubeConfig, ConfigError> {
    let non_empty = |v: &Option<String>, flag: &str| match v.as_deref().map(str::trim) {
        Some("") => Err(ConfigError(format!("--{flag} must not be empty"))),
        other => Ok(other.map(str::to_string)),
    };
    let watch_namespaces = args.watch_namespace.as_deref().map(namespace_list).transpose()?.unwrap_or_default();
    let election_namespace =
        non_empty(&args.election_namespace, "election-namespace")?.unwrap_or_else(|| default_namespace.to_string());
    let identity = non_empty(&args.pod_name, "pod-name")?
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| format!("wsingress-{}", std::process::id()));
    for (value, flag) in [(&args.election_lease, "election-lease"), (&args.ingress_class, "ingress-class")] {
        if value.trim().is_empty() {
            return Err(ConfigError(format!("--{flag} must not be empty")));
        }
    }
    if args.gateway_api_recheck.is_zero() {
        return Err(ConfigError("--gateway-api-recheck must be more than 0".to_string()));
    }
    let publish = PublishFrom::from_flags(args.publish_service.as_deref(), args.publish_address.as_deref())
        .map_err(|e| ConfigError(e.to_string()))?;
    let namespaces: Vec<String> =
        args.service_routes_namespaces.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
    if !namespaces.is_empty() && !args.enable_service_routes {
        return Err(ConfigError("--service-routes-namespaces needs --enable-service-routes".to_string()));
    }
    let defaults = Defaults {
        // A cluster serves exactly the IngressClasses naming our controller.
        class_fallback: false,
        service_routes: ServiceRoutes { enabled: args.enable_service_routes, require_class: true, namespaces },
        ..translate_defaults(args)?
    };
    Ok(KubeConfig {
        watch_namespaces,
        defaults,
        status: publish.map(StatusConfig::new),
        election: Some(ElectionConfig::new(
            election_namespace,
            args.election_lease.trim().to_string(),
            identity.clone(),
        )),
        identity,
        tls: TlsDefaults { default_secret: args.default_tls_secret.clone() },
        gateway_api: GatewayApiConfig { mode: args.gateway_api, recheck: args.gateway_api_recheck },
        ..KubeConfig::new(Defaults::default())
    })
}

/// `--watch-namespace a,b`: namespace names, each a DNS label, no duplicates.
fn namespace_list(value: &str) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::new();
    for ns in value.split(',').map(str::trim) {
        let label = !ns.is_empty()
            && ns.len() <= 63
            && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !label {
            return Err(ConfigError(format!(
                "--watch-namespace `{value}`: `{ns}` is not a namespace name (comma-separated DNS labels)"
            )));
        }
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_string());
        }
    }
    Ok(out)
}

/// Translation settings shared by the manifests-file and cluster modes.
pub fn translate_defaults(args: &ServeArgs) -> Result<Defaults, ConfigError> {
    let controller_name = args.controller_name.trim();
    if controller_name.is_empty() {
        return Err(ConfigError("--controller-name must not be empty".to_string()));
    }
    let gateway_controller_name = args.gateway_controller_name.trim();
    if gateway_controller_name.is_empty() {
        return Err(ConfigError("--gateway-controller-name must not be empty".to_string()));
    }
    Ok(Defaults {
        class_name: args.ingress_class.trim().to_string(),
        controller_name: controller_name.to_string(),
        gateway_controller_name: gateway_controller_name.to_string(),
        settings: args.route.settings(),
        unsupported_security: args.unsupported_security_annotations,
        ..Defaults::default()
    })
}

/// Bind and start everything for `serve`. Configuration is validated before any port is bound.
pub async fn start(args: &ServeArgs, route_source: RouteSource) -> anyhow::Result<Running> {
    let trusted = TrustedProxies::parse(&args.trusted_proxies).map_err(ConfigError)?;
    let config = proxy_config(args)?;
    let shutdown_spread = args.shutdown_spread.unwrap_or(args.shutdown_timeout / 3);
    if shutdown_spread > args.shutdown_timeout {
        return Err(ConfigError(format!(
            "--shutdown-spread ({shutdown_spread:?}) must not exceed --shutdown-timeout ({:?})",
            args.shutdown_timeout
        ))
        .into());
    }
    let settings = args.route.settings();
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let routes = Arc::new(RouteHandle::new());
    let readiness = Arc::new(Readiness::new(routes.clone()));
    let drain = Drain::new();
    let tls_defaults = TlsDefaults { default_secret: args.default_tls_secret.clone() };
    if args.default_tls_secret.is_some() && matches!(route_source, RouteSource::Static(_)) {
        return Err(ConfigError(
            "--default-tls-secret names a Secret, and sidecar mode (--upstream) reads none; use --tls-cert and --tls-key"
                .into(),
        )
        .into());
    }
    let cert_files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(CertFiles { cert: cert.clone(), key: key.clone() }),
        _ => None,
    };
    let fallback = fallback_certificate(args, cert_files.as_ref())?;
    let fallback_digest = fallback.digest;
    let certs = Arc::new(CertHandle::new(Arc::new(fallback)));
    let publisher = Publisher::new(routes.clone(), metrics.clone(), route_source.label()).with_certs(certs.clone());
    let stop_background = CancellationToken::new();

    // Routes that can be known before binding are published first, so a bad file fails fast.
    // Background tasks run supervised: one that ends or panics fails /healthz.
    type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    let mut background: Vec<(&'static str, Task)> = Vec::new();
    match &route_source {
        RouteSource::Static(addrs) => {
            publisher.publish(source::static_upstream::table(addrs, settings.clone()), &[]);
        }
        RouteSource::Manifests(path) => {
            let defaults = translate_defaults(args)?;
            let (table, cert_table, warnings) =
                source::file::load_file_all(path, &defaults, &tls_defaults, &certs.load(), tls::unix_now())
                    .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            publisher.publish_all(table, cert_table, &warnings);
            let (path, publisher, stop) = (path.clone(), publisher.clone(), stop_background.clone());
            background.push((
                "manifests file reload",
                Box::pin(source::file::run_tls(path, defaults, tls_defaults, publisher, stop)),
            ));
        }
        RouteSource::Kube => {
            // Flags first, so a typo is reported even where no cluster is reachable.
            kube_config(args, "default")?;
            let client = kube::Client::try_default().await.map_err(|e| {
                ConfigError(format!(
                    "cannot build a Kubernetes client from the in-cluster config or kubeconfig: {e}; \
                     outside a cluster use --upstream or --manifests"
                ))
            })?;
            let config = kube_config(args, client.default_namespace())?;
            let (publisher, stop, health) = (publisher.clone(), stop_background.clone(), readiness.health().clone());
            background.push((
                "kubernetes controller",
                Box::pin(async move {
                    if let Err(e) = source::kube::run(client, config, publisher, health, stop).await {
                        tracing::error!(error = %e, "the Kubernetes controller stopped; the last routes keep serving");
                    }
                }),
            ));
        }
        RouteSource::Manual => {}
    }
    if let Some(files) = cert_files {
        background.push((
            "certificate files reload",
            Box::pin(cert_files::run(files, fallback_digest, publisher.clone(), stop_background.clone())),
        ));
    }

    let proxy_listener = proxy::server::bind(args.listen, &config)
        .with_context(|| format!("binding the proxy listener {}", args.listen))?;
    let tls_listener = match args.tls_listen.0 {
        Some(addr) => {
            Some(proxy::server::bind(addr, &config).with_context(|| format!("binding the TLS listener {addr}"))?)
        }
        None => None,
    };
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {}", args.admin_listen))?;
    let proxy_addr = proxy_listener.local_addr()?;
    let tls_addr = tls_listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let admin_addr = admin_listener.local_addr()?;

    let mut state = ProxyState::new(routes.clone(), metrics.clone(), drain.clone(), trusted);
    if let Some(secret) = args.affinity_key.as_deref().filter(|k| !k.is_empty()) {
        state.affinity_key = Arc::new(crate::policy::affinity::AffinityKey::new(secret.as_bytes()));
    }
    if tls_listener.is_some() {
        state.certs = Some(certs.clone());
    }
    let state = Arc::new(state);
    let mut tasks = Vec::new();
    if let Some(listener) = tls_listener {
        let server_config = tls::server::config(certs.clone()).context("building the TLS server configuration")?;
        tasks.push(tokio::spawn(proxy::server::serve_tls(listener, state.clone(), config.clone(), server_config)));
    }
    tasks.push(tokio::spawn(proxy::serve(proxy_listener, state, config)));
    let admin_state = AdminState {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        routes: routes.clone(),
        certs: Some(certs.clone()),
    };
    let admin_stop = stop_background.clone();
    let admin_drain =
        args.admin_drain.then(|| admin::AdminDrain { drain: drain.clone(), timeout: args.shutdown_timeout });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = admin::serve_with_drain(admin_listener, admin_state, admin_drain, admin_stop).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    }));
    if let Some(after) = args.unready_drain_after.0 {
        let drainer = source::drain_unready_endpoints(routes.clone(), after, stop_background.clone());
        background.push(("unready endpoint drain", Box::pin(drainer)));
    }
    // Rebalancing looks only at routes with it on; with none it just ticks.
    let rebalancer = crate::policy::rebalance::run(routes.clone(), metrics.clone(), stop_background.clone());
    background.push(("rebalancing", Box::pin(rebalancer)));
    for (name, fut) in background {
        tasks.push(tokio::spawn(readiness.health().supervise(name.to_string(), stop_background.clone(), fut)));
    }
    let tls_text = tls_addr.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(proxy = %proxy_addr, tls = %tls_text, admin = %admin_addr, source = route_source.label(), "wsingress serving");
    Ok(Running {
        proxy_addr,
        tls_addr,
        admin_addr,
        routes,
        metrics,
        readiness,
        drain,
        shutdown_spread,
        certs,
        publisher,
        stop_background,
        tasks,
    })
}

/// The certificate for TLS clients with an unknown or no SNI when the source has no default:
/// `--tls-cert`/`--tls-key` (a bad pair is a configuration error), else one generated now.
fn fallback_certificate(args: &ServeArgs, files: Option<&CertFiles>) -> anyhow::Result<CertEntry> {
    let now = tls::unix_now();
    if let Some(files) = files {
        let entry = cert_files::load(files, now).map_err(|e| ConfigError(format!("--tls-cert/--tls-key: {e}")))?;
        tracing::info!(
            cert = %files.cert.display(),
            subject = %entry.info.subject,
            not_after = %tls::rfc3339(entry.info.not_after),
            "TLS certificate loaded from files (reloaded when they change)"
        );
        return Ok(entry);
    }
    let entry =
        generate::default_certificate(now, &tls::provider()).context("generating the default TLS certificate")?;
    let served = if args.default_tls_secret.is_some() {
        "served while --default-tls-secret is missing or bad"
    } else {
        "served to TLS clients with an unknown or no SNI (set --tls-cert or --default-tls-secret to replace it)"
    };
    tracing::info!(
        subject = %entry.info.subject,
        not_after = %tls::rfc3339(entry.info.not_after),
        "generated a self-signed default certificate (ECDSA P-256), {served}"
    );
    Ok(entry)
}

/// The process entry point behind `main`.
pub fn main(cli: Cli) -> ExitCode {
    crate::metrics::init_tracing(cli.log_format);
    let workers = match &cli.command {
        Command::Serve(args) => args.workers,
        _ => 0,
    };
    let runtime = match build_runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsingress: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => run_serve(*args).await,
            Command::Echo(args) => run_echo(args).await,
            Command::Demo(args) => run_demo(args).await,
            Command::Client(args) => run_client(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config = e.downcast_ref::<ConfigError>().is_some();
            tracing::error!(error = format!("{e:#}"), "wsingress stopped");
            eprintln!("wsingress: {e:#}");
            if config { ExitCode::from(EXIT_CONFIG) } else { ExitCode::FAILURE }
        }
    }
}

fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    raise_fd_limit();
    if workers == 1 {
        // One worker: a current-thread runtime avoids cross-thread wake-ups entirely.
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

/// Each tunnel holds two descriptors: use all the process may have.
fn raise_fd_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < hard
        && let Err(e) = rlimit::Resource::NOFILE.set(hard, hard)
    {
        eprintln!("wsingress: cannot raise the descriptor limit from {soft} to {hard}: {e}");
    }
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let source = route_source(&args)?;
    let running = start(&args, source).await?;
    wait_for_signal().await;
    tracing::info!("shutdown signal received");
    running.shutdown(args.shutdown_timeout).await;
    Ok(())
}

async fn run_echo(args: EchoArgs) -> anyhow::Result<()> {
    let instance = args.instance.clone().unwrap_or_else(|| args.listen.to_string());
    let config = EchoConfig { prefix: args.prefix, instance };
    config.validate().map_err(|e| ConfigError(e.to_string()))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = CertFiles { cert: cert.clone(), key: key.clone() };
            let entry = cert_files::load(&files, tls::unix_now())
                .map_err(|e| ConfigError(format!("--tls-cert/--tls-key: {e}")))?;
            let handle = Arc::new(CertHandle::new(Arc::new(entry)));
            Some(tls::server::config(handle).context("TLS configuration")?)
        }
        _ => None,
    };
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, instance = %config.instance, tls = tls.is_some(), "echo serving");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    match tls {
        Some(tls) => echo::serve_tls(listener, config, tls, shutdown).await?,
        None => echo::serve(listener, config, shutdown).await?,
    }
    Ok(())
}

/// The prefix the demo's backends put before each echo, as in the classic nginx tutorial.
pub const DEMO_PREFIX: &str = "Server received from client: ";

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let mut backends = Vec::new();
    for n in 1..=2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding a demo echo backend")?;
        backends.push(listener.local_addr()?);
        let config = EchoConfig { prefix: DEMO_PREFIX.to_string(), instance: format!("echo-{n}") };
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = echo::serve(listener, config, stop).await {
                tracing::error!(error = %e, "demo echo backend failed");
            }
        });
    }
    let mut serve = demo_serve_args(&args, &backends)?;
    let demo_tls = if args.tls {
        let dir = args.tls_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("wsingress-demo-tls"));
        let files =
            write_demo_tls(&dir).with_context(|| format!("writing the demo's TLS files to {}", dir.display()))?;
        serve.tls_listen = crate::cli::OptionalAddr(Some(args.tls_listen));
        serve.tls_cert = Some(files.cert.clone());
        serve.tls_key = Some(files.key.clone());
        Some(files)
    } else {
        None
    };
    let running = start(&serve, RouteSource::Static(backends.clone())).await.map_err(|e| {
        e.context("the demo needs free local ports; pick others with --listen/--admin-listen (and --tls-listen)")
    })?;
    let url = format!("ws://{}/", running.proxy_addr);
    println!();
    println!(
        "wsingress demo is running: proxy {} -> echo backends {} and {}",
        running.proxy_addr, backends[0], backends[1]
    );
    println!();
    println!("  WebSocket URL : {url}");
    println!("  try it        : echo hello | websocat -1 {url}        (or: npx wscat -c {url})");
    println!("  in a browser  : http://{}/", running.proxy_addr);
    println!("  metrics       : http://{}/metrics    routes: http://{}/routes", running.admin_addr, running.admin_addr);
    if let (Some(files), Some(tls_addr)) = (&demo_tls, running.tls_addr) {
        let wss = format!("wss://{tls_addr}/");
        let ca = files.ca.display();
        println!();
        println!("  wss URL       : {wss}");
        println!("  CA to trust   : {ca}   (made now; the certificate names 127.0.0.1 and localhost)");
        println!("  try it (wss)  : wsingress client {wss} --ca {ca} --send hello");
        println!("          node  : NODE_EXTRA_CA_CERTS={ca} npx wscat -c {wss}");
        println!(
            "       openssl  : openssl s_client -connect {tls_addr} -CAfile {ca} -alpn http/1.1 -verify_return_error </dev/null"
        );
        println!("  in a browser  : https://{tls_addr}/   (once {ca} is trusted)");
    }
    println!();
    println!("Press Ctrl-C to stop.");
    wait_for_signal().await;
    running.shutdown(Duration::from_secs(5)).await;
    stop.cancel();
    Ok(())
}

/// The files `demo --tls` writes: a CA made now, and a certificate it issued for the
/// loopback names with its key (readable by the owner only).
#[derive(Debug, Clone)]
pub struct DemoTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Make the demo's CA and certificate (ECDSA P-256, 30 days, for 127.0.0.1, ::1 and
/// localhost) and write them to `dir`.
pub fn write_demo_tls(dir: &std::path::Path) -> anyhow::Result<DemoTlsFiles> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let validity = generate::Validity::around(tls::unix_now(), 30);
    let ca = generate::Authority::new("wsingress demo CA", validity)?;
    let leaf = ca.issue("wsingress demo", &["127.0.0.1", "::1", "localhost"], validity)?;
    std::fs::create_dir_all(dir)?;
    let files = DemoTlsFiles { ca: dir.join("ca.crt"), cert: dir.join("tls.crt"), key: dir.join("tls.key") };
    std::fs::write(&files.ca, ca.cert_pem())?;
    std::fs::write(&files.cert, &leaf.cert_pem)?;
    // Replaced, not rewritten in place: a key file left by another user keeps its owner.
    let _ = std::fs::remove_file(&files.key);
    let mut key = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&files.key)?;
    key.write_all(leaf.key_pem.as_bytes())?;
    Ok(files)
}

/// The `serve` settings of the demo: the defaults, in front of `backends`.
fn demo_serve_args(args: &DemoArgs, backends: &[SocketAddr]) -> Result<ServeArgs, ConfigError> {
    use clap::Parser;
    let upstream = backends.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let argv = ["wsingress", "serve", "--upstream", &upstream];
    let mut serve = match Cli::try_parse_from(argv).map(|c| c.command) {
        Ok(Command::Serve(s)) => *s,
        Ok(_) => return Err(ConfigError("demo: not a serve command".to_string())),
        Err(e) => return Err(ConfigError(format!("demo: {e}"))),
    };
    serve.listen = args.listen;
    serve.admin_listen = args.admin_listen;
    // The demo is plain ws:// on loopback; `--tls` adds its own listener and certificate.
    serve.tls_listen = crate::cli::OptionalAddr(None);
    Ok(serve)
}

/// `wsingress client`: progress on stdout; a flag mistake exits 64, a failed expectation 1.
async fn run_client(args: ClientArgs) -> anyhow::Result<()> {
    let plan = args.plan().map_err(|e| ConfigError(e.to_string()))?;
    let result = crate::client::run(&plan, |line| println!("{line}")).await;
    result.map(drop).map_err(|e| match e {
        e if e.is_usage() => anyhow::Error::new(ConfigError(e.to_string())),
        e => anyhow::Error::new(e).context(format!("client {}", plan.url)),
    })
}

/// SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = ["wsingress", "serve"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Serve(s)) => *s,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn the_shutdown_window_leaves_room_for_the_close_linger() {
        let s = Duration::from_secs;
        // Defaults: a third of 30 s.
        assert_eq!(shutdown_window(s(10), s(30)), s(10));
        // Capped at two thirds of the timeout.
        assert_eq!(shutdown_window(s(60), s(30)), s(20));
        // A short timeout: the window ends 2.5 s before it (a silent peer's 2 s linger fits).
        assert_eq!(shutdown_window(s(10), s(5)), Duration::from_millis(2500));
        assert_eq!(shutdown_window(s(1), s(2)), Duration::ZERO);
    }

    #[test]
    fn kube_config_from_flags() {
        let args = serve(&[
            "--watch-namespace",
            "apps",
            "--publish-service",
            "ingress/wsingress",
            "--pod-name",
            "wsingress-0",
            "--ingress-class",
            "ws",
        ]);
        let c = kube_config(&args, "ingress").unwrap();
        assert_eq!(c.watch_namespaces, ["apps"]);
        assert_eq!(c.defaults.class_name, "ws");
        assert_eq!(c.identity, "wsingress-0");
        let e = c.election.unwrap();
        assert_eq!((e.namespace.as_str(), e.lease_name.as_str()), ("ingress", "wsingress-leader"));
        assert_eq!(
            c.status.map(|s| s.publish),
            Some(PublishFrom::Service { namespace: "ingress".into(), name: "wsingress".into() })
        );
        let mut bad = args.clone();
        bad.publish_service = Some("nope".into());
        assert!(kube_config(&bad, "x").unwrap_err().0.contains("NAMESPACE/NAME"));
        bad.publish_service = None;
        bad.pod_name = Some(String::new());
        assert_eq!(kube_config(&bad, "x").unwrap_err().0, "--pod-name must not be empty");
    }

    #[test]
    fn cluster_flags_for_shared_clusters() {
        let c = kube_config(
            &serve(&[
                "--watch-namespace",
                "apps, web,apps",
                "--controller-name",
                "example.com/internal",
                "--enable-service-routes",
                "--service-routes-namespaces",
                "apps,web",
                "--unsupported-security-annotations",
                "ignore",
            ]),
            "ingress",
        )
        .unwrap();
        assert_eq!(c.watch_namespaces, ["apps", "web"]);
        assert_eq!(c.defaults.controller_name, "example.com/internal");
        assert!(!c.defaults.class_fallback, "a cluster serves exactly its IngressClasses");
        assert_eq!(
            c.defaults.service_routes,
            ServiceRoutes { enabled: true, require_class: true, namespaces: vec!["apps".into(), "web".into()] }
        );
        assert_eq!(c.defaults.unsupported_security, crate::translate::UnsupportedSecurity::Ignore);
        let defaults = kube_config(&serve(&[]), "ingress").unwrap().defaults;
        assert!(!defaults.service_routes.enabled, "Service-only routes are off by default in a cluster");
        assert_eq!(defaults.unsupported_security, crate::translate::UnsupportedSecurity::Refuse);
        // A manifests file keeps Service-only routes and the --ingress-class fallback.
        let file = translate_defaults(&serve(&[])).unwrap();
        assert!(file.service_routes.enabled && file.class_fallback);
        for bad in ["apps,,web", "Apps", "x-", "a/b"] {
            let e = kube_config(&serve(&["--watch-namespace", bad]), "x").unwrap_err().0;
            assert!(e.contains("--watch-namespace"), "{bad}: {e}");
        }
        let e = kube_config(&serve(&["--service-routes-namespaces", "apps"]), "x").unwrap_err().0;
        assert!(e.contains("--enable-service-routes"), "{e}");
        assert!(Cli::try_parse_from(["wsingress", "serve", "--unsupported-security-annotations", "maybe"]).is_err());
        let e = kube_config(&serve(&["--controller-name", " "]), "x").unwrap_err().0;
        assert!(e.contains("--controller-name"), "{e}");
    }

    #[test]
    fn gateway_api_flags() {
        use crate::source::gateway_watch::GatewayApiMode;
        let c = kube_config(&serve(&[]), "ingress").unwrap();
        assert_eq!(c.gateway_api, GatewayApiConfig { mode: GatewayApiMode::Auto, recheck: Duration::from_secs(60) });
        let c = kube_config(&serve(&["--gateway-api", "off", "--gateway-api-recheck", "10s"]), "x").unwrap();
        assert_eq!(c.gateway_api, GatewayApiConfig { mode: GatewayApiMode::Off, recheck: Duration::from_secs(10) });
        assert!(Cli::try_parse_from(["wsingress", "serve", "--gateway-api", "on"]).is_err());
        let e = kube_config(&serve(&["--gateway-api-recheck", "0s"]), "x").unwrap_err().0;
        assert!(e.contains("--gateway-api-recheck"), "{e}");
    }
}
