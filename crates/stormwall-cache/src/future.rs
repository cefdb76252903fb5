//! The response future of [`Cache`](crate::Cache).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use stormwall_core::response::ResponseBody;

pub(crate) type Boxed<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project! {
    /// The future returned by [`Cache`](crate::Cache): ready at once on a hit; on a miss or
    /// revalidation it drives the (possibly coalesced) upstream call, then buffers and stores
    /// the response.
    pub struct ResponseFuture<B, E> {
        #[pin]
        kind: Kind<B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, E> {
        Ready { res: Option<Result<Response<ResponseBody<B>>, E>> },
        Upstream { fut: Boxed<B, E> },
    }
}

impl<B, E> ResponseFuture<B, E> {
    pub(crate) fn ready(res: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready { res: Some(Ok(res)) },
        }
    }

    pub(crate) fn upstream(fut: Boxed<B, E>) -> Self {
        Self {
            kind: Kind::Upstream { fut },
        }
    }
}

impl<B, E> fmt::Debug for ResponseFuture<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "ready",
            Kind::Upstream { .. } => "upstream",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { res } => {
                Poll::Ready(res.take().expect("ResponseFuture polled after completion"))
            }
            KindProj::Upstream { fut } => fut.as_mut().poll(cx),
        }
    }
}
