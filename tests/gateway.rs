//! Loopback tests of Gateway API routing through `serve --manifests FILE`: a GatewayClass,
//! Gateway and HTTPRoute route real WebSocket traffic to real echo backends; a route from a
//! namespace the listener does not admit gets nothing; weights 80/20 measured over 1,000
//! connections; `timeouts.request: 2s` bounds the way to the 101 (and a slow plain response
//! gets 504) while a tunnel stays open past it; each filter is observable; header matches
//! take precedence as the spec orders; http→https redirect; a host attached through an HTTP
//! listener only is not served on the TLS listener; invalid backendRefs keep their weight as a
//! share answered 500.

mod common;
mod tls_common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tls_common::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use wsingress::app::{self, Running};

struct TempFile(PathBuf);

impl TempFile {
    fn with(text: &str) -> Self {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("wsingress-gateway-{}-{nanos}.yaml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// GatewayClass `wsingress` (ours), Gateway `gw` in `default` with an HTTP listener `web`
/// (namespaces: Same) for `*.localhost`.
const GATEWAY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: wsingress}
spec: {controllerName: wsingress.io/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: wsingress
  listeners:
    - {name: web, protocol: HTTP, port: 80, hostname: "*.localhost"}
"#;

/// A Service `name` in `namespace` (port 80, named `ws`) with an EndpointSlice of `addrs`.
fn service(namespace: &str, name: &str, addrs: &[SocketAddr]) -> String {
    let mut out = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{ports: [{{name: ws, port: 80}}]}}\n"
    );
    for (i, addr) in addrs.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: ws, port: {port}}}]\nendpoints: [{{addresses: [\"{ip}\"], conditions: {{ready: true}}}}]\n",
            port = addr.port(),
            ip = addr.ip(),
        ));
    }
    out
}

async fn start(manifest: &str) -> (Running, TempFile) {
    let file = TempFile::with(manifest);
    let path = file.0.to_string_lossy().into_owned();
    let args = serve_args(&["--manifests", &path, "--tls-listen", "off"]);
    let source = app::route_source(&args).unwrap();
    (app::start(&args, source).await.unwrap(), file)
}

