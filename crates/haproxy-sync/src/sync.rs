//! The apply loop: waits for Consul's state to settle, renders, checks with
//! `haproxy -c`, writes atomically and reloads, only when the text changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use consul::Backoff;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::haproxy::{Haproxy, HaproxyError};
use crate::model::{self, Catalog, Config, Stats};
use crate::render::{RenderError, Renderer};

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
    /// Written, checked and reloaded.
    Reloaded,
}

/// Renders and applies configurations for one HAProxy.
pub struct Applier {
    pub haproxy: Haproxy,
    renderer: Renderer,
    opts: SyncOptions,
    /// The text of the configuration file.
    in_force: Option<String>,
    /// The file changed but HAProxy has not loaded it yet.
    reload_pending: bool,
}

impl Applier {
    pub fn new(haproxy: Haproxy, renderer: Renderer, opts: SyncOptions) -> Self {
        Self { haproxy, renderer, opts, in_force: None, reload_pending: false }
    }

    /// The configuration text for `catalog`. Services that cannot be routed
    /// safely are left out and logged.
    pub fn render(&self, catalog: &Catalog) -> Result<String, RenderError> {
        let (services, skipped) = model::services(catalog);
        for s in skipped {
            warn!(service = %s.service, reason = %s.reason, "service not routed");
        }
        let config = Config {
            services,
            bind: self.opts.bind.clone(),
            http_port: self.opts.http_port,
            stats: Stats { enabled: self.opts.stats_enabled, port: self.opts.stats_port },
            runtime_socket: self.opts.runtime_socket.display().to_string(),
            hard_stop_after: self.opts.hard_stop_after.clone(),
            template: self.opts.template_name.clone(),
        };
        self.renderer.render(&config)
    }

    /// Adopts the configuration file already on disk if HAProxy accepts it,
    /// so a restart serves the last applied state before Consul answers.
    pub async fn adopt_existing(&mut self) -> bool {
        let Ok(text) = std::fs::read_to_string(&self.haproxy.config) else { return false };
        match self.haproxy.check(&self.haproxy.config).await {
            Ok(()) => {
                self.in_force = Some(text);
                true
            }
            Err(e) => {
                warn!(error = %e, "ignoring the configuration on disk");
                false
            }
        }
    }

    /// Checks `text` with HAProxy and makes it the configuration file,
    /// atomically; a text HAProxy refuses is never written. Reloads when
    /// `reload` is set (HAProxy runs). Text equal to what is in force and
    /// loaded is not applied again; a reload that failed is tried again.
    pub async fn apply(&mut self, text: &str, reload: bool) -> Result<Applied, ApplyError> {
        if self.in_force.as_deref() != Some(text) {
            let path = &self.haproxy.config;
            let candidate = sibling(path, ".candidate");
            write(&candidate, text)?;
            if let Err(e) = self.haproxy.check(&candidate).await {
                let _ = std::fs::rename(&candidate, sibling(path, ".rejected"));
                return Err(e.into());
            }
            std::fs::rename(&candidate, path)
                .map_err(|source| ApplyError::Write { path: path.display().to_string(), source })?;
            self.in_force = Some(text.to_owned());
            self.reload_pending = true;
        } else if !self.reload_pending {
            return Ok(Applied::Unchanged);
        }
        if !reload {
            // HAProxy is not running: it reads the file when it starts.
            self.reload_pending = false;
            return Ok(Applied::Written);
        }
        self.haproxy.reload().await?;
        self.reload_pending = false;
        Ok(Applied::Reloaded)
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
/// configuration in force and is retried with backoff.
pub async fn run(
    mut applier: Applier,
    mut rx: watch::Receiver<Option<Catalog>>,
    haproxy_ready: watch::Receiver<bool>,
    applies: Arc<std::sync::atomic::AtomicU64>,
    shutdown: CancellationToken,
) {
    let (min, max) = (applier.opts.wait_min, applier.opts.wait_max);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut retry = false;
    loop {
        if !retry {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                more = settle(&mut rx, min, max) => if !more { return },
            }
        }
        let Some(catalog) = rx.borrow_and_update().clone() else { continue };
        let started = Instant::now();
        let text = match applier.render(&catalog) {
            Ok(text) => text,
            Err(e) => {
                error!(error = %e, "render failed; the configuration in force stays");
                retry = false;
                continue;
            }
        };
        let running = *haproxy_ready.borrow();
        match applier.apply(&text, running).await {
            Ok(Applied::Unchanged) => retry = false,
            Ok(applied) => {
                retry = false;
                backoff.reset();
                applies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(
                    ?applied,
                    services = catalog.services.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "configuration applied"
                );
            }
            Err(ApplyError::Haproxy(e @ HaproxyError::Invalid(_))) => {
                error!(error = %e, "HAProxy refused the new configuration; the one in force stays");
                retry = false;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "apply failed; retrying");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
                retry = true;
            }
        }
    }
}
