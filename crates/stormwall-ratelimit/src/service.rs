//! [`RateLimit<S>`]: the service.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use stormwall_core::response::ResponseBody;
use stormwall_core::time::Instant;
use tower_service::Service;

use crate::algorithm::Decision;
use crate::clock::EpochTicker;
use crate::future::{Deco, ResponseFuture, count_admitted};
use crate::layer::{Mode, RateLimitLayer, Shared};
use crate::limit::{Cost, Limit, Priority};
use crate::memory::{InMemoryStore, PinnedCell};
use crate::quota::Quota;
use crate::response::RejectReason;
use crate::stats::RateLimitStats;
use crate::store::{CheckMode, LimitCheck, StoreError};
use crate::store::{LimitKey, Store};

/// The rate-limiting service built by [`RateLimitLayer`]. See the [crate docs](crate).
///
/// Cloning is cheap; clones share the limiter state. `poll_ready` delegates to the inner
/// service. An admitted request is passed to the inner service directly in `call` (with the
/// in-memory store, the decision is synchronous); a request that must wait keeps the inner
/// service instance that was made ready and calls it once admitted (polling its readiness
/// again first).
pub struct RateLimit<S, St = InMemoryStore> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S, InMemoryStore> {
    /// Wraps `inner` with one limit (a shortcut for `RateLimitLayer::new(limit).layer(inner)`).
    pub fn new(inner: S, limit: Limit) -> Self {
        Self::from_shared(inner, RateLimitLayer::new(limit).shared)
    }

    /// A layer; see [`RateLimitLayer::new`].
    pub fn layer(limit: Limit) -> RateLimitLayer {
        RateLimitLayer::new(limit)
    }
}

impl<S, St> RateLimit<S, St> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<St>>) -> Self {
        Self { inner, shared }
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// A snapshot of the statistics (shared with the layer and every clone).
    pub fn stats(&self) -> RateLimitStats {
        self.shared.counters.snapshot(self.shared.queue.len())
    }
}

/// The request's keys and quotas, one per limit (the first inline: a single-limit layer
/// allocates nothing per request).
pub(crate) struct Keys {
    first: (LimitKey, Quota),
    rest: Vec<(LimitKey, Quota)>,
}

impl Keys {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(LimitKey, Quota)> {
        std::iter::once(&self.first).chain(&self.rest)
    }

    pub(crate) fn single(&self) -> Option<&(LimitKey, Quota)> {
        self.rest.is_empty().then_some(&self.first)
    }
}

pub(crate) struct Prepared {
    pub(crate) keys: Keys,
    pub(crate) cost: u64,
    pub(crate) priority: u8,
    pub(crate) queue_key: u64,
}

/// The request's keys, quotas, cost and priority. `head` is the request without its body,
/// needed only when a limit's key or quota depends on the request
/// ([`Shared::needs_request`]); `ext` are its extensions.
pub(crate) fn prepare<St>(
    shared: &Shared<St>,
    head: Option<&Request<()>>,
    ext: &http::Extensions,
) -> Prepared {
    let of = |l: &Limit| match head {
        Some(head) => (l.key_of(head), l.quota_of(head)),
        // Without a head every limit is fixed; the fallback is never used.
        None => l
            .fixed()
            .unwrap_or_else(|| (LimitKey::unkeyed(), l.quota())),
    };
    let keys = Keys {
        first: of(&shared.limits[0]),
        rest: match &shared.limits[1..] {
            [] => Vec::new(),
            rest => rest.iter().map(of).collect(),
        },
    };
    let wait = matches!(shared.mode, Mode::Wait { .. });
    let queue_key = if wait {
        let mut h = DefaultHasher::new();
        for (k, _) in keys.iter() {
            k.hash(&mut h);
        }
        h.finish()
    } else {
        0
    };
    Prepared {
        keys,
        cost: ext.get::<Cost>().map_or(1, |c| c.0),
        priority: if wait {
            ext.get::<Priority>().map_or(0, |p| p.0)
        } else {
            0
        },
        queue_key,
    }
}

