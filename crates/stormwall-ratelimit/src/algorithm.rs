//! The pure rate-limiting algorithms and their [`Decision`].
//!
//! Every algorithm here is a plain function or a small state struct that takes the current
//! time `now` as an argument, in **nanoseconds** since an arbitrary epoch chosen by the caller
//! (the [`InMemoryStore`](crate::InMemoryStore) uses the time it was created). None of them
//! reads a clock, so they are tested with arbitrary, random schedules.
//!
//! | Algorithm | State | Guarantee | Cost per decision |
//! |---|---|---|---|
//! | [`Gcra`] (token bucket) | one `u64` (theoretical arrival time) | any interval `t`: admitted ≤ `burst + t / emission_interval` | O(1), one CAS in the store |
//! | [`SlidingLog`] (exact) | one entry per admission in the window | any window of `period`: admitted ≤ `limit` | O(expired entries) amortised O(1); memory O(limit) |
//! | [`SlidingCounter`] (approximate) | two counters | each aligned window ≤ `limit`; any sliding window ≤ `2 × limit` (worst case; ≈ `limit` for smooth traffic) | O(1) |
//! | [`FixedWindow`] | one counter | each aligned window ≤ `limit`; any sliding window ≤ `2 × limit` | O(1) |
//! | [`LeakyBucket`] (shaper) | one `u64` (next free slot) | releases spaced by `emission_interval`; queue ≤ `burst` | O(1), one CAS |
//!
//! A `cost` above what the quota can ever admit (above `burst` for GCRA/leaky bucket, above
//! `limit` for the windows) is rejected with [`Decision::retry_after`] = [`Duration::MAX`]
//! ("never").

use std::collections::VecDeque;
use std::time::Duration;

use crate::quota::Quota;

/// Which algorithm a limit uses. See the [module docs](self) for the trade-offs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm: a token bucket of `burst` tokens refilled at
    /// `limit / period`. The default.
    #[default]
    Gcra,
    /// Exact sliding window: remembers every admission of the last `period`.
    SlidingLog,
    /// Approximate sliding window (weighted previous + current fixed window).
    SlidingCounter,
    /// Fixed windows aligned on multiples of `period`.
    FixedWindow,
    /// Leaky bucket as a shaper: admitted requests are released at a constant rate (one per
    /// emission interval) after a [`Decision::delay`]; at most `burst` wait in the queue.
    LeakyBucket,
}

/// The outcome of a rate-limit check.
///
/// All durations are relative to the `now` of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted (quota was spent, unless the check was a peek).
    pub allowed: bool,
    /// The quota's limit (`limit` units per period), for `RateLimit-Policy`.
    pub limit: u64,
    /// The quota's period, for `RateLimit-Policy`.
    pub period: Duration,
    /// Units still available right after this decision.
    pub remaining: u64,
    /// Time until the quota is fully replenished (draft-10 `t`).
    pub reset: Duration,
    /// When rejected: the exact time until the same request would be admitted (zero when
    /// allowed; [`Duration::MAX`] when it can never be admitted).
    pub retry_after: Duration,
    /// When allowed by a shaper ([`Algorithm::LeakyBucket`]): how long the request must wait
    /// before it is released. Zero for the other algorithms.
    pub delay: Duration,
    /// In a multi-limit check, the index of the limit this decision reports (the one that
    /// rejected, or the one with the least remaining quota).
    pub index: usize,
}

impl Decision {
    /// Whether the request was rejected.
    pub const fn is_rejected(&self) -> bool {
        !self.allowed
    }
}

fn d(nanos: u64) -> Duration {
    if nanos == u64::MAX {
        Duration::MAX
    } else {
        Duration::from_nanos(nanos)
    }
}

fn decision(q: &Quota, allowed: bool, remaining: u64, reset: u64, retry: u64) -> Decision {
    Decision {
        allowed,
        limit: q.limit(),
        period: q.period(),
        remaining,
        reset: d(reset),
        retry_after: if allowed { Duration::ZERO } else { d(retry) },
        delay: Duration::ZERO,
        index: 0,
    }
}

