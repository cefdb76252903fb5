//! Was that call a success, a failure, or a request to back off?
//!
//! Stormwall reuses tower-http's classification traits ([`ClassifyResponse`], [`ClassifyEos`],
//! [`MakeClassifier`], [`SharedClassifier`]) and its classifiers ([`ServerErrorsAsFailures`],
//! [`GrpcErrorsAsFailures`]) rather than a parallel hierarchy. What they lack for resilience
//! layers is added here:
//!
//! - [`Failure`]: a failure class that tells apart *back off* (429, 503 with pushback, gRPC
//!   `RESOURCE_EXHAUSTED`, carrying the peer's requested delay), timeouts, connect errors,
//!   failing statuses and other errors. tower-http's failure classes convert into it
//!   ([`From`]), so a layer can accept any [`MakeClassifier`] whose failure class is
//!   `Into<Failure>`.
//! - [`ResilienceClassifier`]: a [`ClassifyResponse`] for HTTP *and* gRPC (classified from the
//!   headers of a trailers-only response, or from the trailers at end of stream via
//!   [`ClassifiedResponse::RequiresEos`]), configurable (is 429 a failure? which statuses?).
//! - [`ErrorKind`] / [`error_kind`]: timeouts and connect errors recognised in an error's
//!   source chain (`tower::timeout::error::Elapsed`, tokio's `Elapsed`, `std::io::Error`
//!   kinds, hyper and hyper-util errors), through boxes.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Response, StatusCode};
//! use stormwall_core::classify::{ClassifiedResponse, ClassifyResponse, Failure, ResilienceClassifier};
//!
//! let classifier = ResilienceClassifier::new();
//!
//! let ok = Response::new(());
//! assert!(matches!(classifier.clone().classify_response(&ok), ClassifiedResponse::Ready(Ok(()))));
//!
//! let throttled = Response::builder().status(429).header("retry-after", "3").body(()).unwrap();
//! match classifier.classify_response(&throttled) {
//!     ClassifiedResponse::Ready(Err(failure)) => {
//!         assert!(failure.is_back_off());
//!         assert_eq!(failure.pushback(), Some(Duration::from_secs(3)));
//!     }
//!     _ => unreachable!(),
//! }
//! ```

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};

pub use tower_http::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, GrpcCode, GrpcEosErrorsAsFailures,
    GrpcErrorsAsFailures, GrpcFailureClass, MakeClassifier, NeverClassifyEos,
    ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier, StatusInRangeAsFailures,
    StatusInRangeFailureClass,
};

use crate::headers::{GrpcPushback, Pushback};
use crate::time::system_now;

/// What kind of transport error an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The call (or one attempt) timed out.
    Timeout,
    /// The connection could not be established (refused, unreachable, DNS, TLS handshake).
    Connect,
    /// The connection broke after it was established (reset, aborted, closed early).
    Reset,
    /// Anything else.
    Other,
}

/// The kind of `err`, found by walking its source chain.
///
/// ```
/// use std::io;
/// use stormwall_core::classify::{error_kind, ErrorKind};
/// use stormwall_core::BoxError;
///
/// let refused: BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionRefused));
/// assert_eq!(error_kind(refused.as_ref()), ErrorKind::Connect);
/// ```
pub fn error_kind(err: &(dyn StdError + 'static)) -> ErrorKind {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = current {
        if let Some(kind) = kind_of(e) {
            return kind;
        }
        depth += 1;
        if depth > 32 {
            break;
        }
        current = e.source();
    }
    ErrorKind::Other
}

fn io_kind(e: &std::io::Error) -> Option<ErrorKind> {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::TimedOut => Some(ErrorKind::Timeout),
        K::ConnectionRefused
        | K::AddrNotAvailable
        | K::NotConnected
        | K::HostUnreachable
        | K::NetworkUnreachable => Some(ErrorKind::Connect),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            Some(ErrorKind::Reset)
        }
        _ => None,
    }
}

