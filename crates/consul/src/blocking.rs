//! Consul's rules for following a blocking query's `X-Consul-Index`.
//!
//! See Consul's "Blocking Queries" documentation: an index that goes
//! backwards means the agent's state was reset and the watch must start
//! over; an index of 0 must never be sent back, or the query returns at once
//! and the watcher spins.

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

#[cfg(test)]
mod tests {
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
}
