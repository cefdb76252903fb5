//! [`Limit`]: one named limit of a layer (key extractor, quota, tiers, algorithm).

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request};
use parking_lot::Mutex;
use stormwall_core::KeyExtractor;
use stormwall_core::key::GlobalKey;

use crate::algorithm::Algorithm;
use crate::cell::QuotaCell;
use crate::quota::Quota;
use crate::store::{LimitId, LimitKey};

type KeyFnDyn = dyn Fn(&Request<()>) -> LimitKey + Send + Sync;
type TierFnDyn = dyn Fn(&Request<()>) -> Option<Quota> + Send + Sync;

/// One limit a request is checked against: a name, a key extractor (who the request counts
/// against), a [`Quota`] (changeable at run time through a [`QuotaHandle`]), optional tiers
/// (a quota chosen per request) and an [`Algorithm`].
///
/// Key extractors are the core's [`KeyExtractor`]s over the request head (`Request<()>`): the
/// layer hands them the request's method, URI, headers and extensions without its body. A
/// request whose key cannot be extracted (e.g. a missing API-key header) counts against one
/// shared [`LimitKey::unkeyed`] bucket rather than escaping the limit.
///
/// ```
/// use http::Request;
/// use stormwall_core::key::{HeaderKey, PeerIp};
/// use stormwall_ratelimit::{Limit, Quota};
///
/// let per_ip = Limit::new("per-ip", PeerIp::new(), Quota::per_second(10).unwrap());
/// let global = Limit::global("global", Quota::per_second(1000).unwrap());
///
/// // Tiers: premium API keys get 100/s, everyone else the default 5/s.
/// let per_key = Limit::new("per-key", HeaderKey::new("x-api-key"), Quota::per_second(5).unwrap())
///     .tiers(|req: &Request<()>| {
///         let key = req.headers().get("x-api-key")?;
///         key.as_bytes().starts_with(b"premium-").then(|| Quota::per_second(100).unwrap())
///     });
///
/// // Run-time changes.
/// let handle = per_ip.quota_handle();
/// handle.set(Quota::per_second(20).unwrap());
/// assert_eq!(per_ip.quota().limit(), 20);
/// # let _ = (global, per_key);
/// ```
#[derive(Clone)]
pub struct Limit {
    pub(crate) id: LimitId,
    key: Arc<KeyFnDyn>,
    quota: QuotaHandle,
    tiers: Option<Arc<TierFnDyn>>,
    /// The key when it does not depend on the request (a global limit): the layer then
    /// skips taking the request apart for this limit.
    fixed_key: Option<LimitKey>,
    /// The last rendered `RateLimit-Policy` value and the quota (limit, period) it was
    /// rendered for.
    policy: Arc<Mutex<Option<(u64, Duration, HeaderValue)>>>,
    pub(crate) algorithm: Algorithm,
    pub(crate) adaptive: bool,
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.id.name())
            .field("quota", &self.quota())
            .field("tiered", &self.tiers.is_some())
            .field("algorithm", &self.algorithm)
            .field("adaptive", &self.adaptive)
            .finish()
    }
}

impl Limit {
    /// A limit named `name` (used in metrics, logs and the `RateLimit` headers), keyed by
    /// `key`, with a default quota.
    pub fn new<K>(name: impl Into<Arc<str>>, key: K, quota: Quota) -> Self
    where
        K: KeyExtractor<Request<()>> + Send + Sync + 'static,
    {
        let fixed_key = (TypeId::of::<K>() == TypeId::of::<GlobalKey>()).then(LimitKey::global);
        Self {
            id: LimitId::new(name),
            key: Arc::new(move |req: &Request<()>| match key.extract(req) {
                Ok(k) => LimitKey::from_key(&k),
                Err(_) => LimitKey::unkeyed(),
            }),
            quota: QuotaHandle::new(quota),
            tiers: None,
            fixed_key,
            policy: Arc::new(Mutex::new(None)),
            algorithm: Algorithm::Gcra,
            adaptive: true,
        }
    }

    /// One limit for every request.
    pub fn global(name: impl Into<Arc<str>>, quota: Quota) -> Self {
        Self::new(name, GlobalKey, quota)
    }

