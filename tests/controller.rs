//! The Kubernetes controller against a fake API server (tests/support/fake_kube.rs) over real
//! HTTP, with the real `kube::Client` and kube-runtime reflectors, the real proxy and real
//! echo backends on loopback. Timings (debounce, watch backoff, lease) are shortened so the
//! file runs in seconds; every wait polls with a deadline.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeStatus, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressClassSpec, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use support::fake_kube::FakeKube;
use support::kube_test::{events_with_reason, eventually, ingress_class, init_tracing, meta};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use wsingress::metrics::Metrics;
use wsingress::readiness::Readiness;
use wsingress::routes::{EndpointState, RouteHandle};
use wsingress::source::Publisher;
use wsingress::source::events::EventLimits;
use wsingress::source::kube::{KubeConfig, KubeError, WatchBackoff};
use wsingress::source::leader::ElectionConfig;
use wsingress::source::rbac::ACCESS;
use wsingress::source::status::{PublishFrom, StatusConfig};
use wsingress::translate::{CONTROLLER_NAME, Defaults, ServiceRoutes, UnsupportedSecurity};

const NS: &str = "apps";
const HOST: &str = "chat.test";

// ---------------------------------------------------------------- objects

fn ingress(name: &str, class: &str, annotations: &[(&str, &str)]) -> Ingress {
    let mut m = meta(NS, name);
    m.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    Ingress {
        metadata: m,
        spec: Some(IngressSpec {
            ingress_class_name: Some(class.into()),
            rules: Some(vec![IngressRule {
                host: Some(HOST.into()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: "chat".into(),
                                port: Some(ServiceBackendPort {
                                    name: Some("ws".into()),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}

fn service(type_: &str) -> Service {
    Service {
        metadata: meta(NS, "chat"),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            ports: Some(vec![ServicePort {
                name: Some("ws".into()),
                port: 80,
                target_port: Some(IntOrString::String("ws".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// One EndpointSlice of Service `chat` with these ready pod addresses (all on one port, as pods are).
fn slice(pods: &[SocketAddr]) -> EndpointSlice {
    let mut m = meta(NS, "chat-abc12");
    m.labels = Some(BTreeMap::from([("kubernetes.io/service-name".to_string(), "chat".to_string())]));
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: Some(
            pods.iter()
                .map(|a| Endpoint {
                    addresses: vec![a.ip().to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("ws".into()),
            port: pods.first().map(|a| i32::from(a.port())),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// Pod conditions as the EndpointSlice controller writes them.
#[derive(Debug, Clone, Copy)]
enum Pod {
    Ready,
    /// Failing its readiness probe.
    NotReady,
    /// Deleted, still serving during its grace period.
    Terminating,
}

/// Service `chat`'s slice with each pod in the given condition.
fn slice_with(pods: &[(SocketAddr, Pod)]) -> EndpointSlice {
    let mut s = slice(&pods.iter().map(|p| p.0).collect::<Vec<_>>());
    for (ep, (_, pod)) in s.endpoints.iter_mut().flatten().zip(pods) {
        let (ready, serving, terminating) = match pod {
            Pod::Ready => (true, true, false),
            Pod::NotReady => (false, false, false),
            Pod::Terminating => (false, true, true),
        };
        ep.conditions =
            Some(EndpointConditions { ready: Some(ready), serving: Some(serving), terminating: Some(terminating) });
    }
    s
}

fn node(name: &str, internal: &str, external: Option<&str>) -> Node {
    let mut addresses = vec![NodeAddress { type_: "InternalIP".into(), address: internal.into() }];
    if let Some(e) = external {
        addresses.push(NodeAddress { type_: "ExternalIP".into(), address: e.into() });
    }
    Node {
        metadata: meta("", name),
        status: Some(NodeStatus { addresses: Some(addresses), ..NodeStatus::default() }),
        ..Node::default()
    }
}

/// An IngressClass `name` for the controller `controller`.
fn class_for(name: &str, controller: &str) -> IngressClass {
    IngressClass {
        metadata: meta("", name),
        spec: Some(IngressClassSpec { controller: Some(controller.into()), ..IngressClassSpec::default() }),
    }
}

/// Ingress `name` of class `class` routing `host` to Service `chat`.
fn ingress_on(name: &str, class: &str, host: &str) -> Ingress {
    let mut ing = ingress(name, class, &[]);
    if let Some(rule) = ing.spec.as_mut().and_then(|s| s.rules.as_mut()).and_then(|r| r.first_mut()) {
        rule.host = Some(host.into());
    }
    ing
}

/// The cluster-mode translation settings: exactly the classes naming `controller`.
fn cluster_defaults(controller: &str) -> Defaults {
    Defaults {
        controller_name: controller.into(),
        class_fallback: false,
        service_routes: ServiceRoutes { enabled: false, require_class: true, namespaces: Vec::new() },
        ..Defaults::default()
    }
}

/// The usual objects: our class, Service `chat`, its slice, and Ingress `chat` (+ annotations).
fn seed(api: &FakeKube, pods: &[SocketAddr], annotations: &[(&str, &str)]) {
    api.apply(&ingress_class());
    api.apply(&service("ClusterIP"));
    api.apply(&slice(pods));
    api.apply(&ingress("chat", "wsingress", annotations));
}

// ---------------------------------------------------------------- controller, proxy, backends

fn fast_config() -> KubeConfig {
    KubeConfig {
        debounce: Duration::from_millis(50),
        backoff: WatchBackoff { initial: Duration::from_millis(50), max: Duration::from_millis(300) },
        ..KubeConfig::new(Defaults::default())
    }
}

fn fast_election(identity: &str) -> ElectionConfig {
    ElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1300),
        retry_period: Duration::from_millis(200),
        ..ElectionConfig::new(NS.into(), "wsingress-leader".into(), identity.into())
    }
}

struct Controller {
    routes: Arc<RouteHandle>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), KubeError>>,
}

fn start_controller(api: &FakeKube, config: KubeConfig) -> Controller {
    let routes = Arc::new(RouteHandle::new());
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let readiness = Arc::new(Readiness::new(routes.clone()));
    let publisher = Publisher::new(routes.clone(), metrics.clone(), "kube");
    let shutdown = CancellationToken::new();
    let health = readiness.health().clone();
    let task = tokio::spawn(wsingress::source::kube::run(api.client(), config, publisher, health, shutdown.clone()));
    Controller { routes, metrics, readiness, shutdown, task }
}

impl Controller {
    /// Endpoints (address, state) of the route serving HOST, if any.
    fn endpoints(&self) -> Option<Vec<(SocketAddr, EndpointState)>> {
        let table = self.routes.load();
        let route = table.find(Some(HOST), "/")?;
        Some(route.pool.endpoints().iter().map(|e| (e.addr, e.state)).collect())
    }

    fn ready_addrs(&self) -> BTreeSet<SocketAddr> {
        self.endpoints().unwrap_or_default().into_iter().filter(|e| e.1 == EndpointState::Ready).map(|e| e.0).collect()
    }

    /// The live tunnel count the route's pool holds for `addr`.
    fn active(&self, addr: SocketAddr) -> Option<usize> {
        let table = self.routes.load();
        let route = table.find(Some(HOST), "/")?;
        route.pool.endpoints().iter().find(|e| e.addr == addr).map(|e| e.live.active())
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

impl Controller {
    fn routes_host(&self, host: &str) -> bool {
        self.routes.load().find(Some(host), "/").is_some()
    }

    fn leading(&self) -> bool {
        self.metrics.controller_leader.get() == 1
    }

    /// The admin listener (`/healthz`, `/readyz`, `/metrics`, `/routes`) on 127.0.0.1:0.
    async fn admin(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = listener.local_addr().expect("addr");
        let state = wsingress::admin::AdminState {
            metrics: self.metrics.clone(),
            readiness: self.readiness.clone(),
            routes: self.routes.clone(),
            certs: None,
        };
        tokio::spawn(wsingress::admin::serve(listener, state, self.shutdown.clone()));
        addr
    }
}

/// The real proxy on 127.0.0.1:0 reading `routes`.
async fn start_proxy(routes: Arc<RouteHandle>) -> (SocketAddr, wsingress::drain::Drain) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let drain = wsingress::drain::Drain::new();
    let state = Arc::new(wsingress::proxy::service::ProxyState::new(
        routes,
        metrics,
        drain.clone(),
        wsingress::proxy::headers::TrustedProxies::default(),
    ));
    tokio::spawn(wsingress::proxy::server::serve(listener, state, wsingress::proxy::server::ProxyConfig::default()));
    (addr, drain)
}

/// `n` echo "pods" on 127.0.0.2, .3, ... sharing one port (as pods behind a Service do),
/// named pod-2, pod-3, ... in the `x-echo-instance` header.
async fn start_pods(n: u8, stop: &CancellationToken) -> Vec<SocketAddr> {
    'retry: for _ in 0..20 {
        let probe = TcpListener::bind("127.0.0.2:0").await.expect("bind probe");
        let port = probe.local_addr().expect("addr").port();
        let mut listeners = vec![probe];
        for i in 3..(2 + n) {
            match TcpListener::bind((IpAddr::from([127, 0, 0, i]), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'retry,
            }
        }
        let mut addrs = Vec::new();
        for l in listeners {
            let addr = l.local_addr().expect("addr");
            let config = wsingress::echo::EchoConfig {
                prefix: String::new(),
                instance: format!("pod-{}", addr.ip().to_string().rsplit('.').next().unwrap_or("?")),
            };
            tokio::spawn(wsingress::echo::serve(l, config, stop.clone()));
            addrs.push(addr);
        }
        return addrs;
    }
    panic!("could not bind echo pods on one port");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Open a WebSocket to HOST through the proxy; returns it and the pod that answered.
async fn connect(proxy: SocketAddr) -> (Ws, String) {
    let mut req = format!("ws://{proxy}/chat").into_client_request().expect("request");
    req.headers_mut().insert("host", HOST.parse().expect("host header"));
    let (ws, resp) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("websocket handshake through the proxy");
    let pod = resp.headers().get("x-echo-instance").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (ws, pod)
}

/// Send one text message and expect its echo.
async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("stream open")
        .expect("message");
    assert_eq!(reply, Message::text(text));
}

/// Wait for the tunnel to be closed by the far side; returns the close code and when.
async fn closed_by_peer(ws: &mut Ws, limit: Duration) -> Option<CloseCode> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("tunnel not closed within {limit:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                eprintln!("tunnel ended with an error: {e} at {:?}", tokio::time::Instant::now());
                return None;
            }
            Ok(None) => return None,
        }
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routes_traffic_and_follows_endpoint_scaling_with_drain() {
    init_tracing();
    let stop = CancellationToken::new();
    let pods = start_pods(3, &stop).await;
    let (a, b, c) = (pods[0], pods[1], pods[2]);
    let api = FakeKube::start().await;
    seed(&api, &[a, b], &[("wsingress.io/load-balance", "round-robin"), ("wsingress.io/drain-timeout", "300ms")]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "first publish", || ctl.routes.has_published().then_some(())).await;
    // The first table already holds the full sync: never an empty table before the real one.
    assert_eq!(ctl.ready_addrs(), BTreeSet::from([a, b]), "first published table");
    assert_eq!(ctl.routes.generation(), 1);

    let (proxy, _drain) = start_proxy(ctl.routes.clone()).await;
    let mut conns = Vec::new();
    for i in 0..4 {
        let (mut ws, pod) = connect(proxy).await;
        echo(&mut ws, &format!("hello {i}")).await;
        conns.push((ws, pod));
    }
    let pods_used: BTreeSet<&str> = conns.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(pods_used, BTreeSet::from(["pod-2", "pod-3"]));

    // Scale 2 → 3: new connections reach the new pod.
    api.apply(&slice(&[a, b, c]));
    eventually(Duration::from_secs(5), "3 endpoints", || (ctl.ready_addrs().len() == 3).then_some(())).await;
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let (mut ws, pod) = connect(proxy).await;
        echo(&mut ws, "after scale-up").await;
        seen.insert(pod.clone());
        conns.push((ws, pod));
    }
    assert!(seen.contains("pod-4"), "new pod gets connections: {seen:?}");

    // Scale 3 → 1: tunnels to removed pods get Close 1001 after the drain timeout; tunnels to
    // the surviving pod keep working; new connections all go to it.
    let removed_at = Instant::now();
    api.apply(&slice(&[a]));
    eventually(Duration::from_secs(5), "1 endpoint", || (ctl.ready_addrs() == BTreeSet::from([a])).then_some(())).await;
    // Every client keeps reading, as real clients do (the Close is answered when read).
    let mut survivors = Vec::new();
    let mut draining = Vec::new();
    for (mut ws, pod) in conns {
        if pod == "pod-2" {
            survivors.push(ws);
        } else {
            draining.push(tokio::spawn(async move {
                let code = closed_by_peer(&mut ws, Duration::from_secs(5)).await;
                (pod, code, removed_at.elapsed())
            }));
        }
    }
    assert!(!draining.is_empty());
    for task in draining {
        let (pod, code, after) = task.await.expect("reader task");
        assert_eq!(code, Some(CloseCode::Away), "tunnel to removed {pod}");
        // Each tunnel closes at its own instant within the drain timeout.
        assert!(after < Duration::from_millis(300 + 500), "closed within the drain timeout ({after:?})");
    }
    assert!(!survivors.is_empty());
    for ws in &mut survivors {
        echo(ws, "still here").await;
    }
    for _ in 0..3 {
        let (mut ws, pod) = connect(proxy).await;
        assert_eq!(pod, "pod-2");
        echo(&mut ws, "only one left").await;
    }
    ctl.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotation_change_applies_to_new_connections() {
    init_tracing();
    let stop = CancellationToken::new();
    let pods = start_pods(1, &stop).await;
    let api = FakeKube::start().await;
    seed(&api, &pods, &[]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "route", || ctl.endpoints()).await;
    let (proxy, _drain) = start_proxy(ctl.routes.clone()).await;
    let (mut before, _) = connect(proxy).await;
    echo(&mut before, "default idle timeout").await;

    api.apply(&ingress("chat", "wsingress", &[("wsingress.io/idle-timeout", "400ms")]));
    eventually(Duration::from_secs(5), "idle-timeout applied", || {
        let t = ctl.routes.load();
        (t.find(Some(HOST), "/")?.settings.idle_timeout == Some(Duration::from_millis(400))).then_some(())
    })
    .await;
    let (mut after, _) = connect(proxy).await;
    echo(&mut after, "short idle timeout").await;
    let opened = Instant::now();
    let code = closed_by_peer(&mut after, Duration::from_secs(5)).await;
    let idle = opened.elapsed();
    assert_eq!(code, Some(CloseCode::Away), "idle close after {idle:?}");
    assert!(
        idle >= Duration::from_millis(350) && idle < Duration::from_secs(2),
        "new connection closed after its idle timeout ({idle:?})"
    );
    // The connection opened before the change keeps the settings it started with.
    echo(&mut before, "still open").await;
    ctl.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_keeps_the_last_table_and_catches_up_after() {
    init_tracing();
    let stop = CancellationToken::new();
    let pods = start_pods(2, &stop).await;
    let api = FakeKube::start().await;
    seed(&api, &pods[..1], &[]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "route", || ctl.endpoints()).await;
    let (proxy, _drain) = start_proxy(ctl.routes.clone()).await;
    let generation = ctl.routes.generation();

    api.go_down();
    // Changes made while the controller cannot see them.
    api.apply(&slice(&pods));
    let down_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < down_until {
        // Traffic keeps flowing on the last table, which is never emptied.
        let (mut ws, pod) = connect(proxy).await;
        assert_eq!(pod, "pod-2");
        echo(&mut ws, "during the outage").await;
        assert_eq!(ctl.ready_addrs(), BTreeSet::from([pods[0]]));
        assert_eq!(ctl.routes.generation(), generation, "nothing published while down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.come_back();
    let back = Instant::now();
    eventually(Duration::from_secs(10), "change made during the outage", || {
        (ctl.ready_addrs().len() == 2).then_some(())
    })
    .await;
    eprintln!("caught up {:?} after the API came back", back.elapsed());
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        seen.insert(connect(proxy).await.1);
    }
    assert_eq!(seen.len(), 2, "both pods serve after catching up: {seen:?}");
    ctl.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_watch_gets_410_and_the_controller_relists() {
    init_tracing();
    let a: SocketAddr = "10.1.0.1:8080".parse().expect("addr");
    let b: SocketAddr = "10.1.0.2:8080".parse().expect("addr");
    let api = FakeKube::start().await;
    seed(&api, &[a], &[]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "route", || ctl.endpoints()).await;
    let kinds = ["ingresses", "services", "endpointslices", "ingressclasses"];
    let lists_before: Vec<usize> = kinds.iter().map(|k| api.list_count(k)).collect();
    assert!(lists_before.iter().all(|&n| n == 1), "{lists_before:?}");

    // History compacted while the controller was away: resuming from its resourceVersion
    // gets a 410 ERROR event, so it must re-list to see what changed.
    api.go_down();
    api.apply(&slice(&[b]));
    api.compact();
    api.come_back();
    eventually(Duration::from_secs(10), "change seen through a re-list", || {
        (ctl.ready_addrs() == BTreeSet::from([b])).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "every reflector re-listed", || {
        kinds.iter().all(|k| api.list_count(k) >= 2).then_some(())
    })
    .await;
    let gone = api.requests().iter().filter(|r| r.query.contains("watch=true")).count();
    assert!(gone > 4);

    // Compaction under live watches: each gets an ERROR 410 and re-lists; nothing is lost.
    api.compact();
    api.apply(&slice(&[a, b]));
    eventually(Duration::from_secs(10), "re-list after live 410", || {
        (kinds.iter().all(|k| api.list_count(k) >= 3) && ctl.ready_addrs().len() == 2).then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_annotation_yields_one_event_and_the_default() {
    init_tracing();
    let a: SocketAddr = "10.1.0.1:8080".parse().expect("addr");
    let api = FakeKube::start().await;
    seed(&api, &[a], &[("wsingress.io/idle-timeout", "forever")]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "route", || ctl.endpoints()).await;
    let t = ctl.routes.load();
    let route = t.find(Some(HOST), "/").expect("route");
    assert_eq!(
        route.settings.idle_timeout,
        Some(Duration::from_secs(60)),
        "a bad annotation falls back to the default"
    );
    let uid = api.get::<Ingress>(NS, "chat").and_then(|i| i.metadata.uid).expect("uid");
    let invalid = |api: &FakeKube| -> Vec<Event> {
        api.list::<Event>().into_iter().filter(|e| e.reason.as_deref() == Some("InvalidAnnotation")).collect()
    };
    let events = eventually(Duration::from_secs(5), "InvalidAnnotation event", || {
        let e = invalid(&api);
        (!e.is_empty()).then_some(e)
    })
    .await;
    let e = &events[0];
    let note = e.note.clone().unwrap_or_default();
    assert!(
        note.contains("wsingress.io/idle-timeout") && note.contains("forever"),
        "note names the field and value: {note}"
    );
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    let regarding = e.regarding.clone().expect("regarding");
    assert_eq!(regarding.kind.as_deref(), Some("Ingress"));
    assert_eq!(regarding.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(e.metadata.namespace.as_deref(), Some(NS));

    // Unrelated changes re-translate; the unchanged warning is not posted again.
    let gen_before = ctl.routes.generation();
    api.apply(&slice(&[a, "10.1.0.2:8080".parse().expect("addr")]));
    eventually(Duration::from_secs(5), "republished", || (ctl.routes.generation() > gen_before).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(invalid(&api).len(), 1, "no duplicate event on resync");

    // Fixed, then broken again: a new event.
    api.apply(&ingress("chat", "wsingress", &[("wsingress.io/idle-timeout", "5m")]));
    eventually(Duration::from_secs(5), "fixed annotation applied", || {
        let t = ctl.routes.load();
        (t.find(Some(HOST), "/")?.settings.idle_timeout == Some(Duration::from_secs(300))).then_some(())
    })
    .await;
    api.apply(&ingress("chat", "wsingress", &[("wsingress.io/idle-timeout", "5 parsecs")]));
    eventually(Duration::from_secs(5), "second event", || (invalid(&api).len() == 2).then_some(())).await;
    ctl.stop().await;
}

fn lease_holder(api: &FakeKube) -> Option<String> {
    api.get::<Lease>(NS, "wsingress-leader").and_then(|l| l.spec).and_then(|s| s.holder_identity)
}

fn status_ips(api: &FakeKube, name: &str) -> Vec<String> {
    api.get::<Ingress>(NS, name)
        .and_then(|i| i.status)
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.ip.or(e.hostname))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_by_the_leader_only_and_a_follower_takes_over() {
    init_tracing();
    let api = FakeKube::start().await;
    seed(&api, &["10.1.0.1:8080".parse().expect("addr")], &[]);
    // Two replicas; each publishes a different address so the test can tell who wrote.
    let replica = |id: &str, addr: &str| KubeConfig {
        election: Some(fast_election(id)),
        status: Some(StatusConfig { publish: PublishFrom::Address(addr.into()), resync: Duration::from_millis(300) }),
        identity: id.into(),
        ..fast_config()
    };
    let first = start_controller(&api, replica("replica-a", "192.0.2.1"));
    eventually(Duration::from_secs(10), "status from the leader", || {
        (status_ips(&api, "chat") == ["192.0.2.1"]).then_some(())
    })
    .await;
    assert_eq!(lease_holder(&api).as_deref(), Some("replica-a"));
    let second = start_controller(&api, replica("replica-b", "192.0.2.2"));
    eventually(Duration::from_secs(10), "second replica synced", || second.routes.has_published().then_some(())).await;
    let version = api.get::<Ingress>(NS, "chat").and_then(|i| i.metadata.resource_version);
    // Several renew/retry/resync rounds: the follower writes nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        api.get::<Ingress>(NS, "chat").and_then(|i| i.metadata.resource_version),
        version,
        "the follower did not touch the Ingress"
    );
    assert_eq!(lease_holder(&api).as_deref(), Some("replica-a"));

    // The leader dies without releasing: the follower takes over once the lease expires.
    first.task.abort();
    let killed = Instant::now();
    eventually(Duration::from_secs(10), "follower took over", || {
        (lease_holder(&api).as_deref() == Some("replica-b") && status_ips(&api, "chat") == ["192.0.2.2"]).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!("takeover after {takeover:?} (lease 2 s)");
    assert!(takeover >= Duration::from_millis(1500), "not before the lease expired: {takeover:?}");

    // An Ingress that stops being ours gets its status cleared by the leader.
    api.apply(&ingress("chat", "someone-else", &[]));
    eventually(Duration::from_secs(5), "status cleared", || status_ips(&api, "chat").is_empty().then_some(())).await;

    // Graceful shutdown releases the lease at once.
    second.stop().await;
    assert_eq!(lease_holder(&api), None, "released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_access_list_is_exactly_what_the_controller_uses() {
    init_tracing();
    let api = FakeKube::start().await;
    // A NodePort publish Service (node addresses), a bad annotation (an Event), election.
    seed(&api, &["10.1.0.1:8080".parse().expect("addr")], &[("wsingress.io/load-balance", "fastest")]);
    let mut publish = service("NodePort");
    publish.metadata = meta("ingress", "wsingress");
    api.apply(&publish);
    api.apply(&node("n1", "192.168.0.1", Some("198.51.100.1")));
    api.apply(&node("n2", "192.168.0.2", None));
    let ctl = start_controller(
        &api,
        KubeConfig {
            election: Some(fast_election("replica-a")),
            status: Some(StatusConfig::new(PublishFrom::Service {
                namespace: "ingress".into(),
                name: "wsingress".into(),
            })),
            ..fast_config()
        },
    );
    eventually(Duration::from_secs(10), "node addresses in status", || {
        let mut ips = status_ips(&api, "chat");
        ips.sort();
        (ips == ["192.168.0.2", "198.51.100.1"]).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "event posted", || (!api.list::<Event>().is_empty()).then_some(())).await;
    // Renew at least once (update), then release on shutdown.
    tokio::time::sleep(Duration::from_millis(400)).await;
    ctl.stop().await;
    // A restarted controller finds its Event and counts one more observation (get + patch).
    let ctl = start_controller(&api, KubeConfig { election: Some(fast_election("replica-a")), ..fast_config() });
    eventually(Duration::from_secs(10), "event counted again", || {
        api.list::<Event>().iter().any(|e| e.series.as_ref().is_some_and(|s| s.count == 2)).then_some(())
    })
    .await;
    ctl.stop().await;

    let used: BTreeSet<(String, String, String)> =
        api.requests().iter().filter_map(|r| r.access()).map(|(g, r, v)| (g, r, v.to_string())).collect();
    let declared: BTreeSet<(String, String, String)> = ACCESS
        .iter()
        .flat_map(|a| a.verbs.iter().map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string())))
        .collect();
    assert_eq!(used, declared, "rbac::ACCESS must list exactly the requests the controller makes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_and_an_expired_continue_starts_the_list_again() {
    init_tracing();
    let a: SocketAddr = "10.1.0.1:8080".parse().expect("addr");
    let api = FakeKube::start().await;
    seed(&api, &[a], &[]);
    // Five Ingresses, one host each: three pages of two.
    for i in 1..5 {
        let mut ing = ingress(&format!("chat-{i}"), "wsingress", &[]);
        if let Some(rule) = ing.spec.as_mut().and_then(|s| s.rules.as_mut()).and_then(|r| r.first_mut()) {
            rule.host = Some(format!("chat-{i}.test"));
        }
        api.apply(&ing);
    }
    // The first continued page finds its version compacted: the watcher must list again.
    api.expire_next_continue();
    let ctl = start_controller(&api, KubeConfig { page_size: 2, ..fast_config() });
    eventually(Duration::from_secs(10), "first publish", || ctl.routes.has_published().then_some(())).await;
    let table = ctl.routes.load();
    for host in ["chat.test", "chat-1.test", "chat-2.test", "chat-3.test", "chat-4.test"] {
        assert!(table.find(Some(host), "/").is_some(), "{host} routed from a paged list");
    }
    let ingress_lists: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.access().is_some_and(|(_, res, verb)| res == "ingresses" && verb == "list"))
        .collect();
    assert!(ingress_lists.iter().all(|r| r.query.contains("limit=2")), "{ingress_lists:?}");
    let expired = ingress_lists.iter().filter(|r| r.status == 410 && r.query.contains("continue=")).count();
    assert_eq!(expired, 1, "{ingress_lists:?}");
    let fresh = ingress_lists.iter().filter(|r| !r.query.contains("continue=")).count();
    assert_eq!(fresh, 2, "listed again from the start after the 410: {ingress_lists:?}");
    let continued_ok = ingress_lists.iter().filter(|r| r.status == 200 && r.query.contains("continue=")).count();
    assert_eq!(continued_ok, 2, "pages 2 and 3 of the second list: {ingress_lists:?}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_flap_keeps_every_tunnel_and_a_terminating_pod_drains_with_1001() {
    init_tracing();
    let stop = CancellationToken::new();
    let pods = start_pods(2, &stop).await;
    let (a, b) = (pods[0], pods[1]);
    let drain = Duration::from_millis(800);
    let api = FakeKube::start().await;
    seed(&api, &pods, &[("wsingress.io/load-balance", "round-robin"), ("wsingress.io/drain-timeout", "800ms")]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "both pods ready", || (ctl.ready_addrs().len() == 2).then_some(())).await;
    let (proxy, _drain) = start_proxy(ctl.routes.clone()).await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..6 {
        let (mut ws, pod) = connect(proxy).await;
        echo(&mut ws, &format!("hello {i}")).await;
        if pod == "pod-2" { on_a.push(ws) } else { on_b.push(ws) }
    }
    assert_eq!((on_a.len(), on_b.len()), (3, 3), "round-robin over both pods");

    // Pod a fails its readiness probe for longer than the drain timeout, then recovers.
    api.apply(&slice_with(&[(a, Pod::NotReady), (b, Pod::Ready)]));
    eventually(Duration::from_secs(5), "a not ready", || {
        ctl.endpoints()?.contains(&(a, EndpointState::NotReady)).then_some(())
    })
    .await;
    for _ in 0..3 {
        let (mut ws, pod) = connect(proxy).await;
        assert_eq!(pod, "pod-3", "no new tunnels to a not-ready pod");
        echo(&mut ws, "while a is not ready").await;
    }
    assert_eq!(ctl.active(a), Some(3), "a keeps its live count while not ready");
    tokio::time::sleep(drain + Duration::from_millis(400)).await;
    api.apply(&slice_with(&[(a, Pod::Ready), (b, Pod::Ready)]));
    eventually(Duration::from_secs(5), "a ready again", || (ctl.ready_addrs().len() == 2).then_some(())).await;
    assert_eq!(ctl.active(a), Some(3), "the count survived the flap");
    for ws in on_a.iter_mut().chain(on_b.iter_mut()) {
        echo(ws, "after the flap").await;
    }

    // Pod b terminates: its tunnels get Close 1001 within the drain timeout; a's stay.
    let terminated = Instant::now();
    api.apply(&slice_with(&[(a, Pod::Ready), (b, Pod::Terminating)]));
    let readers: Vec<_> = on_b
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move { (closed_by_peer(&mut ws, Duration::from_secs(10)).await, terminated.elapsed()) })
        })
        .collect();
    for r in readers {
        let (code, after) = r.await.expect("reader");
        assert_eq!(code, Some(CloseCode::Away));
        assert!(after <= drain + Duration::from_millis(700), "closed within the drain timeout (+ margin): {after:?}");
    }
    for ws in &mut on_a {
        echo(ws, "a is still here").await;
    }
    for _ in 0..3 {
        assert_eq!(connect(proxy).await.1, "pod-2", "no new tunnels to a terminating pod");
    }
    ctl.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installs_serve_and_write_only_their_own_classes() {
    init_tracing();
    let api = FakeKube::start().await;
    api.apply(&class_for("public", "example.com/public"));
    api.apply(&class_for("internal", "example.com/internal"));
    api.apply(&service("ClusterIP"));
    api.apply(&slice(&["10.1.0.1:8080".parse().expect("addr")]));
    api.apply(&ingress_on("pub", "public", "pub.test"));
    api.apply(&ingress_on("int", "internal", "int.test"));
    let install = |controller: &str, id: &str, address: &str| KubeConfig {
        defaults: cluster_defaults(controller),
        election: Some(ElectionConfig { lease_name: format!("{id}-leader"), ..fast_election(id) }),
        status: Some(StatusConfig {
            publish: PublishFrom::Address(address.into()),
            resync: Duration::from_millis(300),
        }),
        identity: id.into(),
        ..fast_config()
    };
    let public = start_controller(&api, install("example.com/public", "public", "192.0.2.1"));
    let internal = start_controller(&api, install("example.com/internal", "internal", "192.0.2.2"));
    eventually(Duration::from_secs(10), "each install wrote its own Ingress", || {
        (status_ips(&api, "pub") == ["192.0.2.1"] && status_ips(&api, "int") == ["192.0.2.2"]).then_some(())
    })
    .await;
    assert!(public.routes_host("pub.test") && !public.routes_host("int.test"));
    assert!(internal.routes_host("int.test") && !internal.routes_host("pub.test"));

    // Several resyncs later neither has touched the other's Ingress: no write war.
    let version = |name: &str| api.get::<Ingress>(NS, name).and_then(|i| i.metadata.resource_version);
    let before = (version("pub"), version("int"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!((version("pub"), version("int")), before, "status written once, by its own install only");

    // `int` is left to a third controller, with that controller's address already next to
    // internal's: internal removes only its own address; public touches nothing.
    let mut left = ingress_on("int", "nginx", "int.test");
    left.status = Some(k8s_openapi::api::networking::v1::IngressStatus {
        load_balancer: Some(k8s_openapi::api::networking::v1::IngressLoadBalancerStatus {
            ingress: Some(
                ["192.0.2.2", "203.0.113.9"]
                    .iter()
                    .map(|ip| k8s_openapi::api::networking::v1::IngressLoadBalancerIngress {
                        ip: Some((*ip).into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
    });
    api.apply(&left);
    eventually(Duration::from_secs(10), "only internal's address removed", || {
        (status_ips(&api, "int") == ["203.0.113.9"] && !internal.routes_host("int.test")).then_some(())
    })
    .await;

    // `pub` moves to the internal class: internal takes it over, public lets go.
    api.apply(&ingress_on("pub", "internal", "pub.test"));
    eventually(Duration::from_secs(10), "internal took pub over", || {
        (status_ips(&api, "pub") == ["192.0.2.2"]
            && internal.routes_host("pub.test")
            && !public.routes_host("pub.test"))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(status_ips(&api, "pub"), ["192.0.2.2"], "settled: public does not write it back");
    assert_eq!(status_ips(&api, "int"), ["203.0.113.9"]);
    public.stop().await;
    internal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_only_routes_are_off_by_default_gated_by_class_and_lose_to_an_ingress() {
    init_tracing();
    let stop = CancellationToken::new();
    let pods = start_pods(1, &stop).await;
    let api = FakeKube::start().await;
    api.apply(&ingress_class());
    api.apply(&slice(&pods));
    let mut svc = service("ClusterIP");
    svc.metadata.annotations = Some(BTreeMap::from([
        ("wsingress.io/expose".to_string(), "true".to_string()),
        ("wsingress.io/host".to_string(), HOST.to_string()),
        ("wsingress.io/ingress-class".to_string(), "wsingress".to_string()),
    ]));
    api.apply(&svc);
    // A Service naming no class at all: never routed in a cluster.
    let mut classless = service("ClusterIP");
    classless.metadata.name = Some("stray".into());
    classless.metadata.annotations = Some(BTreeMap::from([
        ("wsingress.io/expose".to_string(), "true".to_string()),
        ("wsingress.io/host".to_string(), "stray.test".to_string()),
    ]));
    api.apply(&classless);

    // Off by default: not routed, and the Service that names our class is told why.
    let off = start_controller(&api, KubeConfig { defaults: cluster_defaults(CONTROLLER_NAME), ..fast_config() });
    eventually(Duration::from_secs(10), "published", || off.routes.has_published().then_some(())).await;
    assert!(!off.routes_host(HOST) && !off.routes_host("stray.test"));
    eventually(Duration::from_secs(5), "ServiceRouteRefused event", || {
        (!events_with_reason(&api, "ServiceRouteRefused").is_empty()).then_some(())
    })
    .await;
    off.stop().await;

    // On, with the class gate: the Service naming our class is routed, the class-less one is not.
    let mut defaults = cluster_defaults(CONTROLLER_NAME);
    defaults.service_routes.enabled = true;
    let on = start_controller(&api, KubeConfig { defaults, ..fast_config() });
    eventually(Duration::from_secs(10), "Service-only route", || on.routes_host(HOST).then_some(())).await;
    assert!(!on.routes_host("stray.test"));
    let (proxy, _drain) = start_proxy(on.routes.clone()).await;
    let (mut ws, pod) = connect(proxy).await;
    assert_eq!(pod, "pod-2");
    echo(&mut ws, "through a Service-only route").await;
    let stray = events_with_reason(&api, "InvalidAnnotation");
    assert!(
        stray.iter().any(|e| e.note.as_deref().is_some_and(|n| n.contains("wsingress.io/ingress-class"))),
        "the class-less Service is told to name a class: {stray:?}"
    );

    // An Ingress claiming the same host and path wins, though it is newer; the Service is told.
    api.apply(&ingress("chat", "wsingress", &[]));
    eventually(Duration::from_secs(10), "the Ingress owns the host", || {
        (on.routes.load().find(Some(HOST), "/")?.id == format!("{NS}/chat")
            && on.routes.load().find(Some(HOST), "/")?.backend == "chat:ws")
            .then_some(())
    })
    .await;
    let conflict = eventually(Duration::from_secs(5), "RuleConflict on the Service", || {
        events_with_reason(&api, "RuleConflict")
            .into_iter()
            .find(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Service")))
    })
    .await;
    assert!(conflict.note.unwrap_or_default().contains("an Ingress always wins"));
    on.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_nginx_annotations_produce_events_and_security_ones_fail_closed() {
    init_tracing();
    let stop = CancellationToken::new();
    let pods = start_pods(1, &stop).await;
    let api = FakeKube::start().await;
    let auth = "nginx.ingress.kubernetes.io/auth-url";
    let rewrite = "nginx.ingress.kubernetes.io/rewrite-target";
    seed(&api, &pods, &[(auth, "http://auth.example.com/check"), (rewrite, "/")]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "route", || ctl.routes_host(HOST).then_some(())).await;
    let (proxy, _drain) = start_proxy(ctl.routes.clone()).await;

    // Fail closed: the upgrade is refused with 503, nothing reaches the pod.
    let mut req = format!("ws://{proxy}/chat").into_client_request().expect("request");
    req.headers_mut().insert("host", HOST.parse().expect("host"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    let events = eventually(Duration::from_secs(5), "two UnsupportedAnnotation events", || {
        let e = events_with_reason(&api, "UnsupportedAnnotation");
        (e.len() == 2).then_some(e)
    })
    .await;
    let notes: Vec<String> = events.iter().filter_map(|e| e.note.clone()).collect();
    assert!(notes.iter().any(|n| n.contains(auth) && n.contains("answers 503")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains(rewrite) && n.contains("ignored")), "{notes:?}");
    // /routes names the route's unsupported keys and why it refuses.
    let admin = ctl.admin().await;
    let (status, _, body) = common::http_get(admin, "admin", "/routes").await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(body.contains(auth) && body.contains(rewrite) && body.contains("\"refused\""), "{body}");

    // Removing the security annotation opens the route.
    api.apply(&ingress("chat", "wsingress", &[(rewrite, "/")]));
    eventually(Duration::from_secs(5), "route serves", || {
        (ctl.routes.load().find(Some(HOST), "/")?.settings.refused.is_none()).then_some(())
    })
    .await;
    let (mut ws, _) = connect(proxy).await;
    echo(&mut ws, "open now").await;
    ctl.stop().await;

    // With --unsupported-security-annotations=ignore it is served unprotected, and said so.
    api.apply(&ingress("chat", "wsingress", &[(auth, "http://auth.example.com/check")]));
    let defaults = Defaults { unsupported_security: UnsupportedSecurity::Ignore, ..Defaults::default() };
    let ignoring = start_controller(&api, KubeConfig { defaults, ..fast_config() });
    eventually(Duration::from_secs(10), "route", || ignoring.routes_host(HOST).then_some(())).await;
    let (proxy, _drain) = start_proxy(ignoring.routes.clone()).await;
    let (mut ws, _) = connect(proxy).await;
    echo(&mut ws, "unprotected, as asked").await;
    eventually(Duration::from_secs(5), "not-enforced event", || {
        events_with_reason(&api, "UnsupportedAnnotation")
            .iter()
            .any(|e| e.note.as_deref().is_some_and(|n| n.contains("WITHOUT")))
            .then_some(())
    })
    .await;
    ignoring.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_watcher_fails_healthz() {
    init_tracing();
    let api = FakeKube::start().await;
    seed(&api, &["10.1.0.1:8080".parse().expect("addr")], &[]);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "published", || ctl.routes.has_published().then_some(())).await;
    let admin = ctl.admin().await;
    assert_eq!(common::http_get(admin, "admin", "/healthz").await.0, 200);
    let health = ctl.readiness.health().clone();
    let running = health.running();
    for task in ["watch Ingress", "watch Service", "watch EndpointSlice", "watch IngressClass", "events"] {
        assert!(running.iter().any(|t| t == task), "{task} supervised: {running:?}");
    }
    assert!(health.abort("watch EndpointSlice"));
    let killed = Instant::now();
    let body = loop {
        let (status, _, body) = common::http_get(admin, "admin", "/healthz").await;
        if status == 503 {
            break String::from_utf8_lossy(&body).to_string();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "/healthz still {status} 30 s after the watcher died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("watch EndpointSlice: stopped (aborted)"), "{body}");
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_at_start_is_not_ready_then_ready_when_it_answers() {
    init_tracing();
    let api = FakeKube::start().await;
    seed(&api, &["10.1.0.1:8080".parse().expect("addr")], &[]);
    api.go_down();
    let ctl = start_controller(&api, fast_config());
    let admin = ctl.admin().await;
    let down_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < down_until {
        assert!(!ctl.readiness.is_ready());
        assert_eq!(common::http_get(admin, "admin", "/readyz").await.0, 503);
        assert_eq!(common::http_get(admin, "admin", "/healthz").await.0, 200, "retrying is not dead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let errors = ctl.metrics.controller_watch_errors.with_label_values(&["Ingress"]).get();
    assert!(errors >= 2, "list failures counted and retried with backoff: {errors}");
    api.come_back();
    eventually(Duration::from_secs(10), "ready once the API answers", || ctl.readiness.is_ready().then_some(())).await;
    assert_eq!(common::http_get(admin, "admin", "/readyz").await.0, 200);
    assert!(ctl.routes_host(HOST));
    assert!(ctl.metrics.controller_last_sync.with_label_values(&["Ingress"]).get() > 1.7e9);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_lists_are_counted_and_retried_until_allowed() {
    init_tracing();
    let api = FakeKube::start().await;
    seed(&api, &["10.1.0.1:8080".parse().expect("addr")], &[]);
    api.forbid("discovery.k8s.io", "endpointslices", "list");
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "403s counted", || {
        (ctl.metrics.controller_watch_errors.with_label_values(&["EndpointSlice"]).get() >= 2).then_some(())
    })
    .await;
    assert!(!ctl.readiness.is_ready(), "no table without EndpointSlices");
    assert!(api.requests().iter().any(|r| r.status == 403));
    api.clear_fault();
    eventually(Duration::from_secs(10), "ready once allowed", || ctl.readiness.is_ready().then_some(())).await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_before_a_follower_takes_over() {
    init_tracing();
    let api = FakeKube::start().await;
    seed(&api, &["10.1.0.1:8080".parse().expect("addr")], &[]);
    let election = fast_election("replica-a");
    let replica = |id: &str| KubeConfig { election: Some(fast_election(id)), identity: id.into(), ..fast_config() };
    let a = start_controller(&api, replica("replica-a"));
    eventually(Duration::from_secs(10), "a leads", || a.leading().then_some(())).await;
    let b = start_controller(&api, replica("replica-b"));
    eventually(Duration::from_secs(10), "b synced", || b.routes.has_published().then_some(())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.leading() && !b.leading());

    // From now on every renewal by a fails (its API requests to the Lease error out).
    api.set_fault(|r: &support::fake_kube::FaultRequest<'_>| {
        let lease_write = r.method == "PUT" && r.path.contains("/leases/");
        (lease_write && String::from_utf8_lossy(r.body).contains("\"holderIdentity\":\"replica-a\"")).then_some(500)
    });
    let fault = Instant::now();
    let (mut a_down, mut b_up) = (None, None);
    while b_up.is_none() {
        let (la, lb) = (a.leading(), b.leading());
        assert!(!(la && lb), "two leaders at once");
        if !la && a_down.is_none() {
            a_down = Some(fault.elapsed());
        }
        if lb {
            b_up = Some(fault.elapsed());
        }
        assert!(fault.elapsed() < Duration::from_secs(10), "no hand-over");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (a_down, b_up) = (a_down.unwrap_or_default(), b_up.unwrap_or_default());
    eprintln!("leader stepped down after {a_down:?}, follower took over after {b_up:?}");
    let slack = Duration::from_millis(300);
    // The bound: the leader stops within renew_deadline of its last successful renewal,
    // which started before the fault ...
    assert!(a_down <= election.renew_deadline + slack, "stepped down after {a_down:?}");
    // ... and the follower waits for the lease to expire after that renewal.
    assert!(b_up >= election.lease_duration - election.retry_period - slack, "took over after {b_up:?}");
    assert!(b_up <= election.lease_duration + 2 * election.retry_period + slack, "took over after {b_up:?}");
    assert!(b_up > a_down);
    assert_eq!(lease_holder(&api).as_deref(), Some("replica-b"));
    api.clear_fault();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_rate_limited_and_counted_across_restarts() {
    init_tracing();
    let api = FakeKube::start().await;
    seed(
        &api,
        &["10.1.0.1:8080".parse().expect("addr")],
        &[("wsingress.io/idle-timeout", "forever"), ("wsingress.io/ping-interval", "often")],
    );
    // One Event per object, then one per hour.
    let limits =
        EventLimits { per_object_burst: 1, per_object_every: Duration::from_secs(3600), ..EventLimits::default() };
    let ctl = start_controller(&api, KubeConfig { event_limits: limits, ..fast_config() });
    eventually(Duration::from_secs(10), "first event", || {
        (events_with_reason(&api, "InvalidAnnotation").len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(events_with_reason(&api, "InvalidAnnotation").len(), 1, "the second warning is held back");
    ctl.stop().await;

    // A restart (or a new leader) with room to post: the first Event counts a second
    // observation instead of being duplicated; the held-back one is created.
    let ctl = start_controller(&api, fast_config());
    let events = eventually(Duration::from_secs(10), "both events, the first counted twice", || {
        let e = events_with_reason(&api, "InvalidAnnotation");
        (e.len() == 2 && e.iter().any(|e| e.series.as_ref().is_some_and(|s| s.count == 2))).then_some(e)
    })
    .await;
    assert_eq!(events.iter().filter(|e| e.series.is_none()).count(), 1);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_name_services_resolve_at_connect_time_and_unresolvable_ones_get_an_event() {
    init_tracing();
    let stop = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let config = wsingress::echo::EchoConfig { prefix: String::new(), instance: "outside".into() };
    tokio::spawn(wsingress::echo::serve(listener, config, stop.clone()));
    let api = FakeKube::start().await;
    api.apply(&ingress_class());
    let external = |name: &str, target: &str| {
        let mut svc = service("ExternalName");
        svc.metadata.name = Some(name.into());
        if let Some(spec) = svc.spec.as_mut() {
            spec.external_name = Some(target.into());
            if let Some(p) = spec.ports.as_mut().and_then(|p| p.first_mut()) {
                p.port = i32::from(port);
            }
        }
        svc
    };
    api.apply(&external("chat", "localhost"));
    api.apply(&external("nowhere", "no-such-host.invalid"));
    api.apply(&ingress("chat", "wsingress", &[]));
    let mut other = ingress_on("nowhere", "wsingress", "nowhere.test");
    if let Some(b) = other
        .spec
        .as_mut()
        .and_then(|s| s.rules.as_mut())
        .and_then(|r| r.first_mut())
        .and_then(|r| r.http.as_mut())
        .and_then(|h| h.paths.first_mut())
        .and_then(|p| p.backend.service.as_mut())
    {
        b.name = "nowhere".into();
    }
    api.apply(&other);
    let ctl = start_controller(&api, fast_config());
    eventually(Duration::from_secs(10), "route", || ctl.routes_host(HOST).then_some(())).await;
    let (proxy, _drain) = start_proxy(ctl.routes.clone()).await;
    let (mut ws, instance) = connect(proxy).await;
    assert_eq!(instance, "outside", "connected through the name `localhost`");
    echo(&mut ws, "via ExternalName").await;
    let event = eventually(Duration::from_secs(20), "ExternalNameUnresolvable event", || {
        events_with_reason(&api, "ExternalNameUnresolvable").into_iter().next()
    })
    .await;
    assert!(event.note.unwrap_or_default().contains("no-such-host.invalid"));
    assert_eq!(event.regarding.and_then(|r| r.name).as_deref(), Some("nowhere"));
    assert!(events_with_reason(&api, "ExternalNameUnresolvable").len() == 1, "the resolvable one is not reported");
    ctl.stop().await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_list_watches_exactly_those_namespaces() {
    init_tracing();
    let api = FakeKube::start().await;
    api.apply(&ingress_class());
    for ns in ["apps", "web", "other"] {
        let mut svc = service("ClusterIP");
        svc.metadata.namespace = Some(ns.into());
        api.apply(&svc);
        let mut s = slice(&["10.1.0.1:8080".parse().expect("addr")]);
        s.metadata.namespace = Some(ns.into());
        api.apply(&s);
        let mut ing = ingress_on("chat", "wsingress", &format!("{ns}.test"));
        ing.metadata.namespace = Some(ns.into());
        api.apply(&ing);
    }
    let ctl =
        start_controller(&api, KubeConfig { watch_namespaces: vec!["apps".into(), "web".into()], ..fast_config() });
    eventually(Duration::from_secs(10), "published", || ctl.routes.has_published().then_some(())).await;
    assert!(ctl.routes_host("apps.test") && ctl.routes_host("web.test"));
    assert!(!ctl.routes_host("other.test"));
    let lists: BTreeSet<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.access().is_some_and(|(_, res, _)| res == "ingresses"))
        .map(|r| r.path)
        .collect();
    assert_eq!(
        lists,
        BTreeSet::from([
            "/apis/networking.k8s.io/v1/namespaces/apps/ingresses".to_string(),
            "/apis/networking.k8s.io/v1/namespaces/web/ingresses".to_string()
        ]),
        "namespaced lists and watches only"
    );
    ctl.stop().await;
}
