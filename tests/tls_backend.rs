//! TLS to backends (`wsingress.io/backend-protocol: https`): a plain `ws://` client reaches an
//! echo server that only speaks TLS, verified against `backend-ca-secret` with the name from
//! `backend-tls-server-name`; a CA that did not sign the backend gets 502 and a `tls_error`;
//! `backend-tls-verify: "false"` connects anyway. Plain HTTP takes the same path.

mod common;
mod tls_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{http_get, metric, round_trip, ws_url};
use tls_common::Pki;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wsingress::app::{self, RouteSource};
use wsingress::echo::{self, EchoConfig};
use wsingress::tls::{self, CertHandle};

/// An echo server speaking only TLS, with a leaf for `backend.test` from `pki`.
async fn tls_echo(pki: &Pki) -> (SocketAddr, CancellationToken) {
    let handle = Arc::new(CertHandle::new(pki.entry(tls::CertSource::SelfSigned, "backend", &["backend.test"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = EchoConfig { prefix: "tls backend: ".into(), instance: "b1".into() };
    tokio::spawn(echo::serve_tls(listener, config, tls::server::config(handle).unwrap(), stop.clone()));
    (addr, stop)
}

/// One Ingress per (host, CA Secret, extra annotations), all to the TLS echo backend.
fn manifests(backend: SocketAddr, cas: &[(&str, &str)], ingresses: &[(&str, &str, &str)]) -> String {
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let mut out = String::new();
    for (name, pem) in cas {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{}---\n",
            indent(pem)
        ));
    }
    for (host, ca, extra) in ingresses {
        let name = host.split('.').next().unwrap();
        out.push_str(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n    wsingress.io/backend-protocol: https\n    wsingress.io/backend-ca-secret: {ca}\n    wsingress.io/backend-tls-server-name: backend.test\n{extra}spec:\n  ingressClassName: wsingress\n  rules:\n    - host: {host}\n      http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 443}}}}}}}}]}}\n---\n"
        ));
    }
    out.push_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: default}}\nspec: {{ports: [{{name: https, port: 443}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: echo-1, namespace: default, labels: {{kubernetes.io/service-name: echo}}}}\naddressType: IPv4\nports: [{{name: https, port: {}}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
        backend.port(),
        backend.ip()
    ));
    out
}

#[tokio::test]
async fn backends_speaking_tls_are_verified_and_reached() {
    let good = Pki::new("backend CA");
    let other = Pki::new("some other CA");
    let (backend, stop) = tls_echo(&good).await;
    let text = manifests(
        backend,
        &[("good-ca", &good.ca_pem), ("other-ca", &other.ca_pem)],
        &[
            ("good.example.com", "good-ca", ""),
            ("wrong.example.com", "other-ca", ""),
            ("unverified.example.com", "other-ca", "    wsingress.io/backend-tls-verify: \"false\"\n"),
        ],
    );
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let path = std::env::temp_dir().join(format!("wsingress-backend-tls-{}-{nanos}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let args = common::serve_args(&[]);
    let p = app::start(&args, RouteSource::Manifests(path.clone())).await.unwrap();
    let _ = std::fs::remove_file(&path);

    // ws:// from the client, TLS from the proxy to the backend.
    let url = ws_url(p.proxy_addr, "/");
    let (mut ws, _) = common::connect_with(&url, &[("Host", "good.example.com")]).await.unwrap();
    assert_eq!(round_trip(&mut ws, "hello").await, "tls backend: hello");
    // Plain HTTP over the same kind of backend connection.
    let (status, head, _) = http_get(p.proxy_addr, "good.example.com", "/healthz").await;
    assert_eq!(status, 200, "{head}");

    // A CA that did not sign the backend's certificate: 502, counted as a TLS error.
    let refused = common::connect_with(&url, &[("Host", "wrong.example.com")]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("expected a 502 for an unverifiable backend, got {other:?}"),
    }
    assert_eq!(http_get(p.proxy_addr, "wrong.example.com", "/healthz").await.0, 502);
    assert!(
        metric(&p.metrics, "wsingress_upstream_errors_total", &[("route", "default/wrong"), ("reason", "tls_error")])
            >= 2.0
    );

    // The explicit opt-out connects to the same backend.
    let (mut ws, _) = common::connect_with(&url, &[("Host", "unverified.example.com")]).await.unwrap();
    assert_eq!(round_trip(&mut ws, "anyway").await, "tls backend: anyway");

    stop.cancel();
    p.shutdown(Duration::from_secs(2)).await;
}
