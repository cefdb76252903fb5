//! The standard stacks: the layers in the right order with documented defaults.
//!
//! See the [crate docs](crate#the-standard-stacks) for the order and why.

use std::convert::Infallible;
use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use http_body_util::Either as EitherBody;
use stormwall_core::BoxError;
use stormwall_core::headers::format_retry_after;
use stormwall_core::key::PeerIp;
use tower::util::{BoxCloneSyncService, Either, ServiceExt};
use tower::{Layer, Service};

use crate::body::{Body, boxed};
use crate::cache::CacheLayer;
use crate::circuit::{BreakerConfig, CircuitBreakerError, CircuitBreakerLayer, Window};
use crate::coalesce::{CoalesceFailure, CoalesceLayer, DefaultKey};
use crate::core::key::KeyExtractor;
use crate::error::Error;
use crate::ratelimit::{InMemoryStore, Limit, Quota, RateLimitLayer, RateLimited, Store};
use crate::retry::{RetryBody, RetryError, RetryLayer};

type Boxed<E> = BoxCloneSyncService<Request<Body>, Response<Body>, E>;

/// The outbound (client) stack, outermost first:
///
/// **cache → coalesce → retry → circuit breaker → rate limit (wait) → attempt timeout →
/// client**.
///
/// Every stage is optional and reconfigurable; the order is fixed (see the
/// [crate docs](crate#the-standard-stacks) for why). Use it as a [`Layer`] around any client
/// whose request body is [`Body`] (e.g. `hyper_util::client::legacy::Client<_, Body>`); the
/// result is an [`Outbound`] service that takes requests with any body and fails with one
/// [`Error`] type.
///
/// ```
/// use std::time::Duration;
/// use stormwall::OutboundStack;
/// use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
///
/// // The partner allows 10 requests per second: wait for a slot rather than collect 429s.
/// let quota = Quota::per_second(10).unwrap();
/// let stack = OutboundStack::standard("partner-api")
///     .rate_limit(RateLimitLayer::new(Limit::global("partner", quota)).wait(Duration::from_secs(30)))
///     .attempt_timeout(Duration::from_secs(2));
/// # let _ = stack;
/// ```
///
/// The rate-limit stage takes a [`RateLimitLayer`] over any [`Store`] (`St`: e.g. the Redis
/// store of `stormwall::redis`, for a quota shared between instances) and the coalescing
/// stage a [`CoalesceLayer`] with any key (`K`); setting them changes the stack's type
/// parameters. The stages are composed without boxing; the built [`Outbound`] service boxes
/// once, at its outer edge.
pub struct OutboundStack<St = InMemoryStore, K = DefaultKey> {
    cache: Option<CacheLayer>,
    coalesce: Option<CoalesceLayer<K>>,
    retry: Option<RetryLayer>,
    circuit: Option<CircuitBreakerLayer>,
    rate_limit: Option<RateLimitLayer<St>>,
    attempt_timeout: Option<Duration>,
}

impl<St, K: Clone> Clone for OutboundStack<St, K> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            coalesce: self.coalesce.clone(),
            retry: self.retry.clone(),
            circuit: self.circuit.clone(),
            rate_limit: self.rate_limit.clone(),
            attempt_timeout: self.attempt_timeout,
        }
    }
}

impl<St, K> fmt::Debug for OutboundStack<St, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundStack")
            .field("cache", &self.cache.is_some())
            .field("coalesce", &self.coalesce.is_some())
            .field("retry", &self.retry.is_some())
            .field(
                "circuit",
                &self.circuit.as_ref().map(|c| c.name().to_string()),
            )
            .field("rate_limit", &self.rate_limit.is_some())
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

fn breaker(name: &str, config: BreakerConfig) -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(name.to_owned(), config)
        .expect("the preset breaker configurations are valid")
}

impl OutboundStack {
    /// An empty stack: every stage off.
    pub fn new() -> Self {
        Self {
            cache: None,
            coalesce: None,
            retry: None,
            circuit: None,
            rate_limit: None,
            attempt_timeout: None,
        }
    }

