//! `wsbench`: a WebSocket load generator for comparing relays (wsingress, nginx, HAProxy) with a
//! direct connection. Modes: `handshake`, `pingpong`, `stream`, `idle`, and `probe` (readiness).
//! Targets are `ws://` or `wss://` (`--ca`: TLS 1.3, full handshakes only, no resumption), with
//! an optional `--host` for proxies with many routes. Every echo is checked byte for byte; a run
//! with errors says so and exits 1.
#![forbid(unsafe_code)]

#[path = "wsbench/conn.rs"]
mod conn;
#[path = "wsbench/modes.rs"]
mod modes;
#[path = "wsbench/procfs.rs"]
mod procfs;
#[path = "wsbench/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Connect, upgrade, one echo, close: handshakes/s, p50/p99.
    Handshake,
    /// C connections in a closed loop, one message in flight each: messages/s, round-trip percentiles.
    Pingpong,
    /// Bulk messages with a window of in-flight messages per connection: MB/s.
    Stream,
    /// Hold N idle connections; the proxy's resident memory per connection; then a sample must echo.
    Idle,
    /// Try one connect + echo until it works or --duration passes (exit 0 when it worked).
    Probe,
}

/// Load generator for WebSocket relays.
#[derive(Debug, Parser)]
#[command(name = "wsbench", version)]
pub struct Opts {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// Target, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH.
    #[arg(long, default_value = "ws://127.0.0.1:8080/")]
    pub url: String,
    /// The `Host` header to send (default: the URL's authority); e.g. one of many routes' hosts.
    #[arg(long)]
    pub host: Option<String>,
    /// wss://: CA certificates (PEM) to verify the server with. Every handshake is a full TLS 1.3
    /// handshake (AES-128-GCM, X25519; session resumption off).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// wss://: the SNI and the name the certificate must carry (default: --host, else the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Measuring time (idle: how long the connections are held before memory is read).
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    pub duration: Duration,
    /// Load before the measuring window starts (not counted).
    #[arg(long, value_parser = parse_secs, default_value = "1")]
    pub warmup: Duration,
    /// Concurrent connections (handshake: concurrent handshake loops; idle: connections held).
    #[arg(long, short = 'c')]
    pub connections: Option<usize>,
    /// Message size in bytes (default: 1024; stream: 65536).
    #[arg(long, short = 's')]
    pub size: Option<usize>,
    /// stream: messages in flight per connection.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// idle: spread connections over source addresses 127.0.0.2 .. 127.0.0.(1+N).
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// idle: how many held connections must still echo at the end.
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// idle: handshakes in flight while opening.
    #[arg(long, default_value_t = 128)]
    pub open_concurrency: usize,
    /// Per-operation timeout (connect+upgrade, one echo, close).
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    pub timeout: Duration,
    /// Proxy process(es) whose CPU time (/proc/PID/stat) and VmRSS are read before and after (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub proxy_pid: Vec<u32>,
    /// Load generator threads (1: a current-thread runtime, the cheapest).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Free-form label copied into the JSON (e.g. the target's name).
    #[arg(long, default_value = "")]
    pub label: String,
}

/// `10`, `2.5`, `10s`, `500ms`.
fn parse_secs(v: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else {
        (v, 1.0)
    };
    let x: f64 = num.trim().parse().map_err(|_| format!("`{v}` is not a duration (10, 2.5s, 500ms)"))?;
    Duration::try_from_secs_f64(x * scale).map_err(|e| format!("`{v}`: {e}"))
}

/// The target from `--url`, `--host`, `--ca` and `--server-name`.
fn target(opts: &Opts) -> Result<conn::Target, String> {
    let mut target = conn::Target::parse(&opts.url)?;
    if let Some(host) = &opts.host {
        target.host_header = host.clone();
    }
    match (&opts.ca, target.secure) {
        (Some(ca), true) => {
            let name = opts.server_name.clone().unwrap_or_else(|| target.host().to_owned());
            let tls = conn::Tls::new(ca, &name)?;
            Ok(target.with_tls(tls))
        }
        (None, true) => Err(format!("`{}`: wss:// needs --ca FILE", opts.url)),
        (Some(_), false) => Err("--ca is for wss:// URLs".into()),
        (None, false) => Ok(target),
    }
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    // Idle mode holds thousands of sockets: use every descriptor the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("wsbench: could not raise RLIMIT_NOFILE: {e}");
    }
    let target = match target(&opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wsbench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = if opts.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(opts.threads).enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wsbench: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(modes::run(&opts, target));
    match outcome {
        Ok(report) => {
            let errors = report["errors"].as_u64().unwrap_or(0);
            if opts.json {
                println!("{report}");
            } else {
                modes::print_human(&report);
            }
            if errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
        }
        Err(e) => {
            eprintln!("wsbench: {e}");
            ExitCode::from(2)
        }
    }
}
