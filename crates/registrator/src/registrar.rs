//! The loop around [`State`]: it takes Docker events and timers in, asks
//! Docker and the Consul agent what [`State`] needs to know, carries out the
//! ops it plans, and logs its notes. Every decision is the state's; this
//! file only does I/O: each look and op starts as soon as the state allows,
//! at most [`IN_FLIGHT`] against Docker and as many against the agent, and
//! a burst of events about one container is one inspect.
//!
//! Docker and the agent are reached through two small traits, [`Docker`] and
//! [`Agent`], so the loop's timing (batching, verify, retries, backoff) is
//! tested with fakes and tokio's paused clock (`tests` below).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use consul::blocking::{Next, Pace, Step};
use consul::{AgentService, Registration};
use futures_util::{StreamExt, stream};
use ops::Backoff;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::container::Container;
use crate::docker::Engine;
use crate::metrics::{ActionLabel, KindLabel, Metrics};
use crate::report::Report;
use crate::service::{self, Rules};
use crate::state::{Deregister, Note, Op, Outcome, State, Timing};

/// The Docker engine as the loop uses it.
pub trait Docker: Send + Sync {
    /// IDs of the running containers.
    fn running(&self) -> impl Future<Output = Result<Vec<String>, bollard::errors::Error>> + Send;
    /// One container, or `None` when it no longer exists.
    fn inspect(&self, id: &str) -> impl Future<Output = Result<Option<Container>, bollard::errors::Error>> + Send;
}

/// The Consul agent as the loop uses it.
pub trait Agent: Send + Sync {
    fn services(&self) -> impl Future<Output = Result<HashMap<String, AgentService>, consul::Error>> + Send;
    fn register(&self, reg: &Registration) -> impl Future<Output = Result<(), consul::Error>> + Send;
    fn deregister(&self, id: &str) -> impl Future<Output = Result<(), consul::Error>> + Send;
    fn update_ttl(
        &self,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> impl Future<Output = Result<(), consul::Error>> + Send;
}

impl Docker for Engine {
    fn running(&self) -> impl Future<Output = Result<Vec<String>, bollard::errors::Error>> + Send {
        Engine::running(self)
    }
    fn inspect(&self, id: &str) -> impl Future<Output = Result<Option<Container>, bollard::errors::Error>> + Send {
        Engine::inspect(self, id)
    }
}

/// This host's Consul agent, with what it holds checked against the catalog.
///
/// An agent keeps its services while its host is cut off; if Consul reaps
/// the node meanwhile (`reconnect_timeout`, `consul force-leave`), the
/// catalog loses them, and the agent, back, does not push them again before
/// its next anti-entropy round (minutes). A service the catalog had and has
/// lost while the agent holds it is reported missing here, so the look that
/// [`follow_catalog`] asks for as soon as the catalog loses it (or the next
/// verify) registers it again, within seconds of the agent's return. A
/// service the catalog never had (still on its way, or its sync refused) is
/// left alone, so nothing is registered over and over.
pub struct HostAgent {
    client: consul::Client,
    /// The agent's node; `None`: the agent alone is asked.
    node: Option<String>,
    /// Services seen in the catalog since they were last reported lost,
    /// by the looks and by [`follow_catalog`].
    in_catalog: Arc<Mutex<HashSet<String>>>,
    /// Told each time the agent answers a look.
    answered: Arc<tokio::sync::Notify>,
}

impl HostAgent {
    pub fn new(client: consul::Client, node: Option<String>) -> Self {
        Self { client, node, in_catalog: Arc::default(), answered: Arc::default() }
    }
}

/// Follows this node's entry in the catalog (a blocking query) and asks the
/// loop for a look at the agent whenever the catalog lost services (the
/// node reaped, and back): what the agent still holds is registered again
/// at once, not at the next `--verify`. After a failure it asks again only
/// once the agent has answered one of the loop's looks (and after a growing
/// pause): an agent that is down is probed by the loop alone, and servers
/// out of reach (this host cut off) are asked at most once per look.
async fn follow_catalog(agent: &HostAgent, node: String, tx: mpsc::UnboundedSender<Work>, shutdown: CancellationToken) {
    let (client, in_catalog) = (&agent.client, &agent.in_catalog);
    let mut known: Option<HashSet<String>> = None;
    let pace = Pace {
        wait: Duration::from_secs(300),
        min_interval: Duration::from_millis(5),
        backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
    };
    let step = |step: Step<Option<consul::NodeServices>>| match step {
        Step::Answer { value, .. } => {
            let now: HashSet<String> = value.map(|n| n.services.into_keys().collect()).unwrap_or_default();
            in_catalog.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(now.iter().cloned());
            if known.as_ref().is_some_and(|before| before.iter().any(|id| !now.contains(id))) {
                debug!(%node, "the catalog lost services of this node; looking at the agent");
                if tx.send(Work::CatalogLost).is_err() {
                    return Next::Stop;
                }
            }
            known = Some(now);
            Next::Go
        }
        Step::Failed(e) => {
            debug!(%node, error = %e, "following this node in the catalog");
            Next::Retry
        }
    };
    // After a failure, the next query also waits until the agent answers
    // one of the loop's own looks: an agent that is down is not probed twice.
    let follow = consul::blocking::follow(
        pace,
        |index, wait| client.node_services_since(&node, index, wait),
        step,
        || agent.answered.notified(),
    );
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = follow => {}
    }
}

