//! Counters shared by a [`Group`](crate::Group) or a [`CoalesceLayer`](crate::CoalesceLayer),
//! and their `metrics` mirror.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge};

/// Metric names (see the [crate docs](crate#metrics)).
pub(crate) mod names {
    pub(crate) const HITS: &str = "stormwall_coalesce_hits_total";
    pub(crate) const MISSES: &str = "stormwall_coalesce_misses_total";
    pub(crate) const ERRORS: &str = "stormwall_coalesce_errors_total";
    pub(crate) const PANICS: &str = "stormwall_coalesce_panics_total";
    pub(crate) const CANCELLED: &str = "stormwall_coalesce_cancelled_total";
    pub(crate) const TIMEOUTS: &str = "stormwall_coalesce_timeouts_total";
    pub(crate) const OVERFLOWS: &str = "stormwall_coalesce_overflow_total";
    pub(crate) const REISSUED: &str = "stormwall_coalesce_reissued_total";
    pub(crate) const IN_FLIGHT: &str = "stormwall_coalesce_in_flight_keys";
    pub(crate) const WAITERS: &str = "stormwall_coalesce_waiters";
}

/// The live counters. One instance per group or layer, behind an `Arc`.
///
/// The `metrics` handles are registered once, when the group or layer is built (install the
/// metrics recorder before that), so the hot path does not look metrics up by name.
pub(crate) struct StatsInner {
    pub(crate) name: &'static str,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    cancelled: AtomicU64,
    timeouts: AtomicU64,
    overflows: AtomicU64,
    reissued: AtomicU64,
    in_flight: AtomicU64,
    waiters: AtomicU64,
    m: Handles,
}

struct Handles {
    hits: Counter,
    misses: Counter,
    errors: Counter,
    panics: Counter,
    cancelled: Counter,
    timeouts: Counter,
    overflows: Counter,
    reissued: Counter,
    in_flight: Gauge,
    waiters: Gauge,
}

impl fmt::Debug for StatsInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsInner")
            .field("name", &self.name)
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

macro_rules! counter {
    ($self:ident, $field:ident) => {{
        $self.$field.fetch_add(1, Ordering::Relaxed);
        $self.m.$field.increment(1);
    }};
}

impl StatsInner {
    pub(crate) fn new(name: &'static str) -> Arc<Self> {
        let m = Handles {
            hits: metrics::counter!(names::HITS, "name" => name),
            misses: metrics::counter!(names::MISSES, "name" => name),
            errors: metrics::counter!(names::ERRORS, "name" => name),
            panics: metrics::counter!(names::PANICS, "name" => name),
            cancelled: metrics::counter!(names::CANCELLED, "name" => name),
            timeouts: metrics::counter!(names::TIMEOUTS, "name" => name),
            overflows: metrics::counter!(names::OVERFLOWS, "name" => name),
            reissued: metrics::counter!(names::REISSUED, "name" => name),
            in_flight: metrics::gauge!(names::IN_FLIGHT, "name" => name),
            waiters: metrics::gauge!(names::WAITERS, "name" => name),
        };
        Arc::new(Self {
            name,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            reissued: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            waiters: AtomicU64::new(0),
            m,
        })
    }

    pub(crate) fn hit(&self) {
        counter!(self, hits);
    }
    pub(crate) fn miss(&self) {
        counter!(self, misses);
    }
    pub(crate) fn error(&self) {
        counter!(self, errors);
    }
    pub(crate) fn panic(&self) {
        counter!(self, panics);
    }
    pub(crate) fn cancelled(&self) {
        counter!(self, cancelled);
    }
    pub(crate) fn timeout(&self) {
        counter!(self, timeouts);
    }
    pub(crate) fn overflow(&self) {
        counter!(self, overflows);
    }
    pub(crate) fn reissued(&self) {
        counter!(self, reissued);
    }
    pub(crate) fn flight_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.m.in_flight.increment(1.0);
    }
    pub(crate) fn flight_ended(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.m.in_flight.decrement(1.0);
    }
    pub(crate) fn waiter_added(&self) {
        self.waiters.fetch_add(1, Ordering::Relaxed);
        self.m.waiters.increment(1.0);
    }
    pub(crate) fn waiter_removed(&self) {
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        self.m.waiters.decrement(1.0);
    }

    pub(crate) fn snapshot(&self) -> CoalesceStats {
        CoalesceStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            overflows: self.overflows.load(Ordering::Relaxed),
            reissued: self.reissued.load(Ordering::Relaxed),
            in_flight_keys: self.in_flight.load(Ordering::Relaxed),
            waiters: self.waiters.load(Ordering::Relaxed),
        }
    }
}

/// A handle on the live counters of a [`Group`](crate::Group) or a
/// [`CoalesceLayer`](crate::CoalesceLayer); cheap to clone.
///
/// ```
/// use stormwall_coalesce::Group;
///
/// let group: Group<u32, String> = Group::new();
/// let stats = group.stats();
/// assert_eq!(stats.snapshot().hits, 0);
/// ```
#[derive(Clone)]
pub struct StatsHandle {
    pub(crate) inner: Arc<StatsInner>,
}

impl fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StatsHandle")
            .field(&self.inner.snapshot())
            .finish()
    }
}

impl StatsHandle {
    /// The counters at this moment.
    pub fn snapshot(&self) -> CoalesceStats {
        self.inner.snapshot()
    }
}

/// A snapshot of the coalescing counters.
///
/// A *miss* is a caller that started an upstream call (the leader of a flight, a caller beyond
/// the waiter cap, or a waiter that had to re-issue its own call); a *hit* is a caller that
/// joined a call already in flight and did not call upstream itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CoalesceStats {
    /// Callers served by a call already in flight.
    pub hits: u64,
    /// Callers that made an upstream call.
    pub misses: u64,
    /// Upstream calls that ended in an error (panics included).
    pub errors: u64,
    /// Upstream calls that panicked.
    pub panics: u64,
    /// Upstream calls dropped because every caller was gone.
    pub cancelled: u64,
    /// Callers that gave up after the per-caller timeout.
    pub timeouts: u64,
    /// Callers beyond the waiter cap, sent upstream on their own.
    pub overflows: u64,
    /// Waiters that re-issued their own call because the response could not be shared.
    pub reissued: u64,
    /// Keys with an upstream call in flight now.
    pub in_flight_keys: u64,
    /// Callers waiting on a call in flight now (leaders included).
    pub waiters: u64,
}

impl CoalesceStats {
    /// `hits / (hits + misses)`, or `0.0` before the first call.
    ///
    /// ```
    /// use stormwall_coalesce::CoalesceStats;
    /// let mut s = CoalesceStats::default();
    /// s.hits = 38;
    /// s.misses = 7;
    /// assert_eq!(format!("{:.1}%", s.hit_rate() * 100.0), "84.4%");
    /// ```
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}