    /// The standard preset for a partner API named `name`:
    ///
    /// | stage | default |
    /// |---|---|
    /// | cache | private cache, 64 MiB |
    /// | coalesce | GET/HEAD, keyed by method, URI and identity headers |
    /// | retry | 3 attempts, exponential backoff 100 ms..10 s with full jitter, retry budget (20% + 10/s), 10 s overall deadline |
    /// | circuit breaker | count window of 100 calls, ≥ 20 calls, opens at 50% failures for 5 s, 3 half-open probes |
    /// | rate limit | off: set the partner's quota with [`rate_limit`](Self::rate_limit) |
    /// | attempt timeout | 2 s |
    pub fn standard(name: &str) -> Self {
        Self {
            cache: Some(CacheLayer::private()),
            coalesce: Some(CoalesceLayer::new()),
            retry: Some(
                RetryLayer::new()
                    .max_attempts(3)
                    .deadline(Duration::from_secs(10)),
            ),
            circuit: Some(breaker(
                name,
                BreakerConfig::new()
                    .window(Window::Count(100))
                    .minimum_calls(20)
                    .failure_rate_threshold(50.0)
                    .wait_duration(Duration::from_secs(5))
                    .permitted_calls_in_half_open(3),
            )),
            rate_limit: None,
            attempt_timeout: Some(Duration::from_secs(2)),
        }
    }

    /// Fail fast: no retries, a sensitive breaker (≥ 10 calls, 25% failures, open 10 s) and a
    /// 500 ms attempt timeout — for latency-critical paths with a fallback.
    pub fn fast_fail(name: &str) -> Self {
        Self {
            retry: None,
            circuit: Some(breaker(
                name,
                BreakerConfig::new()
                    .window(Window::Count(50))
                    .minimum_calls(10)
                    .failure_rate_threshold(25.0)
                    .wait_duration(Duration::from_secs(10))
                    .permitted_calls_in_half_open(1),
            )),
            attempt_timeout: Some(Duration::from_millis(500)),
            ..Self::standard(name)
        }
    }

    /// Tolerant: 5 attempts within a 30 s deadline, a lenient breaker (≥ 50 calls, 80%
    /// failures) and a 5 s attempt timeout — for batch jobs that must get through.
    pub fn tolerant(name: &str) -> Self {
        Self {
            retry: Some(
                RetryLayer::new()
                    .max_attempts(5)
                    .deadline(Duration::from_secs(30)),
            ),
            circuit: Some(breaker(
                name,
                BreakerConfig::new()
                    .window(Window::Count(200))
                    .minimum_calls(50)
                    .failure_rate_threshold(80.0)
                    .wait_duration(Duration::from_secs(5))
                    .permitted_calls_in_half_open(5),
            )),
            attempt_timeout: Some(Duration::from_secs(5)),
            ..Self::standard(name)
        }
    }
}

impl<St, K> OutboundStack<St, K> {
    /// Sets the cache stage.
    pub fn cache(mut self, layer: CacheLayer) -> Self {
        self.cache = Some(layer);
        self
    }

    /// Removes the cache stage.
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// Sets the coalescing stage (any key: [`CoalesceLayer::key`], [`CoalesceLayer::key_fn`]).
    pub fn coalesce<K2>(self, layer: CoalesceLayer<K2>) -> OutboundStack<St, K2> {
        OutboundStack {
            cache: self.cache,
            coalesce: Some(layer),
            retry: self.retry,
            circuit: self.circuit,
            rate_limit: self.rate_limit,
            attempt_timeout: self.attempt_timeout,
        }
    }

    /// Removes the coalescing stage.
    pub fn without_coalesce(mut self) -> Self {
        self.coalesce = None;
        self
    }

    /// Sets the retry stage.
    pub fn retry(mut self, layer: RetryLayer) -> Self {
        self.retry = Some(layer);
        self
    }

