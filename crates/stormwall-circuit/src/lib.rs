//! A circuit breaker for tower HTTP and gRPC services: stop calling what is failing, and
//! recover by itself.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall). The model is Resilience4j's.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use stormwall_circuit::{BreakerConfig, CircuitBreakerLayer, State, Window};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let config = BreakerConfig::new()
//!     .window(Window::Count(20))           // the last 20 calls
//!     .minimum_calls(5)                    // judged once 5 are recorded
//!     .failure_rate_threshold(50.0)        // open at 50 % failures
//!     .wait_duration(Duration::from_secs(30))
//!     .permitted_calls_in_half_open(2);
//! let layer = CircuitBreakerLayer::new("payments", config).unwrap();
//!
//! let upstream = service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(Response::builder().status(503).body(()).unwrap())
//! });
//! let mut svc = layer.layer(upstream);
//! for _ in 0..5 {
//!     let res = svc.ready().await.unwrap().call(Request::new(())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! }
//! assert_eq!(layer.breaker().state(), State::Open);
//!
//! // Open: the upstream is not called; the error says when to come back.
//! let err = svc.ready().await.unwrap().call(Request::new(())).await.unwrap_err();
//! assert!(err.open().unwrap().remaining <= Duration::from_secs(30));
//! # }
//! ```
//!
//! # States
//!
//! `Closed` → (rates over threshold) → `Open` → (wait over, at the next call) → `HalfOpen` →
//! `Closed` if the probes' failure and slow-call rates are under the thresholds, else `Open`
//! again. Open never goes straight to closed. Manual states: [`Breaker::force_open`] (reject
//! all), [`Breaker::disable`] (pass all, record nothing), [`Breaker::metrics_only`] (record,
//! never open), [`Breaker::close`].
//!
//! - **Windows** ([`Window`]): the last N calls (a ring of one-byte slots plus a packed
//!   aggregate), the last N seconds (a ring of per-second buckets, each one packed atomic
//!   word), or N consecutive failures. Recording is O(1) and allocates nothing; judging a time
//!   window reads its N buckets. A time window counts at most 262,143 calls per second.
//! - **Trip**: with at least `minimum_calls` in the window, failure rate ≥
//!   `failure_rate_threshold` or slow-call rate ≥ the slow threshold (a slow call takes at
//!   least [`BreakerConfig::slow_call`]'s duration, measured from `call` to the response
//!   headers: the wire time of this layer's inner service only). In consecutive mode, a slow
//!   call counts as a failure.
//! - **Open** lasts [`WaitStrategy`]: fixed, exponential with a cap, or any function of how
//!   many times in a row the breaker opened (reset when it closes).
//! - **Half-open** admits exactly `permitted_calls_in_half_open` probes; further calls are
//!   rejected at once, not queued. A probe whose future is dropped frees its slot.
//! - Outcomes of calls admitted before a transition are ignored after it (transitions are
//!   numbered modulo 8192 in the state word; a call spanning exactly a multiple of 8192
//!   transitions would be misattributed, which is harmless).
//!
//! # Classification
//!
//! By default [`ResilienceClassifier`](stormwall_core::classify::ResilienceClassifier): 5xx,
//! 429 (configurable with `too_many_requests_is_failure(false)`), timeouts, connect errors and
//! every inner error are failures; other 4xx are not; gRPC `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
//! `INTERNAL`, `UNKNOWN`, `DATA_LOSS` and `RESOURCE_EXHAUSTED` are failures, read from the
//! headers of a trailers-only response or, when the status is in the trailers, at the end of
//! the body ([`ResponseBody`] classifies it then; a body dropped before its end records
//! nothing). Replace it with [`CircuitBreakerLayer::classifier`] (any tower-http
//! `MakeClassifier` whose failure class is `Into<Failure>`) or
//! [`CircuitBreakerLayer::failure_if`] (a predicate).
//!
//! # Rejections
//!
//! - Default (outbound) mode: [`CircuitBreakerError::Open`] carrying [`CircuitOpen`] with the
//!   remaining open time (zero when half-open with all probes taken; the wait duration as a
//!   hint when forced open). In axum, map it with `HandleErrorLayer`.
//! - [`CircuitBreakerLayer::respond`]: the error type stays the inner one (`Infallible` stays
//!   `Infallible`); HTTP requests get `503` with `Retry-After` (seconds, rounded up, at least
//!   1); gRPC requests get a trailers-only `grpc-status: 14` (`UNAVAILABLE`) with
//!   `grpc-retry-pushback-ms`. Use it for inbound axum/tonic servers and for tonic clients.
//!
//! # Keyed breakers
//!
//! [`CircuitBreakerLayer::keyed`] keeps one breaker per key of any
//! [`KeyExtractor`](stormwall_core::key::KeyExtractor), at most `max_keys`; see
//! [`KeyedBreakers`] for the bound (an idle closed breaker is evicted, else the shared
//! fallback breaker judges the request).
//!
//! # Observability
//!
//! Transitions go to the [`on_transition`](CircuitBreakerLayer::on_transition) hook and to a
//! `tokio::sync::broadcast` channel ([`CircuitBreakerLayer::subscribe`]; it holds 64 events, a
//! subscriber that falls further behind gets `RecvError::Lagged` and skips the oldest ones);
//! health snapshots come
//! from [`CircuitBreakerLayer::stats`]. Tracing: `debug` per rejection and failure, `info` per
//! transition, `warn` when a breaker opens. Metrics (label `breaker` = the breaker's name;
//! handles are registered when the breaker is built, so install the recorder first):
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `stormwall_circuit_calls_total` | counter | `outcome` = `success`/`failure` | calls recorded |
//! | `stormwall_circuit_slow_calls_total` | counter | | slow calls recorded |
//! | `stormwall_circuit_rejected_total` | counter | | calls rejected (open, forced open, half-open full) |
//! | `stormwall_circuit_transitions_total` | counter | `from`, `to` | state transitions |
//! | `stormwall_circuit_key_overflow_total` | counter | | keyed requests judged by the fallback breaker |
//! | `stormwall_circuit_state` | gauge | | 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics-only |
//! | `stormwall_circuit_failure_rate` | gauge | | window failure rate, percent (updated on failures and transitions) |
//! | `stormwall_circuit_slow_call_rate` | gauge | | window slow-call rate, percent (updated likewise) |
//!
//! # Cost
//!
//! The closed state takes no lock and allocates nothing per call: one atomic load to admit,
//! and to record one `fetch_add` on the ring cursor plus loads (a slot swap and a packed
//! `fetch_add` only when the slot's value changes). See `BENCHMARKS.md`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod breaker;
mod classify;
mod config;
pub mod error;
pub mod future;
mod layer;
mod registry;
mod service;
mod sync;
mod window;

#[cfg(all(test, stormwall_loom))]
mod loom_tests;

pub use self::body::ResponseBody;
pub use self::breaker::{
    Breaker, BreakerSnapshot, CircuitOpen, Permit, State, StateTransition, TransitionHook,
};
pub use self::classify::FailureIf;
pub use self::config::{
    BreakerConfig, ConfigError, MAX_HALF_OPEN_CALLS, MAX_WINDOW_CALLS, MAX_WINDOW_SECS,
    WaitStrategy, Window,
};
pub use self::error::CircuitBreakerError;
pub use self::future::ResponseFuture;
pub use self::layer::{CircuitBreakerLayer, Fail, RejectionMode, Respond};
pub use self::registry::{CircuitStats, KeyedBreakers, SelectBreaker, SingleBreaker, Snapshots};
pub use self::service::CircuitBreaker;
pub use self::window::Counts;