fn kind_of(e: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    if e.is::<tokio::time::error::Elapsed>() {
        return Some(ErrorKind::Timeout);
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && let Some(kind) = io_kind(io)
    {
        return Some(kind);
    }
    #[cfg(feature = "hyper-util")]
    if let Some(err) = e.downcast_ref::<hyper_util::client::legacy::Error>()
        && err.is_connect()
    {
        return Some(ErrorKind::Connect);
    }
    // tower's `Elapsed` and other timeout errors are recognised by name, so that the core does
    // not depend on every crate that defines one. Their Display is "request timed out" /
    // "deadline has elapsed".
    let text = e.to_string();
    if text == "request timed out" || text == "deadline has elapsed" {
        return Some(ErrorKind::Timeout);
    }
    None
}

/// Classifies a value that is only known to be `Display + 'static` (what tower-http's
/// `classify_error` receives): it is downcast to the usual error types, boxes included.
pub fn error_kind_of_any<E: fmt::Display + 'static>(error: &E) -> ErrorKind {
    let any: &dyn Any = error;
    if let Some(e) = any.downcast_ref::<crate::BoxError>() {
        return error_kind(e.as_ref());
    }
    if let Some(e) = any.downcast_ref::<Box<dyn StdError + Send + 'static>>() {
        return error_kind(e.as_ref());
    }
    if let Some(e) = any.downcast_ref::<Box<dyn StdError + 'static>>() {
        return error_kind(e.as_ref());
    }
    if let Some(e) = any.downcast_ref::<std::io::Error>() {
        return error_kind(e);
    }
    if let Some(e) = any.downcast_ref::<tokio::time::error::Elapsed>() {
        return error_kind(e);
    }
    #[cfg(feature = "hyper-util")]
    if let Some(e) = any.downcast_ref::<hyper_util::client::legacy::Error>() {
        return error_kind(e);
    }
    let text = error.to_string();
    if text == "request timed out" || text == "deadline has elapsed" {
        ErrorKind::Timeout
    } else {
        ErrorKind::Other
    }
}

/// Why a call failed, as the resilience layers need to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The peer asked us to slow down: HTTP 429, 503 with pushback, or gRPC
    /// `RESOURCE_EXHAUSTED`. `pushback` is the delay it asked for, if any.
    BackOff {
        /// The HTTP status, for HTTP responses.
        status: Option<StatusCode>,
        /// The gRPC code, for gRPC responses.
        grpc: Option<GrpcCode>,
        /// The wait the peer requested (`Retry-After`, `RateLimit` reset,
        /// `grpc-retry-pushback-ms`), clamped.
        pushback: Option<Duration>,
    },
    /// A failing HTTP status (5xx by default).
    Status(StatusCode),
    /// A failing gRPC status, with its `grpc-retry-pushback-ms` (gRFC A6) if the server sent
    /// one.
    Grpc {
        /// The code.
        code: GrpcCode,
        /// The server's pushback.
        pushback: Option<GrpcPushback>,
    },
    /// The call timed out.
    Timeout,
    /// The connection could not be established.
    Connect,
    /// The connection broke after it was established.
    Reset,
    /// Any other error, described.
    Error(String),
}

impl Failure {
    /// Whether the peer asked us to back off.
    pub fn is_back_off(&self) -> bool {
        matches!(self, Self::BackOff { .. })
    }

    /// Whether the call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
            || matches!(
                self,
                Self::Grpc {
                    code: GrpcCode::DeadlineExceeded,
                    ..
                }
            )
    }

    /// Whether the connection could not be established.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect)
    }

    /// The wait the peer requested, if any.
    pub fn pushback(&self) -> Option<Duration> {
        match self {
            Self::BackOff { pushback, .. } => *pushback,
            Self::Grpc {
                pushback: Some(GrpcPushback::After(d)),
                ..
            } => Some(*d),
            _ => None,
        }
    }

    /// Classifies an error value (see [`error_kind_of_any`]).
    pub fn from_error<E: fmt::Display + 'static>(error: &E) -> Self {
        match error_kind_of_any(error) {
            ErrorKind::Timeout => Self::Timeout,
            ErrorKind::Connect => Self::Connect,
            ErrorKind::Reset => Self::Reset,
            ErrorKind::Other => Self::Error(error.to_string()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BackOff {
                status,
                grpc,
                pushback,
            } => {
                write!(f, "peer asked to back off")?;
                if let Some(s) = status {
                    write!(f, " (status {})", s.as_u16())?;
                }
                if let Some(c) = grpc {
                    write!(f, " (grpc {c:?})")?;
                }
                if let Some(p) = pushback {
                    write!(f, " for {p:?}")?;
                }
                Ok(())
            }
            Self::Status(s) => write!(f, "failing status {}", s.as_u16()),
            Self::Grpc { code, .. } => write!(f, "failing grpc status {code:?}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Connect => f.write_str("connect error"),
            Self::Reset => f.write_str("connection reset"),
            Self::Error(e) => write!(f, "error: {e}"),
        }
    }
}

