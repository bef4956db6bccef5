//! Gateway API in cluster mode, against the fake API server (tests/support/fake_kube.rs) over
//! real HTTP, with the real `kube::Client` and reflectors, the real proxy (`RouteSource::Manual`
//! fed by the controller) and real echo backends: discovery with and without the CRDs, traffic
//! through a Gateway and HTTPRoute, the status the leader writes (and only the leader, and only
//! our parent entries), `allowedRoutes`, ReferenceGrant, and the RBAC the requests need.

mod common;
mod support;
mod tls_common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;
use support::fake_kube::FakeKube;
use support::kube_test::{eventually, ingress_class, meta};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wsingress::app::Running;
use wsingress::gateway_api::{Gateway, GatewayClass, HTTPRoute, ReferenceGrant, RouteParentStatus};
use wsingress::source::gateway_watch::GatewayApiConfig;
use wsingress::source::kube::{KubeConfig, KubeError, WatchBackoff};
use wsingress::source::leader::ElectionConfig;
use wsingress::source::rbac::{GATEWAY_ACCESS, access};
use wsingress::source::status::{PublishFrom, StatusConfig};
use wsingress::translate::{Defaults, GATEWAY_CONTROLLER_NAME};

const LIMIT: Duration = Duration::from_secs(15);
const HOST: &str = "chat.gw.test";
/// The line logged once when the CRDs are missing.
const NOT_INSTALLED: &str = "Gateway API CRDs (gateway.networking.k8s.io/v1) are not installed";

// ---------------------------------------------------------------- logs

/// Everything logged in this test binary (one global subscriber), to count lines.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        // Still visible with --nocapture.
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "wsingress=info".into()),
        )
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

/// Log lines containing both `needle` and `marker`.
fn log_lines(needle: &str, marker: &str) -> usize {
    let logs = LOGS.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs).lines().filter(|l| l.contains(needle) && l.contains(marker)).count()
}

// ---------------------------------------------------------------- objects

fn yaml<T: DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("fixture: {e}\n{text}"))
}

fn gateway_class() -> GatewayClass {
    yaml(&format!("metadata: {{name: wsingress}}\nspec: {{controllerName: {GATEWAY_CONTROLLER_NAME}}}"))
}

/// Gateway `infra/NAME` of our class, one HTTP listener on port 80 admitting routes `from`.
fn gateway(name: &str, from: &str) -> Gateway {
    yaml(&format!(
        r#"
metadata: {{name: {name}, namespace: infra}}
spec:
  gatewayClassName: wsingress
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {{namespaces: {{from: {from}}}}}
"#
    ))
}

/// HTTPRoute `NS/NAME` for HOST on Gateway `infra/PARENT`, to Service `chat` port 80 in
/// `backend_ns` (its own namespace when `None`).
fn route(ns: &str, name: &str, parent: &str, host: &str, backend_ns: Option<&str>) -> HTTPRoute {
    let backend_ns = backend_ns.map(|b| format!(", namespace: {b}")).unwrap_or_default();
    yaml(&format!(
        r#"
metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{{name: {parent}, namespace: infra}}]
  hostnames: [{host}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: chat, port: 80{backend_ns}}}]
"#
    ))
}

/// Service `NS/chat` (port 80 → `ws`) and its EndpointSlice with the echo at `pod`.
fn backend(api: &FakeKube, ns: &str, pod: SocketAddr) {
    backend_named(api, ns, "chat", pod);
}

/// Service `NS/NAME` (port 80 → `ws`) and its EndpointSlice with the echo at `pod`.
fn backend_named(api: &FakeKube, ns: &str, name: &str, pod: SocketAddr) {
    let service: Service = yaml(&format!(
        "metadata: {{name: {name}, namespace: {ns}}}\nspec: {{ports: [{{name: ws, port: 80, targetPort: ws}}]}}"
    ));
    api.apply(&service);
    let slice: EndpointSlice = yaml(&format!(
        r#"
metadata:
  name: {name}-abc12
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
endpoints:
- addresses: ["{ip}"]
  conditions: {{ready: true, serving: true, terminating: false}}
ports: [{{name: ws, port: {port}, protocol: TCP}}]
"#,
        ip = pod.ip(),
        port = pod.port()
    ));
    api.apply(&slice);
}

fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut m = meta("", name);
    m.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    Namespace { metadata: m, ..Namespace::default() }
}

/// The usual world: our GatewayClass, Gateway `infra/edge` admitting every namespace, and the
/// namespaces.
fn seed(api: &FakeKube) {
    api.install_gateway_api();
    for ns in ["infra", "apps", "backend", "other"] {
        api.apply(&namespace(ns, &[]));
    }
    api.apply(&gateway_class());
    api.apply(&gateway("edge", "All"));
}

// ---------------------------------------------------------------- controller and proxy

fn fast_config() -> KubeConfig {
    KubeConfig {
        debounce: Duration::from_millis(50),
        backoff: WatchBackoff { initial: Duration::from_millis(50), max: Duration::from_millis(300) },
        gateway_api: GatewayApiConfig { recheck: Duration::from_millis(200), ..GatewayApiConfig::default() },
        ..KubeConfig::new(Defaults { class_fallback: false, ..Defaults::default() })
    }
}

fn with_status(config: KubeConfig, address: &str) -> KubeConfig {
    let status =
        StatusConfig { resync: Duration::from_millis(300), ..StatusConfig::new(PublishFrom::Address(address.into())) };
    KubeConfig { status: Some(status), ..config }
}

fn fast_election(identity: &str) -> ElectionConfig {
    ElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1300),
        retry_period: Duration::from_millis(200),
        ..ElectionConfig::new("infra".into(), "wsingress-leader".into(), identity.into())
    }
}

/// The real proxy (routes published by the controller) and the controller feeding it.
struct Stack {
    proxy: Running,
    shutdown: CancellationToken,
    controller: JoinHandle<Result<(), KubeError>>,
}

async fn start(api: &FakeKube, config: KubeConfig) -> Stack {
    start_with(api, config, &["--tls-listen", "off"]).await
}

/// [`start`] with these proxy flags (`--tls-listen 127.0.0.1:0` unless they say otherwise).
async fn start_with(api: &FakeKube, config: KubeConfig, flags: &[&str]) -> Stack {
    let proxy = common::manual_proxy(flags).await;
    let shutdown = CancellationToken::new();
    let health = proxy.readiness.health().clone();
    let run = wsingress::source::kube::run(api.client(), config, proxy.publisher(), health, shutdown.clone());
    Stack { proxy, shutdown, controller: tokio::spawn(run) }
}

impl Stack {
    fn routes(&self, host: &str) -> bool {
        self.proxy.routes.load().find(Some(host), "/").is_some()
    }

    async fn wait_route(&self, host: &str) {
        eventually(LIMIT, &format!("a route for {host}"), || self.routes(host).then_some(())).await;
    }

    /// A WebSocket echo through the proxy with `Host: host`.
    async fn echo(&self, host: &str, text: &str) -> Result<String, String> {
        let url = common::ws_url(self.proxy.proxy_addr, "/");
        let (mut ws, _) = common::connect_with(&url, &[("host", host)]).await.map_err(|e| e.to_string())?;
        Ok(common::round_trip(&mut ws, text).await)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), self.controller).await;
        let r = r.expect("controller stops on shutdown").expect("controller task");
        assert!(r.is_ok(), "controller returned {r:?}");
        self.proxy.shutdown(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------- status helpers

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn our_parent(api: &FakeKube, ns: &str, name: &str) -> Option<RouteParentStatus> {
    let route: HTTPRoute = api.get(ns, name)?;
    route.status?.parents.into_iter().find(|p| p.controller_name == GATEWAY_CONTROLLER_NAME)
}

/// Our parent entry's `type_` condition as (status, reason, observedGeneration).
fn route_condition(api: &FakeKube, ns: &str, name: &str, type_: &str) -> Option<(String, String, Option<i64>)> {
    let parent = our_parent(api, ns, name)?;
    let c = condition(&parent.conditions, type_)?;
    Some((c.status.clone(), c.reason.clone(), c.observed_generation))
}

fn generation<K: k8s_openapi::Resource + DeserializeOwned + k8s_openapi::Metadata<Ty = kube::api::ObjectMeta>>(
    api: &FakeKube,
    ns: &str,
    name: &str,
) -> Option<i64> {
    api.get::<K>(ns, name)?.metadata().generation
}

/// `PUT .../status` requests the fake answered, by resource.
fn status_writes(api: &FakeKube, resource: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.status == 200
                && r.access().is_some_and(|(_, res, verb)| res == format!("{resource}/status") && verb == "update")
        })
        .count()
}

