//! The apply loop: waits for Consul's state to settle ([`settle`]), renders
//! the catalog, and applies it as pure functions decide from what is in
//! force and what is wanted ([`first_step`], [`after_runtime`],
//! [`file_step`]): nothing; instances through HAProxy's runtime API, the
//! file written right after (a change the file cannot follow is taken
//! back); or a structural change checked with `haproxy -c`, renamed into
//! place and reloaded (retried with backoff until HAProxy runs it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ops::Backoff;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::haproxy::{Haproxy, HaproxyError};
use crate::metrics::{BackendLabel, KindLabel, Metrics};
use crate::model::{self, Catalog, Config, Stats};
use crate::render::{RenderError, Renderer};
use crate::slots::Slots;

/// Settings of the apply loop and the template data that are not Consul's.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Quiescence: apply once no change came for `wait_min`, or at the
    /// latest `wait_max` after the first unapplied change.
    pub wait_min: Duration,
    pub wait_max: Duration,
    pub bind: String,
    pub http_port: u16,
    pub stats_port: u16,
    pub stats_enabled: bool,
    pub runtime_socket: PathBuf,
    pub hard_stop_after: String,
    pub template_name: String,
    /// Server slots every backend has at least (instances beyond it cost a reload).
    pub min_slots: usize,
    /// Shell command run instead of a master CLI reload (`--command`).
    pub reload_command: Option<String>,
    /// HAProxy is run by someone else (`--external`).
    pub external: bool,
    /// Service that gets requests no route matches (`--default-service`).
    pub default_service: Option<String>,
    /// Whether instance changes may use the runtime API (`--apply runtime`).
    pub runtime_api: bool,
    /// JSON access logs on HAProxy's standard output (`--access-log`).
    pub access_log: bool,
    /// The HTTPS frontend (`--https-port`, `--certs`), when TLS is on.
    pub https: Option<model::Https>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Haproxy(#[from] HaproxyError),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// What one apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The rendered text equals what is in force: nothing done.
    Unchanged,
    /// Written and checked; HAProxy was not running, so nothing to reload.
    Written,
    /// Instances changed through the runtime API (no reload), and written.
    Runtime,
    /// Written, checked and reloaded.
    Reloaded,
}

impl Applied {
    fn kind(self) -> &'static str {
        match self {
            Applied::Runtime => "runtime",
            _ => "reload",
        }
    }
}

/// A configuration ready to apply: the template's service data laid out on
/// server slots, its structure (the same with every slot free) and the slot
/// layout. The template is fixed for the life of the process, so equal data
/// renders equal text: comparing data decides runtime or reload without
/// rendering anything.
#[derive(Clone, Debug)]
pub struct Plan {
    services: Vec<Arc<model::Service>>,
    skeleton: Vec<Arc<model::Service>>,
    slots: Slots,
}

/// Renders and applies configurations for one HAProxy.
pub struct Applier {
    pub haproxy: Haproxy,
    renderer: Renderer,
    opts: SyncOptions,
    metrics: Metrics,
    /// The text of the configuration file.
    file_text: Option<String>,
    /// The service data, structure and slot layout HAProxy runs with.
    in_force: Option<Vec<Arc<model::Service>>>,
    skeleton_in_force: Option<Vec<Arc<model::Service>>>,
    slots: Slots,
    /// The file changed but HAProxy has not loaded it yet.
    reload_pending: bool,
    cache: model::Cache,
    /// When the last apply reached HAProxy (runtime commands answered or
    /// reload confirmed), for latency figures.
    effective_at: Option<Instant>,
    /// Where each plan's routes report goes (the admin endpoint's `/routes`).
    board: Option<crate::routes::Board>,
}

impl Applier {
    pub fn new(haproxy: Haproxy, renderer: Renderer, opts: SyncOptions, metrics: Metrics) -> Self {
        Self {
            haproxy,
            renderer,
            opts,
            metrics,
            file_text: None,
            in_force: None,
            skeleton_in_force: None,
            slots: Slots::default(),
            reload_pending: false,
            cache: model::Cache::default(),
            effective_at: None,
            board: None,
        }
    }

    /// Publishes each plan's routes report on `board`.
    pub fn with_board(mut self, board: crate::routes::Board) -> Self {
        self.board = Some(board);
        self
    }

    /// Tells the routes page what an apply did (`Ok(None)`: nothing to do).
    pub fn tell_board(&self, outcome: Result<Option<&str>, String>) {
        if let Some(board) = &self.board {
            board.applied(outcome);
        }
    }

