//! Rate limiting for tower services: GCRA, sliding and fixed windows, a leaky-bucket shaper;
//! keyed, tiered and multi-limit; rejecting (429) or waiting; inbound and outbound.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
//!
//! # Example
//!
//! An axum server with a global limit and a per-client-IP limit; over quota, clients get a
//! `429 Too Many Requests` with `Retry-After` (rounded up) and the draft-10
//! `RateLimit-Policy` / `RateLimit` fields, and admitted responses carry the remaining quota:
//!
//! ```
//! use axum::{Router, routing::get};
//! use stormwall_core::key::{ClientIp, TrustedProxies};
//! use stormwall_ratelimit::{Limit, Quota, RateLimitLayer};
//!
//! let layer = RateLimitLayer::new(Limit::global("global", Quota::per_second(1_000).unwrap()))
//!     .limit(Limit::new(
//!         "per-ip",
//!         ClientIp::new(TrustedProxies::None), // never believe X-Forwarded-For by default
//!         Quota::per_second(10).unwrap().with_burst(20).unwrap(),
//!     ));
//! let stats = layer.clone(); // `stats.stats()` later
//! let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(layer);
//! // axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//! ```
//!
//! Outbound, in front of an HTTP client: wait for quota instead of collecting 429s, and follow
//! the partner's own pushback:
//!
//! ```
//! use std::time::Duration;
//! use stormwall_core::key::AuthorityKey;
//! use stormwall_ratelimit::{Limit, Quota, RateLimitLayer};
//!
//! let layer = RateLimitLayer::new(Limit::new("partner", AuthorityKey, Quota::per_second(10).unwrap()))
//!     .wait(Duration::from_secs(30)) // hold requests up to 30 s, then reject
//!     .queue_capacity(1_000)         // at most 1,000 waiting; beyond, reject at once
//!     .headers_on_admitted(false)    // pass the partner's headers through untouched
//!     .adaptive(true, false);        // pause a key on 429/503 + Retry-After or remaining = 0
//! ```
//!
//! # How it works
//!
//! - **Limits**: a layer holds one or more [`Limit`]s (name, [`KeyExtractor`](stormwall_core::KeyExtractor)
//!   from the core, [`Quota`], [`Algorithm`]). A request is admitted only if every limit admits
//!   it, and a request rejected by one limit spends nothing in any (see [`Store`]). Quotas can
//!   be chosen per request ([`Limit::tiers`]) and changed at run time ([`QuotaHandle`]).
//!   Requests whose key cannot be extracted share one [`LimitKey::unkeyed`] bucket. The
//!   [`Cost`] extension spends more than one unit.
//! - **Algorithms** ([`algorithm`]): GCRA (default; one CAS per decision), exact sliding log,
//!   approximate sliding counter (documented error bound), fixed window, and a leaky-bucket
//!   shaper (constant outflow through a bounded queue). All are pure functions of `now`.
//! - **Reject mode** (default): over quota → `429` (or `503` when the store failed closed) with
//!   `Retry-After`, `RateLimit-Policy`, `RateLimit` and optionally legacy `X-RateLimit-*`; gRPC
//!   requests (`content-type: application/grpc`) get `grpc-status: 8` (`RESOURCE_EXHAUSTED`)
//!   with `grpc-retry-pushback-ms`. The body is customizable ([`RateLimitLayer::on_reject`]).
//!   Rejections carry a [`RateLimited`] extension. The error type stays the inner service's,
//!   so `Infallible` stays `Infallible`. Outbound, [`RateLimitLayer::error_on_reject`] turns
//!   rejections into a typed [`RateLimitError::Limited`] with the exact `retry_after` instead. [`RateLimitLayer::shadow`] counts without rejecting.
//! - **Wait mode** ([`RateLimitLayer::wait`]): a request over quota waits (exactly until its
//!   earliest admission) up to the maximum wait. Waiters for the same keys are served by
//!   [`Priority`] (higher first), FIFO within a priority; the queue is bounded (full → rejected
//!   at once with [`RejectReason::QueueFull`]); a dropped request releases its place. Every
//!   response carries a [`RateLimitWait`] extension with the time spent waiting, so a circuit
//!   breaker's slow-call clock can leave it out.
//! - **Outbound adaptation** ([`RateLimitLayer::adaptive`]): 429/503 with `Retry-After`, or a
//!   `RateLimit`/`X-RateLimit-Remaining` of 0 with a reset, pause that key until the reset;
//!   an advertised remaining quota is spent locally so no request is sent past it.
//! - **State** lives in a [`Store`]: [`InMemoryStore`] (bounded keys, idle sweep, refuse or
//!   overflow at the cap, never evicting live keys) or a distributed store (e.g. Redis) behind
//!   the same trait. [`FailurePolicy`] says what happens when the store fails.
//! - **Outside tower**: [`Limiter`] (`try_acquire`, `check`, `available`, `reset`,
//!   `acquire().await`) and [`DirectLimiter`] (one lock-free cell).
//! - **Time** ([`Clock`]): every limiter reads tokio's clock by default, so tests can pause
//!   and advance it. [`Clock::tsc`] (the CPU's time-stamp counter through `quanta`, as
//!   `governor` does) is cheaper per decision but ignores a paused clock: an opt-in for hot
//!   production paths ([`RateLimitLayer::clock`], [`Limiter::clock`],
//!   [`DirectLimiter::with_clock`]).
//!
//! # Metrics
//!
//! Recorded through the [`metrics`] facade (no-ops unless a recorder is installed). The
//! decision counters' handles are registered when the layer is built, so that a request costs
//! no registry look-up: **install the recorder before building the layer** (the rule the
//! circuit breaker follows too). The other metrics are recorded where they happen.
//!
//! | Name | Kind | Labels | Meaning |
//! |---|---|---|---|
//! | `stormwall_ratelimit_decisions_total` | counter | `outcome` = `admitted` \| `rejected` \| `shadow_rejected` | decisions |
//! | `stormwall_ratelimit_wait_seconds` | histogram | | time admitted requests waited (wait mode, shaper) |
//! | `stormwall_ratelimit_queue_full_total` | counter | | rejections because the wait queue was full |
//! | `stormwall_ratelimit_store_errors_total` | counter | | store failures (the failure policy applied) |
//! | `stormwall_ratelimit_pushbacks_total` | counter | | upstream pushbacks that paused a key (adaptive) |
//!
//! [`RateLimitLayer::stats`] / [`RateLimit::stats`] return the same counts as a
//! [`RateLimitStats`] snapshot, and [`InMemoryStore::stats`] the store's keys and bytes.
//! `tracing` events: `debug` per rejection, per admitted waiter and per pushback; `warn` on
//! store failures.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod adaptive;
pub mod algorithm;
mod cell;
mod clock;
mod error;
mod future;
mod layer;
mod limit;
mod limiter;
mod memory;
mod quota;
mod response;
mod service;
mod stats;
pub mod store;
mod sync;
mod wait;

#[cfg(all(test, stormwall_loom))]
mod loom_tests;

pub use algorithm::{Algorithm, Decision};
pub use clock::Clock;
pub use error::{ErrorFuture, ErrorOnReject, RateLimitError};
pub use future::ResponseFuture;
pub use layer::{FailurePolicy, Mode, RateLimitLayer, WaitEvent};
pub use limit::{Cost, Limit, Priority, QuotaHandle};
pub use limiter::{AcquireError, DirectLimiter, Limiter};
pub use memory::{AtCapacity, InMemoryStore, StoreStats};
pub use quota::{Quota, QuotaError};
pub use response::{RateLimitWait, RateLimited, RejectReason, Rejection};
pub use service::RateLimit;
pub use stats::RateLimitStats;
pub use store::{CheckMode, LimitCheck, LimitId, LimitKey, Store, StoreError};
