//! Active rebalancing end to end (issue 15 item 5), through the manifests-file source:
//! 600 tunnels on two echo backends, then a third endpoint joins by rewriting the file.
//! Clients reconnect when they get Close 1001 `rebalancing` and resend any message that was
//! not echoed. With `wsingress.io/rebalance: "on"` the pool ends within the threshold, with
//! exactly the closes the arithmetic predicts, never more per 10 s than the rate allows, no
//! message lost, and the proxy's close counter equal to the closes clients received. A second
//! proxy over the same backends and period, with rebalancing off, closes nothing.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use wsingress::app::{self, Running};

const HOST: &str = "chat.localhost";
const TUNNELS: usize = 600;
const OFF_TUNNELS: usize = 200;
/// `rebalance-max-rate` in the test: 10% of the pool per 10 s (60 closes per window at 600).
const RATE: &str = "10%";
const RATE_SHARE: f64 = 0.10;
const THRESHOLD: f64 = 1.25;

/// One Ingress to Service `chat` with `annotations`, one EndpointSlice per endpoint.
fn manifest(endpoints: &[SocketAddr], annotations: &str) -> String {
    let mut out = format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: chat
  annotations: {{{annotations}}}
spec:
  ingressClassName: wsingress
  rules:
    - host: {HOST}
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: chat, port: {{number: 80}}}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: chat}}
spec: {{ports: [{{name: ws, port: 80}}]}}
"#
    );
    for addr in endpoints {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: chat-{port}, labels: {{kubernetes.io/service-name: chat}}}}\naddressType: IPv4\nports: [{{name: ws, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n",
            port = addr.port(),
            ip = addr.ip(),
        ));
    }
    out
}

/// What the clients of one proxy observed.
#[derive(Default)]
struct Observed {
    /// Clients connected to each echo instance (`e0`, `e1`, `e2`), as the echoes say.
    on: [AtomicI64; 3],
    /// When each Close 1001 `rebalancing` arrived.
    closes: std::sync::Mutex<Vec<Instant>>,
    /// Any other close or error the clients saw.
    other_ends: AtomicU64,
    /// Messages created, and messages whose echo came back (each once).
    created: AtomicU64,
    echoed: AtomicU64,
    /// Echoes that did not match what was sent.
    wrong: AtomicU64,
    /// Clients that have had their first echo.
    started: AtomicU64,
}

impl Observed {
    fn counts(&self) -> [i64; 3] {
        [0, 1, 2].map(|i| self.on[i].load(Ordering::SeqCst))
    }
}

/// One client: connect, send a message every 1–2 s and wait for its echo; on Close 1001
/// `rebalancing`, reconnect and resend what was not echoed. Ends (after its last echo) when
/// `stop` fires.
async fn client(id: usize, proxy: SocketAddr, seen: Arc<Observed>, stop: CancellationToken) {
    let url = ws_url(proxy, "/");
    let mut seq = 0u64;
    let mut pending: Option<String> = None;
    let mut instance: Option<usize> = None;
    let mut first = true;
    let mut rng = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    loop {
        let mut ws = match connect_with(&url, &[("Host", HOST)]).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                seen.other_ends.fetch_add(1, Ordering::SeqCst);
                eprintln!("client {id}: connect failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Until this connection ends.
        let reconnect = loop {
            let msg = match &pending {
                Some(m) => m.clone(),
                None if stop.is_cancelled() && !first => return,
                None => {
                    seq += 1;
                    seen.created.fetch_add(1, Ordering::SeqCst);
                    let m = format!("c{id}-{seq}");
                    pending = Some(m.clone());
                    m
                }
            };
            if ws.send(Message::text(msg.clone())).await.is_err() {
                break true;
            }
            // The echo, or the end of the connection.
            let ended = loop {
                match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let t = t.to_string();
                        let Some((who, body)) = t.split_once(':') else {
                            seen.wrong.fetch_add(1, Ordering::SeqCst);
                            continue;
                        };
                        if body != msg {
                            seen.wrong.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        let now_on: usize = who.trim_start_matches('e').parse().unwrap_or(0);
                        if instance != Some(now_on) {
                            if let Some(old) = instance {
                                seen.on[old].fetch_sub(1, Ordering::SeqCst);
                            }
                            seen.on[now_on].fetch_add(1, Ordering::SeqCst);
                            instance = Some(now_on);
                        }
                        pending = None;
                        seen.echoed.fetch_add(1, Ordering::SeqCst);
                        if first {
                            first = false;
                            seen.started.fetch_add(1, Ordering::SeqCst);
                        }
                        break None;
                    }
                    Ok(Some(Ok(Message::Close(frame)))) => break Some(frame),
                    Ok(Some(Ok(_))) => continue,
                    _ => break Some(None),
                }
            };
            if let Some(frame) = ended {
                record_end(&seen, frame.as_ref());
                break true;
            }
            // Idle for 1–2 s, but notice a Close that arrives meanwhile.
            let pause = Duration::from_millis(1000 + next() % 1000);
            let idle = tokio::time::sleep(pause);
            tokio::pin!(idle);
            let ended = tokio::select! {
                () = &mut idle => None,
                () = stop.cancelled() => None,
                m = ws.next() => match m {
                    Some(Ok(Message::Close(frame))) => Some(frame),
                    Some(Ok(_)) => None,
                    _ => Some(None),
                },
            };
            if let Some(frame) = ended {
                record_end(&seen, frame.as_ref());
                break true;
            }
        };
        if let Some(old) = instance.take() {
            seen.on[old].fetch_sub(1, Ordering::SeqCst);
        }
        if !reconnect {
            return;
        }
    }
}

