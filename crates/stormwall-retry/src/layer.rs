//! The layer and its configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use stormwall_core::classify::{Failure, GrpcCode, ResilienceClassifier};
use stormwall_core::headers::GrpcPushback;
use tower_layer::Layer;

use crate::backoff::Backoff;
use crate::budget::RetryBudget;
use crate::service::Retry;
use crate::stats::{RetryStats, Stats};

type Predicate = Arc<dyn Fn(&Failure) -> bool + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_pushback: Duration,
    pub(crate) retry_unsafe: bool,
    pub(crate) retry_grpc: bool,
    pub(crate) predicate: Option<Predicate>,
    pub(crate) classifier: ResilienceClassifier,
    pub(crate) body_limit: usize,
    pub(crate) hedge_after: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            attempt_timeout: None,
            deadline: None,
            max_pushback: Duration::from_secs(30),
            retry_unsafe: false,
            retry_grpc: false,
            predicate: None,
            classifier: ResilienceClassifier::new(),
            body_limit: 64 * 1024,
            hedge_after: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("max_pushback", &self.max_pushback)
            .field("retry_unsafe", &self.retry_unsafe)
            .field("retry_grpc", &self.retry_grpc)
            .field("predicate", &self.predicate.as_ref().map(|_| "custom"))
            .field("body_limit", &self.body_limit)
            .field("hedge_after", &self.hedge_after)
            .finish()
    }
}

impl Config {
    pub(crate) fn should_retry(&self, failure: &Failure) -> bool {
        // A peer that explicitly asked not to be retried is never retried.
        if matches!(
            failure,
            Failure::Grpc {
                pushback: Some(GrpcPushback::DoNotRetry),
                ..
            }
        ) {
            return false;
        }
        match &self.predicate {
            Some(p) => p(failure),
            None => default_retryable(failure),
        }
    }

    pub(crate) fn method_is_retryable(&self, method: &Method, headers: &http::HeaderMap) -> bool {
        self.retry_unsafe
            || is_idempotent(method)
            || headers.contains_key("idempotency-key")
            || (self.retry_grpc && is_grpc_request(headers))
    }
}

