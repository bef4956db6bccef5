//! The native-sidecar drain order of manifests/sidecar-example.yaml (and the chart's sidecar
//! example, which tests/chart.rs holds to the same shape), played against the real binaries by
//! a small model of the kubelet's termination of a pod with a native sidecar (KEP-753): at the
//! start every preStop hook runs at once (the sidecar's too); when the app's hook is done the
//! app gets SIGTERM; once it has exited the sidecar gets SIGTERM; everything must be over
//! within the grace period. The pod's durations are divided by [`SCALE`] to keep the test short.
//!
//! What a client of the sidecar must see: Close 1001 from wsingress (no reason text, counted as
//! initiator="proxy"), before the app is told to stop; never the app's own close or a reset.
//! The same pod without the sidecar's drain hook shows the failure: the clients' tunnels end
//! only when the app goes, with the app's close.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_wsingress");
/// The pod's seconds become tenths of a second here.
const SCALE: u32 = 10;
const CLIENTS: usize = 5;

fn scaled(seconds: i64) -> Duration {
    Duration::from_secs(u64::try_from(seconds).expect("non-negative")) / SCALE
}

fn pod() -> PodSpec {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/sidecar-example.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/sidecar-example.yaml");
    let deployment = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("YAML"))
        .find(|doc| doc["kind"].as_str() == Some("Deployment"))
        .expect("a Deployment");
    let deployment: Deployment = serde_yaml::from_value(deployment).expect("a Deployment");
    deployment.spec.template.spec.expect("pod spec")
}

/// The sidecar's args without the listeners and log format, which the test sets itself.
fn sidecar_args(sidecar: &Container, app_addr: SocketAddr) -> Vec<String> {
    let mut args: Vec<String> = sidecar.args.clone().unwrap_or_default();
    assert_eq!(args.remove(0), "serve");
    args.retain(|a| {
        !a.starts_with("--listen")
            && !a.starts_with("--tls-listen")
            && !a.starts_with("--admin-listen")
            && !a.starts_with("--log-format")
    });
    for a in &mut args {
        if a.starts_with("--upstream=") {
            *a = format!("--upstream={app_addr}");
        }
        if let Some(d) = a.strip_prefix("--shutdown-timeout=") {
            let d = wsingress::cli::parse_duration(d).expect("duration");
            *a = format!("--shutdown-timeout={}ms", (d / SCALE).as_millis());
        }
    }
    args
}

/// The app: `wsingress echo` with the manifest's args, on a free loopback port.
fn start_app(app: &Container) -> (Child, SocketAddr) {
    let mut args: Vec<String> = app.args.clone().unwrap_or_default();
    assert_eq!(args[0], "echo", "the example's app is the wsingress echo");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    args.retain(|a| !a.starts_with("--listen"));
    args.push(format!("--listen={addr}"));
    let child = Command::new(BIN).args(&args).stdout(Stdio::null()).spawn().expect("start the app");
    (child, addr)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
}

/// Wait for `child` to exit before `deadline` (the grace period's end: else the kubelet kills it).
async fn exit_before(child: &mut Child, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} still running at the end of the grace period");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How one client's tunnel ended, and when.
#[derive(Debug, Clone)]
struct Ending {
    code: Option<u16>,
    reason: String,
    at: Instant,
}

async fn watch(mut ws: common::Ws) -> Ending {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (Some(u16::from(f.code)), f.reason.as_str().to_string()))
                    .unwrap_or((None, String::new()));
                return Ending { code, reason, at: Instant::now() };
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ending { code: None, reason: format!("error: {e}"), at: Instant::now() },
            None => return Ending { code: None, reason: "TCP closed without Close".into(), at: Instant::now() },
        }
    }
}

