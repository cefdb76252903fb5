//! The response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use pin_project_lite::pin_project;
use stormwall_core::classify::{ClassifiedResponse, ClassifyResponse, Failure};
use stormwall_core::headers::{GRPC_RETRY_PUSHBACK_MS, ceil_secs};

use crate::body::{Guard, ResponseBody};
use crate::breaker::CircuitOpen;
use crate::layer::RejectionMode;

pin_project! {
    /// The response future of [`CircuitBreaker`](crate::CircuitBreaker).
    pub struct ResponseFuture<F, C, M> {
        #[pin]
        kind: Kind<F, C>,
        _mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Rejected {
            open: Option<CircuitOpen>,
            grpc: bool,
        },
        Call {
            #[pin]
            future: F,
            classifier: Option<C>,
            guard: Guard,
            // When the call becomes slow (only when slow calls are detected).
            slow_at: Option<tokio::time::Instant>,
        },
    }
}

impl<F, C, M> fmt::Debug for ResponseFuture<F, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Rejected { .. } => "rejected",
            Kind::Call { .. } => "call",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, C, M> ResponseFuture<F, C, M> {
    pub(crate) fn rejected(open: CircuitOpen, grpc: bool) -> Self {
        Self {
            kind: Kind::Rejected {
                open: Some(open),
                grpc,
            },
            _mode: PhantomData,
        }
    }

    #[inline(always)]
    pub(crate) fn call(
        future: F,
        classifier: C,
        guard: Guard,
        slow_after: Option<std::time::Duration>,
    ) -> Self {
        Self {
            kind: Kind::Call {
                future,
                classifier: Some(classifier),
                guard,
                slow_at: slow_after.map(|after| tokio::time::Instant::now() + after),
            },
            _mode: PhantomData,
        }
    }
}

impl<F, C, B, E, M> Future for ResponseFuture<F, C, M>
where
    F: Future<Output = Result<Response<B>, E>>,
    C: ClassifyResponse,
    C::FailureClass: Into<Failure>,
    E: fmt::Display + 'static,
    M: RejectionMode,
{
    type Output = Result<Response<ResponseBody<B, C::ClassifyEos>>, M::Error<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { open, grpc } => {
                let open = open.take().expect("polled after completion");
                Poll::Ready(M::rejected(open, *grpc))
            }
            KindProj::Call {
                future,
                classifier,
                guard,
                slow_at,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(slow_at) = slow_at {
                    guard.slow = tokio::time::Instant::now() >= *slow_at;
                }
                let classifier = classifier.take().expect("polled after completion");
                let res = match result {
                    Ok(res) => res,
                    Err(e) => {
                        let failure: Failure = classifier.classify_error(&e).into();
                        guard.finish(Some(&failure));
                        return Poll::Ready(Err(M::inner(e)));
                    }
                };
                match classifier.classify_response(&res) {
                    ClassifiedResponse::Ready(Ok(())) => guard.finish(None),
                    ClassifiedResponse::Ready(Err(failure)) => guard.finish(Some(&failure.into())),
                    ClassifiedResponse::RequiresEos(eos) => {
                        let guard = Guard {
                            breaker: guard.breaker.clone(),
                            permit: guard.permit.take(),
                            slow: guard.slow,
                        };
                        return Poll::Ready(Ok(
                            res.map(|b| ResponseBody::classify_at_eos(b, eos, guard))
                        ));
                    }
                }
                Poll::Ready(Ok(res.map(ResponseBody::passthrough)))
            }
        }
    }
}

/// The rejection response: 503 + `Retry-After` for HTTP, a trailers-only `UNAVAILABLE` for
/// gRPC.
pub(crate) fn rejection<B, E>(open: &CircuitOpen, grpc: bool) -> Response<ResponseBody<B, E>> {
    let secs = ceil_secs(open.remaining).max(1);
    if grpc {
        let mut res = Response::new(ResponseBody::rejection(Bytes::new()));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("circuit%20breaker%20open"),
        );
        let ms = open.remaining.as_millis().max(1).min(u64::MAX as u128) as u64;
        h.insert(&GRPC_RETRY_PUSHBACK_MS, HeaderValue::from(ms));
        return res;
    }
    let mut res = Response::new(ResponseBody::rejection(Bytes::from_static(
        b"circuit breaker open\n",
    )));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = res.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