impl StdError for Failure {}

impl From<ServerErrorsFailureClass> for Failure {
    fn from(class: ServerErrorsFailureClass) -> Self {
        match class {
            ServerErrorsFailureClass::StatusCode(s) => Self::Status(s),
            ServerErrorsFailureClass::Error(e) => Self::Error(e),
        }
    }
}

impl From<StatusInRangeFailureClass> for Failure {
    fn from(class: StatusInRangeFailureClass) -> Self {
        match class {
            StatusInRangeFailureClass::StatusCode(s) => Self::Status(s),
            StatusInRangeFailureClass::Error(e) => Self::Error(e),
        }
    }
}

impl From<GrpcFailureClass> for Failure {
    fn from(class: GrpcFailureClass) -> Self {
        match class {
            GrpcFailureClass::Status(status) => match status.code() {
                Some(code) => Self::Grpc {
                    code,
                    pushback: None,
                },
                None => Self::Error(status.to_string()),
            },
            GrpcFailureClass::Error(e) => Self::Error(e),
            other => Self::Error(other.to_string()),
        }
    }
}

/// The outcome of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed, this way.
    Failure(Failure),
}

impl Outcome {
    /// Whether the call succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success)
    }
}

impl<F: Into<Failure>> From<Result<(), F>> for Outcome {
    fn from(r: Result<(), F>) -> Self {
        match r {
            Ok(()) => Self::Success,
            Err(f) => Self::Failure(f.into()),
        }
    }
}

/// The gRPC status in `headers` (a trailers-only response) or trailers, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<GrpcCode> {
    let value = headers.get("grpc-status")?;
    // A status that is present but not a valid code is a failure of unknown kind, never a
    // success.
    let Some(code) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
    else {
        return Some(GrpcCode::Unknown);
    };
    if !(0..=16).contains(&code) {
        return Some(GrpcCode::Unknown);
    }
    Some(GrpcCode::from(code))
}

#[inline]
fn is_grpc<B>(res: &Response<B>) -> bool {
    let headers = res.headers();
    // An empty map has no content type: skip the (out-of-line) lookup. The prefix is compared
    // on the raw bytes first, so that the visible-ASCII check of `to_str` runs only for the
    // (rare) values that start like a gRPC content type; the result is that of `to_str` +
    // `starts_with`.
    !headers.is_empty()
        && headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc") && v.to_str().is_ok())
}

/// A classifier for HTTP and gRPC calls that knows about back-off signals.
///
/// HTTP: 429 is [`Failure::BackOff`]; 503 is `BackOff` when it carries pushback (`Retry-After`
/// or an exhausted `RateLimit`), else [`Failure::Status`]; other statuses in the failure range
/// (5xx by default) are [`Failure::Status`]; everything else (including other 4xx) succeeds.
///
/// gRPC (`content-type: application/grpc*`): the `grpc-status` of a trailers-only response is
/// read from the headers; otherwise classification waits for the trailers
/// ([`ClassifiedResponse::RequiresEos`]). The failing codes default to `UNAVAILABLE`,
/// `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS` and `RESOURCE_EXHAUSTED` (the last
/// as `BackOff`); the rest are the caller's fault, not the server's, and count as success.
#[derive(Debug, Clone)]
pub struct ResilienceClassifier {
    failure_from: u16,
    failure_to: u16,
    too_many_requests_is_failure: bool,
    grpc_failures: u32,
}

impl Default for ResilienceClassifier {
    fn default() -> Self {
        Self::new()
    }
}

