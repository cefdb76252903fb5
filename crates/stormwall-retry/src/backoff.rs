//! Backoff schedules and jitter.

use std::time::Duration;

use crate::error::InvalidBackoff;

/// How the un-jittered delay grows with the retry number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackoffKind {
    /// Always `base`.
    Fixed,
    /// `base * n` for the n-th retry.
    Linear,
    /// `base * factor^(n-1)` for the n-th retry.
    Exponential {
        /// The growth factor (≥ 1, finite).
        factor: f64,
    },
}

/// How randomness is applied to the delay `d` computed by the [`BackoffKind`] (see the AWS
/// architecture blog "Exponential Backoff And Jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly `d`.
    None,
    /// Uniform in `[0, d]`.
    #[default]
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
    /// Uniform in `[base, 3 × previous delay]`, capped at `max`.
    Decorrelated,
}

/// A small, seedable pseudo-random generator (SplitMix64) for jitter.
///
/// Deterministic for a given seed, so backoff sequences can be tested.
///
/// ```
/// use stormwall_retry::JitterRng;
/// let mut a = JitterRng::new(7);
/// let mut b = JitterRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// ```
#[derive(Debug, Clone)]
pub struct JitterRng(u64);

impl JitterRng {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform duration in `[lo, hi]` (returns `lo` when `hi <= lo`).
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_nanos().min(u64::MAX as u128) as u64;
        let r = if span == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (span + 1)
        };
        lo + Duration::from_nanos(r)
    }
}

