//! Time, the Stormwall way.
//!
//! The rules every layer follows:
//!
//! - Layers read the clock through [`Instant::now`] (tokio's), and sleep with [`sleep`] /
//!   [`sleep_until`], never `std::time::Instant` or `std::thread::sleep`. A test can therefore
//!   call `tokio::time::pause()` (or use `#[tokio::test(start_paused = true)]`) and move time
//!   with `tokio::time::advance` — no wall-clock sleeps, no flaky timing asserts.
//! - Pure algorithms (GCRA, breaker windows, HTTP freshness) take `now` as an argument and
//!   never read a clock themselves, so they can be tested without a runtime.
//! - Wall-clock time ([`std::time::SystemTime`]) is read only where a protocol needs it: HTTP
//!   dates in `Retry-After`, `Date`, `Expires`, `Last-Modified`. [`system_now`] is the one
//!   place the layers read it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use stormwall_core::time::{Instant, saturating_add};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let start = Instant::now();
//! tokio::time::advance(Duration::from_secs(5)).await;
//! assert_eq!(start.elapsed(), Duration::from_secs(5));
//! // Adding a hostile, enormous duration never panics.
//! let far = saturating_add(start, Duration::MAX);
//! assert!(far > start);
//! # }
//! ```

use std::time::{Duration, SystemTime};

pub use tokio::time::{Instant, sleep, sleep_until};

/// The current wall-clock time. Only used for HTTP dates; everything else uses [`Instant`].
pub fn system_now() -> SystemTime {
    SystemTime::now()
}

/// About 30 years: the largest duration the layers add to an [`Instant`]. Anything larger
/// (e.g. a hostile `Retry-After: 99999999999`) is clamped to this, which is never reached in
/// practice and never overflows.
pub const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `instant + duration`, clamped so that it never overflows or panics.
pub fn saturating_add(instant: Instant, duration: Duration) -> Instant {
    let duration = duration.min(FAR_FUTURE);
    instant
        .checked_add(duration)
        .unwrap_or_else(|| instant + Duration::from_secs(86_400))
}

/// A fixed [`Instant`] that later instants are counted from, in nanoseconds, cheaply.
///
/// Rate limiters and breaker windows keep their state as integers ("nanoseconds since some
/// start") and convert every clock read. Through `Instant` arithmetic that conversion costs
/// more than the clock read itself (about 55 instructions: `duration_since`, then
/// `Duration::as_nanos`); an `Epoch` does it in a few, by reading the instant's seconds and
/// nanoseconds through its `Hash` implementation (safe code). That representation is
/// checked when the epoch is made, against `Instant` arithmetic on two known instants; should
/// a future standard library hash instants differently, every conversion falls back to the
/// arithmetic, with the same results.
///
/// It reads tokio's [`Instant::now`], so it follows a paused clock like everything else here.
///
/// ```
/// use std::time::Duration;
/// use stormwall_core::time::{Epoch, Instant};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let epoch = Epoch::now();
/// tokio::time::advance(Duration::from_millis(1500)).await;
/// assert_eq!(epoch.elapsed_nanos(), 1_500_000_000);
/// assert_eq!(epoch.nanos_to(epoch.instant() + Duration::from_nanos(7)), 7);
/// // Instants before the epoch count as zero.
/// let earlier = Instant::now() - Duration::from_secs(10);
/// assert_eq!(epoch.nanos_to(earlier), 0);
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    instant: Instant,
    /// The epoch's own reading when the fast conversion was verified, else `None`.
    raw: Option<u64>,
}

impl Epoch {
    /// An epoch at `instant`.
    pub fn new(instant: Instant) -> Self {
        Self {
            instant,
            raw: verified_raw(instant),
        }
    }

    /// An epoch at tokio's now.
    pub fn now() -> Self {
        Self::new(Instant::now())
    }

    /// The instant this epoch counts from.
    pub const fn instant(&self) -> Instant {
        self.instant
    }