/// The proxy's count of closes it started with 1001.
async fn proxy_1001s(admin: SocketAddr) -> u64 {
    let (status, _, body) = common::http_get(admin, "admin", "/metrics").await;
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| {
            l.starts_with("wsingress_websocket_closes_total{")
                && l.contains("initiator=\"proxy\"")
                && l.contains("code=\"1001\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Run {
    endings: Vec<Ending>,
    app_sigterm_at: Instant,
    proxy_1001s: u64,
    hook_answer: Option<String>,
}

/// Terminate the example pod as the kubelet would; `with_drain_hook: false` drops the
/// sidecar's preStop hook (the naive layout).
async fn terminate_pod(with_drain_hook: bool) -> Run {
    let pod = pod();
    let sidecar = pod.init_containers.iter().flatten().find(|c| c.name == "wsingress").expect("wsingress sidecar");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "a native sidecar");
    let app = pod.containers.iter().find(|c| c.name == "app").expect("app container");
    let grace = scaled(pod.termination_grace_period_seconds.expect("grace period"));
    let app_pre_stop = scaled(
        app.lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .expect("app preStop sleep")
            .seconds,
    );
    let hook_path = sidecar
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.http_get.as_ref())
        .and_then(|g| g.path.clone())
        .expect("the sidecar's preStop httpGet");
    let after = hook_path.strip_prefix("/drain?after=").expect("a /drain hook");
    let after = wsingress::cli::parse_duration(after).expect("duration") / SCALE;
    let hook_path = format!("/drain?after={}ms", after.as_millis());

    // Start order of a native sidecar: wsingress first, then the app.
    let (mut app_child, app_addr) = start_app(app);
    let args = sidecar_args(sidecar, app_addr);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut proxy, proxy_addr, admin) = common::spawn_serve_binary(BIN, &args, "info");
    let url = common::ws_url(proxy_addr, "/");
    common::wait_until(Duration::from_secs(10), "the app answers through the sidecar", || {
        let url = url.clone();
        async move { tokio_tungstenite::connect_async(&url).await.is_ok() }
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut ws = common::connect(&url).await;
        assert_eq!(common::round_trip(&mut ws, &format!("m{i}")).await, format!("chat: m{i}"));
        clients.push(tokio::spawn(watch(ws)));
    }

    // t0: termination starts; every preStop hook runs at once.
    let t0 = Instant::now();
    let deadline = t0 + grace;
    let hook = with_drain_hook.then(|| tokio::spawn(async move { common::http_get(admin, "admin", &hook_path).await }));
    tokio::time::sleep(app_pre_stop).await;
    let app_sigterm_at = Instant::now();
    sigterm(&app_child);
    let app_status = exit_before(&mut app_child, deadline, "the app").await;
    assert!(app_status.success(), "the app exits cleanly: {app_status}");
    let hook_answer = match hook {
        Some(h) => {
            let (status, _, body) = h.await.expect("hook task");
            assert_eq!(status, 200, "the drain hook answers 200");
            Some(String::from_utf8_lossy(&body).into_owned())
        }
        None => None,
    };
    let proxy_1001s = proxy_1001s(admin).await;
    let child = proxy.0.as_mut().expect("sidecar process");
    sigterm(child);
    let status = exit_before(child, deadline, "the sidecar").await;
    assert!(status.success(), "the sidecar exits cleanly: {status}");
    let mut endings = Vec::new();
    for c in clients {
        endings.push(tokio::time::timeout(Duration::from_secs(5), c).await.expect("every tunnel ended").expect("task"));
    }
    Run { endings, app_sigterm_at, proxy_1001s, hook_answer }
}

#[tokio::test]
async fn sidecar_clients_get_1001_from_wsingress_before_the_app_stops() {
    let run = terminate_pod(true).await;
    for e in &run.endings {
        assert_eq!(e.code, Some(1001), "{e:?}");
        assert_eq!(e.reason, "", "wsingress's own Close 1001 carries no reason; the app's says why: {e:?}");
        assert!(e.at < run.app_sigterm_at, "the tunnel must end before the app is told to stop: {e:?}");
    }
    assert_eq!(run.proxy_1001s, CLIENTS as u64, "wsingress started every close");
    let answer = run.hook_answer.expect("hook answer");
    // Every tunnel closed before --shutdown-timeout (the exact count is the metric above).
    assert!(answer.starts_with("drained: "), "{answer}");
}

#[tokio::test]
async fn without_the_drain_hook_the_app_closes_the_tunnels_itself() {
    let run = terminate_pod(false).await;
    for e in &run.endings {
        assert!(e.at >= run.app_sigterm_at, "nothing ends the tunnel before the app stops: {e:?}");
        assert_eq!(
            (e.code, e.reason.as_str()),
            (Some(1001), "server shutting down"),
            "the app's close, relayed: {e:?}"
        );
    }
    assert_eq!(run.proxy_1001s, 0, "wsingress closed nothing itself");
}
