//! The body type of the standard stacks.

use bytes::Bytes;
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use stormwall_core::BoxError;

/// The body of the standard stacks' requests and responses: a boxed body of [`Bytes`].
///
/// Hyper, axum and tonic bodies all convert into it with [`boxed`].
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body with `Bytes` data into a [`Body`] (a body that is already a [`Body`] is
/// passed through without a second box).
///
/// ```
/// use http_body_util::Full;
/// let body = stormwall::body::boxed(Full::new(bytes::Bytes::from("hi")));
/// # let _ = body;
/// ```
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(already) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Body>>() {
        return already.take().expect("present");
    }
    slot.expect("present").map_err(Into::into).boxed_unsync()
}
