//! [`Quota`]: how much, per how long, with how much burst.

use std::time::Duration;

/// Why a [`Quota`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The number of requests per period is zero.
    #[error("a quota must allow at least one request per period")]
    ZeroLimit,
    /// The period is zero.
    #[error("a quota period must be longer than zero")]
    ZeroPeriod,
    /// The burst is zero.
    #[error("a quota burst must be at least one")]
    ZeroBurst,
    /// A fractional rate that is zero, negative, not finite or too small to represent.
    #[error("a rate must be a finite number of requests per second above 1e-9")]
    InvalidRate,
    /// The period or the burst is so large that the limiter's nanosecond arithmetic would overflow.
    #[error("the quota is too large (period above ~100 years or burst × interval overflows)")]
    TooLarge,
}

/// The largest period a quota accepts: about 100 years, so that every computation in
/// nanoseconds fits an `u64` with room to spare.
const MAX_PERIOD_NANOS: u64 = 100 * 365 * 86_400 * 1_000_000_000;

/// A rate limit: `limit` units per `period`, with a `burst` capacity.
///
/// - For GCRA and the leaky bucket, the quota is a rate of one unit every
///   [`emission_interval`](Quota::emission_interval) (`period / limit`, rounded **up** to the
///   nanosecond, so the limiter is never more generous than the quota) and a capacity of
///   [`burst`](Quota::burst) units (`limit` unless set). Over any interval of length `t`, at
///   most `burst + t / emission_interval` units are admitted.
/// - For the window algorithms, the quota is `limit` units per window of length `period`;
///   the burst is not used.
///
/// Any [`Duration`] works as the period, so fractional rates are exact: one request every
/// two seconds is `Quota::new(1, Duration::from_secs(2))`, or [`Quota::per_second_f64(0.5)`](Quota::per_second_f64).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use stormwall_ratelimit::Quota;
///
/// let q = Quota::per_second(10).unwrap().with_burst(20).unwrap();
/// assert_eq!(q.limit(), 10);
/// assert_eq!(q.burst(), 20);
/// assert_eq!(q.emission_interval(), Duration::from_millis(100));
///
/// let half = Quota::per_second_f64(0.5).unwrap();
/// assert_eq!(half.emission_interval(), Duration::from_secs(2));
///
/// assert!(Quota::per_minute(0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u64,
    period: u64,
    burst: u64,
    interval: u64,
    /// `u64::MAX / interval`: divides by the interval with a multiplication (see
    /// [`div_interval`](Quota::div_interval)).
    recip: u64,
}

impl Quota {
    /// `limit` units per `period`, with a burst of `limit`.
    pub fn new(limit: u64, period: Duration) -> Result<Self, QuotaError> {
        if limit == 0 {
            return Err(QuotaError::ZeroLimit);
        }
        let period = u64::try_from(period.as_nanos()).map_err(|_| QuotaError::TooLarge)?;
        if period == 0 {
            return Err(QuotaError::ZeroPeriod);
        }
        if period > MAX_PERIOD_NANOS {
            return Err(QuotaError::TooLarge);
        }
        let interval = period.div_ceil(limit).max(1);
        Self {
            limit,
            period,
            burst: limit,
            interval,
            recip: u64::MAX / interval,
        }
        .checked()
    }