    /// Removes the retry stage.
    pub fn without_retry(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Sets the circuit breaker stage.
    pub fn circuit_breaker(mut self, layer: CircuitBreakerLayer) -> Self {
        self.circuit = Some(layer);
        self
    }

    /// Removes the circuit breaker stage.
    pub fn without_circuit_breaker(mut self) -> Self {
        self.circuit = None;
        self
    }

    /// Sets the rate-limit stage (use [`RateLimitLayer::wait`] to shape outbound traffic), over
    /// any store.
    pub fn rate_limit<St2>(self, layer: RateLimitLayer<St2>) -> OutboundStack<St2, K> {
        OutboundStack {
            cache: self.cache,
            coalesce: self.coalesce,
            retry: self.retry,
            circuit: self.circuit,
            rate_limit: Some(layer),
            attempt_timeout: self.attempt_timeout,
        }
    }

    /// Removes the rate-limit stage.
    pub fn without_rate_limit(mut self) -> Self {
        self.rate_limit = None;
        self
    }

    /// Bounds each attempt (the wire call only, not the wait for a rate-limit slot).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Removes the attempt timeout.
    pub fn without_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = None;
        self
    }

    /// The cache stage, for its handle and stats.
    pub fn cache_layer(&self) -> Option<&CacheLayer> {
        self.cache.as_ref()
    }

    /// The coalescing stage, for its stats.
    pub fn coalesce_layer(&self) -> Option<&CoalesceLayer<K>> {
        self.coalesce.as_ref()
    }

    /// The retry stage, for its stats.
    pub fn retry_layer(&self) -> Option<&RetryLayer> {
        self.retry.as_ref()
    }

    /// The circuit breaker stage, for its stats and transitions.
    pub fn circuit_layer(&self) -> Option<&CircuitBreakerLayer> {
        self.circuit.as_ref()
    }

    /// The rate-limit stage, for its stats.
    pub fn rate_limit_layer(&self) -> Option<&RateLimitLayer<St>> {
        self.rate_limit.as_ref()
    }

    /// One line of statistics per enabled stage, for logs and the demo.
    pub fn stats_lines(&self) -> Vec<String>
    where
        St: Store,
    {
        let mut lines = Vec::new();
        if let Some(c) = &self.cache {
            lines.push(format!("cache:     {:?}", c.handle().stats()));
        }
        if let Some(c) = &self.coalesce {
            lines.push(format!("coalesce:  {:?}", c.stats().snapshot()));
        }
        if let Some(r) = &self.retry {
            lines.push(format!("retry:     {:?}", r.stats()));
        }
        if let Some(c) = &self.circuit {
            lines.push(format!("circuit:   {:?}", c.stats().snapshot()));
        }
        if let Some(r) = &self.rate_limit {
            lines.push(format!("ratelimit: {:?}", r.stats()));
        }
        lines
    }
}

impl Default for OutboundStack {
    fn default() -> Self {
        Self::new()
    }
}

fn map_circuit(err: CircuitBreakerError<Error>) -> Error {
    match err {
        CircuitBreakerError::Open(open) => Error::circuit_open(open.remaining, &open.name),
        CircuitBreakerError::Inner(e) => e,
    }
}

fn map_retry(err: RetryError<BoxError>) -> Error {
    if err.is_attempt_timeout() || err.is_deadline() {
        return Error::timeout();
    }
    let text = err.to_string();
    match err.into_inner() {
        Some(e) => Error::from_box(e),
        None => Error::upstream_message(text),
    }
}

