//! The layer: configuration, classifier, keying and rejection mode.

use std::fmt;
use std::sync::Arc;

use stormwall_core::classify::ResilienceClassifier;
use stormwall_core::key::KeyExtractor;
use tokio::time::Instant;
use tower_layer::Layer;

use crate::body::ResponseBody;
use crate::breaker::{Breaker, CircuitOpen, Observers, StateTransition};
use crate::classify::FailureIf;
use crate::config::{BreakerConfig, ConfigError};
use crate::error::CircuitBreakerError;
use crate::registry::{CircuitStats, KeyedBreakers, SingleBreaker, Snapshots};
use crate::service::CircuitBreaker;

/// Outbound mode (the default): a rejection is a [`CircuitBreakerError::Open`] error.
///
/// [`CircuitBreakerError::Open`]: crate::CircuitBreakerError::Open
#[derive(Debug, Clone, Copy, Default)]
pub struct Fail;

/// Response mode: a rejection is a response (503 + `Retry-After`, or gRPC `UNAVAILABLE`), so an
/// `Infallible` service stays `Infallible`. See [`CircuitBreakerLayer::respond`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Respond;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Fail {}
    impl Sealed for super::Respond {}
}

/// What a rejection becomes: implemented by [`Fail`] and [`Respond`] only (sealed).
pub trait RejectionMode: sealed::Sealed + Clone {
    /// The service's error type for an inner error type `E`.
    type Error<E>;

    /// Wraps an inner error.
    fn inner<E>(error: E) -> Self::Error<E>;

    /// The outcome of a rejected call.
    fn rejected<B, X, E>(
        open: CircuitOpen,
        grpc: bool,
    ) -> Result<http::Response<ResponseBody<B, X>>, Self::Error<E>>;
}

impl RejectionMode for Fail {
    type Error<E> = CircuitBreakerError<E>;

    #[inline]
    fn inner<E>(error: E) -> Self::Error<E> {
        CircuitBreakerError::Inner(error)
    }

    fn rejected<B, X, E>(
        open: CircuitOpen,
        _grpc: bool,
    ) -> Result<http::Response<ResponseBody<B, X>>, Self::Error<E>> {
        Err(CircuitBreakerError::Open(open))
    }
}

impl RejectionMode for Respond {
    type Error<E> = E;

    #[inline]
    fn inner<E>(error: E) -> Self::Error<E> {
        error
    }

    fn rejected<B, X, E>(
        open: CircuitOpen,
        grpc: bool,
    ) -> Result<http::Response<ResponseBody<B, X>>, Self::Error<E>> {
        Ok(crate::future::rejection(&open, grpc))
    }
}

/// Applies a circuit breaker to a service. See the [crate docs](crate) for an example.
///
/// - `C`: the classifier (a tower-http [`MakeClassifier`] whose failure class converts into
///   [`Failure`]); [`ResilienceClassifier`] by default.
/// - `K`: which breaker judges a request: [`SingleBreaker`] or [`KeyedBreakers`].
/// - `M`: what a rejection is: [`Fail`] (an error, default) or [`Respond`] (a response).
///
/// [`MakeClassifier`]: stormwall_core::classify::MakeClassifier
/// [`Failure`]: stormwall_core::classify::Failure
pub struct CircuitBreakerLayer<C = ResilienceClassifier, K = SingleBreaker, M = Fail> {
    pub(crate) classifier: C,
    pub(crate) breakers: Arc<K>,
    pub(crate) name: Arc<str>,
    pub(crate) config: BreakerConfig,
    pub(crate) observers: Observers,
    pub(crate) mode: M,
}

impl<C: Clone, K, M: Clone> Clone for CircuitBreakerLayer<C, K, M> {
    fn clone(&self) -> Self {
        Self {
            classifier: self.classifier.clone(),
            breakers: self.breakers.clone(),
            name: self.name.clone(),
            config: self.config.clone(),
            observers: self.observers.clone(),
            mode: self.mode.clone(),
        }
    }
}

impl<C: fmt::Debug, K: fmt::Debug, M: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C, K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.name)
            .field("classifier", &self.classifier)
            .field("breakers", &self.breakers)
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish()
    }
}

impl CircuitBreakerLayer {
    /// One breaker named `name` (used in metrics, events and logs) with `config`, the default
    /// classifier and the outbound (error) mode.
    ///
    /// Install your `metrics` recorder before building the layer: metric handles are
    /// registered here, not per call.
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Result<Self, ConfigError> {
        let name = name.into();
        let observers = Observers::default();
        let breaker = Breaker::with_observers(
            name.clone(),
            config.clone(),
            Instant::now(),
            observers.clone(),
        )?;
        Ok(Self {
            classifier: ResilienceClassifier::new(),
            breakers: Arc::new(SingleBreaker {
                breaker: Arc::new(breaker),
                observers: observers.clone(),
            }),
            name,
            config,
            observers,
            mode: Fail,
        })
    }
}