/// The generic cell rate algorithm (GCRA), the token bucket in one number: the theoretical
/// arrival time (TAT) of the next unit.
///
/// ```
/// use stormwall_ratelimit::{Quota, algorithm::Gcra};
/// let q = Quota::per_second(10).unwrap(); // burst 10
/// let mut tat = 0;
/// for _ in 0..10 {
///     let (d, new_tat) = Gcra::decide(&q, tat, 0, 1);
///     assert!(d.allowed);
///     tat = new_tat.unwrap();
/// }
/// let (d, new_tat) = Gcra::decide(&q, tat, 0, 1);
/// assert!(!d.allowed && new_tat.is_none());
/// assert_eq!(d.retry_after, std::time::Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Gcra;

impl Gcra {
    /// Decides a request of `cost` units at `now` given the stored `tat`. Returns the decision
    /// and, when admitted, the new TAT to store.
    #[inline]
    pub fn decide(q: &Quota, tat: u64, now: u64, cost: u64) -> (Decision, Option<u64>) {
        let t = q.interval_nanos();
        let tau = q.burst() * t;
        let base = tat.max(now);
        let limit_at = now.saturating_add(tau);
        // One division by the interval on each path (the remaining units), done as a
        // multiplication by the quota's precomputed reciprocal.
        if cost <= q.burst() {
            let new_tat = base.saturating_add(cost * t);
            if new_tat <= limit_at {
                let remaining = q.div_interval(limit_at - new_tat);
                return (
                    decision(q, true, remaining, new_tat - now, 0),
                    Some(new_tat),
                );
            }
        }
        let remaining_before = q.div_interval(limit_at.saturating_sub(base));
        let retry = if cost > q.burst() {
            u64::MAX
        } else {
            base.saturating_add(cost * t) - tau - now
        };
        (
            decision(q, false, remaining_before, base - now, retry),
            None,
        )
    }

    /// The TAT after giving back `cost` units spent by an admitted request (used to undo a
    /// multi-limit check that another limit rejected).
    pub fn refund(q: &Quota, tat: u64, cost: u64) -> u64 {
        tat.saturating_sub(cost * q.interval_nanos())
    }

    /// Whether a key in this state is indistinguishable from a fresh one (safe to forget).
    pub fn is_idle(tat: u64, now: u64) -> bool {
        tat <= now
    }
}

/// The leaky bucket as a **shaper**: requests leave at a constant rate of one unit per
/// emission interval; a request that finds the queue full (more than `burst` units ahead of
/// it) is rejected. The state is the time the next slot frees up.
///
/// ```
/// use std::time::Duration;
/// use stormwall_ratelimit::{Quota, algorithm::LeakyBucket};
/// let q = Quota::per_second(10).unwrap().with_burst(3).unwrap();
/// let (a, next) = LeakyBucket::decide(&q, 0, 0, 1);
/// let (b, next) = LeakyBucket::decide(&q, next.unwrap(), 0, 1);
/// assert_eq!((a.delay, b.delay), (Duration::ZERO, Duration::from_millis(100)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LeakyBucket;

impl LeakyBucket {
    /// Decides a request of `cost` units at `now` given the stored next-slot time. When
    /// admitted, [`Decision::delay`] is how long to hold the request before releasing it.
    pub fn decide(q: &Quota, next: u64, now: u64, cost: u64) -> (Decision, Option<u64>) {
        let (mut dec, new) = Gcra::decide(q, next, now, cost);
        if dec.allowed {
            dec.delay = Duration::from_nanos(next.max(now) - now);
        }
        (dec, new)
    }
}

/// The exact sliding window log: remembers each admission of the last `period` (merged per
/// timestamp), and admits while the sum in `(now - period, now]` stays within `limit`.
///
/// ```
/// use std::time::Duration;
/// use stormwall_ratelimit::{Quota, algorithm::SlidingLog};
/// let q = Quota::per_second(2).unwrap();
/// let mut log = SlidingLog::default();
/// assert!(log.decide(&q, 0, 1, true).allowed);
/// assert!(log.decide(&q, 400_000_000, 1, true).allowed);
/// let d = log.decide(&q, 500_000_000, 1, true);
/// assert_eq!(d.retry_after, Duration::from_millis(500)); // the first entry expires at 1 s
/// ```
#[derive(Debug, Clone, Default)]
pub struct SlidingLog {
    entries: VecDeque<(u64, u64)>,
    sum: u64,
}