fn all_status_writes(api: &FakeKube) -> usize {
    ["gatewayclasses", "gateways", "httproutes"].iter().map(|r| status_writes(api, r)).sum()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_one_line_ingress_serves_and_the_watches_start_when_they_appear() {
    init_logs();
    let pod = common::echo("pod-1", "").await;
    let api = FakeKube::start().await;
    api.apply(&ingress_class());
    backend(&api, "apps", pod.addr);
    let ingress: Ingress = yaml(
        r#"
metadata: {name: chat, namespace: apps}
spec:
  ingressClassName: wsingress
  rules:
  - host: ingress.test
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: chat, port: {name: ws}}}}]}
"#,
    );
    api.apply(&ingress);
    let marker = "recheck_s=0.2";
    let stack = start(&api, fast_config()).await;
    stack.wait_route("ingress.test").await;
    assert_eq!(stack.echo("ingress.test", "via ingress").await.as_deref(), Ok("via ingress"));
    // Several rechecks later: still one line, no Gateway API request but discovery.
    let discovery =
        |api: &FakeKube| api.requests().iter().filter(|r| r.path == "/apis/gateway.networking.k8s.io/v1").count();
    eventually(LIMIT, "three looks at discovery", || (discovery(&api) >= 3).then_some(())).await;
    assert_eq!(log_lines(NOT_INSTALLED, marker), 1, "one line for a cluster without the CRDs");
    assert!(
        api.requests().iter().all(|r| r.access().is_none_or(|(g, _, _)| g != "gateway.networking.k8s.io")),
        "nothing of Gateway API is listed before its CRDs exist"
    );

    // The CRDs and a Gateway appear: the watches start without a restart and traffic flows.
    seed(&api);
    api.apply(&route("apps", "chat", "edge", HOST, None));
    stack.wait_route(HOST).await;
    assert_eq!(stack.echo(HOST, "via gateway").await.as_deref(), Ok("via gateway"));
    assert_eq!(stack.echo("ingress.test", "still").await.as_deref(), Ok("still"), "Ingress keeps serving");
    assert_eq!(log_lines(NOT_INSTALLED, marker), 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_route_carry_websocket_traffic_and_get_status_with_observed_generation() {
    init_logs();
    let pod = common::echo("pod-1", "echo: ").await;
    let api = FakeKube::start().await;
    seed(&api);
    backend(&api, "apps", pod.addr);
    api.apply(&route("apps", "chat", "edge", HOST, None));
    let stack = start(&api, with_status(fast_config(), "203.0.113.7")).await;
    stack.wait_route(HOST).await;
    assert_eq!(stack.echo(HOST, "hello").await.as_deref(), Ok("echo: hello"));

    // GatewayClass: Accepted, at its generation.
    let class = eventually(LIMIT, "GatewayClass Accepted", || {
        let class: GatewayClass = api.get("", "wsingress")?;
        let c = condition(&class.status?.conditions, "Accepted")?.clone();
        (c.status == "True").then_some(c)
    })
    .await;
    assert_eq!(class.observed_generation, generation::<GatewayClass>(&api, "", "wsingress"));
    // Gateway: Accepted and Programmed, the listener with one attached route, our address.
    let status = eventually(LIMIT, "Gateway Programmed with one attached route", || {
        let gw: Gateway = api.get("infra", "edge")?;
        let status = gw.status?;
        let programmed = condition(&status.conditions, "Programmed")?.status == "True";
        let attached = status.listeners.iter().find(|l| l.name == "http")?.attached_routes == 1;
        (programmed && attached).then_some(status)
    })
    .await;
    let accepted = condition(&status.conditions, "Accepted").expect("Accepted");
    assert_eq!(accepted.status, "True");
    assert_eq!(accepted.observed_generation, generation::<Gateway>(&api, "infra", "edge"));
    let addresses: Vec<&str> = status.addresses.iter().map(|a| a.value.as_str()).collect();
    assert_eq!(addresses, ["203.0.113.7"], "from --publish-address");
    // HTTPRoute: our parent entry, Accepted and ResolvedRefs, at generation 1.
    let accepted = eventually(LIMIT, "route Accepted", || route_condition(&api, "apps", "chat", "Accepted")).await;
    assert_eq!(accepted, ("True".into(), "Accepted".into(), Some(1)));
    let resolved = route_condition(&api, "apps", "chat", "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!((resolved.0.as_str(), resolved.2), ("True", Some(1)));

    // A spec change (generation 2) is observed again.
    let mut changed = route("apps", "chat", "edge", HOST, None);
    changed.spec.hostnames.push("chat2.gw.test".into());
    api.apply(&changed);
    assert_eq!(generation::<HTTPRoute>(&api, "apps", "chat"), Some(2));
    eventually(LIMIT, "observedGeneration 2", || {
        let c = route_condition(&api, "apps", "chat", "Accepted")?;
        (c.2 == Some(2)).then_some(())
    })
    .await;
    stack.wait_route("chat2.gw.test").await;

    // Settled: passes keep running (resync 300 ms) but nothing is written again.
    let deadline = Instant::now() + LIMIT;
    let mut settled = all_status_writes(&api);
    loop {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = all_status_writes(&api);
        if now == settled {
            break;
        }
        settled = now;
        assert!(Instant::now() < deadline, "status writes never settled");
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(all_status_writes(&api), settled, "an unchanged status is not written again");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_from_a_namespace_the_listener_does_not_allow_is_refused_and_gets_no_traffic() {
    init_logs();
    let pod = common::echo("pod-1", "").await;
    let api = FakeKube::start().await;
    seed(&api);
    // `same`: only routes in `infra` may attach.
    api.apply(&gateway("same", "Same"));
    backend(&api, "apps", pod.addr);
    backend(&api, "infra", pod.addr);
    api.apply(&route("apps", "outsider", "same", "outsider.gw.test", None));
    api.apply(&route("infra", "insider", "same", "insider.gw.test", None));
    let stack = start(&api, fast_config()).await;
    stack.wait_route("insider.gw.test").await;
    assert_eq!(stack.echo("insider.gw.test", "in").await.as_deref(), Ok("in"));
    let refused = eventually(LIMIT, "outsider refused", || route_condition(&api, "apps", "outsider", "Accepted")).await;
    assert_eq!((refused.0.as_str(), refused.1.as_str()), ("False", "NotAllowedByListeners"));
    assert!(!stack.routes("outsider.gw.test"));
    let (status, _, _) = common::http_get(stack.proxy.proxy_addr, "outsider.gw.test", "/").await;
    assert_eq!(status, 404, "no route for a refused HTTPRoute");
    assert!(stack.echo("outsider.gw.test", "x").await.is_err(), "no tunnel either");

    // A Selector listener follows Namespace labels.
    let selector: Gateway = yaml(
        r#"
metadata: {name: labelled, namespace: infra}
spec:
  gatewayClassName: wsingress
  listeners:
  - name: http
    port: 80
    protocol: HTTP
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {gateway-access: "yes"}}}}
"#,
    );
    api.apply(&selector);
    api.apply(&route("other", "labelled", "labelled", "labelled.gw.test", Some("apps")));
    let refused =
        eventually(LIMIT, "unlabelled namespace refused", || route_condition(&api, "other", "labelled", "Accepted"))
            .await;
    assert_eq!(refused.1, "NotAllowedByListeners");
    api.apply(&namespace("other", &[("gateway-access", "yes")]));
    eventually(LIMIT, "labelled namespace accepted", || {
        let c = route_condition(&api, "other", "labelled", "Accepted")?;
        (c.0 == "True").then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_namespace_backend_flows_only_once_a_reference_grant_allows_it() {
    init_logs();
    let pod = common::echo("pod-1", "").await;
    let api = FakeKube::start().await;
    seed(&api);
    backend(&api, "backend", pod.addr);
    api.apply(&route("apps", "chat", "edge", HOST, Some("backend")));
    let stack = start(&api, fast_config()).await;
    let refused = eventually(LIMIT, "RefNotPermitted", || route_condition(&api, "apps", "chat", "ResolvedRefs")).await;
    assert_eq!((refused.0.as_str(), refused.1.as_str()), ("False", "RefNotPermitted"));
    assert!(stack.echo(HOST, "no grant").await.is_err(), "no tunnel to a backend without a grant");

    let grant: ReferenceGrant = yaml(
        r#"
metadata: {name: apps-to-chat, namespace: backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]
  to: [{group: "", kind: Service, name: chat}]
"#,
    );
    api.apply(&grant);
    eventually(LIMIT, "ResolvedRefs True", || {
        let c = route_condition(&api, "apps", "chat", "ResolvedRefs")?;
        (c.0 == "True").then_some(())
    })
    .await;
    // The table follows the status within a debounce: retry the handshake until then.
    let mut last = Err(String::new());
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        last = stack.echo(HOST, "granted").await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.as_deref(), Ok("granted"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_controllers_parent_entry_is_kept() {
    init_logs();
    let pod = common::echo("pod-1", "").await;
    let api = FakeKube::start().await;
    seed(&api);
    backend(&api, "apps", pod.addr);
    let mut shared = route("apps", "chat", "edge", HOST, None);
    shared.spec.parent_refs.push(yaml("{name: envoy, namespace: infra}"));
    // Another implementation already wrote its entry for its own Gateway.
    shared.status = Some(yaml(
        r#"
parents:
- parentRef: {name: envoy, namespace: infra}
  controllerName: example.com/other-gateway
  conditions:
  - {type: Accepted, status: "True", reason: Accepted, message: theirs, lastTransitionTime: "2026-01-01T00:00:00Z", observedGeneration: 1}
"#,
    ));
    api.apply(&shared);
    let stack = start(&api, fast_config()).await;
    eventually(LIMIT, "our entry written", || route_condition(&api, "apps", "chat", "Accepted")).await;
    let route: HTTPRoute = api.get("apps", "chat").expect("route");
    let parents = route.status.expect("status").parents;
    let controllers: Vec<&str> = parents.iter().map(|p| p.controller_name.as_str()).collect();
    assert_eq!(controllers, ["example.com/other-gateway", GATEWAY_CONTROLLER_NAME]);
    let theirs = &parents[0];
    assert_eq!(theirs.parent_ref.name, "envoy");
    assert_eq!(condition(&theirs.conditions, "Accepted").map(|c| c.message.as_str()), Some("theirs"));

    // The other controller rewrites its entry meanwhile: ours stays, theirs is its new one.
    let mut now: HTTPRoute = api.get("apps", "chat").expect("route");
    if let Some(s) = now.status.as_mut() {
        s.parents.retain(|p| p.controller_name != GATEWAY_CONTROLLER_NAME);
        if let Some(c) = s.parents[0].conditions.first_mut() {
            c.message = "theirs, updated".into();
        }
    }
    api.apply(&now);
    eventually(LIMIT, "ours written back next to their update", || {
        let route: HTTPRoute = api.get("apps", "chat")?;
        let parents = route.status?.parents;
        let theirs = parents.iter().find(|p| p.controller_name == "example.com/other-gateway")?;
        let updated = condition(&theirs.conditions, "Accepted")?.message == "theirs, updated";
        let ours = parents.iter().any(|p| p.controller_name == GATEWAY_CONTROLLER_NAME);
        (updated && ours && parents.len() == 2).then_some(())
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_gateway_status() {
    init_logs();
    let pod = common::echo("pod-1", "").await;
    let api = FakeKube::start().await;
    seed(&api);
    backend(&api, "apps", pod.addr);
    api.apply(&route("apps", "chat", "edge", HOST, None));
    // Another replica holds the Lease, renewed just now, for an hour.
    let now = MicroTime(Timestamp::now());
    api.apply(&Lease {
        metadata: meta("infra", "wsingress-leader"),
        spec: Some(LeaseSpec {
            holder_identity: Some("replica-a".into()),
            lease_duration_seconds: Some(3600),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    });
    let config = KubeConfig { election: Some(fast_election("replica-b")), ..fast_config() };
    let stack = start(&api, config).await;
    // A follower serves traffic ...
    stack.wait_route(HOST).await;
    assert_eq!(stack.echo(HOST, "follower").await.as_deref(), Ok("follower"));
    // ... through several election rounds, and writes nothing.
    let lease_reads = |api: &FakeKube| {
        api.requests().iter().filter(|r| r.access().is_some_and(|(_, res, v)| res == "leases" && v == "get")).count()
    };
    let reads = lease_reads(&api);
    eventually(LIMIT, "three more election rounds", || (lease_reads(&api) >= reads + 3).then_some(())).await;
    assert_eq!(all_status_writes(&api), 0, "a follower never writes status");
    assert!(our_parent(&api, "apps", "chat").is_none());

    // The holder goes away: this replica leads and writes.
    assert!(api.delete::<Lease>("infra", "wsingress-leader"));
    eventually(LIMIT, "status written by the new leader", || route_condition(&api, "apps", "chat", "Accepted")).await;
    assert!(status_writes(&api, "gateways") >= 1 && status_writes(&api, "gatewayclasses") >= 1);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_rbac_is_exactly_what_the_controller_sends() {
    init_logs();
    let pod = common::echo("pod-1", "").await;
    let api = FakeKube::start().await;
    seed(&api);
    backend(&api, "backend", pod.addr);
    api.apply(&route("apps", "chat", "edge", HOST, Some("backend")));
    let grant: ReferenceGrant = yaml(
        r#"
metadata: {name: apps-to-chat, namespace: backend}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]
  to: [{group: "", kind: Service}]
"#,
    );
    api.apply(&grant);
    let config = KubeConfig { election: Some(fast_election("replica-a")), ..with_status(fast_config(), "10.0.0.1") };
    let stack = start(&api, config).await;
    stack.wait_route(HOST).await;
    eventually(LIMIT, "every kind's status written", || {
        let all = ["gatewayclasses", "gateways", "httproutes"].iter().all(|r| status_writes(&api, r) > 0);
        all.then_some(())
    })
    .await;
    stack.stop().await;

    let used: BTreeSet<(String, String, String)> =
        api.requests().iter().filter_map(|r| r.access()).map(|(g, r, v)| (g, r, v.to_string())).collect();
    let gateway_part: BTreeSet<(String, String, String)> =
        used.iter().filter(|(g, r, _)| g == "gateway.networking.k8s.io" || r == "namespaces").cloned().collect();
    let declared: BTreeSet<(String, String, String)> = GATEWAY_ACCESS
        .iter()
        .flat_map(|a| a.verbs.iter().map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string())))
        .collect();
    assert_eq!(gateway_part, declared, "rbac::GATEWAY_ACCESS must list exactly the Gateway API requests");
    let allowed: BTreeSet<(String, String, String)> = access(true)
        .flat_map(|a| a.verbs.iter().map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string())))
        .collect();
    let beyond: Vec<_> = used.difference(&allowed).collect();
    assert!(beyond.is_empty(), "requests beyond rbac::access(true): {beyond:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_80_20_spread_1000_connections_within_5_points() {
    init_logs();
    let (a, b) = (common::echo("pod-a", "").await, common::echo("pod-b", "").await);
    let api = FakeKube::start().await;
    seed(&api);
    backend_named(&api, "apps", "chat-a", a.addr);
    backend_named(&api, "apps", "chat-b", b.addr);
    let split: HTTPRoute = yaml(&format!(
        r#"
metadata: {{name: split, namespace: apps}}
spec:
  parentRefs: [{{name: edge, namespace: infra}}]
  hostnames: [{HOST}]
  rules:
  - backendRefs: [{{name: chat-a, port: 80, weight: 80}}, {{name: chat-b, port: 80, weight: 20}}]
"#
    ));
    api.apply(&split);
    let stack = start(&api, fast_config()).await;
    stack.wait_route(HOST).await;
    let url = common::ws_url(stack.proxy.proxy_addr, "/");
    let (mut to_a, total) = (0u32, 1000u32);
    for _ in 0..total {
        let (ws, response) = common::connect_with(&url, &[("host", HOST)]).await.expect("handshake");
        let instance = response.headers().get("x-echo-instance").and_then(|v| v.to_str().ok()).unwrap_or("");
        match instance {
            "pod-a" => to_a += 1,
            "pod-b" => {}
            other => panic!("answered by {other:?}"),
        }
        drop(ws);
    }
    let share = f64::from(to_a) * 100.0 / f64::from(total);
    println!("weights 80/20: {to_a} of {total} connections to chat-a ({share:.1}%)");
    assert!((75.0..=85.0).contains(&share), "chat-a got {share:.1}% of {total}, want 80 ± 5");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_request_bounds_the_handshake_and_never_an_open_tunnel() {
    init_logs();
    let pod = common::echo("pod-1", "").await;
    let api = FakeKube::start().await;
    seed(&api);
    backend(&api, "apps", pod.addr);
    let timed: HTTPRoute = yaml(&format!(
        r#"
metadata: {{name: chat, namespace: apps}}
spec:
  parentRefs: [{{name: edge, namespace: infra}}]
  hostnames: [{HOST}]
  rules:
  - backendRefs: [{{name: chat, port: 80}}]
    timeouts: {{request: 2s}}
"#
    ));
    api.apply(&timed);
    let stack = start(&api, fast_config()).await;
    stack.wait_route(HOST).await;
    let url = common::ws_url(stack.proxy.proxy_addr, "/");
    let (mut ws, _) = common::connect_with(&url, &[("host", HOST)]).await.expect("handshake");
    // Ten seconds of traffic, five times `timeouts.request`: every message comes back.
    let opened = Instant::now();
    let mut n = 0;
    while opened.elapsed() < Duration::from_secs(10) {
        let text = format!("tick {n}");
        assert_eq!(common::round_trip(&mut ws, &text).await, text, "after {:?}", opened.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("tunnel open {:?} with timeouts.request 2s: {n} round trips", opened.elapsed());
    assert!(n >= 30);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_listener_serves_wss_with_the_certificate_ref_secret_a_reference_grant_opens() {
    use futures_util::{SinkExt, StreamExt};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use rustls::pki_types::ServerName;
    use tokio_tungstenite::tungstenite::Message;

    init_logs();
    let pod = common::echo("pod-1", "").await;
    let pki = tls_common::Pki::new("gateway CA");
    let api = FakeKube::start().await;
    seed(&api);
    api.apply(&namespace("certs", &[]));
    backend(&api, "apps", pod.addr);
    // The certificate lives in `certs`; a ReferenceGrant there opens it to Gateways of `infra`.
    let leaf = pki.leaf("secure gateway", &["secure.gw.test"]);
    let data = [("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem)];
    api.apply(&Secret {
        metadata: meta("certs", "secure-tls"),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Secret::default()
    });
    let grant: ReferenceGrant = yaml(
        r#"
metadata: {name: gateways-may-read, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]
  to: [{group: "", kind: Secret, name: secure-tls}]
"#,
    );
    api.apply(&grant);
    let secure: Gateway = yaml(
        r#"
metadata: {name: secure, namespace: infra}
spec:
  gatewayClassName: wsingress
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    hostname: secure.gw.test
    tls: {certificateRefs: [{name: secure-tls, namespace: certs}]}
    allowedRoutes: {namespaces: {from: All}}
"#,
    );
    api.apply(&secure);
    api.apply(&route("apps", "secure", "secure", "secure.gw.test", None));
    let stack = start_with(&api, fast_config(), &[]).await;
    stack.wait_route("secure.gw.test").await;
    let tls_addr = stack.proxy.tls_addr.expect("a TLS listener");
    let resolved = eventually(LIMIT, "the HTTPS listener ResolvedRefs", || {
        let gw: Gateway = api.get("infra", "secure")?;
        let listener = gw.status?.listeners.into_iter().find(|l| l.name == "https")?;
        let c = condition(&listener.conditions, "ResolvedRefs")?.clone();
        (c.status == "True").then_some(c)
    })
    .await;
    assert_eq!(resolved.reason, "ResolvedRefs");

    // A wss client trusting only the test CA: the handshake verifies the Secret's certificate
    // for the SNI name, then the tunnel echoes. Retried until the certificate table follows.
    let connector = tokio_rustls::TlsConnector::from(pki.client(&["http/1.1"], &[]));
    let deadline = Instant::now() + LIMIT;
    let tls = loop {
        let tcp = tokio::net::TcpStream::connect(tls_addr).await.expect("connect");
        let name = ServerName::try_from("secure.gw.test".to_string()).expect("name");
        match connector.connect(name, tcp).await {
            Ok(tls) => break tls,
            Err(e) => {
                assert!(Instant::now() < deadline, "no verified TLS handshake for secure.gw.test: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (mut ws, response) =
        tokio_tungstenite::client_async("wss://secure.gw.test/", tls).await.expect("wss upgrade through the Gateway");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("over wss")).await.expect("send");
    let reply = tokio::time::timeout(LIMIT, ws.next()).await.expect("echo in time").expect("open").expect("message");
    assert_eq!(reply, Message::text("over wss"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_and_an_httproute_for_the_same_host_share_one_table_and_the_younger_gets_the_event() {
    init_logs();
    let (older, younger) = (common::echo("ingress-pod", "ingress: ").await, common::echo("route-pod", "route: ").await);
    let api = FakeKube::start().await;
    seed(&api);
    api.apply(&ingress_class());
    backend_named(&api, "apps", "chat", older.addr);
    backend_named(&api, "apps", "chat-b", younger.addr);
    // The Ingress is created first (the older), then an HTTPRoute for the same host and path.
    let ingress: Ingress = yaml(&format!(
        r#"
metadata: {{name: chat, namespace: apps}}
spec:
  ingressClassName: wsingress
  rules:
  - host: {HOST}
    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: chat, port: {{name: ws}}}}}}}}]}}
"#
    ));
    api.apply(&ingress);
    let mut younger_route = route("apps", "younger", "edge", HOST, None);
    younger_route.spec.rules[0].backend_refs[0].name = "chat-b".into();
    api.apply(&younger_route);
    let stack = start(&api, fast_config()).await;
    stack.wait_route(HOST).await;
    // One table: the older Ingress serves the host; the HTTPRoute is told why it does not.
    assert_eq!(stack.echo(HOST, "who").await.as_deref(), Ok("ingress: who"));
    let event = eventually(LIMIT, "a RuleConflict Event on the HTTPRoute", || {
        support::kube_test::events_with_reason(&api, "RuleConflict")
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("HTTPRoute"))
    })
    .await;
    let regarding = event.regarding.expect("regarding");
    assert_eq!(regarding.name.as_deref(), Some("younger"));
    let uid = api.get::<HTTPRoute>("apps", "younger").and_then(|r| r.metadata.uid);
    assert_eq!(regarding.uid, uid, "the Event names the cached HTTPRoute itself (uid)");
    stack.stop().await;
}
