//! A real browser through the proxy: headless Chromium (Debian's package, driven by
//! playwright-core) loads `wsingress echo`'s page through wsingress; the page's own WebSocket
//! (the browser's handshake, permessage-deflate offer and framing) crosses the proxy, and the
//! test checks the echoes on the page, the offer the backend saw, and a deflate session with a
//! Node `ws` backend that accepts it. Saves a screenshot (docs/browser.png is one).
//!
//! Over TLS: Chromium loads the same page from `https://chat.example.com:PORT/` through the
//! proxy's TLS listener and echoes over `wss://`, trusting the test CA through an NSS database
//! (`certutil`, in a fresh HOME), never `--ignore-certificate-errors`; a server signed by another
//! CA must fail with a certificate error in the same browser first.
//!
//! Skips with the reason printed when Chromium, playwright-core or certutil is missing, unless
//! WSINGRESS_REQUIRE_TOOLS=1 (scripts/install-tools.sh chromium playwright nss provides them).

mod common;
mod tls_common;
#[path = "peers/tools.rs"]
mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use tools::*;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("WSINGRESS_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    skip(&format!(
        "browser test: no Chromium at {} (scripts/install-tools.sh chromium: apt-get install chromium; or set WSINGRESS_CHROMIUM)",
        path.display()
    ));
    None
}

/// Where the screenshot goes: WSINGRESS_BROWSER_SCREENSHOT (e.g. docs/browser.png to refresh the
/// README's picture), else the test's scratch folder under target/.
fn screenshot_path() -> PathBuf {
    match std::env::var_os("WSINGRESS_BROWSER_SCREENSHOT") {
        Some(p) if PathBuf::from(&p).is_absolute() => PathBuf::from(p),
        Some(p) => root().join(p),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser.png"),
    }
}

