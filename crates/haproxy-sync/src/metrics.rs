//! What haproxy-sync counts, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use ops::metrics::KindLabel;
use ops::metrics::Timestamp;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

/// haproxy-sync's metrics; clones share the same values.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Consul queries and reads that failed (blocking queries, service reads, sweeps).
    pub consul_errors: Counter,
    /// 1 while Consul answers the watches.
    pub consul_up: Gauge,
    /// Reads of one service's instances (a change the service list located).
    pub consul_service_reads: Counter,
    /// Sweeps of every node's services (a change it did not locate).
    pub consul_sweeps: Counter,
    /// Applied changes, by kind: `runtime` (runtime API, no reload) or `reload`.
    pub applies: Family<KindLabel, Counter>,
    pub apply_seconds: Family<KindLabel, Histogram>,
    pub reload_failures: Counter,
    /// Candidate configurations `haproxy -c` refused (never loaded).
    pub check_failures: Counter,
    pub runtime_failures: Counter,
    /// TLS certificates applied through the runtime API (new, renewed or removed).
    pub certificates_applied: Counter,
    /// TLS certificate files refused (by haproxy-sync's check or by HAProxy).
    pub certificates_refused: Counter,
    /// Servers routed to, by backend.
    pub servers: Family<BackendLabel, Gauge>,
    /// Unix time of the last successful apply.
    pub last_apply: Timestamp,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            consul_errors: Counter::default(),
            consul_up: Gauge::default(),
            consul_service_reads: Counter::default(),
            consul_sweeps: Counter::default(),
            applies: Family::default(),
            apply_seconds: ops::metrics::durations_by_kind(),
            reload_failures: Counter::default(),
            check_failures: Counter::default(),
            runtime_failures: Counter::default(),
            certificates_applied: Counter::default(),
            certificates_refused: Counter::default(),
            servers: Family::default(),
            last_apply: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Adds every metric to `registry` (prefix it `haproxy_sync`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("consul_errors", "Consul queries and reads that failed", self.consul_errors.clone());
        registry.register("consul_up", "1 while Consul answers the watches", self.consul_up.clone());
        registry.register(
            "consul_service_reads",
            "Reads of one service's instances, for changes the service list located",
            self.consul_service_reads.clone(),
        );
        registry.register(
            "consul_sweeps",
            "Reads of every node's services, for changes the service list did not locate",
            self.consul_sweeps.clone(),
        );
        registry.register("applies", "Configuration changes applied, by kind", self.applies.clone());
        registry.register("apply_duration_seconds", "Time to apply a change, by kind", self.apply_seconds.clone());
        registry.register("reload_failures", "Reloads HAProxy did not confirm", self.reload_failures.clone());
        registry.register("check_failures", "Candidate configurations haproxy -c refused", self.check_failures.clone());
        registry.register("runtime_failures", "Runtime API changes that failed", self.runtime_failures.clone());
        registry.register(
            "certificates_applied",
            "TLS certificates applied through the runtime API",
            self.certificates_applied.clone(),
        );
        registry.register("certificates_refused", "TLS certificate files refused", self.certificates_refused.clone());
        registry.register("servers", "Servers routed to, by backend", self.servers.clone());
        registry.register(
            "last_successful_apply_timestamp_seconds",
            "Unix time of the last successful apply",
            self.last_apply.clone(),
        );
    }

    pub fn mark_applied(&self) {
        ops::metrics::set_to_now(&self.last_apply);
    }
}
