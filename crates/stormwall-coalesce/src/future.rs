//! [`ResponseFuture`]: the future of [`Coalesce`](crate::Coalesce).

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use stormwall_core::response::ResponseBody;
use tokio::time::Sleep;
use tower_service::Service;

use crate::flight::{Delivery, Waiter};
use crate::upstream::{HttpShared, HttpUpstream, failure_response};

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, RB, K>
    where
        S: Service<Request<ReqB>, Response = Response<RB>>,
        S::Future: Send,
        S::Error: fmt::Display,
        RB: Body<Data = Bytes>,
        RB: Unpin,
        RB: Send,
        RB::Error: fmt::Display,
        K: Hash,
        K: Eq,
    {
        Direct {
            #[pin]
            fut: S::Future,
        },
        Waiting {
            waiter: Waiter<K, HttpUpstream<S::Future, RB>>,
            // A waiter's own request, kept in case it has to re-issue it.
            reissue: Option<(S, Request<ReqB>)>,
        },
        Reissue {
            svc: S,
            req: Option<Request<ReqB>>,
        },
        Done,
    }
}

pin_project! {
    /// The response future of [`Coalesce`](crate::Coalesce).
    pub struct ResponseFuture<S, ReqB, RB, K>
    where
        S: Service<Request<ReqB>, Response = Response<RB>>,
        S::Future: Send,
        S::Error: fmt::Display,
        RB: Body<Data = Bytes>,
        RB: Unpin,
        RB: Send,
        RB::Error: fmt::Display,
        K: Hash,
        K: Eq,
    {
        #[pin]
        state: State<S, ReqB, RB, K>,
        timeout: Option<Duration>,
        // Boxed and created on the first pending poll, only when a timeout is set: a waiter
        // without a timeout does not carry a timer.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<S, ReqB, RB, K> fmt::Debug for ResponseFuture<S, ReqB, RB, K>
where
    S: Service<Request<ReqB>, Response = Response<RB>>,
    S::Future: Send,
    S::Error: fmt::Display,
    RB: Body<Data = Bytes> + Unpin + Send,
    RB::Error: fmt::Display,
    K: Hash + Eq,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Direct { .. } => "direct",
            State::Waiting { reissue: None, .. } => "leading",
            State::Waiting { .. } => "waiting",
            State::Reissue { .. } => "reissue",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S, ReqB, RB, K> ResponseFuture<S, ReqB, RB, K>
where
    S: Service<Request<ReqB>, Response = Response<RB>>,
    S::Future: Send,
    S::Error: fmt::Display,
    RB: Body<Data = Bytes> + Unpin + Send,
    RB::Error: fmt::Display,
    K: Hash + Eq,
{
    pub(crate) fn direct(fut: S::Future) -> Self {
        Self {
            state: State::Direct { fut },
            timeout: None,
            sleep: None,
        }
    }

    pub(crate) fn waiting(
        waiter: Waiter<K, HttpUpstream<S::Future, RB>>,
        reissue: Option<(S, Request<ReqB>)>,
        timeout: Option<Duration>,
    ) -> Self {
        Self {
            state: State::Waiting { waiter, reissue },
            timeout,
            sleep: None,
        }
    }
}

impl<S, ReqB, RB, K> Future for ResponseFuture<S, ReqB, RB, K>
where
    S: Service<Request<ReqB>, Response = Response<RB>>,
    S::Future: Send,
    S::Error: fmt::Display,
    RB: Body<Data = Bytes> + Unpin + Send,
    RB::Error: fmt::Display,
    K: Hash + Eq,
{
    type Output = Result<Response<ResponseBody<RB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Direct { fut } => {
                    let res = ready!(fut.poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(res.map(|r| r.map(ResponseBody::inner)));
                }
                StateProj::Reissue { svc, req } => {
                    ready!(svc.poll_ready(cx))?;
                    let req = req.take().expect("request taken once");
                    let fut = svc.call(req);
                    this.state.set(State::Direct { fut });
                }
                StateProj::Waiting { waiter, reissue } => match waiter.poll(cx) {
                    Poll::Ready(Delivery::Own(res)) => {
                        this.state.set(State::Done);
                        return Poll::Ready(res);
                    }
                    Poll::Ready(Delivery::Shared(HttpShared::Response(shared))) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(shared.into_response()));
                    }
                    Poll::Ready(Delivery::Shared(HttpShared::Reissue(why))) => {
                        waiter.stats().reissued();
                        tracing::debug!(reason = ?why, "coalesce: response not shareable, re-issuing");
                        let Some((svc, req)) = reissue.take() else {
                            // Only waiters (which keep their request) are told to re-issue.
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(failure_response(
                                StatusCode::BAD_GATEWAY,
                                Arc::from("coalesced response could not be shared"),
                            )));
                        };
                        this.state.set(State::Reissue {
                            svc,
                            req: Some(req),
                        });
                        // A re-issued call is not timed by the coalescing timeout.
                        *this.timeout = None;
                        *this.sleep = None;
                    }
                    Poll::Ready(Delivery::Shared(HttpShared::Failed(msg))) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(failure_response(StatusCode::BAD_GATEWAY, msg)));
                    }
                    Poll::Ready(Delivery::Failed(msg)) => {
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(failure_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            msg,
                        )));
                    }
                    Poll::Pending => {
                        let Some(timeout) = *this.timeout else {
                            return Poll::Pending;
                        };
                        if this.sleep.is_none() {
                            *this.sleep = Some(Box::pin(tokio::time::sleep(timeout)));
                        }
                        let sleep = this.sleep.as_mut().expect("sleep set");
                        if sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        waiter.stats().timeout();
                        tracing::debug!("coalesce: caller timed out");
                        this.state.set(State::Done);
                        return Poll::Ready(Ok(failure_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            Arc::from("timed out waiting for the coalesced call"),
                        )));
                    }
                },
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
