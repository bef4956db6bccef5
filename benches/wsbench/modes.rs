//! The measuring modes: each runs its load for a warm-up and a measuring window, checks every
//! echo, samples the proxy's /proc figures at the window's edges and returns one JSON report.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use crate::conn::{Payload, Target, WsConn, WsError};
use crate::procfs::{self, ProcError};
use crate::stats::{Tally, nanos, percentiles_us, round2};
use crate::{Mode, Opts};

/// Pause after a failed operation so a dead target does not turn into a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Proc(#[from] ProcError),
    #[error("a load task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Usage(String),
}

/// What every load task needs, shared read-only.
#[derive(Debug)]
struct Plan {
    target: Target,
    size: usize,
    window: usize,
    timeout: Duration,
    /// Start of the measuring window (end of warm-up).
    start: Instant,
    end: Instant,
}

impl Plan {
    fn counts(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

pub async fn run(opts: &Opts, target: Target) -> Result<Value, RunError> {
    let size = opts.size.unwrap_or(if opts.mode == Mode::Stream { 64 * 1024 } else { 1024 });
    match opts.mode {
        Mode::Probe => Ok(probe(opts, &target, size).await),
        Mode::Idle => idle(opts, target, size).await,
        Mode::Handshake | Mode::Pingpong | Mode::Stream => windowed(opts, target, size).await,
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Handshake => "handshake",
        Mode::Pingpong => "pingpong",
        Mode::Stream => "stream",
        Mode::Idle => "idle",
        Mode::Probe => "probe",
    }
}

/// Modes with a measuring window: spawn the loops, sample /proc at the window's edges, merge.
async fn windowed(opts: &Opts, target: Target, size: usize) -> Result<Value, RunError> {
    let connections = opts.connections.unwrap_or(match opts.mode {
        Mode::Handshake => 16,
        Mode::Pingpong => 64,
        _ => 8,
    });
    if connections == 0 || opts.window == 0 {
        return Err(RunError::Usage("--connections and --window must be at least 1".into()));
    }
    if opts.mode == Mode::Stream && size < 8 {
        return Err(RunError::Usage("stream needs --size of at least 8 (sequence number)".into()));
    }
    let start = Instant::now() + opts.warmup;
    let plan =
        Arc::new(Plan { target, size, window: opts.window, timeout: opts.timeout, start, end: start + opts.duration });
    let mut tasks = JoinSet::new();
    for id in 0..connections as u64 {
        let plan = plan.clone();
        match opts.mode {
            Mode::Handshake => tasks.spawn(handshake_loop(plan, id)),
            Mode::Pingpong => tasks.spawn(pingpong_loop(plan, id)),
            _ => tasks.spawn(stream_loop(plan, id)),
        };
    }
    sleep_until(plan.start).await;
    let before = procfs::sample(&opts.proxy_pid)?;
    let window_start = Instant::now();
    sleep_until(plan.end).await;
    let after = procfs::sample(&opts.proxy_pid)?;
    let measured = window_start.elapsed().as_secs_f64();
    let mut total = Tally::default();
    while let Some(t) = tasks.join_next().await {
        total.merge(t?);
    }
    let secs = measured.max(1e-9);
    let mut report = json!({
        "mode": mode_name(opts.mode),
        "label": opts.label,
        "url": opts.url,
        "connections": connections,
        "size": size,
        "duration_s": round2(secs),
        "ops": total.ops,
        "ops_per_s": round2(total.ops as f64 / secs),
        "mb_per_s": round2(total.bytes as f64 / secs / 1e6),
        "latency_us": percentiles_us(&mut total.latency_ns),
        "proxy": procfs::report(&opts.proxy_pid, &before, &after, total.ops),
        "errors": total.errors,
        "error_samples": total.error_samples,
    });
    if opts.mode == Mode::Handshake {
        report["upgrade_us"] = percentiles_us(&mut total.upgrade_ns);
    }
    if opts.mode == Mode::Stream {
        report["window"] = json!(opts.window);
    }
    Ok(report)
}

/// Connect, upgrade, one echo, close; over and over.
async fn handshake_loop(plan: Arc<Plan>, id: u64) -> Tally {
    let mut tally = Tally::default();
    let mut payload = Payload::new(plan.size, id);
    let mut seq = 0u64;
    while Instant::now() < plan.end {
        seq += 1;
        payload.set_seq(seq);
        let t0 = Instant::now();
        let outcome = timeout(plan.timeout, async {
            let mut conn = WsConn::connect(&plan.target, None).await?;
            let upgraded = Instant::now();
            conn.echo(&payload).await?;
            conn.close().await?;
            Ok::<_, WsError>(upgraded)
        })
        .await;
        let t1 = Instant::now();
        match outcome {
            Ok(Ok(upgraded)) => {
                if plan.counts(t1) {
                    tally.ops += 1;
                    tally.bytes += plan.size as u64;
                    tally.latency_ns.push(nanos(t1 - t0));
                    tally.upgrade_ns.push(nanos(upgraded - t0));
                }
            }
            Ok(Err(e)) => {
                tally.error(e);
                sleep(ERROR_BACKOFF).await;
            }
            Err(_) => tally.error(WsError::Timeout),
        }
    }
    tally
}

/// One connection for a load loop; a failure is counted (and backed off from) and gives `None`.
async fn connect_counted(plan: &Plan, tally: &mut Tally) -> Option<WsConn> {
    match timeout(plan.timeout, WsConn::connect(&plan.target, None)).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tally.error(e);
            sleep(ERROR_BACKOFF).await;
            None
        }
        Err(_) => {
            tally.error(WsError::Timeout);
            None
        }
    }
}