fn is_grpc_request(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Methods that RFC 9110 §9.2.2 defines as idempotent.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The default answer to "is this failure worth another attempt?".
///
/// Yes for connect errors, timeouts, connection resets, `502`/`503`/`504`, `429` (with or
/// without `Retry-After`) and gRPC `UNAVAILABLE`; gRPC `RESOURCE_EXHAUSTED` only when the peer
/// sent a `grpc-retry-pushback-ms`. No for everything else (`500`, other `4xx`, unknown errors).
///
/// ```
/// use http::StatusCode;
/// use stormwall_core::classify::Failure;
/// use stormwall_retry::default_retryable;
///
/// assert!(default_retryable(&Failure::Status(StatusCode::BAD_GATEWAY)));
/// assert!(default_retryable(&Failure::Connect));
/// assert!(!default_retryable(&Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)));
/// ```
pub fn default_retryable(failure: &Failure) -> bool {
    match failure {
        Failure::Connect | Failure::Timeout | Failure::Reset => true,
        Failure::Status(s) => matches!(s.as_u16(), 502..=504),
        Failure::BackOff {
            status: Some(s), ..
        } => matches!(s.as_u16(), 429 | 502..=504),
        Failure::BackOff {
            grpc: Some(_),
            pushback,
            ..
        } => pushback.is_some(),
        Failure::Grpc { code, pushback } => {
            *code == GrpcCode::Unavailable && !matches!(pushback, Some(GrpcPushback::DoNotRetry))
        }
        _ => false,
    }
}

/// A [`Layer`] that retries failed HTTP requests (see the [crate docs](crate)).
///
/// Every service built by one layer shares its [`RetryBudget`] and its stats.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    pub(crate) config: Config,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) stats: Arc<Stats>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// A layer with the defaults: 3 attempts, exponential backoff 100 ms..10 s with full
    /// jitter, [`RetryBudget::default`], no timeout or deadline, pushback clamped to 30 s, a
    /// 64 KiB body buffer, unsafe methods not retried, no hedging.
    ///
    /// ```
    /// use stormwall_retry::RetryLayer;
    /// let layer = RetryLayer::new().max_attempts(5);
    /// assert_eq!(layer.stats().requests, 0);
    /// ```
    pub fn new() -> Self {
        Self {
            config: Config::default(),
            budget: Arc::new(RetryBudget::default()),
            stats: Arc::new(Stats::default()),
        }
    }

    /// The maximum number of attempts per request, the first included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.max_attempts = attempts.max(1);
        self
    }

    /// The backoff schedule between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// A timeout for each attempt; an attempt that times out counts as a
    /// [`Failure::Timeout`] and is retried.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
        self
    }

    /// An overall deadline across all attempts and backoffs. When a backoff or a pushback would
    /// end beyond it, retrying stops at once and the last outcome is returned; an attempt still
    /// in flight at the deadline is cancelled with [`RetryError::is_deadline`](crate::RetryError::is_deadline).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// The longest server pushback (`Retry-After`, `RateLimit` reset, `grpc-retry-pushback-ms`)
    /// honoured as the next delay; longer pushbacks are clamped to it (default 30 s).
    pub fn max_pushback(mut self, max: Duration) -> Self {
        self.config.max_pushback = max;
        self
    }

    /// Also retry non-idempotent methods (`POST`, `PATCH`, …) without an `Idempotency-Key`.
    pub fn retry_unsafe_methods(mut self, yes: bool) -> Self {
        self.config.retry_unsafe = yes;
        self
    }

    /// Retry gRPC calls (requests with `content-type: application/grpc*`). Every gRPC call is a
    /// `POST`, so without this (or [`RetryLayer::retry_unsafe_methods`]) gRPC calls are sent
    /// once. Enable it for methods that are safe to repeat: gRPC `UNAVAILABLE` usually means
    /// the call was not processed, but not always.
    pub fn retry_grpc(mut self, yes: bool) -> Self {
        self.config.retry_grpc = yes;
        self
    }

    /// Replaces [`default_retryable`] with a custom predicate over the classified failure.
    ///
    /// ```
    /// use http::StatusCode;
    /// use stormwall_core::classify::Failure;
    /// use stormwall_retry::{default_retryable, RetryLayer};
    ///
    /// // Also retry 500s.
    /// let layer = RetryLayer::new().retry_if(|f: &Failure| {
    ///     default_retryable(f) || *f == Failure::Status(StatusCode::INTERNAL_SERVER_ERROR)
    /// });
    /// # let _ = layer;
    /// ```
    pub fn retry_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&Failure) -> bool + Send + Sync + 'static,
    {
        self.config.predicate = Some(Arc::new(predicate));
        self
    }

    /// The classifier that turns responses into failures (default [`ResilienceClassifier::new`]).
    pub fn classifier(mut self, classifier: ResilienceClassifier) -> Self {
        self.config.classifier = classifier;
        self
    }

    /// The largest request body buffered for replay (default 64 KiB). A larger body is sent
    /// once, unmodified, and the request is not retried.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// Enables hedging for retryable requests: when an attempt has not answered after `delay`,
    /// a second attempt is sent (if attempts and the budget allow); the first non-retryable
    /// outcome wins and the other attempt is cancelled (dropped). At most two attempts are in
    /// flight at once.
    pub fn hedge_after(mut self, delay: Duration) -> Self {
        self.config.hedge_after = Some(delay);
        self
    }

    /// Uses `budget` (e.g. an `Arc` shared with other layers) instead of a fresh default one.
    pub fn budget(mut self, budget: impl Into<Arc<RetryBudget>>) -> Self {
        self.budget = budget.into();
        self
    }

    /// Seeds the jitter generator (for reproducible tests).
    pub fn seed(self, seed: u64) -> Self {
        self.stats
            .seed
            .store(seed, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The budget shared by the services of this layer.
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }

    /// A snapshot of the counters of every service built by this layer.
    pub fn stats(&self) -> RetryStats {
        self.stats.snapshot()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::from_layer(inner, self)
    }
}