impl<S, RB, St, K> Layer<S> for OutboundStack<St, K>
where
    S: Service<Request<Body>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
    St: Store,
    K: KeyExtractor<Request<Body>> + Clone + Send + Sync + 'static,
    K::Key: Send + Sync + 'static,
{
    type Service = Outbound;

    fn layer(&self, inner: S) -> Outbound {
        // No box between stages: a stage that is off is the `Right` side of an `Either`
        // (service and body), and the whole stack is boxed once, at the edge. The client's
        // body is boxed at the bottom (a `Body` already is one: no second box), which keeps
        // every stage's body `Unpin`.
        let svc = inner
            .map_response(|res: Response<RB>| res.map(boxed))
            .map_err(|e: S::Error| Error::from_box(e.into()));
        let svc = match self.attempt_timeout {
            Some(timeout) => {
                Either::Left(tower::timeout::Timeout::new(svc, timeout).map_err(Error::from_box))
            }
            None => Either::Right(svc),
        };
        let svc = match &self.rate_limit {
            Some(limit) => Either::Left(limit.layer(svc).map_result(|result| {
                let res = result?;
                if let Some(rejected) = res.extensions().get::<RateLimited>() {
                    return Err(Error::rate_limited(Some(rejected.retry_after)));
                }
                Ok(res.map(EitherBody::Left))
            })),
            None => {
                Either::Right(svc.map_response(|res: Response<Body>| res.map(EitherBody::Right)))
            }
        };
        let svc = match &self.circuit {
            Some(circuit) => Either::Left(
                circuit
                    .layer(svc)
                    .map_response(|res| res.map(EitherBody::Left))
                    .map_err(map_circuit),
            ),
            None => Either::Right(svc.map_response(|res| res.map(EitherBody::Right))),
        };
        let svc = match &self.retry {
            // The retry layer classifies errors by walking their source chain (timeouts, connect
            // errors), which it can do through a box but not through our concrete `Error`.
            Some(retry) => {
                let inner = svc
                    .map_request(|req: Request<RetryBody<Body>>| req.map(boxed))
                    .map_err(|e: Error| -> BoxError { Box::new(e) });
                Either::Left(
                    retry
                        .layer(inner)
                        .map_response(|res| res.map(EitherBody::Left))
                        .map_err(map_retry),
                )
            }
            None => Either::Right(svc.map_response(|res| res.map(EitherBody::Right))),
        };
        let svc = match &self.coalesce {
            Some(coalesce) => Either::Left(coalesce.layer(svc).map_result(|result| {
                let res = result?;
                if let Some(failure) = res.extensions().get::<CoalesceFailure>() {
                    return Err(Error::upstream_message(failure.message()));
                }
                Ok(res.map(EitherBody::Left))
            })),
            None => Either::Right(svc.map_response(|res| res.map(EitherBody::Right))),
        };
        let svc = match &self.cache {
            Some(cache) => Either::Left(
                cache
                    .layer(svc)
                    .map_response(|res| res.map(EitherBody::Left)),
            ),
            None => Either::Right(svc.map_response(|res| res.map(EitherBody::Right))),
        };
        StackService {
            inner: BoxCloneSyncService::new(svc.map_response(|res| res.map(boxed))),
        }
    }
}

/// The inbound (server) stack, outermost first:
///
/// **rate limit (reject, 429) → load shedding / concurrency limit → cache (shared) →
/// coalesce → handler**.
///
/// Inbound stages never turn an `Infallible` service into a fallible one: rejections are
/// responses (429 with `Retry-After` and draft-10 `RateLimit` headers; 503 when shedding
/// load). Use it with `axum::Router::layer`.
///
/// ```
/// use stormwall::InboundStack;
/// use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
/// use stormwall::core::key::PeerIp;
///
/// let per_ip = Limit::new("per-ip", PeerIp::new(), Quota::per_second(10).unwrap());
/// let stack = InboundStack::standard()
///     .rate_limit(RateLimitLayer::new(per_ip))
///     .concurrency_limit(256);
/// // let app = axum::Router::new().route(...).layer(stack);
/// # let _ = stack;
/// ```
///
/// As with [`OutboundStack`], the rate-limit stage takes any [`Store`] (`St`) and the
/// coalescing stage any key (`K`); the stages are composed without boxing and the built
/// [`Inbound`] service boxes once, at its outer edge.
pub struct InboundStack<St = InMemoryStore, K = DefaultKey> {
    rate_limit: Option<RateLimitLayer<St>>,
    concurrency_limit: Option<usize>,
    cache: Option<CacheLayer>,
    coalesce: Option<CoalesceLayer<K>>,
}

impl<St, K: Clone> Clone for InboundStack<St, K> {
    fn clone(&self) -> Self {
        Self {
            rate_limit: self.rate_limit.clone(),
            concurrency_limit: self.concurrency_limit,
            cache: self.cache.clone(),
            coalesce: self.coalesce.clone(),
        }
    }
}

