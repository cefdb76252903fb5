//! Lock-free sliding windows: last N calls (a ring of one-byte slots) and last N seconds (a
//! ring of per-second buckets). Recording is O(1) and allocates nothing.

use crate::sync::{AtomicU8, AtomicU32, AtomicU64, Ordering};

/// Calls, failures and slow calls in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls recorded.
    pub calls: u64,
    /// Failed calls among them.
    pub failures: u64,
    /// Slow calls among them (failed or not).
    pub slow: u64,
}

impl Counts {
    /// Failure rate in percent (0 when empty).
    pub fn failure_rate(&self) -> f64 {
        rate(self.failures, self.calls)
    }

    /// Slow-call rate in percent (0 when empty).
    pub fn slow_rate(&self) -> f64 {
        rate(self.slow, self.calls)
    }
}

pub(crate) fn rate(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

pub(crate) const FAILED: u8 = 2;
pub(crate) const SLOW: u8 = 4;
const PRESENT: u8 = 1;

// Count window aggregate: calls | failures << 21 | slow << 42.
const F: u32 = 21;
const M21: u64 = (1 << F) - 1;

fn packed21(slot: u8) -> u64 {
    (slot & PRESENT) as u64
        | (((slot & FAILED) >> 1) as u64) << F
        | (((slot & SLOW) >> 2) as u64) << (2 * F)
}

fn unpack21(v: u64, max: u64) -> Option<Counts> {
    let c = Counts {
        calls: v & M21,
        failures: (v >> F) & M21,
        slow: (v >> (2 * F)) & M21,
    };
    // A concurrent record may be half applied; an inconsistent read is skipped.
    (c.calls <= max && c.failures <= c.calls && c.slow <= c.calls).then_some(c)
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    seq: AtomicU32,
    agg: AtomicU64,
    /// `u64::MAX / len + 1`, for a division-free `% len` (Lemire's fastmod).
    magic: u64,
}

#[inline]
fn fastmod(a: u32, magic: u64, d: u32) -> u32 {
    let low = magic.wrapping_mul(a as u64);
    ((low as u128 * d as u128) >> 64) as u32
}

impl CountWindow {
    pub(crate) fn new(n: u32) -> Self {
        Self {
            slots: (0..n).map(|_| AtomicU8::new(0)).collect(),
            seq: AtomicU32::new(0),
            agg: AtomicU64::new(0),
            magic: (u64::MAX / n as u64).wrapping_add(1),
        }
    }

    /// Whether the window is full of plain successes: then one more success changes nothing
    /// (the slot it would replace holds a success too).
    #[inline]
    pub(crate) fn full_of_successes(&self) -> bool {
        self.agg.load(Ordering::Relaxed) == self.slots.len() as u64
    }

    /// Records one call (`bits`: [`FAILED`] | [`SLOW`]) and returns the window after it, or
    /// `None` when the window did not change (the slot already held the same outcome: the
    /// previous judgement stands) or was read mid-update.
    #[inline]
    pub(crate) fn record(&self, bits: u8) -> Option<Counts> {
        let len = self.slots.len() as u32;
        if bits == 0 && self.agg.load(Ordering::Relaxed) == len as u64 {
            // A full window of plain successes: one more success changes nothing (the slot it
            // would replace holds a success too). The healthy steady state writes nothing.
            return None;
        }
        let i = fastmod(self.seq.fetch_add(1, Ordering::Relaxed), self.magic, len);
        let new = bits | PRESENT;
        let slot = &self.slots[i as usize];
        if slot.load(Ordering::Relaxed) == new {
            return None;
        }
        let old = slot.swap(new, Ordering::AcqRel);
        let delta = packed21(new).wrapping_sub(packed21(old));
        let after = self
            .agg
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        unpack21(after, len as u64)
    }

    pub(crate) fn counts(&self) -> Option<Counts> {
        unpack21(self.agg.load(Ordering::Acquire), self.slots.len() as u64)
    }

    /// The window recounted from its slots (the aggregate must equal it when quiescent).
    #[cfg(all(test, stormwall_loom))]
    pub(crate) fn slot_counts(&self) -> Counts {
        let mut c = Counts::default();
        for slot in self.slots.iter() {
            let v = slot.load(Ordering::Acquire);
            c.calls += (v & PRESENT) as u64;
            c.failures += ((v & FAILED) >> 1) as u64;
            c.slow += ((v & SLOW) >> 2) as u64;
        }
        c
    }

    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                self.agg.fetch_sub(packed21(old), Ordering::AcqRel);
            }
        }
    }
}

