//! Keeps the Consul agent's services equal to what the running containers
//! ask for. Docker events only say *when* to look at a container; a
//! reconcile of that container (or of all of them) says *what* to change.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consul::{Backoff, Registration};
use futures_util::{StreamExt, stream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::container::Container;
use crate::docker::Engine;
use crate::metrics::{ActionLabel, KindLabel, Metrics};
use crate::service::{self, OWNER_META, Rules};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    Consul(#[from] consul::Error),
}

/// What a full resync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub containers: usize,
    pub registered: usize,
    pub deregistered: usize,
}

/// When a container that exits is deregistered (Go Registrator's `-deregister`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Deregister {
    /// Whenever it stops.
    #[default]
    Always,
    /// Only when it exits with code 0 or was asked to stop: a crashed
    /// container stays registered (its checks tell) until it is removed.
    OnSuccess,
}

/// The reconciler: Docker's truth in, Consul registrations out.
pub struct Registrar {
    consul: consul::Client,
    engine: Engine,
    rules: Rules,
    deregister: Deregister,
    metrics: Metrics,
    /// Why the last reconcile failed, until one succeeds.
    failing: Mutex<Option<String>>,
    /// Services of crashed containers kept under `Deregister::OnSuccess`.
    retained: Mutex<HashMap<String, Vec<Registration>>>,
    /// What this process registered, by container ID.
    known: Mutex<HashMap<String, Vec<Registration>>>,
    /// Containers asked to stop (a `kill` with a stopping signal): not
    /// registered, so the load balancer stops routing while they drain.
    stopping: Mutex<HashSet<String>>,
}

/// How often to look at everything even without events; `None` never.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub resync_every: Option<Duration>,
    /// How often to check that Consul still holds what was registered (a
    /// restarted agent loses it all); `None` never.
    pub verify_every: Option<Duration>,
}

impl Registrar {
    pub fn new(consul: consul::Client, engine: Engine, rules: Rules) -> Self {
        Self {
            consul,
            engine,
            rules,
            deregister: Deregister::default(),
            metrics: Metrics::default(),
            failing: Mutex::default(),
            retained: Mutex::default(),
            known: Mutex::default(),
            stopping: Mutex::default(),
        }
    }