/// Drops from `held` (what the agent holds) the services the catalog had
/// (`seen`) and has lost (`catalog`: the node's services, `None` when the
/// node is gone); returns their IDs. `seen` learns what the catalog has.
pub fn lost_from_catalog(
    held: &mut HashMap<String, AgentService>,
    catalog: Option<&HashSet<String>>,
    seen: &mut HashSet<String>,
) -> Vec<String> {
    let empty = HashSet::new();
    let catalog = catalog.unwrap_or(&empty);
    seen.retain(|id| held.contains_key(id));
    let mut lost: Vec<String> = seen.iter().filter(|id| !catalog.contains(*id)).cloned().collect();
    lost.sort();
    for id in &lost {
        seen.remove(id);
        held.remove(id);
    }
    seen.extend(held.keys().filter(|id| catalog.contains(*id)).cloned());
    lost
}

impl Agent for HostAgent {
    async fn services(&self) -> Result<HashMap<String, AgentService>, consul::Error> {
        let mut held = self.client.agent_services().await?;
        self.answered.notify_waiters();
        let Some(node) = &self.node else { return Ok(held) };
        // The servers may be out of reach (this host cut off): then the agent's word stands.
        let Ok(answer) = self.client.node_services(node).await else { return Ok(held) };
        let catalog: Option<HashSet<String>> = answer.value.map(|n| n.services.into_keys().collect());
        let lost = lost_from_catalog(
            &mut held,
            catalog.as_ref(),
            &mut self.in_catalog.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if !lost.is_empty() {
            warn!(
                node = %node,
                count = lost.len(),
                services = ?lost,
                "the Consul catalog lost services this host's agent holds (its node was reaped while away?); registering them again"
            );
        }
        Ok(held)
    }
    fn register(&self, reg: &Registration) -> impl Future<Output = Result<(), consul::Error>> + Send {
        self.client.register(reg)
    }
    fn deregister(&self, id: &str) -> impl Future<Output = Result<(), consul::Error>> + Send {
        self.client.deregister(id)
    }
    fn update_ttl(
        &self,
        check_id: &str,
        status: &str,
        output: &str,
    ) -> impl Future<Output = Result<(), consul::Error>> + Send {
        self.client.update_ttl(check_id, status, output)
    }
}

/// Timers of the loop; `None` never.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How often to look at every container even without events.
    pub resync_every: Option<Duration>,
    /// How often to check that the agent still holds what was registered (a
    /// restarted agent loses it all).
    pub verify_every: Option<Duration>,
}

/// What the loop receives: Docker events, and word that the event stream
/// (re)connected, after which everything is looked at again.
#[derive(Clone, Debug)]
pub enum Work {
    Event {
        action: String,
        id: String,
        attributes: HashMap<String, String>,
    },
    Connected,
    /// The catalog lost services of this node: look at the agent now.
    CatalogLost,
}

/// What `/health` shows, published by the loop after every round.
#[derive(Clone, Debug, Default)]
struct Status {
    unhealthy: Option<String>,
    refused: Vec<(String, String)>,
}

/// A request for the report, answered by the loop.
type ReportRequest = oneshot::Sender<Report>;

/// The registrar: Docker and the agent, the rules, and what it reports.
pub struct Registrar<D = Engine, A = HostAgent> {
    docker: D,
    agent: A,
    rules: Rules,
    deregister: Deregister,
    timing: Timing,
    metrics: Metrics,
    status: Mutex<Status>,
    /// Requests for [`Registrar::report`], and their receiving end, which
    /// the loop holds while it runs.
    reports: mpsc::Sender<ReportRequest>,
    report_requests: Mutex<Option<mpsc::Receiver<ReportRequest>>>,
}

impl<D: Docker, A: Agent> Registrar<D, A> {
    pub fn new(agent: A, docker: D, rules: Rules) -> Self {
        let (reports, requests) = mpsc::channel(REPORTS_WAITING);
        Self {
            docker,
            agent,
            rules,
            deregister: Deregister::default(),
            timing: Timing::default(),
            metrics: Metrics::default(),
            status: Mutex::default(),
            reports,
            report_requests: Mutex::new(Some(requests)),
        }
    }

