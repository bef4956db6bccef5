//! Soak: thousands of WebSocket connections with steady traffic and churn through the real
//! `wsingress` binary for a bounded time, sampling the proxy's RSS and open descriptors
//! (`/proc/PID/status`, `/proc/PID/fd`). Fails on any client error, on growth beyond the
//! bounds below between the warm sample and the end, or on descriptors left behind once
//! every client has gone.
//!
//! Ignored by default; `scripts/soak.sh` runs it against the release binary. Knobs:
//! `WSINGRESS_SOAK_SECS` (default 600), `WSINGRESS_SOAK_CONNS` (default 2000),
//! `WSINGRESS_SOAK_BIN` (default: the binary cargo built for this test).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// RSS may grow by this fraction of the warm sample, plus [`RSS_SLACK_KB`] (allocator
/// arenas settling, buffer pools filling on both worker threads).
const RSS_GROWTH: f64 = 0.25;
const RSS_SLACK_KB: u64 = 16 * 1024;
/// Open descriptors may differ from the warm sample by this much plus 2 % of the
/// connections (churn: some tunnels are between close and reconnect at any instant).
const FD_SLACK: u64 = 64;
/// After every client left, descriptors return to the idle baseline within this.
const FD_IDLE_SLACK: u64 = 16;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kb: u64,
    fds: u64,
}

fn sample(pid: u32) -> Sample {
    let rss_kb = common::rss_kib(pid);
    assert!(rss_kb > 0, "no VmRSS for pid {pid}");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    Sample { rss_kb, fds }
}

/// Start the proxy binary in front of `upstream`; its proxy and admin addresses.
fn spawn_proxy(bin: &str, upstream: &str) -> (ServeProcess, std::net::SocketAddr, std::net::SocketAddr) {
    let args = ["--upstream", upstream, "--idle-timeout", "120s", "--shutdown-timeout", "5s"];
    spawn_serve_binary(bin, &args, "info,wsingress::access=off")
}

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    messages: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn error(&self, what: String) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("soak error: {what}");
        }
    }
}