    /// `limit` units per second.
    pub fn per_second(limit: u64) -> Result<Self, QuotaError> {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` units per minute.
    pub fn per_minute(limit: u64) -> Result<Self, QuotaError> {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` units per hour.
    pub fn per_hour(limit: u64) -> Result<Self, QuotaError> {
        Self::new(limit, Duration::from_secs(3600))
    }

    /// A fractional rate in units per second (e.g. `0.5`: one unit every two seconds), as one
    /// unit per `1 / rate` seconds, with a burst of one.
    pub fn per_second_f64(rate: f64) -> Result<Self, QuotaError> {
        if !rate.is_finite() || rate < 1e-9 {
            return Err(QuotaError::InvalidRate);
        }
        let nanos = (1e9 / rate).ceil();
        if nanos > MAX_PERIOD_NANOS as f64 {
            return Err(QuotaError::TooLarge);
        }
        Self::new(1, Duration::from_nanos(nanos as u64))
    }

    /// Sets the burst capacity (GCRA, leaky bucket).
    pub fn with_burst(mut self, burst: u64) -> Result<Self, QuotaError> {
        if burst == 0 {
            return Err(QuotaError::ZeroBurst);
        }
        self.burst = burst;
        self.checked()
    }

    fn checked(self) -> Result<Self, QuotaError> {
        match self.burst.checked_mul(self.interval) {
            Some(tau) if tau <= MAX_PERIOD_NANOS.saturating_mul(16) => Ok(self),
            _ => Err(QuotaError::TooLarge),
        }
    }

    /// Units per period.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// The period (window length).
    pub const fn period(&self) -> Duration {
        Duration::from_nanos(self.period)
    }

    /// The burst capacity.
    pub const fn burst(&self) -> u64 {
        self.burst
    }

    /// The time one unit of quota takes to replenish: `period / limit`, rounded up.
    pub const fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }

    pub(crate) const fn period_nanos(&self) -> u64 {
        self.period
    }

    pub(crate) const fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// `x / interval`, exact, without a division instruction (a hardware division costs
    /// 25-90 cycles; this is two multiplications and a comparison). With
    /// `m = ⌊(2⁶⁴−1)/t⌋`, `⌊x·m/2⁶⁴⌋` is `⌊x/t⌋` or one less (the error is below
    /// `x/2⁶⁴ · (1/t + frac) < 1`), and one correction step fixes it.
    #[inline]
    pub(crate) const fn div_interval(&self, x: u64) -> u64 {
        let q = ((x as u128 * self.recip as u128) >> 64) as u64;
        if x - q * self.interval >= self.interval {
            q + 1
        } else {
            q
        }
    }

    /// The quota as five words, for the lock-free quota cell.
    pub(crate) const fn to_words(self) -> [u64; 5] {
        [
            self.limit,
            self.period,
            self.burst,
            self.interval,
            self.recip,
        ]
    }

    /// The inverse of [`to_words`](Self::to_words) (only ever given words it produced).
    pub(crate) const fn from_words(w: [u64; 5]) -> Self {
        Self {
            limit: w[0],
            period: w[1],
            burst: w[2],
            interval: w[3],
            recip: w[4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert_eq!(Quota::per_second(0), Err(QuotaError::ZeroLimit));
        assert_eq!(Quota::new(1, Duration::ZERO), Err(QuotaError::ZeroPeriod));
        assert_eq!(
            Quota::per_second(1).unwrap().with_burst(0),
            Err(QuotaError::ZeroBurst)
        );
        assert_eq!(
            Quota::per_second_f64(f64::NAN),
            Err(QuotaError::InvalidRate)
        );
        assert_eq!(Quota::per_second_f64(-1.0), Err(QuotaError::InvalidRate));
        assert_eq!(Quota::new(1, Duration::MAX), Err(QuotaError::TooLarge));
        assert_eq!(
            Quota::per_second(1).unwrap().with_burst(u64::MAX),
            Err(QuotaError::TooLarge)
        );
    }

    #[test]
    fn div_interval_is_exact() {
        let mut xs = vec![0, 1, 2, 999, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            xs.push(x);
            xs.push(x >> (x % 64));
        }
        for t in [
            1,
            2,
            3,
            7,
            10,
            333_333_334,
            1_000_000_000,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let q = Quota::new(1, Duration::from_nanos(1)).unwrap();
            let q = Quota {
                interval: t,
                recip: u64::MAX / t,
                ..q
            };
            for &x in &xs {
                assert_eq!(q.div_interval(x), x / t, "{x} / {t}");
            }
        }
    }

    #[test]
    fn intervals_round_up() {
        let q = Quota::per_second(3).unwrap();
        assert_eq!(q.emission_interval(), Duration::from_nanos(333_333_334));
        let q = Quota::per_hour(3600).unwrap();
        assert_eq!(q.emission_interval(), Duration::from_secs(1));
        let q = Quota::per_second_f64(4.0).unwrap();
        assert_eq!(q.emission_interval(), Duration::from_millis(250));
        assert_eq!(q.burst(), 1);
    }
}
