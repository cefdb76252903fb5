//! The programmatic API, outside tower: [`Limiter`] (keyed, any store) and
//! [`DirectLimiter`] (one lock-free GCRA cell).

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use stormwall_core::time::sleep;

use crate::algorithm::{Algorithm, Decision};
use crate::cell::GcraCell;
use crate::clock::{Clock, EpochTicker, Ticker};
use crate::limit::QuotaHandle;
use crate::memory::InMemoryStore;
use crate::quota::Quota;
use crate::store::{CheckMode, FULL_STORE_RETRY, LimitCheck, LimitId, LimitKey, Store, StoreError};

/// Why [`Limiter::acquire`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcquireError {
    /// The cost can never fit the quota (above the burst / limit).
    #[error("the cost exceeds what the quota can ever admit")]
    Never,
    /// Admission is later than the maximum wait.
    #[error("admission would take {0:?}, longer than the maximum wait")]
    TooLong(Duration),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A keyed rate limiter for direct use (no tower): one limit over any [`Store`].
///
/// ```
/// use std::time::Duration;
/// use stormwall_ratelimit::{Limiter, Quota};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = Limiter::new("per-user", Quota::per_second(2).unwrap());
/// assert!(limiter.try_acquire(&"alice", 1).is_ok());
/// assert_eq!(limiter.available(&"alice"), 1);
/// assert!(limiter.try_acquire(&"alice", 1).is_ok());
/// let no = limiter.try_acquire(&"alice", 1).unwrap_err();
/// assert_eq!(no.retry_after, Duration::from_millis(500));
/// // `acquire` waits for the quota (here 500 ms of paused time).
/// let waited = limiter.acquire(&"alice", 1, Duration::from_secs(1)).await.unwrap();
/// assert_eq!(waited, Duration::from_millis(500));
/// limiter.reset(&"alice");
/// assert_eq!(limiter.available(&"alice"), 2);
/// # }
/// ```
pub struct Limiter<St = InMemoryStore> {
    id: LimitId,
    quota: QuotaHandle,
    algorithm: Algorithm,
    store: Arc<St>,
    clock: Clock,
    /// The clock in an [`InMemoryStore`]'s time (nanoseconds since its epoch), made on first
    /// use: reads the time without building an `Instant` and subtracting.
    ticker: OnceLock<EpochTicker>,
}

impl<St> Clone for Limiter<St> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            quota: self.quota.clone(),
            algorithm: self.algorithm,
            store: self.store.clone(),
            clock: self.clock.clone(),
            ticker: self.ticker.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for Limiter<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.id.name())
            .field("quota", &self.quota.get())
            .field("algorithm", &self.algorithm)
            .field("store", &self.store)
            .finish()
    }
}

impl Limiter<InMemoryStore> {
    /// A GCRA limiter over a new [`InMemoryStore`].
    pub fn new(name: impl Into<Arc<str>>, quota: Quota) -> Self {
        Self::with_store(name, quota, InMemoryStore::new())
    }

    /// Decides now, spending `cost` if admitted: `Ok(decision)` or `Err(decision)` with the
    /// exact [`retry_after`](Decision::retry_after). A full store refuses new keys with an
    /// `Err` whose `retry_after` is one second.
    pub fn try_acquire<K: fmt::Debug + Any>(
        &self,
        key: &K,
        cost: u64,
    ) -> Result<Decision, Decision> {
        let key = LimitKey::from_key(key);
        match self.store.check_at(
            self.nanos(),
            &[self.limit_check(&key, cost)],
            CheckMode::Acquire,
        ) {
            Ok(d) if d.allowed => Ok(d),
            Ok(d) => Err(d),
            Err(_) => Err(Decision {
                allowed: false,
                retry_after: FULL_STORE_RETRY,
                ..crate::store::unlimited()
            }),
        }
    }

