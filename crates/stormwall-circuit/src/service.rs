//! The service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use stormwall_core::classify::{ClassifyEos, ClassifyResponse, Failure, MakeClassifier};
use tower_service::Service;

use crate::body::{Guard, ResponseBody};
use crate::future::ResponseFuture;
use crate::layer::RejectionMode;
use crate::registry::{CircuitStats, SelectBreaker, Snapshots};

/// A service guarded by a circuit breaker; made by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer). Clones share the breakers.
pub struct CircuitBreaker<S, C, K, M> {
    pub(crate) inner: S,
    pub(crate) classifier: C,
    pub(crate) breakers: Arc<K>,
    pub(crate) slow_after: Option<Duration>,
    pub(crate) mode: M,
}

impl<S: Clone, C: Clone, K, M: Clone> Clone for CircuitBreaker<S, C, K, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            breakers: self.breakers.clone(),
            slow_after: self.slow_after,
            mode: self.mode.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug, K: fmt::Debug, M: fmt::Debug> fmt::Debug
    for CircuitBreaker<S, C, K, M>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("classifier", &self.classifier)
            .field("breakers", &self.breakers)
            .field("mode", &self.mode)
            .finish()
    }
}

impl<S, C, K, M> CircuitBreaker<S, C, K, M> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, K: Snapshots, M> CircuitBreaker<S, C, K, M> {
    /// A handle on the breakers' health.
    pub fn stats(&self) -> CircuitStats {
        CircuitStats {
            inner: self.breakers.clone(),
        }
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl<S, C, K, M> CircuitBreaker<S, C, K, M> {
    #[inline(always)]
    fn start<ReqB>(&mut self, req: Request<ReqB>) -> ResponseFuture<S::Future, C::Classifier, M>
    where
        S: Service<Request<ReqB>>,
        C: MakeClassifier,
        K: SelectBreaker<Request<ReqB>>,
    {
        let breaker = self.breakers.select(&req);
        match breaker.try_acquire_with(tokio::time::Instant::now) {
            Ok(permit) => {
                let classifier = self.classifier.make_classifier(&req);
                let guard = Guard {
                    breaker,
                    permit: Some(permit),
                    slow: false,
                };
                ResponseFuture::call(self.inner.call(req), classifier, guard, self.slow_after)
            }
            Err(open) => ResponseFuture::rejected(open, is_grpc(&req)),
        }
    }
}

impl<S, C, K, M, ReqB, ResB> Service<Request<ReqB>> for CircuitBreaker<S, C, K, M>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: fmt::Display + 'static,
    C: MakeClassifier,
    C::FailureClass: Into<Failure>,
    <C::ClassifyEos as ClassifyEos>::FailureClass: Into<Failure>,
    <C::Classifier as ClassifyResponse>::FailureClass: Into<Failure>,
    K: SelectBreaker<Request<ReqB>>,
    M: RejectionMode,
{
    type Response = Response<ResponseBody<ResB, C::ClassifyEos>>;
    type Error = M::Error<S::Error>;
    type Future = ResponseFuture<S::Future, C::Classifier, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(M::inner)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        self.start(req)
    }
}
