//! [`InMemoryStore`]: limit state in this process, bounded.

use std::fmt;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use stormwall_core::time::{Epoch, Instant};

use crate::algorithm::{Algorithm, Decision, FixedWindow, Gcra, SlidingCounter, SlidingLog};
use crate::cell::GcraCell;
use crate::quota::Quota;
use crate::store::{
    CheckMode, FULL_STORE_RETRY, LimitCheck, LimitId, LimitKey, Store, StoreError, combine,
};

/// What a full [`InMemoryStore`] does with a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtCapacity {
    /// Refuse the request ([`StoreError::Capacity`], which the layer turns into a rejection).
    #[default]
    Refuse,
    /// Count the request against one shared overflow key per limit
    /// ([`LimitKey::overflow`]), which always exists: new clients share one quota until keys
    /// free up.
    Overflow,
}

/// Limit state in this process: one concurrent map entry per (limit, key).
///
/// - GCRA and the leaky bucket keep one `AtomicU64` per key, updated with one
///   compare-and-swap per decision (no lock); the window algorithms keep a small state
///   behind a per-key mutex.
/// - **Bounded**: at most [`max_keys`](InMemoryStore::max_keys) keys (default 100,000; may be
///   exceeded by at most the number of threads inserting at the same instant). When full, the
///   store first sweeps *idle* keys (keys whose state is indistinguishable from a fresh key:
///   a full bucket, an empty window), then refuses new keys or routes them to a shared
///   overflow key ([`AtCapacity`]). A key that still holds state is **never** evicted, since
///   that would reset its limit. Sweeps also run every [`sweep_interval`](InMemoryStore::sweep_interval)
///   as keys are added, and on demand with [`sweep`](InMemoryStore::sweep).
/// - Memory: [`InMemoryStore::bytes_per_key`] bytes per GCRA key (plus the key's own heap for
///   string keys); [`stats`](InMemoryStore::stats) reports an estimate of the total.
///
/// Cloning is cheap and shares the state.
///
/// ```
/// use std::time::Duration;
/// use stormwall_core::time::Instant;
/// use stormwall_ratelimit::{InMemoryStore, Quota, algorithm::Algorithm};
/// use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = InMemoryStore::new().max_keys(10_000);
/// let (global, per_user) = (LimitId::new("global"), LimitId::new("per-user"));
/// let (g, alice) = (LimitKey::global(), LimitKey::from_string("alice"));
/// let checks = [
///     LimitCheck { limit: &global, key: &g, quota: Quota::per_second(100).unwrap(), algorithm: Algorithm::Gcra, cost: 1 },
///     LimitCheck { limit: &per_user, key: &alice, quota: Quota::per_second(1).unwrap(), algorithm: Algorithm::Gcra, cost: 1 },
/// ];
/// let now = Instant::now();
/// assert!(store.check(now, &checks, CheckMode::Acquire).await.unwrap().allowed);
/// let second = store.check(now, &checks, CheckMode::Acquire).await.unwrap();
/// assert!(!second.allowed);
/// assert_eq!(second.index, 1); // the per-user limit rejected
/// assert_eq!(second.retry_after, Duration::from_secs(1));
/// # }
/// ```
#[derive(Clone)]
pub struct InMemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    map: DashMap<SlotId, Slot, foldhash::fast::RandomState>,
    epoch: Epoch,
    max_keys: usize,
    at_capacity: AtCapacity,
    sweep_interval: u64,
    len: AtomicUsize,
    last_sweep: AtomicU64,
    refused: AtomicU64,
    overflowed: AtomicU64,
    swept: AtomicU64,
}

/// A decision as yes, or no with the exact wait.
#[inline]
fn verdict(d: &Decision) -> Result<(), Duration> {
    if d.allowed {
        Ok(())
    } else {
        Err(d.retry_after)
    }
}

/// A map key: a limit's id and a key.
#[derive(Clone, PartialEq, Eq)]
struct SlotId(u32, LimitKey);

/// What the map is searched by: a [`SlotId`] or a `(limit, &key)` pair, so that a look-up
/// borrows the caller's key instead of cloning it (the map's `Borrow` target).
trait AsSlotId {
    fn parts(&self) -> (u32, &LimitKey);
}

