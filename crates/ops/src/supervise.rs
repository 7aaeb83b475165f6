//! Keeping a child process running: the one supervisor of the workspace
//! (haproxy-sync runs HAProxy with it, haproxy-keeper runs HAProxy and
//! haproxy-sync).
//!
//! A child that exits is started again: at once after a healthy run (one
//! that lasted [`Policy::healthy_after`]), with growing [`Backoff`] while it
//! keeps failing. On shutdown it gets [`Policy::stop_signal`] and
//! [`Policy::grace`] to exit before it is killed.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::Backoff;

/// How a child is kept.
#[derive(Clone, Debug)]
pub struct Policy {
    /// What the child is, for the log: "HAProxy", "haproxy-sync".
    pub name: &'static str,
    /// A run at least this long was healthy: the child is started again at
    /// once and the backoff starts over.
    pub healthy_after: Duration,
    /// Delays between starts of a child that keeps failing (or cannot start).
    pub backoff: Backoff,
    /// Asks the child to stop on shutdown (SIGTERM, or SIGUSR1 for HAProxy's
    /// soft stop).
    pub stop_signal: Signal,
    /// How long the child gets to exit after `stop_signal`, before SIGKILL.
    pub grace: Duration,
}

/// A running child, as the supervisor sees it.
pub trait Process: Send {
    /// Its process ID, while it runs.
    fn id(&self) -> Option<u32>;
    /// Resolves when it has exited.
    fn wait(&mut self) -> impl Future<Output = std::io::Result<ExitStatus>> + Send;
    /// Sends `signal` to it.
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }
    /// Kills it (SIGKILL) and reaps it.
    fn kill(&mut self) -> impl Future<Output = ()> + Send;
}

impl Process for tokio::process::Child {
    fn id(&self) -> Option<u32> {
        tokio::process::Child::id(self)
    }

    fn wait(&mut self) -> impl Future<Output = std::io::Result<ExitStatus>> + Send {
        tokio::process::Child::wait(self)
    }

    async fn kill(&mut self) {
        let _ = tokio::process::Child::kill(self).await;
    }
}

/// Keeps the child `start` makes running until `shutdown`, as `policy`
/// says. `running` hears `true` just before each start (a change made from
/// then on reaches the new child) and `false` when the child has exited.
pub async fn supervise<P, S, R>(mut policy: Policy, mut start: S, mut running: R, shutdown: CancellationToken)
where
    P: Process,
    S: FnMut() -> std::io::Result<P>,
    R: FnMut(bool),
{
    let name = policy.name;
    loop {
        running(true);
        let mut child = match start() {
            Ok(child) => child,
            Err(e) => {
                running(false);
                error!(error = %e, "cannot start {name}");
                tokio::select! { _ = shutdown.cancelled() => return, _ = policy.backoff.wait() => continue }
            }
        };
        info!(pid = child.id(), "{name} started");
        let started = Instant::now();
        tokio::select! {
            status = child.wait() => {
                running(false);
                if started.elapsed() >= policy.healthy_after {
                    warn!(?status, "{name} exited; starting it again");
                    policy.backoff.reset();
                    continue;
                }
                let delay = policy.backoff.next_delay();
                warn!(?status, retry_in_ms = crate::millis(delay), "{name} exited soon after it started; starting it again after a delay");
                tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(delay) => {} }
            }
            _ = shutdown.cancelled() => {
                stop(&policy, &mut child).await;
                return;
            }
        }
    }
}