    /// Nanoseconds from the epoch to `t`: zero if `t` is earlier, `u64::MAX` past 584 years.
    /// Equal to `t.saturating_duration_since(epoch.instant()).as_nanos()`, clamped.
    #[inline]
    pub fn nanos_to(&self, t: Instant) -> u64 {
        if let Some(base) = self.raw
            && let Some(raw) = raw_nanos(t)
        {
            return raw.saturating_sub(base);
        }
        u64::try_from(t.saturating_duration_since(self.instant).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the epoch to tokio's now (see [`nanos_to`](Self::nanos_to)).
    #[inline]
    pub fn elapsed_nanos(&self) -> u64 {
        self.nanos_to(Instant::now())
    }
}

/// The seconds and nanoseconds an [`Instant`] feeds its hasher, if it feeds exactly a signed
/// 64-bit count of seconds and a 32-bit count of nanoseconds (below one second).
#[derive(Default)]
struct Fields {
    secs: Option<i64>,
    nanos: Option<u32>,
    other: bool,
}

impl std::hash::Hasher for Fields {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, _: &[u8]) {
        self.other = true;
    }
    #[inline]
    fn write_i64(&mut self, v: i64) {
        self.other |= self.secs.is_some() || self.nanos.is_some();
        self.secs = Some(v);
    }
    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.other |= self.secs.is_none() || self.nanos.is_some();
        self.nanos = Some(v);
    }
}

/// The instant as nanoseconds on its own clock's scale (see [`Fields`]).
#[inline]
fn raw_nanos(t: Instant) -> Option<u64> {
    use std::hash::Hash;
    let mut f = Fields::default();
    t.hash(&mut f);
    match f {
        Fields {
            secs: Some(s),
            nanos: Some(n),
            other: false,
        } if n < 1_000_000_000 => u64::try_from(s)
            .ok()?
            .checked_mul(1_000_000_000)?
            .checked_add(u64::from(n)),
        _ => None,
    }
}

/// `instant`'s raw reading, if the raw readings of instants around it agree with `Instant`
/// arithmetic (so [`raw_nanos`] differences are true durations).
fn verified_raw(instant: Instant) -> Option<u64> {
    let base = raw_nanos(instant)?;
    [
        Duration::from_nanos(1),
        Duration::new(1, 500_000_007),
        Duration::new(86_400, 999_999_999),
    ]
    .into_iter()
    .all(|d| {
        instant
            .checked_add(d)
            .and_then(raw_nanos)
            .and_then(|r| r.checked_sub(base))
            == u64::try_from(d.as_nanos()).ok()
    })
    .then_some(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_clock_moves_only_when_advanced() {
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn epoch_counts_like_instant_arithmetic() {
        let epoch = Epoch::now();
        assert!(
            epoch.raw.is_some(),
            "the fast conversion verifies on this platform"
        );
        let slow = |t: Instant| {
            u64::try_from(t.saturating_duration_since(epoch.instant()).as_nanos()).unwrap()
        };
        for step in [
            0,
            1,
            999,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            3_723_000_000_017,
        ] {
            let t = epoch.instant() + Duration::from_nanos(step);
            assert_eq!(epoch.nanos_to(t), step);
            assert_eq!(epoch.nanos_to(t), slow(t));
        }
        tokio::time::advance(Duration::from_nanos(2_500_000_003)).await;
        assert_eq!(epoch.elapsed_nanos(), 2_500_000_003);
        assert_eq!(epoch.nanos_to(epoch.instant() - Duration::from_nanos(1)), 0);
        // The slow path (no verified reading) gives the same figures.
        let unverified = Epoch { raw: None, ..epoch };
        assert_eq!(unverified.elapsed_nanos(), 2_500_000_003);
    }

    #[test]
    fn fields_reject_unexpected_shapes() {
        use std::hash::Hasher;
        let mut f = Fields::default();
        f.write_u32(5);
        f.write_i64(1);
        assert!(
            f.other,
            "nanoseconds before seconds is not the expected shape"
        );
        let mut f = Fields::default();
        f.write_i64(1);
        f.write_u32(5);
        f.write(b"x");
        assert!(f.other);
    }

    #[test]
    fn saturating_add_never_panics() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let now = Instant::now();
            assert!(saturating_add(now, Duration::MAX) > now);
            assert_eq!(
                saturating_add(now, Duration::from_secs(1)),
                now + Duration::from_secs(1)
            );
        });
    }
}
