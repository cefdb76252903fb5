//! [`Clock`]: where a limiter reads the time.

use std::fmt;
use std::time::Duration;

use stormwall_core::time::{Epoch, Instant};

/// Where a limiter (a [`RateLimitLayer`](crate::RateLimitLayer), a [`Limiter`](crate::Limiter),
/// a [`DirectLimiter`](crate::DirectLimiter)) reads the current time.
///
/// - [`Clock::tokio`] (the **default**) reads [`tokio::time::Instant::now`], like every
///   Stormwall layer: tests can pause and advance time (`tokio::time::pause`/`advance`,
///   `#[tokio::test(start_paused = true)]`). Without tokio's `test-util` feature this is
///   `std::time::Instant::now()`, i.e. `clock_gettime(CLOCK_MONOTONIC)`: about 35 instructions,
///   and 25-90 ns per read on a virtual machine.
/// - [`Clock::tsc`] reads the CPU's time-stamp counter through [`quanta`] (what `governor`
///   does), scaled to nanoseconds and anchored to tokio's clock when the `Clock` is created:
///   cheaper per read (about 25 instructions, typically half the time of `clock_gettime` on a
///   VM). It **ignores tokio's paused clock**: use it in production paths where the clock read
///   shows in a profile, never in tests that pause time. On machines without a usable TSC,
///   quanta falls back to the OS monotonic clock.
///
/// Both clocks are monotonic. The TSC clock is calibrated against the OS clock once per process;
/// it can drift from tokio's clock by parts per million, which only matters when both are mixed
/// over long periods (a wait computed with one and slept with the other is re-checked on wake-up,
/// so at worst it sleeps once more, briefly).
///
/// ```
/// use stormwall_ratelimit::{Clock, DirectLimiter, Quota};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = DirectLimiter::with_clock(Quota::per_second(10).unwrap(), Clock::tsc());
/// assert!(limiter.try_acquire(1).is_ok());
/// assert!(!Clock::tsc().follows_tokio_pause());
/// assert!(Clock::default().follows_tokio_pause());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Clock(Repr);

#[derive(Clone, Default)]
enum Repr {
    #[default]
    Tokio,
    Tsc(Tsc),
}

#[derive(Clone)]
struct Tsc {
    clock: quanta::Clock,
    base_raw: u64,
    base: Instant,
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Repr::Tokio => "Clock::tokio",
            Repr::Tsc(_) => "Clock::tsc",
        })
    }
}

/// A clock and a starting point on it: counts nanoseconds from the starting point.
#[derive(Debug, Clone)]
pub(crate) enum Ticker {
    Tokio(Epoch),
    Tsc(quanta::Clock, u64),
}

impl Ticker {
    /// Nanoseconds from the starting point to now, plus one (so that a fresh limiter state,
    /// zero, is always in the past).
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        match self {
            Self::Tokio(epoch) => epoch.elapsed_nanos().min(u64::MAX / 2) + 1,
            Self::Tsc(clock, raw) => clock.delta_as_nanos(*raw, clock.raw()).saturating_add(1),
        }
    }
}

/// Nanoseconds since a fixed epoch (an [`InMemoryStore`](crate::InMemoryStore)'s), read
/// without building an [`Instant`] on the TSC clock: equal to the
/// nanoseconds from the epoch to `clock.now()`, plus one.
#[derive(Debug, Clone)]
pub(crate) enum EpochTicker {
    Tokio(Epoch),
    Tsc {
        clock: quanta::Clock,
        base_raw: u64,
        /// The clock's base minus the epoch, split by sign.
        ahead: u64,
        behind: u64,
    },
}

impl EpochTicker {
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        match self {
            Self::Tokio(epoch) => epoch.elapsed_nanos().min(u64::MAX / 2) + 1,
            Self::Tsc {
                clock,
                base_raw,
                ahead,
                behind,
            } => clock
                .delta_as_nanos(*base_raw, clock.raw())
                .saturating_add(*ahead)
                .saturating_sub(*behind)
                .saturating_add(1),
        }
    }
}

