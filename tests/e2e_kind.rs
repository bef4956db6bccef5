//! The kind end-to-end suite (tests/e2e/run.sh): a real cluster, the real image, the chart and
//! manifests/echo.yaml, checked from the host. Runs only with `WSINGRESS_E2E=kind` (Docker and
//! kind needed; .github/workflows/e2e.yml runs it on a hosted runner); otherwise it says why it
//! skips and passes.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn kind_end_to_end() {
    if std::env::var("WSINGRESS_E2E").as_deref() != Ok("kind") {
        println!("skipped: WSINGRESS_E2E is not \"kind\" (needs Docker + kind; runs in .github/workflows/e2e.yml)");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("tests/e2e/run.sh"))
        .current_dir(&root)
        .status()
        .expect("run tests/e2e/run.sh");
    assert!(status.success(), "tests/e2e/run.sh failed: {status}");
}
