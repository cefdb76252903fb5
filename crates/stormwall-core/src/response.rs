//! One response, handed to many callers.
//!
//! [`SharedResponse`] is a fully buffered response — status, version, headers, extensions,
//! body bytes and trailers — behind an `Arc`: cloning it is a reference-count increment. It is
//! how the coalescer hands one upstream response to every waiter and how the cache stores one.
//!
//! [`SharedResponse::buffer`] reads any `http::Response<B: http_body::Body>` into one, under a
//! size cap. A body over the cap is not truncated: the caller gets [`BufferError::TooLarge`]
//! with the response intact — what was read is put back in front of the rest of the stream
//! ([`ResponseBody`]) — and decides what to do (the coalescer delivers it to the leader only).
//!
//! [`SharedResponse::to_response`] turns it back into a `Response<ResponseBody<B>>` whose body
//! works with hyper, axum and tonic, trailers (`grpc-status`, `grpc-message`, custom metadata)
//! included.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::Response;
//! use http_body_util::{BodyExt, Full};
//! use stormwall_core::response::{BufferError, SharedResponse};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstream = Response::builder()
//!     .header("content-type", "text/plain")
//!     .body(Full::new(Bytes::from_static(b"hello")))
//!     .unwrap();
//! let shared = SharedResponse::buffer(upstream, 1024).await.unwrap();
//!
//! // Every caller gets its own response with the same status, headers and body.
//! for _ in 0..3 {
//!     let res = shared.to_response::<Full<Bytes>>();
//!     assert_eq!(res.headers()["content-type"], "text/plain");
//!     let body = res.into_body().collect().await.unwrap().to_bytes();
//!     assert_eq!(body, "hello");
//! }
//!
//! // Over the cap: the full response comes back, nothing is lost.
//! let big = Response::new(Full::new(Bytes::from(vec![b'x'; 10_000])));
//! match SharedResponse::buffer(big, 1024).await {
//!     Err(BufferError::TooLarge(res)) => {
//!         let body = res.into_body().collect().await.unwrap().to_bytes();
//!         assert_eq!(body.len(), 10_000);
//!     }
//!     _ => unreachable!(),
//! }
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{Extensions, HeaderMap, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

struct Inner {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// A cloneable, fully buffered HTTP response (see the [module docs](self)).
#[derive(Clone)]
pub struct SharedResponse {
    inner: Arc<Inner>,
}

impl fmt::Debug for SharedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedResponse")
            .field("status", &self.inner.status)
            .field("headers", &self.inner.headers)
            .field("body_len", &self.inner.body.len())
            .field("trailers", &self.inner.trailers)
            .finish()
    }
}