/// Sends the stop signal and waits for the grace period, then kills.
async fn stop<P: Process>(policy: &Policy, child: &mut P) {
    child.signal(policy.stop_signal);
    match tokio::time::timeout(policy.grace, child.wait()).await {
        Ok(_) => info!("{} stopped", policy.name),
        Err(_) => {
            warn!("{} still running after the grace period; killing it", policy.name);
            child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A child that runs for a set time (in Tokio's time), or until it gets
    /// a signal it heeds.
    struct Fake {
        runs_for: Duration,
        started: Instant,
        heeds: Option<Signal>,
        log: Arc<Mutex<Vec<String>>>,
        stop: Arc<tokio::sync::Notify>,
    }

    impl Process for Fake {
        fn id(&self) -> Option<u32> {
            Some(1)
        }

        async fn wait(&mut self) -> std::io::Result<ExitStatus> {
            tokio::select! {
                _ = tokio::time::sleep_until(self.started + self.runs_for) => {}
                _ = self.stop.notified() => {}
            }
            Ok(ExitStatus::from_raw(0))
        }

        fn signal(&self, signal: Signal) {
            self.log.lock().unwrap().push(format!("{signal} at {:?}", self.started.elapsed()));
            if self.heeds == Some(signal) {
                self.stop.notify_one();
            }
        }

        async fn kill(&mut self) {
            self.log.lock().unwrap().push(format!("SIGKILL at {:?}", self.started.elapsed()));
        }
    }

    fn policy() -> Policy {
        Policy {
            name: "test",
            healthy_after: Duration::from_secs(10),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
            stop_signal: Signal::SIGTERM,
            grace: Duration::from_secs(3),
        }
    }

    /// Runs the supervisor over children that run for `runs[i]` (the last
    /// one repeats) until `until`; the times of each start since the first.
    async fn starts(runs: Vec<Duration>, until: Duration) -> Vec<Duration> {
        let t0 = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let (s, log) = (starts.clone(), Arc::new(Mutex::new(Vec::new())));
        let start = move || {
            let mut s = s.lock().unwrap();
            let runs_for = runs.get(s.len()).or(runs.last()).copied().unwrap();
            s.push(t0.elapsed());
            Ok(Fake { runs_for, started: Instant::now(), heeds: None, log: log.clone(), stop: Default::default() })
        };
        let task = tokio::spawn(supervise(policy(), start, |_| {}, shutdown.clone()));
        tokio::time::sleep(until).await;
        shutdown.cancel();
        task.await.unwrap();
        Arc::try_unwrap(starts).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_that_keeps_failing_is_started_again_ever_later() {
        let starts = starts(vec![Duration::ZERO], Duration::from_secs(30)).await;
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        // 200 ms doubling to the 5 s cap, each delay in [half, full].
        for (n, gap) in gaps.iter().enumerate() {
            let ceiling =
                (Duration::from_millis(200) * 2u32.pow(u32::try_from(n.min(10)).unwrap())).min(Duration::from_secs(5));
            assert!(*gap >= ceiling / 2 && *gap <= ceiling, "start {}: {gap:?} after the one before", n + 1);
        }
        assert!((8..=14).contains(&starts.len()), "{} starts in 30 s: {starts:?}", starts.len());
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_healthy_run_the_child_is_started_at_once_and_the_backoff_starts_over() {
        // Fails five times (backoff grows to 3.2 s), runs 20 s, then fails again.
        let zero = Duration::ZERO;
        let runs = vec![zero, zero, zero, zero, zero, Duration::from_secs(20), zero];
        let starts = starts(runs, Duration::from_secs(35)).await;
        let healthy_end = starts[5] + Duration::from_secs(20);
        assert_eq!(starts[6], healthy_end, "started again at once after the healthy run: {starts:?}");
        assert!(starts[7] - starts[6] <= Duration::from_millis(200), "backoff started over: {starts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_sends_the_stop_signal_and_kills_after_the_grace_period() {
        for heeds in [Some(Signal::SIGTERM), None] {
            let log = Arc::new(Mutex::new(Vec::new()));
            let shutdown = CancellationToken::new();
            let l = log.clone();
            let start = move || {
                Ok(Fake {
                    runs_for: Duration::from_secs(3600),
                    started: Instant::now(),
                    heeds,
                    log: l.clone(),
                    stop: Default::default(),
                })
            };
            let task = tokio::spawn(supervise(policy(), start, |_| {}, shutdown.clone()));
            tokio::time::sleep(Duration::from_secs(1)).await;
            shutdown.cancel();
            let t = Instant::now();
            task.await.unwrap();
            let log = log.lock().unwrap().clone();
            match heeds {
                Some(_) => {
                    assert_eq!(log, ["SIGTERM at 1s"]);
                    assert_eq!(t.elapsed(), Duration::ZERO);
                }
                None => {
                    assert_eq!(log, ["SIGTERM at 1s", "SIGKILL at 4s"]);
                    assert_eq!(t.elapsed(), Duration::from_secs(3));
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn running_is_told_before_each_start_and_after_each_exit() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let s = seen.clone();
        let start = || {
            Ok(Fake {
                runs_for: Duration::from_secs(1),
                started: Instant::now(),
                heeds: Some(Signal::SIGTERM),
                log: Default::default(),
                stop: Default::default(),
            })
        };
        let task = tokio::spawn(supervise(policy(), start, move |up| s.lock().unwrap().push(up), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [true, false, true]);
    }
}
