//! What registrator knows, as one owned value, and every decision it makes,
//! as pure transitions: a Docker event or a look at a container changes what
//! is *wanted*; a look at the Consul agent changes what is *held*; [`State::plan`]
//! turns the difference into [`Op`]s, and [`State::on_outcome`] takes each
//! op's [`Outcome`] back. No I/O and no clock of its own (every transition is
//! given `now`), so the whole registrar is tested here without an engine or
//! an agent; `registrar.rs` is the thin loop that does the I/O around it.
//!
//! Failures are remembered, never spun on: a registration Consul refuses is
//! retried on its own with backoff (other services go on), an agent that does
//! not answer is retried with growing backoff and probed once per attempt,
//! and each change of either produces one [`Note`] for the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use consul::{AgentService, Registration};
use ops::Backoff;
use tokio::time::Instant;

use crate::container::Container;
use crate::report::{ContainerReport, Report, ServiceReport, Status};
use crate::service::{self, CONTAINER_META, OWNER_META, Rules};

pub type ContainerId = String;
pub type ServiceId = String;

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

/// A change to make at the Consul agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Register(Registration),
    Deregister {
        id: ServiceId,
        name: String,
    },
    /// Sets the Docker-health checks of a registration Consul already holds
    /// to Docker's verdict (after a full look, so a missed health event
    /// cannot leave a stale verdict).
    Refresh(Registration),
}

impl Op {
    pub fn service_id(&self) -> &str {
        match self {
            Op::Register(r) | Op::Refresh(r) => &r.id,
            Op::Deregister { id, .. } => id,
        }
    }
}

/// What became of an [`Op`] or a look at the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The agent answered and refused this request: retrying it at once
    /// would be refused again. `forbidden`: an ACL refusal.
    Refused {
        reason: String,
        forbidden: bool,
    },
    /// The agent did not answer (or is overloaded): nothing can be done
    /// until it does.
    Unreachable(String),
}

impl Outcome {
    /// Sorts a Consul error: an answer about this request is a refusal of
    /// it; no answer, or an answer about the agent's own state, is the
    /// agent being unreachable.
    pub fn of(result: Result<(), consul::Error>) -> Outcome {
        match result {
            Ok(()) => Outcome::Done,
            Err(e) if e.is_refusal() => Outcome::Refused { forbidden: e.is_forbidden(), reason: e.to_string() },
            Err(e) => Outcome::Unreachable(e.to_string()),
        }
    }
}

/// Something worth one log line: each is produced once per change, never
/// once per attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    Registered(Registration),
    Deregistered {
        id: ServiceId,
        name: String,
        stale: bool,
    },
    /// A container asks for something that cannot be registered (or its
    /// reasons changed); an empty list: its problems are gone.
    Problems {
        container: String,
        id: ContainerId,
        problems: Vec<String>,
        warnings: Vec<String>,
    },
    /// Consul refused a registration or deregistration. `reminder`: it still
    /// does (at most once a minute).
    Refused {
        id: ServiceId,
        name: String,
        reason: String,
        forbidden: bool,
        reminder: bool,
    },
    /// A refused service was finally accepted.
    Accepted {
        id: ServiceId,
        name: String,
    },
    ConsulDown {
        reason: String,
    },
    ConsulUp {
        down_for: Duration,
    },
    /// The agent no longer holds services registered earlier (restarted?).
    ConsulLost {
        count: usize,
    },
    DockerDown {
        reason: String,
    },
    DockerUp {
        down_for: Duration,
    },
    /// Refusals of changes no longer needed were forgotten; `left` remain.
    RefusalsDropped {
        left: usize,
    },
    /// A crashed container's services stay registered (`-deregister on-success`).
    Retained {
        container: ContainerId,
        exit_code: String,
    },
}

/// What Consul holds under an ID of ours, as far as we know.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Held {
    /// Exactly this, registered by this process.
    Ours(Registration),
    /// This, as the agent showed it (registered by an earlier run, or changed).
    Seen(AgentService),
}

impl Held {
    /// The container it was registered for (its `registrator_container` Meta).
    fn container(&self) -> Option<&str> {
        match self {
            Held::Ours(r) => r.meta.get(CONTAINER_META),
            Held::Seen(s) => s.meta.get(CONTAINER_META),
        }
        .map(String::as_str)
    }

    fn satisfies(&self, reg: &Registration) -> bool {
        match self {
            Held::Ours(r) => r == reg,
            // Registered again once: the agent does not show checks, so
            // what an earlier run (or version) set up is made ours.
            Held::Seen(_) => false,
        }
    }
}

/// A request Consul refused, waiting for its retry.
#[derive(Clone, Debug)]
struct Refusal {
    op: Op,
    reason: String,
    forbidden: bool,
    backoff: Backoff,
    retry_at: Instant,
    reminded_at: Instant,
}

/// Whether a dependency answers, and when to try it again if not.
#[derive(Clone, Debug)]
enum Link {
    /// `recent`: when it came back, and the backoff it had then, so that one
    /// that flaps (answers a look, then fails again) keeps its waits.
    Up {
        recent: Option<(Instant, Backoff)>,
    },
    Down {
        since: Instant,
        reason: String,
        backoff: Backoff,
        retry_at: Instant,
    },
}

/// A dependency that fails again within this long of coming back keeps its backoff.
const FLAP_WINDOW: Duration = Duration::from_secs(60);

impl Link {
    /// Marks a failed attempt; `true` when this is news (it was up).
    /// Several attempts that fail together count once.
    fn fail(&mut self, reason: &str, now: Instant, base: Duration, max: Duration) -> bool {
        match self {
            Link::Up { recent } => {
                let mut backoff = match recent.take() {
                    Some((at, backoff)) if now.saturating_duration_since(at) < FLAP_WINDOW => backoff,
                    _ => Backoff::new(base, max),
                };
                let retry_at = now + backoff.next_delay();
                *self = Link::Down { since: now, reason: reason.to_owned(), backoff, retry_at };
                true
            }
            Link::Down { backoff, retry_at, reason: why, .. } => {
                if now >= *retry_at {
                    *retry_at = now + backoff.next_delay();
                    reason.clone_into(why);
                }
                false
            }
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Link::Up { .. } => None,
            Link::Down { reason, .. } => Some(reason),
        }
    }

    /// Marks a success; how long it was down, when that is news.
    fn succeed(&mut self, now: Instant) -> Option<Duration> {
        match self {
            Link::Up { .. } => None,
            Link::Down { since, backoff, .. } => {
                let down_for = now.saturating_duration_since(*since);
                *self = Link::Up { recent: Some((now, backoff.clone())) };
                Some(down_for)
            }
        }
    }

    fn retry_at(&self) -> Option<Instant> {
        match self {
            Link::Up { .. } => None,
            Link::Down { retry_at, .. } => Some(*retry_at),
        }
    }

    fn may_try(&self, now: Instant) -> bool {
        self.retry_at().is_none_or(|at| now >= at)
    }
}

/// How refusals and outages are retried.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// First and longest wait before a refused request is tried again.
    pub refused_base: Duration,
    pub refused_max: Duration,
    /// A refusal that stands is logged again this often.
    pub remind_every: Duration,
    /// First and longest wait before an unreachable agent or engine is tried again.
    pub down_base: Duration,
    pub down_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            refused_base: Duration::from_secs(1),
            refused_max: Duration::from_secs(60),
            remind_every: Duration::from_secs(60),
            down_base: Duration::from_millis(200),
            down_max: Duration::from_secs(5),
        }
    }
}

/// What the report tells of a container registrator looked at.
#[derive(Clone, Debug)]
struct Seen {
    name: String,
    image: String,
    running: bool,
    /// What the rules skipped at the last look, and why
    /// ([`service::Desired::skipped`]).
    skipped: Vec<String>,
    /// How it stopped (or was asked to), once it did.
    stop: Option<Stopped>,
}

/// How a container registrator saw running stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Stopped {
    /// The stop signal Docker was asked to send it.
    signal: Option<String>,
    /// Its exit code, from the `die` event.
    exit_code: Option<String>,
    /// `seq` when it stopped running; `None` while it still runs.
    at: Option<u64>,
}

/// Containers that stopped are remembered (for the report) until removed,
/// at most this many (the latest to stop).
const STOPPED_KEPT: usize = 100;

