//! Certificates in cluster mode: the controller against the fake API server
//! (tests/support/fake_kube.rs) over real HTTP, the real proxy's TLS listener, real wss
//! clients checking the certificate served per SNI, and real echo backends (one speaking TLS).
//! Secrets appear, rotate, turn bad and disappear; the fake records every request, so the
//! tests also prove that Secrets are only ever listed and watched through a field selector.

mod support;
mod tls_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use rustls::pki_types::{CertificateDer, ServerName};
use support::fake_kube::FakeKube;
use support::kube_test::{events_with_reason, ingress_class, init_tracing, meta};
use tls_common::Pki;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use wsingress::echo::{self, EchoConfig};
use wsingress::metrics::Metrics;
use wsingress::readiness::Readiness;
use wsingress::routes::RouteHandle;
use wsingress::source::Publisher;
use wsingress::source::kube::{KubeConfig, KubeError, WatchBackoff};
use wsingress::tls::generate::Validity;
use wsingress::tls::{self, CertHandle, CertSource, material};
use wsingress::translate::tls::TlsDefaults;
use wsingress::translate::{CONTROLLER_NAME, Defaults};

const NS: &str = "apps";
const LIMIT: Duration = Duration::from_secs(10);

/// Poll `check` until it returns `Some`, for at most [`LIMIT`].
async fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    support::kube_test::eventually(LIMIT, what, check).await
}

/// An echo pod, a test CA and a fake API server holding our class and Service `chat` in
/// front of the pod.
async fn setup(stop: &CancellationToken) -> (Pki, FakeKube) {
    let pod = echo_pod(stop).await;
    let api = FakeKube::start().await;
    api.apply(&ingress_class());
    backend(&api, pod);
    (Pki::new("cluster CA"), api)
}

/// Ingress `chat` routing each host to Service `chat` port `ws`, with `spec.tls` entries
/// (hosts, secretName) and annotations.
fn ingress(hosts: &[&str], tls: &[(&[&str], &str)], annotations: &[(&str, &str)]) -> Ingress {
    let mut m = meta(NS, "chat");
    m.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let rule = |host: &str| IngressRule {
        host: Some(host.into()),
        http: Some(HTTPIngressRuleValue {
            paths: vec![HTTPIngressPath {
                path: Some("/".into()),
                path_type: "Prefix".into(),
                backend: IngressBackend {
                    service: Some(IngressServiceBackend {
                        name: "chat".into(),
                        port: Some(ServiceBackendPort { name: Some("ws".into()), ..ServiceBackendPort::default() }),
                    }),
                    ..IngressBackend::default()
                },
            }],
        }),
    };
    Ingress {
        metadata: m,
        spec: Some(IngressSpec {
            ingress_class_name: Some("wsingress".into()),
            rules: Some(hosts.iter().map(|h| rule(h)).collect()),
            tls: Some(
                tls.iter()
                    .map(|(hosts, secret)| IngressTLS {
                        hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
                        secret_name: Some(secret.to_string()),
                    })
                    .collect(),
            ),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

/// Service `chat` (port `ws`) and its EndpointSlice with one ready pod.
fn backend(api: &FakeKube, pod: SocketAddr) {
    api.apply(&Service {
        metadata: meta(NS, "chat"),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort { name: Some("ws".into()), port: 80, ..ServicePort::default() }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    });
    let mut m = meta(NS, "chat-abc12");
    m.labels = Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), "chat".to_string())]));
    api.apply(&EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: Some(vec![Endpoint {
            addresses: vec![pod.ip().to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Endpoint::default()
        }]),
        ports: Some(vec![EndpointPort {
            name: Some("ws".into()),
            port: Some(i32::from(pod.port())),
            ..EndpointPort::default()
        }]),
    });
}

/// A Secret as the API server stores it (`data`, base64 on the wire).
fn secret(ns: &str, name: &str, type_: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: meta(ns, name),
        type_: Some(type_.into()),
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Secret::default()
    }
}

