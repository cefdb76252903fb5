//! The HTTP upstream call of a flight: call, then buffer the response if it may be shared.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, SET_COOKIE};
use http::{Response, StatusCode};
use http_body::Body;
use stormwall_core::response::{Buffer, BufferError, ResponseBody, SharedResponse};

use crate::flight::Upstream;

/// Why a response is delivered to the caller that drove the call only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exclusive {
    SetCookie,
    Private,
    Stream,
    TooLarge,
}

/// The result of the HTTP upstream call (a transient value: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome<RB> {
    /// Nobody waited when the head arrived: the response, untouched, for the driver alone.
    Alone(Response<ResponseBody<RB>>),
    Shared(SharedResponse),
    Exclusive(Response<ResponseBody<RB>>, Exclusive),
    BodyFailed(Arc<str>),
}

/// What the other callers of a flight get.
#[derive(Clone, Debug)]
pub(crate) enum HttpShared {
    Response(SharedResponse),
    /// The response could not be shared: call upstream yourself.
    Reissue(Exclusive),
    /// The call failed: the message (for logs and the [`CoalesceFailure`] extension).
    Failed(Arc<str>),
}

// The buffer is boxed: the flight moves its upstream out of its state to poll it (and back
// when it is pending), so a small upstream keeps those moves cheap; only a flight with
// waiters buffers, and its one allocation serves them all.
enum CallState<F, RB> {
    Calling(Pin<Box<F>>),
    Buffering(Box<Buffer<RB>>),
    Finished,
}

pub(crate) struct HttpUpstream<F, RB> {
    state: CallState<F, RB>,
    max_body: usize,
    share_private: bool,
    /// A `HEAD` request: the response has no body, whatever its `Content-Length` says.
    head: bool,
    head_length: Option<http::HeaderValue>,
}

impl<F, RB> HttpUpstream<F, RB> {
    pub(crate) fn new(fut: F, max_body: usize, share_private: bool, head: bool) -> Self {
        Self {
            state: CallState::Calling(Box::pin(fut)),
            max_body,
            share_private,
            head,
            head_length: None,
        }
    }
}

/// Whether `Cache-Control` has the `private` directive (with or without a field list).
fn is_private(res: &http::HeaderMap) -> bool {
    res.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|d| {
                let name = d.split('=').next().unwrap_or("").trim();
                name.eq_ignore_ascii_case("private")
            })
        })
    })
}

pub(crate) fn exclusive_reason(
    headers: &http::HeaderMap,
    share_private: bool,
) -> Option<Exclusive> {
    if headers.contains_key(SET_COOKIE) {
        return Some(Exclusive::SetCookie);
    }
    if !share_private && is_private(headers) {
        return Some(Exclusive::Private);
    }
    let stream = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    stream.then_some(Exclusive::Stream)
}