/// Everything registrator knows and wants.
#[derive(Debug)]
pub struct State {
    rules: Rules,
    deregister: Deregister,
    timing: Timing,
    /// The services each container asks for, from the last look at it.
    wanted: HashMap<ContainerId, Vec<Registration>>,
    /// Containers asked to stop, and when: they want nothing until they
    /// start again (or are found running long after).
    stopping: BTreeMap<ContainerId, Instant>,
    /// Containers' own `STOPSIGNAL`s.
    stop_signals: HashMap<ContainerId, String>,
    /// Events taken so far, and the last one that touched each container.
    seq: u64,
    touched: HashMap<ContainerId, u64>,
    /// Whether every running container has been looked at once (nothing is
    /// planned before: an agent's services would look stale).
    docker_seen: bool,
    /// Crashed containers whose services stay (`-deregister on-success`).
    retained: BTreeSet<ContainerId>,
    /// Why the last look at each container could not register all it asked
    /// for, and what it changed (problems, then warnings).
    problems: HashMap<ContainerId, (Vec<String>, Vec<String>)>,
    /// Every container looked at (running, or stopped since), for the report.
    seen: HashMap<ContainerId, Seen>,
    /// What the agent holds under IDs that carry our owner mark.
    held: HashMap<ServiceId, Held>,
    refused: BTreeMap<ServiceId, Refusal>,
    consul: Link,
    docker: Link,
    /// Whether the agent has been looked at since start (nothing is removed before).
    consul_seen: bool,
    /// A look at Docker failed since the last full look.
    docker_needs_look: bool,
    /// The agent was unreachable since its last look: what it holds is
    /// looked at again before anything is planned.
    consul_stale: bool,
    notes: Vec<Note>,
}