impl SlidingLog {
    /// The timestamp an admission at `now` is recorded at (never before the newest entry).
    pub(crate) fn effective_now(&self, now: u64) -> u64 {
        self.entries.back().map_or(now, |&(ts, _)| now.max(ts))
    }

    fn expire(&mut self, p: u64, now: u64) {
        while let Some(&(ts, c)) = self.entries.front() {
            if ts.saturating_add(p) <= now {
                self.entries.pop_front();
                self.sum -= c;
            } else {
                break;
            }
        }
    }

    /// Decides a request of `cost` units at `now`; spends the quota if admitted and `commit`.
    pub fn decide(&mut self, q: &Quota, now: u64, cost: u64, commit: bool) -> Decision {
        let p = q.period_nanos();
        let n = q.limit();
        // Concurrent callers may read the clock in a different order than they lock the state.
        let now = self.entries.back().map_or(now, |&(ts, _)| now.max(ts));
        self.expire(p, now);
        let reset_of = |log: &Self| log.entries.back().map_or(0, |&(ts, _)| ts + p - now);
        if self.sum + cost <= n {
            if commit && cost > 0 {
                match self.entries.back_mut() {
                    Some((ts, c)) if *ts == now => *c += cost,
                    _ => self.entries.push_back((now, cost)),
                }
                self.sum += cost;
            }
            let reset = if commit || self.sum > 0 {
                reset_of(self).max(if cost > 0 { p } else { 0 })
            } else {
                0
            };
            return decision(
                q,
                true,
                n - self.sum - if commit { 0 } else { cost },
                reset,
                0,
            );
        }
        let remaining = n.saturating_sub(self.sum);
        if cost > n {
            return decision(q, false, remaining, reset_of(self), u64::MAX);
        }
        let need = self.sum + cost - n;
        let mut freed = 0;
        let mut retry = u64::MAX;
        for &(ts, c) in &self.entries {
            freed += c;
            if freed >= need {
                retry = ts + p - now;
                break;
            }
        }
        decision(q, false, remaining, reset_of(self), retry)
    }

    /// Gives back `cost` units admitted at `at` (undo of a rejected multi-limit check).
    pub fn refund(&mut self, at: u64, cost: u64) {
        if let Some(pos) = self.entries.iter().rposition(|&(ts, _)| ts == at) {
            let c = &mut self.entries[pos].1;
            let back = cost.min(*c);
            *c -= back;
            self.sum -= back;
            if *c == 0 {
                self.entries.remove(pos);
            }
        }
    }

    /// Whether the log holds nothing that still counts at `now`.
    pub fn is_idle(&self, q: &Quota, now: u64) -> bool {
        self.entries
            .back()
            .is_none_or(|&(ts, _)| ts.saturating_add(q.period_nanos()) <= now)
    }

    /// Heap bytes held by the log.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * size_of::<(u64, u64)>()
    }
}

/// The approximate sliding window counter (Cloudflare style): the count of the current fixed
/// window plus the previous window's count weighted by how much of it the sliding window still
/// covers.
///
/// **Error bound**: every aligned window admits at most `limit`, so any sliding window of
/// length `period` admits at most `2 × limit` in the worst case (all of the previous window's
/// traffic at its very end); for traffic spread evenly over the previous window the estimate
/// is exact.
///
/// ```
/// use std::time::Duration;
/// use stormwall_ratelimit::{Quota, algorithm::SlidingCounter};
/// let q = Quota::per_second(10).unwrap();
/// let mut c = SlidingCounter::default();
/// for _ in 0..10 { assert!(c.decide(&q, 0, 1, true).allowed); }
/// // Half-way into the next window, half of the previous window still counts: 5 free.
/// let mut admitted = 0;
/// while c.decide(&q, 1_500_000_000, 1, true).allowed { admitted += 1; }
/// assert_eq!(admitted, 5);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SlidingCounter {
    start: u64,
    prev: u64,
    cur: u64,
}

