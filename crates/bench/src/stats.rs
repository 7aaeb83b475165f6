//! Summaries of measured samples.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Every sample, in the order measured, for histograms.
    pub samples_ms: Vec<f64>,
}

impl Summary {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a rank between 1 and the sample count")]
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let measured: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let mut ms = measured.clone();
        ms.sort_by(f64::total_cmp);
        // Nearest-rank percentile.
        let pct = |p: f64| ms[((p / 100.0 * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Self {
            n: ms.len(),
            p50_ms: pct(50.0),
            p90_ms: pct(90.0),
            p99_ms: pct(99.0),
            max_ms: ms[ms.len() - 1],
            samples_ms: measured,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
            self.n, self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// Resident memory of a process, in MiB, from `/proc`.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) a process has used, in seconds, from `/proc`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // Linux counts them in 100ths of a second on every common architecture.
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms), (100, 50.0, 90.0, 99.0, 100.0));
        assert_eq!(Summary::of(&[Duration::from_millis(7)]).p99_ms, 7.0);
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn reads_this_process_rss_and_cpu() {
        assert!(rss_mib(std::process::id()).is_some_and(|mib| mib > 0.0));
        assert!(cpu_seconds(std::process::id()).is_some_and(|s| s >= 0.0));
    }
}
