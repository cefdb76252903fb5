//! Error types.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use stormwall_core::BoxError;

/// An invalid [`Backoff`](crate::Backoff) configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBackoff {
    /// The base delay is larger than the max delay.
    #[error("backoff base delay {base:?} is larger than its max delay {max:?}")]
    BaseAboveMax {
        /// The base delay.
        base: Duration,
        /// The max delay.
        max: Duration,
    },
    /// The exponential factor is not finite or below 1.
    #[error("backoff factor {0} must be finite and >= 1")]
    Factor(f64),
}

/// An invalid [`RetryBudget`](crate::RetryBudget) configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidBudget {
    /// The TTL must be between 1 s and 60 s.
    #[error("retry budget ttl {0:?} must be between 1s and 60s")]
    Ttl(Duration),
    /// The ratio must be finite and between 0 and 1000.
    #[error("retry budget ratio {0} must be finite and between 0 and 1000")]
    Ratio(f32),
    /// The per-second floor must be at most 1,000,000.
    #[error("retry budget floor {0}/s is too large (max 1000000)")]
    Floor(u32),
}

/// The error of a [`Retry`](crate::Retry) service once it stops retrying.
///
/// A failing *response* (e.g. the last `503`) is passed through as `Ok(response)`; this error is
/// returned only when the last attempt ended in an error of the inner service, an attempt
/// timeout, the overall deadline, or a request body that could not be read.
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use stormwall_retry::{Backoff, RetryBody, RetryLayer};
/// use tower::{Layer, Service, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// // An upstream that never answers.
/// let upstream = service_fn(|_req: Request<RetryBody<Full<Bytes>>>| async {
///     tokio::time::sleep(Duration::from_secs(3600)).await;
///     Ok::<_, std::io::Error>(Response::new(Full::new(Bytes::new())))
/// });
/// let mut svc = RetryLayer::new()
///     .backoff(Backoff::none())
///     .attempt_timeout(Duration::from_secs(1))
///     .layer(upstream);
/// let req = Request::get("http://example.com/").body(Full::new(Bytes::new())).unwrap();
/// let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
/// assert!(err.is_attempt_timeout());
/// assert_eq!(err.attempts(), 3);
/// # }
/// ```
pub struct RetryError<E> {
    kind: Kind<E>,
    attempts: u32,
}

enum Kind<E> {
    Inner(E),
    AttemptTimeout,
    Deadline,
    Body(BoxError),
}

impl<E> RetryError<E> {
    pub(crate) fn inner(error: E, attempts: u32) -> Self {
        Self {
            kind: Kind::Inner(error),
            attempts,
        }
    }

    pub(crate) fn attempt_timeout(attempts: u32) -> Self {
        Self {
            kind: Kind::AttemptTimeout,
            attempts,
        }
    }

    pub(crate) fn deadline(attempts: u32) -> Self {
        Self {
            kind: Kind::Deadline,
            attempts,
        }
    }

    pub(crate) fn body(error: BoxError) -> Self {
        Self {
            kind: Kind::Body(error),
            attempts: 0,
        }
    }

    /// How many attempts were sent to the inner service.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The last attempt's error from the inner service, if that is what ended retrying.
    pub fn inner_error(&self) -> Option<&E> {
        match &self.kind {
            Kind::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// Consumes the error, returning the inner service's error if there is one.
    pub fn into_inner(self) -> Option<E> {
        match self.kind {
            Kind::Inner(e) => Some(e),
            _ => None,
        }
    }

    /// The last attempt hit the per-attempt timeout.
    pub fn is_attempt_timeout(&self) -> bool {
        matches!(self.kind, Kind::AttemptTimeout)
    }

    /// The overall deadline across attempts passed.
    pub fn is_deadline(&self) -> bool {
        matches!(self.kind, Kind::Deadline)
    }

    /// Reading the request body (to buffer it for replay) failed.
    pub fn is_body(&self) -> bool {
        matches!(self.kind, Kind::Body(_))
    }
}

impl<E: fmt::Debug> fmt::Debug for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RetryError");
        match &self.kind {
            Kind::Inner(e) => d.field("inner", e),
            Kind::AttemptTimeout => d.field("kind", &"attempt timeout"),
            Kind::Deadline => d.field("kind", &"deadline"),
            Kind::Body(e) => d.field("body", e),
        };
        d.field("attempts", &self.attempts).finish()
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner(e) => write!(f, "{e} (after {} attempts)", self.attempts),
            // Same text as tower's timeout error, so that outer layers classify it as a timeout.
            Kind::AttemptTimeout => f.write_str("request timed out"),
            Kind::Deadline => f.write_str("deadline has elapsed"),
            Kind::Body(e) => write!(f, "reading the request body failed: {e}"),
        }
    }
}

impl<E> StdError for RetryError<E>
where
    E: StdError + 'static,
{
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::Inner(e) => Some(e),
            Kind::Body(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors_and_display() {
        let e = RetryError::inner(std::io::Error::other("boom"), 3);
        assert_eq!(e.attempts(), 3);
        assert!(e.inner_error().is_some());
        assert!(e.to_string().contains("boom"));
        assert!(e.source().is_some());
        let t = RetryError::<std::io::Error>::attempt_timeout(2);
        assert!(t.is_attempt_timeout() && !t.is_deadline());
        assert!(t.into_inner().is_none());
        let d = RetryError::<std::io::Error>::deadline(1);
        assert!(d.is_deadline());
        assert_eq!(d.to_string(), "deadline has elapsed");
        assert!(RetryError::<std::io::Error>::body("x".into()).is_body());
    }
}