// Time window bucket word: calls (18 bits) | failures << 18 | slow << 36 | gen << 54.
const B: u32 = 18;
const M18: u64 = (1 << B) - 1;
const GEN_SHIFT: u32 = 54;
/// Generations cycle through 512 laps (a power of two: a mask, not a division, per call); the
/// 10-bit field's 1023 marks a bucket never written.
const GEN_MOD: u64 = 512;
const NO_GEN: u64 = 1023;
const NO_EPOCH: u64 = u64::MAX;
/// The most calls one second of a time window records; further calls in that second are not
/// counted (the rates are already well defined by then).
pub(crate) const MAX_CALLS_PER_SECOND: u64 = M18;

fn packed18(bits: u8) -> u64 {
    1 | (((bits & FAILED) >> 1) as u64) << B | (((bits & SLOW) >> 2) as u64) << (2 * B)
}

#[derive(Debug)]
struct Bucket {
    word: AtomicU64,
    epoch: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    /// `u64::MAX / len + 1`, for a division-free `sec / len` (Lemire's fastdiv, exact for
    /// 32-bit dividends and divisors above 1).
    magic: u64,
}

/// `a / d` for `a < 2^32` and `1 < d < 2^32`, with `magic = u64::MAX / d + 1`.
#[inline]
fn fastdiv(a: u64, magic: u64) -> u64 {
    ((magic as u128 * a as u128) >> 64) as u64
}

impl TimeWindow {
    pub(crate) fn new(secs: u32) -> Self {
        Self {
            buckets: (0..secs)
                .map(|_| Bucket {
                    word: AtomicU64::new(NO_GEN << GEN_SHIFT),
                    epoch: AtomicU64::new(NO_EPOCH),
                })
                .collect(),
            magic: (u64::MAX / secs.max(1) as u64).wrapping_add(1),
        }
    }

    /// `sec / len`: a multiplication rather than a 64-bit division on the per-call path.
    #[inline]
    fn lap(&self, sec: u64) -> u64 {
        let n = self.buckets.len() as u64;
        if n > 1 && sec <= u32::MAX as u64 {
            fastdiv(sec, self.magic)
        } else {
            sec / n
        }
    }

