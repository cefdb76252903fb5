//! The shared vocabulary of the Stormwall layers.
//!
//! Every Stormwall layer (coalescing, rate limiting, circuit breaking, retries, caching) needs
//! the same few hard-to-get-right pieces. They live here, once, so that the layers agree:
//!
//! - [`key`]: who or what a request counts against ([`KeyExtractor`]): a global key, the peer
//!   IP, the client IP behind *trusted* proxies only, a header, method + path (or axum's route
//!   template), the authority, any closure, and tuples of those.
//! - [`classify`]: whether an outcome is a success, a failure, or a "back off" signal (429/503
//!   with pushback), on top of tower-http's [`classify`](tower_http::classify) types.
//! - [`headers`]: tolerant parsing and formatting of the peer headers that carry rate-limit and
//!   retry information: `Retry-After`, `RateLimit`/`RateLimit-Policy` (draft-ietf-httpapi-
//!   ratelimit-headers-10), legacy `X-RateLimit-*` and gRPC's `grpc-retry-pushback-ms`.
//! - [`response`]: [`SharedResponse`], a cloneable, fully buffered response (status, headers,
//!   body, trailers) with a size cap, which is how one response is handed to many callers.
//! - [`time`]: the clock rules: layers read [`tokio::time::Instant`] only, so every test can run
//!   on a paused clock.
//!
//! # Example
//!
//! ```
//! use http::Request;
//! use stormwall_core::key::{KeyExtractor, HeaderKey, MethodPath};
//!
//! let req = Request::get("/users/7").header("x-api-key", "k-123").body(()).unwrap();
//!
//! // A composite key: per API key and per endpoint.
//! let extractor = (HeaderKey::new("x-api-key"), MethodPath::new());
//! let (api_key, endpoint) = extractor.extract(&req).unwrap();
//! assert_eq!(api_key.as_bytes(), b"k-123");
//! assert_eq!(endpoint.path(), "/users/7");
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
pub mod headers;
pub mod key;
pub mod response;
pub mod time;

pub use classify::{ErrorKind, Outcome};
pub use key::{KeyError, KeyExtractor};
pub use response::{SharedBody, SharedResponse};

/// The boxed error type used where the layers must erase an inner error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