const fn grpc_bit(code: GrpcCode) -> u32 {
    1 << (code as i32 as u32)
}

impl ResilienceClassifier {
    /// The default classifier (see the type docs).
    pub const fn new() -> Self {
        Self {
            failure_from: 500,
            failure_to: 599,
            too_many_requests_is_failure: true,
            grpc_failures: grpc_bit(GrpcCode::Unavailable)
                | grpc_bit(GrpcCode::DeadlineExceeded)
                | grpc_bit(GrpcCode::Internal)
                | grpc_bit(GrpcCode::Unknown)
                | grpc_bit(GrpcCode::DataLoss)
                | grpc_bit(GrpcCode::ResourceExhausted),
        }
    }

    /// Statuses in `from..=to` count as failures (default `500..=599`).
    pub const fn failure_range(mut self, from: u16, to: u16) -> Self {
        self.failure_from = from;
        self.failure_to = to;
        self
    }

    /// Whether 429 counts as a failure ([`Failure::BackOff`], default) or as a success (a
    /// circuit breaker may not want a partner's throttling to trip it).
    pub const fn too_many_requests_is_failure(mut self, yes: bool) -> Self {
        self.too_many_requests_is_failure = yes;
        self
    }

    /// Counts `code` as a failure too.
    pub const fn grpc_failure(mut self, code: GrpcCode) -> Self {
        self.grpc_failures |= grpc_bit(code);
        self
    }

    /// Counts `code` as a success.
    pub const fn grpc_success(mut self, code: GrpcCode) -> Self {
        self.grpc_failures &= !grpc_bit(code);
        self
    }

    /// Wraps this classifier for layers that take a [`MakeClassifier`].
    pub fn into_make_classifier(self) -> SharedClassifier<Self> {
        SharedClassifier::new(self)
    }

    /// Classifies an HTTP status and its headers.
    #[inline]
    pub fn classify_status(&self, status: StatusCode, headers: &HeaderMap) -> Result<(), Failure> {
        let code = status.as_u16();
        // The common case, a status that is neither 429 nor in the failure range, stays inline
        // and small; the rest (pushback parsing, failure construction) is out of line.
        if code != 429 && !(self.failure_from..=self.failure_to).contains(&code) {
            return Ok(());
        }
        self.classify_status_slow(status, headers)
    }

    #[cold]
    #[inline(never)]
    fn classify_status_slow(&self, status: StatusCode, headers: &HeaderMap) -> Result<(), Failure> {
        let code = status.as_u16();
        if status == StatusCode::TOO_MANY_REQUESTS {
            if !self.too_many_requests_is_failure {
                return Ok(());
            }
            let pushback = Pushback::from_headers(headers, system_now()).delay;
            return Err(Failure::BackOff {
                status: Some(status),
                grpc: None,
                pushback,
            });
        }
        if (self.failure_from..=self.failure_to).contains(&code) {
            if status == StatusCode::SERVICE_UNAVAILABLE
                && let Some(pushback) = Pushback::from_headers(headers, system_now()).delay
            {
                return Err(Failure::BackOff {
                    status: Some(status),
                    grpc: None,
                    pushback: Some(pushback),
                });
            }
            return Err(Failure::Status(status));
        }
        Ok(())
    }

    /// Classifies a gRPC status from response headers or trailers (`Ok` when absent or OK).
    pub fn classify_grpc(&self, headers: &HeaderMap) -> Result<(), Failure> {
        let Some(code) = grpc_status(headers) else {
            return Ok(());
        };
        if code == GrpcCode::Ok || self.grpc_failures & grpc_bit(code) == 0 {
            return Ok(());
        }
        let pushback = GrpcPushback::from_headers(headers);
        if code == GrpcCode::ResourceExhausted {
            return Err(Failure::BackOff {
                status: None,
                grpc: Some(code),
                pushback: match pushback {
                    Some(GrpcPushback::After(d)) => Some(d),
                    _ => None,
                },
            });
        }
        Err(Failure::Grpc { code, pushback })
    }
}

impl ClassifyResponse for ResilienceClassifier {
    type FailureClass = Failure;
    type ClassifyEos = ResilienceEos;

