//! Following a blocking query: Consul's rules for its `X-Consul-Index`
//! ([`next_index`], [`is_news`], [`Position`]) and [`follow`], the one loop
//! that asks, paces itself, backs off and passes answers on (haproxy-sync's
//! two watches and registrator's view of its own node use it).
//!
//! See Consul's "Blocking Queries" documentation: an index that goes
//! backwards means the agent's state was reset and the watch must start
//! over; an index of 0 must never be sent back, or the query returns at once
//! and the watcher spins.

use std::time::Duration;

use ops::Backoff;
use tokio::time::Instant;

use crate::{Error, Indexed};

/// The index to send with the next blocking query, given the one sent and
/// the one Consul answered with.
pub fn next_index(sent: u64, answered: u64) -> u64 {
    if answered < sent {
        // The agent restarted or its state was restored: start over.
        0
    } else {
        answered.max(1)
    }
}

/// Whether an answer carries news: the first answer always does; a blocking
/// query that timed out returns the same index and does not.
pub fn is_news(sent: u64, answered: u64) -> bool {
    sent == 0 || answered != sent
}

/// Where a follower stands in one blocking query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The index to send next.
    index: u64,
    /// The last index Consul answered with, kept across failures.
    answered: u64,
}

/// What one answer means to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answered {
    /// Something may have changed (else a blocking query timed out).
    pub news: bool,
    /// The index went back since the last answer, even across failures:
    /// Consul's state was reset, and what was learnt from it is stale.
    pub reset: bool,
}

impl Position {
    /// The index to send with the next query.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Consul answered with index `at`.
    pub fn answered(&mut self, at: u64) -> Answered {
        let answered = Answered { news: is_news(self.index, at), reset: at < self.answered };
        self.answered = at;
        self.index = next_index(self.index, at);
        answered
    }

    /// The query failed, or its answer could not be used: the next one
    /// starts afresh (index 0), so its answer is news.
    pub fn failed(&mut self) {
        self.index = 0;
    }
}

/// How [`follow`] paces its queries.
#[derive(Clone, Debug)]
pub struct Pace {
    /// How long one blocking query may wait at Consul.
    pub wait: Duration,
    /// The least time between two queries (a guard against spinning).
    pub min_interval: Duration,
    /// The delay after a failure.
    pub backoff: Backoff,
}

/// What [`follow`] hands its caller.
#[derive(Debug)]
pub enum Step<T> {
    /// An answer, at `index`, with what it means.
    Answer { value: T, index: u64, answered: Answered },
    /// The query failed; the next starts afresh after a backoff.
    Failed(Error),
}

/// What the caller tells [`follow`] after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Ask again.
    Go,
    /// The answer is unusable: count it as a failure (start afresh after a backoff).
    Retry,
    /// Stop following.
    Stop,
}