    pub(crate) fn secs(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn gen_of(&self, sec: u64) -> u64 {
        self.lap(sec) % GEN_MOD
    }

    /// Records one call at second `sec` (since the breaker started).
    ///
    /// A bucket's epoch (its newest second) is raised *before* its counts are written, so a
    /// record that finds another generation in the word can tell from the epoch whether the
    /// word is older (restart it) or newer (its own clock was read late: count the call in the
    /// newer second). A newer second's calls are never overwritten by a late record; a late
    /// record may be dropped when a newer lap restarts the bucket after it (it is out of the
    /// window by then).
    #[inline(always)]
    pub(crate) fn record(&self, sec: u64, bits: u8) {
        let n = self.buckets.len() as u64;
        let lap = self.lap(sec);
        let b = &self.buckets[(sec - lap * n) as usize];
        // The common case: the bucket is already this second's (its epoch is `sec`, so no
        // newer second has touched it) and holds this lap's generation: one compare-exchange,
        // exactly what the general path below does in that case. Anything else (first call of
        // a second, a late record, a lost race, a full bucket) takes the general path.
        if b.epoch.load(Ordering::Acquire) == sec {
            let cur = b.word.load(Ordering::Acquire);
            if cur >> GEN_SHIFT == lap % GEN_MOD
                && cur & M18 < MAX_CALLS_PER_SECOND
                && b.word
                    .compare_exchange(
                        cur,
                        cur + packed18(bits),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
            {
                return;
            }
        }
        self.record_general(b, sec, lap, bits);
    }

    #[inline(never)]
    fn record_general(&self, b: &Bucket, sec: u64, lap: u64, bits: u8) {
        // epoch = max(epoch, sec), NO_EPOCH counting as "none".
        let mut prev = b.epoch.load(Ordering::Acquire);
        loop {
            if prev != NO_EPOCH && prev >= sec {
                break;
            }
            match b
                .epoch
                .compare_exchange_weak(prev, sec, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => prev = actual,
            }
        }
        let first = sec;
        let mut sec = sec;
        if prev != NO_EPOCH && prev > sec {
            // A late record (its clock was read before a newer call's): count it in the newer
            // second of the same slot.
            sec = prev;
        }
        let mut generation = if sec == first {
            lap % GEN_MOD
        } else {
            self.gen_of(sec)
        };
        // The bucket's last second is of an older lap with the same generation (512 laps
        // ago): restart it rather than add to stale counts.
        let mut aliased = prev != NO_EPOCH && prev < sec && self.gen_of(prev) == generation;
        let add = packed18(bits);
        let mut cur = b.word.load(Ordering::Acquire);
        loop {
            let mut same_gen = cur >> GEN_SHIFT == generation;
            if !same_gen {
                // Whoever wrote this generation raised the epoch first: if it is newer than
                // our second, the word is newer than our record.
                let e = b.epoch.load(Ordering::Acquire);
                if e != NO_EPOCH && e > sec {
                    sec = e;
                    generation = self.gen_of(sec);
                    aliased = false;
                    same_gen = cur >> GEN_SHIFT == generation;
                }
            }
            let next = if same_gen && !aliased {
                if cur & M18 >= MAX_CALLS_PER_SECOND {
                    return;
                }
                cur + add
            } else {
                generation << GEN_SHIFT | add
            };
            match b
                .word
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => {
                    cur = actual;
                    // Someone wrote the bucket since: it is no longer the stale lap's.
                    aliased = false;
                }
            }
        }
    }

    /// The calls of the seconds `(now_sec - n, now_sec]`.
    pub(crate) fn counts(&self, now_sec: u64) -> Counts {
        let n = self.buckets.len() as u64;
        let mut c = Counts::default();
        // Walk back from the current second: one division, then a wrapping index and lap (no
        // division per bucket).
        let mut lap = self.lap(now_sec);
        let mut slot = (now_sec - lap * n) as usize;
        for k in 0..n.min(now_sec + 1) {
            let expected = now_sec - k;
            let b = &self.buckets[slot];
            let generation = lap % GEN_MOD;
            if slot == 0 {
                slot = n as usize - 1;
                lap = lap.wrapping_sub(1);
            } else {
                slot -= 1;
            }
            if b.epoch.load(Ordering::Acquire) != expected {
                continue;
            }
            let w = b.word.load(Ordering::Acquire);
            if w >> GEN_SHIFT != generation {
                continue;
            }
            c.calls += w & M18;
            c.failures += (w >> B) & M18;
            c.slow += (w >> (2 * B)) & M18;
        }
        c
    }

    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            b.word.store(NO_GEN << GEN_SHIFT, Ordering::Release);
            b.epoch.store(NO_EPOCH, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_slides() {
        let w = CountWindow::new(3);
        assert_eq!(w.record(FAILED).unwrap().failures, 1);
        w.record(0);
        w.record(SLOW);
        let c = w.record(0).unwrap(); // evicts the failure
        assert_eq!((c.calls, c.failures, c.slow), (3, 0, 1));
        assert_eq!(w.record(0), None, "success over success: unchanged");
        let c = w.record(0).unwrap(); // evicts the slow call
        assert_eq!(
            c,
            Counts {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.record(0), None, "full window of successes: skipped");
        assert_eq!(w.record(SLOW).unwrap().slow, 1);
        w.reset();
        assert_eq!(w.counts().unwrap(), Counts::default());
    }

    #[test]
    fn fastmod_is_modulo() {
        for d in [1u32, 2, 3, 7, 100, 1 << 20] {
            let m = (u64::MAX / d as u64).wrapping_add(1);
            for a in [0u32, 1, 5, 99, 100, 101, 12_345_678, u32::MAX - 1, u32::MAX] {
                assert_eq!(fastmod(a, m, d), a % d, "{a} % {d}");
            }
        }
    }

    #[test]
    fn fastdiv_is_division() {
        for d in [2u64, 3, 7, 60, 100, 3_600, 86_400, u32::MAX as u64] {
            let m = u64::MAX / d + 1;
            for a in [
                0u64,
                1,
                5,
                59,
                60,
                61,
                99,
                100,
                12_345_678,
                u32::MAX as u64 - 1,
            ] {
                assert_eq!(fastdiv(a, m), a / d, "{a} / {d}");
            }
            assert_eq!(fastdiv(u32::MAX as u64, m), u32::MAX as u64 / d);
        }
        let w = TimeWindow::new(60);
        for sec in [
            0u64,
            59,
            60,
            61,
            1 << 31,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX / 2,
        ] {
            assert_eq!(w.lap(sec), sec / 60, "{sec}");
        }
        assert_eq!(TimeWindow::new(1).lap(12_345), 12_345);
    }

    #[test]
    fn time_window_expires_seconds() {
        let w = TimeWindow::new(3);
        w.record(0, FAILED);
        w.record(1, 0);
        w.record(2, FAILED | SLOW);
        assert_eq!(
            w.counts(2),
            Counts {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        assert_eq!(
            w.counts(3),
            Counts {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        w.record(3, 0);
        assert_eq!(
            w.counts(3),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.counts(10), Counts::default());
        // Aliasing after GEN_MOD laps does not resurrect old counts.
        let aliased = 3 + 3 * GEN_MOD;
        w.record(aliased, 0);
        assert_eq!(w.counts(aliased).calls, 1);
        w.reset();
        assert_eq!(w.counts(aliased), Counts::default());
    }
}