    /// The configuration for `catalog`, laid out on the slots in force.
    /// Services that cannot be routed safely are left out and logged.
    pub fn plan(&mut self, catalog: &Catalog) -> Result<Plan, RenderError> {
        let (services, mut skipped, warnings) = model::services_cached(catalog, &mut self.cache);
        let (services, taken) = model::reserve_ports(services, &self.reserved_ports());
        skipped.extend(taken);
        let (services, unbindable) = self.bindable(services);
        skipped.extend(unbindable);
        for s in &skipped {
            warn!(service = %s.service, reason = %s.reason, "service not routed");
        }
        for w in warnings {
            warn!(service = %w.service, warning = %w.reason, "setting refused; its default applies");
        }
        let (slots, services) = self.slots.layout(&services, self.opts.min_slots);
        if let Some(board) = &self.board {
            board.planned(catalog, &services, skipped);
        }
        let skeleton = slots.skeleton().to_vec();
        Ok(Plan { services, skeleton, slots })
    }

    /// The configuration text of `plan`.
    pub fn text(&self, plan: &Plan) -> Result<String, RenderError> {
        self.renderer.render(&self.config(plan.services.clone()))
    }

    fn config(&self, services: Vec<Arc<model::Service>>) -> Config {
        let default_backend = self
            .opts
            .default_service
            .as_deref()
            .and_then(|name| services.iter().find(|s| s.name == name && s.tcp_port.is_none()))
            .map_or_else(|| "no_route".to_owned(), |s| s.backend.clone());
        Config {
            default_backend,
            services,
            bind: self.opts.bind.clone(),
            http_port: self.opts.http_port,
            stats: Stats { enabled: self.opts.stats_enabled, port: self.opts.stats_port },
            runtime_socket: self.opts.runtime_socket.display().to_string(),
            hard_stop_after: self.opts.hard_stop_after.clone(),
            template: self.opts.template_name.clone(),
            access_log: self.opts.access_log,
            https: self.opts.https.clone(),
        }
    }

    /// Takes out the TCP services whose port HAProxy could not listen on
    /// here (another program holds it, or it is privileged): the reload
    /// would fail for every service. Only ports HAProxy does not already
    /// serve are tried, and only when HAProxy runs beside haproxy-sync (not
    /// with `--command`, where it may run elsewhere).
    fn bindable(&self, services: Vec<Arc<model::Service>>) -> (Vec<Arc<model::Service>>, Vec<model::Skipped>) {
        if self.opts.reload_command.is_some() {
            return (services, Vec::new());
        }
        let serving: Vec<u16> = self.in_force.iter().flatten().filter_map(|s| s.tcp_port).collect();
        let mut skipped = Vec::new();
        let kept = services
            .into_iter()
            .filter(|s| match s.tcp_port.filter(|p| !serving.contains(p)) {
                None => true,
                Some(port) => match crate::haproxy::can_bind(&self.opts.bind, port) {
                    Ok(()) => true,
                    Err(e) => {
                        skipped.push(model::Skipped {
                            service: s.name.clone(),
                            reason: format!("{} {port} cannot be listened on here: {e}", model::keys::PORT),
                        });
                        false
                    }
                },
            })
            .collect();
        (kept, skipped)
    }

    /// The ports of HAProxy's own frontends, which no TCP service may take.
    fn reserved_ports(&self) -> Vec<u16> {
        let mut ports = vec![self.opts.http_port];
        if self.opts.stats_enabled {
            ports.push(self.opts.stats_port);
        }
        ports.extend(self.opts.https.as_ref().map(|h| h.port));
        ports
    }

