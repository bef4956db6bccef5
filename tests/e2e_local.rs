//! The kind suite's WebSocket checks (tests/e2e/ws-check.js) against `wsingress serve
//! --manifests` and real echo backends on loopback. The cluster half of the suite runs only on
//! a hosted runner (tests/e2e_kind.rs); every mode of its client runs here, in .ci/run: round
//! trip, spread, hold, drain when the backends roll, and the proxy-rollout check, including a
//! rollout that resets tunnels, which the check must refuse.

mod common;
#[path = "peers/tools.rs"]
mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wsingress");
const PREFIX: &str = "Server received from client: ";

/// Ingress + Service + one EndpointSlice per backend, draining removed endpoints after 1 s.
fn manifests(backends: &[SocketAddr]) -> String {
    let mut out = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: echo\n  annotations:\n    \
         wsingress.io/load-balance: round-robin\n    wsingress.io/drain-timeout: 1s\nspec:\n  ingressClassName: wsingress\n  \
         rules:\n    - http:\n        paths:\n          - path: /\n            pathType: Prefix\n            backend:\n              \
         service:\n                name: echo\n                port:\n                  name: ws\n---\napiVersion: v1\nkind: Service\n\
         metadata:\n  name: echo\nspec:\n  ports:\n    - name: ws\n      port: 80\n",
    );
    for (i, b) in backends.iter().enumerate() {
        out.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-{i}-{port}\n  labels:\n    \
             kubernetes.io/service-name: echo\naddressType: IPv4\nports:\n  - name: ws\n    port: {port}\n    protocol: TCP\n\
             endpoints:\n  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n",
            port = b.port(),
            ip = b.ip(),
        ));
    }
    out
}

struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Folder {
    /// `name` in this folder, holding the manifests for `backends`.
    fn routes(&self, name: &str, backends: &[SocketAddr]) -> PathBuf {
        let file = self.0.join(name);
        std::fs::write(&file, manifests(backends)).expect("write manifests");
        file
    }
}

fn folder(tag: &str) -> Folder {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-local-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp folder");
    Folder(dir)
}