/// One connection, one message in flight: send, wait for the echo, check, repeat.
/// A broken connection is counted as an error and replaced.
async fn pingpong_loop(plan: Arc<Plan>, id: u64) -> Tally {
    let mut tally = Tally::default();
    let mut payload = Payload::new(plan.size, id);
    let mut seq = 0u64;
    'connect: while Instant::now() < plan.end {
        let Some(mut conn) = connect_counted(&plan, &mut tally).await else {
            continue;
        };
        loop {
            if Instant::now() >= plan.end {
                let _ = timeout(Duration::from_secs(1), conn.close()).await;
                break 'connect;
            }
            seq += 1;
            payload.set_seq(seq);
            let t0 = Instant::now();
            let outcome = timeout(plan.timeout, conn.echo(&payload)).await;
            let t1 = Instant::now();
            match outcome {
                Ok(Ok(())) => {
                    if plan.counts(t1) {
                        tally.ops += 1;
                        tally.bytes += plan.size as u64;
                        tally.latency_ns.push(nanos(t1 - t0));
                    }
                }
                Ok(Err(e)) => {
                    tally.error(e);
                    sleep(ERROR_BACKOFF).await;
                    continue 'connect;
                }
                Err(_) => {
                    tally.error(WsError::Timeout);
                    continue 'connect;
                }
            }
        }
    }
    tally
}

