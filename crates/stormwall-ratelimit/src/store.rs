//! The store seam: where limit state lives ([`Store`]), and the vocabulary a store speaks
//! ([`LimitId`], [`LimitKey`], [`LimitCheck`], [`CheckMode`], [`StoreError`]).
//!
//! The layer and the programmatic [`Limiter`](crate::Limiter) never touch limit state
//! themselves: they build a list of [`LimitCheck`]s for a request and hand it to a [`Store`].
//! [`InMemoryStore`](crate::InMemoryStore) keeps the state in this process; a distributed store
//! (e.g. Redis) implements the same trait and plugs in without changing the layer.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stormwall_core::time::Instant;

use crate::algorithm::{Algorithm, Decision};
use crate::quota::Quota;

/// The wait reported when a full store refuses a new key ([`Limiter`](crate::Limiter)'s
/// `try_acquire` and `try_spend`).
pub(crate) const FULL_STORE_RETRY: Duration = Duration::from_secs(1);

/// A backend that keeps rate-limit state and decides multi-limit checks.
///
/// # What a store must do
///
/// [`check`](Store::check) receives the list of limits a request is subject to (e.g. global,
/// per endpoint, per user), each a [`LimitCheck`]: the limit's [`LimitId`], the request's
/// [`LimitKey`] for that limit, the [`Quota`] in force for this request (tiers and run-time
/// changes are resolved by the caller: the quota may differ between calls for the same key),
/// the [`Algorithm`], and the request's `cost` in units.
///
/// - **All or nothing.** With [`CheckMode::Acquire`] the request is admitted only if *every*
///   limit admits it, and then spends `cost` in every limit. If any limit rejects it, it
///   spends **nothing in any limit**. A distributed store does this atomically (e.g. one Lua
///   script that first evaluates every key, then writes all of them or none). The in-memory
///   store commits limit by limit and undoes the earlier ones exactly when a later one
///   rejects (a concurrent request may briefly observe the undone spend; never the opposite).
///   With [`CheckMode::Peek`] nothing is spent: the decision says what `Acquire` would do.
/// - **The decision.** Return one [`Decision`] for the whole check:
///   - `allowed`: whether every limit admitted;
///   - `index`: the position in `checks` of the limit the decision reports: the first limit
///     that rejected, or, when admitted, the limit with the least `remaining`;
///   - `limit`, `period`, `remaining`, `reset`: that limit's quota and state (for the
///     `RateLimit-Policy`/`RateLimit` headers);
///   - `retry_after`: when rejected, the time until the request would be admitted by every
///     limit that rejected it (the maximum over them), exact to the store's clock
///     resolution; [`Duration::MAX`] if `cost` can never fit the quota. Zero when admitted;
///   - `delay`: for [`Algorithm::LeakyBucket`] (a shaper), how long the admitted request must
///     wait before it is sent (the maximum over the limits); zero otherwise.
///
///   The semantics of each algorithm, including how `remaining`/`reset`/`retry_after` are
///   computed, are the pure functions in [`algorithm`](crate::algorithm): a distributed store
///   should port them (they are a few lines each) so that every backend agrees.
/// - **Time.** `now` is the caller's [`Instant`] (tokio's, so tests can pause it). An
///   in-process store measures time with it. A distributed store must **not** trust client
///   clocks: it should read time on the server (Redis `TIME`) and ignore `now`. Either way,
///   every duration in the decision is *relative* ("in 300 ms"), so it means the same thing
///   to every caller regardless of clock offsets.
/// - **Keys.** A distributed store names state by [`LimitId::name`] (which every instance
///   shares; the numeric [`LimitId::id`] is per process) and [`LimitKey`]'s `Display` form,
///   e.g. `{stormwall:per-user}:s:alice`, and should give every key a TTL of about the
///   period (or `burst × emission_interval`) so idle keys expire by themselves.
/// - **Errors and failure policy.** When the store cannot decide (backend down, timeout),
///   return a [`StoreError`]: the layer applies its
///   [`FailurePolicy`](crate::FailurePolicy): fail open (admit), or fail closed (reject). A
///   store should bound its own latency (time out) and return
///   [`StoreError::Timeout`] rather than stall requests. [`StoreError::Capacity`] is not a
///   failure: the store refuses a new key because it is full; the layer always rejects it.
///   A store that wants a local fallback can wrap an [`InMemoryStore`](crate::InMemoryStore)
///   and decide there instead of returning an error.
///
/// # Futures
///
/// The futures are associated types, so a store that answers synchronously (like the
/// in-memory one) returns [`std::future::Ready`] and costs no allocation, while a network
/// store returns its own named future. The futures must own what they need (`'static`): the
/// `checks` slice is borrowed only for the duration of the call.
///
/// # Example: a store that delegates and counts
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use stormwall_core::time::Instant;
/// use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey, Store};
/// use stormwall_ratelimit::InMemoryStore;
///
/// #[derive(Debug, Default)]
/// struct Counting { inner: InMemoryStore, calls: AtomicU64 }
///
/// impl Store for Counting {
///     type CheckFuture = <InMemoryStore as Store>::CheckFuture;
///     type ResetFuture = <InMemoryStore as Store>::ResetFuture;
///     fn check(&self, now: Instant, checks: &[LimitCheck<'_>], mode: CheckMode) -> Self::CheckFuture {
///         self.calls.fetch_add(1, Ordering::Relaxed);
///         self.inner.check(now, checks, mode)
///     }
///     fn reset(&self, limit: &LimitId, key: &LimitKey) -> Self::ResetFuture {
///         self.inner.reset(limit, key)
///     }
/// }
/// ```
pub trait Store: Send + Sync + 'static {
    /// The future of [`check`](Store::check).
    type CheckFuture: Future<Output = Result<Decision, StoreError>> + Send + 'static;
    /// The future of [`reset`](Store::reset).
    type ResetFuture: Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Decides a multi-limit check, all or nothing (see the trait docs). An empty `checks`
    /// is admitted with `remaining = u64::MAX`.
    fn check(&self, now: Instant, checks: &[LimitCheck<'_>], mode: CheckMode) -> Self::CheckFuture;

    /// Forgets the state of `key` under `limit`: its next request finds a full quota.
    fn reset(&self, limit: &LimitId, key: &LimitKey) -> Self::ResetFuture;

    /// An optional synchronous fast path with the same semantics as [`check`](Store::check):
    /// a store that decides without I/O returns `Some`, and the layer then admits or rejects
    /// in `call` without building its asynchronous state machine. The default (`None`) is
    /// right for network stores.
    fn try_check_sync(
        &self,
        now: Instant,
        checks: &[LimitCheck<'_>],
        mode: CheckMode,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (now, checks, mode);
        None
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    type CheckFuture = S::CheckFuture;
    type ResetFuture = S::ResetFuture;
    fn check(&self, now: Instant, checks: &[LimitCheck<'_>], mode: CheckMode) -> Self::CheckFuture {
        (**self).check(now, checks, mode)
    }
    fn reset(&self, limit: &LimitId, key: &LimitKey) -> Self::ResetFuture {
        (**self).reset(limit, key)
    }
    fn try_check_sync(
        &self,
        now: Instant,
        checks: &[LimitCheck<'_>],
        mode: CheckMode,
    ) -> Option<Result<Decision, StoreError>> {
        (**self).try_check_sync(now, checks, mode)
    }
}

/// Whether a check spends quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CheckMode {
    /// Spend `cost` in every limit if all admit; spend nothing otherwise.
    #[default]
    Acquire,
    /// Spend nothing: report what `Acquire` would decide (available tokens, dry runs).
    Peek,
}

/// One limit of a multi-limit check.
#[derive(Debug, Clone, Copy)]
pub struct LimitCheck<'a> {
    /// Which limit.
    pub limit: &'a LimitId,
    /// The request's key under this limit.
    pub key: &'a LimitKey,
    /// The quota in force for this request.
    pub quota: Quota,
    /// The algorithm of this limit.
    pub algorithm: Algorithm,
    /// Units this request spends (usually 1).
    pub cost: u64,
}

/// Why a store could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store is full and refuses new keys (not a backend failure: always a rejection).
    #[error("the rate-limit store is at its key capacity ({0} keys); new keys are refused")]
    Capacity(usize),
    /// The backend did not answer in time.
    #[error("the rate-limit store timed out")]
    Timeout,
    /// The backend is unreachable or failed.
    #[error("the rate-limit store is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether this is a backend failure (to which the failure policy applies), as opposed
    /// to a capacity refusal.
    pub const fn is_failure(&self) -> bool {
        !matches!(self, Self::Capacity(_))
    }
}

/// The identity of one limit, e.g. `"per-ip"`.
///
/// Each `LimitId::new` gets a fresh process-wide numeric [`id`](LimitId::id) (used by the
/// in-memory store), so two limits with the same name never share in-memory state. A
/// distributed store uses the [`name`](LimitId::name), which must therefore be unique among
/// the limits sharing that store.
///
/// ```
/// use stormwall_ratelimit::store::LimitId;
/// let a = LimitId::new("per-ip");
/// let b = LimitId::new("per-ip");
/// assert_eq!(a.name(), b.name());
/// assert_ne!(a.id(), b.id());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitId {
    name: Arc<str>,
    id: u32,
}

impl LimitId {
    /// A new limit identity.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Self {
            name: name.into(),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The name (shared by every instance of a distributed deployment).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The per-process numeric id.
    pub const fn id(&self) -> u32 {
        self.id
    }
}

/// A request's key under one limit, in a form every store can hash and name.
///
/// Built from any key a [`KeyExtractor`](stormwall_core::KeyExtractor) returns with
/// [`LimitKey::from_key`]: `()` (the global key), IP addresses, integers and strings are kept
/// as they are (no formatting, no allocation for IPs and integers); other key types use their
/// `Debug` form. `Display` gives a stable, unambiguous text form for distributed stores.
///
/// ```
/// use std::net::IpAddr;
/// use stormwall_ratelimit::store::LimitKey;
/// let ip: IpAddr = "10.0.0.1".parse().unwrap();
/// assert_eq!(LimitKey::from_key(&ip).to_string(), "ip:10.0.0.1");
/// assert_eq!(LimitKey::from_key(&()).to_string(), "global");
/// assert_eq!(LimitKey::from_key(&String::from("alice")).to_string(), "s:alice");
/// assert_eq!(LimitKey::from_key(&(1u8, 'x')).to_string(), "d:(1, 'x')");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitKey(Repr);

/// One hasher write per key (two for IPv6, a slice for strings) instead of the derived
/// discriminant-then-fields sequence: the in-memory store hashes a key on every decision.
/// Keys of different kinds may hash alike (`U64(1)` and `Global`, say); equality tells them
/// apart, and equal keys always hash alike.
impl std::hash::Hash for LimitKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Global => state.write_u8(0),
            Repr::Unkeyed => state.write_u8(1),
            Repr::Overflow => state.write_u8(2),
            Repr::Ip(IpAddr::V4(ip)) => state.write_u32(u32::from(*ip)),
            Repr::Ip(IpAddr::V6(ip)) => state.write_u128(u128::from(*ip)),
            Repr::U64(n) => state.write_u64(*n),
            Repr::Str(s) | Repr::Debug(s) => state.write(s.as_bytes()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    Global,
    Unkeyed,
    Overflow,
    Ip(IpAddr),
    U64(u64),
    Str(Arc<str>),
    Debug(Arc<str>),
}

impl LimitKey {
    /// The single key of a global limit.
    pub const fn global() -> Self {
        Self(Repr::Global)
    }

    /// The shared key of requests whose key could not be extracted (e.g. a missing header):
    /// they share one bucket rather than escaping the limit.
    pub const fn unkeyed() -> Self {
        Self(Repr::Unkeyed)
    }

    /// The shared overflow key that new keys fall into when a store is full and configured
    /// to overflow rather than refuse.
    pub const fn overflow() -> Self {
        Self(Repr::Overflow)
    }

    /// A key from a string.
    pub fn from_string(s: impl Into<Arc<str>>) -> Self {
        Self(Repr::Str(s.into()))
    }

    /// A key from any extracted key (see the type docs).
    pub fn from_key<K: fmt::Debug + Any>(key: &K) -> Self {
        let any = key as &dyn Any;
        if any.is::<()>() {
            Self::global()
        } else if let Some(ip) = any.downcast_ref::<IpAddr>() {
            Self(Repr::Ip(*ip))
        } else if let Some(s) = any.downcast_ref::<String>() {
            Self(Repr::Str(s.as_str().into()))
        } else if let Some(s) = any.downcast_ref::<Arc<str>>() {
            Self(Repr::Str(s.clone()))
        } else if let Some(s) = any.downcast_ref::<&'static str>() {
            Self(Repr::Str((*s).into()))
        } else if let Some(n) = any.downcast_ref::<u64>() {
            Self(Repr::U64(*n))
        } else if let Some(v) = any.downcast_ref::<http::HeaderValue>() {
            match v.to_str() {
                Ok(s) => Self(Repr::Str(s.into())),
                Err(_) => Self(Repr::Debug(format!("{v:?}").into())),
            }
        } else {
            Self(Repr::Debug(format!("{key:?}").into()))
        }
    }

    /// Whether this is the shared overflow key.
    pub fn is_overflow(&self) -> bool {
        matches!(self.0, Repr::Overflow)
    }

    /// Heap bytes owned by this key (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Str(s) | Repr::Debug(s) => s.len() + 2 * size_of::<usize>(),
            _ => 0,
        }
    }
}

impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Global => f.write_str("global"),
            Repr::Unkeyed => f.write_str("unkeyed"),
            Repr::Overflow => f.write_str("overflow"),
            Repr::Ip(ip) => write!(f, "ip:{ip}"),
            Repr::U64(n) => write!(f, "u:{n}"),
            Repr::Str(s) => write!(f, "s:{s}"),
            Repr::Debug(s) => write!(f, "d:{s}"),
        }
    }
}

/// Combines per-limit decisions into the decision of the whole check (for store
/// implementers): rejected if any is; reports the first rejecting limit (with the largest
/// `retry_after` of the rejecting ones), or the admitted limit with the least `remaining`
/// (and the largest `delay`).
///
/// ```
/// use std::time::Duration;
/// use stormwall_ratelimit::{Quota, algorithm::Gcra, store::combine};
/// let q = Quota::per_second(1).unwrap();
/// let (ok, _) = Gcra::decide(&q, 0, 0, 1);
/// let (no, _) = Gcra::decide(&q, 1_000_000_000, 0, 1);
/// let d = combine([ok, no]).unwrap();
/// assert!(!d.allowed);
/// assert_eq!(d.index, 1);
/// ```
pub fn combine(decisions: impl IntoIterator<Item = Decision>) -> Option<Decision> {
    let mut out: Option<Decision> = None;
    for (i, mut d) in decisions.into_iter().enumerate() {
        d.index = i;
        out = Some(match out {
            None => d,
            Some(cur) => match (cur.allowed, d.allowed) {
                (true, false) => d,
                (false, true) => cur,
                (false, false) => Decision {
                    retry_after: cur.retry_after.max(d.retry_after),
                    ..cur
                },
                (true, true) => {
                    let delay = cur.delay.max(d.delay);
                    let best = if d.remaining < cur.remaining { d } else { cur };
                    Decision { delay, ..best }
                }
            },
        });
    }
    out
}

