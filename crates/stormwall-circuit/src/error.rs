//! Errors of the outbound (fallible) mode.

use std::error::Error as StdError;
use std::fmt;

pub use crate::breaker::CircuitOpen;

/// The error of a [`CircuitBreaker`](crate::CircuitBreaker) in its default (outbound) mode:
/// the breaker rejected the call, or the inner service failed.
///
/// With axum, turn it into a response with `HandleErrorLayer`, or use
/// [`CircuitBreakerLayer::respond`](crate::CircuitBreakerLayer::respond) to have the layer answer
/// 503 itself and keep `Infallible`.
///
/// ```
/// use std::time::Duration;
/// use stormwall_circuit::{CircuitBreakerError, CircuitOpen, State};
///
/// let err: CircuitBreakerError<std::io::Error> = CircuitBreakerError::Open(CircuitOpen {
///     remaining: Duration::from_secs(3),
///     state: State::Open,
///     name: "api".into(),
/// });
/// assert!(err.is_open());
/// assert_eq!(err.open().unwrap().remaining, Duration::from_secs(3));
/// assert!(err.into_inner().is_none());
/// ```
#[derive(Debug)]
pub enum CircuitBreakerError<E> {
    /// The breaker is open (or half-open with all probes taken).
    Open(CircuitOpen),
    /// The inner service failed.
    Inner(E),
}

impl<E> CircuitBreakerError<E> {
    /// Whether the breaker rejected the call.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }

    /// Whether the inner service failed.
    pub fn is_inner(&self) -> bool {
        matches!(self, Self::Inner(_))
    }

    /// The rejection, if it is one.
    pub fn open(&self) -> Option<&CircuitOpen> {
        match self {
            Self::Open(o) => Some(o),
            Self::Inner(_) => None,
        }
    }

    /// The inner error, if it is one.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Open(_) => None,
            Self::Inner(e) => Some(e),
        }
    }
}

impl<E: fmt::Display> fmt::Display for CircuitBreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open(o) => o.fmt(f),
            Self::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: StdError + 'static> StdError for CircuitBreakerError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Open(o) => Some(o),
            Self::Inner(e) => Some(e),
        }
    }
}