/// One connection with up to `window` messages in flight: a writer and a reader in one task.
/// The writer queues each message's send time before writing it; the reader takes the next time,
/// reads the next echo and checks it carries the expected sequence number.
async fn stream_loop(plan: Arc<Plan>, id: u64) -> Tally {
    let mut tally = Tally::default();
    let mut seq_base = 0u64;
    while Instant::now() < plan.end {
        let Some(conn) = connect_counted(&plan, &mut tally).await else {
            continue;
        };
        let (mut read_side, mut write_side) = conn.into_split();
        let (sent_tx, mut sent_rx) = mpsc::channel::<Instant>(plan.window);
        let writer = {
            let plan = plan.clone();
            let mut payload = Payload::new(plan.size, id);
            async move {
                let mut seq = seq_base;
                while Instant::now() < plan.end {
                    // A free slot in the channel is a free slot in the window.
                    let Ok(slot) = sent_tx.reserve().await else {
                        break;
                    };
                    seq += 1;
                    payload.set_seq(seq);
                    slot.send(Instant::now());
                    // Bounded: if the reader gave up, nobody drains the echoes and the write could block.
                    timeout(plan.timeout, async {
                        write_side.write_all(payload.frame()).await?;
                        write_side.flush().await
                    })
                    .await
                    .map_err(|_| WsError::Timeout)??;
                }
                Ok::<_, WsError>(write_side)
            }
        };
        let reader = {
            let plan = plan.clone();
            let mut expected = Payload::new(plan.size, id);
            let mut tally = Tally::default();
            async move {
                let mut seq = seq_base;
                while let Some(sent) = sent_rx.recv().await {
                    seq += 1;
                    expected.set_seq(seq);
                    let checked = match timeout(plan.timeout, read_side.recv()).await {
                        Ok(Ok(msg)) => expected.check(&msg),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(WsError::Timeout),
                    };
                    if let Err(e) = checked {
                        tally.error(e);
                        // Dropping the receiver stops the writer at its next slot.
                        break;
                    }
                    let now = Instant::now();
                    if plan.counts(now) {
                        tally.ops += 1;
                        tally.bytes += plan.size as u64;
                        tally.latency_ns.push(nanos(now - sent));
                    }
                }
                (tally, seq)
            }
        };
        let (written, (read_tally, last_seq)) = tokio::join!(writer, reader);
        let broken = read_tally.errors > 0;
        tally.merge(read_tally);
        seq_base = last_seq;
        match written {
            Ok(mut write_side) if !broken => {
                let _ = write_side.shutdown().await;
            }
            Ok(_) => sleep(ERROR_BACKOFF).await,
            Err(e) => {
                tally.error(e);
                sleep(ERROR_BACKOFF).await;
            }
        }
    }
    tally
}

