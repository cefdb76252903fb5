//! Outbound reject mode as a typed error: [`RateLimitError`], [`ErrorOnReject`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use stormwall_core::response::ResponseBody;
use tower_layer::Layer;
use tower_service::Service;

use crate::layer::RateLimitLayer;
use crate::response::{RateLimited, RejectReason};
use crate::service::RateLimit;

/// The error of [`ErrorOnReject`]: the limiter rejected the request (with the exact earliest
/// admission time), or the inner service failed.
#[derive(Debug)]
pub enum RateLimitError<E> {
    /// Rejected by the rate limiter; the request was not sent.
    Limited {
        /// Why.
        reason: RejectReason,
        /// When the request would be admitted ([`Duration::MAX`]: never, e.g. a cost above
        /// the burst).
        retry_after: Duration,
    },
    /// The inner service's error.
    Inner(E),
}

impl<E> RateLimitError<E> {
    /// Whether the limiter rejected the request.
    pub const fn is_limited(&self) -> bool {
        matches!(self, Self::Limited { .. })
    }

    /// The earliest admission time, if the limiter rejected the request.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Limited { retry_after, .. } => Some(*retry_after),
            Self::Inner(_) => None,
        }
    }

    /// The inner error, if any.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Limited { .. } => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RateLimitError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limited {
                reason,
                retry_after,
            } => write!(f, "{reason} (retry after {retry_after:?})"),
            Self::Inner(e) => write!(f, "{e}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RateLimitError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Limited { .. } => None,
        }
    }
}

/// A layer that turns the rate limiter's rejections into [`RateLimitError::Limited`] errors
/// instead of 429 responses: for outbound clients, where a rejection should fail fast as an
/// error (and not look like the upstream's own 429). Build it with
/// [`RateLimitLayer::error_on_reject`].
///
/// ```
/// use stormwall_core::key::GlobalKey;
/// use stormwall_ratelimit::{Limit, Quota, RateLimitError, RateLimitLayer};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = RateLimitLayer::new(Limit::global("partner", Quota::per_second(1).unwrap())).error_on_reject();
/// let client = ServiceBuilder::new().layer(layer).service(service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// assert!(client.clone().oneshot(http::Request::new(())).await.is_ok());
/// let err = client.oneshot(http::Request::new(())).await.unwrap_err();
/// assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(1)));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ErrorOnReject<L> {
    layer: L,
}

impl<St> RateLimitLayer<St> {
    /// Rejections become [`RateLimitError::Limited`] errors instead of 429 responses.
    pub fn error_on_reject(self) -> ErrorOnReject<Self> {
        ErrorOnReject { layer: self }
    }
}

impl<S, St> Layer<S> for ErrorOnReject<RateLimitLayer<St>> {
    type Service = ErrorOnReject<RateLimit<S, St>>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorOnReject {
            layer: self.layer.layer(inner),
        }
    }
}

impl<Svc, ReqB, ResB> Service<Request<ReqB>> for ErrorOnReject<Svc>
where
    Svc: Service<Request<ReqB>, Response = Response<ResponseBody<ResB>>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = RateLimitError<Svc::Error>;
    type Future = ErrorFuture<Svc::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.layer.poll_ready(cx).map_err(RateLimitError::Inner)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        ErrorFuture {
            inner: self.layer.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`ErrorOnReject`].
    #[derive(Debug)]
    pub struct ErrorFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B, E> Future for ErrorFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, RateLimitError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(self.project().inner.poll(cx)).map_err(RateLimitError::Inner)?;
        match res.extensions().get::<RateLimited>() {
            Some(r) => Poll::Ready(Err(RateLimitError::Limited {
                reason: r.reason,
                retry_after: r.retry_after,
            })),
            None => Poll::Ready(Ok(res)),
        }
    }
}
