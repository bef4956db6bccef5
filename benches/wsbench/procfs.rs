//! Reads a process's CPU time and resident memory (VmRSS, /proc/PID/status), summed over the proxy
//! processes named with --proxy-pid. CPU time comes from the scheduler's per-thread run time
//! (/proc/PID/task/TID/schedstat, nanoseconds) when no thread exited between two samples, else from
//! utime+stime in /proc/PID/stat (whole process, 10 ms ticks).

use serde_json::{Value, json};

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every architecture it exposes to
/// user space (sysconf(_SC_CLK_TCK)).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: unexpected format")]
    Format { path: String },
}

/// CPU seconds (user+system, all threads, including exited ones) of one process.
pub fn cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let text = read(&path)?;
    // The command name (field 2) may contain spaces and parentheses: fields after the last ')'.
    let rest = text.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| ProcError::Format { path: path.clone() })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let tick = |i: usize| -> Result<u64, ProcError> {
        fields.get(i).and_then(|f| f.parse().ok()).ok_or_else(|| ProcError::Format { path: path.clone() })
    };
    Ok((tick(11)? + tick(12)?) as f64 / TICKS_PER_SECOND)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or(ProcError::Format { path })
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read { path: path.to_owned(), source })
}

/// Run time in nanoseconds of every thread of a process, by thread id; `None` when the kernel has
/// no schedstat (CONFIG_SCHED_INFO off).
pub fn thread_runtimes(pid: u32) -> Option<Vec<(u32, u64)>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        // A thread may exit between listing and reading: skip it (caught later as a missing tid).
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let ns = text.split_whitespace().next()?.parse().ok()?;
        out.push((tid, ns));
    }
    out.sort_unstable();
    Some(out)
}

/// CPU and memory of the watched processes at one instant.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub cpu_s: f64,
    pub rss_kib: u64,
    /// (pid, tid, run time ns) for every thread, when schedstat is available for all.
    pub threads: Option<Vec<(u32, u32, u64)>>,
}

pub fn sample(pids: &[u32]) -> Result<Sample, ProcError> {
    let mut s = Sample { threads: Some(Vec::new()), ..Sample::default() };
    for &pid in pids {
        s.cpu_s += cpu_seconds(pid)?;
        s.rss_kib += rss_kib(pid)?;
        match (thread_runtimes(pid), s.threads.as_mut()) {
            (Some(t), Some(all)) => all.extend(t.into_iter().map(|(tid, ns)| (pid, tid, ns))),
            _ => s.threads = None,
        }
    }
    Ok(s)
}

/// CPU seconds between two samples, and where the figure came from.
pub fn cpu_between(before: &Sample, after: &Sample) -> (f64, &'static str) {
    if let (Some(b), Some(a)) = (&before.threads, &after.threads) {
        // Every thread seen before must still be there, or its last run time would be lost.
        let kept = b.iter().all(|(pid, tid, _)| a.iter().any(|(p, t, _)| p == pid && t == tid));
        if kept {
            let sum = |v: &[(u32, u32, u64)]| v.iter().map(|&(_, _, ns)| ns).sum::<u64>();
            return (sum(a).saturating_sub(sum(b)) as f64 / 1e9, "schedstat");
        }
    }
    ((after.cpu_s - before.cpu_s).max(0.0), "stat")
}

/// The proxy's share of a run: CPU used between the two samples, per operation.
pub fn report(pids: &[u32], before: &Sample, after: &Sample, ops: u64) -> Value {
    if pids.is_empty() {
        return Value::Null;
    }
    let (cpu, source) = cpu_between(before, after);
    json!({
        "pids": pids,
        "cpu_s": (cpu * 1e4).round() / 1e4,
        "cpu_source": source,
        "cpu_us_per_op": if ops > 0 { Value::from(crate::stats::round2(cpu * 1e6 / ops as f64)) } else { Value::Null },
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(rss_kib(me).unwrap() > 0);
    }

    #[test]
    fn cpu_delta_counts_a_busy_loop() {
        let me = std::process::id();
        let before = sample(&[me]).unwrap();
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let after = sample(&[me]).unwrap();
        // Other test threads may exit meanwhile: then the figure comes from /proc/PID/stat.
        let (cpu, source) = cpu_between(&before, &after);
        assert!((0.01..2.0).contains(&cpu), "{cpu} s over a 200 ms busy loop ({source})");
    }
}