impl Clock {
    /// A ticker counting nanoseconds since `epoch` on this clock (see [`EpochTicker`]).
    pub(crate) fn since(&self, epoch: Instant) -> EpochTicker {
        match &self.0 {
            Repr::Tokio => EpochTicker::Tokio(Epoch::new(epoch)),
            Repr::Tsc(t) => {
                let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2);
                EpochTicker::Tsc {
                    clock: t.clock.clone(),
                    base_raw: t.base_raw,
                    ahead: nanos(t.base.saturating_duration_since(epoch)),
                    behind: nanos(epoch.saturating_duration_since(t.base)),
                }
            }
        }
    }

    /// tokio's clock (the default): follows `tokio::time::pause`/`advance`.
    pub const fn tokio() -> Self {
        Self(Repr::Tokio)
    }

    /// The CPU time-stamp counter through `quanta`, anchored to tokio's clock now. Cheaper
    /// per read; does **not** follow tokio's paused clock (see the type docs).
    pub fn tsc() -> Self {
        let clock = quanta::Clock::new();
        let base = Instant::now();
        let base_raw = clock.raw();
        Self(Repr::Tsc(Tsc {
            clock,
            base_raw,
            base,
        }))
    }

    /// Whether this clock follows tokio's paused clock (true for [`Clock::tokio`]).
    pub const fn follows_tokio_pause(&self) -> bool {
        matches!(self.0, Repr::Tokio)
    }

    /// The current time, as a tokio [`Instant`].
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.0 {
            Repr::Tokio => Instant::now(),
            Repr::Tsc(t) => {
                t.base + Duration::from_nanos(t.clock.delta_as_nanos(t.base_raw, t.clock.raw()))
            }
        }
    }

    /// A ticker counting from now on this clock.
    pub(crate) fn ticker(&self) -> Ticker {
        match &self.0 {
            Repr::Tokio => Ticker::Tokio(Epoch::now()),
            Repr::Tsc(t) => Ticker::Tsc(t.clock.clone(), t.clock.raw()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: nanoseconds from `epoch` to `now` by `Instant` arithmetic, plus one.
    fn nanos_between(epoch: Instant, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX / 2) + 1
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_pause_and_tsc_does_not() {
        let (tokio, tsc) = (Clock::tokio(), Clock::tsc());
        let (t1, t2) = (tokio.ticker(), tsc.ticker());
        let (start, tsc_start) = (tokio.now(), tsc.now());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(tokio.now() - start, Duration::from_secs(3600));
        assert_eq!(t1.nanos(), 3_600_000_000_001);
        // The TSC clock moved by real time only, not by the hour tokio advanced.
        assert!(t2.nanos() >= 1 && t2.nanos() < 1_800_000_000_000);
        assert!(tsc.now() >= tsc_start);
        assert!(tsc.now() < start + Duration::from_secs(1800));
    }

    /// The epoch ticker counts what `nanos_between(epoch, clock.now())` counts, for an epoch
    /// before or after the TSC clock's anchor, and on tokio's clock.
    #[test]
    fn epoch_ticker_matches_the_clock() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let early = Instant::now();
            let tsc = Clock::tsc();
            let late = Instant::now() + Duration::from_millis(1);
            for epoch in [early, late] {
                let ticker = tsc.since(epoch);
                let a = nanos_between(epoch, tsc.now());
                let b = ticker.nanos();
                let c = nanos_between(epoch, tsc.now());
                assert!(a <= b && b <= c, "{a} {b} {c}");
            }
            let tokio = Clock::tokio().since(early);
            let a = nanos_between(early, Instant::now());
            let b = tokio.nanos();
            assert!(a <= b && b <= nanos_between(early, Instant::now()));
        });
    }

    #[test]
    fn tsc_clock_is_anchored_to_tokio_time() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let before = Instant::now();
            let tsc = Clock::tsc();
            assert!(tsc.now() >= before);
            assert!(Instant::now() >= before);
        });
    }
}
