//! [`RateLimitLayer`]: configuration and the tower `Layer`.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tower_layer::Layer;

use crate::adaptive::Adaptive;
use crate::algorithm::Algorithm;
use crate::clock::{Clock, EpochTicker};
use crate::limit::Limit;
use crate::memory::{InMemoryStore, PinnedCell};
use crate::response::{HeaderOptions, RejectFn, Rejection};
use crate::service::RateLimit;
use crate::stats::{Counters, RateLimitStats};
use crate::store::Store;
use crate::wait::WaitQueue;

/// What the layer does with a request over quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reject at once (429 response, or `RESOURCE_EXHAUSTED` for gRPC).
    Reject,
    /// Hold the request until its quota is available, up to `max_wait`; beyond it, or when
    /// the wait queue is full, reject.
    Wait {
        /// The longest a request may wait.
        max_wait: Duration,
    },
}

/// What to do when the [`Store`] fails (e.g. Redis is down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Admit the request (availability first). The default.
    #[default]
    Open,
    /// Reject the request with 503 (protection first).
    Closed,
}

/// Information passed to the [`on_wait`](RateLimitLayer::on_wait) hook when a request that
/// had to wait is admitted.
#[derive(Debug, Clone)]
pub struct WaitEvent {
    /// How long the request waited.
    pub waited: Duration,
    /// The name of the limit that held it (the one reported by the last decision).
    pub limit: Arc<str>,
}

pub(crate) type WaitFn = dyn Fn(&WaitEvent) + Send + Sync;

pub(crate) struct Shared<St> {
    pub(crate) limits: Vec<Limit>,
    pub(crate) store: Arc<St>,
    pub(crate) mode: Mode,
    pub(crate) shadow: bool,
    pub(crate) queue: Arc<WaitQueue>,
    pub(crate) headers: HeaderOptions,
    pub(crate) on_reject: Option<Arc<RejectFn>>,
    pub(crate) on_wait: Option<Arc<WaitFn>>,
    pub(crate) failure: FailurePolicy,
    pub(crate) adaptive: Option<Arc<Adaptive>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) clock: Clock,
    /// Whether any limit's key or quota depends on the request.
    pub(crate) needs_request: bool,
    /// Whether the layer is one global GCRA limit on an [`InMemoryStore`] without
    /// adaptation: it then decides on the key's cell directly ([`Shared::pinned`]).
    pub(crate) fast_global: bool,
    /// That cell, fetched from the store on first use, and the clock counting from the
    /// store's epoch.
    pub(crate) pinned: OnceLock<(Arc<PinnedCell>, EpochTicker)>,
}

impl<St: 'static> Shared<St> {
    /// Recomputes [`fast_global`](Self::fast_global) after a configuration change.
    fn refresh(&mut self) {
        self.fast_global = self.adaptive.is_none()
            && (&*self.store as &dyn Any).is::<InMemoryStore>()
            && matches!(&self.limits[..], [l] if l.is_plain_global() && l.algorithm == Algorithm::Gcra);
        self.pinned = OnceLock::new();
    }

    /// The in-memory store, when the layer has the fast global path.
    #[inline]
    pub(crate) fn memory_store(&self) -> Option<&InMemoryStore> {
        (&*self.store as &dyn Any).downcast_ref::<InMemoryStore>()
    }
}

impl<St> Shared<St> {
    /// Whether admitted responses get headers (otherwise the admitted path keeps no state).
    pub(crate) fn decorates(&self) -> bool {
        self.headers.on_admitted && (self.headers.draft || self.headers.legacy)
    }
}

impl<St> Clone for Shared<St> {
    fn clone(&self) -> Self {
        Self {
            limits: self.limits.clone(),
            store: self.store.clone(),
            mode: self.mode,
            shadow: self.shadow,
            queue: self.queue.clone(),
            headers: self.headers,
            on_reject: self.on_reject.clone(),
            on_wait: self.on_wait.clone(),
            failure: self.failure,
            adaptive: self.adaptive.clone(),
            counters: self.counters.clone(),
            clock: self.clock.clone(),
            needs_request: self.needs_request,
            fast_global: self.fast_global,
            pinned: self.pinned.clone(),
        }
    }
}

/// Rate limits requests: keyed, tiered, multi-limit; rejects with 429 or waits.
///
/// See the [crate docs](crate) for an example and the full behaviour. Every service built by
/// one layer (and its clones) shares the same state: store, wait queue and statistics.
pub struct RateLimitLayer<St = InMemoryStore> {
    pub(crate) shared: Arc<Shared<St>>,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("RateLimitLayer")
            .field("limits", &s.limits)
            .field("store", &s.store)
            .field("mode", &s.mode)
            .field("shadow", &s.shadow)
            .field("failure", &s.failure)
            .field("adaptive", &s.adaptive.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer<InMemoryStore> {
    /// A layer enforcing `limit` (add more with [`limit`](Self::limit)), with an
    /// [`InMemoryStore`], in reject mode.
    pub fn new(limit: Limit) -> Self {
        Self::with_store(limit, InMemoryStore::new())
    }
}

impl<St: Store> RateLimitLayer<St> {
    /// A layer enforcing `limit` with state in `store`.
    pub fn with_store(limit: Limit, store: St) -> Self {
        let needs_request = limit.needs_request();
        Self {
            shared: Arc::new(Shared {
                limits: vec![limit],
                store: Arc::new(store),
                mode: Mode::Reject,
                shadow: false,
                queue: Arc::new(WaitQueue::new(1024)),
                headers: HeaderOptions {
                    draft: true,
                    legacy: false,
                    on_admitted: true,
                },
                on_reject: None,
                on_wait: None,
                failure: FailurePolicy::Open,
                adaptive: None,
                counters: Arc::new(Counters::default()),
                clock: Clock::tokio(),
                needs_request,
                fast_global: false,
                pinned: OnceLock::new(),
            }),
        }
        .edit(|_| {})
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared<St>)) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        f(shared);
        shared.refresh();
        self
    }

