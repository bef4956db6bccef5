//! Loopback test of `serve --manifests FILE`: two hosts routed to different echo pools by
//! `Host` and path; editing the file (scale out, change load-balance and idle-timeout)
//! moves new connections while an established one keeps echoing; a corrupt file keeps the
//! last good table serving.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use wsingress::app::{self, Running};

const DEADLINE: Duration = Duration::from_secs(10);

/// The manifests file: Ingress `a` (host a.localhost, path /ws) → Service `svc-a`, Ingress `b`
/// (host b.localhost, every path) → Service `svc-b`; one EndpointSlice per backend.
fn manifest(a: &[SocketAddr], b: &[SocketAddr], a_annotations: &str) -> String {
    let mut out = format!(
        r#"apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: a
  annotations: {{{a_annotations}}}
spec:
  ingressClassName: wsingress
  rules:
    - host: a.localhost
      http:
        paths:
          - {{path: /ws, pathType: Prefix, backend: {{service: {{name: svc-a, port: {{name: ws}}}}}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: b}}
spec:
  ingressClassName: wsingress
  rules:
    - host: b.localhost
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: svc-b, port: {{number: 80}}}}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: svc-a}}
spec: {{ports: [{{name: ws, port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: svc-b}}
spec: {{ports: [{{name: http, port: 80}}]}}
"#
    );
    for (svc, port_name, addrs) in [("svc-a", "ws", a), ("svc-b", "http", b)] {
        for addr in addrs {
            out.push_str(&format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-{port}, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{name: {port_name}, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n",
                port = addr.port(),
                ip = addr.ip(),
            ));
        }
    }
    out
}

/// Connect to the proxy with a `Host` header and ask the backend who it is.
async fn open(proxy: SocketAddr, host: &str, path: &str) -> (Ws, String) {
    let (mut ws, _) = connect_with(&ws_url(proxy, path), &[("Host", host)])
        .await
        .unwrap_or_else(|e| panic!("connect {host}{path}: {e}"));
    let view = backend_view(&mut ws).await;
    let instance = view["instance"].as_str().unwrap().to_string();
    (ws, instance)
}

/// Wait until the proxy ends the connection (a Close frame, or the stream ending).
async fn closed(ws: &mut Ws, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await.expect("not closed in time") {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            Some(Ok(_)) => continue,
        }
    }
}

fn ready_of(running: &Running, host: &str, path: &str) -> usize {
    running.routes.load().find(Some(host), path).map_or(0, |r| r.pool.ready_len())
}

fn rejected(running: &Running) -> u64 {
    running.metrics.config_updates.with_label_values(&["file", "rejected"]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_file_routes_reloads_and_survives_a_corrupt_file() {
    let a1 = echo("a1", "a1:").await;
    let a2 = echo("a2", "a2:").await;
    let b1 = echo("b1", "b1:").await;
    let file = TempFile::new("manifests");
    file.save(&manifest(&[a1.addr], &[b1.addr], ""));

    let path = file.0.to_string_lossy().into_owned();
    let args = serve_args(&["--manifests", &path]);
    let source = app::route_source(&args).unwrap();
    let running = app::start(&args, source).await.unwrap();
    let proxy = running.proxy_addr;

    // Routing by Host and path.
    let (mut held, who) = open(proxy, "a.localhost", "/ws/room").await;
    assert_eq!(who, "a1");
    assert_eq!(round_trip(&mut held, "hello").await, "a1:hello");
    let (mut other, who) = open(proxy, "b.localhost", "/anything").await;
    assert_eq!(who, "b1");
    assert_eq!(round_trip(&mut other, "hi").await, "b1:hi");
    let (status, _, _) = http_get(proxy, "a.localhost", "/elsewhere").await;
    assert_eq!(status, 404, "a.localhost has only /ws");
    let (status, _, _) = http_get(proxy, "c.localhost", "/ws").await;
    assert_eq!(status, 404, "unknown host");
    let generation = running.routes.generation();

    // Scale svc-a out, switch it to round-robin and a 1 s idle timeout.
    file.save(&manifest(
        &[a1.addr, a2.addr],
        &[b1.addr],
        "wsingress.io/load-balance: round-robin, wsingress.io/idle-timeout: 1s",
    ));
    wait_until(DEADLINE, "the scaled table", || async { ready_of(&running, "a.localhost", "/ws") == 2 }).await;
    assert_eq!(running.routes.generation(), generation + 1);
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let (_ws, who) = open(proxy, "a.localhost", "/ws").await;
        seen.insert(who);
    }
    assert_eq!(seen, BTreeSet::from(["a1".to_string(), "a2".to_string()]));

    // New connections get the new idle timeout; the established one keeps its 60 s.
    let (mut fresh, _) = open(proxy, "a.localhost", "/ws").await;
    let idle_since = Instant::now();
    closed(&mut fresh, Duration::from_secs(5)).await;
    let took = idle_since.elapsed();
    assert!(took >= Duration::from_millis(800), "closed after {took:?}, before the 1 s idle timeout");
    assert_eq!(round_trip(&mut held, "still here").await, "a1:still here");

    // Corrupt the file: rejected, the last good table keeps serving.
    let good_generation = running.routes.generation();
    file.save("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: a\nspec: [\n");
    wait_until(DEADLINE, "the rejection", || async { rejected(&running) == 1 }).await;
    assert_eq!(running.routes.generation(), good_generation);
    assert_eq!(ready_of(&running, "a.localhost", "/ws"), 2);
    let (mut after, who) = open(proxy, "b.localhost", "/").await;
    assert_eq!(who, "b1");
    assert_eq!(round_trip(&mut after, "after").await, "b1:after");
    let (_ws, who) = open(proxy, "a.localhost", "/ws").await;
    assert!(who == "a1" || who == "a2");
    assert_eq!(round_trip(&mut held, "and now").await, "a1:and now");
    assert_eq!(round_trip(&mut other, "b too").await, "b1:b too");

    // Fixed again: applied.
    file.save(&manifest(&[a2.addr], &[b1.addr], ""));
    wait_until(DEADLINE, "the fixed table", || async { running.routes.generation() == good_generation + 1 }).await;
    let (_ws, who) = open(proxy, "a.localhost", "/ws").await;
    assert_eq!(who, "a2");

    drop((held, other, after));
    assert!(running.shutdown(Duration::from_secs(5)).await);
}