    #[inline]
    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if is_grpc(res) {
            return self.classify_grpc_response(res.status(), res.headers());
        }
        // As `classify_status`, with the success returned as a constant: the caller's match on
        // the result then folds away.
        let code = res.status().as_u16();
        if code != 429 && !(self.failure_from..=self.failure_to).contains(&code) {
            return ClassifiedResponse::Ready(Ok(()));
        }
        ClassifiedResponse::Ready(self.classify_status_slow(res.status(), res.headers()))
    }

    fn classify_error<E>(self, error: &E) -> Self::FailureClass
    where
        E: fmt::Display + 'static,
    {
        Failure::from_error(error)
    }
}

impl ResilienceClassifier {
    /// A gRPC response (`content-type: application/grpc*`): out of line, so that the plain HTTP
    /// path stays small.
    #[inline(never)]
    fn classify_grpc_response(
        self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> ClassifiedResponse<Failure, ResilienceEos> {
        if grpc_status(headers).is_some() {
            return ClassifiedResponse::Ready(self.classify_grpc(headers));
        }
        if !status.is_success() {
            // A gRPC call that failed at the HTTP layer (e.g. a proxy's 503).
            return ClassifiedResponse::Ready(self.classify_status(status, headers));
        }
        ClassifiedResponse::RequiresEos(ResilienceEos { classifier: self })
    }
}

impl MakeClassifier for ResilienceClassifier {
    type Classifier = Self;
    type FailureClass = Failure;
    type ClassifyEos = ResilienceEos;

    #[inline]
    fn make_classifier<B>(&self, _req: &Request<B>) -> Self::Classifier {
        self.clone()
    }
}

/// End-of-stream classification of a gRPC response (reads `grpc-status` from the trailers).
#[derive(Debug, Clone)]
pub struct ResilienceEos {
    classifier: ResilienceClassifier,
}

impl ClassifyEos for ResilienceEos {
    type FailureClass = Failure;

    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Result<(), Self::FailureClass> {
        match trailers {
            Some(t) => self.classifier.classify_grpc(t),
            // A gRPC response without trailers was cut short.
            None => Err(Failure::Grpc {
                code: GrpcCode::Unknown,
                pushback: None,
            }),
        }
    }