impl<St, K> fmt::Debug for InboundStack<St, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundStack")
            .field("rate_limit", &self.rate_limit.is_some())
            .field("concurrency_limit", &self.concurrency_limit)
            .field("cache", &self.cache.is_some())
            .field("coalesce", &self.coalesce.is_some())
            .finish()
    }
}

impl Default for InboundStack {
    fn default() -> Self {
        Self::new()
    }
}

impl InboundStack {
    /// An empty stack: every stage off.
    pub fn new() -> Self {
        Self {
            rate_limit: None,
            concurrency_limit: None,
            cache: None,
            coalesce: None,
        }
    }

    /// The standard preset:
    ///
    /// | stage | default |
    /// |---|---|
    /// | rate limit | per peer IP (no proxy headers trusted), 50 requests/s with a burst of 100, reject with 429 |
    /// | concurrency limit | 1024 in flight; beyond, 503 with `Retry-After: 1` |
    /// | cache | shared cache, 64 MiB |
    /// | coalesce | GET/HEAD, keyed by method, URI and identity headers |
    pub fn standard() -> Self {
        let quota = Quota::per_second(50)
            .and_then(|q| q.with_burst(100))
            .expect("valid preset quota");
        Self {
            rate_limit: Some(RateLimitLayer::new(Limit::new(
                "per-ip",
                PeerIp::new(),
                quota,
            ))),
            concurrency_limit: Some(1024),
            cache: Some(CacheLayer::shared()),
            coalesce: Some(CoalesceLayer::new()),
        }
    }
}

impl<St, K> InboundStack<St, K> {
    /// Sets the rate-limit stage (reject mode is the inbound default), over any store.
    pub fn rate_limit<St2>(self, layer: RateLimitLayer<St2>) -> InboundStack<St2, K> {
        InboundStack {
            rate_limit: Some(layer),
            concurrency_limit: self.concurrency_limit,
            cache: self.cache,
            coalesce: self.coalesce,
        }
    }

    /// Removes the rate-limit stage.
    pub fn without_rate_limit(mut self) -> Self {
        self.rate_limit = None;
        self
    }

    /// At most `max` requests in flight; beyond, 503 with `Retry-After: 1` (load shedding).
    pub fn concurrency_limit(mut self, max: usize) -> Self {
        self.concurrency_limit = Some(max.max(1));
        self
    }

    /// Removes the concurrency limit.
    pub fn without_concurrency_limit(mut self) -> Self {
        self.concurrency_limit = None;
        self
    }

    /// Sets the cache stage.
    pub fn cache(mut self, layer: CacheLayer) -> Self {
        self.cache = Some(layer);
        self
    }

    /// Removes the cache stage.
    pub fn without_cache(mut self) -> Self {
        self.cache = None;
        self
    }

    /// Sets the coalescing stage (any key: [`CoalesceLayer::key`], [`CoalesceLayer::key_fn`]).
    pub fn coalesce<K2>(self, layer: CoalesceLayer<K2>) -> InboundStack<St, K2> {
        InboundStack {
            rate_limit: self.rate_limit,
            concurrency_limit: self.concurrency_limit,
            cache: self.cache,
            coalesce: Some(layer),
        }
    }

    /// Removes the coalescing stage.
    pub fn without_coalesce(mut self) -> Self {
        self.coalesce = None;
        self
    }

    /// The rate-limit stage, for its stats.
    pub fn rate_limit_layer(&self) -> Option<&RateLimitLayer<St>> {
        self.rate_limit.as_ref()
    }

    /// The cache stage, for its handle and stats.
    pub fn cache_layer(&self) -> Option<&CacheLayer> {
        self.cache.as_ref()
    }

    /// The coalescing stage, for its stats.
    pub fn coalesce_layer(&self) -> Option<&CoalesceLayer<K>> {
        self.coalesce.as_ref()
    }
}

type Full = http_body_util::Full<Bytes>;

fn overloaded() -> Response<Full> {
    let mut res = Response::new(Full::new(Bytes::from_static(
        b"overloaded, try again shortly\n",
    )));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut().insert(
        http::header::RETRY_AFTER,
        format_retry_after(Duration::from_secs(1)),
    );
    res
}