/// A `kubernetes.io/tls` Secret with a leaf from `pki` for `hosts` (common name `cn`); returns
/// it and the leaf's serial.
fn tls_secret(pki: &Pki, ns: &str, name: &str, cn: &str, hosts: &[&str]) -> (Secret, String) {
    let g = pki.leaf(cn, hosts);
    let serial = serial_of_pem(&g.cert_pem);
    (secret(ns, name, "kubernetes.io/tls", &[("tls.crt", &g.cert_pem), ("tls.key", &g.key_pem)]), serial)
}

fn serial_of_pem(pem: &str) -> String {
    let der = material::certificates(pem.as_bytes(), "tls.crt").expect("pem")[0].clone();
    material::inspect(&der).expect("certificate").serial
}

// ---------------------------------------------------------------- controller, proxy, backends

struct Cluster {
    routes: Arc<RouteHandle>,
    certs: Arc<CertHandle>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), KubeError>>,
    /// The proxy's plain and TLS listeners.
    plain: SocketAddr,
    tls: SocketAddr,
}

impl Cluster {
    /// The controller (with certificates) and the proxy's two listeners, as `serve` wires them.
    async fn start(api: &FakeKube, tls_defaults: TlsDefaults) -> Self {
        Self::start_in(api, tls_defaults, &[]).await
    }

    /// [`Self::start`] watching only `namespaces` (all when empty).
    async fn start_in(api: &FakeKube, tls_defaults: TlsDefaults, namespaces: &[&str]) -> Self {
        let routes = Arc::new(RouteHandle::new());
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let readiness = Arc::new(Readiness::new(routes.clone()));
        let fallback = tls::generate::default_certificate(tls::unix_now(), &tls::provider()).expect("fallback");
        let certs = Arc::new(CertHandle::new(Arc::new(fallback)));
        let publisher = Publisher::new(routes.clone(), metrics.clone(), "kube").with_certs(certs.clone());
        let config = KubeConfig {
            debounce: Duration::from_millis(50),
            backoff: WatchBackoff { initial: Duration::from_millis(50), max: Duration::from_millis(300) },
            tls: tls_defaults,
            watch_namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            ..KubeConfig::new(Defaults {
                class_fallback: false,
                controller_name: CONTROLLER_NAME.into(),
                ..Defaults::default()
            })
        };
        let shutdown = CancellationToken::new();
        let health = readiness.health().clone();
        let task =
            tokio::spawn(wsingress::source::kube::run(api.client(), config, publisher, health, shutdown.clone()));

        let mut state = wsingress::proxy::service::ProxyState::new(
            routes.clone(),
            metrics,
            wsingress::drain::Drain::new(),
            wsingress::proxy::headers::TrustedProxies::default(),
        );
        state.certs = Some(certs.clone());
        let state = Arc::new(state);
        let config = wsingress::proxy::server::ProxyConfig::default();
        let plain_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (plain, tls_addr) = (plain_listener.local_addr().expect("addr"), tls_listener.local_addr().expect("addr"));
        let server_config = tls::server::config(certs.clone()).expect("server config");
        tokio::spawn(wsingress::proxy::server::serve(plain_listener, state.clone(), config.clone()));
        tokio::spawn(wsingress::proxy::server::serve_tls(tls_listener, state, config, server_config));
        Self { routes, certs, readiness, shutdown, task, plain, tls: tls_addr }
    }

    /// The source label of the certificate `host` has in the published table.
    fn cert_source(&self, host: &str) -> Option<String> {
        self.certs.load().lookup(host).map(|e| e.source.label())
    }

    fn serial(&self, host: &str) -> Option<String> {
        self.certs.load().lookup(host).map(|e| e.info.serial.clone())
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("controller stops on shutdown")
            .expect("controller task");
        assert!(r.is_ok(), "controller returned {r:?}");
    }
}

async fn echo_pod(stop: &CancellationToken) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(echo::serve(l, EchoConfig { prefix: String::new(), instance: "pod".into() }, stop.clone()));
    addr
}