impl AsSlotId for SlotId {
    #[inline]
    fn parts(&self) -> (u32, &LimitKey) {
        (self.0, &self.1)
    }
}

impl AsSlotId for (u32, &LimitKey) {
    #[inline]
    fn parts(&self) -> (u32, &LimitKey) {
        (self.0, self.1)
    }
}

// The owned and the borrowed forms hash and compare alike, as `Borrow` requires.
#[inline]
fn hash_slot_id<H: std::hash::Hasher>(limit: u32, key: &LimitKey, state: &mut H) {
    std::hash::Hash::hash(&limit, state);
    std::hash::Hash::hash(key, state);
}

impl std::hash::Hash for SlotId {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_slot_id(self.0, &self.1, state);
    }
}

impl std::hash::Hash for dyn AsSlotId + '_ {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (limit, key) = self.parts();
        hash_slot_id(limit, key, state);
    }
}

impl PartialEq for dyn AsSlotId + '_ {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn AsSlotId + '_ {}

impl<'a> std::borrow::Borrow<dyn AsSlotId + 'a> for SlotId {
    #[inline]
    fn borrow(&self) -> &(dyn AsSlotId + 'a) {
        self
    }
}

enum Slot {
    Tat(GcraCell),
    /// A GCRA cell that a layer also holds directly (a global limit's single key: the layer
    /// decides on it without a map look-up). Not swept while a layer holds it; a reset clears
    /// it in place.
    Pinned(Arc<PinnedCell>),
    Log(Box<Mutex<(SlidingLog, Quota)>>),
    Counter(Box<Mutex<(SlidingCounter, Quota)>>),
    Fixed(Box<Mutex<(FixedWindow, Quota)>>),
}

/// A GCRA cell shared by the map and a layer ([`InMemoryStore::pin_global`]).
#[derive(Debug)]
pub(crate) struct PinnedCell {
    pub(crate) cell: GcraCell,
    /// Cleared when the map stops using this cell (the limit changed algorithm through the
    /// store API): the layer then goes back to the map.
    live: AtomicBool,
}

impl PinnedCell {
    /// Whether the map still uses this cell.
    #[inline]
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Self::Pinned(p) = self {
            p.live.store(false, Ordering::Release);
        }
    }
}

impl Slot {
    fn new(algorithm: Algorithm, quota: Quota) -> Self {
        match algorithm {
            Algorithm::SlidingLog => {
                Self::Log(Box::new(Mutex::new((SlidingLog::default(), quota))))
            }
            Algorithm::SlidingCounter => {
                Self::Counter(Box::new(Mutex::new((SlidingCounter::default(), quota))))
            }
            Algorithm::FixedWindow => {
                Self::Fixed(Box::new(Mutex::new((FixedWindow::default(), quota))))
            }
            Algorithm::Gcra | Algorithm::LeakyBucket => Self::Tat(GcraCell::new()),
        }
    }

    fn matches(&self, algorithm: Algorithm) -> bool {
        matches!(
            (self, algorithm),
            (
                Self::Tat(_) | Self::Pinned(_),
                Algorithm::Gcra | Algorithm::LeakyBucket
            ) | (Self::Log(_), Algorithm::SlidingLog)
                | (Self::Counter(_), Algorithm::SlidingCounter)
                | (Self::Fixed(_), Algorithm::FixedWindow)
        )
    }

    fn is_idle(&self, now: u64) -> bool {
        match self {
            Self::Tat(tat) => Gcra::is_idle(tat.tat(), now),
            // Kept while a layer holds it; once no layer does (the map holds the only
            // reference: pinning clones it under the same shard lock a sweep holds), it is
            // an ordinary key.
            Self::Pinned(p) => Arc::strong_count(p) == 1 && Gcra::is_idle(p.cell.tat(), now),
            Self::Log(m) => {
                let g = m.lock();
                g.0.is_idle(&g.1, now)
            }
            Self::Counter(m) => {
                let g = m.lock();
                g.0.is_idle(&g.1, now)
            }
            Self::Fixed(m) => {
                let g = m.lock();
                g.0.is_idle(&g.1, now)
            }
        }
    }