impl State {
    pub fn new(rules: Rules, deregister: Deregister, timing: Timing) -> State {
        State {
            rules,
            deregister,
            timing,
            wanted: HashMap::new(),
            stopping: BTreeMap::new(),
            stop_signals: HashMap::new(),
            seq: 0,
            touched: HashMap::new(),
            docker_seen: false,
            retained: BTreeSet::new(),
            problems: HashMap::new(),
            seen: HashMap::new(),
            held: HashMap::new(),
            refused: BTreeMap::new(),
            consul: Link::Up { recent: None },
            docker: Link::Up { recent: None },
            consul_seen: false,
            docker_needs_look: false,
            consul_stale: false,
            notes: Vec::new(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The log lines the transitions since the last call produced.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// How many events were taken so far: a look started at `seq()` is stale
    /// for any container an event touched after it.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Forgets which events touched which container; call when no look
    /// started before now is still running.
    pub fn forget_touches(&mut self) {
        self.touched.clear();
    }

    fn fresh(&self, id: &str, since: u64) -> bool {
        self.touched.get(id).is_none_or(|&at| at <= since)
    }

    /// Follows a Docker event; `true` when the container must be looked at
    /// (inspected) to know what it wants now.
    pub fn on_event(&mut self, action: &str, id: &str, attributes: &HashMap<String, String>, now: Instant) -> bool {
        self.seq += 1;
        self.touched.insert(id.to_owned(), self.seq);
        match action {
            "start" | "unpause" | "restart" => {
                self.stopping.remove(id);
                self.retained.remove(id);
                true
            }
            "kill" if attributes.get("signal").is_some_and(|s| self.is_stop_signal(id, s)) => {
                // Out of the load balancer at once, while it drains; no
                // inspect (Docker holds inspects while it stops a container).
                self.stopping.insert(id.to_owned(), now);
                if let Some(seen) = self.seen.get_mut(id) {
                    // The first stop signal (`docker stop` follows with KILL when it times out).
                    let stop = seen.stop.get_or_insert_with(Stopped::default);
                    stop.signal = stop.signal.take().or_else(|| attributes.get("signal").cloned());
                }
                if !self.retained.contains(id) {
                    self.wanted.remove(id);
                }
                false
            }
            "die"
                if self.deregister == Deregister::OnSuccess
                    && !self.stopping.contains_key(id)
                    && crashed(attributes) =>
            {
                if self.wanted.get(id).is_some_and(|w| !w.is_empty()) {
                    self.retain(id, attributes.get("exitCode").cloned().unwrap_or_default());
                }
                self.stopped(id, attributes.get("exitCode").cloned());
                false
            }
            "die" => {
                // Not running any more: nothing to ask Docker (which may
                // hold the inspect while it finishes the stop); a restart
                // is its own `start`.
                self.stopping.remove(id);
                if !self.retained.contains(id) {
                    self.wanted.remove(id);
                }
                self.stopped(id, attributes.get("exitCode").cloned());
                false
            }
            "destroy" => {
                self.stopping.remove(id);
                self.retained.remove(id);
                self.wanted.remove(id);
                self.problems.remove(id);
                self.stop_signals.remove(id);
                self.seen.remove(id);
                false
            }
            "stop" | "pause" | "rename" | "health_status" | "connect" | "disconnect" => {
                !self.stopping.contains_key(id) && !self.retained.contains(id)
            }
            _ => false,
        }
    }

    /// SIGTERM, SIGKILL, SIGINT and SIGQUIT, or the container's own
    /// `STOPSIGNAL`, ask a container to go away.
    fn is_stop_signal(&self, id: &str, signal: &str) -> bool {
        let number = signal_number(signal);
        matches!(number, Some(15 | 9 | 2 | 3))
            || self.stop_signals.get(id).is_some_and(|own| number.is_some() && signal_number(own) == number)
    }

    /// Takes a look at one container, started when [`State::seq`] was
    /// `since`: `None` when it no longer exists. A look older than the
    /// container's last event is stale and left out.
    pub fn on_inspected(&mut self, id: &str, container: Option<&Container>, since: u64) {
        if !self.fresh(id, since) {
            return;
        }
        if container.is_none() {
            // Gone, whatever it was doing.
            self.stopping.remove(id);
            self.retained.remove(id);
            self.wanted.remove(id);
            self.problems.remove(id);
            self.stop_signals.remove(id);
            self.seen.remove(id);
            return;
        }
        if self.stopping.contains_key(id) || self.retained.contains(id) {
            return;
        }
        match container {
            Some(c) if self.keeps_crashed(c) => {
                self.retain(id, c.exit_code.unwrap_or_default().to_string());
                self.stopped(id, c.exit_code.map(|code| code.to_string()));
            }
            Some(c) => self.want(c),
            None => {}
        }
    }

    /// Remembers that a container stopped running (for the report), with
    /// its exit code when known; forgets the oldest of those stopped beyond
    /// [`STOPPED_KEPT`].
    fn stopped(&mut self, id: &str, exit_code: Option<String>) {
        let seq = self.seq;
        let Some(seen) = self.seen.get_mut(id) else { return };
        seen.running = false;
        // What the rules skipped while it ran no longer matters.
        seen.skipped.clear();
        let stop = seen.stop.get_or_insert_with(Stopped::default);
        stop.at = stop.at.or(Some(seq));
        if exit_code.is_some() {
            stop.exit_code = exit_code;
        }
        let mut stopped: Vec<(u64, &ContainerId)> = (self.seen.iter())
            .filter(|(id, _)| !self.retained.contains(*id))
            .filter_map(|(id, s)| s.stop.as_ref().and_then(|stop| stop.at).filter(|_| !s.running).map(|at| (at, id)))
            .collect();
        if stopped.len() > STOPPED_KEPT {
            stopped.sort();
            let forget: Vec<ContainerId> =
                stopped[..stopped.len() - STOPPED_KEPT].iter().map(|(_, id)| (*id).clone()).collect();
            for id in forget {
                self.seen.remove(&id);
            }
        }
    }

    /// Takes a look at every running container, started when [`State::seq`]
    /// was `since`: anything not among them (and not retained) wants
    /// nothing. Returns the containers to look at one by one: those an event
    /// touched since (the list is stale for them) and, under `-deregister
    /// on-success`, those registered and gone from the list (their exit code
    /// decides whether they crashed).
    pub fn on_snapshot(&mut self, containers: &[Container], since: u64, now: Instant) -> Vec<ContainerId> {
        self.docker_needs_look = false;
        self.docker_seen = true;
        let running: BTreeSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        let touched: Vec<ContainerId> =
            self.touched.iter().filter(|&(_, &at)| at > since).map(|(id, _)| id.clone()).collect();
        let stale = |id: &str| touched.iter().any(|t| t == id);
        // A crashed container found running again was restarted: it is no
        // longer kept as it was.
        self.retained.retain(|id| !running.contains(id.as_str()) || stale(id));
        let vanished: Vec<ContainerId> = (self.wanted.keys())
            .filter(|id| !running.contains(id.as_str()) && !self.retained.contains(*id) && !stale(id))
            .filter(|id| !self.stopping.contains_key(*id))
            .cloned()
            .collect();
        let look = if self.deregister == Deregister::OnSuccess { vanished } else { Vec::new() };
        self.wanted.retain(|id, _| {
            running.contains(id.as_str()) || self.retained.contains(id) || look.contains(id) || stale(id)
        });
        self.problems.retain(|id, _| running.contains(id.as_str()) || stale(id));
        let gone: Vec<ContainerId> = (self.seen.iter())
            .filter(|(id, seen)| seen.running && !running.contains(id.as_str()) && !stale(id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.stopped(&id, None);
        }
        // A container asked to stop that is gone from the list has stopped;
        // one still running long after was not stopping after all (a
        // thread dump on SIGQUIT, a TERM its process ignores).
        let grace = |c: &Container| STOP_GRACE.max(Duration::from_secs(c.stop_timeout.unwrap_or(0) + 10));
        self.stopping.retain(|id, since_kill| {
            let Some(c) = containers.iter().find(|c| &c.id == id) else { return stale(id) };
            stale(id) || now.saturating_duration_since(*since_kill) < grace(c)
        });
        for c in containers {
            self.on_inspected(&c.id, Some(c), since);
        }
        let mut look = look;
        look.extend(touched.into_iter().filter(|id| !self.stopping.contains_key(id)));
        look
    }

    /// Whether `c` is a container that crashed while registered, whose
    /// services stay under `-deregister on-success`.
    fn keeps_crashed(&self, c: &Container) -> bool {
        let code = c.exit_code.unwrap_or_default();
        self.deregister == Deregister::OnSuccess
            && !c.running
            && code != 0
            && code & 128 == 0
            && self.wanted.get(&c.id).is_some_and(|w| !w.is_empty())
    }

    fn retain(&mut self, id: &str, exit_code: String) {
        if self.retained.insert(id.to_owned()) {
            self.notes.push(Note::Retained { container: id.to_owned(), exit_code });
        }
    }

    fn want(&mut self, c: &Container) {
        match &c.stop_signal {
            Some(signal) => self.stop_signals.insert(c.id.clone(), signal.clone()),
            None => self.stop_signals.remove(&c.id),
        };
        let d = service::desired(c, &self.rules);
        let stop = self.seen.remove(&c.id).and_then(|s| s.stop).filter(|_| !c.running);
        let seen = Seen { name: c.name.clone(), image: c.image.clone(), running: true, skipped: Vec::new(), stop };
        self.seen.insert(c.id.clone(), seen);
        if !c.running {
            // Docker shows exit code 0 for a container that never exited (paused).
            let exited = matches!(c.status.as_str(), "exited" | "dead");
            self.stopped(&c.id, c.exit_code.filter(|_| exited).map(|code| code.to_string()));
        }
        if let Some(seen) = self.seen.get_mut(&c.id) {
            seen.skipped = d.skipped;
        }
        let now = (d.problems, d.warnings);
        let before = self.problems.get(&c.id).cloned().unwrap_or_default();
        if before != now {
            let (problems, warnings) = now.clone();
            self.notes.push(Note::Problems { container: c.name.clone(), id: c.id.clone(), problems, warnings });
        }
        if now.0.is_empty() && now.1.is_empty() {
            self.problems.remove(&c.id);
        } else {
            self.problems.insert(c.id.clone(), now);
        }
        if d.services.is_empty() {
            self.wanted.remove(&c.id);
        } else {
            self.wanted.insert(c.id.clone(), d.services);
        }
    }

    /// A look at Docker failed.
    pub fn on_docker_failed(&mut self, reason: String, now: Instant) {
        self.docker_needs_look = true;
        if self.docker.fail(&reason, now, self.timing.down_base, self.timing.down_max) {
            self.notes.push(Note::DockerDown { reason });
        }
    }

    /// A look at Docker worked.
    pub fn on_docker_answered(&mut self, now: Instant) {
        if let Some(down_for) = self.docker.succeed(now) {
            self.notes.push(Note::DockerUp { down_for });
        }
    }

    /// Whether every running container must be looked at (a look failed
    /// since the last full one), and Docker may be asked now.
    pub fn docker_look_due(&self, now: Instant) -> bool {
        self.docker_needs_look && self.docker.may_try(now)
    }

    /// Whether Docker may be asked now (it answers, or its retry is due).
    pub fn docker_may_try(&self, now: Instant) -> bool {
        self.docker.may_try(now)
    }

    /// Takes a look at the agent's services (ours are those with our owner mark).
    pub fn on_consul_services(&mut self, current: &HashMap<String, AgentService>, now: Instant) {
        self.consul_answered(now);
        self.consul_seen = true;
        self.consul_stale = false;
        let owner = &self.rules.owner;
        let mut lost = 0;
        let mut held = HashMap::new();
        for svc in current.values().filter(|s| s.meta.get(OWNER_META) == Some(owner)) {
            let entry = match self.held.remove(&svc.id) {
                Some(Held::Ours(reg)) if svc.matches(&reg) => Held::Ours(reg),
                _ => Held::Seen(svc.clone()),
            };
            held.insert(svc.id.clone(), entry);
        }
        lost += self.held.values().filter(|h| matches!(h, Held::Ours(_))).count();
        self.held = held;
        if lost > 0 {
            self.notes.push(Note::ConsulLost { count: lost });
        }
    }

    /// A look at the agent failed before it answered.
    pub fn on_consul_failed(&mut self, reason: String, now: Instant) {
        self.consul_stale = true;
        if self.consul.fail(&reason, now, self.timing.down_base, self.timing.down_max) {
            self.notes.push(Note::ConsulDown { reason });
        }
    }

    fn consul_answered(&mut self, now: Instant) {
        if let Some(down_for) = self.consul.succeed(now) {
            self.notes.push(Note::ConsulUp { down_for });
        }
    }

    /// Whether the agent may be asked now (it answers, or its retry is due).
    pub fn consul_may_try(&self, now: Instant) -> bool {
        self.consul.may_try(now)
    }

    /// Whether the agent was unreachable at the last attempt.
    pub fn consul_down(&self) -> bool {
        matches!(self.consul, Link::Down { .. })
    }

    /// Whether the agent must be looked at before planning: at start, and
    /// whenever it was unreachable (a probe, one request, before any op).
    pub fn consul_needs_look(&self) -> bool {
        !self.consul_seen || self.consul_down() || self.consul_stale
    }

    /// The changes that make the agent hold what is wanted, each at most
    /// once, skipping refused ones whose retry is not due. `refresh`: also
    /// set Docker-health checks of what is already held.
    pub fn plan(&self, now: Instant, refresh: bool) -> Vec<Op> {
        if !self.consul_seen || self.consul_down() || self.consul_stale || !self.docker_seen {
            return Vec::new();
        }
        let waiting = |op: &Op| self.refused.get(op.service_id()).is_some_and(|r| &r.op == op && now < r.retry_at);
        // A refused refresh is retried when due, refresh or not.
        let due_refresh =
            |op: &Op| matches!(op, Op::Refresh(_)) && self.refused.get(op.service_id()).is_some_and(|r| &r.op == op);
        let needed = self.needed(true);
        needed
            .into_iter()
            .filter(|op| (refresh || !matches!(op, Op::Refresh(_)) || due_refresh(op)) && !waiting(op))
            .collect()
    }

    /// Every change the agent needs, refused or not.
    fn needed(&self, refresh: bool) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut wanted_ids = BTreeSet::new();
        let mut wanted: Vec<(&ContainerId, &Registration)> =
            self.wanted.iter().flat_map(|(c, regs)| regs.iter().map(move |r| (c, r))).collect();
        wanted.sort_by(|a, b| (&a.1.id, a.0).cmp(&(&b.1.id, b.0)));
        for (_, reg) in wanted {
            if !wanted_ids.insert(reg.id.as_str()) {
                continue; // two containers claim one ID (SERVICE_ID): the lowest container ID's is registered
            }
            match self.held.get(&reg.id) {
                Some(h) if h.satisfies(reg) => {
                    let docker_health =
                        reg.checks.iter().any(|c| c.check_id.as_deref().is_some_and(service::is_docker_health));
                    if refresh && docker_health {
                        ops.push(Op::Refresh(reg.clone()));
                    }
                }
                _ => ops.push(Op::Register(reg.clone())),
            }
        }
        let mut stale: Vec<(&ServiceId, &Held)> =
            self.held.iter().filter(|(id, _)| !wanted_ids.contains(id.as_str())).collect();
        stale.sort_by(|a, b| a.0.cmp(b.0));
        for (id, held) in stale {
            let name = match held {
                Held::Ours(r) => r.name.clone(),
                Held::Seen(s) => s.service.clone(),
            };
            ops.push(Op::Deregister { id: id.clone(), name });
        }
        ops
    }

    /// Forgets refusals of changes no longer needed (the container changed
    /// or left, or someone fixed it at the agent), so nothing waits for them.
    pub fn prune_refused(&mut self) {
        let needed = self.needed(true);
        let before = self.refused.len();
        self.refused.retain(|id, r| needed.iter().any(|op| op.service_id() == id && *op == r.op));
        if self.refused.len() != before {
            self.notes.push(Note::RefusalsDropped { left: self.refused.len() });
        }
    }

    /// Takes the outcome of an op from [`State::plan`].
    pub fn on_outcome(&mut self, op: &Op, outcome: Outcome, now: Instant) {
        let id = op.service_id().to_owned();
        match outcome {
            Outcome::Done => {
                self.consul_answered(now);
                match op {
                    Op::Register(reg) => {
                        self.held.insert(id.clone(), Held::Ours(reg.clone()));
                        self.notes.push(Note::Registered(reg.clone()));
                    }
                    Op::Refresh(_) => {}
                    Op::Deregister { name, .. } => {
                        let stale = !matches!(self.held.get(&id), Some(Held::Ours(_)));
                        self.held.remove(&id);
                        self.notes.push(Note::Deregistered { id: id.clone(), name: name.clone(), stale });
                    }
                }
                if let Some(r) = self.refused.remove(&id) {
                    self.notes.push(Note::Accepted { id, name: op_name(&r.op) });
                }
            }
            Outcome::Refused { reason, forbidden } => {
                self.consul_answered(now);
                let timing = self.timing;
                let name = op_name(op);
                match self.refused.get_mut(&id) {
                    Some(r) if &r.op == op => {
                        r.retry_at = now + r.backoff.next_delay();
                        let changed = r.reason != reason;
                        let remind = now.saturating_duration_since(r.reminded_at) >= timing.remind_every;
                        if changed || remind {
                            r.reminded_at = now;
                            r.reason = reason.clone();
                            r.forbidden = forbidden;
                            self.notes.push(Note::Refused { id, name, reason, forbidden, reminder: !changed });
                        }
                    }
                    _ => {
                        let mut backoff = Backoff::new(timing.refused_base, timing.refused_max);
                        let retry_at = now + backoff.next_delay();
                        let refusal = Refusal {
                            op: op.clone(),
                            reason: reason.clone(),
                            forbidden,
                            backoff,
                            retry_at,
                            reminded_at: now,
                        };
                        self.refused.insert(id.clone(), refusal);
                        self.notes.push(Note::Refused { id, name, reason, forbidden, reminder: false });
                    }
                }
            }
            Outcome::Unreachable(reason) => self.on_consul_failed(reason, now),
        }
    }

    /// The earliest time something is due again (a refused op or an
    /// unreachable dependency), if anything waits.
    pub fn next_retry(&self) -> Option<Instant> {
        self.next_retry_but(&BTreeSet::new(), false, false)
    }

    /// [`State::next_retry`], leaving out what is being tried now: the
    /// services in `busy`, the agent while it is `probing`, Docker while it
    /// is `looking` (their retry times only move once they answer).
    pub fn next_retry_but(&self, busy: &BTreeSet<String>, probing: bool, looking: bool) -> Option<Instant> {
        // Refused ops wait while the agent is down: its probe comes first.
        let refused =
            (self.refused.iter()).filter(|(id, _)| !self.consul_down() && !busy.contains(*id)).map(|(_, r)| r.retry_at);
        let consul = self.consul.retry_at().filter(|_| !probing);
        let docker = self.docker.retry_at().filter(|_| self.docker_needs_look && !looking);
        refused.chain(consul).chain(docker).min()
    }

    /// Services Consul refuses now, with the reason: for `/health` and `/metrics`.
    pub fn refusals(&self) -> Vec<(ServiceId, String)> {
        self.refused.iter().map(|(id, r)| (id.clone(), r.reason.clone())).collect()
    }

    /// How many services the agent holds for us.
    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Why registrator is not working now, if it is not: an unreachable
    /// agent or engine, or an ACL refusal (the token is missing or lacks
    /// permission; nothing else will be registered either).
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(why) = self.consul.reason() {
            return Some(format!("Consul agent unreachable: {why}"));
        }
        if let Some(why) = self.docker.reason() {
            return Some(format!("Docker engine unreachable: {why}"));
        }
        self.refused.values().find(|r| r.forbidden).map(|r| format!("Consul refuses the ACL token: {}", r.reason))
    }

    /// What registrator did with each container it looked at, and why
    /// (`/containers`, `registrator explain`): the services each asks for,
    /// where each stands with Consul, and in plain words why nothing (or
    /// less than asked for) is registered. `now` dates the retries.
    pub fn report(&self, now: Instant) -> Report {
        // The container whose registration each service ID gets: the lowest
        // container ID among those asking for it, as in `needed`.
        let mut owners: BTreeMap<&str, &ContainerId> = BTreeMap::new();
        for (cid, regs) in &self.wanted {
            for reg in regs {
                let owner = owners.entry(reg.id.as_str()).or_insert(cid);
                if cid < *owner {
                    *owner = cid;
                }
            }
        }
        let mut containers: Vec<ContainerReport> = (self.seen.iter())
            .map(|(id, seen)| ContainerReport {
                id: id.clone(),
                short_id: id.chars().take(12).collect(),
                name: seen.name.clone(),
                image: seen.image.clone(),
                running: seen.running,
                services: self.services_of(id, &owners, now),
                reasons: self.reasons_of(id, seen),
            })
            .collect();
        containers.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        Report { complete: self.docker_seen, unhealthy: self.unhealthy(), containers }
    }

    /// The services container `id` asks for, then those Consul still holds
    /// for it that it no longer asks for, each with its status.
    fn services_of(&self, id: &str, owners: &BTreeMap<&str, &ContainerId>, now: Instant) -> Vec<ServiceReport> {
        let mut out: Vec<ServiceReport> = (self.wanted.get(id).into_iter().flatten())
            .map(|reg| {
                let (status, reason) = match owners.get(reg.id.as_str()) {
                    Some(owner) if owner.as_str() != id => {
                        let name = self.seen.get(*owner).map_or(owner.as_str(), |s| s.name.as_str());
                        (
                            Status::Duplicate,
                            Some(format!(
                                "container {name} asks for the same service ID, and its registration is the one \
                                 registered (the lowest container ID wins); set another SERVICE_ID"
                            )),
                        )
                    }
                    _ => self.status_of(reg, now),
                };
                let (id, name, address, port, tags) =
                    (reg.id.clone(), reg.name.clone(), reg.address.clone(), reg.port, reg.tags.clone());
                ServiceReport { id, name, address, port, tags, status, reason }
            })
            .collect();
        let mut leaving: Vec<(&ServiceId, &Held)> = (self.held.iter())
            .filter(|(sid, held)| held.container() == Some(id) && !owners.contains_key(sid.as_str()))
            .collect();
        leaving.sort_by(|a, b| a.0.cmp(b.0));
        for (sid, held) in leaving {
            let (status, reason) = match self.refused.get(sid) {
                Some(r) if matches!(r.op, Op::Deregister { .. }) => (Status::Refused, Some(refusal(r, now))),
                _ => (Status::Leaving, Some("the container no longer asks for it".to_owned())),
            };
            let (name, address, port, tags) = match held {
                Held::Ours(r) => (r.name.clone(), r.address.clone(), r.port, r.tags.clone()),
                Held::Seen(s) => (s.service.clone(), s.address.clone(), s.port, s.tags.clone()),
            };
            out.push(ServiceReport { id: sid.clone(), name, address, port, tags, status, reason });
        }
        out
    }

    /// Where a wanted registration stands with Consul, and what to say of it.
    fn status_of(&self, reg: &Registration, now: Instant) -> (Status, Option<String>) {
        let held = self.held.get(&reg.id);
        let refused = self.refused.get(&reg.id);
        match refused {
            Some(r) if r.op == Op::Register(reg.clone()) => return (Status::Refused, Some(refusal(r, now))),
            Some(r) if r.op == Op::Refresh(reg.clone()) => {
                let why = format!("but its Docker-health check could not be set: {}", refusal(r, now));
                return (Status::Registered, Some(why));
            }
            _ => {}
        }
        if let Some(why) = self.consul.reason() {
            return match held {
                Some(h) if h.satisfies(reg) => (
                    Status::Registered,
                    Some(format!("at the last look; the Consul agent does not answer now ({why})")),
                ),
                _ => (
                    Status::Waiting,
                    Some(format!("the Consul agent does not answer ({why}): registered once it does")),
                ),
            };
        }
        if !self.consul_seen || !self.docker_seen {
            let why = "registrator has not looked at the Consul agent and every container yet";
            return (Status::Pending, Some(why.to_owned()));
        }
        match held {
            Some(h) if h.satisfies(reg) => (Status::Registered, None),
            Some(Held::Seen(_)) => (
                Status::Registered,
                Some("as an earlier run of registrator left it; registered again to make it this run's".to_owned()),
            ),
            Some(Held::Ours(_)) => (Status::Pending, Some("changed: to be registered again".to_owned())),
            None => (Status::Pending, Some("to be registered".to_owned())),
        }
    }

    /// Why container `id` registers nothing or less than it asks for, in
    /// plain words: how it stopped, what the rules skipped or refused, and
    /// what they changed.
    fn reasons_of(&self, id: &str, seen: &Seen) -> Vec<String> {
        let mut out = Vec::new();
        let stop = seen.stop.as_ref();
        let code = stop.and_then(|s| s.exit_code.as_deref());
        let signal = stop.and_then(|s| s.signal.as_deref());
        if self.retained.contains(id) {
            out.push(format!(
                "the container crashed (exit code {}): its services stay registered, their checks failing, \
                 until it is removed or restarted (-deregister on-success)",
                code.unwrap_or("unknown")
            ));
        } else if !seen.running {
            let exit = code.map(|c| format!(", exit code {c}")).unwrap_or_default();
            match (signal, code) {
                (Some(signal), _) => out.push(format!(
                    "the container was stopped (signal {signal}{exit}): only running containers are registered \
                     (any services it had left Consul as soon as it was asked to stop)"
                )),
                (None, Some(code)) => out.push(format!(
                    "the container exited (code {code}): only running containers are registered \
                     (any services it had were deregistered)"
                )),
                (None, None) if seen.skipped.is_empty() => out.push(
                    "the container is no longer running: only running containers are registered \
                     (any services it had were deregistered)"
                        .to_owned(),
                ),
                (None, None) => {}
            }
        } else if let Some(signal) = signal {
            out.push(format!(
                "Docker was asked to stop the container (signal {signal}): its services left Consul at once, \
                 and come back if it keeps running or starts again"
            ));
        }
        out.extend(seen.skipped.iter().cloned());
        if seen.running {
            if let Some((problems, warnings)) = self.problems.get(id) {
                out.extend(problems.iter().cloned());
                out.extend(warnings.iter().cloned());
            }
        }
        out
    }
}

/// A refusal in words: Consul's reason and when it is tried again.
fn refusal(r: &Refusal, now: Instant) -> String {
    let acl = if r.forbidden { " (the ACL token is missing or lacks permission)" } else { "" };
    let wait = r.retry_at.saturating_duration_since(now);
    let when = if wait.is_zero() { "now".to_owned() } else { format!("in {} s", wait.as_secs().max(1)) };
    format!("Consul refused it{acl}: {}; tried again {when}", r.reason)
}

fn op_name(op: &Op) -> String {
    match op {
        Op::Register(r) | Op::Refresh(r) => r.name.clone(),
        Op::Deregister { name, .. } => name.clone(),
    }
}

/// Whether a `die` event tells of a crash: a non-zero exit code that is not
/// a death by signal (128 + n, e.g. 137 for an OOM kill), as Go
/// Registrator's `-deregister on-success` reads it.
fn crashed(attributes: &HashMap<String, String>) -> bool {
    attributes.get("exitCode").and_then(|c| c.parse::<i64>().ok()).is_some_and(|code| code != 0 && code & 128 == 0)
}

/// How long a container asked to stop may keep running before it is taken
/// for one that is not stopping (at least; its stop timeout + 10 s if longer).
const STOP_GRACE: Duration = Duration::from_secs(60);

/// A signal's number from Docker's forms: `15`, `SIGTERM` or `TERM`.
fn signal_number(signal: &str) -> Option<i32> {
    let s = signal.trim();
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") { name } else { format!("SIG{name}") };
    name.parse::<nix::sys::signal::Signal>().ok().map(|sig| sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::CONTAINER_META;

    use crate::container::NetworkAddress;
    use crate::testing::{NET, container};

    fn rules() -> Rules {
        Rules { owner: "host1".into(), own_networks: vec![NET.into()], ..Rules::default() }
    }

    fn state() -> State {
        State::new(rules(), Deregister::Always, Timing::default())
    }

    fn agent_service(reg: &Registration) -> AgentService {
        AgentService::from(reg)
    }

    fn registers(ops: &[Op]) -> Vec<&str> {
        ops.iter().filter_map(|op| if let Op::Register(r) = op { Some(r.id.as_str()) } else { None }).collect()
    }

    fn deregisters(ops: &[Op]) -> Vec<&str> {
        ops.iter().filter_map(|op| if let Op::Deregister { id, .. } = op { Some(id.as_str()) } else { None }).collect()
    }

    /// Carries out every planned op successfully.
    fn apply_all(s: &mut State, now: Instant) -> Vec<Op> {
        let ops = s.plan(now, false);
        for op in &ops {
            s.on_outcome(op, Outcome::Done, now);
        }
        ops
    }

    fn ready(now: Instant, containers: &[Container]) -> State {
        let mut s = state();
        s.on_snapshot(containers, s.seq(), Instant::now());
        s.on_consul_services(&HashMap::new(), now);
        s
    }

    #[test]
    fn nothing_is_planned_before_the_agent_was_looked_at() {
        let now = Instant::now();
        let mut s = state();
        s.on_snapshot(&[container("a", "hello")], s.seq(), Instant::now());
        assert!(s.plan(now, false).is_empty());
        assert!(s.consul_needs_look());
        s.on_consul_services(&HashMap::new(), now);
        assert_eq!(registers(&s.plan(now, false)), ["host1:a:80"]);
    }

    #[test]
    fn a_registration_done_is_not_planned_again_and_is_noted_once() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        assert_eq!(apply_all(&mut s, now).len(), 1);
        assert!(s.plan(now, false).is_empty());
        let notes = s.take_notes();
        assert!(matches!(&notes[..], [Note::Registered(r)] if r.name == "hello"), "{notes:?}");
    }

    #[test]
    fn what_an_earlier_run_registered_is_registered_again_once_and_removed_when_not_wanted() {
        let now = Instant::now();
        let a = container("a", "hello");
        let reg = service::desired(&a, &rules()).services.remove(0);
        let mut stale = agent_service(&reg);
        stale.id = "host1:gone:80".into();
        stale.meta.insert(CONTAINER_META.into(), "gone".into());
        let mut theirs = stale.clone();
        theirs.id = "host2:x:80".into();
        theirs.meta.insert(OWNER_META.into(), "host2".into());
        let current: HashMap<_, _> =
            [agent_service(&reg), stale, theirs].into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut s = state();
        s.on_snapshot(&[a], s.seq(), Instant::now());
        s.on_consul_services(&current, now);
        let ops = s.plan(now, false);
        assert_eq!(registers(&ops), ["host1:a:80"], "registered again once, its checks made ours");
        assert_eq!(deregisters(&ops), ["host1:gone:80"], "only our own stale service goes");
        apply_all(&mut s, now);
        assert!(s.plan(now, false).is_empty());
    }

    #[test]
    fn a_stop_signal_deregisters_without_an_inspect_until_the_container_starts_again() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        apply_all(&mut s, now);
        let term = HashMap::from([("signal".to_owned(), "15".to_owned())]);
        assert!(!s.on_event("kill", "a", &term, Instant::now()), "no inspect while Docker stops it");
        assert_eq!(deregisters(&s.plan(now, false)), ["host1:a:80"]);
        apply_all(&mut s, now);
        // Events while it stops change nothing, and a full look does not bring it back.
        assert!(!s.on_event("stop", "a", &HashMap::new(), Instant::now()));
        s.on_snapshot(&[container("a", "hello")], s.seq(), Instant::now());
        assert!(s.plan(now, false).is_empty());
        assert!(!s.on_event("die", "a", &HashMap::new(), Instant::now()));
        assert!(s.on_event("start", "a", &HashMap::new(), Instant::now()));
        s.on_inspected("a", Some(&container("a", "hello")), s.seq());
        assert_eq!(registers(&s.plan(now, false)), ["host1:a:80"]);
    }

    #[test]
    fn a_kill_that_is_not_a_stop_signal_changes_nothing() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        apply_all(&mut s, now);
        let hup = HashMap::from([("signal".to_owned(), "1".to_owned())]);
        assert!(!s.on_event("kill", "a", &hup, Instant::now()));
        assert!(s.plan(now, false).is_empty());
    }