    /// Adopts the configuration file already on disk if HAProxy accepts it,
    /// so a restart serves the last applied state before Consul answers.
    /// With HAProxy `running`, the file may be ahead of it (the process
    /// before this one stopped between a write and its reload): it is
    /// loaded at the next apply.
    pub async fn adopt_existing(&mut self, running: bool) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.haproxy.config) else { return false };
        match self.haproxy.check(&self.haproxy.config).await {
            Ok(()) => {
                self.file_text = Some(text);
                self.reload_pending = running;
                true
            }
            Err(e) => {
                warn!(error = %e, "ignoring the configuration on disk");
                false
            }
        }
    }

    /// Applies `plan`, as [`first_step`], [`after_runtime`] and
    /// [`file_step`] decide: when only instances changed and HAProxy runs,
    /// through the runtime API, then the file is written for restarts;
    /// otherwise the text is checked with HAProxy, written atomically (a text
    /// HAProxy refuses is never written) and, when `running`, reloaded. A
    /// plan equal to what is in force is not applied again; a failed reload
    /// is retried.
    pub async fn apply(&mut self, plan: Plan, running: bool) -> Result<Applied, ApplyError> {
        let commands = self.slots.commands_to(&plan.slots);
        let facts = Facts {
            same_services: self.in_force.as_ref() == Some(&plan.services),
            same_skeleton: self.skeleton_in_force.as_ref() == Some(&plan.skeleton),
            has_commands: commands.is_some(),
            runtime_api: self.opts.runtime_api,
            running,
            reload_pending: self.reload_pending,
        };
        match first_step(facts) {
            First::Nothing => return Ok(Applied::Unchanged),
            First::File => {}
            First::Runtime => {
                let commands = commands.unwrap_or_default();
                let runtime = self.haproxy.runtime(&self.opts.runtime_socket, &commands).await;
                if runtime.is_ok() {
                    // HAProxy has the change now; the file follows.
                    self.effective_at = Some(Instant::now());
                }
                // For restarts: the file says what the runtime now does.
                let written = match &runtime {
                    Ok(()) => Some(match self.text(&plan) {
                        Ok(text) => self.write_checked(&text).await.map(|()| text),
                        Err(e) => Err(e.into()),
                    }),
                    Err(_) => None,
                };
                let outcome = match (&runtime, &written) {
                    (Err(_), _) => RuntimeOutcome::Refused,
                    (Ok(()), Some(Ok(_))) => RuntimeOutcome::Applied,
                    (Ok(()), _) => RuntimeOutcome::FileFailed,
                };
                match after_runtime(outcome) {
                    Then::Done => {
                        debug!(commands = commands.len(), "instances changed through the runtime API");
                        if let Some(Ok(text)) = written {
                            self.file_text = Some(text);
                        }
                        self.slots = plan.slots;
                        self.in_force = Some(plan.services);
                        return Ok(Applied::Runtime);
                    }
                    Then::UseFile => {
                        // HAProxy runs each command of a batch on its own:
                        // one refused, the others may be in force, which no
                        // file says. Until a reload, the file is not what runs.
                        self.reload_pending = true;
                        self.metrics.runtime_failures.inc();
                        if let Err(e) = runtime {
                            warn!(error = %e, "runtime API change failed; reloading instead");
                        }
                    }
                    Then::Undo => {
                        let Some(Err(e)) = written else { unreachable!("an undo follows a failed write") };
                        // HAProxy runs the change, the file does not say it:
                        // take the change back so that a restart of HAProxy
                        // runs what runs now; Consul's next change retries.
                        let back = plan.slots.commands_to(&self.slots).unwrap_or_default();
                        let undone = self.haproxy.runtime(&self.opts.runtime_socket, &back).await;
                        if after_undo(undone.is_ok()) == Then::ReloadFileInForce {
                            error!("cannot take the runtime change back; reloading the file in force");
                            self.reload_pending = true;
                            if self.load_file().await.is_ok() {
                                self.reload_pending = false;
                            }
                        }
                        error!(error = %e, "the file could not be written after a runtime change, which was taken back");
                        return Err(e);
                    }
                    Then::ReloadFileInForce => unreachable!("only after an undo"),
                }
            }
        }
        let text = self.text(&plan)?;
        let step = file_step(self.file_text.as_deref() == Some(text.as_str()), self.reload_pending, running);
        if let FileStep::Load { write: true } | FileStep::Leave { write: true } = step {
            if let Err(e) = self.write_checked(&text).await {
                if self.reload_pending && running {
                    // HAProxy may run what no file says (a runtime batch
                    // refused part-way): back to the file in force.
                    error!(error = %e, "the new configuration cannot be written; reloading the file in force");
                    if self.load_file().await.is_ok() {
                        self.reload_pending = false;
                    }
                }
                return Err(e);
            }
            self.file_text = Some(text);
            self.reload_pending = true;
        }
        self.adopt(plan);
        match step {
            FileStep::Adopt => Ok(Applied::Unchanged),
            FileStep::Leave { .. } => {
                // HAProxy is not running: it reads the file when it starts. One
                // run by someone else may have read it before this write, and
                // reloads once it answers.
                self.reload_pending = self.opts.external;
                Ok(Applied::Written)
            }
            FileStep::Load { .. } => {
                if let Err(e) = self.load_file().await {
                    self.metrics.reload_failures.inc();
                    return Err(e.into());
                }
                self.effective_at = Some(Instant::now());
                self.reload_pending = false;
                Ok(Applied::Reloaded)
            }
        }
    }

    /// Makes HAProxy load the file on disk: the user's `--command`, else a
    /// reload through the master CLI.
    async fn load_file(&self) -> Result<(), HaproxyError> {
        match &self.opts.reload_command {
            Some(command) => run_command(command).await,
            None => self.haproxy.reload().await,
        }
    }

    /// Marks the file on disk as not yet loaded: HAProxy (re)started while
    /// it was being written, and may have read the one before.
    pub fn mark_reload_pending(&mut self) {
        self.reload_pending = true;
    }

    /// Checks `text` with `haproxy -c` and renames it into place; a text
    /// HAProxy refuses is kept beside it as `.rejected` and goes no further.
    async fn write_checked(&self, text: &str) -> Result<(), ApplyError> {
        let path = &self.haproxy.config;
        let candidate = sibling(path, ".candidate");
        write(&candidate, text)?;
        if let Err(e) = self.haproxy.check(&candidate).await {
            self.metrics.check_failures.inc();
            let _ = std::fs::rename(&candidate, sibling(path, ".rejected"));
            return Err(e.into());
        }
        std::fs::rename(&candidate, path)
            .map_err(|source| ApplyError::Write { path: path.display().to_string(), source })
    }

    fn adopt(&mut self, plan: Plan) {
        self.skeleton_in_force = Some(plan.skeleton);
        self.in_force = Some(plan.services);
        self.slots = plan.slots;
    }

    /// Whether the file holds a change HAProxy has not loaded.
    pub fn reload_pending(&self) -> bool {
        self.reload_pending
    }

    /// Counts an apply that started at `started`; returns its latency: until
    /// HAProxy had the change (the file may be written after).
    fn observe(&self, applied: Applied, started: Instant) -> Duration {
        let latency = self.effective_at.filter(|t| *t >= started).unwrap_or_else(Instant::now) - started;
        let kind = KindLabel { kind: applied.kind() };
        self.metrics.applies.get_or_create(&kind).inc();
        self.metrics.apply_seconds.get_or_create(&kind).observe(latency.as_secs_f64());
        self.metrics.mark_applied();
        self.metrics.servers.clear();
        for (backend, n) in self.slots.active() {
            self.metrics.servers.get_or_create(&BackendLabel { backend: backend.to_owned() }).set(ops::gauge_value(n));
        }
        latency
    }
}