impl<F, RB, E> Upstream for HttpUpstream<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>> + Send,
    E: fmt::Display,
    RB: Body<Data = Bytes> + Unpin + Send,
    RB::Error: fmt::Display,
{
    type Output = Result<Outcome<RB>, E>;
    type Mine = Result<Response<ResponseBody<RB>>, E>;
    type Shared = HttpShared;

    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
        alone: &mut dyn FnMut() -> bool,
    ) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                CallState::Calling(fut) => {
                    let res = ready!(fut.as_mut().poll(cx));
                    self.state = CallState::Finished;
                    let res = match res {
                        Ok(res) => res,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    if alone() {
                        // Nobody to share with, and nobody can join any more: no buffering.
                        return Poll::Ready(Ok(Outcome::Alone(res.map(ResponseBody::inner))));
                    }
                    if let Some(why) = exclusive_reason(res.headers(), self.share_private) {
                        let res = res.map(ResponseBody::inner);
                        return Poll::Ready(Ok(Outcome::Exclusive(res, why)));
                    }
                    let mut res = res;
                    if self.head {
                        // The length of the body a GET would have: not a reason to refuse to
                        // buffer the (empty) body. Put back once buffered.
                        self.head_length = res.headers_mut().remove(CONTENT_LENGTH);
                    }
                    self.state =
                        CallState::Buffering(Box::new(SharedResponse::buffer(res, self.max_body)));
                }
                CallState::Buffering(buffer) => {
                    let res = ready!(Pin::new(&mut **buffer).poll(cx));
                    self.state = CallState::Finished;
                    return Poll::Ready(Ok(match res {
                        Ok(shared) => match self.head_length.take() {
                            Some(len) => Outcome::Shared(shared.map_headers(|h| {
                                h.insert(CONTENT_LENGTH, len);
                            })),
                            None => Outcome::Shared(shared),
                        },
                        Err(BufferError::TooLarge(res)) => {
                            Outcome::Exclusive(res, Exclusive::TooLarge)
                        }
                        Err(BufferError::Body(e)) => Outcome::BodyFailed(Arc::from(format!(
                            "reading the upstream response body failed: {e}"
                        ))),
                    }));
                }
                CallState::Finished => panic!("coalesced upstream polled after completion"),
            }
        }
    }

    fn is_error(output: &Self::Output) -> bool {
        matches!(output, Err(_) | Ok(Outcome::BodyFailed(_)))
    }

    fn split(output: Self::Output, share: bool) -> (Self::Mine, Option<Self::Shared>) {
        match output {
            Ok(Outcome::Alone(res)) => (Ok(res), None),
            Ok(Outcome::Shared(res)) => {
                if share {
                    (Ok(res.to_response()), Some(HttpShared::Response(res)))
                } else {
                    (Ok(res.into_response()), None)
                }
            }
            Ok(Outcome::Exclusive(res, why)) => (Ok(res), Some(HttpShared::Reissue(why))),
            Ok(Outcome::BodyFailed(msg)) => (
                Ok(failure_response(StatusCode::BAD_GATEWAY, Arc::clone(&msg))),
                Some(HttpShared::Failed(msg)),
            ),
            Err(e) => {
                let shared = share.then(|| HttpShared::Failed(Arc::from(e.to_string())));
                (Err(e), shared)
            }
        }
    }
}

/// Attached (as a response extension) to the responses the layer makes up when the shared
/// call failed: `502 Bad Gateway` for waiters of a call that returned an error, `500 Internal
/// Server Error` when it panicked, `504 Gateway Timeout` when a caller's timeout elapsed. The
/// body is a short generic text; the details are here.
///
/// ```
/// # use stormwall_coalesce::CoalesceFailure;
/// fn describe(res: &http::Response<()>) -> Option<String> {
///     res.extensions().get::<CoalesceFailure>().map(|f| f.message().to_owned())
/// }
/// # assert!(describe(&http::Response::new(())).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct CoalesceFailure {
    message: Arc<str>,
}

impl CoalesceFailure {
    /// What went wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

pub(crate) fn failure_response<RB>(
    status: StatusCode,
    message: Arc<str>,
) -> Response<ResponseBody<RB>> {
    let text = match status {
        StatusCode::GATEWAY_TIMEOUT => "timed out waiting for the upstream response",
        StatusCode::INTERNAL_SERVER_ERROR => "upstream call panicked",
        _ => "upstream call failed",
    };
    let mut res = Response::new(ResponseBody::full(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.extensions_mut().insert(CoalesceFailure { message });
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_cookies_are_exclusive() {
        let mut h = http::HeaderMap::new();
        assert_eq!(exclusive_reason(&h, false), None);
        h.insert(
            CACHE_CONTROL,
            "max-age=60, Private=\"x-user\"".parse().unwrap(),
        );
        assert_eq!(exclusive_reason(&h, false), Some(Exclusive::Private));
        assert_eq!(exclusive_reason(&h, true), None);
        h.insert(SET_COOKIE, "a=b".parse().unwrap());
        assert_eq!(exclusive_reason(&h, true), Some(Exclusive::SetCookie));
        let mut h = http::HeaderMap::new();
        h.insert(CACHE_CONTROL, "no-cache, privateish".parse().unwrap());
        assert_eq!(exclusive_reason(&h, false), None);
        h.insert(CONTENT_TYPE, "Text/Event-Stream".parse().unwrap());
        assert_eq!(exclusive_reason(&h, false), Some(Exclusive::Stream));
    }
}