impl SlidingCounter {
    fn roll(&mut self, p: u64, now: u64) -> u64 {
        let now = now.max(self.start);
        let w = now - now % p;
        if w == self.start {
            return now;
        }
        if w == self.start + p {
            self.prev = self.cur;
        } else {
            self.prev = 0;
        }
        self.cur = 0;
        self.start = w;
        now
    }

    /// Decides a request of `cost` units at `now`; spends the quota if admitted and `commit`.
    pub fn decide(&mut self, q: &Quota, now: u64, cost: u64, commit: bool) -> Decision {
        let p = q.period_nanos();
        let n = q.limit();
        let now = self.roll(p, now);
        let e = now - self.start;
        let (pp, nn) = (u128::from(p), u128::from(n));
        let weighted = u128::from(self.prev) * u128::from(p - e);
        let used = weighted + u128::from(self.cur) * pp;
        let remaining_of = |used: u128| ((nn * pp).saturating_sub(used) / pp) as u64;
        let reset = |cur: u64, prev: u64| {
            if cur > 0 {
                self.start + 2 * p - now
            } else if prev > 0 {
                self.start + p - now
            } else {
                0
            }
        };
        if used + u128::from(cost) * pp <= nn * pp {
            if commit {
                self.cur += cost;
            }
            let after = used + u128::from(cost) * pp;
            let cur = self.cur + if commit { 0 } else { cost };
            return decision(q, true, remaining_of(after), reset(cur, self.prev), 0);
        }
        let remaining = remaining_of(used);
        let rs = reset(self.cur, self.prev);
        if cost > n {
            return decision(q, false, remaining, rs, u64::MAX);
        }
        let retry = if self.cur + cost <= n {
            // Later in this window: prev × (p − e') ≤ (n − cur − cost) × p.
            let room = u128::from(n - self.cur - cost) * pp / u128::from(self.prev.max(1));
            let e2 = p - (room.min(pp) as u64);
            e2 - e
        } else {
            // In the next window, where prev' = cur and cur' = 0.
            let e2 = if self.cur == 0 {
                0
            } else {
                let room = u128::from(n - cost) * pp / u128::from(self.cur);
                p - (room.min(pp) as u64)
            };
            (p - e) + e2
        };
        decision(q, false, remaining, rs, retry)
    }

    /// Gives back `cost` units admitted at `at`, if still in the same window.
    pub fn refund(&mut self, q: &Quota, at: u64, cost: u64) {
        if at - at % q.period_nanos() == self.start {
            self.cur = self.cur.saturating_sub(cost);
        }
    }

    /// Whether nothing counted by this state still matters at `now`.
    pub fn is_idle(&self, q: &Quota, now: u64) -> bool {
        let p = q.period_nanos();
        (self.cur == 0 && self.prev == 0)
            || now >= self.start.saturating_add(2 * p)
            || (self.cur == 0 && now >= self.start.saturating_add(p))
    }
}

/// Fixed windows aligned on multiples of `period`: at most `limit` per window.
///
/// ```
/// use std::time::Duration;
/// use stormwall_ratelimit::{Quota, algorithm::FixedWindow};
/// let q = Quota::per_second(1).unwrap();
/// let mut w = FixedWindow::default();
/// assert!(w.decide(&q, 100, 1, true).allowed);
/// let d = w.decide(&q, 250_000_000, 1, true);
/// assert_eq!(d.retry_after, Duration::from_millis(750));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedWindow {
    start: u64,
    count: u64,
}

