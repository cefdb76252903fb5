//! A lock-free retry budget (token bucket over a sliding TTL window).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stormwall_core::time::Instant;

use crate::error::InvalidBudget;

const SLOTS: usize = 10;
const MILLI: i64 = 1000;

/// A retry budget shared by every clone of a [`RetryLayer`](crate::RetryLayer)'s services
/// (Finagle's `RetryBudget`, gRPC A6 retry throttling).
///
/// - Every **success** deposits `ratio` tokens; every **retry** (and every hedge) withdraws
///   one. A retry is allowed only if a whole token is available.
/// - Deposits and withdrawals count for `ttl` (a sliding window of 10 slots), then expire.
/// - A **floor** of `min_per_sec × ttl` tokens is always added, so that a low-traffic client
///   can still retry a little (`min_per_sec` retries per second on average).
///
/// Under a total outage there are no successes, so the extra load is at most the floor; with a
/// mix of successes and failures, retries stay below `ratio` × successes + the floor.
///
/// The state is a ring of `AtomicU64` slots updated by compare-and-swap: no lock. Concurrent
/// withdrawals may overdraw by at most the number of racing callers.
///
/// ```
/// use std::time::Duration;
/// use stormwall_retry::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap();
/// assert!(!budget.withdraw()); // nothing deposited, no floor
/// budget.deposit();
/// budget.deposit();
/// assert!(budget.withdraw()); // two successes paid for one retry
/// assert!(!budget.withdraw());
/// # }
/// ```
pub struct RetryBudget {
    ratio_milli: i64,
    reserve_milli: i64,
    ttl: Duration,
    slot_nanos: u64,
    start: Instant,
    unlimited: bool,
    slots: [AtomicU64; SLOTS],
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &(self.ratio_milli as f64 / MILLI as f64))
            .field("floor_tokens", &(self.reserve_milli / MILLI))
            .field("ttl", &self.ttl)
            .field("unlimited", &self.unlimited)
            .finish()
    }
}

impl Default for RetryBudget {
    /// TTL 10 s, floor 10 retries per second, ratio 0.2.
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 10, 0.2).expect("valid defaults")
    }
}

fn pack(epoch: u32, milli: i32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(milli as u32)
}

fn unpack(v: u64) -> (u32, i32) {
    ((v >> 32) as u32, v as u32 as i32)
}

impl RetryBudget {
    /// A budget where deposits and withdrawals live for `ttl` (1 s..=60 s), with a floor of
    /// `min_per_sec` retries per second and `ratio` tokens deposited per success.
    pub fn new(ttl: Duration, min_per_sec: u32, ratio: f32) -> Result<Self, InvalidBudget> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(60) {
            return Err(InvalidBudget::Ttl(ttl));
        }
        if !ratio.is_finite() || !(0.0..=1000.0).contains(&ratio) {
            return Err(InvalidBudget::Ratio(ratio));
        }
        if min_per_sec > 1_000_000 {
            return Err(InvalidBudget::Floor(min_per_sec));
        }
        let reserve_milli =
            (i64::from(min_per_sec) * MILLI).saturating_mul(ttl.as_millis() as i64) / 1000;
        Ok(Self {
            ratio_milli: (f64::from(ratio) * MILLI as f64).round() as i64,
            reserve_milli,
            ttl,
            slot_nanos: (ttl.as_nanos() / SLOTS as u128) as u64,
            start: Instant::now(),
            unlimited: false,
            slots: Default::default(),
        })
    }

    /// A budget that never refuses a retry (use with care: retries then multiply load).
    pub fn unlimited() -> Self {
        Self {
            unlimited: true,
            ..Self::default()
        }
    }

    /// Whether this budget never refuses.
    pub fn is_unlimited(&self) -> bool {
        self.unlimited
    }

    fn epoch(&self, now: Instant) -> u32 {
        let nanos =
            u64::try_from(now.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        (nanos / self.slot_nanos.max(1)) as u32
    }

    fn add(&self, now: Instant, milli: i64) {
        let epoch = self.epoch(now);
        let slot = &self.slots[epoch as usize % SLOTS];
        let mut cur = slot.load(Ordering::Acquire);
        loop {
            let (e, v) = unpack(cur);
            let base = if e == epoch { i64::from(v) } else { 0 };
            let next = (base + milli).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
            match slot.compare_exchange_weak(
                cur,
                pack(epoch, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Available balance in milli-tokens at `now`.
    fn balance_milli(&self, now: Instant) -> i64 {
        let epoch = self.epoch(now);
        let mut sum = self.reserve_milli;
        for slot in &self.slots {
            let (e, v) = unpack(slot.load(Ordering::Acquire));
            if epoch.wrapping_sub(e) < SLOTS as u32 && (e != 0 || v != 0) {
                sum += i64::from(v);
            }
        }
        sum
    }

    /// Records a success at `now` (deposits `ratio` tokens).
    pub fn deposit_at(&self, now: Instant) {
        if self.ratio_milli > 0 && !self.unlimited {
            self.add(now, self.ratio_milli);
        }
    }

    /// Records a success now.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Tries to take one token at `now` for a retry; `false` means the budget is exhausted.
    pub fn withdraw_at(&self, now: Instant) -> bool {
        if self.unlimited {
            return true;
        }
        if self.balance_milli(now) < MILLI {
            return false;
        }
        self.add(now, -MILLI);
        true
    }

    /// Tries to take one token now for a retry.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    /// Whole tokens available at `now` (the floor included).
    pub fn balance_at(&self, now: Instant) -> i64 {
        self.balance_milli(now) / MILLI
    }

    /// Whole tokens available now.
    pub fn balance(&self) -> i64 {
        self.balance_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_refills_as_withdrawals_expire() {
        let b = RetryBudget::new(Duration::from_secs(10), 2, 0.0).unwrap();
        let t0 = Instant::now();
        let mut granted = 0;
        for _ in 0..100 {
            granted += usize::from(b.withdraw_at(t0));
        }
        assert_eq!(granted, 20, "floor = 2/s × 10 s");
        // After the window passes, the floor is available again.
        let t1 = t0 + Duration::from_secs(11);
        assert!(b.withdraw_at(t1));
        assert_eq!(b.balance_at(t1), 19);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_bounds_retries_and_deposits_expire() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        let granted = (0..100).filter(|_| b.withdraw_at(t0)).count();
        assert_eq!(granted, 20);
        for _ in 0..50 {
            b.deposit_at(t0);
        }
        // Deposits older than the TTL are gone.
        assert_eq!(b.balance_at(t0 + Duration::from_secs(11)), 0);
        assert!(!b.withdraw_at(t0 + Duration::from_secs(11)));
    }

    #[tokio::test(start_paused = true)]
    async fn shared_across_threads_never_grants_much_more_than_balance() {
        let b = std::sync::Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 1.0).unwrap());
        let t0 = Instant::now();
        for _ in 0..1000 {
            b.deposit_at(t0);
        }
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.withdraw_at(t0)).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert!((1000..=1004).contains(&total), "granted {total}");
    }

    #[test]
    fn invalid_configs() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(RetryBudget::new(Duration::from_millis(10), 1, 0.2).is_err());
            assert!(RetryBudget::new(Duration::from_secs(1), 1, f32::NAN).is_err());
            assert!(RetryBudget::new(Duration::from_secs(1), 1, -1.0).is_err());
            assert!(RetryBudget::new(Duration::from_secs(1), u32::MAX, 0.1).is_err());
            assert!(RetryBudget::unlimited().withdraw());
        });
    }
}