/// Try one connect + echo + close until it works or `--duration` passes.
async fn probe(opts: &Opts, target: &Target, size: usize) -> Value {
    let deadline = Instant::now() + opts.duration;
    let payload = Payload::new(size, 1);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let outcome = timeout(opts.timeout.min(Duration::from_secs(2)), async {
            let mut conn = WsConn::connect(target, None).await?;
            conn.echo(&payload).await?;
            conn.close().await
        })
        .await;
        let last_error = match outcome {
            Ok(Ok(())) => {
                return json!({"mode": "probe", "label": opts.label, "url": opts.url,
                              "attempts": attempts, "errors": 0, "error_samples": []});
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => WsError::Timeout.to_string(),
        };
        if Instant::now() >= deadline {
            return json!({"mode": "probe", "label": opts.label, "url": opts.url,
                          "attempts": attempts, "errors": 1, "error_samples": [last_error]});
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// Open N connections (one echo each) from several source addresses, hold them, read the proxy's
/// resident memory, then check that a sample spread over all of them still echoes.
async fn idle(opts: &Opts, target: Target, size: usize) -> Result<Value, RunError> {
    let wanted = opts.connections.unwrap_or(1000);
    let target = Arc::new(target);
    let before = procfs::sample(&opts.proxy_pid)?;
    let mut tally = Tally::default();
    let opened_at = Instant::now();
    let gate = Arc::new(Semaphore::new(opts.open_concurrency.max(1)));
    let mut opening = JoinSet::new();
    for i in 0..wanted {
        let target = target.clone();
        let gate = gate.clone();
        let source = (opts.sources > 0).then(|| {
            let k = (i % usize::from(opts.sources)) as u8;
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k))
        });
        let per_op = opts.timeout;
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut payload = Payload::new(size, i as u64);
            payload.set_seq(1);
            timeout(per_op, async {
                let mut conn = WsConn::connect(&target, source).await?;
                conn.echo(&payload).await?;
                Ok::<_, WsError>((i, conn))
            })
            .await
            .unwrap_or(Err(WsError::Timeout))
        });
    }
    let mut held: Vec<(usize, WsConn)> = Vec::with_capacity(wanted);
    while let Some(r) = opening.join_next().await {
        match r? {
            Ok(c) => held.push(c),
            Err(e) => tally.error(format!("opening: {e}")),
        }
    }
    let open_secs = opened_at.elapsed().as_secs_f64();
    let opened = procfs::sample(&opts.proxy_pid)?;
    sleep(opts.duration).await;
    let after = procfs::sample(&opts.proxy_pid)?;

    // Spread the sample over the whole set (and so over every source address).
    held.sort_by_key(|(i, _)| *i);
    let n = held.len();
    let sample = opts.sample.min(n);
    let mut sample_ok = 0usize;
    for k in 0..sample {
        let idx = k * n / sample;
        let (i, conn) = &mut held[idx];
        let mut payload = Payload::new(size, *i as u64);
        payload.set_seq(2);
        match timeout(opts.timeout, conn.echo(&payload)).await {
            Ok(Ok(())) => sample_ok += 1,
            Ok(Err(e)) => tally.error(format!("idle connection {i}: {e}")),
            Err(_) => tally.error(format!("idle connection {i}: timed out")),
        }
    }
    let still_open = sample_ok;
    drop(held);

    let proxy = if opts.proxy_pid.is_empty() {
        Value::Null
    } else {
        // Signed: a garbage-collected backend can shrink while connections are opened.
        let grown = (after.rss_kib as f64 - before.rss_kib as f64) * 1024.0;
        let per_conn = if n > 0 { grown / n as f64 } else { 0.0 };
        let at_100k = (before.rss_kib as f64 * 1024.0 + per_conn * 100_000.0) / (1024.0 * 1024.0);
        let mut p = procfs::report(&opts.proxy_pid, &before, &opened, n as u64);
        p["rss_after_kib"] = json!(after.rss_kib);
        p["bytes_per_conn"] = json!(per_conn.round());
        p["rss_at_100k_mib"] = json!(round2(at_100k));
        p
    };
    Ok(json!({
        "mode": "idle",
        "label": opts.label,
        "url": opts.url,
        "connections": wanted,
        "held": n,
        "sources": opts.sources,
        "size": size,
        "open_s": round2(open_secs),
        "hold_s": round2(opts.duration.as_secs_f64()),
        "sample": sample,
        "sample_ok": still_open,
        "proxy": proxy,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
    }))
}

