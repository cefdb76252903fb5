//! The request body the inner service receives.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body a [`Retry`](crate::Retry) service hands to its inner service.
    ///
    /// Either a **buffered** copy (a request body that fit in the
    /// [body limit](crate::RetryLayer::body_limit), replayed byte-for-byte on every attempt), or
    /// the caller's **streaming** body, possibly preceded by the bytes already read while trying
    /// to buffer it. A streaming body is sent once and never retried, and never truncated.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::{BodyExt, Full};
    /// use stormwall_retry::RetryBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let body: RetryBody<Full<Bytes>> = RetryBody::full("hello");
    /// assert_eq!(body.size_hint().exact(), Some(5));
    /// let bytes = body.collect().await.unwrap().to_bytes();
    /// assert_eq!(bytes, "hello");
    /// # }
    /// ```
    pub struct RetryBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Stream { prefix: Option<Bytes>, #[pin] body: B },
    }
}

impl<B> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full { data, .. } => f
                .debug_struct("RetryBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream { prefix, .. } => f
                .debug_struct("RetryBody::Stream")
                .field("prefix_len", &prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

impl<B> RetryBody<B> {
    /// A buffered body with `data`.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::buffered(data.into(), None)
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::buffered(Bytes::new(), None)
    }

    /// A buffered body with `data` and optional trailers.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// The caller's streaming body, sent as is.
    pub fn stream(body: B) -> Self {
        Self::prefixed(Bytes::new(), body)
    }

    /// `prefix` (bytes already read from `body`) followed by the rest of `body`.
    pub fn prefixed(prefix: Bytes, body: B) -> Self {
        Self {
            kind: Kind::Stream {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body,
            },
        }
    }

    /// Whether this is a buffered (replayable) body.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }
}

impl<B> Default for RetryBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Stream { prefix, body } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                Poll::Ready(ready!(body.poll_frame(cx)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Stream { prefix, body } => prefix.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len()) as u64)
            }
            Kind::Stream { prefix, body } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len()) as u64;
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}