    /// [`decide`](Self::decide) and commit, yes or no: a GCRA slot admits with one
    /// compare-and-swap and computes no figures unless it refuses.
    #[inline]
    fn spend(&self, c: &LimitCheck<'_>, now: u64) -> Result<(), Duration> {
        let cell = match self {
            Self::Tat(cell) if c.algorithm == Algorithm::Gcra => cell,
            Self::Pinned(p) if c.algorithm == Algorithm::Gcra => &p.cell,
            _ => return verdict(&self.decide(c, now, true).0),
        };
        if cell.admit(&c.quota, now, c.cost) {
            Ok(())
        } else {
            // Refused: the exact wait (zero if another caller gave units back meanwhile;
            // nothing was spent either way).
            Err(cell.decide(&c.quota, now, c.cost, false, false).retry_after)
        }
    }

    /// Decides (and, if `commit`, spends); returns the decision and the time to refund at.
    fn decide(&self, c: &LimitCheck<'_>, now: u64, commit: bool) -> (Decision, u64) {
        let q = &c.quota;
        match self {
            // Each algorithm gets its own copy of the CAS loop (constant `leaky`).
            Self::Tat(tat) if c.algorithm == Algorithm::LeakyBucket => {
                (tat.decide(q, now, c.cost, commit, true), now)
            }
            Self::Tat(tat) => (tat.decide(q, now, c.cost, commit, false), now),
            Self::Pinned(p) if c.algorithm == Algorithm::LeakyBucket => {
                (p.cell.decide(q, now, c.cost, commit, true), now)
            }
            Self::Pinned(p) => (p.cell.decide(q, now, c.cost, commit, false), now),
            Self::Log(m) => {
                let mut g = m.lock();
                g.1 = *q;
                let at = g.0.effective_now(now);
                let dec = g.0.decide(q, now, c.cost, commit);
                (dec, at)
            }
            Self::Counter(m) => {
                let mut g = m.lock();
                g.1 = *q;
                (g.0.decide(q, now, c.cost, commit), now)
            }
            Self::Fixed(m) => {
                let mut g = m.lock();
                g.1 = *q;
                (g.0.decide(q, now, c.cost, commit), now)
            }
        }
    }

    fn refund(&self, c: &LimitCheck<'_>, at: u64) {
        let q = &c.quota;
        match self {
            Self::Tat(tat) => tat.refund(q, c.cost),
            Self::Pinned(p) => p.cell.refund(q, c.cost),
            Self::Log(m) => m.lock().0.refund(at, c.cost),
            Self::Counter(m) => m.lock().0.refund(q, at, c.cost),
            Self::Fixed(m) => m.lock().0.refund(q, at, c.cost),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Self::Log(m) => m.lock().0.heap_bytes() + size_of::<Mutex<(SlidingLog, Quota)>>(),
            Self::Counter(_) => size_of::<Mutex<(SlidingCounter, Quota)>>(),
            Self::Fixed(_) => size_of::<Mutex<(FixedWindow, Quota)>>(),
            Self::Tat(_) => 0,
            Self::Pinned(_) => size_of::<PinnedCell>() + 2 * size_of::<usize>(),
        }
    }
}

impl fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("keys", &self.inner.len.load(Ordering::Relaxed))
            .field("max_keys", &self.inner.max_keys)
            .field("at_capacity", &self.inner.at_capacity)
            .finish_non_exhaustive()
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// A snapshot of an [`InMemoryStore`]'s bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Keys currently held.
    pub keys: usize,
    /// The key cap.
    pub max_keys: usize,
    /// New keys refused at the cap.
    pub refused: u64,
    /// New keys routed to the overflow key at the cap.
    pub overflowed: u64,
    /// Idle keys removed by sweeps.
    pub swept: u64,
    /// Estimated bytes held by the map (entries, table overhead, string keys, logs).
    pub approx_bytes: usize,
}

impl InMemoryStore {
    /// An empty store: 100,000 keys at most, refusing new keys at the cap, sweeping at most
    /// every second.
    pub fn new() -> Self {
        Self::build(100_000, AtCapacity::Refuse, Duration::from_secs(1))
    }