impl SharedResponse {
    /// Builds a shared response from its pieces.
    ///
    /// ```
    /// use http::{HeaderMap, StatusCode};
    /// use stormwall_core::SharedResponse;
    /// let r = SharedResponse::from_parts(StatusCode::OK, HeaderMap::new(), "hi".into(), None);
    /// assert_eq!(r.body(), "hi");
    /// ```
    pub fn from_parts(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                status,
                version: Version::HTTP_11,
                headers,
                extensions: Extensions::new(),
                body,
                trailers,
            }),
        }
    }

    /// Reads `response` into a shared response, failing with [`BufferError::TooLarge`] (and
    /// the response intact) when its body exceeds `limit` bytes.
    ///
    /// The body type must be `Unpin` (hyper's `Incoming`, axum's and tonic's bodies, `Full`
    /// are); wrap others in `Box::pin`.
    pub fn buffer<B>(response: Response<B>, limit: usize) -> Buffer<B>
    where
        B: Body + Unpin,
    {
        let (parts, body) = response.into_parts();
        Buffer {
            state: Some(BufferState {
                parts,
                body,
                data: Chunks::Empty,
                trailers: None,
            }),
            limit,
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The extensions of the original response.
    pub fn extensions(&self) -> &Extensions {
        &self.inner.extensions
    }

    /// The body bytes.
    pub fn body(&self) -> &Bytes {
        &self.inner.body
    }

    /// The trailers, if the body ended with any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.inner.trailers.as_ref()
    }

    /// An estimate of the memory this response holds (body, header names and values,
    /// trailers), for caches that weigh their entries.
    pub fn weight(&self) -> usize {
        fn map_weight(m: &HeaderMap) -> usize {
            m.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum()
        }
        self.inner.body.len()
            + map_weight(&self.inner.headers)
            + self.inner.trailers.as_ref().map_or(0, map_weight)
            + size_of::<Inner>()
    }

    /// Whether two handles share the same buffered response.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A new response with these contents (headers and trailers are cloned; the body bytes are
    /// shared, not copied).
    pub fn to_response<B>(&self) -> Response<ResponseBody<B>> {
        let mut res = Response::new(ResponseBody::buffered(
            self.inner.body.clone(),
            self.inner.trailers.clone(),
        ));
        *res.status_mut() = self.inner.status;
        *res.version_mut() = self.inner.version;
        *res.headers_mut() = self.inner.headers.clone();
        *res.extensions_mut() = self.inner.extensions.clone();
        res
    }

    /// Like [`to_response`](Self::to_response), but moves the contents out when this is the
    /// last handle.
    pub fn into_response<B>(self) -> Response<ResponseBody<B>> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                let mut res = Response::new(ResponseBody::buffered(inner.body, inner.trailers));
                *res.status_mut() = inner.status;
                *res.version_mut() = inner.version;
                *res.headers_mut() = inner.headers;
                *res.extensions_mut() = inner.extensions;
                res
            }
            Err(inner) => Self { inner }.to_response(),
        }
    }

    /// A copy with the headers changed by `f` (e.g. to freshen them after a 304).
    pub fn map_headers(&self, f: impl FnOnce(&mut HeaderMap)) -> Self {
        let mut headers = self.inner.headers.clone();
        f(&mut headers);
        Self {
            inner: Arc::new(Inner {
                status: self.inner.status,
                version: self.inner.version,
                headers,
                extensions: self.inner.extensions.clone(),
                body: self.inner.body.clone(),
                trailers: self.inner.trailers.clone(),
            }),
        }
    }
}

/// Why [`SharedResponse::buffer`] did not produce a shared response.
// The over-cap variant carries the whole response so that nothing is lost; it is built at most
// once per response, so its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum BufferError<B: Body> {
    /// The body exceeds the cap. This is the original response: the bytes already read come
    /// first, then the rest of the original body, so nothing is lost.
    TooLarge(Response<ResponseBody<B>>),
    /// Reading the body failed.
    Body(B::Error),
}

impl<B: Body> BufferError<B> {
    /// Whether the body was over the cap.
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge(_))
    }
}

impl<B: Body> fmt::Debug for BufferError<B>
where
    B::Error: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(res) => f.debug_tuple("TooLarge").field(&res.status()).finish(),
            Self::Body(e) => f.debug_tuple("Body").field(e).finish(),
        }
    }
}

impl<B: Body> fmt::Display for BufferError<B>
where
    B::Error: fmt::Display,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(_) => f.write_str("response body exceeds the buffer limit"),
            Self::Body(e) => write!(f, "failed to read response body: {e}"),
        }
    }
}

impl<B: Body> std::error::Error for BufferError<B> where B::Error: fmt::Debug + fmt::Display {}

struct BufferState<B> {
    parts: http::response::Parts,
    body: B,
    /// The body so far: one chunk is kept as it came (no copy); a second one starts a copy.
    data: Chunks,
    trailers: Option<HeaderMap>,
}

/// The chunks read so far: most bodies arrive in one chunk, which is kept without copying.
#[derive(Default)]
enum Chunks {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Chunks {
    fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(chunk),
            Self::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + chunk.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                Self::Many(all)
            }
            Self::Many(mut all) => {
                all.extend_from_slice(&chunk);
                Self::Many(all)
            }
        };
    }

    fn freeze(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}

/// The future returned by [`SharedResponse::buffer`].
pub struct Buffer<B> {
    state: Option<BufferState<B>>,
    limit: usize,
}

