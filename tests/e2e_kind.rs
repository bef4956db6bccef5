//! The kind end-to-end suite (tests/e2e/run.sh): a real cluster, the real image, the chart and
//! manifests/echo.yaml, checked from the host. It needs Docker and kind, which the development
//! machines do not have, so a plain `cargo test` reports it as ignored (never as passed);
//! .github/workflows/e2e.yml runs it on a hosted runner with `cargo test --test e2e_kind --
//! --ignored`. Its WebSocket client side (tests/e2e/ws-check.js) runs everywhere, in
//! tests/e2e_local.rs.

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
