//! Reads a process's CPU time (user+system, /proc/PID/stat) and resident memory (VmRSS,
//! /proc/PID/status), summed over the proxy processes named with --proxy-pid.

use serde_json::{Value, json};

/// Linux reports utime/stime in USER_HZ ticks, which is 100 on every architecture it exposes to
/// user space (sysconf(_SC_CLK_TCK)).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unexpected format")]
    Format { path: String },
}

/// CPU seconds (user+system, all threads, including exited ones) of one process.
pub fn cpu_seconds(pid: u32) -> Result<f64, ProcError> {
    let path = format!("/proc/{pid}/stat");
    let text = read(&path)?;
    // The command name (field 2) may contain spaces and parentheses: fields after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| ProcError::Format { path: path.clone() })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let tick = |i: usize| -> Result<u64, ProcError> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| ProcError::Format { path: path.clone() })
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
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })
}

/// CPU and memory of the watched processes at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

pub fn sample(pids: &[u32]) -> Result<Sample, ProcError> {
    let mut s = Sample::default();
    for &pid in pids {
        s.cpu_s += cpu_seconds(pid)?;
        s.rss_kib += rss_kib(pid)?;
    }
    Ok(s)
}

/// The proxy's share of a run: CPU used between the two samples, per operation.
pub fn report(pids: &[u32], before: Sample, after: Sample, ops: u64) -> Value {
    if pids.is_empty() {
        return Value::Null;
    }
    let cpu = (after.cpu_s - before.cpu_s).max(0.0);
    json!({
        "pids": pids,
        "cpu_s": crate::stats::round2(cpu),
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
}