    #[test]
    fn on_success_keeps_a_crashed_container_until_it_is_destroyed() {
        let now = Instant::now();
        let mut s = State::new(rules(), Deregister::OnSuccess, Timing::default());
        s.on_snapshot(&[container("a", "hello"), container("b", "ok")], s.seq(), Instant::now());
        s.on_consul_services(&HashMap::new(), now);
        apply_all(&mut s, now);
        let crashed = HashMap::from([("exitCode".to_owned(), "3".to_owned())]);
        let clean = HashMap::from([("exitCode".to_owned(), "0".to_owned())]);
        assert!(!s.on_event("die", "a", &crashed, Instant::now()));
        assert!(!s.on_event("die", "b", &clean, Instant::now()), "a death needs no inspect");
        s.on_inspected("b", None, s.seq());
        s.on_snapshot(&[], s.seq(), Instant::now());
        assert_eq!(deregisters(&s.plan(now, false)), ["host1:b:80"], "the crashed one stays");
        apply_all(&mut s, now);
        assert!(!s.on_event("destroy", "a", &HashMap::new(), Instant::now()));
        assert_eq!(deregisters(&s.plan(now, false)), ["host1:a:80"]);
        assert!(s.take_notes().iter().any(|n| matches!(n, Note::Retained { container, .. } if container == "a")));
    }

