//! Error types.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why a coalesced call did not produce the upstream's value.
///
/// ```
/// use stormwall_coalesce::CoalesceError;
///
/// let err: CoalesceError<&str> = CoalesceError::Upstream("not found");
/// assert!(err.is_upstream());
/// assert_eq!(err.into_upstream(), Some("not found"));
/// assert!(CoalesceError::<()>::Timeout.is_timeout());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoalesceError<E> {
    /// The upstream call returned this error; every caller of the flight gets a clone of it.
    Upstream(E),
    /// The upstream call panicked (the message says with what); every caller of the flight
    /// gets this instead of hanging.
    Panicked(Arc<str>),
    /// This caller's timeout elapsed; the upstream call goes on for the others.
    Timeout,
}

impl<E> CoalesceError<E> {
    /// Whether the upstream call returned an error.
    pub fn is_upstream(&self) -> bool {
        matches!(self, Self::Upstream(_))
    }

    /// Whether the upstream call panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Self::Panicked(_))
    }

    /// Whether this caller timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }

    /// The upstream error, if that is what this is.
    pub fn upstream(&self) -> Option<&E> {
        match self {
            Self::Upstream(e) => Some(e),
            _ => None,
        }
    }

    /// The upstream error, if that is what this is.
    pub fn into_upstream(self) -> Option<E> {
        match self {
            Self::Upstream(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CoalesceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Upstream(e) => write!(f, "coalesced upstream call failed: {e}"),
            Self::Panicked(msg) => f.write_str(msg),
            Self::Timeout => f.write_str("timed out waiting for the coalesced call"),
        }
    }
}

impl<E: Error + 'static> Error for CoalesceError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Upstream(e) => Some(e),
            _ => None,
        }
    }
}
