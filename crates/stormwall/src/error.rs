//! One error type for every rejection of the outbound stack.

use std::fmt;
use std::time::Duration;

use stormwall_core::BoxError;
use stormwall_core::classify::{ErrorKind as CoreErrorKind, error_kind};

/// What kind of [`Error`] it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The local rate limiter rejected the request (or its wait would exceed the limit).
    RateLimited,
    /// The circuit breaker is open.
    CircuitOpen,
    /// An attempt timed out, or the overall deadline passed.
    Timeout,
    /// A bulkhead or load shedder turned the request away.
    Overloaded,
    /// The upstream call failed (transport error, or an error shared with coalesced callers).
    Upstream,
}

/// The error of the standard outbound stack: every layer's rejection, in one type.
///
/// ```
/// use std::time::Duration;
/// use stormwall::{Error, ErrorKind};
///
/// let err = Error::rate_limited(Some(Duration::from_millis(1500)));
/// assert!(err.is_rate_limited());
/// assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
/// assert_eq!(err.kind(), ErrorKind::RateLimited);
/// ```
pub struct Error {
    kind: ErrorKind,
    retry_after: Option<Duration>,
    message: Option<String>,
    source: Option<BoxError>,
}

impl Error {
    fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            retry_after: None,
            message: None,
            source: None,
        }
    }

    /// A local rate-limit rejection; `retry_after` is when the request would be admitted.
    pub fn rate_limited(retry_after: Option<Duration>) -> Self {
        Self {
            retry_after,
            ..Self::new(ErrorKind::RateLimited)
        }
    }

    /// An open circuit that lets a probe through after `remaining`.
    pub fn circuit_open(remaining: Duration, breaker: &str) -> Self {
        Self {
            retry_after: Some(remaining),
            message: Some(format!("circuit `{breaker}` is open")),
            ..Self::new(ErrorKind::CircuitOpen)
        }
    }

    /// A timeout (an attempt's, or the overall deadline).
    pub fn timeout() -> Self {
        Self::new(ErrorKind::Timeout)
    }

    /// A bulkhead or load shedder rejection.
    pub fn overloaded() -> Self {
        Self::new(ErrorKind::Overloaded)
    }

    /// An upstream failure described by `message` (e.g. one shared by a coalesced call).
    pub fn upstream_message(message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            ..Self::new(ErrorKind::Upstream)
        }
    }

    /// Wraps any error: an [`Error`] inside a box is unwrapped, a timeout (tower's or tokio's
    /// `Elapsed`, `io::ErrorKind::TimedOut`) becomes [`ErrorKind::Timeout`], tower's
    /// `Overloaded` becomes [`ErrorKind::Overloaded`], anything else is
    /// [`ErrorKind::Upstream`] with the error as its source.
    pub fn from_box(err: BoxError) -> Self {
        let err = match err.downcast::<Self>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        if err.is::<tower::load_shed::error::Overloaded>() {
            return Self {
                source: Some(err),
                ..Self::new(ErrorKind::Overloaded)
            };
        }
        if err.is::<tower::timeout::error::Elapsed>()
            || error_kind(err.as_ref()) == CoreErrorKind::Timeout
        {
            return Self {
                source: Some(err),
                ..Self::new(ErrorKind::Timeout)
            };
        }
        Self {
            source: Some(err),
            ..Self::new(ErrorKind::Upstream)
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the local rate limiter rejected the request.
    pub fn is_rate_limited(&self) -> bool {
        self.kind == ErrorKind::RateLimited
    }

    /// Whether the circuit breaker is open.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == ErrorKind::CircuitOpen
    }

    /// Whether an attempt or the overall deadline timed out.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether a bulkhead turned the request away.
    pub fn is_overloaded(&self) -> bool {
        self.kind == ErrorKind::Overloaded
    }

    /// Whether the upstream call itself failed.
    pub fn is_upstream(&self) -> bool {
        self.kind == ErrorKind::Upstream
    }

    /// When trying again makes sense: the limiter's admission time or the breaker's
    /// remaining open time.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The underlying error, if there is one.
    pub fn into_source(self) -> Option<BoxError> {
        self.source
    }
}

impl From<BoxError> for Error {
    fn from(err: BoxError) -> Self {
        Self::from_box(err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("retry_after", &self.retry_after)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::RateLimited => f.write_str("rate limited")?,
            ErrorKind::CircuitOpen => f.write_str("circuit open")?,
            ErrorKind::Timeout => f.write_str("timed out")?,
            ErrorKind::Overloaded => f.write_str("overloaded")?,
            ErrorKind::Upstream => f.write_str("upstream failed")?,
        }
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        if let Some(r) = self.retry_after {
            write!(f, " (retry after {r:?})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_box_recognises_kinds() {
        let e = Error::from_box(Box::new(tower::timeout::error::Elapsed::new()));
        assert!(e.is_timeout());
        let e = Error::from_box(Box::new(tower::load_shed::error::Overloaded::new()));
        assert!(e.is_overloaded());
        let inner = Error::circuit_open(Duration::from_secs(3), "api");
        let e = Error::from_box(Box::new(inner));
        assert!(e.is_circuit_open());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let e = Error::from_box("boom".into());
        assert!(e.is_upstream());
        assert!(e.to_string().contains("boom"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
