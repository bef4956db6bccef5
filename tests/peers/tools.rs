//! Third-party peers for tests/peers.rs and tests/browser.rs: finding the tools installed by
//! scripts/install-tools.sh (or skipping with the reason printed), child processes that are
//! killed when dropped, and runs bounded by a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tools_dir() -> PathBuf {
    std::env::var_os("WSINGRESS_TOOLS").map_or_else(|| root().join(".tools"), PathBuf::from)
}

pub fn require_tools() -> bool {
    std::env::var("WSINGRESS_REQUIRE_TOOLS").as_deref() == Ok("1")
}

/// Prints why something is skipped, or panics when WSINGRESS_REQUIRE_TOOLS=1 says the
/// installer should have provided it.
pub fn skip(reason: &str) {
    assert!(
        !require_tools(),
        "{reason} (WSINGRESS_REQUIRE_TOOLS=1: scripts/install-tools.sh should have installed it)"
    );
    println!("SKIP {reason}");
}

/// A tool from its environment variable, else .tools/bin/NAME; `None` if neither runs.
pub fn tool(var: &str, name: &str, version_arg: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os(var).map(PathBuf::from).into_iter().chain([tools_dir().join("bin").join(name)]);
    for candidate in candidates {
        let runs = Command::new(&candidate)
            .arg(version_arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if runs {
            return Some(candidate);
        }
    }
    None
}

/// NODE_PATH with the folders scripts/install-tools.sh fills (node: ws, wscat; playwright).
pub fn node_path() -> String {
    let mut parts = vec![
        tools_dir().join("node/node_modules").display().to_string(),
        tools_dir().join("playwright/node_modules").display().to_string(),
    ];
    if let Ok(existing) = std::env::var("NODE_PATH") {
        parts.push(existing);
    }
    parts.join(":")
}

/// `node` with the `ws` package available; `None` if either is missing.
pub fn node_with(module: &str) -> Option<PathBuf> {
    let ok = Command::new("node")
        .args(["-e", &format!("require({module:?})")])
        .env("NODE_PATH", node_path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from("node"))
}

pub fn node_command(script: &str) -> Command {
    let mut c = Command::new("node");
    c.arg(root().join("tests/peers").join(script)).env("NODE_PATH", node_path());
    c
}

/// A child process killed (and reaped) when dropped; its stdout lines are collected.
pub struct Background {
    pub name: String,
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Background {
    pub fn spawn(name: &str, mut cmd: Command) -> Background {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Background { name: name.to_string(), child, lines }
    }

    /// The first stdout line for which `pick` returns something, polled until `within` passes.
    pub fn wait_line<T>(&self, within: Duration, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find_map(|l| pick(l)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{}: expected output within {within:?}", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} not listening on {addr} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that was free a moment ago (for tools that cannot report the port they bound).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// What a bounded run printed.
#[derive(Debug)]
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Runs `cmd` to completion, killing it after `deadline`. `input` is written to its stdin; the
/// stdin stays open until `close_stdin_when` returns true for the stdout read so far (then it
/// is closed, which is how line-oriented clients such as websocat are told to finish).
pub fn run_bounded(
    mut cmd: Command,
    input: &[u8],
    close_stdin_when: impl Fn(&str) -> bool + Send + 'static,
    deadline: Duration,
) -> Ran {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut stdin = child.stdin.take();
    if let Some(s) = stdin.as_mut() {
        let _ = s.write_all(input);
        let _ = s.flush();
    }
    let stdin = Arc::new(Mutex::new(stdin));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let stdin_for_reader = Arc::clone(&stdin);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut raw = Vec::new();
        loop {
            match out.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    raw.extend_from_slice(&chunk[..n]);
                    text = String::from_utf8_lossy(&raw).into_owned();
                    if close_stdin_when(&text) {
                        stdin_for_reader.lock().unwrap().take();
                    }
                }
            }
        }
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + deadline;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= end {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stdin.lock().unwrap().take();
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ran { success: status.is_some_and(|s| s.success()), stdout, stderr, timed_out }
}
