//! Per-task counters, latency samples and error samples, merged into one run summary.

use std::time::Duration;

use serde_json::{Value, json};

/// Error messages kept verbatim (the rest are only counted).
const ERROR_SAMPLES: usize = 8;

/// What one task (or the whole run, after merging) observed inside the measuring window.
#[derive(Debug, Default)]
pub struct Tally {
    pub ops: u64,
    pub bytes: u64,
    /// Round-trip (or whole-operation) times in nanoseconds.
    pub latency_ns: Vec<u64>,
    /// Second histogram where a mode has one (handshake: connect to 101).
    pub upgrade_ns: Vec<u64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl Tally {
    pub fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(what.to_string());
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.bytes += other.bytes;
        self.latency_ns.extend(other.latency_ns);
        self.upgrade_ns.extend(other.upgrade_ns);
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES {
                self.error_samples.push(e);
            }
        }
    }
}

/// Nanoseconds as a sample, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// p50/p90/p99/p99.9/max/mean in microseconds, or `null` when there are no samples.
pub fn percentiles_us(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let n = samples.len();
    let at = |q: f64| -> f64 {
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        samples[rank - 1] as f64 / 1000.0
    };
    let mean = samples.iter().map(|&s| s as f64).sum::<f64>() / n as f64 / 1000.0;
    json!({
        "p50": round2(at(0.50)),
        "p90": round2(at(0.90)),
        "p99": round2(at(0.99)),
        "p999": round2(at(0.999)),
        "max": round2(samples[n - 1] as f64 / 1000.0),
        "mean": round2(mean),
        "samples": n,
    })
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles_us(&mut s);
        assert_eq!(p["p50"], 500.0);
        assert_eq!(p["p99"], 990.0);
        assert_eq!(p["p999"], 999.0);
        assert_eq!(p["max"], 1000.0);
        assert!(percentiles_us(&mut []).is_null());
    }

    #[test]
    fn merge_keeps_a_bounded_error_sample() {
        let mut a = Tally::default();
        for i in 0..5 {
            a.error(i);
        }
        let mut b = Tally::default();
        for i in 0..5 {
            b.error(i);
        }
        a.merge(b);
        assert_eq!(a.errors, 10);
        assert_eq!(a.error_samples.len(), ERROR_SAMPLES);
    }
}
