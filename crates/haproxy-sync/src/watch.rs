//! Follows Consul with blocking queries: the catalog for which services are
//! routed, and each routed service's health for its instances. Publishes a
//! complete [`Catalog`] whenever it changes; errors never publish anything,
//! so the last good state stays in force while Consul is away.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use consul::blocking::{is_news, next_index};
use consul::{Backoff, Client, ServiceEntry};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::model::{Catalog, Instance};

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
}

enum Update {
    /// The set of routed service names changed.
    Names(HashSet<String>),
    /// A service's instances, as Consul answered them.
    Instances(String, Vec<Instance>),
}

/// Runs until `shutdown`, publishing every complete, changed catalog on `tx`.
pub async fn run(
    client: Client,
    opts: WatchOptions,
    tx: watch::Sender<Option<Catalog>>,
    stats: Arc<WatchStats>,
    shutdown: CancellationToken,
) {
    let (updates_tx, mut updates) = mpsc::unbounded_channel();
    let catalog_task =
        tokio::spawn(watch_catalog(client.clone(), opts.clone(), updates_tx.clone(), stats.clone(), shutdown.clone()));

    let mut watches: HashMap<String, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    let mut names: Option<HashSet<String>> = None;
    let mut instances: BTreeMap<String, Arc<Vec<Instance>>> = BTreeMap::new();
    let start = |name: &str| {
        let token = shutdown.child_token();
        let task = tokio::spawn(watch_service(
            client.clone(),
            name.to_owned(),
            opts.clone(),
            updates_tx.clone(),
            stats.clone(),
            token.clone(),
        ));
        (token, task)
    };
    loop {
        let update = tokio::select! {
            _ = shutdown.cancelled() => break,
            u = updates.recv() => match u { Some(u) => u, None => break },
        };
        apply(update, &mut names, &mut instances, &mut watches, &start);
        while let Ok(update) = updates.try_recv() {
            apply(update, &mut names, &mut instances, &mut watches, &start);
        }
        // Publish only complete states: every routed service has answered.
        let Some(names) = &names else { continue };
        if names.iter().all(|n| instances.contains_key(n)) {
            let catalog = Catalog { services: instances.clone() };
            tx.send_if_modified(|current| {
                if current.as_ref() == Some(&catalog) {
                    false
                } else {
                    *current = Some(catalog);
                    true
                }
            });
        }
    }
    catalog_task.abort();
    for (token, task) in watches.into_values() {
        token.cancel();
        task.abort();
    }
}

fn apply(
    update: Update,
    names: &mut Option<HashSet<String>>,
    instances: &mut BTreeMap<String, Arc<Vec<Instance>>>,
    watches: &mut HashMap<String, (CancellationToken, JoinHandle<()>)>,
    start: &dyn Fn(&str) -> (CancellationToken, JoinHandle<()>),
) {
    match update {
        Update::Names(new) => {
            watches.retain(|name, (token, _)| {
                let keep = new.contains(name);
                if !keep {
                    token.cancel();
                    instances.remove(name);
                    info!(service = %name, "service no longer routed");
                }
                keep
            });
            for name in &new {
                if !watches.contains_key(name) {
                    debug!(service = %name, "watching service");
                    watches.insert(name.clone(), start(name));
                }
            }
            *names = Some(new);
        }
        Update::Instances(name, list) => {
            // A new Arc only when the instances changed: unchanged services
            // keep theirs, and everything downstream recognises them.
            if watches.contains_key(&name) && instances.get(&name).is_none_or(|old| **old != list) {
                instances.insert(name, Arc::new(list));
            }
        }
    }
}

async fn watch_catalog(
    client: Client,
    opts: WatchOptions,
    tx: mpsc::UnboundedSender<Update>,
    stats: Arc<WatchStats>,
    shutdown: CancellationToken,
) {
    let mut index = 0;
    let mut backoff = Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = client.catalog_services(index, opts.wait) => r,
        };
        // Consul's own servers are always in the catalog as `consul`: a list
        // without a single service is what ACLs leave of it for a token that
        // may read nothing, never the truth. Applying it would unroute all.
        let result: Result<_, WatchError> = match result {
            Ok(answer) if answer.value.is_empty() => Err(WatchError::NothingReadable),
            other => other.map_err(Into::into),
        };
        match result {
            Ok(answer) => {
                stats.up.set(1);
                if backoff.attempts() > 0 {
                    info!("Consul catalog readable again");
                }
                backoff.reset();
                if is_news(index, answer.index) {
                    let names =
                        answer.value.into_iter().filter(|(_, tags)| tags.contains(&opts.tag)).map(|(n, _)| n).collect();
                    if tx.send(Update::Names(names)).is_err() {
                        return;
                    }
                }
                index = next_index(index, answer.index);
            }
            Err(e) => {
                stats.errors.inc();
                stats.up.set(0);
                if e.is_forbidden() || matches!(e, WatchError::NothingReadable) {
                    error!(
                        error = %e,
                        "Consul's ACLs let this token read no services: the ACL token is missing or lacks \
                         service:read and node:read (CONSUL_HTTP_TOKEN); keeping the last known services"
                    );
                } else {
                    warn!(error = %e, "Consul catalog watch failed; keeping the last known services");
                }
                index = 0;
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
            }
        }
        pace(started, opts.min_interval).await;
    }
}

async fn watch_service(
    client: Client,
    name: String,
    opts: WatchOptions,
    tx: mpsc::UnboundedSender<Update>,
    stats: Arc<WatchStats>,
    shutdown: CancellationToken,
) {
    let mut index = 0;
    let mut backoff = Backoff::default();
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = client.health_service(&name, index, opts.wait) => r,
        };
        match result {
            Ok(answer) => {
                stats.up.set(1);
                backoff.reset();
                if is_news(index, answer.index) {
                    let list = answer.value.iter().map(instance).collect();
                    if tx.send(Update::Instances(name.clone(), list)).is_err() {
                        return;
                    }
                }
                index = next_index(index, answer.index);
            }
            Err(e) if e.is_forbidden() => {
                stats.errors.inc();
                stats.up.set(0);
                error!(
                    service = %name, error = %e,
                    "Consul refused to list this service's instances: the ACL token lacks service:read on it; \
                     keeping the last known instances"
                );
                index = 0;
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
            }
            Err(e) => {
                stats.errors.inc();
                stats.up.set(0);
                warn!(service = %name, error = %e, "Consul health watch failed; keeping the last known instances");
                index = 0;
                tokio::select! { _ = shutdown.cancelled() => return, _ = backoff.wait() => {} }
            }
        }
        pace(started, opts.min_interval).await;
    }
}

fn instance(e: &ServiceEntry) -> Instance {
    Instance {
        id: e.service.id.clone(),
        address: e.address().to_owned(),
        port: e.service.port,
        status: e.status(),
        tags: e.service.tags.clone(),
        meta: e.service.meta.clone(),
    }
}

/// Why one catalog query gave nothing to use.
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

async fn pace(started: tokio::time::Instant, min: Duration) {
    tokio::time::sleep_until(started + min).await;
}