impl<S, RB, St, K> Layer<S> for InboundStack<St, K>
where
    S: Service<Request<Body>, Response = Response<RB>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
    St: Store,
    K: KeyExtractor<Request<Body>> + Clone + Send + Sync + 'static,
    K::Key: Send + Sync + 'static,
{
    type Service = Inbound;

    fn layer(&self, inner: S) -> Inbound {
        // No box between stages (see `OutboundStack`'s `layer`).
        let svc = inner.map_response(|res: Response<RB>| res.map(boxed));
        let svc = match &self.coalesce {
            Some(coalesce) => Either::Left(
                coalesce
                    .layer(svc)
                    .map_response(|res| res.map(EitherBody::Left)),
            ),
            None => {
                Either::Right(svc.map_response(|res: Response<Body>| res.map(EitherBody::Right)))
            }
        };
        let svc = match &self.cache {
            Some(cache) => Either::Left(
                cache
                    .layer(svc)
                    .map_response(|res| res.map(EitherBody::Left)),
            ),
            None => Either::Right(svc.map_response(|res| res.map(EitherBody::Right))),
        };
        let svc = match self.concurrency_limit {
            Some(max) => {
                let limited = tower::ServiceBuilder::new()
                    .load_shed()
                    .concurrency_limit(max)
                    .service(svc);
                Either::Left(ShedToResponse { inner: limited })
            }
            None => Either::Right(svc.map_response(|res| res.map(EitherBody::Left))),
        };
        let svc = match &self.rate_limit {
            Some(limit) => Either::Left(
                limit
                    .layer(svc)
                    .map_response(|res| res.map(EitherBody::Left)),
            ),
            None => Either::Right(svc.map_response(|res| res.map(EitherBody::Right))),
        };
        StackService {
            inner: BoxCloneSyncService::new(svc.map_response(|res| res.map(boxed))),
        }
    }
}

/// Turns the load shedder's `Overloaded` error into a 503 response, keeping the inbound
/// stack infallible.
#[derive(Clone)]
struct ShedToResponse<S> {
    inner: S,
}

type ShedMap<RB> =
    fn(Result<Response<RB>, BoxError>) -> Result<Response<EitherBody<RB, Full>>, Infallible>;

fn shed_to_response<RB>(
    result: Result<Response<RB>, BoxError>,
) -> Result<Response<EitherBody<RB, Full>>, Infallible> {
    Ok(match result {
        Ok(res) => res.map(EitherBody::Left),
        Err(_) => overloaded().map(EitherBody::Right),
    })
}

impl<S, RB> Service<Request<Body>> for ShedToResponse<S>
where
    S: Service<Request<Body>, Response = Response<RB>, Error = BoxError>,
{
    type Response = Response<EitherBody<RB, Full>>;
    type Error = Infallible;
    type Future = futures_util::future::Map<S::Future, ShedMap<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // `LoadShed` is always ready (it sheds in `call` instead); an inner readiness error
        // cannot happen with an infallible inner service, and would surface from `call`.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let fut = self.inner.call(req);
        futures_util::FutureExt::map(fut, shed_to_response::<RB> as ShedMap<RB>)
    }
}

/// The service a standard stack builds: takes requests with any `Bytes` body (hyper's, axum's,
/// tonic's), answers with [`Body`]. Cheap to clone; clones share every layer's state.
///
/// See [`Outbound`] and [`Inbound`].
pub struct StackService<E> {
    inner: Boxed<E>,
}

impl<E> Clone for StackService<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// The service an [`OutboundStack`] builds: fails with one [`Error`] type.
pub type Outbound = StackService<Error>;

/// The service an [`InboundStack`] builds: never fails (rejections are responses).
pub type Inbound = StackService<Infallible>;

impl<E> fmt::Debug for StackService<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackService").finish_non_exhaustive()
    }
}

impl<B, E> Service<Request<B>> for StackService<E>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: 'static,
{
    type Response = Response<Body>;
    type Error = E;
    type Future = <Boxed<E> as Service<Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.inner.call(req.map(boxed))
    }
}