    #[test]
    fn on_success_looks_at_a_container_gone_from_the_list_before_its_die_event() {
        let now = Instant::now();
        let mut s = State::new(rules(), Deregister::OnSuccess, Timing::default());
        s.on_snapshot(&[container("a", "hello"), container("b", "ok"), container("c", "oom")], s.seq(), Instant::now());
        s.on_consul_services(&HashMap::new(), now);
        apply_all(&mut s, now);
        let mut look = s.on_snapshot(&[], s.seq(), Instant::now());
        look.sort();
        assert_eq!(look, ["a", "b", "c"], "exit codes decide");
        assert!(s.plan(now, false).is_empty(), "nothing goes before the look");
        let exited = |id: &str, code: i64| Container { running: false, exit_code: Some(code), ..container(id, "x") };
        s.on_inspected("a", Some(&exited("a", 3)), s.seq());
        s.on_inspected("b", Some(&exited("b", 0)), s.seq());
        s.on_inspected("c", Some(&exited("c", 137)), s.seq());
        let mut gone = deregisters(&s.plan(now, false)).into_iter().map(str::to_owned).collect::<Vec<_>>();
        gone.sort();
        assert_eq!(gone, ["host1:b:80", "host1:c:80"], "a crash stays; a clean exit and a kill by signal go");
        let always = &mut state();
        always.on_snapshot(&[container("a", "hello")], always.seq(), Instant::now());
        assert!(always.on_snapshot(&[], always.seq(), Instant::now()).is_empty(), "-deregister always needs no look");
    }