/// `node tests/e2e/ws-check.js ARGS`, or `None` (with the reason) without node and `ws`.
async fn ws_check(args: &[&str]) -> Option<Output> {
    if tools::node_with("ws").is_none() {
        tools::skip("ws-check.js: node or the ws package not found (scripts/install-tools.sh node)");
        return None;
    }
    let run = tokio::process::Command::new("node")
        .arg(tools::root().join("tests/e2e/ws-check.js"))
        .args(args)
        .env("NODE_PATH", tools::node_path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    Some(tokio::time::timeout(Duration::from_secs(120), run).await.expect("ws-check.js finishes").expect("run node"))
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The proxy binary on a manifests file.
fn proxy(file: &Path) -> (common::ServeProcess, SocketAddr, SocketAddr) {
    common::spawn_serve_binary(BIN, &["--manifests", file.to_str().expect("utf-8 path")], "info")
}

/// A proxy handed to a rollout script, which stops it by pid: a thread reaps it when it exits
/// (so `kill -0` sees it gone), and dropping this kills it if the script never did (no node,
/// or a failed check), so no test leaves a proxy running.
struct Reaped {
    pid: u32,
    exited: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn reaped(mut process: common::ServeProcess) -> Reaped {
    let mut child = process.0.take().expect("child");
    let pid = child.id();
    let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = exited.clone();
    std::thread::spawn(move || {
        let _ = child.wait();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Reaped { pid, exited }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        // Not reaped yet, so the pid is still this child's (a zombie at worst): safe to signal.
        if !self.exited.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = std::process::Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
        }
    }
}

#[tokio::test]
async fn roundtrip_spread_and_hold_through_a_manifests_proxy() {
    let dir = folder("basic");
    let (a, b) = (common::echo("a", PREFIX).await, common::echo("b", PREFIX).await);
    let file = dir.routes("routes.yaml", &[a.addr, b.addr]);
    let (_proxy, addr, admin) = proxy(&file);
    let url = common::ws_url(addr, "/");

    let Some(out) = ws_check(&["roundtrip", &url, PREFIX]).await else { return };
    assert!(out.status.success(), "{}", text(&out));
    let out = ws_check(&["spread", &url, "8", "2"]).await.expect("node");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reached 2 echo pods"), "{}", text(&out));
    // Wanting more backends than exist fails.
    let out = ws_check(&["spread", &url, "4", "3"]).await.expect("node");
    assert!(!out.status.success(), "{}", text(&out));

    // hold: the connections are open while it runs (the suite reads /metrics then).
    let ready = dir.0.join("held");
    let hold = tokio::spawn({
        let (url, ready) = (url.clone(), ready.to_string_lossy().into_owned());
        async move { ws_check(&["hold", &url, "6", "3", &ready]).await }
    });
    common::wait_until(Duration::from_secs(30), "the held connections", || {
        let ready = ready.clone();
        async move { ready.exists() }
    })
    .await;
    let (_, _, metrics) = common::http_get(admin, "admin", "/metrics").await;
    let active: f64 = String::from_utf8_lossy(&metrics)
        .lines()
        .filter(|l| l.starts_with("wsingress_websocket_connections_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(active >= 6.0, "{active} active while 6 are held");
    let out = hold.await.expect("task").expect("node");
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn drain_sees_1001_when_the_backends_roll() {
    let dir = folder("drain");
    let (a, b) = (common::echo("a", PREFIX).await, common::echo("b", PREFIX).await);
    let (c, d) = (common::echo("c", PREFIX).await, common::echo("d", PREFIX).await);
    let file = dir.routes("routes.yaml", &[a.addr, b.addr]);
    let rolled = dir.routes("rolled.yaml", &[c.addr, d.addr]);
    let (_proxy, addr, _) = proxy(&file);
    let url = common::ws_url(addr, "/");
    // The "rollout": the endpoints change to the new pods c and d.
    let (from, to) = (rolled.to_string_lossy().into_owned(), file.to_string_lossy().into_owned());
    let Some(out) = ws_check(&["drain", &url, "6", "--", "cp", &from, &to]).await else { return };
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("closed with [1001,1001,1001,1001,1001,1001]"), "{}", text(&out));
    assert!(stdout.contains("new connection ok on c") || stdout.contains("new connection ok on d"), "{}", text(&out));
}

/// A proxy "rollout" on loopback: stop the proxy with `signal`, then start a new one on the same
/// address (what a new pod behind the same Service is to a client).
fn rollout_command(dir: &Path, file: &Path, old_pid: u32, addr: SocketAddr, signal: &str) -> Vec<String> {
    let pidfile = dir.join("new.pid");
    let script = format!(
        "kill -{signal} {old_pid}; while kill -0 {old_pid} 2>/dev/null; do sleep 0.05; done; \
         {BIN} serve --manifests {file} --listen {addr} --tls-listen off --admin-listen 127.0.0.1:0 >/dev/null 2>&1 & echo $! > {pid}",
        file = file.display(),
        pid = pidfile.display(),
    );
    vec!["bash".into(), "-c".into(), script]
}

/// Stops the process whose pid the rollout wrote, when dropped.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = std::process::Command::new("kill").args(["-TERM", pid.trim()]).status();
        }
    }
}

/// A proxy on `file`, `count` tunnels through it, and a rollout that stops it with `signal`
/// and starts a new one: ws-check.js's upgrade verdict (`None` without node).
async fn upgrade_run(dir: &Folder, file: &Path, count: &str, signal: &str) -> Option<Output> {
    let (proxy_process, addr, _) = proxy(file);
    let old = reaped(proxy_process);
    let _new = PidFile(dir.0.join("new.pid"));
    let url = common::ws_url(addr, "/");
    let cmd = rollout_command(&dir.0, file, old.pid, addr, signal);
    let mut args = vec!["upgrade", url.as_str(), count, "--"];
    args.extend(cmd.iter().map(String::as_str));
    ws_check(&args).await
}

#[tokio::test]
async fn upgrade_counts_1001s_and_refuses_resets() {
    let dir = folder("upgrade");
    let (a, b) = (common::echo("a", PREFIX).await, common::echo("b", PREFIX).await);
    let file = dir.routes("routes.yaml", &[a.addr, b.addr]);

    // A graceful rollout (SIGTERM): every tunnel gets Close 1001, then a new proxy serves.
    let Some(out) = upgrade_run(&dir, &file, "50", "TERM").await else { return };
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(r#"{"survived":0,"closed1001":50,"reset":0,"other":0}"#), "{}", text(&out));
    assert!(stdout.contains("new tunnel ok after the rollout"), "{}", text(&out));

    // A rollout that kills the proxy: tunnels end without a Close frame, and the check fails.
    let out = upgrade_run(&dir, &file, "20", "KILL").await.expect("node");
    assert!(!out.status.success(), "a killed proxy must fail the check: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither survived nor got 1001"), "{}", text(&out));
}
