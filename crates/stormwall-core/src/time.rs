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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_clock_moves_only_when_advanced() {
        let start = Instant::now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
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