    pub fn with_deregister(mut self, deregister: Deregister) -> Self {
        self.deregister = deregister;
        self
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// `Ok` with details while registering works; else why not (for `/health`).
    pub fn health(&self) -> Result<String, String> {
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        if let Some(why) = status.unhealthy {
            return Err(why);
        }
        Ok(status.refused.iter().map(|(id, why)| format!("refused by Consul: {id}: {why}\n")).collect())
    }

    /// What the loop did with each container, and why
    /// ([`State::report`]), computed by the loop when asked: `None` when no
    /// loop runs, or it does not answer within [`REPORT_WAIT`].
    pub async fn report(&self) -> Option<Report> {
        let ask = async {
            let (tx, rx) = oneshot::channel();
            self.reports.send(tx).await.ok()?;
            rx.await.ok()
        };
        tokio::time::timeout(REPORT_WAIT, ask).await.ok().flatten()
    }

    fn publish(&self, state: &State) {
        let status = Status { unhealthy: state.unhealthy(), refused: state.refusals() };
        self.metrics.refused.set(ops::gauge_value(status.refused.len()));
        self.metrics.services.set(ops::gauge_value(state.held_count()));
        self.metrics.consul_up.set(i64::from(!state.consul_down()));
        if let Ok(mut s) = self.status.lock() {
            *s = status;
        }
    }

    /// Every running container, inspected (16 at a time).
    async fn look_all(&self) -> Result<Vec<Container>, bollard::errors::Error> {
        let ids = self.docker.running().await?;
        let looks = stream::iter(ids).map(|id| async move { self.docker.inspect(&id).await });
        let found: Vec<Option<Container>> =
            looks.buffer_unordered(16).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
        Ok(found.into_iter().flatten().filter(|c| c.running).collect())
    }

    /// Carries out one op; a registration also sets its Docker-health checks
    /// (Consul keeps a check's status across re-registrations).
    async fn execute(&self, op: &Op) -> Outcome {
        let result = match op {
            Op::Register(reg) => match self.agent.register(reg).await {
                Ok(()) => self.set_docker_health(reg).await,
                Err(e) => Err(e),
            },
            Op::Refresh(reg) => self.set_docker_health(reg).await,
            // Already gone (the agent restarted meanwhile): done.
            Op::Deregister { id, .. } => match self.agent.deregister(id).await {
                Err(consul::Error::Status { status, body, .. })
                    if status.as_u16() == 404 || body.contains("Unknown service") =>
                {
                    Ok(())
                }
                other => other,
            },
        };
        if result.is_err() {
            self.metrics.consul_errors.inc();
        }
        Outcome::of(result)
    }

    async fn set_docker_health(&self, reg: &Registration) -> Result<(), consul::Error> {
        for check in reg.checks.iter().filter(|c| c.check_id.as_deref().is_some_and(service::is_docker_health)) {
            let (Some(id), Some(status)) = (&check.check_id, &check.status) else { continue };
            self.agent.update_ttl(id, status, check.notes.as_deref().unwrap_or_default()).await?;
        }
        Ok(())
    }

    fn log(&self, notes: Vec<Note>) {
        for note in notes {
            match note {
                Note::Registered(reg) => {
                    self.metrics.registrations.inc();
                    info!(service = %reg.name, id = %reg.id, address = %reg.address, port = reg.port, "registered");
                }
                Note::Deregistered { id, name, stale } => {
                    self.metrics.deregistrations.inc();
                    if stale {
                        info!(service = %name, %id, "deregistered stale service");
                    } else {
                        info!(service = %name, %id, "deregistered");
                    }
                }
                Note::Problems { container, id, problems, warnings } => {
                    if problems.is_empty() && warnings.is_empty() {
                        info!(%container, id = %short(&id), "registered as asked");
                    }
                    for problem in problems {
                        warn!(%container, id = %short(&id), "not registered: {problem}");
                    }
                    for warning in warnings {
                        warn!(%container, id = %short(&id), "{warning}");
                    }
                }
                Note::Refused { id, name, reason, forbidden, reminder } => {
                    if !reminder {
                        self.metrics.refusals.inc();
                    }
                    let still = if reminder { " still" } else { "" };
                    if forbidden {
                        error!(
                            service = %name, %id, error = %reason,
                            "Consul{still} refuses the registration: the ACL token is missing or lacks permission \
                             (set CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE); retrying with backoff"
                        );
                    } else {
                        warn!(service = %name, %id, error = %reason, "Consul{still} refuses the registration; retrying with backoff");
                    }
                }
                Note::Accepted { id, name } => info!(service = %name, %id, "Consul accepts the registration now"),
                Note::ConsulDown { reason } => {
                    warn!(error = %reason, "Consul agent unreachable; retrying with backoff, registrations wait")
                }
                Note::ConsulUp { down_for } => {
                    info!(down_ms = ops::millis(down_for), "Consul agent reachable again; catching up")
                }
                Note::ConsulLost { count } => {
                    warn!(count, "Consul lost services registered earlier (agent restarted?); registering them again")
                }
                Note::DockerDown { reason } => {
                    self.metrics.docker_errors.inc();
                    warn!(error = %reason, "Docker engine unreachable; retrying with backoff")
                }
                Note::DockerUp { down_for } => {
                    info!(down_ms = ops::millis(down_for), "Docker engine reachable again")
                }
                Note::Retained { container, exit_code } => warn!(
                    id = %short(&container), %exit_code,
                    "container crashed; its services stay registered (-deregister on-success)"
                ),
                Note::RefusalsDropped { left } => debug!(left, "refusals of changes no longer needed dropped"),
            }
        }
    }
}

/// How many requests for the report may wait for the loop.
const REPORTS_WAITING: usize = 64;

/// How long [`Registrar::report`] waits for the loop.
pub const REPORT_WAIT: Duration = Duration::from_secs(5);

/// The receiving end of report requests, held by the loop while it runs
/// and given back when it ends.
struct Requests<'a> {
    slot: &'a Mutex<Option<mpsc::Receiver<ReportRequest>>>,
    rx: Option<mpsc::Receiver<ReportRequest>>,
}

impl<'a> Requests<'a> {
    fn take(slot: &'a Mutex<Option<mpsc::Receiver<ReportRequest>>>) -> Self {
        let rx = slot.lock().ok().and_then(|mut r| r.take());
        Self { slot, rx }
    }
}

impl Drop for Requests<'_> {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = self.rx.take();
        }
    }
}

/// The next request for the report; never, without a receiver.
async fn next_request(requests: &mut Option<mpsc::Receiver<ReportRequest>>) -> Option<ReportRequest> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Runs until `shutdown`: follows the engine's events (reconnecting with
/// backoff, and looking at everything after every reconnect) and reconciles.
pub async fn run(registrar: Arc<Registrar>, opts: Options, shutdown: CancellationToken) {
    let (tx, rx) = mpsc::unbounded_channel();
    let catalog = registrar.agent.node.clone().map(|node| {
        let (registrar, tx, shutdown) = (registrar.clone(), tx.clone(), shutdown.clone());
        tokio::spawn(async move { follow_catalog(&registrar.agent, node, tx, shutdown).await })
    });
    let events = tokio::spawn(follow_events(registrar.docker.clone(), registrar.metrics.clone(), tx, shutdown.clone()));
    drive(&registrar, rx, opts, &shutdown).await;
    events.abort();
    if let Some(catalog) = catalog {
        catalog.abort();
    }
}

