//! Counters behind the stats handle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a retry layer's counters (shared by every service the layer built).
///
/// See [`RetryLayer::stats`](crate::RetryLayer::stats).
///
/// ```
/// use stormwall_retry::{RetryLayer, RetryStats};
/// let layer = RetryLayer::new();
/// let stats: RetryStats = layer.stats();
/// assert_eq!((stats.requests, stats.retries, stats.budget_exhausted), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryStats {
    /// Requests received.
    pub requests: u64,
    /// Attempts sent to the inner service (first attempts, retries and hedges).
    pub attempts: u64,
    /// Retries sent (after a failed attempt).
    pub retries: u64,
    /// Hedged attempts sent (while another attempt was still in flight).
    pub hedges: u64,
    /// Requests that ended in a success.
    pub successes: u64,
    /// Retries refused because the budget was empty.
    pub budget_exhausted: u64,
    /// Retries not attempted because the next delay (backoff or pushback) went beyond the
    /// deadline.
    pub deadline_stops: u64,
    /// Requests whose body exceeded the buffer limit and were therefore sent once.
    pub unbuffered_bodies: u64,
    /// Attempts that hit the per-attempt timeout.
    pub attempt_timeouts: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) successes: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) deadline_stops: AtomicU64,
    pub(crate) unbuffered_bodies: AtomicU64,
    pub(crate) attempt_timeouts: AtomicU64,
    pub(crate) seed: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

impl Stats {
    pub(crate) fn snapshot(&self) -> RetryStats {
        RetryStats {
            requests: self.requests.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
            retries: self.retries.load(Relaxed),
            hedges: self.hedges.load(Relaxed),
            successes: self.successes.load(Relaxed),
            budget_exhausted: self.budget_exhausted.load(Relaxed),
            deadline_stops: self.deadline_stops.load(Relaxed),
            unbuffered_bodies: self.unbuffered_bodies.load(Relaxed),
            attempt_timeouts: self.attempt_timeouts.load(Relaxed),
        }
    }

    /// A fresh per-request jitter seed.
    pub(crate) fn next_seed(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
    }
}
