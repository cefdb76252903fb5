//! Custom failure predicates.

use std::fmt;

use http::{HeaderMap, Request, Response, StatusCode};
use stormwall_core::classify::{
    ClassifiedResponse, ClassifyResponse, Failure, MakeClassifier, NeverClassifyEos,
};

/// A classifier from a predicate on the status and headers: `true` means failure. Errors of
/// the inner service are always failures. Made by
/// [`CircuitBreakerLayer::failure_if`](crate::CircuitBreakerLayer::failure_if).
///
/// ```
/// use http::{HeaderMap, Response, StatusCode};
/// use stormwall_circuit::FailureIf;
/// use stormwall_core::classify::{ClassifiedResponse, ClassifyResponse};
///
/// let c = FailureIf::new(|status: StatusCode, _: &HeaderMap| status == StatusCode::BAD_GATEWAY);
/// let res = Response::builder().status(502).body(()).unwrap();
/// assert!(matches!(c.classify_response(&res), ClassifiedResponse::Ready(Err(_))));
/// ```
#[derive(Clone, Copy)]
pub struct FailureIf<F> {
    predicate: F,
}

impl<F> FailureIf<F> {
    /// Wraps a predicate.
    pub fn new(predicate: F) -> Self
    where
        F: Fn(StatusCode, &HeaderMap) -> bool,
    {
        Self { predicate }
    }
}

impl<F> fmt::Debug for FailureIf<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureIf").finish_non_exhaustive()
    }
}

impl<F> ClassifyResponse for FailureIf<F>
where
    F: Fn(StatusCode, &HeaderMap) -> bool,
{
    type FailureClass = Failure;
    type ClassifyEos = NeverClassifyEos<Failure>;

    fn classify_response<B>(
        self,
        res: &Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if (self.predicate)(res.status(), res.headers()) {
            ClassifiedResponse::Ready(Err(Failure::Status(res.status())))
        } else {
            ClassifiedResponse::Ready(Ok(()))
        }
    }

    fn classify_error<E>(self, error: &E) -> Self::FailureClass
    where
        E: fmt::Display + 'static,
    {
        Failure::from_error(error)
    }
}

impl<F> MakeClassifier for FailureIf<F>
where
    F: Fn(StatusCode, &HeaderMap) -> bool + Clone,
{
    type Classifier = Self;
    type FailureClass = Failure;
    type ClassifyEos = NeverClassifyEos<Failure>;

    fn make_classifier<B>(&self, _req: &Request<B>) -> Self::Classifier {
        self.clone()
    }
}
