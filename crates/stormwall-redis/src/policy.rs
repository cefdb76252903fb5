//! What the store does when Redis cannot decide, and the short circuit that stops it from
//! hammering a Redis that is down.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use stormwall_ratelimit::Quota;

/// What a [`RedisStore`](crate::RedisStore) answers when Redis fails (error, timeout) or the
/// short circuit is open.
///
/// | Policy | Answer |
/// |---|---|
/// | [`Error`](OnFailure::Error) (default) | a [`StoreError`](stormwall_ratelimit::StoreError): the layer's [`FailurePolicy`](stormwall_ratelimit::FailurePolicy) decides (admit, or 503) |
/// | [`Open`](OnFailure::Open) | admit (availability first) |
/// | [`Closed`](OnFailure::Closed) | reject as over quota, `retry_after` 1 s (protection first; wait mode waits and retries) |
/// | [`Local`](OnFailure::Local) | decide on a local [`InMemoryStore`](stormwall_ratelimit::InMemoryStore) with every quota divided by `instances` |
///
/// `Local` keeps limiting while Redis is away: with `instances` set to the number of
/// instances sharing the quota, the sum over all instances stays near the global quota
/// (see [`local_quota`]). The local state is separate: when Redis returns, decisions go back
/// to Redis and what was spent locally is not carried over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Return the error (the layer's failure policy applies).
    #[default]
    Error,
    /// Admit.
    Open,
    /// Reject.
    Closed,
    /// Decide locally with each quota divided by `instances` (at least 1).
    Local {
        /// How many instances share the quota.
        instances: u32,
    },
}

impl OnFailure {
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Local { .. } => "local",
        }
    }
}

/// The quota one of `instances` instances enforces locally while Redis is away: `limit` and
/// `burst` divided by `instances`, rounded up, at least 1, over the same period.
///
/// ```
/// use stormwall_ratelimit::Quota;
/// use stormwall_redis::local_quota;
/// let q = Quota::per_second(100).unwrap().with_burst(50).unwrap();
/// let local = local_quota(q, 4);
/// assert_eq!((local.limit(), local.burst(), local.period()), (25, 13, q.period()));
/// assert_eq!(local_quota(q, 0), q);
/// ```
pub fn local_quota(q: Quota, instances: u32) -> Quota {
    let n = u64::from(instances.max(1));
    if n == 1 {
        return q;
    }
    Quota::new(q.limit().div_ceil(n), q.period())
        .and_then(|l| l.with_burst(q.burst().div_ceil(n)))
        .unwrap_or(q)
}

/// The short circuit: after `threshold` consecutive failures, Redis is skipped for a backoff
/// (doubling from `min` to `max`); then one probe request goes to Redis while the others
/// keep using the failure policy; a successful probe closes the circuit.
#[derive(Debug)]
pub(crate) struct Circuit {
    pub(crate) threshold: u32,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    failures: AtomicU32,
    level: AtomicU32,
    /// Nanos since the store's epoch; 0 = closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

/// What the circuit lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Call Redis.
    Call,
    /// Call Redis as the one probe of a half-open circuit.
    Probe,
    /// Skip Redis.
    Skip,
}

impl Circuit {
    pub(crate) const fn new(threshold: u32, min: Duration, max: Duration) -> Self {
        Self {
            threshold,
            min,
            max,
            failures: AtomicU32::new(0),
            level: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    pub(crate) fn pass(&self, now: u64) -> Pass {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Pass::Call;
        }
        if now < until {
            return Pass::Skip;
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Pass::Probe
        } else {
            Pass::Skip
        }
    }

    /// Gives up a probe that never finished (its request was dropped), so that another
    /// request can probe.
    pub(crate) fn abandon_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Returns whether the circuit closed (was open).
    pub(crate) fn success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.level.store(0, Ordering::Relaxed);
        self.probing.store(false, Ordering::Release);
        self.open_until.swap(0, Ordering::AcqRel) != 0
    }

    /// Returns whether the circuit (re)opened.
    pub(crate) fn failure(&self, now: u64, probe: bool) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if !probe && (n < self.threshold || self.is_open()) {
            return false;
        }
        let level = self.level.fetch_add(1, Ordering::AcqRel).min(16);
        let backoff = self.min.saturating_mul(1 << level).min(self.max);
        let nanos = u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX);
        self.open_until
            .store(now.saturating_add(nanos).max(1), Ordering::Release);
        self.probing.store(false, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn opens_backs_off_probes_and_closes() {
        let c = Circuit::new(3, Duration::from_millis(100), Duration::from_millis(300));
        assert_eq!(c.pass(0), Pass::Call);
        assert!(!c.failure(0, false));
        assert!(!c.failure(0, false));
        assert!(c.failure(0, false));
        assert_eq!(c.pass(50 * MS), Pass::Skip);
        assert_eq!(c.pass(100 * MS), Pass::Probe);
        assert_eq!(c.pass(100 * MS), Pass::Skip, "one probe at a time");
        // The probe fails: backoff doubles (200 ms).
        assert!(c.failure(100 * MS, true));
        assert_eq!(c.pass(299 * MS), Pass::Skip);
        assert_eq!(c.pass(300 * MS), Pass::Probe);
        assert!(c.failure(300 * MS, true));
        // Capped at 300 ms.
        assert_eq!(c.pass(599 * MS), Pass::Skip);
        assert_eq!(c.pass(600 * MS), Pass::Probe);
        assert!(c.success());
        assert_eq!(c.pass(600 * MS), Pass::Call);
        assert!(!c.is_open());
    }

    #[test]
    fn an_abandoned_probe_lets_another_request_probe() {
        let c = Circuit::new(1, Duration::from_millis(100), Duration::from_millis(100));
        assert!(c.failure(0, false));
        assert_eq!(c.pass(100 * MS), Pass::Probe);
        assert_eq!(c.pass(100 * MS), Pass::Skip);
        c.abandon_probe();
        assert_eq!(c.pass(100 * MS), Pass::Probe);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let c = Circuit::new(0, Duration::from_millis(1), Duration::from_millis(1));
        for _ in 0..10 {
            assert!(!c.failure(0, false));
        }
        assert_eq!(c.pass(0), Pass::Call);
    }
}
