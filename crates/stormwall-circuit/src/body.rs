//! The response body: passes the inner body through, and classifies gRPC responses at the
//! end of the stream (trailers) when the headers did not tell.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use stormwall_core::classify::{ClassifyEos, Failure};

use crate::breaker::{Breaker, Permit};

/// A call whose outcome is not known yet; released (not recorded) if dropped.
pub(crate) struct Guard {
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) permit: Option<Permit>,
    pub(crate) slow: bool,
}

impl Guard {
    #[inline]
    pub(crate) fn finish(&mut self, failure: Option<&Failure>) {
        if let Some(permit) = self.permit.take() {
            if let Some(f) = failure {
                self.log_failure(f);
            }
            self.breaker.record_with(
                permit,
                failure.is_some(),
                self.slow,
                tokio::time::Instant::now,
            );
        }
    }
}

impl Guard {
    #[cold]
    #[inline(never)]
    fn log_failure(&self, failure: &Failure) {
        tracing::debug!(breaker = %self.breaker.name(), %failure, "call failed");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
        }
    }
}

struct Eos<E> {
    classify: E,
    guard: Guard,
}

pin_project! {
    /// The body of the responses of a [`CircuitBreaker`](crate::CircuitBreaker): the inner body
    /// (classified at its end for gRPC responses whose status is in the trailers), or the
    /// rejection body.
    ///
    /// Everything but the inner body sits behind one optional box, so that on the common
    /// (classified-at-headers) path the body is the inner body plus one null pointer: every
    /// response moved through the closed (hot) path stays as small as possible.
    pub struct ResponseBody<B, E> {
        #[pin]
        body: Option<B>,
        extra: Option<Box<Extra<E>>>,
    }
}

enum Extra<E> {
    /// Classify at end of stream, then record through the guard.
    Eos(Eos<E>),
    /// The rejection body (no inner body); `None` once sent.
    Rejected(Option<Bytes>),
}

impl<B, E> fmt::Debug for ResponseBody<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.extra.as_deref() {
            Some(Extra::Rejected(data)) => f
                .debug_struct("ResponseBody::Rejected")
                .field("len", &data.as_ref().map(Bytes::len))
                .finish(),
            eos => f
                .debug_struct("ResponseBody::Inner")
                .field("classifies_at_eos", &matches!(eos, Some(Extra::Eos(_))))
                .finish_non_exhaustive(),
        }
    }
}

impl<B, E> ResponseBody<B, E> {
    #[inline(always)]
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            body: Some(body),
            extra: None,
        }
    }

    pub(crate) fn classify_at_eos(body: B, classify: E, guard: Guard) -> Self {
        Self {
            body: Some(body),
            // This one allocation happens only for responses classified at end of stream.
            extra: Some(Box::new(Extra::Eos(Eos { classify, guard }))),
        }
    }

    pub(crate) fn rejection(body: Bytes) -> Self {
        Self {
            body: None,
            // An empty rejection body (gRPC) needs no box: no body and no extra is the end.
            extra: (!body.is_empty()).then(|| Box::new(Extra::Rejected(Some(body)))),
        }
    }
}

impl<B, E> Body for ResponseBody<B, E>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Display + 'static,
    E: ClassifyEos,
    E::FailureClass: Into<Failure>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let Some(body) = this.body.as_pin_mut() else {
            return Poll::Ready(match this.extra.as_deref_mut() {
                Some(Extra::Rejected(data)) => data.take().map(|d| Ok(Frame::data(d))),
                _ => None,
            });
        };
        let frame = ready!(body.poll_frame(cx));
        if matches!(this.extra.as_deref(), Some(Extra::Eos(_))) {
            let trailers: Option<Option<&HeaderMap>> = match &frame {
                None => Some(None),
                Some(Ok(f)) => f.trailers_ref().map(Some),
                Some(Err(_)) => None,
            };
            let end = trailers.is_some() || matches!(frame, Some(Err(_)));
            if let Some(extra) = this.extra.take_if(|_| end)
                && let Extra::Eos(Eos {
                    classify,
                    mut guard,
                }) = *extra
            {
                if let Some(trailers) = trailers {
                    let failure = classify.classify_eos(trailers).err().map(Into::into);
                    guard.finish(failure.as_ref());
                } else if let Some(Err(e)) = &frame {
                    let failure: Failure = classify.classify_error(e).into();
                    guard.finish(Some(&failure));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => !matches!(self.extra.as_deref(), Some(Extra::Rejected(Some(_)))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => SizeHint::with_exact(match self.extra.as_deref() {
                Some(Extra::Rejected(Some(d))) => d.len() as u64,
                _ => 0,
            }),
        }
    }
}