type Wss = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// A wss tunnel to `host` through the TLS listener, trusting `pki`; the served leaf's
/// subject and serial.
async fn wss(addr: SocketAddr, pki: &Pki, host: &str) -> (Wss, String, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]))
        .connect(ServerName::try_from(host.to_string()).expect("name"), tcp)
        .await
        .expect("TLS handshake with the proxy (the certificate verifies for the host)");
    let der = CertificateDer::from(tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec());
    let info = material::inspect(&der).expect("served certificate");
    let (ws, resp) = tokio_tungstenite::client_async(format!("wss://{host}/chat"), tls).await.expect("wss upgrade");
    assert_eq!(resp.status(), 101);
    (ws, info.subject, info.serial)
}

async fn echo_once<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.expect("send");
    let reply = tokio::time::timeout(LIMIT, ws.next()).await.expect("echo in time").expect("open").expect("message");
    assert_eq!(reply, Message::text(text));
}

/// Every Secret list and watch the controller sent, as (path, fieldSelector).
fn secret_requests(api: &FakeKube) -> Vec<(String, String)> {
    api.requests()
        .into_iter()
        .filter(|r| r.access().is_some_and(|(g, res, _)| g.is_empty() && res == "secrets"))
        .map(|r| {
            let selector = r
                .query
                .split('&')
                .find_map(|kv| kv.strip_prefix("fieldSelector="))
                .map(|v| v.replace("%3D", "=").replace("%2F", "/"))
                .unwrap_or_default();
            (r.path, selector)
        })
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_tls_secrets_serve_wss_per_sni_rotate_for_new_handshakes_and_fall_back_to_the_default() {
    init_tracing();
    let stop = CancellationToken::new();
    let (pki, api) = setup(&stop).await;
    let (chat_v1, chat_v1_serial) = tls_secret(&pki, NS, "chat-tls", "chat-v1", &["chat.test"]);
    let (feed, _) = tls_secret(&pki, NS, "feed-tls", "feed", &["feed.test"]);
    let (default, default_serial) = tls_secret(&pki, "ingress", "default-tls", "default", &["chat.test", "feed.test"]);
    api.apply(&chat_v1);
    api.apply(&feed);
    api.apply(&default);
    // A Secret the controller has no business reading: never listed, never watched.
    api.apply(&secret(NS, "db-password", "Opaque", &[("password", "hunter2")]));
    api.apply(&ingress(
        &["chat.test", "feed.test"],
        &[(&["chat.test"], "chat-tls"), (&["feed.test"], "feed-tls")],
        &[],
    ));
    let c = Cluster::start(&api, TlsDefaults { default_secret: Some(("ingress".into(), "default-tls".into())) }).await;
    eventually("chat.test's certificate published", || (c.cert_source("chat.test")? == "apps/chat-tls").then_some(()))
        .await;
    assert_eq!(c.cert_source("feed.test").as_deref(), Some("apps/feed-tls"));
    assert_eq!(c.certs.load().default_certificate().map(|e| e.source.label()).as_deref(), Some("ingress/default-tls"));
    assert_eq!(c.certs.load().generation, c.routes.generation(), "routes and certificates publish together");

    // The right certificate per SNI, and wss through to the pod.
    let (mut before, subject, serial) = wss(c.tls, &pki, "chat.test").await;
    assert!(subject.contains("chat-v1"), "{subject}");
    assert_eq!(serial, chat_v1_serial);
    echo_once(&mut before, "over wss").await;
    let (mut ws, subject, _) = wss(c.tls, &pki, "feed.test").await;
    assert!(subject.contains("feed"), "{subject}");
    echo_once(&mut ws, "feed").await;
    drop(ws);

    // Rotation: new handshakes get the new certificate; the tunnel opened before keeps echoing.
    let (chat_v2, chat_v2_serial) = tls_secret(&pki, NS, "chat-tls", "chat-v2", &["chat.test"]);
    api.apply(&chat_v2);
    eventually("the rotated certificate published", || (c.serial("chat.test")? == chat_v2_serial).then_some(())).await;
    let (mut after, subject, serial) = wss(c.tls, &pki, "chat.test").await;
    assert!(subject.contains("chat-v2"), "{subject}");
    assert_eq!(serial, chat_v2_serial);
    echo_once(&mut after, "new handshake").await;
    echo_once(&mut before, "still here after the rotation").await;

    // The Secret disappears: the default certificate (--default-tls-secret) answers for the
    // host, an Event says why, and the old tunnel still echoes.
    assert!(api.delete::<Secret>(NS, "chat-tls"));
    eventually("chat.test back on the default", || c.cert_source("chat.test").is_none().then_some(())).await;
    let (mut ws, subject, serial) = wss(c.tls, &pki, "chat.test").await;
    assert!(subject.contains("default"), "{subject}");
    assert_eq!(serial, default_serial);
    echo_once(&mut ws, "on the default").await;
    echo_once(&mut before, "still here after the delete").await;
    let event =
        eventually("SecretNotFound event", || events_with_reason(&api, "SecretNotFound").into_iter().next()).await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("apps/chat-tls") && note.contains("default certificate"), "{note}");
    assert_eq!(event.regarding.and_then(|r| r.name).as_deref(), Some("chat"), "on the Ingress naming it");

    // Secrets were only ever listed and watched by type, or by the name of a Secret in use.
    let requests = secret_requests(&api);
    assert!(requests.iter().any(|(p, s)| p == "/api/v1/secrets" && s == "type=kubernetes.io/tls"), "{requests:?}");
    assert!(
        requests.iter().any(|(p, s)| p == "/api/v1/namespaces/ingress/secrets" && s == "metadata.name=default-tls"),
        "{requests:?}"
    );
    for (path, selector) in &requests {
        let by_type = path == "/api/v1/secrets" && selector == "type=kubernetes.io/tls";
        // chat-tls, once deleted, is watched by name (it might come back with another type).
        let by_name = (path == "/api/v1/namespaces/ingress/secrets" && selector == "metadata.name=default-tls")
            || (path == "/api/v1/namespaces/apps/secrets" && selector == "metadata.name=chat-tls");
        assert!(by_type || by_name, "a Secret request without a field selector: {path}?{selector}");
    }
    assert!(c.readiness.health().is_healthy());
    c.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_secret_gets_a_warning_event_and_the_last_good_certificate_keeps_serving() {
    init_tracing();
    let stop = CancellationToken::new();
    let (pki, api) = setup(&stop).await;
    let (good, good_serial) = tls_secret(&pki, NS, "chat-tls", "chat-good", &["chat.test"]);
    api.apply(&good);
    api.apply(&ingress(&["chat.test"], &[(&["chat.test"], "chat-tls")], &[]));
    let c = Cluster::start(&api, TlsDefaults::default()).await;
    eventually("certificate published", || (c.serial("chat.test")? == good_serial).then_some(())).await;
    let (mut before, _, serial) = wss(c.tls, &pki, "chat.test").await;
    assert_eq!(serial, good_serial);

    let other = pki.leaf("other", &["chat.test"]);
    let data = |s: &Secret, key: &str| String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap();
    let good_cert = data(&good, "tls.crt");
    let bad: [(&str, Secret, &str); 3] = [
        (
            "key of another certificate",
            secret(NS, "chat-tls", "kubernetes.io/tls", &[("tls.crt", &good_cert), ("tls.key", &other.key_pem)]),
            "does not match the certificate",
        ),
        (
            "unparsable PEM",
            secret(
                NS,
                "chat-tls",
                "kubernetes.io/tls",
                &[("tls.crt", "-----BEGIN CERTIFICATE-----\n!!!\n"), ("tls.key", &other.key_pem)],
            ),
            "not valid PEM",
        ),
        ("missing key", secret(NS, "chat-tls", "kubernetes.io/tls", &[("tls.crt", &good_cert)]), "has no `tls.key`"),
    ];
    for (what, bad, needle) in bad {
        api.apply(&bad);
        let event = eventually(&format!("{what}: an InvalidCertificate event"), || {
            events_with_reason(&api, "InvalidCertificate")
                .into_iter()
                .find(|e| e.note.as_deref().is_some_and(|n| n.contains(needle)))
        })
        .await;
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        let note = event.note.unwrap_or_default();
        assert!(note.contains("Secret apps/chat-tls") && note.contains("last good certificate"), "{what}: {note}");
        assert_eq!(c.serial("chat.test").as_deref(), Some(good_serial.as_str()), "{what}");
        let (mut ws, _, serial) = wss(c.tls, &pki, "chat.test").await;
        assert_eq!(serial, good_serial, "{what}: the last good certificate is served");
        echo_once(&mut ws, what).await;
        echo_once(&mut before, what).await;
    }
    // Fixed again: the new certificate is taken.
    let (fixed, fixed_serial) = tls_secret(&pki, NS, "chat-tls", "chat-fixed", &["chat.test"]);
    api.apply(&fixed);
    eventually("the fixed certificate published", || (c.serial("chat.test")? == fixed_serial).then_some(())).await;
    assert!(c.readiness.health().is_healthy(), "nothing crashed: {:?}", c.readiness.health().failures());
    c.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_expires_while_nothing_changes_is_replaced_by_the_default_and_reported() {
    init_tracing();
    let stop = CancellationToken::new();
    let (pki, api) = setup(&stop).await;
    let now = tls::unix_now();
    let g =
        pki.ca.issue("short-lived", &["chat.test"], Validity { not_before: now - 3600, not_after: now + 3 }).unwrap();
    api.apply(&secret(NS, "chat-tls", "kubernetes.io/tls", &[("tls.crt", &g.cert_pem), ("tls.key", &g.key_pem)]));
    api.apply(&ingress(&["chat.test"], &[(&["chat.test"], "chat-tls")], &[]));
    let c = Cluster::start(&api, TlsDefaults::default()).await;
    eventually("certificate published", || c.cert_source("chat.test")).await;
    let requests = api.requests().len();
    // No object changes; the controller looks again when the certificate expires.
    let event = support::kube_test::eventually(Duration::from_secs(15), "an event about the expiry", || {
        events_with_reason(&api, "InvalidCertificate").pop()
    })
    .await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("Secret apps/chat-tls") && note.contains("expired at"), "{note}");
    assert!(note.contains("the default certificate is served"), "{note}");
    assert!(c.cert_source("chat.test").is_none(), "the expired certificate is no longer served");
    assert!(
        api.requests()[requests..].iter().all(|r| r.method != "GET" || r.query.contains("watch")),
        "no re-list was needed"
    );
    c.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_tls_secret_of_the_wrong_type_is_reported_as_such() {
    init_tracing();
    let api = FakeKube::start().await;
    api.apply(&ingress_class());
    backend(&api, "127.0.0.1:9".parse().expect("addr"));
    let pki = Pki::new("cluster CA");
    let g = pki.leaf("chat", &["chat.test"]);
    // `kubectl create secret generic` instead of `kubectl create secret tls`.
    api.apply(&secret(NS, "chat-tls", "Opaque", &[("tls.crt", &g.cert_pem), ("tls.key", &g.key_pem)]));
    api.apply(&ingress(&["chat.test"], &[(&["chat.test"], "chat-tls")], &[]));
    let c = Cluster::start_in(&api, TlsDefaults::default(), &[NS]).await;
    let event = eventually("InvalidCertificate event", || events_with_reason(&api, "InvalidCertificate").pop()).await;
    let note = event.note.unwrap_or_default();
    assert!(note.contains("has type Opaque"), "{note}");
    assert!(c.cert_source("chat.test").is_none());
    // Fixed by re-creating it with the right type: the TLS watch takes over.
    assert!(api.delete::<Secret>(NS, "chat-tls"));
    api.apply(&secret(NS, "chat-tls", "kubernetes.io/tls", &[("tls.crt", &g.cert_pem), ("tls.key", &g.key_pem)]));
    eventually("served once of type kubernetes.io/tls", || {
        (c.cert_source("chat.test")? == "apps/chat-tls").then_some(())
    })
    .await;
    // With --watch-namespace, the TLS watch is per namespace too.
    let requests = secret_requests(&api);
    assert!(
        requests.iter().all(|(p, _)| p == "/api/v1/namespaces/apps/secrets"),
        "only the watched namespace: {requests:?}"
    );
    assert!(requests.iter().any(|(_, s)| s == "type=kubernetes.io/tls"), "{requests:?}");
    assert!(requests.iter().any(|(_, s)| s == "metadata.name=chat-tls"), "{requests:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_ca_secret_in_the_cluster_verifies_a_tls_backend() {
    init_tracing();
    let stop = CancellationToken::new();
    let pki = Pki::new("backend CA");
    let other = Pki::new("some other CA");
    // The echo pod speaks only TLS, with a certificate for the Service's DNS name.
    let handle = Arc::new(CertHandle::new(pki.entry(CertSource::SelfSigned, "chat", &["chat.apps.svc"])));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pod = listener.local_addr().expect("addr");
    let config = EchoConfig { prefix: "tls pod: ".into(), instance: "pod".into() };
    tokio::spawn(echo::serve_tls(listener, config, tls::server::config(handle).expect("config"), stop.clone()));

    let api = FakeKube::start().await;
    api.apply(&ingress_class());
    backend(&api, pod);
    // Opaque, with `ca.crt`: not a TLS Secret, so watched by name.
    api.apply(&secret(NS, "chat-ca", "Opaque", &[("ca.crt", &pki.ca_pem)]));
    api.apply(&ingress(
        &["chat.test"],
        &[],
        &[("wsingress.io/backend-protocol", "https"), ("wsingress.io/backend-ca-secret", "chat-ca")],
    ));
    let c = Cluster::start(&api, TlsDefaults::default()).await;
    eventually("route published", || c.routes.load().find(Some("chat.test"), "/").map(|_| ())).await;
    let connect = || async {
        let mut req = format!("ws://{}/chat", c.plain).into_client_request().expect("request");
        req.headers_mut().insert("host", "chat.test".parse().expect("host"));
        tokio_tungstenite::connect_async(req).await
    };
    let (mut ws, _) = connect().await.expect("wss to the backend, verified with the CA Secret");
    ws.send(Message::text("hi")).await.expect("send");
    let reply = tokio::time::timeout(LIMIT, ws.next()).await.expect("in time").expect("open").expect("message");
    assert_eq!(reply, Message::text("tls pod: hi"));
    assert!(
        events_with_reason(&api, "SecretNotFound").is_empty(),
        "the CA Secret was never reported missing (the publish waited for its watch)"
    );
    let requests = secret_requests(&api);
    assert!(
        requests.iter().any(|(p, s)| p == "/api/v1/namespaces/apps/secrets" && s == "metadata.name=chat-ca"),
        "{requests:?}"
    );

    // The CA Secret changes to a CA that did not sign the pod: new connections get 502.
    api.apply(&secret(NS, "chat-ca", "Opaque", &[("ca.crt", &other.ca_pem)]));
    let refused = {
        let deadline = Instant::now() + LIMIT;
        loop {
            match connect().await {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status() == 502 => break true,
                _ if Instant::now() > deadline => break false,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    assert!(refused, "a CA that did not sign the backend is refused once the Secret changes");
    // The tunnel opened before is untouched.
    ws.send(Message::text("still")).await.expect("send");
    let reply = tokio::time::timeout(LIMIT, ws.next()).await.expect("in time").expect("open").expect("message");
    assert_eq!(reply, Message::text("tls pod: still"));

    // No longer referenced: the named watch stops (a later request for it would show).
    api.apply(&ingress(&["chat.test"], &[], &[("wsingress.io/backend-protocol", "https")]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(c.readiness.health().is_healthy(), "{:?}", c.readiness.health().failures());
    c.stop().await;
    stop.cancel();
}