/// Follows one blocking query until the caller says [`Next::Stop`]: `ask`
/// runs it with the index to send and the wait, `step` hears every answer
/// and failure. After a failure the next query waits for the backoff and
/// for `after_failure()` (made at once, so it may start listening before
/// the backoff ends; `std::future::ready(())` when there is nothing more to wait for).
pub async fn follow<T, A, AF, S, W, WF>(pace: Pace, mut ask: A, mut step: S, mut after_failure: W)
where
    A: FnMut(u64, Duration) -> AF,
    AF: Future<Output = Result<Indexed<T>, Error>>,
    S: FnMut(Step<T>) -> Next,
    W: FnMut() -> WF,
    WF: Future<Output = ()>,
{
    let mut position = Position::default();
    let mut backoff = pace.backoff;
    loop {
        let started = Instant::now();
        let next = match ask(position.index(), pace.wait).await {
            Ok(answer) => {
                let answered = position.answered(answer.index);
                step(Step::Answer { value: answer.value, index: answer.index, answered })
            }
            Err(e) => match step(Step::Failed(e)) {
                Next::Stop => Next::Stop,
                Next::Go | Next::Retry => Next::Retry,
            },
        };
        match next {
            Next::Stop => return,
            Next::Go => backoff.reset(),
            Next::Retry => {
                position.failed();
                let more = after_failure();
                tokio::join!(backoff.wait(), more);
            }
        }
        tokio::time::sleep_until(started + pace.min_interval).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn index_going_backwards_resets_to_zero() {
        assert_eq!(next_index(100, 7), 0);
    }

    #[test]
    fn index_zero_is_never_sent_back() {
        assert_eq!(next_index(0, 0), 1);
        assert_eq!(next_index(1, 0), 0);
    }

    #[test]
    fn index_follows_forward_answers() {
        assert_eq!(next_index(5, 9), 9);
        assert!(is_news(5, 9) && !is_news(9, 9) && is_news(0, 9));
    }

    #[test]
    fn a_reset_is_seen_across_a_failure() {
        let mut p = Position::default();
        assert_eq!(p.answered(50), Answered { news: true, reset: false });
        assert_eq!(p.index(), 50);
        assert_eq!(p.answered(50), Answered { news: false, reset: false }, "a timed-out query");
        p.failed();
        assert_eq!(p.index(), 0);
        assert_eq!(p.answered(7), Answered { news: true, reset: true }, "Consul restarted while we failed");
    }

    fn pace() -> Pace {
        Pace {
            wait: Duration::from_secs(300),
            min_interval: Duration::from_millis(5),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// Follows a script of answers (`Some(index)`) and failures (`None`);
    /// what each query sent and when, in Tokio's time, and the steps heard.
    async fn run(script: Vec<Option<u64>>, verdict: fn(&Step<u64>) -> Next) -> (Vec<(u64, Duration)>, Vec<String>) {
        let t0 = Instant::now();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut heard = Vec::new();
        let (s, a) = (script.clone(), asked.clone());
        let ask = move |index, _wait| {
            a.lock().unwrap().push((index, t0.elapsed()));
            let next = s.lock().unwrap().pop_front();
            async move {
                match next {
                    Some(Some(at)) => Ok(Indexed { index: at, value: at }),
                    Some(None) => Err(Error::Tls("boom".into())),
                    None => std::future::pending().await,
                }
            }
        };
        let step = |s: Step<u64>| {
            let next = verdict(&s);
            heard.push(match s {
                Step::Answer { index, answered, .. } => {
                    format!("{index} news={} reset={}", answered.news, answered.reset)
                }
                Step::Failed(_) => "failed".to_owned(),
            });
            next
        };
        let _ =
            tokio::time::timeout(Duration::from_secs(60), follow(pace(), ask, step, || std::future::ready(()))).await;
        let asked = asked.lock().unwrap().clone();
        (asked, heard)
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_index_backs_off_after_failures_and_never_spins() {
        let (asked, heard) = run(vec![Some(10), Some(10), Some(12), None, None, Some(3), Some(3)], |_| Next::Go).await;
        let sent: Vec<u64> = asked.iter().map(|(i, _)| *i).collect();
        assert_eq!(sent, [0, 10, 10, 12, 0, 0, 3, 3]);
        assert_eq!(
            heard,
            [
                "10 news=true reset=false",
                "10 news=false reset=false",
                "12 news=true reset=false",
                "failed",
                "failed",
                "3 news=true reset=true",
                "3 news=false reset=false"
            ]
        );
        let gaps: Vec<Duration> = asked.windows(2).map(|w| w[1].1 - w[0].1).collect();
        // Answers: the least interval; failures: 100 ms, then 200 ms, each in [half, full].
        assert!(gaps[..3].iter().all(|g| *g == Duration::from_millis(5)), "{gaps:?}");
        assert!(gaps[3] >= Duration::from_millis(50) && gaps[3] <= Duration::from_millis(100), "{gaps:?}");
        assert!(gaps[4] >= Duration::from_millis(100) && gaps[4] <= Duration::from_millis(200), "{gaps:?}");
        assert_eq!(gaps[5], Duration::from_millis(5), "the backoff starts over after an answer: {gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_the_caller_cannot_use_counts_as_a_failure_and_stop_stops() {
        let (asked, _) = run(vec![Some(10), Some(11), Some(12)], |s| match s {
            Step::Answer { index: 10, .. } => Next::Retry,
            Step::Answer { index: 11, .. } => Next::Stop,
            _ => Next::Go,
        })
        .await;
        assert_eq!(asked.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 0], "started afresh, then stopped");
        assert!(asked[1].1 >= Duration::from_millis(50), "after a backoff: {asked:?}");
    }
}
