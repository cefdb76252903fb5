//! Statistics and metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of a rate limiter's counters (see [`RateLimitLayer::stats`](crate::RateLimitLayer::stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Requests admitted.
    pub admitted: u64,
    /// Requests rejected (any reason).
    pub rejected: u64,
    /// Requests that would have been rejected in shadow mode (and were admitted).
    pub shadow_rejected: u64,
    /// Admitted requests that had to wait first.
    pub waited: u64,
    /// Total time admitted requests waited.
    pub total_wait: Duration,
    /// Requests rejected because the wait queue was full.
    pub queue_full: u64,
    /// Store failures.
    pub store_errors: u64,
    /// Upstream pushbacks that paused a key (adaptive mode).
    pub pushbacks: u64,
    /// Requests waiting right now.
    pub waiting: usize,
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) admitted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) shadow_rejected: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) wait_nanos: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) pushbacks: AtomicU64,
    /// `stormwall_ratelimit_decisions_total` by outcome: registered once, when the layer is
    /// built (a registry look-up per request would cost more than the decision).
    pub(crate) metric_admitted: metrics::Counter,
    pub(crate) metric_rejected: metrics::Counter,
    pub(crate) metric_shadow_rejected: metrics::Counter,
}

impl Default for Counters {
    fn default() -> Self {
        const NAME: &str = "stormwall_ratelimit_decisions_total";
        Self {
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            shadow_rejected: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            wait_nanos: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            pushbacks: AtomicU64::new(0),
            metric_admitted: metrics::counter!(NAME, "outcome" => "admitted"),
            metric_rejected: metrics::counter!(NAME, "outcome" => "rejected"),
            metric_shadow_rejected: metrics::counter!(NAME, "outcome" => "shadow_rejected"),
        }
    }
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, waiting: usize) -> RateLimitStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RateLimitStats {
            admitted: l(&self.admitted),
            rejected: l(&self.rejected),
            shadow_rejected: l(&self.shadow_rejected),
            waited: l(&self.waited),
            total_wait: Duration::from_nanos(l(&self.wait_nanos)),
            queue_full: l(&self.queue_full),
            store_errors: l(&self.store_errors),
            pushbacks: l(&self.pushbacks),
            waiting,
        }
    }
}