    /// Adds a limit: a request is admitted only if every limit admits it, and a request
    /// rejected by one limit spends nothing in any.
    pub fn limit(self, limit: Limit) -> Self {
        self.edit(|s| {
            s.needs_request |= limit.needs_request();
            s.limits.push(limit);
        })
    }

    /// Where the layer reads the time (default [`Clock::tokio`], which follows tokio's paused
    /// clock in tests). [`Clock::tsc`] is cheaper per request but ignores a paused clock.
    pub fn clock(self, clock: Clock) -> Self {
        self.edit(|s| s.clock = clock)
    }

    /// Reject mode (the default): over quota → 429 at once.
    pub fn reject(self) -> Self {
        self.edit(|s| s.mode = Mode::Reject)
    }

    /// Wait mode: hold requests until admitted, up to `max_wait`.
    pub fn wait(self, max_wait: Duration) -> Self {
        self.edit(|s| s.mode = Mode::Wait { max_wait })
    }

    /// The wait queue's capacity (default 1024): a request that would wait while the queue
    /// is full is rejected at once ([`RejectReason::QueueFull`](crate::RejectReason::QueueFull)).
    pub fn queue_capacity(self, capacity: usize) -> Self {
        self.edit(|s| s.queue = Arc::new(WaitQueue::new(capacity)))
    }

    /// Shadow mode: decide and count as usual, but admit every request (to try a limit on
    /// production traffic). Rejections that would have happened are counted in
    /// [`RateLimitStats::shadow_rejected`] and the `stormwall_ratelimit_decisions_total{outcome="shadow_rejected"}` metric.
    pub fn shadow(self, shadow: bool) -> Self {
        self.edit(|s| s.shadow = shadow)
    }

    /// Whether to write the draft-10 `RateLimit-Policy` / `RateLimit` fields (default on).
    pub fn draft_headers(self, on: bool) -> Self {
        self.edit(|s| s.headers.draft = on)
    }

    /// Whether to also write legacy `X-RateLimit-Limit/Remaining/Reset` (default off).
    pub fn legacy_headers(self, on: bool) -> Self {
        self.edit(|s| s.headers.legacy = on)
    }

    /// Whether admitted responses carry the remaining-quota headers (default on; headers
    /// already present in the inner response are kept). Turn it off for outbound use, so
    /// that the upstream's own headers reach the caller untouched.
    pub fn headers_on_admitted(self, on: bool) -> Self {
        self.edit(|s| s.headers.on_admitted = on)
    }

    /// A custom rejection response (HTTP; gRPC requests always get `RESOURCE_EXHAUSTED`).
    /// `Retry-After` and the rate-limit headers are added unless the response sets them.
    ///
    /// ```
    /// use stormwall_ratelimit::{Limit, Quota, RateLimitLayer};
    /// let layer = RateLimitLayer::new(Limit::global("all", Quota::per_second(1).unwrap()))
    ///     .on_reject(|r| {
    ///         http::Response::builder()
    ///             .status(429)
    ///             .header("content-type", "application/json")
    ///             .body(format!(r#"{{"error":"slow down","retry_after_ms":{}}}"#, r.retry_after.as_millis()).into())
    ///             .unwrap()
    ///     });
    /// ```
    pub fn on_reject<F>(self, f: F) -> Self
    where
        F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.edit(|s| s.on_reject = Some(Arc::new(f)))
    }

    /// A hook called when a request that waited is admitted.
    pub fn on_wait<F>(self, f: F) -> Self
    where
        F: Fn(&WaitEvent) + Send + Sync + 'static,
    {
        self.edit(|s| s.on_wait = Some(Arc::new(f)))
    }

    /// What to do when the store fails (default [`FailurePolicy::Open`]).
    pub fn failure_policy(self, policy: FailurePolicy) -> Self {
        self.edit(|s| s.failure = policy)
    }

    /// Outbound adaptation: follow the upstream's pushback per key: after a 429/503 with
    /// `Retry-After` (or a `RateLimit`/`X-RateLimit-Remaining` of 0 with a reset), requests
    /// for that key wait (or are rejected) until the reset; an advertised remaining quota is
    /// spent locally, so requests are not sent once it is gone. With `probe` on, a key whose
    /// upstream quota is not known yet sends one request at a time until the upstream has
    /// advertised its quota (use it for upstreams that advertise `RateLimit` but whose rate
    /// you did not configure). At most 100,000 keys are tracked.
    pub fn adaptive(self, on: bool, probe: bool) -> Self {
        self.edit(|s| s.adaptive = on.then(|| Arc::new(Adaptive::new(100_000, probe))))
    }

    /// The limits.
    pub fn limits(&self) -> &[Limit] {
        &self.shared.limits
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// A snapshot of the layer's statistics (shared by every service it built).
    pub fn stats(&self) -> RateLimitStats {
        self.shared.counters.snapshot(self.shared.queue.len())
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(inner, self.shared.clone())
    }
}