    /// Spends `cost` units of `key`'s quota now if they are available: `Ok(())`, or
    /// `Err(retry_after)`, the exact wait until the same request would be admitted
    /// ([`Duration::MAX`] if it never can be). The decision of
    /// [`try_acquire`](Self::try_acquire) without its figures (remaining units, reset), for
    /// callers that only need yes or no, like `governor`'s `check_key`: a GCRA key costs one
    /// map look-up and one compare-and-swap. A full store refuses new keys with one second.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_ratelimit::{Limiter, Quota};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = Limiter::new("per-user", Quota::per_second(2).unwrap());
    /// assert_eq!(limiter.try_spend(&"alice", 2), Ok(()));
    /// assert_eq!(limiter.try_spend(&"alice", 1), Err(Duration::from_millis(500)));
    /// assert_eq!(limiter.try_spend(&"bob", 1), Ok(()));
    /// assert_eq!(limiter.try_spend(&"bob", 3), Err(Duration::MAX)); // more than the burst
    /// # }
    /// ```
    pub fn try_spend<K: fmt::Debug + Any>(&self, key: &K, cost: u64) -> Result<(), Duration> {
        let key = LimitKey::from_key(key);
        self.store
            .spend_at(self.nanos(), &self.limit_check(&key, cost))
    }

    /// Now, in the store's time.
    #[inline]
    fn nanos(&self) -> u64 {
        self.ticker
            .get_or_init(|| self.clock.since(self.store.epoch()))
            .nanos()
    }

    /// What a request of `cost` would get now, without spending anything.
    pub fn check<K: fmt::Debug + Any>(&self, key: &K, cost: u64) -> Decision {
        let key = LimitKey::from_key(key);
        self.store
            .check_at(
                self.nanos(),
                &[self.limit_check(&key, cost)],
                CheckMode::Peek,
            )
            .unwrap_or_else(|_| crate::store::unlimited())
    }

    /// Units available to `key` right now.
    pub fn available<K: fmt::Debug + Any>(&self, key: &K) -> u64 {
        self.check(key, 0).remaining
    }

    /// Forgets `key`'s state: its quota is full again.
    pub fn reset<K: fmt::Debug + Any>(&self, key: &K) {
        self.store.reset_now(&self.id, &LimitKey::from_key(key));
    }
}

impl<St: Store> Limiter<St> {
    /// A GCRA limiter over `store`.
    pub fn with_store(name: impl Into<Arc<str>>, quota: Quota, store: St) -> Self {
        Self {
            id: LimitId::new(name),
            quota: QuotaHandle::new(quota),
            algorithm: Algorithm::Gcra,
            store: Arc::new(store),
            clock: Clock::tokio(),
            ticker: OnceLock::new(),
        }
    }

    /// Where the limiter reads the time (default [`Clock::tokio`]; [`Clock::tsc`] is cheaper
    /// but ignores tokio's paused clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.ticker = OnceLock::new();
        self
    }

    /// Sets the algorithm.
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// A handle to change the quota at run time.
    pub fn quota_handle(&self) -> QuotaHandle {
        self.quota.clone()
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    fn limit_check<'a>(&'a self, key: &'a LimitKey, cost: u64) -> LimitCheck<'a> {
        LimitCheck {
            limit: &self.id,
            key,
            quota: self.quota.get(),
            algorithm: self.algorithm,
            cost,
        }
    }

    /// Decides through the store (any store, async).
    pub async fn decide<K: fmt::Debug + Any>(
        &self,
        key: &K,
        cost: u64,
        mode: CheckMode,
    ) -> Result<Decision, StoreError> {
        let key = LimitKey::from_key(key);
        self.store
            .check(self.clock.now(), &[self.limit_check(&key, cost)], mode)
            .await
    }

    /// Waits until `cost` units are granted to `key` (for a shaper, also until the release
    /// time), up to `max_wait`. Returns how long it waited.
    pub async fn acquire<K: fmt::Debug + Any>(
        &self,
        key: &K,
        cost: u64,
        max_wait: Duration,
    ) -> Result<Duration, AcquireError> {
        let key = LimitKey::from_key(key);
        let start = self.clock.now();
        loop {
            let now = self.clock.now();
            let d = self
                .store
                .check(now, &[self.limit_check(&key, cost)], CheckMode::Acquire)
                .await?;
            if d.allowed {
                if d.delay > Duration::ZERO {
                    sleep(d.delay).await;
                }
                return Ok(self.clock.now().saturating_duration_since(start));
            }
            if d.retry_after == Duration::MAX {
                return Err(AcquireError::Never);
            }
            let total = now.saturating_duration_since(start) + d.retry_after;
            if total > max_wait {
                return Err(AcquireError::TooLong(total));
            }
            sleep(d.retry_after).await;
        }
    }
}

