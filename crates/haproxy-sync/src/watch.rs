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

use consul::blocking::{Next, Pace, Step};
use consul::{Client, EntryCheck, Indexed};
use ops::Backoff;
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
    let names_query = Query {
        what: "service list",
        ask: {
            let client = client.clone();
            move |index, wait| {
                let client = client.clone();
                async move { client.catalog_services(index, wait).await }
            }
        },
        answer: names,
        failed: None,
        sets_up: true,
    };
    let health_query = Query {
        what: "health checks",
        ask: {
            let client = client.clone();
            move |index, wait| {
                let client = client.clone();
                async move { client.unhealthy_checks(index, wait).await }
            }
        },
        answer: unhealthy,
        failed: Some(|| Update::UnhealthyFailed),
        sets_up: false,
    };
    let names_task = tokio::spawn(follow(names_query, opts.clone(), updates_tx.clone(), stats.clone()));
    let health_task = tokio::spawn(follow(health_query, opts.clone(), updates_tx, stats.clone()));

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
            let catalog = Catalog { services: known.catalog(), others: known.others() };
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

/// One of the two blocking queries: what it asks, what each answer and
/// each failure tell the loop, and how a failure is logged.
struct Query<T, F> {
    /// What it follows, for the log: "service list", "health checks".
    what: &'static str,
    ask: F,
    /// An answer → the update for the loop, or why it cannot be used.
    answer: fn(u64, T) -> Result<Update, WatchError>,
    /// The update a failure sends, if any.
    failed: Option<fn() -> Update>,
    /// Whether it sets `consul_up` (the service list does).
    sets_up: bool,
}

/// Follows one blocking query ([`consul::blocking::follow`]) until the loop
/// is gone: news goes to `tx`, an index that went back (Consul's state was
/// reset, even across a failure) sends [`Update::Reset`] first, and each
/// change between failing and answering is one log line.
async fn follow<T, F, Fut>(
    q: Query<T, F>,
    opts: WatchOptions,
    tx: mpsc::UnboundedSender<Update>,
    stats: Arc<WatchStats>,
) where
    F: Fn(u64, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<Indexed<T>, consul::Error>>,
{
    let pace = Pace { wait: opts.wait, min_interval: opts.min_interval, backoff: backoff() };
    let mut failing = false;
    let step = |step: Step<T>| {
        let outcome = match step {
            Step::Answer { value, index, answered } => (q.answer)(index, value).map(|update| (answered, update)),
            Step::Failed(e) => Err(WatchError::from(e)),
        };
        match outcome {
            Ok((answered, update)) => {
                if q.sets_up {
                    stats.up.set(1);
                }
                if std::mem::take(&mut failing) {
                    info!("Consul's {} is readable again", q.what);
                }
                if answered.reset && tx.send(Update::Reset).is_err() {
                    return Next::Stop;
                }
                if answered.news && tx.send(update).is_err() {
                    return Next::Stop;
                }
                Next::Go
            }
            Err(e) => {
                stats.errors.inc();
                if q.sets_up {
                    stats.up.set(0);
                }
                if std::mem::replace(&mut failing, true) {
                    debug!(error = %e, "Consul's {} failed again", q.what);
                } else if e.is_forbidden() || matches!(e, WatchError::NothingReadable) {
                    error!(
                        error = %e,
                        "Consul's ACLs let this token read nothing: the ACL token is missing or lacks \
                         service:read and node:read (CONSUL_HTTP_TOKEN); keeping what is known"
                    );
                } else {
                    warn!(error = %e, "cannot follow Consul's {}; keeping what is known", q.what);
                }
                match q.failed {
                    Some(failed) if tx.send(failed()).is_err() => Next::Stop,
                    _ => Next::Retry,
                }
            }
        }
    };
    consul::blocking::follow(pace, |index, wait| (q.ask)(index, wait), step, || std::future::ready(())).await;
}

/// The catalog's service list. Consul's own servers are always in it as
/// `consul`: a list without a single service is what ACLs leave of it for a
/// token that may read nothing, never the truth; applying it would unroute all.
fn names(_: u64, names: BTreeMap<String, Vec<String>>) -> Result<Update, WatchError> {
    if names.is_empty() { Err(WatchError::NothingReadable) } else { Ok(Update::Names(names)) }
}

/// Every check that is not passing.
fn unhealthy(index: u64, checks: Vec<EntryCheck>) -> Result<Update, WatchError> {
    Ok(Update::Unhealthy(index, checks))
}

/// Why one blocking query's answer gave nothing to use.
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
