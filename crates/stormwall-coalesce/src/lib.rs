//! Request coalescing (singleflight): N concurrent identical requests make one upstream call.
//!
//! Fifty services asking a rate-limited API for the same user at once should cost one call,
//! not fifty. [`CoalesceLayer`] merges concurrent identical HTTP requests into one upstream
//! call and hands every caller the same response; [`CoalesceLayer::generic`] does the same for
//! any tower service whose response is `Clone`; [`Group`] is the same machinery without tower,
//! for any async function.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use stormwall_coalesce::CoalesceLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = calls.clone();
//! // Stands for an HTTP client (hyper-util, reqwest via tower, a tonic Channel...).
//! let upstream = service_fn(move |req: Request<()>| {
//!     counter.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         tokio::task::yield_now().await; // the call takes a while
//!         let body = format!("user at {}", req.uri().path());
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
//!     }
//! });
//!
//! let layer = CoalesceLayer::new();
//! let stats = layer.stats();
//! let client = layer.layer(upstream);
//!
//! let requests = (0..10).map(|_| {
//!     let req = Request::get("https://api.example/users/1").body(()).unwrap();
//!     client.clone().oneshot(req)
//! });
//! for res in futures_util::future::join_all(requests).await {
//!     let body = res.unwrap().into_body().collect().await.unwrap().to_bytes();
//!     assert_eq!(body, "user at /users/1");
//! }
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! let s = stats.snapshot();
//! assert_eq!((s.misses, s.hits), (1, 9));
//! # }
//! ```
//!
//! # Keys
//!
//! The default key ([`DefaultKey`]) is the method, the full URI (scheme, authority, path,
//! query; the `Host` header when the URI has none, as on servers) and the request headers that
//! select a different response: `Accept`, `Accept-Encoding`, `Accept-Language`, and the
//! identity headers `Authorization` and `Cookie`, so that two users are never merged. Only
//! `GET` and `HEAD` coalesce by default ([`CoalesceLayer::methods`]); other methods pass
//! straight through. [`CoalesceLayer::key`] takes any
//! [`KeyExtractor`](stormwall_core::key::KeyExtractor) (tuples of extractors compose),
//! [`CoalesceLayer::key_fn`] a closure. Requests that cannot be keyed pass through. The request
//! body is never part of a key: to coalesce gRPC unary calls (which are `POST`s), allow `POST`
//! and key on the method path plus something that identifies the message, such as a metadata
//! entry (see `tests/grpc.rs`).
//!
//! # What is shared
//!
//! When the response head arrives and nobody has joined the call, the flight leaves the map
//! and the response is handed to its caller **untouched** (streamed, not buffered); a request
//! arriving after that moment starts a call of its own. Otherwise the response of the one
//! upstream call is read into a
//! [`SharedResponse`](stormwall_core::SharedResponse) (status, headers, body, trailers — so
//! `grpc-status`, `grpc-message` and custom trailing metadata reach every caller) up to
//! [`max_body_bytes`](CoalesceLayer::max_body_bytes) (default [`DEFAULT_MAX_BODY`]). Some
//! responses go only to the caller that drove the call, and **each other waiter re-issues its
//! own request** (counted in [`CoalesceStats::reissued`]):
//!
//! * a body over the cap: the driving caller gets it intact (the bytes already read, then the
//!   rest of the stream);
//! * a response with `Set-Cookie`: never handed to another caller;
//! * a response marked `Cache-Control: private`, unless the key contains the caller's identity
//!   (true of the default key; declare it for a custom key with
//!   [`key_includes_identity`](CoalesceLayer::key_includes_identity));
//! * `text/event-stream`: a stream is not buffered.
//!
//! Results are not kept after the call finishes: this is not a cache (see `stormwall-cache`).
//!
//! # Cancellation and waking
//!
//! There is no task per flight and no busy polling. The caller that started the call drives
//! it; the others park their waker and are woken once, when the result is published. If the
//! driving caller is dropped (or times out, see [`CoalesceLayer::timeout`]) while others wait,
//! another caller takes over the same upstream future: the call goes on. When every caller is
//! gone, the upstream future is dropped, which cancels it. The map entry of a key is removed
//! before its result is published, so a caller either joins the call in flight and gets its
//! result, or comes after it and starts a fresh call: a stampede makes exactly one call.
//!
//! # Failures
//!
//! * The upstream returns an error: the driving caller gets it as is (the service keeps its
//!   error type, so an `Infallible` service stays infallible); every waiter gets a
//!   `502 Bad Gateway` response carrying a [`CoalesceFailure`] extension with the message.
//!   [`Group`] and the generic mode give every caller the error itself
//!   ([`CoalesceError::Upstream`]; shared behind an `Arc` in the generic mode).
//! * The upstream panics: caught, and every caller gets `500 Internal Server Error` (HTTP) or
//!   [`CoalesceError::Panicked`] instead of hanging.
//! * A caller's timeout elapses: that caller gets `504 Gateway Timeout` (HTTP) or
//!   [`CoalesceError::Timeout`]; the call goes on for the others.
//!
//! # Limits
//!
//! Flights exist only while a call is in flight, so the number of keys is bounded by the number
//! of concurrent requests. [`max_waiters`](CoalesceLayer::max_waiters) caps the callers waiting
//! on one call; callers beyond it go upstream on their own. Bodies are capped as above.
//!
//! # Metrics
//!
//! Every counter carries the label `name` (`"default"`, or the name given to
//! [`CoalesceLayer::named`], [`CoalesceLayer::generic_named`] or [`Group::named`]).
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `stormwall_coalesce_hits_total` | counter | callers that joined a call in flight |
//! | `stormwall_coalesce_misses_total` | counter | callers that called upstream (leaders, beyond the waiter cap) |
//! | `stormwall_coalesce_errors_total` | counter | upstream calls that ended in an error or a panic |
//! | `stormwall_coalesce_panics_total` | counter | upstream calls that panicked |
//! | `stormwall_coalesce_cancelled_total` | counter | upstream calls dropped because every caller was gone |
//! | `stormwall_coalesce_timeouts_total` | counter | callers that gave up after their timeout |
//! | `stormwall_coalesce_overflow_total` | counter | callers beyond the waiter cap |
//! | `stormwall_coalesce_reissued_total` | counter | waiters that re-issued their request (unshareable response) |
//! | `stormwall_coalesce_in_flight_keys` | gauge | keys with a call in flight |
//! | `stormwall_coalesce_waiters` | gauge | callers waiting on a call in flight |
//!
//! The same figures are available without a metrics recorder from [`CoalesceLayer::stats`],
//! [`GenericCoalesceLayer::stats`] and [`Group::stats`] ([`CoalesceStats`], with
//! [`hit_rate`](CoalesceStats::hit_rate)). Per-request `tracing` events are at `debug` level.

mod error;
mod flight;
mod future;
mod generic;
mod group;
mod key;
mod layer;
mod service;
mod stats;
mod sync;
mod upstream;

pub use self::error::CoalesceError;
pub use self::future::ResponseFuture;
pub use self::generic::{GenericCoalesce, GenericCoalesceLayer, GenericFuture};
pub use self::group::{Group, Run};
pub use self::key::{DefaultKey, KEY_HEADERS, RequestKey};
pub use self::layer::{CoalesceLayer, DEFAULT_MAX_BODY};
pub use self::service::Coalesce;
pub use self::stats::{CoalesceStats, StatsHandle};
pub use self::upstream::CoalesceFailure;
