//! Follows Consul with a fixed number of connections, whatever the size of
//! the catalog: two blocking queries (the service list, and every check that
//! is not passing) and at most [`READERS`] reads at a time (one service's
//! instances, or a sweep of every node's services when the list moved
//! without saying which service did). What the answers mean is
//! [`Known`]'s business; this loop only asks and passes answers on.
//!
//! Publishes the routed services whenever they change, once the first full
//! read is done. Errors never publish anything: what is known stays in
//! force, each failing query is retried with backoff, and each change
//! between failing and answering is one log line.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use consul::blocking::{is_news, next_index};
use consul::{Backoff, Client, EntryCheck, Indexed};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::known::{Known, Sweep};
use crate::model::Catalog;

/// Reads in flight at most, besides the two blocking queries.
pub const READERS: usize = 4;

/// How a failing query or read is retried: from 100 ms, doubling, to at
/// most 5 s, so a Consul that comes back is followed within 5 s and one that
/// stays away is asked about once every few seconds per query.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

/// What to watch.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Services carrying this tag are routed.
    pub tag: String,
    /// How long one blocking query may wait at Consul.
    pub wait: Duration,
    /// The least time between two queries of one watch (a guard against spinning).
    pub min_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self { tag: "rest".into(), wait: consul::client::DEFAULT_WAIT, min_interval: Duration::from_millis(5) }
    }
}

/// Counters the watcher keeps, for metrics and tests.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub errors: prometheus_client::metrics::counter::Counter,
    pub up: prometheus_client::metrics::gauge::Gauge,
    /// Reads of one service's instances.
    pub service_reads: prometheus_client::metrics::counter::Counter,
    /// Sweeps of every node's services.
    pub sweeps: prometheus_client::metrics::counter::Counter,
}

enum Update {
    /// The catalog's service list, with each service's tags.
    Names(BTreeMap<String, Vec<String>>),
    /// Every check that is not passing, at an index.
    Unhealthy(u64, Vec<EntryCheck>),
    /// The health view failed (it is retried).
    UnhealthyFailed,
    /// An index went backwards: Consul's state was reset.
    Reset,
}

enum Done {
    Service(String, Result<Indexed<Vec<consul::ServiceEntry>>, consul::Error>),
    Sweep(Result<Sweep, consul::Error>),
}