async fn follow_events(engine: Engine, metrics: Metrics, tx: mpsc::UnboundedSender<Work>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    let mut failing = false;
    loop {
        // Replay from a second before connecting so nothing falls between
        // the stream and the full look that follows every (re)connect.
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .map(|s| s - 1);
        let mut events = Box::pin(engine.events(since));
        let _ = tx.send(Work::Connected);
        loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => return,
                item = events.next() => item,
            };
            match item {
                Some(Ok(ev)) => {
                    if failing {
                        info!("docker event stream back");
                        failing = false;
                    }
                    backoff.reset();
                    metrics.docker_connected.set(1);
                    let Some(actor) = ev.actor else { continue };
                    let attributes = actor.attributes.unwrap_or_default();
                    let action = ev.action.unwrap_or_default();
                    let action = action.split(':').next().unwrap_or_default().to_owned();
                    // A network event names the container it (dis)connected.
                    let network = ev.typ == Some(bollard::models::EventMessageTypeEnum::NETWORK);
                    let id = if network { attributes.get("container").cloned() } else { actor.id };
                    let Some(id) = id else { continue };
                    metrics.events.get_or_create(&ActionLabel { action: action.clone() }).inc();
                    debug!(action, id = %short(&id), "docker event");
                    let _ = tx.send(Work::Event { action, id, attributes });
                }
                Some(Err(e)) => {
                    metrics.docker_errors.inc();
                    if !failing {
                        warn!(error = %e, "docker event stream failed; reconnecting with backoff");
                    }
                    failing = true;
                    break;
                }
                None => {
                    if !failing {
                        warn!("docker event stream ended; reconnecting with backoff");
                    }
                    failing = true;
                    break;
                }
            }
        }
        metrics.docker_connected.set(0);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

/// A piece of I/O the loop runs; at most [`IN_FLIGHT`] at once against
/// Docker and as many against the agent, so ops never queue behind
/// inspects Docker holds.
enum Job {
    /// List and inspect every running container; the state's `seq` when asked.
    LookAll(u64),
    Inspect(String, u64),
    /// Read the agent's services.
    LookConsul,
    Op(Op),
}

enum Done {
    Snapshot(u64, Result<Vec<Container>, bollard::errors::Error>),
    Inspected(String, u64, Result<Option<Box<Container>>, bollard::errors::Error>),
    Services(Result<HashMap<String, AgentService>, consul::Error>),
    Executed(Op, Outcome),
}

const IN_FLIGHT: usize = 16;

/// What the loop does between [`State`]'s decisions: which looks are wanted
/// or running, which services have an op in flight, and what the current
/// busy spell (from idle to idle) has done.
#[derive(Default)]
struct Pending {
    /// Jobs waiting, for Docker and for the agent, and how many run.
    docker_queue: std::collections::VecDeque<Job>,
    consul_queue: std::collections::VecDeque<Job>,
    docker_running: usize,
    consul_running: usize,
    /// A full look is wanted (stream connected, `--resync`, Docker retry).
    full: bool,
    /// A look at the agent is wanted (`--verify`, after a full look).
    look_consul: bool,
    looking_all: bool,
    looking_consul: bool,
    /// The next plan also refreshes Docker-health checks (after a full look).
    refresh: bool,
    /// Containers waiting for their inspect, being inspected, and to
    /// inspect again after (an event came while the inspect ran).
    queued: BTreeSet<String>,
    inspecting: BTreeSet<String>,
    again: BTreeSet<String>,
    /// Services with an op in flight: nothing else is planned for them until it ends.
    busy: BTreeSet<String>,
    spell: Option<Spell>,
}

/// From busy to idle: what it did, for the `resynced` line and the metrics.
struct Spell {
    started: Instant,
    full: bool,
    registered: usize,
    deregistered: usize,
}