    fn build(max_keys: usize, at_capacity: AtCapacity, sweep: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                // foldhash, seeded per map: much cheaper than SipHash for the small keys here
                // (IPs, integers, short strings), and a random seed keeps collisions unguessable.
                map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
                epoch: Epoch::now(),
                max_keys,
                at_capacity,
                sweep_interval: u64::try_from(sweep.as_nanos()).unwrap_or(u64::MAX),
                len: AtomicUsize::new(0),
                last_sweep: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                overflowed: AtomicU64::new(0),
                swept: AtomicU64::new(0),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut (usize, AtCapacity, Duration))) -> Self {
        let mut cfg = (
            self.inner.max_keys,
            self.inner.at_capacity,
            Duration::from_nanos(self.inner.sweep_interval),
        );
        f(&mut cfg);
        Self::build(cfg.0, cfg.1, cfg.2)
    }

    /// Sets the key cap (a builder method: returns a new, empty store).
    pub fn max_keys(self, max: usize) -> Self {
        self.rebuild(|c| c.0 = max.max(1))
    }

    /// Sets what happens to new keys at the cap (a builder method: returns a new, empty store).
    pub fn at_capacity(self, at: AtCapacity) -> Self {
        self.rebuild(|c| c.1 = at)
    }

    /// Sets the minimum time between automatic sweeps (a builder method: returns a new,
    /// empty store).
    pub fn sweep_interval(self, every: Duration) -> Self {
        self.rebuild(|c| c.2 = every)
    }

    /// The approximate size of one GCRA/leaky-bucket key with a small key (IP, integer,
    /// global) in the map, in bytes: the entry plus the hash table's control byte, at its 7/8
    /// maximum load. Window algorithms add a boxed state (about 50-80 bytes; the sliding log
    /// also 16 bytes per remembered admission), string keys their length plus 16.
    pub const fn bytes_per_key() -> usize {
        (size_of::<(SlotId, Slot)>() + 1) * 8 / 7
    }

    /// The instant the store counts time from.
    pub(crate) fn epoch(&self) -> Instant {
        self.inner.epoch.instant()
    }

    pub(crate) fn nanos(&self, now: Instant) -> u64 {
        // +1 so that a fresh state (0) is always "in the past".
        self.inner.epoch.nanos_to(now).min(u64::MAX / 2) + 1
    }

    /// Removes every idle key (one whose state equals a fresh key's); returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let now = self.nanos(now);
        let mut removed = 0;
        self.inner.map.retain(|_, slot| {
            let keep = !slot.is_idle(now);
            removed += usize::from(!keep);
            keep
        });
        self.inner.len.fetch_sub(removed, Ordering::Relaxed);
        self.inner
            .swept
            .fetch_add(removed as u64, Ordering::Relaxed);
        self.inner.last_sweep.store(now, Ordering::Relaxed);
        if removed > 0 {
            tracing::debug!(removed, "stormwall rate limit: swept idle keys");
        }
        removed
    }

    /// Keys currently held.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the store's bookkeeping.
    pub fn stats(&self) -> StoreStats {
        let keys = self.len();
        let mut heap = 0;
        for e in &self.inner.map {
            heap += e.key().1.heap_bytes() + e.value().heap_bytes();
        }
        StoreStats {
            keys,
            max_keys: self.inner.max_keys,
            refused: self.inner.refused.load(Ordering::Relaxed),
            overflowed: self.inner.overflowed.load(Ordering::Relaxed),
            swept: self.inner.swept.load(Ordering::Relaxed),
            approx_bytes: self.inner.map.capacity() * Self::bytes_per_key() * 7 / 8 + heap,
        }
    }

    /// Runs `f` on the slot of `(limit, key)`, creating it if needed and allowed.
    fn with_slot<R>(
        &self,
        c: &LimitCheck<'_>,
        now: u64,
        create: bool,
        f: impl FnOnce(&Slot) -> R,
    ) -> Result<Option<R>, StoreError> {
        let inner = &*self.inner;
        let limit = c.limit.id();
        let overflow = LimitKey::overflow();
        // Looked up by reference (no clone of the key); cloned only to insert.
        let mut key = c.key;
        for _ in 0..3 {
            let probe: &dyn AsSlotId = &(limit, key);
            if let Some(slot) = inner.map.get(probe) {
                if slot.matches(c.algorithm) {
                    return Ok(Some(f(&slot)));
                }
                drop(slot);
                // The limit changed algorithm at run time: start that key afresh.
                if let Some(mut slot) = inner.map.get_mut(probe) {
                    *slot = Slot::new(c.algorithm, c.quota);
                }
                continue;
            }
            if !create {
                return Ok(None);
            }
            if !key.is_overflow() && inner.len.load(Ordering::Relaxed) >= inner.max_keys {
                let last = inner.last_sweep.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= inner.sweep_interval || last == 0 {
                    self.sweep_nanos(now);
                }
                if inner.len.load(Ordering::Relaxed) >= inner.max_keys {
                    match inner.at_capacity {
                        AtCapacity::Refuse => {
                            inner.refused.fetch_add(1, Ordering::Relaxed);
                            return Err(StoreError::Capacity(inner.max_keys));
                        }
                        AtCapacity::Overflow => {
                            inner.overflowed.fetch_add(1, Ordering::Relaxed);
                            key = &overflow;
                            continue;
                        }
                    }
                }
            }
            let mut inserted = false;
            inner
                .map
                .entry(SlotId(limit, key.clone()))
                .or_insert_with(|| {
                    inserted = true;
                    Slot::new(c.algorithm, c.quota)
                });
            if inserted {
                inner.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Only reachable if the entry is removed between insert and read three times over.
        let probe: &dyn AsSlotId = &(limit, key);
        Ok(inner.map.get(probe).map(|slot| f(&slot)))
    }

    fn sweep_nanos(&self, now: u64) {
        let mut removed = 0;
        self.inner.map.retain(|_, slot| {
            let keep = !slot.is_idle(now);
            removed += usize::from(!keep);
            keep
        });
        self.inner.len.fetch_sub(removed, Ordering::Relaxed);
        self.inner
            .swept
            .fetch_add(removed as u64, Ordering::Relaxed);
        self.inner.last_sweep.store(now, Ordering::Relaxed);
    }

    fn peek_one(&self, c: &LimitCheck<'_>, now: u64) -> Result<Decision, StoreError> {
        Ok(self
            .with_slot(c, now, false, |slot| slot.decide(c, now, false).0)?
            .unwrap_or_else(|| Slot::new(c.algorithm, c.quota).decide(c, now, false).0))
    }

    /// Synchronous [`Store::check`] (what the future returns).
    pub fn check_now(
        &self,
        now: Instant,
        checks: &[LimitCheck<'_>],
        mode: CheckMode,
    ) -> Result<Decision, StoreError> {
        self.check_at(self.nanos(now), checks, mode)
    }

    /// [`check_now`](Self::check_now) at `now` in the store's time ([`nanos`](Self::nanos)).
    pub(crate) fn check_at(
        &self,
        now: u64,
        checks: &[LimitCheck<'_>],
        mode: CheckMode,
    ) -> Result<Decision, StoreError> {
        if mode == CheckMode::Peek {
            let mut decisions = Vec::with_capacity(checks.len());
            for c in checks {
                decisions.push(self.peek_one(c, now)?);
            }
            return Ok(combine(decisions).unwrap_or_else(crate::store::unlimited));
        }
        // Fast path: one limit.
        if let [c] = checks {
            return Ok(self
                .with_slot(c, now, true, |slot| slot.decide(c, now, true).0)?
                .unwrap_or_else(|| Slot::new(c.algorithm, c.quota).decide(c, now, false).0));
        }
        let mut committed: Vec<(usize, u64)> = Vec::with_capacity(checks.len());
        let mut decisions = Vec::with_capacity(checks.len());
        for (i, c) in checks.iter().enumerate() {
            let result = self.with_slot(c, now, true, |slot| slot.decide(c, now, true));
            let (dec, at) = match result {
                Ok(Some(r)) => r,
                Ok(None) => (Slot::new(c.algorithm, c.quota).decide(c, now, false).0, now),
                Err(e) => {
                    self.undo(checks, &committed, now);
                    return Err(e);
                }
            };
            if !dec.allowed {
                self.undo(checks, &committed, now);
                // Report every rejecting limit's wait: peek at the ones not yet evaluated.
                let mut all: Vec<Decision> = decisions;
                all.push(dec);
                for c in &checks[i + 1..] {
                    all.push(self.peek_one(c, now)?);
                }
                return Ok(combine(all).unwrap_or_else(crate::store::unlimited));
            }
            if c.cost > 0 {
                committed.push((i, at));
            }
            decisions.push(dec);
        }
        Ok(combine(decisions).unwrap_or_else(crate::store::unlimited))
    }

    /// One limit, yes or no: [`Limiter::try_spend`](crate::Limiter::try_spend). A full store
    /// refusing a new key answers `Err(FULL_STORE_RETRY)`.
    pub(crate) fn spend_at(&self, now: u64, c: &LimitCheck<'_>) -> Result<(), Duration> {
        match self.with_slot(c, now, true, |slot| slot.spend(c, now)) {
            Ok(Some(r)) => r,
            Ok(None) => verdict(&Slot::new(c.algorithm, c.quota).decide(c, now, false).0),
            Err(_) => Err(FULL_STORE_RETRY),
        }
    }

    fn undo(&self, checks: &[LimitCheck<'_>], committed: &[(usize, u64)], now: u64) {
        for &(i, at) in committed {
            let c = &checks[i];
            let _ = self.with_slot(c, now, false, |slot| slot.refund(c, at));
        }
    }

    /// Synchronous [`Store::reset`].
    pub fn reset_now(&self, limit: &LimitId, key: &LimitKey) {
        let id = SlotId(limit.id(), key.clone());
        // A pinned cell (a layer holds it) is cleared in place; any other slot is removed.
        let removed = self
            .inner
            .map
            .remove_if(&id, |_, slot| !matches!(slot, Slot::Pinned(_)));
        if removed.is_some() {
            self.inner.len.fetch_sub(1, Ordering::Relaxed);
        } else if let Some(slot) = self.inner.map.get(&id)
            && let Slot::Pinned(p) = &*slot
        {
            p.cell.clear();
        }
    }

    /// The GCRA cell of `limit`'s global key, shared with the map, so that a layer with a
    /// single global GCRA limit decides without a map look-up. Converts an existing GCRA slot
    /// (keeping its state) or creates one; `None` if the key holds another algorithm's state
    /// or the store is full (the caller then goes through [`check_now`](Self::check_now),
    /// which applies the capacity policy).
    pub(crate) fn pin_global(&self, limit: &LimitId) -> Option<Arc<PinnedCell>> {
        let inner = &*self.inner;
        let id = SlotId(limit.id(), LimitKey::global());
        let pinned = |tat: u64| {
            Arc::new(PinnedCell {
                cell: GcraCell::with_tat(tat),
                live: AtomicBool::new(true),
            })
        };
        if let Some(mut slot) = inner.map.get_mut(&id) {
            return match &*slot {
                Slot::Pinned(p) => Some(p.clone()),
                // The write guard excludes every decision on this slot: the state moves over
                // intact.
                Slot::Tat(cell) => {
                    let p = pinned(cell.tat());
                    *slot = Slot::Pinned(p.clone());
                    Some(p)
                }
                _ => None,
            };
        }
        if inner.len.load(Ordering::Relaxed) >= inner.max_keys {
            return None;
        }
        let mut inserted = false;
        let entry = inner.map.entry(id).or_insert_with(|| {
            inserted = true;
            Slot::Pinned(pinned(0))
        });
        if inserted {
            inner.len.fetch_add(1, Ordering::Relaxed);
        }
        match &*entry {
            Slot::Pinned(p) => Some(p.clone()),
            _ => None,
        }
    }
}

impl Store for InMemoryStore {
    type CheckFuture = Ready<Result<Decision, StoreError>>;
    type ResetFuture = Ready<Result<(), StoreError>>;

    fn check(&self, now: Instant, checks: &[LimitCheck<'_>], mode: CheckMode) -> Self::CheckFuture {
        ready(self.check_now(now, checks, mode))
    }

    fn reset(&self, limit: &LimitId, key: &LimitKey) -> Self::ResetFuture {
        self.reset_now(limit, key);
        ready(Ok(()))
    }

    fn try_check_sync(
        &self,
        now: Instant,
        checks: &[LimitCheck<'_>],
        mode: CheckMode,
    ) -> Option<Result<Decision, StoreError>> {
        Some(self.check_now(now, checks, mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<'a>(limit: &'a LimitId, key: &'a LimitKey, q: Quota, a: Algorithm) -> LimitCheck<'a> {
        LimitCheck {
            limit,
            key,
            quota: q,
            algorithm: a,
            cost: 1,
        }
    }

    /// A layer's pinned global cell and the map are one state: spends through either are
    /// seen by the other, a reset clears it in place, sweeps keep it, and replacing the
    /// algorithm detaches it (the layer then goes back to the map).
    #[tokio::test(start_paused = true)]
    async fn pinned_global_cell_is_the_maps_state() {
        let store = InMemoryStore::new();
        let (id, g) = (LimitId::new("g"), LimitKey::global());
        let q = Quota::per_second(3).unwrap();
        let c = check(&id, &g, q, Algorithm::Gcra);
        let now = Instant::now();
        // A spend before pinning moves over with the state.
        assert!(
            store
                .check_now(now, &[c], CheckMode::Acquire)
                .unwrap()
                .allowed
        );
        let p = store.pin_global(&id).expect("pinned");
        assert!(p.is_live());
        assert_eq!(store.len(), 1);
        let n = store.nanos(now);
        assert!(p.cell.admit(&q, n, 1));
        // One unit left, seen through the map.
        let d = store.check_now(now, &[c], CheckMode::Peek).unwrap();
        assert_eq!(d.remaining, 0);
        assert!(d.allowed);
        assert!(
            store
                .check_now(now, &[c], CheckMode::Acquire)
                .unwrap()
                .allowed
        );
        assert!(!p.cell.admit(&q, n, 1));
        // Pinning again gives the same cell.
        assert!(Arc::ptr_eq(&p, &store.pin_global(&id).unwrap()));
        // Sweeps keep it even when idle, while it is held.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(store.sweep(Instant::now()), 0);
        assert_eq!(store.len(), 1);
        // A reset clears it in place: a full bucket, same cell.
        let now = Instant::now();
        assert!(p.cell.admit(&q, store.nanos(now), 3));
        store.reset_now(&id, &g);
        assert!(p.is_live());
        assert!(p.cell.admit(&q, store.nanos(now), 3));
        // Another algorithm for the same key replaces the slot and detaches the cell.
        let w = check(&id, &g, q, Algorithm::FixedWindow);
        assert!(
            store
                .check_now(now, &[w], CheckMode::Acquire)
                .unwrap()
                .allowed
        );
        assert!(!p.is_live());
        assert!(store.pin_global(&id).is_none());
        // Once no layer holds it, an idle pinned cell is swept like any key.
        let (id2, q2) = (LimitId::new("g2"), Quota::per_second(1).unwrap());
        let p2 = store.pin_global(&id2).expect("pinned");
        assert!(p2.cell.admit(&q2, store.nanos(Instant::now()), 1));
        drop(p2);
        assert_eq!(store.sweep(Instant::now()), 0); // neither key is idle yet
        tokio::time::advance(Duration::from_secs(2)).await;
        // Both go: the released pinned cell and the (now idle) fixed window of `g`.
        assert_eq!(store.sweep(Instant::now()), 2);
        assert!(store.is_empty());
    }

    /// `admit` admits exactly when `decide` would, and spends the same.
    #[test]
    fn admit_agrees_with_decide() {
        let q = Quota::per_second(4).unwrap().with_burst(3).unwrap();
        let (a, b) = (GcraCell::new(), GcraCell::new());
        let mut now = 1;
        for i in 0..200u64 {
            let cost = i % 5;
            now += (i * 7_919_993) % 400_000_000;
            let da = a.admit(&q, now, cost);
            let db = b.decide(&q, now, cost, true, false).allowed;
            assert_eq!(da, db, "step {i}");
            assert_eq!(a.tat(), b.tat(), "step {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn multi_limit_rejection_spends_nothing_in_any_algorithm() {
        for a in [
            Algorithm::Gcra,
            Algorithm::SlidingLog,
            Algorithm::SlidingCounter,
            Algorithm::FixedWindow,
        ] {
            let store = InMemoryStore::new();
            let (g, u) = (LimitId::new("global"), LimitId::new("user"));
            let (gk, alice, bob) = (
                LimitKey::global(),
                LimitKey::from_string("alice"),
                LimitKey::from_string("bob"),
            );
            let global = Quota::per_second(3).unwrap();
            let user = Quota::per_second(1).unwrap();
            let now = Instant::now();
            let both = |k| [check(&g, &gk, global, a), check(&u, k, user, a)];
            assert!(
                store
                    .check_now(now, &both(&alice), CheckMode::Acquire)
                    .unwrap()
                    .allowed
            );
            for _ in 0..10 {
                let d = store
                    .check_now(now, &both(&alice), CheckMode::Acquire)
                    .unwrap();
                assert!(!d.allowed, "{a:?}");
                assert_eq!(d.index, 1);
            }
            // The global limit still has 2 of 3: bob and carol get through, then it is spent.
            assert!(
                store
                    .check_now(now, &both(&bob), CheckMode::Acquire)
                    .unwrap()
                    .allowed
            );
            let carol = LimitKey::from_string("carol");
            assert!(
                store
                    .check_now(now, &both(&carol), CheckMode::Acquire)
                    .unwrap()
                    .allowed
            );
            let dave = LimitKey::from_string("dave");
            let d = store
                .check_now(now, &both(&dave), CheckMode::Acquire)
                .unwrap();
            assert_eq!((d.allowed, d.index), (false, 0), "{a:?}");
            // And dave's own limit was not spent by that rejection.
            let peek = store
                .check_now(now, &[check(&u, &dave, user, a)], CheckMode::Peek)
                .unwrap();
            assert_eq!(
                peek.remaining, 0,
                "peek reports remaining after a spend of 1"
            );
            assert!(peek.allowed, "{a:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cap_refuses_or_overflows_and_sweeps_only_idle_keys() {
        let q = Quota::per_second(1).unwrap();
        let id = LimitId::new("ip");
        let store = InMemoryStore::new().max_keys(10);
        let now = Instant::now();
        for i in 0..10u64 {
            let k = LimitKey::from_key(&i);
            assert!(
                store
                    .check_now(
                        now,
                        &[check(&id, &k, q, Algorithm::Gcra)],
                        CheckMode::Acquire
                    )
                    .unwrap()
                    .allowed
            );
        }
        let k = LimitKey::from_key(&99u64);
        let err = store
            .check_now(
                now,
                &[check(&id, &k, q, Algorithm::Gcra)],
                CheckMode::Acquire,
            )
            .unwrap_err();
        assert_eq!(err, StoreError::Capacity(10));
        // The existing keys keep their (spent) state.
        let k0 = LimitKey::from_key(&0u64);
        assert!(
            !store
                .check_now(
                    now,
                    &[check(&id, &k0, q, Algorithm::Gcra)],
                    CheckMode::Acquire
                )
                .unwrap()
                .allowed
        );
        // After a second every bucket is full again: a sweep frees them all.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            store
                .check_now(
                    Instant::now(),
                    &[check(&id, &k, q, Algorithm::Gcra)],
                    CheckMode::Acquire
                )
                .unwrap()
                .allowed
        );
        assert_eq!(store.len(), 1);

        let store = InMemoryStore::new()
            .max_keys(2)
            .at_capacity(AtCapacity::Overflow);
        let now = Instant::now();
        let keys: Vec<_> = (0..5u64).map(|i| LimitKey::from_key(&i)).collect();
        let admitted = keys
            .iter()
            .filter(|k| {
                store
                    .check_now(
                        now,
                        &[check(&id, k, q, Algorithm::Gcra)],
                        CheckMode::Acquire,
                    )
                    .unwrap()
                    .allowed
            })
            .count();
        assert_eq!(
            admitted, 3,
            "two own keys + one shared overflow bucket of 1"
        );
        assert_eq!(store.stats().overflowed, 3);
    }

    #[test]
    fn bytes_per_key_is_small() {
        assert!(
            InMemoryStore::bytes_per_key() <= 80,
            "{}",
            InMemoryStore::bytes_per_key()
        );
    }
}
