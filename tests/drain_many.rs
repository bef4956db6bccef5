//! Graceful shutdown under load: 2,000 open WebSocket tunnels, then `Running::shutdown`.
//! Readiness must turn false before any client hears of it, every client must get a Close
//! 1001, and the drain must complete well within its timeout.
//!
//! Each tunnel costs four descriptors in this one process (test client, proxy client side,
//! proxy upstream side, echo backend), so the test raises RLIMIT_NOFILE to its hard limit
//! and sizes itself down (with a message) when the hard limit is too low.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const WANTED: usize = 2_000;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// Raise the descriptor limit; return how many tunnels fit.
fn tunnels_that_fit() -> usize {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    }
    let fit = usize::try_from(hard.saturating_sub(500) / 4).unwrap_or(usize::MAX);
    if fit < WANTED {
        eprintln!("drain_many: descriptor limit {hard} allows only {fit} tunnels (wanted {WANTED})");
    }
    fit.min(WANTED)
}

/// Open one raw tunnel: handshake through the proxy, return the socket.
async fn open(proxy: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(upgrade_request("drain.test", "/", "").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await.expect("101 in time").unwrap();
        assert!(n > 0, "closed during the handshake");
        head.extend_from_slice(&b[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Wait for the proxy's Close; answer it (masked, as a client must); return its code.
async fn await_close(mut s: TcpStream, within: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let mut b = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        // The echo backend sends nothing unprompted: the first frame is the Close.
        if buf.len() >= 2 {
            let len = usize::from(buf[1] & 0x7f);
            if buf[0] & 0x0f == 0x8 && buf.len() >= 2 + len {
                let code = (len >= 2).then(|| u16::from_be_bytes([buf[2], buf[3]]));
                let reply = [0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe9 ^ 2];
                let _ = s.write_all(&reply).await;
                return code;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&b[..n]),
            _ => return None,
        }
    }
}

/// `/readyz` status, or 0 when the admin port no longer answers.
async fn readyz(admin: std::net::SocketAddr) -> u16 {
    let Ok(mut s) = TcpStream::connect(admin).await else { return 0 };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    parse_response(&buf).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_thousands_of_tunnels_sends_1001_to_every_client() {
    let n = tunnels_that_fit();
    let backend = echo("drain", "").await;
    let running = proxy(&[backend.addr], &[]).await;
    let proxy_addr = running.proxy_addr;
    let admin = running.admin_addr;
    let readiness = running.readiness.clone();
    let metrics = running.metrics.clone();
    assert_eq!(http_get(admin, "x", "/readyz").await.0, 200);

    // Open the tunnels, 64 handshakes at a time.
    let opened = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut opening = Vec::with_capacity(n);
    for _ in 0..n {
        let gate = gate.clone();
        opening.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            open(proxy_addr).await
        }));
    }
    let mut sockets = Vec::with_capacity(n);
    for o in opening {
        sockets.push(o.await.unwrap());
    }
    let open_took = opened.elapsed();
    // Each tunnel is one tracked task and one count in the gauge. A client sees its 101 before the
    // proxy has spawned the tunnel, and the HTTP connection task that upgraded it ends just after
    // handing the socket over, so the task count alone can read n while one tunnel is still being
    // set up: wait until both agree.
    let drain = running.drain.clone();
    let gauge_line = format!(" {n}");
    let m = metrics.clone();
    wait_until(Duration::from_secs(10), "one tracked task and one active gauge count per tunnel", || {
        let (drain, m, gauge_line) = (drain.clone(), m.clone(), gauge_line.clone());
        async move {
            let text = String::from_utf8_lossy(&m.encode()).into_owned();
            drain.active() == n
                && text
                    .lines()
                    .any(|l| l.starts_with("wsingress_websocket_connections_active{") && l.ends_with(&gauge_line))
        }
    })
    .await;

    // Every client waits for its Close; the first to get one checks readiness is already false.
    let first_close_seen_ready = Arc::new(AtomicBool::new(false));
    let first = Arc::new(AtomicUsize::new(0));
    let mut waiting = Vec::with_capacity(n);
    for s in sockets {
        let (readiness, first, flag) = (readiness.clone(), first.clone(), first_close_seen_ready.clone());
        waiting.push(tokio::spawn(async move {
            let code = await_close(s, DRAIN_TIMEOUT + Duration::from_secs(5)).await;
            if first.fetch_add(1, Ordering::SeqCst) == 0 && readiness.is_ready() {
                flag.store(true, Ordering::SeqCst);
            }
            code
        }));
    }

    let started = Instant::now();
    let shutdown = tokio::spawn(running.shutdown(DRAIN_TIMEOUT));
    let r = readiness.clone();
    wait_until(Duration::from_secs(5), "readiness false", || {
        let r = r.clone();
        async move { !r.is_ready() }
    })
    .await;
    // /readyz answers 503 while the drain runs (0: the admin port already closed).
    let ready_status = readyz(admin).await;
    let clean = shutdown.await.unwrap();
    let drain_took = started.elapsed();

    let mut codes = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for w in waiting {
        *codes.entry(w.await.unwrap()).or_default() += 1;
    }
    eprintln!("drain_many: {n} tunnels opened in {open_took:?}, drained in {drain_took:?}; close codes {codes:?}");
    assert!(clean, "shutdown must complete within the drain timeout ({DRAIN_TIMEOUT:?})");
    assert!(drain_took < DRAIN_TIMEOUT, "drain took {drain_took:?}");
    assert_eq!(codes.get(&Some(1001)).copied().unwrap_or(0), n, "every client must get Close 1001: {codes:?}");
    assert!(!first_close_seen_ready.load(Ordering::SeqCst), "readiness must turn false before the first Close");
    assert!(!readiness.is_ready());
    assert!(ready_status == 503 || ready_status == 0, "/readyz during the drain: {ready_status}");
}