/// The loop itself, fed by `rx`: Docker events, and `Connected` for a full
/// look. Every look and op runs as soon as it may (at most [`IN_FLIGHT`]
/// against Docker and as many against the agent): a container's changes never wait for another's inspect, and
/// events keep arriving while anything runs.
pub async fn drive<D: Docker, A: Agent>(
    registrar: &Registrar<D, A>,
    mut rx: mpsc::UnboundedReceiver<Work>,
    opts: Options,
    shutdown: &CancellationToken,
) {
    let mut state = State::new(registrar.rules.clone(), registrar.deregister, registrar.timing);
    let far = Duration::from_secs(365 * 24 * 3600);
    let mut next_resync = Instant::now() + opts.resync_every.unwrap_or(far);
    let mut next_verify = Instant::now() + opts.verify_every.unwrap_or(far);
    let mut w = Pending::default();
    let mut inflight = futures_util::stream::FuturesUnordered::new();
    // Requests for the report are answered here, where the state is.
    let mut requests = Requests::take(&registrar.report_requests);
    loop {
        // Start what is wanted and may run now: the ops the state plans
        // (not while the agent is being looked at: what it holds is about
        // to change), then looks at Docker and at the agent (the agent's
        // only while no op runs, so what it shows is not half old).
        let now = Instant::now();
        if !w.looking_consul {
            for op in state.plan(now, std::mem::take(&mut w.refresh)) {
                if w.busy.insert(op.service_id().to_owned()) {
                    w.consul_queue.push_back(Job::Op(op));
                }
            }
        }
        if (w.full || state.docker_look_due(now)) && !w.looking_all && state.docker_may_try(now) {
            w.full = false;
            w.looking_all = true;
            w.docker_queue.push_front(Job::LookAll(state.seq()));
        }
        let consul_wanted = w.look_consul || state.consul_needs_look();
        if consul_wanted && !w.looking_consul && w.busy.is_empty() && state.consul_may_try(now) {
            w.look_consul = false;
            w.looking_consul = true;
            w.consul_queue.push_front(Job::LookConsul);
        }
        loop {
            let job = if w.docker_running < IN_FLIGHT && !w.docker_queue.is_empty() {
                w.docker_running += 1;
                w.docker_queue.pop_front()
            } else if w.consul_running < IN_FLIGHT && !w.consul_queue.is_empty() {
                w.consul_running += 1;
                w.consul_queue.pop_front()
            } else {
                None
            };
            let Some(job) = job else { break };
            if w.spell.is_none() {
                w.spell = Some(Spell { started: Instant::now(), full: false, registered: 0, deregistered: 0 });
            }
            match &job {
                Job::LookAll(_) => w.spell.as_mut().into_iter().for_each(|spell| spell.full = true),
                Job::Inspect(id, _) => {
                    w.queued.remove(id);
                    w.inspecting.insert(id.clone());
                }
                Job::LookConsul | Job::Op(_) => {}
            }
            inflight.push(run_job(registrar, job));
        }
        if inflight.is_empty() {
            finish_spell(registrar, &mut state, &mut w);
            // No look that started before now still runs.
            state.forget_touches();
        }

        let wake =
            (state.next_retry_but(&w.busy, w.looking_consul, w.looking_all)).unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = rx.recv() => match got {
                Some(got) => {
                    take(&mut state, &mut w, got);
                    // A burst of events is taken at once.
                    while let Ok(got) = rx.try_recv() {
                        take(&mut state, &mut w, got);
                    }
                }
                None => return,
            },
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                settle(registrar, &mut state, &mut w, done);
            }
            _ = tokio::time::sleep_until(next_resync) => {
                next_resync = Instant::now() + opts.resync_every.unwrap_or(far);
                w.full = true;
            }
            _ = tokio::time::sleep_until(next_verify) => {
                next_verify = Instant::now() + opts.verify_every.unwrap_or(far);
                w.look_consul = true;
            }
            _ = tokio::time::sleep_until(wake) => {}
            Some(reply) = next_request(&mut requests.rx) => {
                let _ = reply.send(state.report(Instant::now()));
            }
        }
        state.prune_refused();
        registrar.log(state.take_notes());
        registrar.publish(&state);
    }
}

/// Takes what the event stream sent.
fn take(state: &mut State, w: &mut Pending, got: Work) {
    match got {
        Work::Connected => w.full = true,
        Work::CatalogLost => w.look_consul = true,
        Work::Event { action, id, attributes } => {
            if state.on_event(&action, &id, &attributes, Instant::now()) {
                inspect(state, w, id);
            }
        }
    }
}

fn inspect(state: &State, w: &mut Pending, id: String) {
    if w.inspecting.contains(&id) {
        w.again.insert(id);
    } else if w.queued.insert(id.clone()) {
        w.docker_queue.push_back(Job::Inspect(id, state.seq()));
    }
}

async fn run_job<D: Docker, A: Agent>(registrar: &Registrar<D, A>, job: Job) -> Done {
    match job {
        Job::LookAll(since) => Done::Snapshot(since, registrar.look_all().await),
        Job::Inspect(id, since) => {
            let found = registrar.docker.inspect(&id).await.map(|c| c.map(Box::new));
            Done::Inspected(id, since, found)
        }
        Job::LookConsul => Done::Services(registrar.agent.services().await),
        Job::Op(op) => {
            let outcome = registrar.execute(&op).await;
            Done::Executed(op, outcome)
        }
    }
}

/// Takes what a job found or did back into the state.
fn settle<D: Docker, A: Agent>(registrar: &Registrar<D, A>, state: &mut State, w: &mut Pending, done: Done) {
    let now = Instant::now();
    match done {
        Done::Snapshot(..) | Done::Inspected(..) => w.docker_running -= 1,
        Done::Services(_) | Done::Executed(..) => w.consul_running -= 1,
    }
    match done {
        Done::Snapshot(since, Ok(containers)) => {
            w.looking_all = false;
            state.on_docker_answered(now);
            for id in state.on_snapshot(&containers, since, now) {
                inspect(state, w, id);
            }
            // What the agent holds is looked at again, and Docker-health
            // checks refreshed, after every full look.
            w.look_consul = true;
            w.refresh = true;
        }
        Done::Snapshot(_, Err(e)) => {
            w.looking_all = false;
            state.on_docker_failed(e.to_string(), now);
        }
        Done::Inspected(id, since, found) => {
            w.inspecting.remove(&id);
            match found {
                Ok(c) => state.on_inspected(&id, c.as_deref(), since),
                Err(e) => state.on_docker_failed(e.to_string(), now),
            }
            if w.again.remove(&id) {
                inspect(state, w, id);
            }
        }
        Done::Services(Ok(current)) => {
            w.looking_consul = false;
            state.on_consul_services(&current, now);
        }
        Done::Services(Err(e)) => {
            w.looking_consul = false;
            registrar.metrics.consul_errors.inc();
            state.on_consul_failed(e.to_string(), now);
        }
        Done::Executed(op, outcome) => {
            w.busy.remove(op.service_id());
            if let (Outcome::Done, Some(spell)) = (&outcome, w.spell.as_mut()) {
                match op {
                    Op::Register(_) => spell.registered += 1,
                    Op::Deregister { .. } => spell.deregistered += 1,
                    Op::Refresh(_) => {}
                }
            }
            state.on_outcome(&op, outcome, now);
        }
    }
}