/// Whether a request is a gRPC call (its rejection is then `RESOURCE_EXHAUSTED`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn sync_check<St: Store>(
    shared: &Shared<St>,
    p: &Prepared,
    now: Instant,
) -> Option<Result<Decision, StoreError>> {
    if let (Some((key, quota)), [limit]) = (p.keys.single(), &shared.limits[..]) {
        let c = [LimitCheck {
            limit: &limit.id,
            key,
            quota: *quota,
            algorithm: limit.algorithm,
            cost: p.cost,
        }];
        shared.store.try_check_sync(now, &c, CheckMode::Acquire)
    } else {
        let c: Vec<LimitCheck<'_>> = p
            .keys
            .iter()
            .zip(&shared.limits)
            .map(|((key, quota), limit)| LimitCheck {
                limit: &limit.id,
                key,
                quota: *quota,
                algorithm: limit.algorithm,
                cost: p.cost,
            })
            .collect();
        shared.store.try_check_sync(now, &c, CheckMode::Acquire)
    }
}

/// The global limit's cell (fetched from the store once) while the store still uses it, and
/// the clock in the store's time.
#[inline]
fn pinned_cell<'a, St>(
    shared: &'a Shared<St>,
    store: &InMemoryStore,
) -> Option<(&'a PinnedCell, &'a EpochTicker)> {
    let (p, ticker) = match shared.pinned.get() {
        Some(p) => p,
        None => {
            let p = store.pin_global(&shared.limits[0].id)?;
            let ticker = shared.clock.since(store.epoch());
            shared.pinned.get_or_init(|| (p, ticker))
        }
    };
    p.is_live().then_some((&**p, ticker))
}

impl<S, St, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    St: Store,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        // Fastest path: one global GCRA limit in memory, decided on its cell directly (no
        // key, no map look-up). Only admissions end here: a rejection goes the general way
        // below, which decides again (a rejected decision spent nothing).
        if shared.fast_global
            && let Some(store) = shared.memory_store()
            && !(matches!(shared.mode, Mode::Wait { .. }) && shared.queue.len() > 0)
            && let Some((cell, ticker)) = pinned_cell(shared, store)
        {
            let quota = shared.limits[0].quota();
            let cost = req.extensions().get::<Cost>().map_or(1, |c| c.0);
            let now = ticker.nanos();
            if !shared.decorates() {
                if cell.cell.admit(&quota, now, cost) {
                    count_admitted(shared);
                    return ResponseFuture::fast(self.inner.call(req), None);
                }
            } else {
                let d = cell.cell.decide(&quota, now, cost, true, false);
                if d.allowed {
                    count_admitted(shared);
                    let deco = Some(Deco::new(shared.clone(), &d));
                    return ResponseFuture::fast(self.inner.call(req), deco);
                }
            }
        }
        let prepared = if shared.needs_request {
            // The core's key extractors look at a `Request<()>`: lend them the head.
            let (parts, body) = req.into_parts();
            let head = Request::from_parts(parts, ());
            let prepared = prepare(shared, Some(&head), head.extensions());
            let (parts, ()) = head.into_parts();
            req = Request::from_parts(parts, body);
            prepared
        } else {
            prepare(shared, None, req.extensions())
        };
        let now = shared.clock.now();
        // Fast path: a store that decides synchronously, no adaptation, no queue to respect.
        if shared.adaptive.is_none()
            && !(matches!(shared.mode, Mode::Wait { .. })
                && shared.queue.has_waiters(prepared.queue_key))
            && let Some(result) = sync_check(shared, &prepared, now)
        {
            match result {
                Ok(d) if d.allowed && d.delay.is_zero() => {
                    count_admitted(shared);
                    // Only a response that gets headers needs the decision afterwards.
                    let deco = shared.decorates().then(|| Deco::new(shared.clone(), &d));
                    return ResponseFuture::fast(self.inner.call(req), deco);
                }
                Ok(d) if d.allowed => {
                    // A shaper admitted it for later: hold it (the quota is already spent).
                    let clone = self.inner.clone();
                    let inner = std::mem::replace(&mut self.inner, clone);
                    let shared = shared.clone();
                    return ResponseFuture::delayed(inner, req, shared, prepared, now, d);
                }
                Ok(d) if shared.mode == Mode::Reject && !shared.shadow => {
                    let (grpc, retry) = (is_grpc(req.headers()), d.retry_after);
                    let reason = RejectReason::Limited;
                    return ResponseFuture::rejected(shared.clone(), grpc, reason, retry, Some(d));
                }
                // Waits, shadow rejections and store errors take the slow path,
                // which decides again (a rejected check spent nothing).
                _ => {}
            }
        }
        // The slow path calls the inner service later: keep the instance that was made ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::slow(inner, req, self.shared.clone(), prepared, now)
    }
}
