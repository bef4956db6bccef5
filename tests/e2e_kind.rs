//! The kind end-to-end suites: tests/e2e/run.sh (a real cluster, the real image, the chart and
//! manifests/echo.yaml, checked from the host) and tests/e2e/gateway-conformance.sh (the upstream
//! Gateway API conformance suite against wsingress). They need Docker and kind, which the
//! development machines do not have, so a plain `cargo test` reports them as ignored, with the
//! reason (never as passed); .github/workflows/e2e.yml runs them on hosted runners with
//! `cargo test --test e2e_kind -- --ignored`. Their WebSocket client side (tests/e2e/ws-check.js)
//! runs everywhere, in tests/e2e_local.rs; the scripts' syntax and the workflow's shape are
//! checked here on every run.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn runs(tool: &str, arg: &str) -> bool {
    Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
#[ignore = "needs Docker and kind (a hosted runner: .github/workflows/e2e.yml); run with --ignored"]
fn kind_end_to_end() {
    // Asked to run without them, fail and say why: a suite that did not run never passes.
    assert!(runs("docker", "info"), "the kind suite needs a running Docker engine (`docker info` failed)");
    assert!(runs("kind", "version"), "the kind suite needs kind on PATH (go install sigs.k8s.io/kind@v0.33.0)");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("tests/e2e/run.sh"))
        .env("WSINGRESS_BIN", env!("CARGO_BIN_EXE_wsingress"))
        .current_dir(&root)
        .status()
        .expect("run tests/e2e/run.sh");
    assert!(status.success(), "tests/e2e/run.sh failed: {status}");
}

#[test]
#[ignore = "needs Docker, kind, Go and internet access (a hosted runner: .github/workflows/e2e.yml, job gateway-conformance); run with --ignored"]
fn gateway_conformance() {
    assert!(runs("docker", "info"), "the conformance suite needs a running Docker engine (`docker info` failed)");
    assert!(runs("kind", "version"), "the conformance suite needs kind on PATH (go install sigs.k8s.io/kind@v0.33.0)");
    assert!(runs("go", "version"), "the conformance suite is Go: it needs go on PATH");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("tests/e2e/gateway-conformance.sh"))
        .current_dir(&root)
        .status()
        .expect("run tests/e2e/gateway-conformance.sh");
    assert!(status.success(), "tests/e2e/gateway-conformance.sh failed: {status}");
}

/// What runs here of the kind suites: their shell parses (`bash -n`), and the workflow runs
/// both, uploading the conformance report whatever the outcome.
#[test]
fn the_kind_scripts_parse_and_the_workflow_runs_and_publishes_them() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for script in ["tests/e2e/run.sh", "tests/e2e/gateway-conformance.sh", "tests/e2e/lib.sh"] {
        let out = Command::new("bash").arg("-n").arg(root.join(script)).output().expect("run bash -n");
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(root.join(".github/workflows/e2e.yml")).expect("e2e.yml");
    let workflow: serde_yaml::Value = serde_yaml::from_str(&text).expect("e2e.yml is YAML");
    let steps = |job: &str| -> Vec<serde_yaml::Value> {
        workflow["jobs"][job]["steps"].as_sequence().unwrap_or_else(|| panic!("job {job} has steps")).clone()
    };
    let runs_cmd = |steps: &[serde_yaml::Value], needle: &str| {
        steps.iter().any(|s| s["run"].as_str().is_some_and(|r| r.contains(needle)))
    };
    assert!(runs_cmd(&steps("kind"), "cargo test --test e2e_kind -- --ignored"));
    let conformance = steps("gateway-conformance");
    assert!(runs_cmd(&conformance, "cargo test --test e2e_kind gateway_conformance -- --ignored"));
    let upload = conformance
        .iter()
        .find(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("actions/upload-artifact@")))
        .expect("the conformance job uploads its report");
    assert_eq!(upload["if"].as_str(), Some("always()"), "the report is uploaded when the suite fails too");
    assert_eq!(upload["with"]["path"].as_str(), Some("target/gateway-conformance/"));
    let script = std::fs::read_to_string(root.join("tests/e2e/gateway-conformance.sh")).expect("script");
    for claimed in ["HTTPRoute", "HTTPRouteBackendProtocolWebSocket", "--report-output=\"$REPORT_DIR/report.yaml\""] {
        assert!(script.contains(claimed), "gateway-conformance.sh lacks {claimed}");
    }
}

/// The cleanup both kind scripts share (tests/e2e/lib.sh), run here with a stand-in `kind`: a
/// script that fails with a cluster up prints its diagnostics, deletes its cluster and its work
/// folder, and still exits with its failure; `KEEP_CLUSTER=1` keeps both.
#[test]
fn a_failing_kind_script_reports_and_cleans_up() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let bin = std::env::temp_dir().join(format!("wsingress-e2e-lib-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&bin).expect("temp dir");
    let log = bin.join("kind.log");
    std::fs::write(bin.join("kind"), format!("#!/bin/sh\necho \"kind $*\" >> '{}'\n", log.display()))
        .expect("fake kind");
    Command::new("chmod").arg("+x").arg(bin.join("kind")).status().expect("chmod");
    let script = r#"
        set -euo pipefail
        CLUSTER=lib-test IMAGE=unused VERSION=0 E2E_NAME=lib-test
        diagnostics() { echo "diagnostics ran"; }
        . "$LIB"
        echo "$WORK" > "$BIN/work"
        kind_cluster --config some.yaml
        touch "$KUBECONFIG"
        ( trap 'kill "$s"; echo stopped > "$BIN/stopped"; exit 0' TERM; sleep 30 & s=$!; touch "$BIN/ready"; wait ) \
            >/dev/null 2>&1 &
        PIDS+=($!)
        until [ -e "$BIN/ready" ]; do sleep 0.01; done
        die "boom"
    "#;
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let run = |keep: &str| {
        std::fs::write(&log, "").expect("clear log");
        let _ = std::fs::remove_file(bin.join("stopped"));
        let _ = std::fs::remove_file(bin.join("ready"));
        Command::new("bash")
            .args(["-c", script])
            .env("LIB", root.join("tests/e2e/lib.sh"))
            .env("BIN", &bin)
            .env("PATH", &path)
            .env("KEEP_CLUSTER", keep)
            .output()
            .expect("run bash")
    };

    let out = run("0");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "the failure is the exit status: {stdout} {stderr}");
    assert!(stderr.contains("lib-test: FAIL: boom"), "{stderr}");
    assert!(stdout.contains("diagnostics ran"), "{stdout}");
    let calls = std::fs::read_to_string(&log).expect("kind log");
    assert!(calls.contains("kind create cluster --name lib-test --config some.yaml --kubeconfig"), "{calls}");
    assert!(calls.trim_end().ends_with("kind delete cluster --name lib-test"), "deleted last: {calls}");
    let work = std::fs::read_to_string(bin.join("work")).expect("work path");
    assert!(!PathBuf::from(work.trim()).exists(), "the work folder is removed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !bin.join("stopped").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(bin.join("stopped").exists(), "background helpers are stopped");

    let out = run("1");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("keeping cluster lib-test"));
    let calls = std::fs::read_to_string(&log).expect("kind log");
    assert!(!calls.trim_end().ends_with("kind delete cluster --name lib-test"), "kept: {calls}");
    let work = std::fs::read_to_string(bin.join("work")).expect("work path");
    assert!(PathBuf::from(work.trim()).exists(), "the kept cluster's kubeconfig stays");
    let _ = std::fs::remove_dir_all(work.trim());
    let _ = std::fs::remove_dir_all(&bin);
}