/// Everything started is done: reports the spell that ends.
fn finish_spell<D: Docker, A: Agent>(registrar: &Registrar<D, A>, state: &mut State, w: &mut Pending) {
    let Some(spell) = w.spell.take() else { return };
    let elapsed = spell.started.elapsed();
    let kind = if spell.full { "resync" } else { "container" };
    registrar.metrics.reconcile_seconds.get_or_create(&KindLabel { kind }).observe(elapsed.as_secs_f64());
    if spell.full {
        let (registered, deregistered) = (spell.registered, spell.deregistered);
        info!(registered, deregistered, elapsed_ms = elapsed.as_secs_f64() * 1e3, "resynced");
    }
    if state.unhealthy().is_none() {
        registrar.metrics.mark_success();
    }
}

#[cfg(test)]
mod tests {
    //! The loop with fake Docker and Consul on tokio's paused clock: what it
    //! asks and when, with no engine or agent.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use reqwest::{Method, StatusCode};

    use super::*;

    fn held(ids: &[&str]) -> HashMap<String, AgentService> {
        ids.iter()
            .map(|id| {
                let reg = Registration { id: (*id).into(), name: "s".into(), ..Registration::default() };
                ((*id).to_string(), AgentService::from(&reg))
            })
            .collect()
    }

    fn ids(list: &[&str]) -> HashSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_what_the_catalog_had_and_lost_is_missing() {
        let mut seen = HashSet::new();
        // just registered, not yet in the catalog: left alone
        let mut h = held(&["a", "b"]);
        assert!(lost_from_catalog(&mut h, Some(&ids(&["a"])), &mut seen).is_empty());
        assert_eq!(h.len(), 2);
        // the node reaped: what the catalog had is missing, the rest stays
        let mut h = held(&["a", "b"]);
        assert_eq!(lost_from_catalog(&mut h, None, &mut seen), vec!["a".to_string()]);
        assert_eq!(h.keys().collect::<Vec<_>>(), vec!["b"]);
        // reported once: until the catalog has it again, it is not missing again
        let mut h = held(&["a", "b"]);
        assert!(lost_from_catalog(&mut h, None, &mut seen).is_empty());
        assert_eq!(h.len(), 2);
        // a service the agent no longer holds is forgotten
        let mut h = held(&["b"]);
        assert!(lost_from_catalog(&mut h, Some(&ids(&["a", "b"])), &mut seen).is_empty());
        assert_eq!(seen, ids(&["b"]));
    }

    use crate::testing::{NET, container};

    #[derive(Default)]
    struct FakeDocker {
        containers: Mutex<HashMap<String, Container>>,
        lists: AtomicUsize,
        inspects: AtomicUsize,
        /// Containers whose inspect Docker holds this long (as during a stop).
        slow: Mutex<HashMap<String, Duration>>,
    }