    /// Sets the algorithm (default [`Algorithm::Gcra`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Chooses the quota per request: `tier` returns the quota for this request, or `None`
    /// for the default quota. Changing a key's quota keeps its state (a GCRA key that spent
    /// its burst is not refilled by moving to a bigger tier).
    pub fn tiers<F>(mut self, tier: F) -> Self
    where
        F: Fn(&Request<()>) -> Option<Quota> + Send + Sync + 'static,
    {
        self.tiers = Some(Arc::new(tier));
        self
    }

    /// Whether the layer adapts this limit to the upstream's pushback (outbound use:
    /// `Retry-After` on 429/503, `RateLimit`/`X-RateLimit-Remaining` = 0). Default `true`;
    /// only effective when the layer has [`adaptive`](crate::RateLimitLayer::adaptive) on.
    pub fn adaptive(mut self, adaptive: bool) -> Self {
        self.adaptive = adaptive;
        self
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        self.id.name()
    }

    /// The limit's identity in the store.
    pub fn id(&self) -> &LimitId {
        &self.id
    }

    /// The current default quota.
    #[inline]
    pub fn quota(&self) -> Quota {
        self.quota.get()
    }

    /// A handle to change the default quota at run time (shared by every clone of this
    /// limit and every service built with it).
    pub fn quota_handle(&self) -> QuotaHandle {
        self.quota.clone()
    }

    pub(crate) fn key_of(&self, req: &Request<()>) -> LimitKey {
        match &self.fixed_key {
            Some(k) => k.clone(),
            None => (self.key)(req),
        }
    }

    /// Whether the key or the quota depends on the request (otherwise the layer need not
    /// take the request apart to show its head to the extractors).
    pub(crate) fn needs_request(&self) -> bool {
        self.fixed_key.is_none() || self.tiers.is_some()
    }

    /// Whether the key is the global key and the quota is not tiered.
    pub(crate) fn is_plain_global(&self) -> bool {
        self.tiers.is_none() && self.fixed_key == Some(LimitKey::global())
    }

    /// The key and quota of a limit that does not look at the request.
    pub(crate) fn fixed(&self) -> Option<(LimitKey, Quota)> {
        match (&self.fixed_key, &self.tiers) {
            (Some(k), None) => Some((k.clone(), self.quota.get())),
            _ => None,
        }
    }

    /// The `RateLimit-Policy` value for `limit` units per `period`: rendered once per quota
    /// and cached (a cache busy on another thread is skipped, never waited for).
    pub(crate) fn policy_value(
        &self,
        limit: u64,
        period: Duration,
        render: impl FnOnce() -> Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        if let Some(mut cache) = self.policy.try_lock() {
            if let Some((l, p, v)) = &*cache
                && (*l, *p) == (limit, period)
            {
                return Some(v.clone());
            }
            let v = render()?;
            *cache = Some((limit, period, v.clone()));
            return Some(v);
        }
        render()
    }

    pub(crate) fn quota_of(&self, req: &Request<()>) -> Quota {
        self.tiers
            .as_ref()
            .and_then(|t| t(req))
            .unwrap_or_else(|| self.quota.get())
    }
}

/// A shared, run-time changeable quota. See [`Limit::quota_handle`].
///
/// Reading it takes no lock (a sequence lock over the quota's words: a reader never blocks and
/// never sees half of a change).
#[derive(Clone, Debug)]
pub struct QuotaHandle(Arc<QuotaCell>);

impl QuotaHandle {
    /// A handle holding `quota`.
    pub fn new(quota: Quota) -> Self {
        Self(Arc::new(QuotaCell::new(quota)))
    }

    /// The current quota.
    #[inline]
    pub fn get(&self) -> Quota {
        self.0.get()
    }

    /// Replaces the quota; takes effect on the next decision.
    pub fn set(&self, quota: Quota) {
        self.0.set(quota);
    }
}

/// A request extension: how many units the request spends (default 1).
///
/// ```
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(stormwall_ratelimit::Cost(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cost(pub u64);

/// A request extension: the request's priority in the wait queue (higher first; FIFO within
/// a priority; default 0).
///
/// ```
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(stormwall_ratelimit::Priority(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Priority(pub u8);