impl<C, M> CircuitBreakerLayer<C, SingleBreaker, M> {
    /// The breaker (to force it open, close it, or read its state).
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breakers.breaker
    }

    /// Calls `hook` on every state transition, synchronously, on the thread that made it. Set
    /// it before [`keyed`](Self::keyed); it starts a fresh breaker.
    pub fn on_transition(
        mut self,
        hook: impl Fn(&StateTransition) + Send + Sync + 'static,
    ) -> Self {
        self.observers.hook = Some(Arc::new(hook));
        let breaker = Breaker::with_observers(
            self.name.clone(),
            self.config.clone(),
            Instant::now(),
            self.observers.clone(),
        )
        .expect("config validated in new");
        self.breakers = Arc::new(SingleBreaker {
            breaker: Arc::new(breaker),
            observers: self.observers.clone(),
        });
        self
    }

    /// One breaker per key extracted by `extractor`, at most `max_keys` of them (see
    /// [`KeyedBreakers`] for what happens at the bound).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_circuit::{BreakerConfig, CircuitBreakerLayer};
    /// use stormwall_core::key::AuthorityKey;
    ///
    /// let layer = CircuitBreakerLayer::new("upstreams", BreakerConfig::new())
    ///     .unwrap()
    ///     .keyed(AuthorityKey, 1_000)
    ///     .unwrap();
    /// assert_eq!(layer.stats().snapshot().len(), 1); // just the fallback so far
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn keyed<E>(
        self,
        extractor: E,
        max_keys: usize,
    ) -> Result<CircuitBreakerLayer<C, KeyedBreakers<E, E::Key>, M>, ConfigError>
    where
        E: KeyExtractor<http::Request<()>>,
    {
        self.keyed_any::<E, http::Request<()>>(extractor, max_keys)
    }

    /// [`keyed`](Self::keyed) for extractors that only key a specific request type `Req`.
    #[allow(clippy::type_complexity)]
    pub fn keyed_any<E, Req>(
        self,
        extractor: E,
        max_keys: usize,
    ) -> Result<CircuitBreakerLayer<C, KeyedBreakers<E, E::Key>, M>, ConfigError>
    where
        E: KeyExtractor<Req>,
    {
        let breakers = KeyedBreakers::new(
            self.name.clone(),
            self.config.clone(),
            extractor,
            max_keys,
            self.observers.clone(),
        )?;
        Ok(CircuitBreakerLayer {
            classifier: self.classifier,
            breakers: Arc::new(breakers),
            name: self.name,
            config: self.config,
            observers: self.observers,
            mode: self.mode,
        })
    }
}

impl<C, K, M> CircuitBreakerLayer<C, K, M> {
    /// Replaces the classifier: any tower-http `MakeClassifier` whose failure classes convert
    /// into [`Failure`](stormwall_core::classify::Failure), e.g. a [`ResilienceClassifier`]
    /// with `too_many_requests_is_failure(false)`, or tower-http's `GrpcErrorsAsFailures`.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2, K, M> {
        CircuitBreakerLayer {
            classifier,
            breakers: self.breakers,
            name: self.name,
            config: self.config,
            observers: self.observers,
            mode: self.mode,
        }
    }

    /// Classifies with a predicate on status and headers (`true` = failure); errors are
    /// failures.
    pub fn failure_if<F>(self, predicate: F) -> CircuitBreakerLayer<FailureIf<F>, K, M>
    where
        F: Fn(http::StatusCode, &http::HeaderMap) -> bool + Clone,
    {
        self.classifier(FailureIf::new(predicate))
    }

    /// Rejections become responses: `503 Service Unavailable` with `Retry-After` (whole
    /// seconds, rounded up, at least 1) for HTTP requests; for gRPC requests
    /// (`content-type: application/grpc*`) a trailers-only response with `grpc-status: 14`
    /// (`UNAVAILABLE`) and `grpc-retry-pushback-ms`. The error type stays the inner one.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response, StatusCode};
    /// use stormwall_circuit::{BreakerConfig, CircuitBreakerLayer};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::new("inbound", BreakerConfig::new()).unwrap().respond();
    /// let handler = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    /// let mut svc = layer.layer(handler);
    ///
    /// layer.breaker().force_open();
    /// let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
    /// assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(res.headers()["retry-after"], "60");
    /// # }
    /// ```
    pub fn respond(self) -> CircuitBreakerLayer<C, K, Respond> {
        CircuitBreakerLayer {
            classifier: self.classifier,
            breakers: self.breakers,
            name: self.name,
            config: self.config,
            observers: self.observers,
            mode: Respond,
        }
    }

    /// The layer's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
}

impl<C, K: Snapshots, M> CircuitBreakerLayer<C, K, M> {
    /// A handle on the breakers' health, shared with every service made by this layer.
    ///
    /// ```
    /// use stormwall_circuit::{BreakerConfig, CircuitBreakerLayer, State};
    ///
    /// let layer = CircuitBreakerLayer::new("db", BreakerConfig::new()).unwrap();
    /// let stats = layer.stats();
    /// let snapshot = &stats.snapshot()[0];
    /// assert_eq!((&*snapshot.name, snapshot.state), ("db", State::Closed));
    /// assert_eq!(snapshot.failure_rate, 0.0);
    /// ```
    pub fn stats(&self) -> CircuitStats {
        CircuitStats {
            inner: self.breakers.clone(),
        }
    }

    /// Subscribes to the state transitions of the layer's breakers.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StateTransition> {
        self.observers.events.subscribe()
    }
}

impl<S, C: Clone, K, M: Clone> Layer<S> for CircuitBreakerLayer<C, K, M> {
    type Service = CircuitBreaker<S, C, K, M>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            classifier: self.classifier.clone(),
            breakers: self.breakers.clone(),
            slow_after: self.config.slow_call_duration,
            mode: self.mode.clone(),
        }
    }
}