impl FixedWindow {
    /// Decides a request of `cost` units at `now`; spends the quota if admitted and `commit`.
    pub fn decide(&mut self, q: &Quota, now: u64, cost: u64, commit: bool) -> Decision {
        let p = q.period_nanos();
        let n = q.limit();
        let now = now.max(self.start);
        let w = now - now % p;
        if w != self.start {
            self.start = w;
            self.count = 0;
        }
        let end = w + p - now;
        if self.count + cost <= n {
            if commit {
                self.count += cost;
            }
            let used = self.count + if commit { 0 } else { cost };
            let reset = if used > 0 { end } else { 0 };
            return decision(q, true, n - used, reset, 0);
        }
        let retry = if cost > n { u64::MAX } else { end };
        decision(q, false, n - self.count, end, retry)
    }

    /// Gives back `cost` units admitted at `at`, if still in the same window.
    pub fn refund(&mut self, q: &Quota, at: u64, cost: u64) {
        if at - at % q.period_nanos() == self.start {
            self.count = self.count.saturating_sub(cost);
        }
    }

    /// Whether nothing counted by this state still matters at `now`.
    pub fn is_idle(&self, q: &Quota, now: u64) -> bool {
        self.count == 0 || now >= self.start.saturating_add(q.period_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    /// A random schedule: sorted arrival times (ns) and costs.
    fn schedule() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0u64..5_000 * MS, 1u64..4), 1..300).prop_map(|mut v| {
            v.sort_unstable();
            v
        })
    }

    fn quota() -> impl Strategy<Value = Quota> {
        (1u64..20, 1u64..3_000, 1u64..30).prop_map(|(n, p_ms, b)| {
            Quota::new(n, Duration::from_millis(p_ms))
                .unwrap()
                .with_burst(b)
                .unwrap()
        })
    }

    /// Max units admitted in any window of length `len` (closed interval [t, t+len]).
    fn max_in_window(admitted: &[(u64, u64)], len: u64, half_open: bool) -> u64 {
        let mut best = 0;
        let mut sum = 0;
        let mut lo = 0;
        for (hi, &(t, c)) in admitted.iter().enumerate() {
            sum += c;
            while if half_open {
                admitted[lo].0 + len <= t
            } else {
                admitted[lo].0 + len < t
            } {
                sum -= admitted[lo].1;
                lo += 1;
            }
            let _ = hi;
            best = best.max(sum);
        }
        best
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn gcra_never_exceeds_burst_plus_rate(q in quota(), sched in schedule(), lens in prop::collection::vec(1u64..6_000 * MS, 1..5)) {
            let mut tat = 0;
            let mut admitted = Vec::new();
            for &(now, cost) in &sched {
                let (dec, new) = Gcra::decide(&q, tat, now, cost);
                prop_assert_eq!(dec.allowed, new.is_some());
                if let Some(t) = new { tat = t; admitted.push((now, cost)); }
                // retry_after is the true earliest admission: rejected just before, admitted at it.
                if !dec.allowed && dec.retry_after != Duration::MAX {
                    let r = dec.retry_after.as_nanos() as u64;
                    prop_assert!(r > 0);
                    prop_assert!(Gcra::decide(&q, tat, now + r, cost).0.allowed);
                    prop_assert!(!Gcra::decide(&q, tat, now + r - 1, cost).0.allowed);
                }
            }
            let t = q.interval_nanos();
            for len in lens {
                let max = max_in_window(&admitted, len, false);
                prop_assert!(max <= q.burst() + len / t, "{} > {} + {}/{}", max, q.burst(), len, t);
            }
        }

        #[test]
        fn leaky_bucket_spaces_releases(q in quota(), sched in schedule()) {
            let mut next = 0;
            let mut releases: Vec<(u64, u64)> = Vec::new();
            for &(now, cost) in &sched {
                let (dec, new) = LeakyBucket::decide(&q, next, now, cost);
                if let Some(n) = new {
                    next = n;
                    let at = now + dec.delay.as_nanos() as u64;
                    prop_assert!(dec.delay.as_nanos() as u64 + cost * q.interval_nanos() <= q.burst() * q.interval_nanos());
                    releases.push((at, cost));
                } else if dec.retry_after != Duration::MAX {
                    let r = dec.retry_after.as_nanos() as u64;
                    prop_assert!(LeakyBucket::decide(&q, next, now + r, cost).0.allowed);
                    prop_assert!(!LeakyBucket::decide(&q, next, now + r - 1, cost).0.allowed);
                }
            }
            for w in releases.windows(2) {
                prop_assert!(w[1].0 >= w[0].0 + w[0].1 * q.interval_nanos());
            }
        }

        #[test]
        fn sliding_log_is_exact(q in quota(), sched in schedule()) {
            let mut log = SlidingLog::default();
            let mut admitted = Vec::new();
            for &(now, cost) in &sched {
                let peek = log.clone().decide(&q, now, cost, false);
                let dec = log.decide(&q, now, cost, true);
                prop_assert_eq!(peek.allowed, dec.allowed);
                if dec.allowed { admitted.push((now, cost)); }
                else if dec.retry_after != Duration::MAX {
                    let r = dec.retry_after.as_nanos() as u64;
                    prop_assert!(log.clone().decide(&q, now + r, cost, false).allowed);
                    prop_assert!(!log.clone().decide(&q, now + r - 1, cost, false).allowed);
                }
            }
            prop_assert!(max_in_window(&admitted, q.period_nanos(), true) <= q.limit());
        }

        #[test]
        fn sliding_counter_within_documented_bound(q in quota(), sched in schedule()) {
            let mut c = SlidingCounter::default();
            let mut admitted = Vec::new();
            let p = q.period_nanos();
            for &(now, cost) in &sched {
                let dec = c.decide(&q, now, cost, true);
                if dec.allowed { admitted.push((now, cost)); }
                else if dec.retry_after != Duration::MAX {
                    let r = dec.retry_after.as_nanos() as u64;
                    let (mut a, mut b) = (c, c);
                    prop_assert!(a.decide(&q, now + r, cost, false).allowed);
                    prop_assert!(!b.decide(&q, now + r - 1, cost, false).allowed);
                }
            }
            prop_assert!(max_in_window(&admitted, p, true) <= 2 * q.limit());
            // Every aligned window is within the limit.
            let mut per_window = std::collections::HashMap::new();
            for (t, cost) in &admitted { *per_window.entry(t / p).or_insert(0) += cost; }
            prop_assert!(per_window.values().all(|&v| v <= q.limit()));
        }

        #[test]
        fn fixed_window_within_limit(q in quota(), sched in schedule()) {
            let mut w = FixedWindow::default();
            let mut per_window = std::collections::HashMap::new();
            let p = q.period_nanos();
            for &(now, cost) in &sched {
                let dec = w.decide(&q, now, cost, true);
                if dec.allowed { *per_window.entry(now / p).or_insert(0) += cost; }
                else if dec.retry_after != Duration::MAX {
                    let r = dec.retry_after.as_nanos() as u64;
                    let (mut a, mut b) = (w, w);
                    prop_assert!(a.decide(&q, now + r, cost, false).allowed);
                    prop_assert!(!b.decide(&q, now + r - 1, cost, false).allowed);
                }
            }
            prop_assert!(per_window.values().all(|&v| v <= q.limit()));
        }
    }

    #[test]
    fn cost_above_capacity_is_never() {
        let q = Quota::per_second(5).unwrap();
        let (d, _) = Gcra::decide(&q, 0, 0, 6);
        assert_eq!(d.retry_after, Duration::MAX);
        assert_eq!(
            SlidingLog::default().decide(&q, 0, 6, true).retry_after,
            Duration::MAX
        );
        assert_eq!(
            FixedWindow::default().decide(&q, 0, 6, true).retry_after,
            Duration::MAX
        );
        assert_eq!(
            SlidingCounter::default().decide(&q, 0, 6, true).retry_after,
            Duration::MAX
        );
    }

    #[test]
    fn gcra_remaining_and_reset() {
        let q = Quota::per_second(10).unwrap();
        let (d, tat) = Gcra::decide(&q, 0, 0, 1);
        assert_eq!((d.remaining, d.reset), (9, Duration::from_millis(100)));
        let (d, _) = Gcra::decide(&q, tat.unwrap(), 0, 9);
        assert_eq!((d.remaining, d.reset), (0, Duration::from_secs(1)));
    }
}