/// A few readable lines for a person at a terminal.
pub fn print_human(r: &Value) {
    let mode = r["mode"].as_str().unwrap_or("?");
    println!("wsbench {mode} {}", r["url"].as_str().unwrap_or(""));
    match mode {
        "idle" => {
            println!(
                "  held {} of {} connections (opened in {} s); sample {}/{} still echo",
                r["held"], r["connections"], r["open_s"], r["sample_ok"], r["sample"]
            );
            let p = &r["proxy"];
            if !p.is_null() {
                println!(
                    "  proxy RSS {} -> {} KiB: {} bytes per connection; {} MiB at 100,000",
                    p["rss_before_kib"], p["rss_after_kib"], p["bytes_per_conn"], p["rss_at_100k_mib"]
                );
            }
        }
        "probe" => println!("  attempts {}", r["attempts"]),
        _ => {
            println!(
                "  {} ops in {} s: {} ops/s, {} MB/s ({} connections, {} B messages)",
                r["ops"], r["duration_s"], r["ops_per_s"], r["mb_per_s"], r["connections"], r["size"]
            );
            let l = &r["latency_us"];
            if !l.is_null() {
                println!(
                    "  latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
                    l["p50"], l["p90"], l["p99"], l["p999"], l["max"]
                );
            }
            let p = &r["proxy"];
            if !p.is_null() {
                println!("  proxy CPU {} s = {} µs per operation", p["cpu_s"], p["cpu_us_per_op"]);
            }
        }
    }
    println!("  errors {}", r["errors"]);
    if let Some(samples) = r["error_samples"].as_array() {
        for e in samples {
            println!("    {}", e.as_str().unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> Target {
        use futures_util::{SinkExt, StreamExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Target::parse(&format!("ws://{addr}/")).unwrap()
    }

    fn plan(target: Target, size: usize) -> Arc<Plan> {
        let start = Instant::now() + Duration::from_millis(50);
        Arc::new(Plan {
            target,
            size,
            window: 3,
            timeout: Duration::from_secs(5),
            start,
            end: start + Duration::from_millis(300),
        })
    }

    #[tokio::test]
    async fn every_mode_loop_completes_checked_operations_without_errors() {
        let target = echo_server().await;
        for (name, tally) in [
            ("handshake", handshake_loop(plan(target.clone(), 64), 1).await),
            ("pingpong", pingpong_loop(plan(target.clone(), 1024), 2).await),
            ("stream", stream_loop(plan(target.clone(), 64 * 1024), 3).await),
        ] {
            assert_eq!(tally.errors, 0, "{name}: {:?}", tally.error_samples);
            assert!(tally.ops > 0, "{name}: no operations");
            assert_eq!(tally.latency_ns.len() as u64, tally.ops, "{name}");
        }
    }

    /// A wss echo server (tokio-rustls + tungstenite) with a certificate for `bench.test` from a
    /// fresh CA; counts the handshakes that were resumed. Returns the target (TLS set up from the
    /// CA file) and the resumed-handshake counter.
    async fn tls_echo_server(dir: &std::path::Path) -> (Target, Arc<std::sync::atomic::AtomicU64>) {
        use futures_util::{SinkExt, StreamExt};
        use std::sync::atomic::{AtomicU64, Ordering};
        use wsingress::tls::generate::{Authority, Validity};
        let now = wsingress::tls::unix_now();
        let ca = Authority::new("wsbench test CA", Validity::around(now, 1)).unwrap();
        let leaf = ca.issue("bench.test", &["bench.test"], Validity::around(now, 1)).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        use rustls::pki_types::pem::PemObject;
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(wsingress::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resumed = Arc::new(AtomicU64::new(0));
        let counter = resumed.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else { return };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let tls = crate::conn::Tls::new(&ca_file, "bench.test").unwrap();
        (Target::parse(&format!("wss://{addr}/")).unwrap().with_tls(tls), resumed)
    }

    #[tokio::test]
    async fn every_mode_loop_works_over_tls_and_never_resumes_a_session() {
        let dir = std::env::temp_dir().join(format!("wsbench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (target, resumed) = tls_echo_server(&dir).await;
        for (name, tally) in [
            ("handshake", handshake_loop(plan(target.clone(), 64), 1).await),
            ("stream", stream_loop(plan(target.clone(), 64 * 1024), 3).await),
        ] {
            assert_eq!(tally.errors, 0, "{name}: {:?}", tally.error_samples);
            assert!(tally.ops > 0, "{name}: no operations");
        }
        // rustls' server offers tickets after every full handshake; the client never uses them.
        assert_eq!(resumed.load(std::sync::atomic::Ordering::Relaxed), 0, "a handshake was resumed");
        // A wss:// target without TLS settings refuses to connect rather than speak plain text.
        let bare = Target::parse(&format!("wss://{}/", target.addr)).unwrap();
        assert!(WsConn::connect(&bare, None).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_dead_target_is_reported_as_errors_not_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = Target::parse(&format!("ws://{addr}/")).unwrap();
        let tally = pingpong_loop(plan(target, 16), 1).await;
        assert_eq!(tally.ops, 0);
        assert!(tally.errors > 0);
    }
}