/// A backoff schedule: a [`BackoffKind`], a base and a max delay, and a [`Jitter`].
///
/// The default is exponential (factor 2) from 100 ms to 10 s with full jitter.
///
/// ```
/// use std::time::Duration;
/// use stormwall_retry::{Backoff, Jitter, JitterRng};
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
///     .unwrap()
///     .jitter(Jitter::None);
/// let mut rng = JitterRng::new(1);
/// let mut prev = Duration::ZERO;
/// let delays: Vec<_> = (1..=5).map(|n| { prev = backoff.delay(n, prev, &mut rng); prev }).collect();
/// assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
///
/// // Invalid configurations are typed errors, not panics.
/// assert!(Backoff::exponential(Duration::from_secs(2), Duration::from_secs(1)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    kind: BackoffKind,
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            kind: BackoffKind::Exponential { factor: 2.0 },
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// No delay at all between attempts.
    pub const fn none() -> Self {
        Self {
            kind: BackoffKind::Fixed,
            base: Duration::ZERO,
            max: Duration::ZERO,
            jitter: Jitter::None,
        }
    }

    /// The same `delay` before every retry (no jitter unless set with [`Backoff::jitter`]).
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            kind: BackoffKind::Fixed,
            base: delay,
            max: delay,
            jitter: Jitter::None,
        }
    }

    /// `base × n`, capped at `max`, with full jitter.
    pub fn linear(base: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        Self::validated(BackoffKind::Linear, base, max)
    }

    /// `base × 2^(n-1)`, capped at `max`, with full jitter.
    pub fn exponential(base: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        Self::validated(BackoffKind::Exponential { factor: 2.0 }, base, max)
    }

    fn validated(kind: BackoffKind, base: Duration, max: Duration) -> Result<Self, InvalidBackoff> {
        if base > max {
            return Err(InvalidBackoff::BaseAboveMax { base, max });
        }
        Ok(Self {
            kind,
            base,
            max,
            jitter: Jitter::Full,
        })
    }

    /// Sets the growth factor of an exponential backoff (must be finite and ≥ 1).
    pub fn factor(mut self, factor: f64) -> Result<Self, InvalidBackoff> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(InvalidBackoff::Factor(factor));
        }
        self.kind = BackoffKind::Exponential { factor };
        Ok(self)
    }

    /// Sets the jitter mode.
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The kind of growth.
    pub const fn kind(&self) -> BackoffKind {
        self.kind
    }

    /// The base delay.
    pub const fn base(&self) -> Duration {
        self.base
    }

    /// The max delay.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The jitter mode.
    pub const fn jitter_mode(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay before retry number `retry` (1 for the first retry).
    pub fn nominal(&self, retry: u32) -> Duration {
        let n = retry.max(1);
        let d = match self.kind {
            BackoffKind::Fixed => self.base,
            BackoffKind::Linear => self.base.saturating_mul(n),
            BackoffKind::Exponential { factor } => {
                let mult = factor.powi(i32::try_from(n - 1).unwrap_or(i32::MAX));
                let secs = self.base.as_secs_f64() * mult;
                if secs.is_finite() && secs < self.max.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    self.max
                }
            }
        };
        d.min(self.max)
    }

    /// The jittered delay before retry number `retry` (1-based); `prev` is the previous delay
    /// (used by [`Jitter::Decorrelated`]; pass `Duration::ZERO` for the first retry).
    pub fn delay(&self, retry: u32, prev: Duration, rng: &mut JitterRng) -> Duration {
        let d = self.nominal(retry);
        match self.jitter {
            Jitter::None => d,
            Jitter::Full => rng.between(Duration::ZERO, d),
            Jitter::Equal => rng.between(d / 2, d),
            Jitter::Decorrelated => {
                let prev = prev.max(self.base);
                let hi = prev.saturating_mul(3).min(self.max);
                rng.between(self.base, hi)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(b: &Backoff, seed: u64, n: u32) -> Vec<Duration> {
        let mut rng = JitterRng::new(seed);
        let mut prev = Duration::ZERO;
        (1..=n)
            .map(|i| {
                prev = b.delay(i, prev, &mut rng);
                prev
            })
            .collect()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn kinds_without_jitter() {
        let lin = Backoff::linear(MS * 10, MS * 35)
            .unwrap()
            .jitter(Jitter::None);
        assert_eq!(seq(&lin, 1, 5), [10, 20, 30, 35, 35].map(|m| MS * m));
        let fixed = Backoff::fixed(MS * 7);
        assert_eq!(seq(&fixed, 1, 3), [MS * 7; 3]);
        let exp = Backoff::exponential(MS * 10, MS * 1000)
            .unwrap()
            .factor(3.0)
            .unwrap()
            .jitter(Jitter::None);
        assert_eq!(
            seq(&exp, 1, 6),
            [10, 30, 90, 270, 810, 1000].map(|m| MS * m)
        );
        // huge retry numbers saturate at max, never panic
        assert_eq!(exp.nominal(u32::MAX), MS * 1000);
    }

    #[test]
    fn jitter_modes_stay_in_range() {
        let base = MS * 10;
        let max = MS * 2000;
        for seed in 0..200 {
            let full = Backoff::exponential(base, max).unwrap();
            for (i, d) in seq(&full, seed, 12).into_iter().enumerate() {
                assert!(d <= full.nominal(i as u32 + 1), "full {d:?}");
            }
            let equal = full.jitter(Jitter::Equal);
            for (i, d) in seq(&equal, seed, 12).into_iter().enumerate() {
                let n = equal.nominal(i as u32 + 1);
                assert!(d >= n / 2 && d <= n, "equal {d:?} vs {n:?}");
            }
            let dec = full.jitter(Jitter::Decorrelated);
            let s = seq(&dec, seed, 12);
            let mut prev = base;
            for d in s {
                assert!(d >= base && d <= max && d <= prev * 3, "decorrelated {d:?}");
                prev = d;
            }
        }
    }

    #[test]
    fn full_jitter_actually_varies() {
        let full = Backoff::exponential(MS * 100, MS * 100).unwrap();
        let s = seq(&full, 3, 20);
        assert!(s.iter().any(|d| *d != s[0]));
    }

    #[test]
    fn invalid_configs_are_errors() {
        assert!(matches!(
            Backoff::linear(MS * 2, MS),
            Err(InvalidBackoff::BaseAboveMax { .. })
        ));
        let b = Backoff::default();
        assert!(b.factor(0.5).is_err());
        assert!(b.factor(f64::NAN).is_err());
        assert!(b.factor(f64::INFINITY).is_err());
    }
}
