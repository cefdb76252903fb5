//! The retrying service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use stormwall_core::BoxError;
use tower_service::Service;

use crate::body::RetryBody;
use crate::budget::RetryBudget;
use crate::error::RetryError;
use crate::future::ResponseFuture;
use crate::layer::{Config, RetryLayer};
use crate::stats::{RetryStats, Stats, inc};

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) stats: Arc<Stats>,
}

/// A service that retries failed requests to `S` (see the [crate docs](crate)).
///
/// It accepts `Request<B>` and hands `Request<RetryBody<B>>` to `S`. Responses are passed
/// through (the last one, when retrying stops on a failing response); errors are wrapped in
/// [`RetryError`].
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .field("budget", &self.shared.budget)
            .finish()
    }
}

impl<S> Retry<S> {
    /// Wraps `inner` with the default [`RetryLayer`].
    pub fn new(inner: S) -> Self {
        Self::from_layer(inner, &RetryLayer::new())
    }

    /// Returns a new [`RetryLayer`] (same as [`RetryLayer::new`]).
    pub fn layer() -> RetryLayer {
        RetryLayer::new()
    }

    pub(crate) fn from_layer(inner: S, layer: &RetryLayer) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                config: layer.config.clone(),
                budget: layer.budget.clone(),
                stats: layer.stats.clone(),
            }),
        }
    }

    /// A snapshot of the counters (shared with the layer and every clone).
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
    }

    /// The retry budget shared by every clone.
    pub fn retry_budget(&self) -> &Arc<RetryBudget> {
        &self.shared.budget
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for Retry<S>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResB>> + Clone,
    S::Error: fmt::Display + 'static,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = RetryError<S::Error>;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| RetryError::inner(e, 0))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        inc(&self.shared.stats.requests);
        metrics::counter!("stormwall_retry_requests_total").increment(1);
        // The future owns the service that was just made ready, and polls it ready again
        // before every further attempt.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(service, self.shared.clone(), req)
    }
}