    pub fn with_deregister(mut self, deregister: Deregister) -> Self {
        self.deregister = deregister;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `Ok` while reconciling works; else why not (for `/health`).
    pub fn health(&self) -> Result<(), String> {
        match self.failing.lock().expect("lock").clone() {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }

    /// Whether Consul still holds every service this registrar registered.
    pub async fn verify(&self) -> Result<bool, SyncError> {
        let current = self.consul.agent_services().await?;
        let known = self.known.lock().expect("lock");
        Ok(known.values().flatten().all(|reg| current.get(&reg.id).is_some_and(|cur| cur.matches(reg))))
    }

    async fn register(&self, reg: &Registration) -> Result<(), SyncError> {
        self.consul.register(reg).await?;
        self.metrics.registrations.inc();
        info!(service = %reg.name, id = %reg.id, address = %reg.address, port = reg.port, "registered");
        // Consul keeps a check's status across re-registrations: set it.
        self.update_docker_health(reg).await
    }

    /// Sets the Docker-health check of `reg`, if it has one, to Docker's verdict.
    async fn update_docker_health(&self, reg: &Registration) -> Result<(), SyncError> {
        for check in reg.checks.iter().filter(|c| c.check_id.as_deref().is_some_and(service::is_docker_health)) {
            let (Some(id), Some(status)) = (&check.check_id, &check.status) else { continue };
            self.consul.update_ttl(id, status, check.notes.as_deref().unwrap_or_default()).await?;
        }
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), SyncError> {
        self.consul.deregister(id).await?;
        self.metrics.deregistrations.inc();
        Ok(())
    }

    fn remember(&self, known: HashMap<String, Vec<Registration>>) {
        self.metrics.services.set(known.values().map(Vec::len).sum::<usize>() as i64);
        *self.known.lock().expect("lock") = known;
    }

    /// Makes Consul's services owned by this Docker host exactly those the
    /// running containers ask for.
    pub async fn resync(&self) -> Result<Report, SyncError> {
        let ids = self.engine.running().await?;
        let inspects = ids.into_iter().map(|id| {
            let engine = self.engine.clone();
            async move { engine.inspect(&id).await }
        });
        let containers: Vec<Option<Container>> = stream::iter(inspects)
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let stopping = self.stopping.lock().expect("lock").clone();
        let mut want: HashMap<String, Vec<Registration>> = self.retained.lock().expect("lock").clone();
        for c in containers.iter().flatten().filter(|c| !stopping.contains(&c.id)) {
            let services = self.desired(c);
            if !services.is_empty() {
                want.insert(c.id.clone(), services);
            }
        }

        let current = self.consul.agent_services().await?;
        let mut report = Report { containers: containers.len(), ..Report::default() };
        let wanted_ids: HashSet<&str> = want.values().flatten().map(|r| r.id.as_str()).collect();
        for reg in want.values().flatten() {
            if !current.get(&reg.id).is_some_and(|cur| cur.matches(reg)) {
                self.register(reg).await?;
                report.registered += 1;
            } else {
                // Docker health may have changed while no one was watching.
                self.update_docker_health(reg).await?;
            }
        }
        for svc in current.values() {
            let ours = svc.meta.get(OWNER_META) == Some(&self.rules.owner);
            if ours && !wanted_ids.contains(svc.id.as_str()) {
                self.deregister(&svc.id).await?;
                info!(service = %svc.service, id = %svc.id, "deregistered stale service");
                report.deregistered += 1;
            }
        }
        self.remember(want);
        Ok(report)
    }

    /// Brings one container's services up to date.
    pub async fn sync_container(&self, id: &str) -> Result<(), SyncError> {
        let stopping = self.stopping.lock().expect("lock").contains(id);
        if self.retained.lock().expect("lock").contains_key(id) {
            return Ok(());
        }
        // A container asked to stop wants nothing: no need to ask Docker,
        // which may hold its inspect until the stop is done.
        let want = if stopping {
            Vec::new()
        } else {
            match self.engine.inspect(id).await? {
                Some(c) => self.desired(&c),
                None => Vec::new(),
            }
        };
        let had = self.known.lock().expect("lock").get(id).cloned().unwrap_or_default();
        for old in had.iter().filter(|old| !want.iter().any(|w| w.id == old.id)) {
            self.deregister(&old.id).await?;
            info!(service = %old.name, id = %old.id, stopping, "deregistered");
        }
        for reg in want.iter().filter(|w| !had.contains(w)) {
            self.register(reg).await?;
        }
        let mut known = self.known.lock().expect("lock").clone();
        if want.is_empty() {
            known.remove(id);
        } else {
            known.insert(id.to_owned(), want);
        }
        self.remember(known);
        Ok(())
    }

    /// Follows a Docker event: updates the stopping set and says whether the
    /// container needs a reconcile.
    fn note_event(&self, action: &str, id: &str, attributes: &HashMap<String, String>) -> bool {
        let signal = attributes.get("signal").map(String::as_str);
        let mut stopping = self.stopping.lock().expect("lock");
        match action {
            "start" | "unpause" | "restart" => {
                stopping.remove(id);
                self.retained.lock().expect("lock").remove(id);
                true
            }
            "die"
                if self.deregister == Deregister::OnSuccess
                    && !stopping.contains(id)
                    && attributes.get("exitCode").is_some_and(|code| code != "0") =>
            {
                // Crashed: keep what it had registered until it is removed.
                if let Some(had) = self.known.lock().expect("lock").get(id).cloned() {
                    warn!(id = %short(id), exit_code = ?attributes.get("exitCode"), "container crashed; its services stay registered (-deregister on-success)");
                    self.retained.lock().expect("lock").insert(id.to_owned(), had);
                }
                false
            }
            "destroy" => {
                stopping.remove(id);
                self.retained.lock().expect("lock").remove(id);
                true
            }
            "kill" if signal.is_some_and(is_stop_signal) => {
                stopping.insert(id.to_owned());
                true
            }
            "die" => {
                stopping.remove(id);
                true
            }
            "stop" | "pause" | "rename" | "health_status" => true,
            _ => false,
        }
    }

    fn note_failure(&self, e: &SyncError) {
        *self.failing.lock().expect("lock") = Some(e.to_string());
    }

    fn desired(&self, c: &Container) -> Vec<Registration> {
        let d = service::desired(c, &self.rules);
        for problem in &d.problems {
            warn!(container = %c.name, id = %short(&c.id), "not registered: {problem}");
        }
        d.services
    }
}

/// SIGTERM, SIGKILL, SIGINT and SIGQUIT ask a container to go away.
fn is_stop_signal(signal: &str) -> bool {
    matches!(signal, "15" | "9" | "2" | "3" | "SIGTERM" | "SIGKILL" | "SIGINT" | "SIGQUIT")
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

enum Work {
    Container(String),
    Resync,
}

/// Runs until `shutdown`: follows Docker events (reconnecting with backoff
/// and resyncing after every reconnect) and reconciles in order.
pub async fn run(registrar: Arc<Registrar>, opts: Options, shutdown: CancellationToken) {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = tokio::spawn(follow_events(registrar.clone(), tx, shutdown.clone()));
    reconcile_loop(&registrar, rx, opts, &shutdown).await;
    events.abort();
}

async fn follow_events(registrar: Arc<Registrar>, tx: mpsc::UnboundedSender<Work>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    loop {
        // Replay from a second before connecting so nothing falls between
        // the stream and the resync that follows every (re)connect.
        let since = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64 - 1).ok();
        let mut events = Box::pin(registrar.engine.events(since));
        let _ = tx.send(Work::Resync);
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => return,
                item = events.next() => item,
            };
            match item {
                Some(Ok(ev)) => {
                    backoff.reset();
                    registrar.metrics.docker_connected.set(1);
                    let Some(actor) = ev.actor else { continue };
                    let Some(id) = actor.id else { continue };
                    let action = ev.action.unwrap_or_default();
                    let action = action.split(':').next().unwrap_or_default();
                    registrar.metrics.events.get_or_create(&ActionLabel { action: action.to_owned() }).inc();
                    let attributes = actor.attributes.unwrap_or_default();
                    debug!(action, id = %short(&id), "docker event");
                    if registrar.note_event(action, &id, &attributes) {
                        let _ = tx.send(Work::Container(id));
                    }
                }
                Some(Err(e)) => {
                    warn!(error = %e, "docker event stream failed; reconnecting");
                    registrar.metrics.docker_errors.inc();
                    break;
                }
                None => {
                    warn!("docker event stream ended; reconnecting");
                    break;
                }
            }
        }
        registrar.metrics.docker_connected.set(0);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

async fn reconcile_loop(
    registrar: &Registrar,
    mut rx: mpsc::UnboundedReceiver<Work>,
    opts: Options,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let far = Duration::from_secs(365 * 24 * 3600);
    let mut next_resync = Instant::now() + opts.resync_every.unwrap_or(far);
    let mut next_verify = Instant::now() + opts.verify_every.unwrap_or(far);
    let mut retry_at: Option<Instant> = None;
    loop {
        let mut resync = false;
        let mut verify = false;
        let mut dirty = BTreeSet::new();
        let mut take = |w: Work, resync: &mut bool| match w {
            Work::Resync => *resync = true,
            Work::Container(id) => {
                dirty.insert(id);
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            w = rx.recv() => match w {
                Some(w) => take(w, &mut resync),
                None => return,
            },
            _ = tokio::time::sleep_until(next_resync) => resync = true,
            _ = tokio::time::sleep_until(next_verify) => verify = true,
            _ = tokio::time::sleep_until(retry_at.unwrap_or(Instant::now() + far)) => resync = true,
        }
        // A burst of events is one batch: each container once, in one pass.
        while let Ok(w) = rx.try_recv() {
            take(w, &mut resync);
        }
        if verify && !resync && dirty.is_empty() {
            next_verify = Instant::now() + opts.verify_every.unwrap_or(far);
            match registrar.verify().await {
                Ok(true) => continue,
                Ok(false) => {
                    warn!("Consul lost services registered earlier (agent restarted?); resyncing");
                    resync = true;
                }
                Err(e) => {
                    registrar.metrics.consul_errors.inc();
                    registrar.note_failure(&e);
                    continue;
                }
            }
        }
        let started = Instant::now();
        let kind = if resync { "resync" } else { "container" };
        let result = if resync {
            registrar.resync().await.map(|report| {
                info!(?report, elapsed_ms = started.elapsed().as_millis() as u64, "resynced");
            })
        } else {
            let syncs = dirty.into_iter().map(|id| async move { registrar.sync_container(&id).await });
            let results = stream::iter(syncs).buffer_unordered(16).collect::<Vec<_>>().await;
            results.into_iter().collect::<Result<Vec<()>, _>>().map(drop)
        };
        registrar.metrics.reconcile_seconds.get_or_create(&KindLabel { kind }).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                backoff.reset();
                retry_at = None;
                registrar.metrics.mark_success();
                *registrar.failing.lock().expect("lock") = None;
                if resync {
                    next_resync = Instant::now() + opts.resync_every.unwrap_or(far);
                }
            }
            Err(e) => {
                // Whatever failed, a full resync from Docker's truth repairs it.
                match &e {
                    SyncError::Consul(_) => registrar.metrics.consul_errors.inc(),
                    SyncError::Docker(_) => registrar.metrics.docker_errors.inc(),
                };
                registrar.note_failure(&e);
                let delay = backoff.next_delay();
                if matches!(&e, SyncError::Consul(c) if c.is_forbidden()) {
                    error!(
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "Consul refused the request: the ACL token is missing or lacks permission \
                         (set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE)"
                    );
                } else {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "sync failed; will resync");
                }
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}