/// Open a tunnel with a `Host` header; the backend's instance from the 101.
async fn instance(proxy: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> String {
    let mut headers = vec![("Host", host)];
    headers.extend_from_slice(extra);
    let (_ws, resp) =
        connect_with(&ws_url(proxy, path), &headers).await.unwrap_or_else(|e| panic!("connect {host}{path}: {e}"));
    resp.headers().get("x-echo-instance").unwrap().to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_httproute_route_websocket_traffic_and_listeners_admit_namespaces() {
    let a = echo("a", "a:").await;
    let other = echo("other", "other:").await;
    let manifest = format!(
        r#"{GATEWAY}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: chat, namespace: default}}
spec:
  parentRefs: [{{name: gw, sectionName: web}}]
  hostnames: [chat.localhost]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /ws}}}}]
      backendRefs: [{{name: chat, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: intruder, namespace: team}}
spec:
  parentRefs: [{{name: gw, namespace: default}}]
  hostnames: [intruder.localhost]
  rules:
    - backendRefs: [{{name: other, port: 80}}]
{}{}"#,
        service("default", "chat", &[a.addr]),
        service("team", "other", &[other.addr]),
    );
    let (running, _file) = start(&manifest).await;
    let proxy = running.proxy_addr;

    let (mut ws, _) = connect_with(&ws_url(proxy, "/ws/room"), &[("Host", "chat.localhost")]).await.unwrap();
    assert_eq!(round_trip(&mut ws, "hello").await, "a:hello");
    // PathPrefix is element-wise: /wsx is not under /ws.
    let (status, _, _) = http_get(proxy, "chat.localhost", "/wsx").await;
    assert_eq!(status, 404);

    // The listener admits routes from its own namespace only (allowedRoutes default: Same).
    assert!(running.routes.load().find(Some("intruder.localhost"), "/").is_none());
    let (status, _, _) = http_get(proxy, "intruder.localhost", "/").await;
    assert_eq!(status, 404, "a route the listener does not admit gets no traffic");

    // Admitting all namespaces lets it in (the same objects, one field changed).
    let all = manifest.replace(
        r#"hostname: "*.localhost"}"#,
        r#"hostname: "*.localhost", allowedRoutes: {namespaces: {from: All}}}"#,
    );
    assert_ne!(all, manifest);
    let (running, _file) = start(&all).await;
    assert_eq!(instance(running.proxy_addr, "intruder.localhost", "/", &[]).await, "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_80_20_split_1000_connections_within_5_points() {
    let heavy = echo("heavy", "").await;
    let light = echo("light", "").await;
    let manifest = format!(
        r#"{GATEWAY}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [split.localhost]
  rules:
    - backendRefs:
        - {{name: heavy, port: 80, weight: 80}}
        - {{name: light, port: 80, weight: 20}}
        - {{name: unused, port: 80, weight: 0}}
{}{}{}"#,
        service("default", "heavy", &[heavy.addr]),
        service("default", "light", &[light.addr]),
        service("default", "unused", &["127.0.0.1:9".parse().unwrap()]),
    );
    let (running, _file) = start(&manifest).await;
    let proxy = running.proxy_addr;
    let mut heavy_count = 0;
    for _ in 0..1000 {
        match instance(proxy, "split.localhost", "/", &[]).await.as_str() {
            "heavy" => heavy_count += 1,
            "light" => {}
            other => panic!("unexpected backend {other}"),
        }
    }
    let share = f64::from(heavy_count) / 10.0;
    println!("weights 80/20 over 1000 connections: {share:.1}% to the weight-80 Service");
    assert!((75.0..=85.0).contains(&share), "{share}% to the weight-80 Service, want 80 ± 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_backend_refs_keep_their_share_and_answer_500() {
    let good = echo("good", "").await;
    let manifest = format!(
        r#"{GATEWAY}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: half, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [half.localhost]
  rules:
    - backendRefs:
        - {{name: good, port: 80, weight: 1}}
        - {{name: missing, port: 80, weight: 1}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: broken, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [broken.localhost]
  rules:
    - backendRefs: [{{name: missing, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: idle, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [idle.localhost]
  rules:
    - backendRefs: [{{name: empty, port: 80}}]
{}{}"#,
        service("default", "good", &[good.addr]),
        service("default", "empty", &[]),
    );
    let (running, _file) = start(&manifest).await;
    let proxy = running.proxy_addr;

    // Weights 1 and 1, one Service missing: about half the requests get 500, the rest the echo.
    let (mut ok, mut failed) = (0u32, 0u32);
    for _ in 0..200 {
        let (status, head, _) = http_get(proxy, "half.localhost", "/healthz").await;
        match status {
            200 => {
                assert!(head.to_ascii_lowercase().contains("x-echo-instance: good"), "{head}");
                ok += 1;
            }
            500 => failed += 1,
            other => panic!("unexpected status {other}: {head}"),
        }
    }
    let share = f64::from(failed) / 2.0;
    println!("one of two weight-1 backendRefs invalid: {share:.1}% of 200 requests answered 500");
    assert_eq!(ok + failed, 200);
    assert!((35.0..=65.0).contains(&share), "{share}% answered 500, want about 50");
    let m = &running.metrics;
    assert_eq!(metric(m, "wsingress_http_requests_total", &[("status_class", "5xx")]), f64::from(failed));

    // Every backendRef invalid: the rule is still served, all of it 500 (not 503), for plain
    // HTTP and for an upgrade, which no backend ever sees.
    let (status, _, _) = http_get(proxy, "broken.localhost", "/").await;
    assert_eq!(status, 500);
    match connect_with(&ws_url(proxy, "/ws"), &[("Host", "broken.localhost")]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 500),
        other => panic!("expected a 500 to the upgrade, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(metric(m, "wsingress_websocket_upgrades_total", &[("result", "rejected")]), 1.0);
    assert_eq!(metric(m, "wsingress_upstream_errors_total", &[]), 0.0, "no backend contacted");

    // A valid Service without ready endpoints is another matter: 503, as before.
    let (status, _, _) = http_get(proxy, "idle.localhost", "/").await;
    assert_eq!(status, 503);
}

/// A backend that answers its head at once and the second half of its body after `delay`.
async fn slow_body_backend(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst").await;
                tokio::time::sleep(delay).await;
                let _ = s.write_all(b"-last").await;
            });
        }
    });
    addr
}

/// A backend that accepts and answers nothing for `delay`, then a 200 (for the plain HTTP check).
async fn slow_backend(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow").await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_bounds_the_handshake_never_the_tunnel() {
    let fast = echo("fast", "").await;
    let slow = slow_backend(Duration::from_secs(5)).await;
    let trickle = slow_body_backend(Duration::from_secs(5)).await;
    let manifest = format!(
        r#"{GATEWAY}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: timed, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [timed.localhost]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /ws}}}}]
      backendRefs: [{{name: fast, port: 80}}]
      timeouts: {{request: 2s}}
    - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
      backendRefs: [{{name: slow, port: 80}}]
      timeouts: {{request: 2s}}
    - matches: [{{path: {{type: PathPrefix, value: /trickle}}}}]
      backendRefs: [{{name: trickle, port: 80}}]
      timeouts: {{request: 2s}}
{}{}{}"#,
        service("default", "fast", &[fast.addr]),
        service("default", "slow", &[slow]),
        service("default", "trickle", &[trickle]),
    );
    let (running, _file) = start(&manifest).await;
    let proxy = running.proxy_addr;

    // A tunnel with traffic for 10 s, five times the request timeout, stays open.
    let (mut ws, _) = connect_with(&ws_url(proxy, "/ws"), &[("Host", "timed.localhost")]).await.unwrap();
    let opened = Instant::now();
    let mut n = 0;
    while opened.elapsed() < Duration::from_secs(10) {
        let text = format!("tick {n}");
        assert_eq!(round_trip(&mut ws, &text).await, text, "the tunnel died after {:?}", opened.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(n >= 30, "{n} round trips");

    // The deadline is real: a plain request whose response takes 5 s gets 504 after about 2 s...
    let asked = Instant::now();
    let (status, _, _) = http_get(proxy, "timed.localhost", "/slow").await;
    let took = asked.elapsed();
    assert_eq!(status, 504);
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_millis(4500), "504 after {took:?}");
    // ...a response whose body is not complete by then is cut short (the whole response)...
    let asked = Instant::now();
    let (status, head, body) = http_get(proxy, "timed.localhost", "/trickle").await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"first", "the body stops at the deadline");
    assert!(asked.elapsed() < Duration::from_millis(4500), "cut after {:?}", asked.elapsed());
    // ...and an upgrade whose 101 does not come within it gets 504.
    let asked = Instant::now();
    let (status, _, _) = http_raw(proxy, &upgrade_request("timed.localhost", "/slow", "")).await;
    assert_eq!(status, 504);
    assert!(asked.elapsed() < Duration::from_millis(4500), "upgrade refused after {:?}", asked.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_matches_and_redirects_are_observable() {
    let a = echo("a", "").await;
    let b = echo("b", "").await;
    let manifest = format!(
        r#"{GATEWAY}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [app.localhost]
  rules:
    - matches:
        - path: {{type: PathPrefix, value: /ws}}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{{name: x-route, value: app}}]
            add: [{{name: x-added, value: "1"}}]
            remove: [x-secret]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{{name: x-served-by, value: wsingress}}]
        - type: URLRewrite
          urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /socket}}}}
      backendRefs: [{{name: a, port: 80}}]
    - matches:
        - path: {{type: PathPrefix, value: /ws}}
          headers: [{{name: x-version, value: "2"}}]
      backendRefs: [{{name: b, port: 80}}]
    - matches: [{{path: {{type: Exact, value: /old}}}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {{scheme: https, statusCode: 301}}
    - matches: [{{path: {{type: RegularExpression, value: "/re.*"}}}}]
      backendRefs: [{{name: a, port: 80}}]
{}{}"#,
        service("default", "a", &[a.addr]),
        service("default", "b", &[b.addr]),
    );
    let (running, _file) = start(&manifest).await;
    let proxy = running.proxy_addr;

    // Request headers set, added and removed; the path rewritten; a response header set on the 101.
    let (mut ws, resp) = connect_with(
        &ws_url(proxy, "/ws/room?x=1"),
        &[("Host", "app.localhost"), ("x-secret", "s"), ("x-route", "client")],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers().get("x-served-by").unwrap(), "wsingress");
    let view = backend_view(&mut ws).await;
    assert_eq!(view["instance"], "a");
    assert_eq!(view["headers"]["x-route"], "app");
    assert_eq!(view["headers"]["x-added"], "1");
    assert!(view["headers"].get("x-secret").is_none(), "{view}");
    assert_eq!(view["path"], "/socket/room");
    assert_eq!(view["query"], "x=1");

    // More header matches win over fewer on the same path (the spec's precedence).
    assert_eq!(instance(proxy, "app.localhost", "/ws", &[("x-version", "2")]).await, "b");
    assert_eq!(instance(proxy, "app.localhost", "/ws", &[("x-version", "3")]).await, "a");

    // http → https with the filter's status.
    let (status, head, _) = http_get(proxy, "app.localhost:8080", "/old?q=1").await;
    assert_eq!(status, 301, "{head}");
    assert!(head.to_ascii_lowercase().contains("location: https://app.localhost/old?q=1"), "{head}");

    // RegularExpression is not supported: that rule is not served.
    let (status, _, _) = http_get(proxy, "app.localhost", "/regex").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_listener_serves_wss_with_its_certificate_and_redirects_plain_requests() {
    let pki = Pki::new("gateway CA");
    let leaf = pki.leaf("secure", &["secure.localhost"]);
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let a = echo("a", "a:").await;
    let manifest = format!(
        r#"{GATEWAY}---
apiVersion: v1
kind: Secret
metadata: {{name: secure-tls, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: secure, namespace: default}}
spec:
  gatewayClassName: wsingress
  listeners:
    - {{name: https, protocol: HTTPS, port: 443, hostname: secure.localhost, tls: {{certificateRefs: [{{name: secure-tls}}]}}}}
    - {{name: http, protocol: HTTP, port: 80, hostname: plain.localhost}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: secure, namespace: default}}
spec:
  parentRefs: [{{name: secure}}]
  rules: [{{backendRefs: [{{name: a, port: 80}}]}}]
{}"#,
        indent(&leaf.cert_pem),
        indent(&leaf.key_pem),
        service("default", "a", &[a.addr]),
    );
    let file = TempFile::with(&manifest);
    let path = file.0.to_string_lossy().into_owned();
    let args = serve_args(&["--manifests", &path]);
    let running = app::start(&args, app::route_source(&args).unwrap()).await.unwrap();

    // wss through the TLS listener, verified against the listener's certificate.
    let tcp = TcpStream::connect(running.tls_addr.unwrap()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from("secure.localhost".to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake with the certificate of the HTTPS listener");
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://secure.localhost/chat", tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply, Message::text("a:hi"));

    // Attached to an HTTPS listener only: a plain request is redirected to https.
    let (status, head, _) = http_get(running.proxy_addr, "secure.localhost", "/x").await;
    assert_eq!(status, 308, "{head}");
    assert!(head.to_ascii_lowercase().contains("location: https://secure.localhost/x"), "{head}");

    // plain.localhost came through the HTTP listener only: served over plain ws, and not on
    // the TLS listener (even inside a TLS session the certificate of secure.localhost opened).
    assert_eq!(instance(running.proxy_addr, "plain.localhost", "/chat", &[]).await, "a");
    let tcp = TcpStream::connect(running.tls_addr.unwrap()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from("secure.localhost".to_string()).unwrap(), tcp)
        .await
        .unwrap();
    match tokio_tungstenite::client_async("wss://plain.localhost/chat", tls).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
        Err(e) => panic!("plain.localhost over TLS: {e}"),
        Ok((_, resp)) => panic!("plain.localhost was served on the TLS listener: {}", resp.status()),
    }
}