/// Runs until `shutdown`, publishing every changed catalog on `tx`.
pub async fn run(
    client: Client,
    opts: WatchOptions,
    tx: watch::Sender<Option<Catalog>>,
    stats: Arc<WatchStats>,
    shutdown: CancellationToken,
) {
    let (updates_tx, mut updates) = mpsc::unbounded_channel();
    let names_task = tokio::spawn(follow_names(client.clone(), opts.clone(), updates_tx.clone(), stats.clone()));
    let health_task = tokio::spawn(follow_health(client.clone(), opts.clone(), updates_tx, stats.clone()));

    let mut known = Known::new(&opts.tag);
    let mut jobs: JoinSet<Done> = JoinSet::new();
    let mut reading: BTreeSet<String> = BTreeSet::new();
    let mut sweeping = false;
    let mut swept_once = false;
    let mut health_tried = false;
    let mut published = false;
    let mut reads = Retry::new("services");
    let mut sweeps = Retry::new("the catalog's nodes");
    loop {
        let now = Instant::now();
        // A sweep needs the service list, and the health view's first word
        // (an answer or a failure) so that it is not read twice at start.
        if !sweeping
            && jobs.len() < READERS
            && known.has_names()
            && health_tried
            && sweeps.ready(now)
            && known.take_sweep()
        {
            sweeping = true;
            stats.sweeps.inc();
            jobs.spawn(sweep(client.clone()));
        }
        if reads.ready(now) {
            for name in known.to_fetch(&reading, READERS - jobs.len()) {
                reading.insert(name.clone());
                stats.service_reads.inc();
                let client = client.clone();
                jobs.spawn(async move {
                    let result = client.health_service(&name, 0, Duration::ZERO).await;
                    Done::Service(name, result)
                });
            }
        }
        // The first catalog is published once complete, so that HAProxy
        // starts with it and nothing is reloaded right after; from then on
        // whatever is known is published as it comes.
        let complete = swept_once && !sweeping && reading.is_empty() && !known.fetch_pending();
        if (published || complete) && (known.changed() || !published) {
            let catalog = Catalog { services: known.catalog() };
            published = true;
            tx.send_if_modified(|current| {
                if current.as_ref() == Some(&catalog) {
                    false
                } else {
                    *current = Some(catalog);
                    true
                }
            });
        }
        let retry_at = reads.until().into_iter().chain(sweeps.until()).filter(|t| *t > now).min();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            update = updates.recv() => match update {
                None => break,
                Some(Update::Names(names)) => known.on_names(&names),
                Some(Update::Unhealthy(index, checks)) => {
                    health_tried = true;
                    known.on_unhealthy(index, &checks);
                }
                Some(Update::UnhealthyFailed) => health_tried = true,
                Some(Update::Reset) => {
                    info!("Consul's indexes went back (its state was reset); reading everything again");
                    known.on_reset();
                }
            },
            Some(done) = jobs.join_next() => match done {
                Ok(Done::Service(name, result)) => {
                    reading.remove(&name);
                    match result {
                        Ok(answer) => {
                            reads.succeeded();
                            known.on_service(&name, answer.index, &answer.value);
                        }
                        Err(e) => {
                            stats.errors.inc();
                            reads.failed(&e, Some(&name));
                            known.on_service_failed(&name);
                        }
                    }
                }
                Ok(Done::Sweep(result)) => {
                    sweeping = false;
                    match result {
                        Ok(sweep) => {
                            sweeps.succeeded();
                            swept_once = true;
                            known.on_sweep(sweep);
                        }
                        Err(e) => {
                            stats.errors.inc();
                            sweeps.failed(&e, None);
                            known.on_sweep_failed();
                        }
                    }
                }
                Err(e) => {
                    error!(error = %e, "a Consul read panicked");
                    break;
                }
            },
            _ = sleep_until(retry_at) => {}
        }
    }
    names_task.abort();
    health_task.abort();
    jobs.abort_all();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads every node's services and, after each list, the node's checks
/// that are not passing. A node whose list cannot be read is marked failed
/// (what is known of it stays); only a sweep that read no node fails.
async fn sweep(client: Client) -> Done {
    let result = async {
        let nodes = client.catalog_nodes().await?.value;
        let mut sweep = Sweep { nodes: nodes.iter().map(|n| n.node.clone()).collect(), ..Sweep::default() };
        let mut last_error = None;
        for node in &nodes {
            let read = async {
                let list = client.node_services(&node.node).await?;
                let checks = client.node_unhealthy_checks(&node.node).await?;
                Ok::<_, consul::Error>((list, checks))
            };
            match read.await {
                Ok((Indexed { index, value: Some(list) }, checks)) => sweep.add_node(index, &list, &checks.value),
                // Gone since the node list was read: nothing of it is kept.
                Ok((Indexed { value: None, .. }, _)) => {}
                Err(e) => {
                    sweep.failed.insert(node.node.clone());
                    last_error = Some(e);
                }
            }
        }
        match last_error {
            Some(e) if sweep.failed.len() == nodes.len() => Err(e),
            _ => Ok(sweep),
        }
    };
    Done::Sweep(result.await)
}

/// Backoff for one kind of read, and its log: one line when it starts
/// failing, one when it answers again.
struct Retry {
    what: &'static str,
    backoff: Backoff,
    hold_until: Option<Instant>,
    failing: bool,
}

impl Retry {
    fn new(what: &'static str) -> Self {
        Retry { what, backoff: backoff(), hold_until: None, failing: false }
    }

    fn ready(&self, now: Instant) -> bool {
        self.hold_until.is_none_or(|t| t <= now)
    }

    fn until(&self) -> Option<Instant> {
        self.hold_until
    }

    fn failed(&mut self, e: &consul::Error, service: Option<&str>) {
        self.hold_until = Some(Instant::now() + self.backoff.next_delay());
        if !self.failing {
            self.failing = true;
            warn!(error = %e, service, "cannot read {} from Consul; keeping what is known and retrying", self.what);
        } else {
            debug!(error = %e, service, "reading {} from Consul failed again", self.what);
        }
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
        self.hold_until = None;
        if std::mem::take(&mut self.failing) {
            info!("Consul answers reads of {} again", self.what);
        }
    }
}