/// What an apply is decided on: facts about what is in force and what is
/// wanted, none of them I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The plan's services are those in force.
    pub same_services: bool,
    /// The plan's structure is the one in force (only slots differ).
    pub same_skeleton: bool,
    /// The runtime API can take the slots in force to the plan's.
    pub has_commands: bool,
    /// `--apply runtime`.
    pub runtime_api: bool,
    /// HAProxy runs.
    pub running: bool,
    /// The file holds a change HAProxy has not loaded.
    pub reload_pending: bool,
}

/// The first step of an apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First {
    /// The plan is in force.
    Nothing,
    /// Change the instances through the runtime API, then write the file.
    Runtime,
    /// Through the file (render, check, write, load).
    File,
}

/// Decides the first step: the runtime API only when HAProxy runs what the
/// file says (nothing pending), the structure is the same and commands
/// exist for the difference.
pub fn first_step(f: Facts) -> First {
    if f.same_services && !f.reload_pending {
        First::Nothing
    } else if f.runtime_api && f.running && !f.reload_pending && f.same_skeleton && f.has_commands {
        First::Runtime
    } else {
        First::File
    }
}

/// How a runtime API change went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeOutcome {
    /// HAProxy took every command and the file now says the same.
    Applied,
    /// HAProxy refused a command (or did not answer).
    Refused,
    /// HAProxy took the change, but the file could not be rendered or
    /// written (or `haproxy -c` refused it).
    FileFailed,
}

/// What follows a runtime API change or its undoing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Done,
    /// Apply through the file instead.
    UseFile,
    /// Take the runtime change back, so that HAProxy runs what the file says.
    Undo,
    /// The undo failed too: reload HAProxy on the file in force.
    ReloadFileInForce,
}

