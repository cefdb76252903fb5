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
                tracing::debug!(breaker = %self.breaker.name(), failure = %f, "call failed");
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
    /// The rejection body is a static `Bytes` held here rather than the core's
    /// `ResponseBody`, whose inline trailers slot would double the size of every response
    /// moved through the closed (hot) path.
    pub struct ResponseBody<B, E> {
        #[pin]
        kind: Kind<B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, E> {
        Inner {
            #[pin]
            body: B,
            eos: Option<Box<Eos<E>>>,
        },
        Rejected {
            data: Option<Bytes>,
        },
    }
}

impl<B, E> fmt::Debug for ResponseBody<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { eos, .. } => f
                .debug_struct("ResponseBody::Inner")
                .field("classifies_at_eos", &eos.is_some())
                .finish_non_exhaustive(),
            Kind::Rejected { data } => f
                .debug_struct("ResponseBody::Rejected")
                .field("len", &data.as_ref().map(Bytes::len))
                .finish(),
        }
    }
}

impl<B, E> ResponseBody<B, E> {
    #[inline]
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Inner { body, eos: None },
        }
    }

    pub(crate) fn classify_at_eos(body: B, classify: E, guard: Guard) -> Self {
        Self {
            kind: Kind::Inner {
                body,
                // Boxed so that the body stays small on the common (classified-at-headers)
                // path; this one allocation happens only for responses classified at end of
                // stream.
                eos: Some(Box::new(Eos { classify, guard })),
            },
        }
    }

    pub(crate) fn rejection(body: Bytes) -> Self {
        Self {
            kind: Kind::Rejected {
                data: (!body.is_empty()).then_some(body),
            },
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
        let (body, eos) = match self.project().kind.project() {
            KindProj::Inner { body, eos } => (body, eos),
            KindProj::Rejected { data } => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))));
            }
        };
        let frame = ready!(body.poll_frame(cx));
        if eos.is_some() {
            let trailers: Option<Option<&HeaderMap>> = match &frame {
                None => Some(None),
                Some(Ok(f)) => f.trailers_ref().map(Some),
                Some(Err(_)) => None,
            };
            if let Some(trailers) = trailers {
                let Eos {
                    classify,
                    mut guard,
                } = *eos.take().expect("checked");
                let failure = classify.classify_eos(trailers).err().map(Into::into);
                guard.finish(failure.as_ref());
            } else if let Some(Err(e)) = &frame {
                let Eos {
                    classify,
                    mut guard,
                } = *eos.take().expect("checked");
                let failure: Failure = classify.classify_error(e).into();
                guard.finish(Some(&failure));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body, .. } => body.is_end_stream(),
            Kind::Rejected { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body, .. } => body.size_hint(),
            Kind::Rejected { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