/// Follows the catalog's service list with a blocking query.
async fn follow_names(client: Client, opts: WatchOptions, tx: mpsc::UnboundedSender<Update>, stats: Arc<WatchStats>) {
    let (mut index, mut answered) = (0, 0);
    let mut backoff = backoff();
    let mut failing = false;
    loop {
        let started = Instant::now();
        // Consul's own servers are always in the catalog as `consul`: a list
        // without a single service is what ACLs leave of it for a token that
        // may read nothing, never the truth. Applying it would unroute all.
        let result: Result<_, WatchError> = match client.catalog_services(index, opts.wait).await {
            Ok(answer) if answer.value.is_empty() => Err(WatchError::NothingReadable),
            other => other.map_err(Into::into),
        };
        match result {
            Ok(answer) => {
                stats.up.set(1);
                backoff.reset();
                if std::mem::take(&mut failing) {
                    info!("Consul's service list is readable again");
                }
                // An index below the last one answered, even across a
                // failure: Consul's state was reset (a restarted dev agent).
                if answer.index < answered && tx.send(Update::Reset).is_err() {
                    return;
                }
                answered = answer.index;
                if is_news(index, answer.index) && tx.send(Update::Names(answer.value)).is_err() {
                    return;
                }
                index = next_index(index, answer.index);
            }
            Err(e) => {
                stats.errors.inc();
                stats.up.set(0);
                if !std::mem::replace(&mut failing, true) {
                    if e.is_forbidden() || matches!(e, WatchError::NothingReadable) {
                        error!(
                            error = %e,
                            "Consul's ACLs let this token read no services: the ACL token is missing or lacks \
                             service:read and node:read (CONSUL_HTTP_TOKEN); keeping the last known services"
                        );
                    } else {
                        warn!(error = %e, "cannot follow Consul's service list; keeping the last known services");
                    }
                } else {
                    debug!(error = %e, "Consul's service list failed again");
                }
                index = 0;
                backoff.wait().await;
            }
        }
        tokio::time::sleep_until(started + opts.min_interval).await;
    }
}

/// Follows every check that is not passing with a blocking query.
async fn follow_health(client: Client, opts: WatchOptions, tx: mpsc::UnboundedSender<Update>, stats: Arc<WatchStats>) {
    let (mut index, mut answered) = (0, 0);
    let mut backoff = backoff();
    let mut failing = false;
    loop {
        let started = Instant::now();
        match client.unhealthy_checks(index, opts.wait).await {
            Ok(answer) => {
                backoff.reset();
                if std::mem::take(&mut failing) {
                    info!("Consul's health checks are readable again");
                }
                // An index below the last one answered, even across a
                // failure: Consul's state was reset (a restarted dev agent).
                if answer.index < answered && tx.send(Update::Reset).is_err() {
                    return;
                }
                answered = answer.index;
                if is_news(index, answer.index) && tx.send(Update::Unhealthy(answer.index, answer.value)).is_err() {
                    return;
                }
                index = next_index(index, answer.index);
            }
            Err(e) => {
                stats.errors.inc();
                if !std::mem::replace(&mut failing, true) {
                    warn!(error = %e, "cannot follow Consul's health checks; keeping the last known health");
                } else {
                    debug!(error = %e, "Consul's health checks failed again");
                }
                if tx.send(Update::UnhealthyFailed).is_err() {
                    return;
                }
                index = 0;
                backoff.wait().await;
            }
        }
        tokio::time::sleep_until(started + opts.min_interval).await;
    }
}

/// Why one service-list query gave nothing to use.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error(transparent)]
    Consul(#[from] consul::Error),
    /// An answer that cannot be the catalog's true state.
    #[error("the catalog lists no service at all, not even `consul`")]
    NothingReadable,
}

impl WatchError {
    fn is_forbidden(&self) -> bool {
        matches!(self, WatchError::Consul(e) if e.is_forbidden())
    }
}