pub(crate) fn unlimited() -> Decision {
    Decision {
        allowed: true,
        limit: u64::MAX,
        period: Duration::ZERO,
        remaining: u64::MAX,
        reset: Duration::ZERO,
        retry_after: Duration::ZERO,
        delay: Duration::ZERO,
        index: 0,
    }
}

// Keys must be cheap to hash; keep the representation small.
const _: () = assert!(size_of::<LimitKey>() <= 24);

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::{Limiter, Quota};

    fn hash(k: &LimitKey) -> u64 {
        foldhash::fast::FixedState::with_seed(7).hash_one(k)
    }

    /// Equal keys hash alike (the one rule a manual `Hash` must keep), and keys of different
    /// kinds whose hashed words coincide (`0u64`, `()`, `0.0.0.0`, `::`, `""`) keep separate
    /// quota in a store.
    #[tokio::test(start_paused = true)]
    async fn keys_hash_by_value_and_stay_distinct() {
        let v4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let keys = [
            LimitKey::from_key(&0u64),
            LimitKey::from_key(&()),
            LimitKey::from_key(&v4),
            LimitKey::from_key(&v6),
            LimitKey::from_key(&String::new()),
            LimitKey::from_key(&(0u8,)),
        ];
        for k in &keys {
            assert_eq!(hash(k), hash(&k.clone()));
        }
        assert_eq!(
            hash(&LimitKey::from_key(&String::from("alice"))),
            hash(&LimitKey::from_key(&Arc::<str>::from("alice")))
        );
        let limiter = Limiter::new("one", Quota::per_second(1).unwrap());
        assert!(limiter.try_acquire(&0u64, 1).is_ok());
        assert!(limiter.try_acquire(&(), 1).is_ok());
        assert!(limiter.try_acquire(&v4, 1).is_ok());
        assert!(limiter.try_acquire(&v6, 1).is_ok());
        assert!(limiter.try_acquire(&String::new(), 1).is_ok());
        assert!(
            limiter.try_acquire(&0u64, 1).is_err(),
            "each key has its own quota"
        );
        assert!(limiter.try_acquire(&v6, 1).is_err());
    }
}
