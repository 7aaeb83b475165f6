//! What registrator counts, exposed at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

pub use ops::metrics::KindLabel;
use ops::metrics::Timestamp;

/// Registrator's metrics; clones share the same values.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Docker events received, by action.
    pub events: Family<ActionLabel, Counter>,
    pub registrations: Counter,
    pub deregistrations: Counter,
    /// Reconcile durations, by kind (`container` or `resync`).
    pub reconcile_seconds: Family<KindLabel, Histogram>,
    pub consul_errors: Counter,
    pub docker_errors: Counter,
    /// Unix time of the last reconcile that succeeded.
    pub last_success: Timestamp,
    /// Services registered by this registrator.
    pub services: Gauge,
    /// 1 while the Docker event stream is connected.
    pub docker_connected: Gauge,
    /// Registrations (or deregistrations) Consul refuses now.
    pub refused: Gauge,
    /// Refusals by Consul, each counted once per change of what was refused.
    pub refusals: Counter,
    /// 1 while the Consul agent answers.
    pub consul_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            events: Family::default(),
            registrations: Counter::default(),
            deregistrations: Counter::default(),
            reconcile_seconds: ops::metrics::durations_by_kind(),
            consul_errors: Counter::default(),
            docker_errors: Counter::default(),
            last_success: Gauge::default(),
            services: Gauge::default(),
            docker_connected: Gauge::default(),
            refused: Gauge::default(),
            refusals: Counter::default(),
            consul_up: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Adds every metric to `registry` (prefix it `registrator`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("docker_events", "Docker container events received", self.events.clone());
        registry.register("registrations", "Services registered with Consul", self.registrations.clone());
        registry.register("deregistrations", "Services deregistered from Consul", self.deregistrations.clone());
        registry.register("reconcile_duration_seconds", "Time to reconcile", self.reconcile_seconds.clone());
        registry.register("consul_errors", "Consul requests that failed", self.consul_errors.clone());
        registry.register("docker_errors", "Docker requests or event streams that failed", self.docker_errors.clone());
        registry.register(
            "last_successful_sync_timestamp_seconds",
            "Unix time of the last successful reconcile",
            self.last_success.clone(),
        );
        registry.register("services", "Services currently registered by this registrator", self.services.clone());
        registry.register(
            "docker_connected",
            "1 while the Docker event stream is connected",
            self.docker_connected.clone(),
        );
        registry.register("refused_services", "Services whose registration Consul refuses now", self.refused.clone());
        registry.register("consul_refusals", "Registrations Consul refused (once per change)", self.refusals.clone());
        registry.register("consul_up", "1 while the Consul agent answers", self.consul_up.clone());
    }

    pub fn mark_success(&self) {
        ops::metrics::set_to_now(&self.last_success);
    }
}
