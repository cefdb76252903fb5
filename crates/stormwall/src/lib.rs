//! Stormwall: tower layers that protect services from request storms, in both directions.
//!
//! | layer | crate | feature |
//! |---|---|---|
//! | request coalescing (singleflight) | [`stormwall-coalesce`](coalesce) | `coalesce` |
//! | rate limiting | [`stormwall-ratelimit`](ratelimit) | `ratelimit` |
//! | circuit breaker | [`stormwall-circuit`](circuit) | `circuit` |
//! | retries | [`stormwall-retry`](retry) | `retry` |
//! | HTTP cache | [`stormwall-cache`](cache) | `cache` |
//!
//! The shared vocabulary (request keys, outcome classification, peer headers, shareable
//! responses) lives in [`core`].
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