    impl Docker for FakeDocker {
        async fn running(&self) -> Result<Vec<String>, bollard::errors::Error> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            Ok(self.containers.lock().unwrap().keys().cloned().collect())
        }
        async fn inspect(&self, id: &str) -> Result<Option<Container>, bollard::errors::Error> {
            self.inspects.fetch_add(1, Ordering::Relaxed);
            let hold = self.slow.lock().unwrap().get(id).copied();
            if let Some(hold) = hold {
                tokio::time::sleep(hold).await;
            }
            Ok(self.containers.lock().unwrap().get(id).cloned())
        }
    }

    /// An agent that holds services in memory, refuses the service named
    /// `refuse`, and does not answer while `down`.
    #[derive(Default)]
    struct FakeAgent {
        services: Mutex<HashMap<String, AgentService>>,
        refuse: Mutex<Option<String>>,
        down: std::sync::atomic::AtomicBool,
        /// Every request: (when, what, service ID or "").
        requests: Mutex<Vec<(Instant, &'static str, String)>>,
        /// How long a registration takes to answer.
        delay: Mutex<Duration>,
    }

    impl FakeAgent {
        fn answer(&self, what: &'static str, id: &str) -> Result<(), consul::Error> {
            self.requests.lock().unwrap().push((Instant::now(), what, id.to_owned()));
            if self.down.load(Ordering::Relaxed) {
                return Err(status(StatusCode::SERVICE_UNAVAILABLE, "agent shutting down"));
            }
            Ok(())
        }

        fn count(&self, what: &str, id: &str, since: Instant) -> usize {
            let requests = self.requests.lock().unwrap();
            requests.iter().filter(|(at, w, i)| *at >= since && *w == what && (id.is_empty() || i == id)).count()
        }

        fn all_since(&self, since: Instant) -> usize {
            self.requests.lock().unwrap().iter().filter(|(at, ..)| *at >= since).count()
        }

        fn holds(&self, id: &str) -> bool {
            self.services.lock().unwrap().contains_key(id)
        }
    }

    fn status(status: StatusCode, body: &str) -> consul::Error {
        consul::Error::Status { method: Method::PUT, path: "/v1/agent".into(), status, body: body.into() }
    }

    impl Agent for FakeAgent {
        async fn services(&self) -> Result<HashMap<String, AgentService>, consul::Error> {
            self.answer("services", "")?;
            Ok(self.services.lock().unwrap().clone())
        }
        async fn register(&self, reg: &Registration) -> Result<(), consul::Error> {
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            self.answer("register", &reg.id)?;
            if self.refuse.lock().unwrap().as_deref() == Some(reg.name.as_str()) {
                return Err(status(StatusCode::INTERNAL_SERVER_ERROR, "Scripts are disabled on this agent"));
            }
            self.services.lock().unwrap().insert(reg.id.clone(), AgentService::from(reg));
            Ok(())
        }
        async fn deregister(&self, id: &str) -> Result<(), consul::Error> {
            self.answer("deregister", id)?;
            self.services.lock().unwrap().remove(id);
            Ok(())
        }
        async fn update_ttl(&self, check_id: &str, _: &str, _: &str) -> Result<(), consul::Error> {
            self.answer("ttl", check_id)
        }
    }

    struct Harness {
        registrar: Arc<Registrar<FakeDocker, FakeAgent>>,
        tx: mpsc::UnboundedSender<Work>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Harness {
        fn start(containers: &[Container], opts: Options) -> Harness {
            let docker = FakeDocker::default();
            docker.containers.lock().unwrap().extend(containers.iter().map(|c| (c.id.clone(), c.clone())));
            let rules = Rules { owner: "host1".into(), own_networks: vec![NET.into()], ..Rules::default() };
            let registrar = Arc::new(Registrar::new(FakeAgent::default(), docker, rules));
            let (tx, rx) = mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let task = tokio::spawn({
                let (registrar, shutdown) = (registrar.clone(), shutdown.clone());
                async move { drive(&registrar, rx, opts, &shutdown).await }
            });
            tx.send(Work::Connected).unwrap();
            Harness { registrar, tx, shutdown, task }
        }

        fn agent(&self) -> &FakeAgent {
            &self.registrar.agent
        }

        fn docker(&self) -> &FakeDocker {
            &self.registrar.docker
        }

        fn event(&self, action: &str, id: &str) {
            let attributes = HashMap::new();
            self.tx.send(Work::Event { action: action.into(), id: id.into(), attributes }).unwrap();
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.unwrap();
        }
    }

    const OPTS: Options =
        Options { resync_every: Some(Duration::from_secs(30)), verify_every: Some(Duration::from_secs(2)) };

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_container_is_retried_on_its_own_with_backoff_and_others_are_served() {
        let mut bad = container("bad", "bad");
        bad.env.insert("SERVICE_CHECK_SCRIPT".into(), "/bin/check".into());
        let h = Harness::start(&[bad, container("good", "good")], OPTS);
        *h.agent().refuse.lock().unwrap() = Some("bad".into());
        let t0 = Instant::now();
        settle().await;
        assert!(h.agent().holds("host1:good:80"));

        // Ten minutes: the refused one is asked about rarely, nothing else piles up.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let minute = Instant::now();
        tokio::time::sleep(Duration::from_secs(540)).await;
        let after_first_minute = h.agent().count("register", "host1:bad:80", minute);
        assert!(after_first_minute <= 2 * 9, "{after_first_minute} attempts in 9 minutes");
        assert!(h.agent().count("register", "host1:bad:80", t0) >= 3, "it is retried");
        assert_eq!(h.agent().count("register", "host1:good:80", t0), 1, "the good one once");
        assert_eq!(h.registrar.metrics.refusals.get(), 1, "counted once");
        assert_eq!(h.registrar.metrics.refused.get(), 1);
        let health = h.registrar.health().expect("healthy");
        assert!(health.contains("host1:bad:80") && health.contains("Scripts are disabled"), "{health}");

        // A new container is served at once, refusal or not.
        h.docker().containers.lock().unwrap().insert("new".into(), container("new", "new"));
        h.event("start", "new");
        settle().await;
        assert!(h.agent().holds("host1:new:80"));
        // Accepted once the agent allows it; the refusal is gone.
        *h.agent().refuse.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(h.agent().holds("host1:bad:80"));
        assert_eq!(h.registrar.metrics.refused.get(), 0);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_answers_for_the_report_while_it_runs_and_not_after() {
        let mut bad = container("bad", "bad");
        bad.env.insert("SERVICE_CHECK_SCRIPT".into(), "/bin/check".into());
        let h = Harness::start(&[bad, container("good", "good")], OPTS);
        *h.agent().refuse.lock().unwrap() = Some("bad".into());
        settle().await;
        let report = h.registrar.report().await.expect("the loop answers");
        assert!(report.complete);
        let status = |name: &str| {
            let c = report.containers.iter().find(|c| c.name == name).unwrap();
            (c.services[0].status, c.services[0].reason.clone().unwrap_or_default())
        };
        assert_eq!(status("good"), (crate::report::Status::Registered, String::new()));
        let (refused, why) = status("bad");
        assert_eq!(refused, crate::report::Status::Refused);
        assert!(why.contains("Scripts are disabled"), "{why}");
        let registrar = h.registrar.clone();
        h.stop().await;
        assert_eq!(registrar.report().await, None, "no loop, no report (after {REPORT_WAIT:?})");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_container_started_during_the_first_look_is_noted_once() {
        let mut bad = container("bad", "bad");
        bad.env.insert("SERVICE_CHECK_SCRIPT".into(), "/bin/check".into());
        let h = Harness::start(&[], OPTS);
        *h.agent().refuse.lock().unwrap() = Some("bad".into());
        h.docker().containers.lock().unwrap().insert("bad".into(), bad);
        h.event("connect", "bad");
        h.event("start", "bad");
        tokio::time::sleep(Duration::from_secs(150)).await;
        assert_eq!(h.registrar.metrics.refusals.get(), 1);
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_down_for_a_minute_is_probed_with_growing_waits_and_caught_up_after() {
        let h = Harness::start(&[container("a", "hello")], OPTS);
        settle().await;
        assert!(h.agent().holds("host1:a:80"));
        h.agent().down.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        // Meanwhile a container comes: it waits.
        h.docker().containers.lock().unwrap().insert("b".into(), container("b", "hello"));
        h.event("start", "b");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let during = h.agent().all_since(t0);
        assert!(during <= 25, "{during} requests to an agent down for a minute");
        assert!(h.registrar.health().is_err_and(|why| why.contains("unreachable")));
        assert_eq!(h.registrar.metrics.consul_up.get(), 0);

        h.agent().down.store(false, Ordering::Relaxed);
        let back = Instant::now();
        // The waits are capped at 5 s: caught up within that.
        while !h.agent().holds("host1:b:80") {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(back.elapsed() <= Duration::from_secs(6), "not caught up");
        }
        assert!(h.registrar.health().is_ok());
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_never_waits_for_anothers_slow_inspect() {
        let h = Harness::start(&[container("a", "hello")], OPTS);
        settle().await;
        // Docker holds the inspect of "slow" for 5 s; meanwhile "a" is
        // asked to stop and "b" starts.
        h.docker().slow.lock().unwrap().insert("slow".into(), Duration::from_secs(5));
        h.docker().containers.lock().unwrap().insert("slow".into(), container("slow", "slow"));
        h.docker().containers.lock().unwrap().insert("b".into(), container("b", "hello"));
        h.event("start", "slow");
        settle().await;
        let attributes = HashMap::from([("signal".to_owned(), "15".to_owned())]);
        h.tx.send(Work::Event { action: "kill".into(), id: "a".into(), attributes }).unwrap();
        h.event("start", "b");
        settle().await;
        assert!(!h.agent().holds("host1:a:80"), "deregistered without waiting");
        assert!(h.agent().holds("host1:b:80"), "registered without waiting");
        assert!(!h.agent().holds("host1:slow:80"));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(h.agent().holds("host1:slow:80"));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn ops_never_queue_behind_inspects_docker_holds() {
        let h = Harness::start(&[container("a", "hello")], OPTS);
        settle().await;
        // More held inspects than may run at once.
        for i in 0..(IN_FLIGHT + 4) {
            let id = format!("held{i}");
            h.docker().slow.lock().unwrap().insert(id.clone(), Duration::from_secs(5));
            h.docker().containers.lock().unwrap().insert(id.clone(), container(&id, "held"));
            h.event("start", &id);
        }
        settle().await;
        let attributes = HashMap::from([("signal".to_owned(), "15".to_owned())]);
        h.tx.send(Work::Event { action: "kill".into(), id: "a".into(), attributes }).unwrap();
        settle().await;
        assert!(!h.agent().holds("host1:a:80"), "the deregistration did not wait for Docker");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_refusal_in_flight_is_not_retried_and_nothing_spins() {
        let mut bad = container("bad", "bad");
        bad.env.insert("SERVICE_CHECK_SCRIPT".into(), "/bin/check".into());
        let h = Harness::start(&[bad], OPTS);
        *h.agent().refuse.lock().unwrap() = Some("bad".into());
        *h.agent().delay.lock().unwrap() = Duration::from_secs(3);
        let t0 = Instant::now();
        // A loop that spun would never let the paused clock advance: this
        // sleep would not return, so a watchdog on the real clock ends the
        // test binary instead of leaving it hanging.
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watched = finished.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(60));
            if !watched.load(Ordering::Relaxed) {
                eprintln!("the registrar's loop spins: 5 paused minutes did not pass in 60 real seconds");
                std::process::exit(101);
            }
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        finished.store(true, Ordering::Relaxed);
        let tries = h.agent().count("register", "host1:bad:80", t0);
        assert!((3..=12).contains(&tries), "{tries} attempts in 5 minutes");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_is_one_round_with_one_inspect_per_container() {
        let h = Harness::start(&[container("a", "hello")], OPTS);
        settle().await;
        let before = h.docker().inspects.load(Ordering::Relaxed);
        let registers = h.agent().count("register", "", Instant::now() - Duration::from_secs(1));
        for _ in 0..50 {
            h.event("health_status", "a");
            h.event("rename", "a");
        }
        settle().await;
        assert_eq!(h.docker().inspects.load(Ordering::Relaxed) - before, 1);
        let since = Instant::now() - Duration::from_secs(3600);
        assert_eq!(h.agent().count("register", "", since), registers, "nothing changed, nothing sent");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn verify_restores_what_the_agent_lost_without_asking_docker() {
        let h = Harness::start(&[container("a", "hello")], OPTS);
        settle().await;
        let lists = h.docker().lists.load(Ordering::Relaxed);
        h.agent().services.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(h.agent().holds("host1:a:80"), "back within one verify period");
        assert_eq!(h.docker().lists.load(Ordering::Relaxed), lists, "Docker was not listed");
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_resync_finds_what_events_missed() {
        let h = Harness::start(&[container("a", "hello")], OPTS);
        settle().await;
        // Gone without an event (the stream missed it).
        h.docker().containers.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(h.agent().holds("host1:a:80"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!h.agent().holds("host1:a:80"));
        h.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_signal_deregisters_before_docker_answers_an_inspect() {
        let h = Harness::start(&[container("a", "hello")], OPTS);
        settle().await;
        let inspects = h.docker().inspects.load(Ordering::Relaxed);
        let attributes = HashMap::from([("signal".to_owned(), "15".to_owned())]);
        h.tx.send(Work::Event { action: "kill".into(), id: "a".into(), attributes }).unwrap();
        settle().await;
        assert!(!h.agent().holds("host1:a:80"));
        assert_eq!(h.docker().inspects.load(Ordering::Relaxed), inspects);
        h.stop().await;
    }
}