/// Keeps the invariant that the file describes what HAProxy runs: a runtime
/// change the file cannot follow is taken back.
pub fn after_runtime(outcome: RuntimeOutcome) -> Then {
    match outcome {
        RuntimeOutcome::Applied => Then::Done,
        RuntimeOutcome::Refused => Then::UseFile,
        RuntimeOutcome::FileFailed => Then::Undo,
    }
}

/// After taking a runtime change back: done, or a reload on the file.
pub fn after_undo(undone: bool) -> Then {
    if undone { Then::Done } else { Then::ReloadFileInForce }
}

/// What the file path does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStep {
    /// The file already says this and HAProxy runs it: adopt the plan.
    Adopt,
    /// HAProxy does not run: write (if the text changed) for its start.
    Leave { write: bool },
    /// Write (if the text changed) and reload.
    Load { write: bool },
}

/// Decides the file path from whether the text equals the file's, whether
/// a reload is pending and whether HAProxy runs.
pub fn file_step(same_text: bool, reload_pending: bool, running: bool) -> FileStep {
    match (same_text && !reload_pending, running) {
        (true, _) => FileStep::Adopt,
        (false, false) => FileStep::Leave { write: !same_text },
        (false, true) => FileStep::Load { write: !same_text },
    }
}

/// Runs the user's `--command` with `sh -c`; a non-zero exit is a failed reload.
async fn run_command(command: &str) -> Result<(), HaproxyError> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|source| HaproxyError::Spawn { bin: "sh".into(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        let mut msg = format!("`{command}` exited with {}: ", out.status);
        msg.push_str(String::from_utf8_lossy(&out.stderr).trim());
        Err(HaproxyError::Reload(msg))
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn write(path: &Path, text: &str) -> Result<(), ApplyError> {
    use std::io::Write;
    let err = |source| ApplyError::Write { path: path.display().to_string(), source };
    let mut f = std::fs::File::create(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Waits for the next batch of changes on `rx`: the first change, then
/// until `min` passes with no further change or `max` since the first.
/// `false` when the sender is gone.
pub async fn settle(rx: &mut watch::Receiver<Option<Catalog>>, min: Duration, max: Duration) -> bool {
    if rx.changed().await.is_err() {
        return false;
    }
    let deadline = Instant::now() + max;
    loop {
        let quiet = (Instant::now() + min).min(deadline);
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return false },
            _ = tokio::time::sleep_until(quiet) => return true,
        }
        if Instant::now() >= deadline {
            return true;
        }
    }
}

/// Applies every settled catalog until `shutdown`. A failed apply keeps the
/// configuration in force; it is retried with backoff, except a
/// configuration `haproxy -c` refuses, which waits for Consul's next change.
pub async fn run(
    mut applier: Applier,
    mut rx: watch::Receiver<Option<Catalog>>,
    mut haproxy_ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let (min, max) = (applier.opts.wait_min, applier.opts.wait_max);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut retry = false;
    loop {
        if !retry {
            let pending = applier.reload_pending();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                more = settle(&mut rx, min, max) => if !more { return },
                // HAProxy (re)started: load what was written while it was down.
                Ok(()) = haproxy_ready.changed(), if pending => {
                    if !*haproxy_ready.borrow_and_update() { continue }
                }
            }
        }
        let Some(catalog) = rx.borrow_and_update().clone() else { continue };
        let started = Instant::now();
        let planned = match applier.plan(&catalog) {
            Ok(plan) => plan,
            Err(e) => {
                error!(error = %e, "render failed; the configuration in force stays");
                retry = false;
                continue;
            }
        };
        let plan_ms = started.elapsed().as_secs_f64() * 1e3;
        let running = *haproxy_ready.borrow();
        match applier.apply(planned, running).await {
            Ok(Applied::Unchanged) => {
                retry = false;
                applier.tell_board(Ok(None));
            }
            // Written for an HAProxy that was not running, which started
            // meanwhile and may have read the file before: load it.
            Ok(Applied::Written) if !running && *haproxy_ready.borrow() => {
                applier.mark_reload_pending();
                retry = true;
            }
            Ok(applied) => {
                retry = false;
                backoff.reset();
                let latency = applier.observe(applied, started);
                applier.tell_board(Ok(Some(match applied {
                    Applied::Runtime => "instances changed through the runtime API",
                    Applied::Reloaded => "reloaded",
                    _ => "written",
                })));
                info!(
                    ?applied,
                    services = catalog.services.len(),
                    plan_ms,
                    effective_ms = latency.as_secs_f64() * 1e3,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "configuration applied"
                );
            }
            Err(ApplyError::Haproxy(e @ HaproxyError::Invalid(_))) => {
                error!(error = %e, "HAProxy refused the new configuration; the one in force stays");
                applier.tell_board(Err(format!("HAProxy refused the new configuration: {e}")));
                retry = false;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = ops::millis(delay), "apply failed; retrying");
                applier.tell_board(Err(format!("{e} (retrying)")));
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
                retry = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends a change on `tx` at each of `at` (ms after the start).
    fn changes_at(tx: watch::Sender<Option<Catalog>>, at: Vec<u64>) -> tokio::task::JoinHandle<()> {
        let t0 = Instant::now();
        tokio::spawn(async move {
            for ms in at {
                tokio::time::sleep_until(t0 + Duration::from_millis(ms)).await;
                tx.send_modify(|c| *c = Some(Catalog::default()));
            }
            // Keep the sender until the test is done with it.
            std::future::pending::<()>().await;
        })
    }

    #[tokio::test(start_paused = true)]
    async fn quiescence_waits_for_a_quiet_spell_after_the_last_change() {
        let (tx, mut rx) = watch::channel(None);
        let t0 = Instant::now();
        let task = changes_at(tx, vec![100, 110, 130]);
        assert!(settle(&mut rx, Duration::from_millis(25), Duration::from_millis(250)).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(155), "25 ms after the last change");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn quiescence_ends_at_max_however_busy_consul_is() {
        let (tx, mut rx) = watch::channel(None);
        let t0 = Instant::now();
        let task = changes_at(tx, (0..100).map(|i| 50 + i * 10).collect());
        assert!(settle(&mut rx, Duration::from_millis(25), Duration::from_millis(250)).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(300), "250 ms after the first change");
        // The change made as the first batch closed opens the next one.
        assert!(settle(&mut rx, Duration::from_millis(25), Duration::from_millis(250)).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(550));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn quiescence_ends_when_the_watch_is_gone() {
        let (tx, mut rx) = watch::channel::<Option<Catalog>>(None);
        drop(tx);
        assert!(!settle(&mut rx, Duration::from_millis(25), Duration::from_millis(250)).await);
    }

    const BASE: Facts = Facts {
        same_services: false,
        same_skeleton: true,
        has_commands: true,
        runtime_api: true,
        running: true,
        reload_pending: false,
    };

    #[test]
    fn the_runtime_api_is_used_only_when_haproxy_runs_what_the_file_says_and_the_structure_stays() {
        assert_eq!(first_step(BASE), First::Runtime);
        assert_eq!(first_step(Facts { same_services: true, ..BASE }), First::Nothing);
        // A pending reload: even the same services go through the file.
        assert_eq!(first_step(Facts { same_services: true, reload_pending: true, ..BASE }), First::File);
        assert_eq!(first_step(Facts { reload_pending: true, ..BASE }), First::File);
        assert_eq!(first_step(Facts { same_skeleton: false, ..BASE }), First::File);
        assert_eq!(first_step(Facts { has_commands: false, ..BASE }), First::File);
        assert_eq!(first_step(Facts { runtime_api: false, ..BASE }), First::File);
        assert_eq!(first_step(Facts { running: false, ..BASE }), First::File);
    }

    #[test]
    fn a_runtime_change_the_file_cannot_follow_is_taken_back_else_the_file_is_reloaded() {
        assert_eq!(after_runtime(RuntimeOutcome::Applied), Then::Done);
        assert_eq!(after_runtime(RuntimeOutcome::Refused), Then::UseFile);
        assert_eq!(after_runtime(RuntimeOutcome::FileFailed), Then::Undo);
        assert_eq!(after_undo(true), Then::Done);
        assert_eq!(after_undo(false), Then::ReloadFileInForce);
    }

    #[test]
    fn the_file_path_writes_only_new_text_and_reloads_only_a_running_haproxy() {
        assert_eq!(file_step(true, false, true), FileStep::Adopt);
        assert_eq!(file_step(true, false, false), FileStep::Adopt);
        assert_eq!(file_step(false, false, true), FileStep::Load { write: true });
        assert_eq!(file_step(false, true, true), FileStep::Load { write: true });
        assert_eq!(file_step(true, true, true), FileStep::Load { write: false });
        assert_eq!(file_step(false, false, false), FileStep::Leave { write: true });
        assert_eq!(file_step(true, true, false), FileStep::Leave { write: false });
    }
}