impl<B> fmt::Debug for Buffer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("limit", &self.limit)
            .field("buffered", &self.state.as_ref().map(|s| s.data.len()))
            .finish()
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl<B> Future for Buffer<B>
where
    B: Body + Unpin,
{
    type Output = Result<SharedResponse, BufferError<B>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let limit = this.limit;
        let Some(state) = this.state.as_mut() else {
            panic!("Buffer polled after completion");
        };
        if state.data.is_empty() && state.trailers.is_none() {
            let declared = content_length(&state.parts.headers).unwrap_or(0);
            let hinted = state.body.size_hint().lower();
            if declared > limit as u64 || hinted > limit as u64 {
                let state = this.state.take().expect("state");
                return Poll::Ready(Err(too_large(state)));
            }
        }
        loop {
            let state = this.state.as_mut().expect("state");
            match ready!(Pin::new(&mut state.body).poll_frame(cx)) {
                None => {
                    let state = this.state.take().expect("state");
                    let parts = state.parts;
                    return Poll::Ready(Ok(SharedResponse {
                        inner: Arc::new(Inner {
                            status: parts.status,
                            version: parts.version,
                            headers: parts.headers,
                            extensions: parts.extensions,
                            body: state.data.freeze(),
                            trailers: state.trailers,
                        }),
                    }));
                }
                Some(Err(e)) => {
                    this.state = None;
                    return Poll::Ready(Err(BufferError::Body(e)));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        // `copy_to_bytes` on `Bytes` is a cheap slice, not a copy.
                        state.data.push(data.copy_to_bytes(data.remaining()));
                        if state.data.len() > limit {
                            let state = this.state.take().expect("state");
                            return Poll::Ready(Err(too_large(state)));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut state.trailers {
                                Some(existing) => existing.extend(trailers),
                                None => state.trailers = Some(trailers),
                            }
                        }
                    }
                },
            }
        }
    }
}

use bytes::Buf;

fn too_large<B: Body>(state: BufferState<B>) -> BufferError<B> {
    let prefix = state.data.freeze();
    let body = ResponseBody::prefixed(prefix, state.body);
    BufferError::TooLarge(Response::from_parts(state.parts, body))
}

pin_project! {
    /// The response body of every Stormwall layer: the inner service's body, possibly preceded
    /// by bytes already read from it, or a buffered body (shared responses, rejections).
    ///
    /// It implements [`http_body::Body`] with `Data = Bytes` and the inner body's error, so it
    /// works as a hyper, axum or tonic body, and trailers pass through.
    ///
    /// On the pass-through path (the inner body, untouched) it is the inner body plus one null
    /// pointer, so a response moved through a stack of layers stays as small as the inner
    /// service's: the bytes of a prefix or a buffered body live behind that pointer.
    pub struct ResponseBody<B> {
        // `Some` for the inner service's body, `None` for a buffered one.
        #[pin]
        body: Option<B>,
        // A prefix of the inner body, or a buffered body's data and trailers.
        extra: Option<Box<Extra>>,
    }
}

struct Extra {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self
            .extra
            .as_ref()
            .and_then(|e| e.data.as_ref().map(Bytes::len));
        if self.body.is_some() {
            f.debug_struct("ResponseBody::Inner")
                .field("prefix_len", &data)
                .finish_non_exhaustive()
        } else {
            f.debug_struct("ResponseBody::Buffered")
                .field("len", &data)
                .field(
                    "trailers",
                    &self.extra.as_ref().and_then(|e| e.trailers.as_ref()),
                )
                .finish()
        }
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body, untouched.
    #[inline]
    pub fn inner(body: B) -> Self {
        Self {
            body: Some(body),
            extra: None,
        }
    }

    /// `prefix`, then the rest of `body`.
    pub fn prefixed(prefix: Bytes, body: B) -> Self {
        Self {
            body: Some(body),
            extra: (!prefix.is_empty()).then(|| {
                Box::new(Extra {
                    data: Some(prefix),
                    trailers: None,
                })
            }),
        }
    }

    /// A buffered body with optional trailers.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        let data = (!data.is_empty()).then_some(data);
        Self {
            body: None,
            extra: (data.is_some() || trailers.is_some())
                .then(|| Box::new(Extra { data, trailers })),
        }
    }

    /// A buffered body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::buffered(data.into(), None)
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            body: None,
            extra: None,
        }
    }
}