    fn classify_error<E>(self, error: &E) -> Self::FailureClass
    where
        E: fmt::Display + 'static,
    {
        Failure::from_error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn classify(res: &Response<()>) -> Result<(), Failure> {
        match ResilienceClassifier::new().classify_response(res) {
            ClassifiedResponse::Ready(r) => r,
            ClassifiedResponse::RequiresEos(_) => panic!("unexpected eos"),
        }
    }

    fn res(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http_statuses() {
        assert_eq!(classify(&res(200, &[])), Ok(()));
        assert_eq!(classify(&res(404, &[])), Ok(()));
        assert_eq!(classify(&res(400, &[])), Ok(()));
        assert_eq!(
            classify(&res(500, &[])),
            Err(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR))
        );
        assert_eq!(
            classify(&res(503, &[])),
            Err(Failure::Status(StatusCode::SERVICE_UNAVAILABLE))
        );
        let f = classify(&res(503, &[("retry-after", "4")])).unwrap_err();
        assert!(f.is_back_off());
        assert_eq!(f.pushback(), Some(Duration::from_secs(4)));
        let f = classify(&res(429, &[])).unwrap_err();
        assert!(f.is_back_off());
        assert_eq!(f.pushback(), None);
        let lenient = ResilienceClassifier::new().too_many_requests_is_failure(false);
        assert_eq!(
            lenient.classify_status(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new()),
            Ok(())
        );
        let strict = ResilienceClassifier::new().failure_range(400, 599);
        assert!(
            strict
                .classify_status(StatusCode::NOT_FOUND, &HeaderMap::new())
                .is_err()
        );
    }

    #[test]
    fn grpc_trailers_only_and_eos() {
        let unavailable = res(
            200,
            &[("content-type", "application/grpc"), ("grpc-status", "14")],
        );
        assert_eq!(
            classify(&unavailable),
            Err(Failure::Grpc {
                code: GrpcCode::Unavailable,
                pushback: None
            })
        );
        let not_found = res(
            200,
            &[("content-type", "application/grpc"), ("grpc-status", "5")],
        );
        assert_eq!(classify(&not_found), Ok(()));
        let exhausted = res(
            200,
            &[
                ("content-type", "application/grpc+proto"),
                ("grpc-status", "8"),
                ("grpc-retry-pushback-ms", "250"),
            ],
        );
        let f = classify(&exhausted).unwrap_err();
        assert!(f.is_back_off());
        assert_eq!(f.pushback(), Some(Duration::from_millis(250)));

        let streaming = res(200, &[("content-type", "application/grpc")]);
        let ClassifiedResponse::RequiresEos(eos) =
            ResilienceClassifier::new().classify_response(&streaming)
        else {
            panic!("expected eos");
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "4".parse().unwrap());
        let f = eos.clone().classify_eos(Some(&trailers)).unwrap_err();
        assert!(f.is_timeout());
        trailers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(eos.clone().classify_eos(Some(&trailers)), Ok(()));
        assert!(eos.classify_eos(None).is_err());
        // Garbage grpc-status never panics.
        trailers.insert("grpc-status", "999".parse().unwrap());
        assert_eq!(grpc_status(&trailers), Some(GrpcCode::Unknown));
        for garbage in ["99999999999", "abc", "", "-1"] {
            trailers.insert("grpc-status", garbage.parse().unwrap());
            assert_eq!(
                grpc_status(&trailers),
                Some(GrpcCode::Unknown),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn grpc_content_type_detection() {
        // Only a visible-ASCII value starting with `application/grpc` makes a gRPC response.
        let mut odd = res(200, &[("grpc-status", "14")]);
        odd.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_bytes(b"application/grpc\xfe").unwrap(),
        );
        assert_eq!(
            classify(&odd),
            Ok(()),
            "not gRPC: judged by its HTTP status"
        );
        let plain = res(
            200,
            &[("content-type", "application/json"), ("grpc-status", "14")],
        );
        assert_eq!(classify(&plain), Ok(()));
        let short = res(503, &[("content-type", "application/grp")]);
        assert_eq!(
            classify(&short),
            Err(Failure::Status(StatusCode::SERVICE_UNAVAILABLE))
        );
        // Other headers, no content type: HTTP.
        let other = res(200, &[("grpc-status", "14"), ("x-a", "b")]);
        assert_eq!(classify(&other), Ok(()));
        let grpc_503 = res(503, &[("content-type", "application/grpc")]);
        assert_eq!(
            classify(&grpc_503),
            Err(Failure::Status(StatusCode::SERVICE_UNAVAILABLE))
        );
    }

    #[test]
    fn errors_by_kind() {
        let timeout: crate::BoxError = Box::new(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(error_kind(timeout.as_ref()), ErrorKind::Timeout);
        assert_eq!(Failure::from_error(&timeout), Failure::Timeout);
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::from_error(&refused), Failure::Connect);
        let reset: crate::BoxError = Box::new(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(Failure::from_error(&reset), Failure::Reset);
        let other = io::Error::other("boom");
        assert_eq!(Failure::from_error(&other), Failure::Error("boom".into()));

        // Wrapped in a source chain.
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl StdError for Wrapper {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped: crate::BoxError =
            Box::new(Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_eq!(error_kind(wrapped.as_ref()), ErrorKind::Connect);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_elapsed_is_timeout() {
        let err = tokio::time::timeout(Duration::from_millis(1), std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(Failure::from_error(&err), Failure::Timeout);
    }

    #[test]
    fn tower_http_failure_classes_convert() {
        let f: Failure = ServerErrorsFailureClass::StatusCode(StatusCode::BAD_GATEWAY).into();
        assert_eq!(f, Failure::Status(StatusCode::BAD_GATEWAY));
        let o: Outcome = Err::<(), _>(ServerErrorsFailureClass::Error("x".into())).into();
        assert_eq!(o, Outcome::Failure(Failure::Error("x".into())));
        assert!(Outcome::from(Ok::<(), Failure>(())).is_success());
    }
}