fn record_end(seen: &Observed, frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) {
    match frame {
        Some(f) if u16::from(f.code) == 1001 && f.reason.as_str() == "rebalancing" => {
            seen.closes.lock().unwrap().push(Instant::now())
        }
        _ => {
            seen.other_ends.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn start(file: &TempFile) -> Running {
    let path = file.0.to_string_lossy().into_owned();
    let args = serve_args(&["--manifests", &path]);
    let source = app::route_source(&args).unwrap();
    app::start(&args, source).await.unwrap()
}

/// Start `n` clients, 50 at a time, and wait until each has had its first echo.
async fn clients(
    n: usize,
    proxy: SocketAddr,
    seen: &Arc<Observed>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(50) {
        for &id in batch {
            tasks.push(tokio::spawn(client(id, proxy, seen.clone(), stop.clone())));
        }
        let want = tasks.len() as u64;
        wait_until(Duration::from_secs(30), "a batch of clients connected", || async {
            seen.started.load(Ordering::SeqCst) == want
        })
        .await;
    }
    tasks
}

fn within_threshold(counts: &[i64]) -> bool {
    let total: i64 = counts.iter().sum();
    let n = counts.len() as i64;
    counts.iter().all(|&c| c * n * 1000 <= total * (THRESHOLD * 1000.0) as i64)
}

/// The most closes in any 10 s window starting at a close.
fn busiest_window(times: &[Instant]) -> usize {
    let mut t = times.to_vec();
    t.sort();
    (0..t.len()).map(|i| t[i..].iter().take_while(|&&x| x < t[i] + Duration::from_secs(10)).count()).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalancing_spreads_600_tunnels_onto_a_new_endpoint_within_the_rate() {
    let echoes = [echo("e0", "e0:").await, echo("e1", "e1:").await, echo("e2", "e2:").await];
    let addrs: Vec<SocketAddr> = echoes.iter().map(|e| e.addr).collect();
    let on = format!(
        "wsingress.io/rebalance: \"on\", wsingress.io/rebalance-max-rate: \"{RATE}\", wsingress.io/rebalance-min-age: 1s, wsingress.io/rebalance-threshold: \"{THRESHOLD}\""
    );
    let (file_on, file_off) = (TempFile::new("rebalance-on"), TempFile::new("rebalance-off"));
    file_on.save(&manifest(&addrs[..2], &on));
    file_off.save(&manifest(&addrs[..2], ""));
    let (proxy_on, proxy_off) = (start(&file_on).await, start(&file_off).await);
    let route_id = proxy_on.routes.load().find(Some(HOST), "/").expect("the chat route").id.clone();

    let stop = CancellationToken::new();
    let (seen_on, seen_off) = (Arc::new(Observed::default()), Arc::new(Observed::default()));
    let mut tasks = clients(TUNNELS, proxy_on.proxy_addr, &seen_on, &stop).await;
    tasks.extend(clients(OFF_TUNNELS, proxy_off.proxy_addr, &seen_off, &stop).await);
    let before = seen_on.counts();
    let before_off = seen_off.counts();
    println!("before: {before:?} (rebalancing off: {before_off:?})");
    assert_eq!(before.iter().sum::<i64>(), TUNNELS as i64);
    assert_eq!(before[2], 0);
    // Every tunnel is past the 1 s min-age before the third endpoint joins.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The expected closes: everything above the target on the busy endpoints.
    let total = TUNNELS as i64;
    let target = (total as f64 * THRESHOLD / 3.0).floor() as i64;
    let expected: i64 = before.iter().map(|&c| (c - target).max(0)).sum();
    let per_window = ((TUNNELS as f64 * RATE_SHARE).floor() as usize).max(1);

    let joined = Instant::now();
    file_on.save(&manifest(&addrs, &on));
    file_off.save(&manifest(&addrs, ""));
    for p in [&proxy_on, &proxy_off] {
        wait_until(Duration::from_secs(10), "the third endpoint", || async {
            p.routes.load().find(Some(HOST), "/").is_some_and(|r| r.pool.ready_len() == 3)
        })
        .await;
    }
    // At the rate limit the closes take at least (expected - 1) gaps of 10 s / per_window.
    let least = Duration::from_secs_f64((expected - 1).max(0) as f64 * 10.0 / per_window as f64);
    let most = least.mul_f64(1.3) + Duration::from_secs(10);
    wait_until(most, "the pool within the threshold", || async {
        let c = seen_on.counts();
        c.iter().sum::<i64>() == total && within_threshold(&c)
    })
    .await;
    let converged = joined.elapsed();
    // No further closes once within the threshold.
    let closes_then = seen_on.closes.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let closes: Vec<Instant> = seen_on.closes.lock().unwrap().clone();
    let after = seen_on.counts();
    let after_off = seen_off.counts();
    // Read now, while every client still listens: once the clients leave, the pool they leave
    // unbalanced may be rebalanced again, with closes that no client stays to count.
    let metric = proxy_on.metrics.rebalance_closes.with_label_values(&[&route_id]).get();
    let metric_off = proxy_off.metrics.rebalance_closes.with_label_values(&[&route_id]).get();

    // Every client finishes its last message, then the counters are final.
    stop.cancel();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t).await.expect("a client did not finish").unwrap();
    }
    let window = busiest_window(&closes);
    println!(
        "rebalancing: converged in {:.1} s (at least {:.1} s at the rate limit), {} closes (expected {expected}, metric {metric}), busiest 10 s window {window} (limit {per_window}); distribution before {before:?}, after {after:?}; off: {before_off:?} -> {after_off:?}, closes {}",
        converged.as_secs_f64(),
        least.as_secs_f64(),
        closes.len(),
        seen_off.closes.lock().unwrap().len(),
    );
    assert_eq!(closes.len(), closes_then, "closes continued after the pool was within the threshold");
    assert_eq!(closes.len() as i64, expected, "closes made vs the excess over the target");
    assert_eq!(metric, closes.len() as u64, "the close counter counts exactly the closes clients received");
    assert!(window <= per_window, "{window} closes in one 10 s window, limit {per_window}");
    assert!(converged >= least, "converged in {converged:?}, faster than the rate allows ({least:?})");
    assert!(within_threshold(&after), "{after:?}");
    assert_eq!(seen_on.other_ends.load(Ordering::SeqCst), 0, "only rebalancing closes");
    assert_eq!(seen_on.wrong.load(Ordering::SeqCst), 0);
    assert_eq!(seen_on.created.load(Ordering::SeqCst), seen_on.echoed.load(Ordering::SeqCst), "a message was lost");
    // Off: nothing moved, nothing closed.
    assert_eq!(seen_off.closes.lock().unwrap().len(), 0);
    assert_eq!(metric_off, 0);
    assert_eq!(seen_off.other_ends.load(Ordering::SeqCst), 0);
    assert_eq!(after_off, before_off, "rebalancing off moves no tunnel");
    assert_eq!(seen_off.created.load(Ordering::SeqCst), seen_off.echoed.load(Ordering::SeqCst));

    assert!(proxy_on.shutdown(Duration::from_secs(5)).await);
    assert!(proxy_off.shutdown(Duration::from_secs(5)).await);
}

/// `wsingress.io/max-connection-age`: every tunnel gets Close 1001 once it is that old, within
/// ±10%; without it the same tunnel stays open past that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_age_closes_each_tunnel_within_ten_percent_of_the_age() {
    use wsingress::routes::RouteSettings;
    let e = echo("age", "").await;
    let p = manual_proxy(&[]).await;
    let age = Duration::from_secs(2);
    let aged = RouteSettings { max_connection_age: Some(age), ..RouteSettings::default() };
    // Two hosts, one echo: the first route with the age, the second without.
    let mut rules = Vec::new();
    for (host, id, settings) in
        [("aged.localhost", "default/aged", aged), ("young.localhost", "default/young", RouteSettings::default())]
    {
        rules.extend(table(&[(host, "/", id, &[e.addr])], settings).rules().iter().cloned());
    }
    p.publisher().publish(wsingress::routes::RouteTable::new(rules, None), &[]);

    let opened = Instant::now();
    let mut aged_ws = Vec::new();
    for _ in 0..5 {
        aged_ws.push(connect_with(&ws_url(p.proxy_addr, "/"), &[("Host", "aged.localhost")]).await.unwrap().0);
    }
    let (mut young, _) = connect_with(&ws_url(p.proxy_addr, "/"), &[("Host", "young.localhost")]).await.unwrap();
    let mut at = Vec::new();
    for ws in &mut aged_ws {
        assert_eq!(expect_close(ws, Duration::from_secs(5)).await, Some(1001));
        at.push(opened.elapsed());
    }
    println!("max-connection-age {age:?}: closed after {at:?}");
    for t in &at {
        assert!(*t >= age.mul_f64(0.9) - Duration::from_millis(50), "closed after {t:?}, before 90% of {age:?}");
        assert!(*t <= age.mul_f64(1.1) + Duration::from_millis(500), "closed after {t:?}, past 110% of {age:?}");
    }
    // The route without it: still open and echoing past the latest instant the age allows.
    tokio::time::sleep_until((opened + age.mul_f64(1.1) + Duration::from_millis(200)).into()).await;
    assert_eq!(round_trip(&mut young, "still").await, "still");
    assert!(p.shutdown(Duration::from_secs(5)).await);
}
