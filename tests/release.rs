//! Release files checked by reading and by running what can run here: scripts/version.sh keeps
//! every copy of Cargo.toml's version in step (and fails naming a copy that drifted), the
//! Dockerfile builds what the release promises (cross-compiled multi-arch, pinned bases,
//! stripped, labelled, cached), and the release workflow publishes the image the chart names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program).current_dir(dir).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn every_copy_of_the_version_agrees() {
    let out = run(&root(), "bash", &["scripts/version.sh", "check"]);
    assert!(out.status.success(), "{}", text(&out));
    let version = String::from_utf8(run(&root(), "bash", &["scripts/version.sh", "get"]).stdout).expect("utf-8");
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
    // The release tag must be v<version>.
    let tag = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert!(run(&root(), "bash", &["scripts/version.sh", "check", "--tag", &tag]).status.success());
    let out = run(&root(), "bash", &["scripts/version.sh", "check", "--tag", "v9.9.9"]);
    assert!(!out.status.success() && text(&out).contains("does not match"), "{}", text(&out));
}

/// A git repository holding a copy of every tracked file, for the script to rewrite.
fn scratch_copy(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("version-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let files = run(&root(), "git", &["ls-files", "-z"]).stdout;
    for file in files.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let rel = Path::new(std::str::from_utf8(file).expect("utf-8 path"));
        let (from, to) = (root().join(rel), dir.join(rel));
        if !from.is_file() {
            continue;
        }
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&from, &to).expect("copy");
    }
    for args in [&["init", "-q"][..], &["add", "-A"]] {
        assert!(run(&dir, "git", args).status.success());
    }
    dir
}

#[test]
fn a_drifted_copy_is_named_and_bump_rewrites_every_copy() {
    let dir = scratch_copy("drift");
    let version = env!("CARGO_PKG_VERSION");
    // A manifest left behind at another version (spelled so that this file holds no copy).
    let old = ["0", "0", "9"].join(".");
    let echo = dir.join("manifests/echo.yaml");
    let drifted = std::fs::read_to_string(&echo)
        .expect("echo.yaml")
        .replace(&format!("/wsingress:{version}"), &format!("/wsingress:{old}"));
    std::fs::write(&echo, drifted).expect("write");
    let out = run(&dir, "bash", &["scripts/version.sh", "check"]);
    assert!(!out.status.success(), "a drifted manifest must fail the check");
    assert!(text(&out).contains("manifests/echo.yaml:") && text(&out).contains(&format!(":{old}")), "{}", text(&out));

    // bump rewrites every copy (the drifted one too) and checks the result.
    let out = run(&dir, "bash", &["scripts/version.sh", "bump", "1.2.3-rc.1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(run(&dir, "bash", &["scripts/version.sh", "check", "--tag", "v1.2.3-rc.1"]).status.success());
    let chart = std::fs::read_to_string(dir.join("charts/wsingress/Chart.yaml")).expect("Chart.yaml");
    assert!(chart.contains("\nversion: 1.2.3-rc.1\n") && chart.contains("\nappVersion: \"1.2.3-rc.1\"\n"), "{chart}");
    let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    assert!(cargo.contains("\nversion = \"1.2.3-rc.1\"\n"));
    let lock = std::fs::read_to_string(dir.join("Cargo.lock")).expect("Cargo.lock");
    assert!(lock.contains("name = \"wsingress\"\nversion = \"1.2.3-rc.1\""));
    for file in [
        "manifests/echo.yaml",
        "manifests/sidecar-example.yaml",
        "README.md",
        "docs/kubernetes.md",
        "charts/wsingress/README.md",
        "tests/e2e/values-kind.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect(file);
        for stale in [format!("wsingress:{version}"), format!("wsingress:{old}"), format!("--version {version}")] {
            assert!(!text.contains(&stale), "{file} still says {stale}");
        }
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn the_dockerfile_builds_what_the_release_promises() {
    let dockerfile = read("Dockerfile");
    // Base images pinned by digest, the build stage on the build machine's platform.
    let images: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("ARG ").and_then(|l| l.split_once("_IMAGE=")))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(images.len(), 2, "{images:?}");
    for image in &images {
        let digest =
            image.split_once("@sha256:").map(|(_, d)| d).unwrap_or_else(|| panic!("{image} is not pinned by digest"));
        assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()), "{image}");
    }
    assert!(dockerfile.contains("FROM --platform=$BUILDPLATFORM ${BUILD_IMAGE} AS build"));
    assert!(
        dockerfile
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("# syntax=docker/dockerfile:") && l.contains("@sha256:"))
    );
    // Stripped, cached, labelled, non-root.
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"));
    assert!(dockerfile.contains("--mount=type=cache,target=/usr/local/cargo/registry"));
    assert!(dockerfile.contains("--mount=type=cache,target=/src/target,id=wsingress-target-${TARGETARCH}"));
    for label in ["source", "version", "revision"] {
        assert!(dockerfile.contains(&format!("org.opencontainers.image.{label}=")), "label {label}");
    }
    assert!(dockerfile.contains("USER 65532:65532"));
    // The build context has what the build copies.
    let ignore = read(".dockerignore");
    for needed in ["Cargo.toml", "Cargo.lock", "src", "benches"] {
        assert!(!ignore.lines().any(|l| l.trim() == needed), ".dockerignore drops {needed}");
    }
}

#[test]
fn the_release_publishes_the_image_the_chart_names() {
    let workflow = read(".github/workflows/release.yml");
    let values = read("charts/wsingress/values.yaml");
    // The workflow's image is ghcr.io/<owner>/wsingress; the chart's default owner is wsingress.
    assert!(workflow.contains(r#"echo "image=ghcr.io/$owner/wsingress""#));
    assert!(workflow.contains(r#"echo "charts=ghcr.io/$owner/charts""#));
    assert!(values.contains("\n  repository: ghcr.io/wsingress/wsingress\n"));
    assert!(values.contains("\n  tag: \"\"\n"), "the tag defaults to the chart's appVersion, which version.sh keeps");
    // The packaged chart names exactly the pushed index: repository and digest, checked.
    assert!(workflow.contains(r#"[ "$image" = "$IMAGE@$DIGEST" ]"#));
    for needle in [
        "tags: [\"v*\"]",
        "platforms: linux/amd64,linux/arm64",
        "sbom: true",
        "provenance: mode=max",
        r#"cosign sign --yes "$IMAGE@$DIGEST""#,
        r#"cosign sign --yes "$CHARTS/wsingress@$CHART_DIGEST""#,
        r#"helm push "dist/wsingress-$VERSION.tgz" "oci://$CHARTS""#,
        "gh release create",
        r#"scripts/version.sh check --tag "$GITHUB_REF_NAME""#,
        "id-token: write",
    ] {
        assert!(workflow.contains(needle), "release.yml lacks {needle}");
    }
}
