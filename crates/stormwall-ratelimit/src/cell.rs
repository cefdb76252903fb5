//! The lock-free cells: the GCRA cell (one compare-and-swap per decision) and the quota cell
//! (a sequence lock: readers never block, writers are rare).

use crate::algorithm::{Decision, Gcra, LeakyBucket};
use crate::quota::Quota;
use crate::sync::{AtomicU64, Ordering, fence, spin};

/// A GCRA (or leaky-bucket) state: the theoretical arrival time, in nanoseconds since the
/// owner's epoch, updated with one compare-and-swap per admitted decision.
#[derive(Debug)]
pub(crate) struct GcraCell(AtomicU64);

impl GcraCell {
    /// A fresh cell (full bucket).
    pub(crate) fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// The stored theoretical arrival time.
    pub(crate) fn tat(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Decides `cost` units at `now` and, if admitted and `commit`, spends them. A failed CAS
    /// means another decision landed in between: decide again on the new state (no decision
    /// is lost, none is counted twice).
    #[inline]
    pub(crate) fn decide(
        &self,
        q: &Quota,
        now: u64,
        cost: u64,
        commit: bool,
        leaky: bool,
    ) -> Decision {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (dec, new) = if leaky {
                LeakyBucket::decide(q, cur, now, cost)
            } else {
                Gcra::decide(q, cur, now, cost)
            };
            let Some(new) = new.filter(|_| commit) else {
                return dec;
            };
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return dec,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Spends `cost` units at `now` if GCRA admits them; the decision without its figures
    /// (admitted exactly when [`decide`](Self::decide) with `commit` would admit), for callers
    /// that need no remaining/reset, e.g. a layer that writes no headers.
    #[inline]
    pub(crate) fn admit(&self, q: &Quota, now: u64, cost: u64) -> bool {
        if cost > q.burst() {
            return false;
        }
        let t = q.interval_nanos();
        let limit_at = now.saturating_add(q.burst() * t);
        let step = cost * t;
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let new = cur.max(now).saturating_add(step);
            if new > limit_at {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Forgets the state (a full bucket again).
    pub(crate) fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// A cell holding `tat`.
    pub(crate) fn with_tat(tat: u64) -> Self {
        Self(AtomicU64::new(tat))
    }

    /// Gives back `cost` units (the undo of a multi-limit check that another limit rejected).
    pub(crate) fn refund(&self, q: &Quota, cost: u64) {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let new = Gcra::refund(q, cur, cost);
            match self
                .0
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// A [`Quota`] readable without a lock: a sequence lock over its five words. Readers retry if a
/// write overlapped their read (writes are rare: run-time quota changes); writers take the
/// sequence to an odd value with a CAS, so they exclude one another without a mutex.
#[derive(Debug)]
pub(crate) struct QuotaCell {
    seq: AtomicU64,
    words: [AtomicU64; 5],
}

impl QuotaCell {
    pub(crate) fn new(quota: Quota) -> Self {
        let w = quota.to_words();
        Self {
            seq: AtomicU64::new(0),
            words: [
                AtomicU64::new(w[0]),
                AtomicU64::new(w[1]),
                AtomicU64::new(w[2]),
                AtomicU64::new(w[3]),
                AtomicU64::new(w[4]),
            ],
        }
    }

    /// A consistent snapshot (never a mix of two quotas).
    #[inline]
    pub(crate) fn get(&self) -> Quota {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let w = [
                    self.words[0].load(Ordering::Relaxed),
                    self.words[1].load(Ordering::Relaxed),
                    self.words[2].load(Ordering::Relaxed),
                    self.words[3].load(Ordering::Relaxed),
                    self.words[4].load(Ordering::Relaxed),
                ];
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Quota::from_words(w);
                }
            }
            spin();
        }
    }

    pub(crate) fn set(&self, quota: Quota) {
        let mut s = self.seq.load(Ordering::Relaxed);
        loop {
            if s & 1 == 0 {
                match self
                    .seq
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => break,
                    Err(actual) => s = actual,
                }
            } else {
                spin();
                s = self.seq.load(Ordering::Relaxed);
            }
        }
        fence(Ordering::Release);
        for (cell, w) in self.words.iter().zip(quota.to_words()) {
            cell.store(w, Ordering::Relaxed);
        }
        self.seq.store(s + 2, Ordering::Release);
    }
}
