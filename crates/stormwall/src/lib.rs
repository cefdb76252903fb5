//! Stormwall: tower layers that protect services from request storms, in both directions.
//!
//! | layer | crate | feature | what it does |
//! |---|---|---|---|
//! | [`CoalesceLayer`](coalesce::CoalesceLayer) | [`coalesce`] | `coalesce` | N concurrent identical requests make one upstream call |
//! | [`RateLimitLayer`](ratelimit::RateLimitLayer) | [`ratelimit`] | `ratelimit` | GCRA, windows, leaky bucket; keyed and tiered; wait or reject (429) |
//! | [`CircuitBreakerLayer`](circuit::CircuitBreakerLayer) | [`circuit`] | `circuit` | stop calling what is failing, recover by itself |
//! | [`RetryLayer`](retry::RetryLayer) | [`retry`] | `retry` | backoff with jitter, budgets, `Retry-After`, idempotency rules |
//! | [`CacheLayer`](cache::CacheLayer) | [`cache`] | `cache` | RFC 9111 HTTP cache with `Vary`, validation, stale-while-revalidate |
//! | `RedisStore` (`stormwall_redis`) | `redis` | `redis` | one rate-limit quota shared by every instance, through Redis |
//!
//! The shared vocabulary (request keys, outcome classification, peer headers, shareable
//! responses) lives in [`core`]. Each layer is its own crate: depend on just the one you need,
//! or on this facade for all of them, the [`ServiceBuilderExt`] methods and the standard stacks.
//!
//! # The standard stacks
//!
//! ## Outbound (a client calling a partner API): [`OutboundStack`]
//!
//! **cache → coalesce → retry (budget, deadline) → circuit breaker → rate limit (wait) →
//! attempt timeout → client**, outermost first. Why this order:
//!
//! - **Cache outermost**: a hit touches no partner, so it spends no quota and takes no retry.
//! - **Coalesce above retry**: N identical callers share one *retried* call, instead of N
//!   callers each retrying.
//! - **Retry above the limiter**: every attempt, retries included, passes the limiter, so
//!   retries can never push past the partner's quota. (Put the limiter outermost instead and
//!   retries bypass the quota, and cache hits spend it.)
//! - **Breaker between retry and limiter**: above the limiter, an open breaker fails fast
//!   without waiting for (or spending) a token; below retry, it judges each attempt and ends
//!   retrying early with its remaining open time.
//! - **Attempt timeout innermost**: it bounds the wire call only, not the wait for a token;
//!   likewise the breaker's slow-call clock does not count that wait.
//!
//! ```no_run
//! use std::time::Duration;
//! use http::Request;
//! use http_body_util::{BodyExt, Full};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{Layer, ServiceExt};
//! use stormwall::OutboundStack;
//! use stormwall::body::Body;
//! use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
//! let quota = Quota::per_second(10)?;
//! let stack = OutboundStack::standard("partner-api")
//!     .rate_limit(RateLimitLayer::new(Limit::global("partner", quota)).wait(Duration::from_secs(30)));
//! let api = stack.layer(client);
//!
//! let res = api
//!     .oneshot(Request::get("http://127.0.0.1:8080/users/1").body(Full::new(bytes::Bytes::new()))?)
//!     .await;
//! match res {
//!     Ok(res) => println!("{} {:?}", res.status(), res.into_body().collect().await?.to_bytes()),
//!     Err(e) if e.is_circuit_open() => println!("partner is down, try again in {:?}", e.retry_after()),
//!     Err(e) if e.is_rate_limited() => println!("over our own quota"),
//!     Err(e) => println!("failed: {e}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Inbound (a server protecting itself): [`InboundStack`]
//!
//! **rate limit (reject, 429 + headers) → load shedding / concurrency limit → cache (shared)
//! → coalesce → handler**. The limiter is outermost so that rejected requests cost nothing;
//! the concurrency limit protects the cache and the handler; the shared cache answers before
//! coalescing so that only misses are coalesced. Inbound stages never turn an `Infallible`
//! service into a fallible one: every rejection is a response.
//!
//! ```
//! use axum::{Router, routing::get};
//! use stormwall::InboundStack;
//! use stormwall::core::key::PeerIp;
//! use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
//!
//! let per_ip = Limit::new("per-ip", PeerIp::new(), Quota::per_second(10).unwrap());
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(InboundStack::standard().rate_limit(RateLimitLayer::new(per_ip)));
//! # let _ = app;
//! ```
//!
//! ## Presets and reordering
//!
//! [`OutboundStack::standard`], [`OutboundStack::fast_fail`] and [`OutboundStack::tolerant`]
//! set documented defaults; every stage can be replaced (`.retry(..)`) or removed
//! (`.without_retry()`). For a different order, stack the layers yourself with
//! [`ServiceBuilderExt`]; what each change costs:
//!
//! | change | cost |
//! |---|---|
//! | limiter above retry | retries are not rate limited: a retry storm can blow the partner's quota |
//! | limiter above cache | cache hits spend quota |
//! | breaker above retry | the breaker sees one outcome per request instead of per attempt, and cannot stop a retry loop early |
//! | coalesce below retry | each waiting caller runs its own retry loop |
//! | timeout above limiter | time spent waiting for a token counts against the attempt |
//!
//! The stacks compose their stages without boxing (a stage that is off is one side of an
//! `Either`); the service they build boxes once, at its outer edge, so that it has a short
//! name ([`Outbound`], [`Inbound`]). The layers themselves use named futures. Costs are
//! measured in `BENCHMARKS.md`.
//!
//! # Errors
//!
//! The outbound stack fails with one [`Error`] type: [`Error::is_rate_limited`],
//! [`Error::is_circuit_open`], [`Error::is_timeout`], [`Error::retry_after`] …
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use stormwall_core as core;

#[cfg(feature = "coalesce")]
pub use stormwall_coalesce as coalesce;

#[cfg(feature = "ratelimit")]
pub use stormwall_ratelimit as ratelimit;

#[cfg(feature = "circuit")]
pub use stormwall_circuit as circuit;

#[cfg(feature = "retry")]
pub use stormwall_retry as retry;

#[cfg(feature = "cache")]
pub use stormwall_cache as cache;

#[cfg(feature = "redis")]
pub use stormwall_redis as redis;

pub mod body;
mod builder;
#[cfg(feature = "config")]
pub mod config;
mod error;
#[cfg(feature = "full")]
mod stack;

pub use builder::ServiceBuilderExt;
pub use error::{Error, ErrorKind};
#[cfg(feature = "full")]
pub use stack::{Inbound, InboundStack, Outbound, OutboundStack, StackService};