/// One client slot: connect, exchange a message about every second for a lifetime of
/// 5–30 s, close cleanly, reconnect; until `stop`.
async fn client(id: u64, url: String, stop: Arc<AtomicBool>, c: Arc<Counters>) {
    let mut seq = 0u64;
    let mut rng = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Spread the first connects over two seconds.
    tokio::time::sleep(Duration::from_millis(next() % 2000)).await;
    while !stop.load(Ordering::Relaxed) {
        let mut ws = match connect_with(&url, &[]).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                c.error(format!("client {id}: connect: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        c.connects.fetch_add(1, Ordering::Relaxed);
        let lifetime = Duration::from_millis(5_000 + next() % 25_000);
        let born = Instant::now();
        let mut ok = true;
        while born.elapsed() < lifetime && !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(800 + next() % 400)).await;
            seq += 1;
            let text = format!("{id}:{seq}:{}", "x".repeat((next() % 512) as usize));
            if let Err(e) = ws.send(Message::text(text.clone())).await {
                c.error(format!("client {id}: send: {e}"));
                ok = false;
                break;
            }
            let reply = loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => break Some(t.to_string()),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    other => {
                        c.error(format!("client {id}: expected the echo, got {other:?}"));
                        break None;
                    }
                }
            };
            match reply {
                Some(t) if t == text => {
                    c.messages.fetch_add(1, Ordering::Relaxed);
                }
                Some(t) => {
                    c.error(format!("client {id}: wrong echo {t:.40}"));
                    ok = false;
                    break;
                }
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            let _ = ws.close(None).await;
            // Drain until the close handshake completes.
            while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running; scripts/soak.sh runs it (WSINGRESS_SOAK_SECS for the duration)"]
async fn soak_steady_traffic_and_churn_without_growth() {
    let secs = env_u64("WSINGRESS_SOAK_SECS", 600);
    let conns = env_u64("WSINGRESS_SOAK_CONNS", 2000);
    let bin = std::env::var("WSINGRESS_SOAK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_wsingress").to_string());
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get()
        && soft < hard
    {
        rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    }

    let backend = echo("soak", "").await;
    let (child, proxy_addr, admin) = spawn_proxy(&bin, &backend.addr.to_string());
    let pid = child.0.as_ref().map(std::process::Child::id).expect("started");
    let idle = sample(pid);
    let url = ws_url(proxy_addr, "/");
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let tasks: Vec<_> =
        (0..conns).map(|id| tokio::spawn(client(id, url.clone(), stop.clone(), counters.clone()))).collect();

    // Warm sample once every client has connected and traffic is steady.
    let started = Instant::now();
    let warm_at = Duration::from_secs((secs / 6).clamp(10, 60));
    let c = counters.clone();
    wait_until(Duration::from_secs(120), "every client slot connected once", || {
        let c = c.clone();
        async move { c.connects.load(Ordering::Relaxed) >= conns }
    })
    .await;
    tokio::time::sleep(warm_at.saturating_sub(started.elapsed())).await;
    let warm_at = started.elapsed();
    let warm = sample(pid);
    let mut peak = warm;
    let run_for = Duration::from_secs(secs);
    let mut last_report = Instant::now();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = sample(pid);
        peak.rss_kb = peak.rss_kb.max(s.rss_kb);
        peak.fds = peak.fds.max(s.fds);
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            eprintln!(
                "soak: t={:>4}s rss={} KiB fds={} connects={} messages={} errors={}",
                started.elapsed().as_secs(),
                s.rss_kb,
                s.fds,
                counters.connects.load(Ordering::Relaxed),
                counters.messages.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed)
            );
        }
    }
    let end = sample(pid);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Every client left: descriptors go back to the idle baseline, the gauge to zero.
    let mut after = sample(pid);
    let deadline = Instant::now() + Duration::from_secs(15);
    while after.fds > idle.fds + FD_IDLE_SLACK && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = sample(pid);
    }
    let metrics = String::from_utf8(http_get(admin, "x", "/metrics").await.2).unwrap();
    let active: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("wsingress_websocket_connections_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();

    let connects = counters.connects.load(Ordering::Relaxed);
    let messages = counters.messages.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    println!(
        "soak result: {secs} s, {conns} client slots, {connects} connections, {messages} echoed messages, {errors} errors\n\
         soak result: proxy idle  rss={} KiB fds={}\n\
         soak result: proxy warm  rss={} KiB fds={} (t={:.0?})\n\
         soak result: proxy peak  rss={} KiB fds={}\n\
         soak result: proxy end   rss={} KiB fds={}\n\
         soak result: proxy after rss={} KiB fds={} (all clients gone), connections_active={active}",
        idle.rss_kb,
        idle.fds,
        warm.rss_kb,
        warm.fds,
        warm_at,
        peak.rss_kb,
        peak.fds,
        end.rss_kb,
        end.fds,
        after.rss_kb,
        after.fds
    );
    assert_eq!(errors, 0, "clients saw errors");
    assert!(connects > conns, "churn: clients must have reconnected ({connects} connects for {conns} slots)");
    let rss_bound = (warm.rss_kb as f64 * (1.0 + RSS_GROWTH)) as u64 + RSS_SLACK_KB;
    assert!(end.rss_kb <= rss_bound, "RSS grew from {} KiB to {} KiB (bound {rss_bound})", warm.rss_kb, end.rss_kb);
    let fd_bound = warm.fds + FD_SLACK + conns / 50;
    assert!(end.fds <= fd_bound, "descriptors grew from {} to {} (bound {fd_bound})", warm.fds, end.fds);
    assert!(after.fds <= idle.fds + FD_IDLE_SLACK, "descriptors left behind: idle {} → after {}", idle.fds, after.fds);
    assert_eq!(active, 0.0, "connections_active after every client left");
}