/// Runs browser.js (bounded to a minute) and parses the one JSON line it prints.
async fn run_browser_js(cmd: std::process::Command) -> (Ran, serde_json::Value) {
    let ran =
        tokio::task::spawn_blocking(move || run_bounded(cmd, b"", |_| false, Duration::from_secs(60))).await.unwrap();
    let line = ran.stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!("browser.js printed no result (timed out: {}):\n{}\n{}", ran.timed_out, ran.stdout, ran.stderr)
    });
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    (ran, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_the_echo_page_through_the_proxy_and_offers_permessage_deflate() {
    let Some(chromium) = chromium() else { return };
    if node_with("playwright-core").is_none() {
        skip("browser test: playwright-core not found under .tools/playwright (scripts/install-tools.sh playwright)");
        return;
    }
    if node_with("ws").is_none() {
        skip("browser test: Node ws not found (scripts/install-tools.sh node)");
        return;
    }
    let started = Instant::now();

    // The page and its WebSocket: wsingress echo behind the proxy.
    let e = echo("browser-demo", "").await;
    let p = proxy(&[e.addr], &[]).await;
    // A backend that accepts permessage-deflate, behind a second proxy.
    let (node_echo, node_addr) = tokio::task::spawn_blocking(|| {
        let mut cmd = node_command("echo-server.js");
        cmd.arg("--deflate");
        let bg = Background::spawn("node echo-server.js", cmd);
        let port: u16 = bg.wait_line(Duration::from_secs(10), |l| {
            serde_json::from_str::<serde_json::Value>(l).ok()?.get("listening")?.as_u64().map(|p| p as u16)
        });
        (bg, SocketAddr::from(([127, 0, 0, 1], port)))
    })
    .await
    .unwrap();
    let p2 = proxy(&[node_addr], &[]).await;

    let shot = screenshot_path();
    if let Some(dir) = shot.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _ = std::fs::remove_file(&shot);
    let mut cmd = node_command("browser.js");
    cmd.args(["--page", &format!("http://{}/", p.proxy_addr)])
        .args(["--deflate-ws", &format!("ws://{}/ws", p2.proxy_addr)])
        .arg("--screenshot")
        .arg(&shot)
        .arg("--chromium")
        .arg(&chromium);
    let (ran, v) = run_browser_js(cmd).await;

    // The page saw every echo.
    assert_eq!(v["status"], "done: 3/3 echoes", "{v}");
    let log: Vec<&str> = v["log"].as_array().unwrap().iter().filter_map(|x| x.as_str()).collect();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(&log[..2], ["hello", "wsingress"]);
    assert!(log[2].starts_with("wsingress-echo-") && log[2].ends_with("(1024 chars)"), "{}", log[2]);

    // The browser's own handshake crossed the proxy: the backend saw Chromium's deflate offer
    // and the proxy's forwarding headers; the echo declined deflate and the browser knows it.
    let seen = &v["backendView"]["info"]["headers"];
    let offer = seen["sec-websocket-extensions"].as_str().unwrap_or_default();
    assert!(offer.contains("permessage-deflate"), "backend saw no deflate offer: {seen}");
    assert!(seen["user-agent"].as_str().unwrap_or_default().contains("HeadlessChrome"), "{seen}");
    assert_eq!(seen["origin"].as_str(), Some(format!("http://{}", p.proxy_addr).as_str()), "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(v["backendView"]["extensions"], "", "{v}");

    // With a backend that accepts it, deflate is negotiated end to end and messages survive it.
    let deflate = &v["deflate"];
    assert!(deflate["extensions"].as_str().unwrap_or_default().starts_with("permessage-deflate"), "{deflate}");
    assert_eq!(deflate["steps"].as_array().map(Vec::len), Some(4), "{deflate}");
    assert_eq!((deflate["close"].as_u64(), deflate["wasClean"].as_bool()), (Some(1000), Some(true)), "{deflate}");
    let handshake = node_echo.wait_line(Duration::from_secs(5), |l| {
        serde_json::from_str::<serde_json::Value>(l).ok()?.get("handshake").cloned()
    });
    assert!(handshake["offered"].as_str().unwrap_or_default().contains("permessage-deflate"), "{handshake}");
    assert_eq!(handshake["extensions"], deflate["extensions"], "{handshake}");

    // The screenshot exists and is a PNG.
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 5_000, "not a PNG: {} bytes", png.len());
    assert!(ran.success, "browser.js failed: {}", ran.stderr);
    println!("browser test: {:.1} s; screenshot {}", started.elapsed().as_secs_f64(), shot.display());
}

/// `certutil` (Debian's libnss3-tools), or the reason it is skipped.
fn certutil() -> Option<PathBuf> {
    let path = std::env::var_os("WSINGRESS_CERTUTIL").map_or_else(|| PathBuf::from("/usr/bin/certutil"), PathBuf::from);
    if path.exists() {
        return Some(path);
    }
    skip(&format!(
        "browser https test: no certutil at {} (scripts/install-tools.sh nss: apt-get install libnss3-tools; or set WSINGRESS_CERTUTIL)",
        path.display()
    ));
    None
}

/// Runs certutil with `args` and demands success.
fn run_certutil(certutil: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new(certutil).args(args).output().expect("run certutil");
    assert!(
        out.status.success(),
        "certutil {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_trusts_the_test_ca_loads_the_page_over_https_and_echoes_over_wss() {
    let Some(chromium) = chromium() else { return };
    if node_with("playwright-core").is_none() {
        skip(
            "browser https test: playwright-core not found under .tools/playwright (scripts/install-tools.sh playwright)",
        );
        return;
    }
    let Some(certutil) = certutil() else { return };
    let started = Instant::now();
    const HOST: &str = "chat.example.com";

    // The site: a certificate for HOST from the test CA, served by the proxy's TLS listener.
    let scratch = tls_common::Scratch::new("browser-https");
    let pki = tls_common::Pki::new("browser CA");
    let leaf = pki.leaf("chat", &[HOST]);
    let write = |name: &str, text: &str| {
        let p = scratch.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (crt, key, ca) =
        (write("tls.crt", &leaf.cert_pem), write("tls.key", &leaf.key_pem), write("ca.pem", &pki.ca_pem));
    let e = echo("browser-tls", "").await;
    let p = proxy(&[e.addr], &["--tls-cert", &crt, "--tls-key", &key]).await;
    let tls = p.tls_addr.expect("the TLS listener");
    // The control: the same name, a certificate from a CA the browser does not trust.
    let stranger = tls_common::Pki::new("stranger CA").leaf("chat", &[HOST]);
    let (crt2, key2) = (write("other.crt", &stranger.cert_pem), write("other.key", &stranger.key_pem));
    let other = proxy(&[e.addr], &["--tls-cert", &crt2, "--tls-key", &key2]).await;

    // A fresh HOME whose NSS database trusts the test CA (what `certutil -A` does for a user).
    let home = scratch.0.join("home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    run_certutil(&certutil, &["-N", "-d", &db, "--empty-password"]);
    run_certutil(&certutil, &["-A", "-d", &db, "-n", "wsingress test CA", "-t", "C,,", "-i", &ca]);

    let page_url = format!("https://{HOST}:{}/", tls.port());
    let untrusted_url = format!("https://{HOST}:{}/", other.tls_addr.expect("the TLS listener").port());
    let mut cmd = node_command("browser.js");
    cmd.args(["--page", &page_url, "--untrusted", &untrusted_url, "--resolve", HOST])
        .arg("--home")
        .arg(&home)
        .arg("--chromium")
        .arg(&chromium);
    let (ran, v) = run_browser_js(cmd).await;

    // Trust came from the database: the other CA's server is refused by the same browser.
    let refused = v["untrusted"].as_str().unwrap_or_default();
    assert!(refused.contains("ERR_CERT_AUTHORITY_INVALID"), "the untrusted server was not refused: {v}");
    // The page came over https and echoed over wss through the proxy.
    assert_eq!(v["pageUrl"], page_url, "{v}");
    assert_eq!(v["status"], "done: 3/3 echoes", "{v}");
    let seen = &v["backendView"]["info"]["headers"];
    assert_eq!(seen["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(seen["origin"].as_str(), Some(format!("https://{HOST}:{}", tls.port()).as_str()), "{seen}");
    assert!(seen["user-agent"].as_str().unwrap_or_default().contains("HeadlessChrome"), "{seen}");
    assert!(ran.success, "browser.js failed: {}", ran.stderr);
    // The page, its WebSocket and the __headers__ socket were TLS handshakes on this listener.
    let ok = metric(&p.metrics, "wsingress_tls_handshakes_total", &[("result", "ok")]);
    assert!(ok >= 2.0, "TLS handshakes: {ok}");
    assert!(metric(&p.metrics, "wsingress_websocket_upgrades_total", &[("result", "ok")]) >= 2.0);
    println!("browser https test: {:.1} s", started.elapsed().as_secs_f64());
}