    #[test]
    fn a_restart_keeps_what_an_earlier_run_registered_until_docker_was_looked_at() {
        let now = Instant::now();
        let a = container("a", "hello");
        let reg = service::desired(&a, &rules()).services.remove(0);
        let current: HashMap<_, _> = [(reg.id.clone(), agent_service(&reg))].into();
        let mut s = state();
        // The agent answers first: nothing is planned, above all no deregistration.
        s.on_consul_services(&current, now);
        assert!(s.plan(now, false).is_empty());
        s.on_snapshot(&[a], s.seq(), now);
        // Registered again once (its checks made ours), never removed.
        assert_eq!(registers(&s.plan(now, false)), ["host1:a:80"]);
        assert!(deregisters(&s.plan(now, false)).is_empty());
    }

    #[test]
    fn a_look_older_than_an_event_does_not_undo_it() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        apply_all(&mut s, now);
        // A full look starts; meanwhile "b" starts and is inspected.
        let since = s.seq();
        assert!(s.on_event("start", "b", &HashMap::new(), now));
        s.on_inspected("b", Some(&container("b", "other")), s.seq());
        assert_eq!(registers(&apply_all(&mut s, now)), ["host1:b:80"]);
        // The look's list, taken before "b" started, lacks it: "b" stays,
        // and is looked at again.
        let look = s.on_snapshot(&[container("a", "hello")], since, now);
        assert_eq!(look, ["b"]);
        assert!(s.plan(now, false).is_empty(), "{:?}", s.plan(now, false));
        // An inspect that started before a destroy is stale.
        let before = s.seq();
        assert!(!s.on_event("destroy", "b", &HashMap::new(), now));
        s.on_inspected("b", Some(&container("b", "other")), before);
        assert_eq!(deregisters(&s.plan(now, false)), ["host1:b:80"]);
    }

    #[test]
    fn a_container_still_running_long_after_a_stop_signal_is_registered_again() {
        let t0 = Instant::now();
        let mut s = ready(t0, &[container("a", "hello")]);
        apply_all(&mut s, t0);
        let quit = HashMap::from([("signal".to_owned(), "3".to_owned())]);
        s.on_event("kill", "a", &quit, t0);
        apply_all(&mut s, t0);
        s.on_snapshot(&[container("a", "hello")], s.seq(), t0 + Duration::from_secs(30));
        assert!(s.plan(t0, false).is_empty(), "still within its grace");
        let later = t0 + STOP_GRACE + Duration::from_secs(1);
        s.on_snapshot(&[container("a", "hello")], s.seq(), later);
        assert_eq!(registers(&s.plan(later, false)), ["host1:a:80"], "a thread dump, not a stop");
    }

    #[test]
    fn a_containers_own_stop_signal_is_a_stop() {
        let now = Instant::now();
        let mut c = container("a", "hello");
        c.stop_signal = Some("SIGWINCH".into());
        let mut s = ready(now, std::slice::from_ref(&c));
        apply_all(&mut s, now);
        let winch = HashMap::from([("signal".to_owned(), "28".to_owned())]);
        assert!(!s.on_event("kill", "a", &winch, now));
        assert_eq!(deregisters(&s.plan(now, false)), ["host1:a:80"]);
        assert_eq!(signal_number("TERM"), Some(15));
        assert_eq!(signal_number("sigkill"), Some(9));
        assert_eq!(signal_number("nonsense"), None);
    }

    #[test]
    fn a_retained_crash_found_running_again_follows_the_container_again() {
        let now = Instant::now();
        let mut s = State::new(rules(), Deregister::OnSuccess, Timing::default());
        s.on_snapshot(&[container("a", "hello")], s.seq(), now);
        s.on_consul_services(&HashMap::new(), now);
        apply_all(&mut s, now);
        let crashed = HashMap::from([("exitCode".to_owned(), "3".to_owned())]);
        s.on_event("die", "a", &crashed, now);
        s.forget_touches();
        // Its restart was missed (a gap in the event stream): a full look
        // finds it running with another address.
        let mut moved = container("a", "hello");
        moved.networks.get_mut(crate::testing::NET).unwrap().ipv4 = Some("172.20.0.9".parse().unwrap());
        s.on_snapshot(&[moved], s.seq(), now);
        let ops = s.plan(now, false);
        assert!(matches!(&ops[..], [Op::Register(r)] if r.address == "172.20.0.9"), "{ops:?}");
        // And a retained container found gone is deregistered.
        apply_all(&mut s, now);
        s.on_event("die", "a", &crashed, now);
        s.on_inspected("a", None, s.seq());
        assert_eq!(deregisters(&s.plan(now, false)), ["host1:a:80"]);
    }

    #[test]
    fn two_containers_claiming_one_id_always_give_it_to_the_same_one() {
        let now = Instant::now();
        for order in [["x", "y"], ["y", "x"]] {
            let cs: Vec<Container> = order
                .iter()
                .map(|id| {
                    let mut c = container(id, "hello");
                    c.env.insert("SERVICE_ID".into(), "shared".into());
                    c.networks.get_mut(crate::testing::NET).unwrap().ipv4 =
                        Some(if *id == "x" { "172.20.0.1" } else { "172.20.0.2" }.parse().unwrap());
                    c
                })
                .collect();
            let s = ready(now, &cs);
            let ops = s.plan(now, false);
            assert!(matches!(&ops[..], [Op::Register(r)] if r.address == "172.20.0.1"), "{ops:?}");
        }
    }

    #[test]
    fn a_refused_refresh_is_retried_when_due_and_never_spins() {
        let now = Instant::now();
        let mut c = container("a", "hello");
        c.health = Some("healthy".into());
        let mut s = ready(now, std::slice::from_ref(&c));
        apply_all(&mut s, now);
        let refresh = s.plan(now, true);
        s.on_outcome(&refresh[0], Outcome::Refused { reason: "403".into(), forbidden: true }, now);
        let due = s.next_retry().unwrap();
        assert!(due > now);
        assert!(s.plan(now, false).is_empty());
        assert!(matches!(&s.plan(due, false)[..], [Op::Refresh(_)]), "retried when due without a full look");
        s.on_outcome(&refresh[0], Outcome::Refused { reason: "403".into(), forbidden: true }, due);
        assert!(s.next_retry().unwrap() > due, "the next retry moves on");
    }

    #[test]
    fn an_agent_that_flaps_keeps_its_waits_and_is_looked_at_after_each_outage() {
        let t0 = Instant::now();
        let mut s = ready(t0, &[container("a", "hello")]);
        let mut now = t0;
        for _ in 0..4 {
            s.on_consul_failed("503".into(), now);
            now = s.next_retry().unwrap();
        }
        let wait_before = s.next_retry().unwrap() - t0;
        // An op that was in flight succeeds: the agent answers, but what it
        // holds is looked at before anything else is planned.
        s.on_outcome(&Op::Deregister { id: "x".into(), name: "x".into() }, Outcome::Done, now);
        assert!(!s.consul_down() && s.consul_needs_look());
        assert!(s.plan(now, false).is_empty());
        // It fails again at once: the waits go on growing, not from the start.
        s.on_consul_failed("503".into(), now);
        let wait = s.next_retry().unwrap() - now;
        assert!(wait >= Duration::from_millis(1600), "{wait:?} after {wait_before:?}");
    }

    #[test]
    fn a_refused_registration_waits_for_its_retry_and_others_go_on() {
        let t0 = Instant::now();
        let mut s = ready(t0, &[container("a", "hello"), container("b", "other")]);
        let ops = s.plan(t0, false);
        assert_eq!(ops.len(), 2);
        let refused = Outcome::Refused { reason: "Invalid check".into(), forbidden: false };
        s.on_outcome(&ops[0], refused.clone(), t0);
        s.on_outcome(&ops[1], Outcome::Done, t0);
        assert!(s.plan(t0, false).is_empty(), "not again at once");
        assert!(s.plan(t0, true).is_empty(), "not on a full look either");
        let retry = s.next_retry().expect("a retry is due later");
        assert!(retry > t0 && retry <= t0 + Timing::default().refused_base);
        assert_eq!(registers(&s.plan(retry, false)), ["host1:a:80"]);
        assert_eq!(s.refusals().len(), 1);
        assert_eq!(s.unhealthy(), None, "one refused service is not an unhealthy registrator");

        // Retried for ten minutes: one log line, then a reminder a minute at most.
        let mut now = retry;
        let mut tries = 0;
        let mut tries_after_first_minute = 0;
        while now < t0 + Duration::from_secs(600) {
            for op in s.plan(now, false) {
                tries += 1;
                if now > t0 + Duration::from_secs(120) {
                    tries_after_first_minute += 1;
                }
                s.on_outcome(&op, refused.clone(), now);
            }
            now = s.next_retry().unwrap();
        }
        let notes = s.take_notes();
        let refusals: Vec<_> = notes.iter().filter(|n| matches!(n, Note::Refused { .. })).collect();
        let first = refusals.iter().filter(|n| matches!(n, Note::Refused { reminder: false, .. })).count();
        assert_eq!(first, 1, "{refusals:?}");
        assert!(refusals.len() <= 11, "at most one reminder a minute: {}", refusals.len());
        // After the first minute the backoff is 30–60 s: at most 2 a minute.
        assert!(tries_after_first_minute <= 2 * 8 + 1, "{tries_after_first_minute} tries in 8 minutes");
        assert!(tries < 40, "{tries}");

        // A changed request is news: tried at once, logged once.
        let mut changed = container("a", "hello");
        changed.env.insert("SERVICE_TAGS".into(), "v2".into());
        s.on_inspected("a", Some(&changed), s.seq());
        assert_eq!(registers(&s.plan(now, false)), ["host1:a:80"]);
    }

    #[test]
    fn a_refusal_is_forgotten_when_the_container_leaves() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        let ops = s.plan(now, false);
        s.on_outcome(&ops[0], Outcome::Refused { reason: "no".into(), forbidden: false }, now);
        assert!(s.next_retry().is_some());
        assert!(!s.on_event("destroy", "a", &HashMap::new(), Instant::now()));
        s.prune_refused();
        assert_eq!(s.next_retry(), None, "nothing waits for a container that is gone");
        assert!(s.refusals().is_empty());
    }

    #[test]
    fn an_acl_refusal_makes_registrator_unhealthy() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        let ops = s.plan(now, false);
        s.on_outcome(&ops[0], Outcome::Refused { reason: "403 Permission denied".into(), forbidden: true }, now);
        assert!(s.unhealthy().is_some_and(|why| why.contains("ACL") && why.contains("403")));
    }

    #[test]
    fn an_unreachable_agent_is_one_note_down_and_one_up_and_is_probed_on_backoff() {
        let t0 = Instant::now();
        let mut s = ready(t0, &[container("a", "hello"), container("b", "other")]);
        let ops = s.plan(t0, false);
        for op in &ops {
            s.on_outcome(op, Outcome::Unreachable("connection refused".into()), t0);
        }
        assert!(s.consul_down() && s.consul_needs_look());
        assert!(s.plan(t0, false).is_empty(), "nothing is sent to an agent that does not answer");
        assert!(!s.consul_may_try(t0));
        assert!(s.unhealthy().is_some_and(|why| why.contains("unreachable")));
        // Probed for a minute: the waits grow.
        let mut now = t0;
        let mut probes = 0;
        let mut last_wait = Duration::ZERO;
        while now < t0 + Duration::from_secs(60) {
            now = s.next_retry().unwrap();
            assert!(s.consul_may_try(now));
            s.on_consul_failed("connection refused".into(), now);
            let wait = s.next_retry().unwrap() - now;
            assert!(wait >= last_wait / 2, "{wait:?} after {last_wait:?}");
            last_wait = wait;
            probes += 1;
        }
        assert!(probes <= 25, "{probes} probes in a minute");
        assert!(last_wait >= Duration::from_millis(2500), "{last_wait:?}");
        s.on_consul_services(&HashMap::new(), now);
        assert_eq!(registers(&s.plan(now, false)).len(), 2);
        let notes = s.take_notes();
        let down = notes.iter().filter(|n| matches!(n, Note::ConsulDown { .. })).count();
        let up = notes.iter().filter(|n| matches!(n, Note::ConsulUp { .. })).count();
        assert_eq!((down, up), (1, 1), "{notes:?}");
    }

    #[test]
    fn an_agent_that_lost_our_services_gets_them_again() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        apply_all(&mut s, now);
        s.on_consul_services(&HashMap::new(), now);
        assert_eq!(registers(&s.plan(now, false)), ["host1:a:80"]);
        assert!(s.take_notes().iter().any(|n| matches!(n, Note::ConsulLost { count: 1 })));
    }

    #[test]
    fn problems_are_noted_once_per_change() {
        let now = Instant::now();
        let mut bad = container("a", "hello");
        bad.env.insert("SERVICE_CHECK_INTERVAL".into(), "soon".into());
        bad.env.insert("SERVICE_CHECK_HTTP".into(), "/".into());
        let mut s = ready(now, std::slice::from_ref(&bad));
        s.on_snapshot(std::slice::from_ref(&bad), s.seq(), Instant::now());
        s.on_inspected("a", Some(&bad), s.seq());
        let notes = s.take_notes();
        assert_eq!(notes.iter().filter(|n| matches!(n, Note::Problems { .. })).count(), 1, "{notes:?}");
        s.on_inspected("a", Some(&container("a", "hello")), s.seq());
        assert!(matches!(&s.take_notes()[..], [Note::Problems { problems, .. }] if problems.is_empty()));
    }

    #[test]
    fn refresh_sets_docker_health_of_what_is_held() {
        let now = Instant::now();
        let mut c = container("a", "hello");
        c.health = Some("healthy".into());
        let mut s = ready(now, std::slice::from_ref(&c));
        apply_all(&mut s, now);
        assert!(s.plan(now, false).is_empty());
        assert!(matches!(&s.plan(now, true)[..], [Op::Refresh(r)] if r.id == "host1:a:80"));
    }

    /// The report's entry for container `id`.
    fn entry(s: &State, id: &str) -> ContainerReport {
        let report = s.report(Instant::now());
        report.containers.into_iter().find(|c| c.id == id).unwrap_or_else(|| panic!("no {id} in the report"))
    }

    fn statuses(c: &ContainerReport) -> Vec<(&str, Status)> {
        c.services.iter().map(|s| (s.id.as_str(), s.status)).collect()
    }

    #[test]
    fn the_report_shows_what_is_registered_and_every_container_seen() {
        let now = Instant::now();
        let mut s = state();
        assert!(!s.report(now).complete, "nothing looked at yet");
        let mut unnamed = container("b", "x");
        unnamed.env.clear();
        let mut ignored = container("c", "x");
        ignored.labels.insert("SERVICE_IGNORE".into(), "true".into());
        s.on_snapshot(&[container("a", "hello"), unnamed, ignored], s.seq(), now);
        let a = entry(&s, "a");
        assert_eq!(statuses(&a), [("host1:a:80", Status::Pending)]);
        assert!(a.services[0].reason.as_deref().is_some_and(|r| r.contains("not looked at the Consul agent")));
        s.on_consul_services(&HashMap::new(), now);
        assert_eq!(statuses(&entry(&s, "a")), [("host1:a:80", Status::Pending)]);
        apply_all(&mut s, now);
        let report = s.report(now);
        assert!(report.complete && report.unhealthy.is_none());
        assert_eq!(report.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        let a = &report.containers[0];
        assert_eq!((a.short_id.as_str(), a.image.as_str(), a.running), ("a", "hello", true));
        let svc = &a.services[0];
        assert_eq!((svc.name.as_str(), svc.address.as_str(), svc.port), ("hello", "172.20.0.5", 80));
        assert_eq!((svc.status, svc.reason.as_deref()), (Status::Registered, None));
        assert!(a.reasons.is_empty(), "{:?}", a.reasons);
        // No SERVICE_NAME, SERVICE_IGNORE: nothing registered, and why.
        assert!(report.containers[1].services.is_empty());
        assert_eq!(report.containers[1].reasons, [service::NO_SERVICE_NAME]);
        assert_eq!(report.containers[2].reasons, ["SERVICE_IGNORE=\"true\": the container asks not to be registered"]);
    }

    #[test]
    fn the_report_gives_the_rules_refusals_and_changes() {
        let now = Instant::now();
        let mut unreachable = container("a", "hello/v1");
        unreachable.networks = [("bridge".to_owned(), NetworkAddress::default())].into();
        unreachable.networks.get_mut("bridge").unwrap().ipv4 = Some("172.17.0.2".parse().unwrap());
        let mut renamed = container("b", "hello/v1");
        renamed.ports.push(crate::container::Port { number: 443, udp: false });
        renamed.env.insert("SERVICE_443_IGNORE".into(), "1".into());
        let s = ready(now, &[unreachable, renamed]);
        let a = entry(&s, "a");
        assert!(a.services.is_empty());
        assert!(a.reasons[0].starts_with("port 80: unreachable: not published"), "{:?}", a.reasons);
        let b = entry(&s, "b");
        assert_eq!(b.services.len(), 1);
        assert_eq!(
            b.reasons,
            [
                "port 443: SERVICE_443_IGNORE is set: this port asks not to be registered",
                "port 80: service name \"hello/v1\" registered as \"hello-v1\" (DNS-safe)",
            ]
        );
    }

    #[test]
    fn the_report_gives_consuls_reason_for_a_refusal_and_when_it_is_tried_again() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        let ops = s.plan(now, false);
        let refused = Outcome::Refused {
            reason: "Unexpected response code: 400 (Scripts are disabled)".into(),
            forbidden: false,
        };
        s.on_outcome(&ops[0], refused, now);
        let svc = &s.report(now).containers[0].services[0];
        assert_eq!(svc.status, Status::Refused);
        let why = svc.reason.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("Consul refused it: Unexpected response code: 400 (Scripts are disabled); tried again in "),
            "{why}"
        );
        let due = s.next_retry().unwrap();
        assert!(
            s.report(due).containers[0].services[0].reason.as_deref().unwrap_or_default().ends_with("tried again now")
        );
        let acl = Outcome::Refused { reason: "403 (Permission denied)".into(), forbidden: true };
        s.on_outcome(&ops[0], acl, now);
        let report = s.report(now);
        assert!(report.containers[0].services[0].reason.as_deref().unwrap_or_default().contains("ACL token"));
        assert!(report.unhealthy.is_some_and(|u| u.contains("ACL")));
    }

    #[test]
    fn the_report_says_when_the_agent_does_not_answer() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        apply_all(&mut s, now);
        s.on_inspected("b", Some(&container("b", "other")), s.seq());
        s.on_consul_failed("connection refused".into(), now);
        let report = s.report(now);
        assert!(report.unhealthy.as_deref().is_some_and(|u| u.contains("connection refused")));
        let a = &report.containers[0].services[0];
        assert_eq!(a.status, Status::Registered, "as of the last look");
        assert!(a.reason.as_deref().is_some_and(|r| r.contains("does not answer now")), "{a:?}");
        let b = &report.containers[1].services[0];
        assert_eq!(b.status, Status::Waiting);
        assert!(b.reason.as_deref().is_some_and(|r| r.contains("registered once it does")), "{b:?}");
    }

    #[test]
    fn the_report_names_the_container_a_duplicate_service_id_went_to() {
        let now = Instant::now();
        let claim = |id: &str| {
            let mut c = container(id, "hello");
            c.env.insert("SERVICE_ID".into(), "shared".into());
            c
        };
        let mut s = ready(now, &[claim("x"), claim("y")]);
        apply_all(&mut s, now);
        assert_eq!(statuses(&entry(&s, "x")), [("shared", Status::Registered)]);
        let y = entry(&s, "y");
        assert_eq!(statuses(&y), [("shared", Status::Duplicate)]);
        assert_eq!(
            y.services[0].reason.as_deref(),
            Some(
                "container x asks for the same service ID, and its registration is the one registered (the lowest \
                 container ID wins); set another SERVICE_ID"
            )
        );
    }

    #[test]
    fn the_report_says_how_a_container_stopped() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello"), container("b", "other"), container("c", "third")]);
        apply_all(&mut s, now);
        // docker stop: asked, its service leaves at once, then it exits.
        let term = HashMap::from([("signal".to_owned(), "15".to_owned())]);
        s.on_event("kill", "a", &term, now);
        let a = entry(&s, "a");
        assert!(a.running);
        assert_eq!(statuses(&a), [("host1:a:80", Status::Leaving)]);
        assert!(a.reasons[0].starts_with("Docker was asked to stop the container (signal 15)"), "{:?}", a.reasons);
        apply_all(&mut s, now);
        assert!(entry(&s, "a").services.is_empty(), "deregistered");
        s.on_event("die", "a", &HashMap::from([("exitCode".to_owned(), "143".to_owned())]), now);
        let a = entry(&s, "a");
        assert!(!a.running);
        assert_eq!(
            a.reasons,
            ["the container was stopped (signal 15, exit code 143): only running containers are registered (any \
              services it had left Consul as soon as it was asked to stop)"]
        );
        // An exit of its own.
        s.on_event("die", "b", &HashMap::from([("exitCode".to_owned(), "3".to_owned())]), now);
        assert!(entry(&s, "b").reasons[0].starts_with("the container exited (code 3): only running containers"));
        // Gone from a full look, its events missed.
        s.on_snapshot(&[], s.seq(), now);
        let c = entry(&s, "c");
        assert!(!c.running);
        assert!(c.reasons[0].starts_with("the container is no longer running"), "{:?}", c.reasons);
        // Removed: no longer in the report.
        s.on_event("destroy", "a", &HashMap::new(), now);
        s.on_inspected("b", None, s.seq());
        let names: Vec<String> = s.report(now).containers.into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["c"]);
    }

    #[test]
    fn the_report_says_a_paused_container_is_not_running() {
        let now = Instant::now();
        let mut s = ready(now, &[container("a", "hello")]);
        apply_all(&mut s, now);
        let paused =
            Container { running: false, status: "paused".into(), exit_code: Some(0), ..container("a", "hello") };
        assert!(s.on_event("pause", "a", &HashMap::new(), now));
        s.on_inspected("a", Some(&paused), s.seq());
        let a = entry(&s, "a");
        assert_eq!(a.reasons, ["the container is not running (paused): only running containers are registered"]);
        assert_eq!(statuses(&a), [("host1:a:80", Status::Leaving)]);
    }

    #[test]
    fn the_report_says_a_crashed_container_keeps_its_services_under_on_success() {
        let now = Instant::now();
        let mut s = State::new(rules(), Deregister::OnSuccess, Timing::default());
        s.on_snapshot(&[container("a", "hello")], s.seq(), now);
        s.on_consul_services(&HashMap::new(), now);
        apply_all(&mut s, now);
        s.on_event("die", "a", &HashMap::from([("exitCode".to_owned(), "3".to_owned())]), now);
        let a = entry(&s, "a");
        assert!(!a.running);
        assert_eq!(statuses(&a), [("host1:a:80", Status::Registered)]);
        assert!(a.reasons[0].starts_with("the container crashed (exit code 3): its services stay registered"));
    }

    #[test]
    fn the_report_remembers_a_bounded_number_of_stopped_containers() {
        let now = Instant::now();
        let all: Vec<Container> = (0..STOPPED_KEPT + 10).map(|i| container(&format!("c{i:04}"), "x")).collect();
        let mut s = ready(now, &all);
        for c in &all {
            s.on_event("die", &c.id, &HashMap::new(), now);
        }
        let report = s.report(now);
        assert_eq!(report.containers.len(), STOPPED_KEPT);
        assert_eq!(report.containers[0].name, "c0010", "the latest to stop are kept");
    }

    #[test]
    fn the_report_shows_what_an_earlier_run_left_as_registered() {
        let now = Instant::now();
        let a = container("a", "hello");
        let reg = service::desired(&a, &rules()).services.remove(0);
        let current: HashMap<_, _> = [(reg.id.clone(), agent_service(&reg))].into();
        let mut s = state();
        s.on_snapshot(&[a], s.seq(), now);
        s.on_consul_services(&current, now);
        let svc = &entry(&s, "a").services[0];
        assert_eq!(svc.status, Status::Registered);
        assert!(svc.reason.as_deref().is_some_and(|r| r.contains("earlier run")), "{svc:?}");
    }
}
