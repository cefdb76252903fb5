//! Retry tower layer: backoff with jitter, retry budgets, Retry-After, idempotency rules, hedging.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
//!
//! [`RetryLayer`] wraps an HTTP client service (anything that is
//! `Service<Request<RetryBody<B>>, Response = Response<_>>`, e.g. hyper-util's client) and
//! retries transient failures without turning an outage into a storm:
//!
//! - **Ready policy**: 3 attempts, exponential [`Backoff`] 100 ms..10 s with full [`Jitter`];
//!   fixed/linear/exponential and none/full/equal/decorrelated jitter; per-attempt timeout and
//!   an overall deadline across attempts.
//! - **What is retried** ([`default_retryable`], over the core's
//!   [`ResilienceClassifier`](stormwall_core::classify::ResilienceClassifier)): connect errors,
//!   timeouts, resets, `502`/`503`/`504`, `429`, gRPC `UNAVAILABLE`, and gRPC
//!   `RESOURCE_EXHAUSTED` only with pushback. Not `500` nor other `4xx`. Replace it with
//!   [`RetryLayer::retry_if`].
//! - **Unsafe methods** (`POST`, `PATCH`, …) are sent once unless the request carries an
//!   `Idempotency-Key` header or [`RetryLayer::retry_unsafe_methods`] is set. `GET`, `HEAD`,
//!   `OPTIONS`, `TRACE`, `PUT` and `DELETE` are idempotent. gRPC calls are `POST`s: enable
//!   [`RetryLayer::retry_grpc`] to retry them.
//! - **Server pushback**: `Retry-After` (seconds or HTTP-date), an exhausted `RateLimit` /
//!   `X-RateLimit-*` reset and `grpc-retry-pushback-ms` replace the backoff for the next delay,
//!   clamped to [`RetryLayer::max_pushback`]. A pushback ending beyond the deadline stops
//!   retrying at once; a negative or unparseable `grpc-retry-pushback-ms` means "do not retry".
//! - **Retry budget** ([`RetryBudget`], shared by every clone): successes deposit a fraction
//!   of a token, retries withdraw one, plus a small per-second floor. Under a total outage the
//!   extra load stays at the floor.
//! - **Bodies**: the request body is buffered up to [`RetryLayer::body_limit`] (64 KiB) before
//!   the first attempt and replayed byte-for-byte. A larger body is sent **once**, unmodified
//!   (the bytes read so far followed by the rest of the stream), and not retried. The inner
//!   service sees a [`RetryBody`].
//! - **`poll_ready` before every attempt**: the future owns a clone of the inner service and
//!   polls it ready before each attempt.
//! - **Hedging** ([`RetryLayer::hedge_after`]): for retryable requests, a second attempt is
//!   sent if the first has not answered after a delay; the first good answer wins, the other
//!   attempt is dropped (cancelled). Hedges count as attempts and against the budget.
//! - **Generic mode** ([`RetryLayer::policy`]): any request type, a [`RetryPolicy`] (or a
//!   closure returning a [`Verdict`]) decides; same backoff, timeouts, deadline, budget and
//!   stats, no hedging.
//! - **Outcome**: a failing response is passed through when retrying stops (e.g. the last
//!   `503`); errors come back as [`RetryError`] with the number of attempts.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Full;
//! use stormwall_retry::{Backoff, RetryBody, RetryLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let counter = calls.clone();
//! // An upstream that fails twice with 503, then answers.
//! let upstream = service_fn(move |_req: Request<RetryBody<Full<Bytes>>>| {
//!     let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!         Ok::<_, std::convert::Infallible>(
//!             Response::builder().status(status).body(Full::new(Bytes::new())).unwrap(),
//!         )
//!     }
//! });
//! let layer = RetryLayer::new()
//!     .max_attempts(3)
//!     .backoff(Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1)).unwrap())
//!     .deadline(Duration::from_secs(5));
//! let mut client = ServiceBuilder::new().layer(layer.clone()).service(upstream);
//!
//! let req = Request::get("http://example.com/").body(Full::new(Bytes::new())).unwrap();
//! let res = client.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(layer.stats().attempts, 3);
//! assert_eq!(layer.stats().retries, 2);
//! # }
//! ```
//!
//! # Where to put it
//!
//! In the standard client stack the retry layer sits below the cache and the coalescer (so
//! that N callers share one retried call) and above the circuit breaker, the rate limiter and
//! the attempt timeout (so that every attempt, retries included, is judged by the breaker and
//! spends the partner's quota). Stacking several retry layers is safe: each one has its own
//! budget, so the load multiplies by at most (1 + ratio) per layer, not by the attempt count.
//!
//! # Metrics
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `stormwall_retry_requests_total` | counter | | requests received |
//! | `stormwall_retry_attempts` | histogram | | attempts per finished request |
//! | `stormwall_retry_retries_total` | counter | `reason` (`connect`, `timeout`, `reset`, `status_502`, `status_503`, `status_504`, `back_off`, `grpc_unavailable`, …) | retries sent |
//! | `stormwall_retry_hedges_total` | counter | | hedged attempts sent |
//! | `stormwall_retry_budget_exhausted_total` | counter | | retries/hedges refused by the budget |
//!
//! Every attempt and decision is also a `tracing` event at debug level, and
//! [`RetryLayer::stats`] / [`Retry::stats`] return a [`RetryStats`] snapshot.
//!
//! # Cargo features
//!
//! - `hyper-util`: recognise connect errors of hyper-util's legacy client (they are retried);
//!   without it, inner errors are classified only when they are a `BoxError`, an `io::Error`
//!   or a tokio `Elapsed` (their source chains are walked), or by their message.
//!
//! # Limits
//!
//! - gRPC responses whose `grpc-status` arrives only in trailers are not inspected (they would
//!   have to be buffered): they count as successes. Trailers-only error responses (the usual
//!   shape of a gRPC error) are classified from their headers.
//! - The deadline bounds attempts, backoffs and the wait for the inner service's readiness
//!   inside the future, but not the caller's own `poll_ready` on [`Retry`] (which delegates to
//!   the inner service) nor the buffering of the request body.
//! - At most two attempts are in flight at once when hedging.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod body;
mod budget;
mod error;
mod future;
mod generic;
mod layer;
mod service;
mod stats;

pub use self::backoff::{Backoff, BackoffKind, Jitter, JitterRng};
pub use self::body::RetryBody;
pub use self::budget::RetryBudget;
pub use self::error::{InvalidBackoff, InvalidBudget, RetryError};
pub use self::future::ResponseFuture;
pub use self::generic::{
    GenericResponseFuture, GenericRetry, GenericRetryLayer, RetryPolicy, Verdict,
};
pub use self::layer::{RetryLayer, default_retryable};
pub use self::service::Retry;
pub use self::stats::RetryStats;
