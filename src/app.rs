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
use crate::proxy::{self, ProxyConfig, ProxyState};
use crate::readiness::Readiness;
use crate::routes::RouteHandle;
use crate::source::{self, Publisher};

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
    pub admin_addr: SocketAddr,
    pub routes: Arc<RouteHandle>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub drain: Drain,
    publisher: Publisher,
    stop_background: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// A publisher for [`RouteSource::Manual`].
    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Graceful shutdown: readiness false, stop accepting, Close 1001 to every tunnel, wait
    /// until all are closed or `timeout` passed. True when everything closed in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.readiness.set_draining();
        self.drain.start();
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

/// Bind and start everything for `serve`. Configuration is validated before any port is bound.
pub async fn start(args: &ServeArgs, route_source: RouteSource) -> anyhow::Result<Running> {
    let trusted = TrustedProxies::parse(&args.trusted_proxies).map_err(ConfigError)?;
    let settings = args.route.settings();
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let routes = Arc::new(RouteHandle::new());
    let readiness = Arc::new(Readiness::new(routes.clone()));
    let drain = Drain::new();
    let publisher = Publisher::new(routes.clone(), metrics.clone(), route_source.label());
    let stop_background = CancellationToken::new();

    // Routes that can be known before binding are published first, so a bad file fails fast.
    let mut background: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = Vec::new();
    match &route_source {
        RouteSource::Static(addrs) => {
            publisher.publish(source::static_upstream::table(addrs, settings.clone()), &[]);
        }
        RouteSource::Manifests(path) => {
            let defaults =
                crate::translate::Defaults { class_name: args.ingress_class.clone(), settings: settings.clone() };
            let (table, warnings) = source::file::load_file(path, &defaults)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            publisher.publish(table, &warnings);
            let (path, publisher, stop) = (path.clone(), publisher.clone(), stop_background.clone());
            background.push(Box::pin(source::file::run(path, defaults, publisher, stop)));
        }
        RouteSource::Kube => {
            let fut = source::kube::run_from_args(args, publisher.clone(), stop_background.clone()).await?;
            background.push(fut);
        }
        RouteSource::Manual => {}
    }

    let proxy_listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("binding the proxy listener {}", args.listen))?;
    let admin_listener = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {}", args.admin_listen))?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let state = Arc::new(ProxyState::new(routes.clone(), metrics.clone(), drain.clone(), trusted));
    let config = ProxyConfig {
        header_timeout: args.header_timeout,
        max_header_bytes: args.max_header_bytes,
        max_connections_per_client: args.max_connections_per_client,
    };
    let mut tasks = vec![tokio::spawn(proxy::serve(proxy_listener, state, config))];
    let admin_state = AdminState { metrics: metrics.clone(), readiness: readiness.clone(), routes: routes.clone() };
    let admin_stop = stop_background.clone();
    let admin_drain =
        args.admin_drain.then(|| admin::AdminDrain { drain: drain.clone(), timeout: args.shutdown_timeout });
    tasks.push(tokio::spawn(async move {
        if let Err(e) = admin::serve_with_drain(admin_listener, admin_state, admin_drain, admin_stop).await {
            tracing::error!(error = %e, "admin listener failed");
        }
    }));
    for fut in background {
        tasks.push(tokio::spawn(fut));
    }
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, source = route_source.label(), "wsingress serving");
    Ok(Running { proxy_addr, admin_addr, routes, metrics, readiness, drain, publisher, stop_background, tasks })
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
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, instance = %config.instance, "echo serving");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    echo::serve(listener, config, shutdown).await?;
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
    let serve = demo_serve_args(&args, &backends)?;
    let running = start(&serve, RouteSource::Static(backends.clone()))
        .await
        .map_err(|e| e.context("the demo needs two free local ports; pick others with --listen/--admin-listen"))?;
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
    println!();
    println!("Press Ctrl-C to stop.");
    wait_for_signal().await;
    running.shutdown(Duration::from_secs(5)).await;
    stop.cancel();
    Ok(())
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