/// A buffered body that never fails: what [`SharedResponse`] hands out when the inner body
/// type does not matter.
pub type SharedBody = ResponseBody<http_body_util::Empty<Bytes>>;

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Some(extra) = this.extra {
            if let Some(data) = extra.data.take() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if let Some(trailers) = extra.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
        }
        match this.body.as_pin_mut() {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.extra
            .as_ref()
            .is_none_or(|e| e.data.is_none() && e.trailers.is_none())
            && self.body.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self
            .extra
            .as_ref()
            .and_then(|e| e.data.as_ref())
            .map_or(0, |d| d.len() as u64);
        match &self.body {
            Some(body) => {
                let inner = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
            None => SizeHint::with_exact(extra),
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

/// `Infallible` as a body error: for bodies built by the layers themselves.
pub type Never = Infallible;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    /// A body that yields the given frames one by one.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(chunks: Vec<&'static [u8]>, trailers: Option<HeaderMap>) -> Frames {
        let mut frames: std::collections::VecDeque<_> = chunks
            .into_iter()
            .map(|c| Frame::data(Bytes::from_static(c)))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Frames(frames)
    }

    #[test]
    fn pass_through_body_is_the_inner_body_plus_one_pointer() {
        use std::mem::size_of;
        type Inner = Full<Bytes>;
        assert!(
            size_of::<ResponseBody<Inner>>() <= size_of::<Option<Inner>>() + size_of::<usize>(),
            "{} bytes",
            size_of::<ResponseBody<Inner>>()
        );
    }

    #[tokio::test]
    async fn prefix_then_inner_frames_then_inner_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = ResponseBody::prefixed(
            Bytes::from_static(b"ab"),
            frames(vec![b"cd"], Some(trailers.clone())),
        );
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "abcd");

        let empty = ResponseBody::<Frames>::empty();
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
        let full = ResponseBody::<Frames>::full("xyz");
        assert_eq!(full.size_hint().exact(), Some(3));
        assert_eq!(full.collect().await.unwrap().to_bytes(), "xyz");
    }

    #[tokio::test]
    async fn buffers_body_and_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("x-meta", "v".parse().unwrap());
        let res = Response::builder()
            .status(201)
            .header("x-h", "1")
            .body(frames(vec![b"ab", b"cd"], Some(trailers.clone())))
            .unwrap();
        let shared = SharedResponse::buffer(res, 16).await.unwrap();
        assert_eq!(shared.status(), StatusCode::CREATED);
        assert_eq!(shared.body(), "abcd");
        assert_eq!(shared.trailers(), Some(&trailers));
        for _ in 0..2 {
            let res = shared.to_response::<Full<Bytes>>();
            assert_eq!(res.headers()["x-h"], "1");
            let collected = res.into_body().collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            assert_eq!(collected.to_bytes(), "abcd");
        }
        let moved = shared.clone().into_response::<Full<Bytes>>();
        assert_eq!(moved.status(), StatusCode::CREATED);
        assert!(shared.weight() >= 4);
    }

    #[tokio::test]
    async fn over_cap_returns_whole_response() {
        let res = Response::new(frames(vec![b"0123", b"4567", b"89"], None));
        let Err(BufferError::TooLarge(res)) = SharedResponse::buffer(res, 5).await else {
            panic!("expected too large");
        };
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "0123456789");

        // Declared length over the cap: nothing is read.
        let res = Response::builder()
            .header("content-length", "100")
            .body(Full::new(Bytes::from(vec![1u8; 100])))
            .unwrap();
        let err = SharedResponse::buffer(res, 10).await.unwrap_err();
        assert!(err.is_too_large());
        // Exactly at the cap is fine.
        let res = Response::new(Full::new(Bytes::from_static(b"12345")));
        assert_eq!(
            SharedResponse::buffer(res, 5).await.unwrap().body(),
            "12345"
        );
    }

    #[tokio::test]
    async fn single_chunk_is_not_copied() {
        let original = Bytes::from(vec![3u8; 4096]);
        let res = Response::new(Full::new(original.clone()));
        let shared = SharedResponse::buffer(res, 1 << 20).await.unwrap();
        assert_eq!(shared.body().as_ptr(), original.as_ptr());
        // Two chunks are joined (a copy), in order.
        let res = Response::new(frames(vec![b"ab", b"", b"cd"], None));
        assert_eq!(
            SharedResponse::buffer(res, 16).await.unwrap().body(),
            "abcd"
        );
    }

    #[tokio::test]
    async fn empty_and_helpers() {
        let res = Response::new(http_body_util::Empty::<Bytes>::new());
        let shared = SharedResponse::buffer(res, 0).await.unwrap();
        assert!(shared.body().is_empty());
        let body: SharedBody = ResponseBody::full("x");
        assert_eq!(body.size_hint().exact(), Some(1));
        let copy = shared.map_headers(|h| {
            h.insert("age", "3".parse().unwrap());
        });
        assert_eq!(copy.headers()["age"], "3");
        assert!(!copy.ptr_eq(&shared));
        assert!(shared.ptr_eq(&shared.clone()));
    }
}
