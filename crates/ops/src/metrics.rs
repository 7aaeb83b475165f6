//! Helpers for the Prometheus metrics registrator and haproxy-sync keep.

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A label naming what kind of work a sample is of: `container` or
/// `resync` (registrator's reconciles), `runtime` or `reload` (haproxy-sync's applies).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Durations by kind, in buckets from 0.5 ms doubling to about 16 s.
pub fn durations_by_kind() -> Family<KindLabel, Histogram> {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)))
}

/// A Unix-time gauge, e.g. "last successful apply".
pub type Timestamp = Gauge<f64, AtomicU64>;

/// Sets `gauge` to the current Unix time, in seconds.
pub fn set_to_now(gauge: &Timestamp) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
    gauge.set(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_to_now_sets_the_unix_time() {
        let g = Timestamp::default();
        set_to_now(&g);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default();
        assert!((now - g.get()).abs() < 5.0, "{} vs {now}", g.get());
        let h = durations_by_kind();
        h.get_or_create(&KindLabel { kind: "reload" }).observe(0.002);
    }
}