/// One lock-free GCRA cell: a single, unkeyed limit decided with one atomic compare-and-swap
/// (the same algorithm as the keyed store, without the map).
///
/// ```
/// use stormwall_ratelimit::{DirectLimiter, Quota};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let limiter = DirectLimiter::new(Quota::per_second(5).unwrap());
/// let admitted = (0..10).filter(|_| limiter.try_acquire(1).is_ok()).count();
/// assert_eq!(admitted, 5);
/// # }
/// ```
#[derive(Debug)]
pub struct DirectLimiter {
    cell: GcraCell,
    quota: Quota,
    ticker: Ticker,
}

impl DirectLimiter {
    /// A full limiter reading tokio's clock ([`Clock::tokio`]).
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, Clock::tokio())
    }

    /// A full limiter reading `clock` ([`Clock::tsc`] is cheaper but ignores tokio's paused
    /// clock).
    pub fn with_clock(quota: Quota, clock: Clock) -> Self {
        Self {
            cell: GcraCell::new(),
            quota,
            ticker: clock.ticker(),
        }
    }

    /// Decides `cost` units now.
    #[inline]
    pub fn try_acquire(&self, cost: u64) -> Result<Decision, Decision> {
        self.try_acquire_at(self.ticker.nanos(), cost)
    }

    /// Spends `cost` units now if they are available: `Ok(())`, or `Err(retry_after)`, the
    /// exact wait until the same request would be admitted ([`Duration::MAX`] if it never
    /// can be, zero if another caller gave units back meanwhile). The decision of
    /// [`try_acquire`](Self::try_acquire) without its figures (remaining units, reset), for
    /// callers that only need yes or no, like `governor`'s `check`: one compare-and-swap and
    /// no figures computed when admitted.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_ratelimit::{DirectLimiter, Quota};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limiter = DirectLimiter::new(Quota::per_second(2).unwrap());
    /// assert_eq!(limiter.try_spend(2), Ok(()));
    /// assert_eq!(limiter.try_spend(1), Err(Duration::from_millis(500)));
    /// assert_eq!(limiter.try_spend(3), Err(Duration::MAX)); // more than the burst
    /// # }
    /// ```
    #[inline]
    pub fn try_spend(&self, cost: u64) -> Result<(), Duration> {
        let now = self.ticker.nanos();
        if self.cell.admit(&self.quota, now, cost) {
            Ok(())
        } else {
            Err(self
                .cell
                .decide(&self.quota, now, cost, false, false)
                .retry_after)
        }
    }

    /// Decides `cost` units at `now` (nanoseconds since the limiter's creation).
    #[inline]
    pub fn try_acquire_at(&self, now: u64, cost: u64) -> Result<Decision, Decision> {
        let d = self.cell.decide(&self.quota, now, cost, true, false);
        if d.allowed { Ok(d) } else { Err(d) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `try_spend` admits exactly when `try_acquire` does, spends the same and reports the
    /// same wait, for every algorithm, over an irregular schedule of keys, costs and times.
    #[tokio::test(start_paused = true)]
    async fn try_spend_agrees_with_try_acquire() {
        let quota = Quota::per_second(5).unwrap().with_burst(3).unwrap();
        for algorithm in [
            Algorithm::Gcra,
            Algorithm::LeakyBucket,
            Algorithm::SlidingLog,
            Algorithm::SlidingCounter,
            Algorithm::FixedWindow,
        ] {
            let spend = Limiter::new("a", quota).algorithm(algorithm);
            let acquire = Limiter::new("b", quota).algorithm(algorithm);
            let (mut admitted, mut refused) = (0, 0);
            for i in 0..400u64 {
                let key = i % 3;
                let cost = [1, 1, 2, 0, 1, 4][(i % 6) as usize];
                let a = spend.try_spend(&key, cost);
                let b = acquire.try_acquire(&key, cost);
                match (&a, &b) {
                    (Ok(()), Ok(_)) => admitted += 1,
                    (Err(wait), Err(d)) => {
                        assert_eq!(*wait, d.retry_after, "{algorithm:?} step {i}");
                        refused += 1;
                    }
                    _ => panic!("{algorithm:?} step {i}: {a:?} vs {b:?}"),
                }
                assert_eq!(spend.available(&key), acquire.available(&key));
                tokio::time::advance(Duration::from_millis(37 * (i % 5))).await;
            }
            assert!(
                admitted > 50 && refused > 50,
                "{algorithm:?}: {admitted}/{refused}"
            );
        }
    }
}
