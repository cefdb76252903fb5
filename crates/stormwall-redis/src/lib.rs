//! Distributed rate limits on Redis: one quota shared by every instance of a service.
//!
//! [`RedisStore`] implements the rate limiter's [`Store`](stormwall_ratelimit::Store) seam, so
//! the [`RateLimitLayer`](stormwall_ratelimit::RateLimitLayer) (inbound and outbound, reject
//! and wait modes) and the programmatic [`Limiter`](stormwall_ratelimit::Limiter) keep their
//! limit state in Redis (one server, Valkey, or a Redis Cluster) instead of in the process.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use stormwall_ratelimit::{Limit, Quota, RateLimitLayer};
//! use stormwall_redis::{OnFailure, RedisStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stormwall_redis::ConnectError> {
//! let store = RedisStore::builder()
//!     .timeout(Duration::from_millis(50))
//!     // While Redis is away, each of the 4 instances allows a quarter of the quota.
//!     .on_failure(OnFailure::Local { instances: 4 })
//!     .connect("redis://127.0.0.1:6379/")?;
//! let layer = RateLimitLayer::with_store(
//!     Limit::global("partner-api", Quota::per_second(100).unwrap()),
//!     store,
//! )
//! .wait(Duration::from_secs(2));
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! On a cluster: `RedisStore::builder().connect_cluster(["redis://10.0.0.1:7000/"]).await?`.
//!
//! # How a decision is made
//!
//! - **One round trip, atomic.** A check (all the limits one request is subject to: global,
//!   per user, …) is one `EVALSHA` of [`CHECK_SCRIPT`]. The script evaluates every limit first,
//!   then writes all of them only if every limit admits: a rejected request spends nothing
//!   anywhere. If Redis lost the script (restart, `SCRIPT FLUSH`), the client loads it again
//!   (`NOSCRIPT` → `SCRIPT LOAD` → `EVALSHA`).
//! - **Algorithms**: GCRA, sliding log, sliding counter, fixed window, ported line by line from
//!   [`stormwall_ratelimit::algorithm`], so every backend agrees. The leaky-bucket shaper also
//!   runs on Redis (its state is the same as GCRA's); the *holding* of the request for its
//!   [`delay`](stormwall_ratelimit::Decision::delay) happens in the caller's process.
//! - **Server time.** The script reads Redis `TIME` (microseconds), never the client's clock,
//!   so instances with skewed clocks agree. Quota intervals and periods are rounded **up** to
//!   the microsecond (never more generous than the quota). Numbers stay exact in Lua's doubles
//!   while `burst × interval` and `limit × period` stay below 2^53 µs (about 285 years).
//!   The fixed window and the sliding counter are aligned on multiples of the period since the
//!   Unix epoch of Redis' clock (every instance sees the same windows; the in-memory store
//!   aligns them on its own creation instead).
//! - **Keys.** `{<tag>}:<limit>:<key>:<algorithm>`, with one `{hash tag}` per check so the
//!   script's keys live in one cluster slot: see [`KeyTag`] for the choice (and its trade-off
//!   between exactness of multi-limit checks and spreading keys over the cluster). Keys longer
//!   than 128 bytes are replaced by their SHA-1. Every key has a TTL equal to the time after
//!   which its state is indistinguishable from a fresh key, so idle keys expire by themselves.
//!
//! # When Redis is slow or down
//!
//! Every call has a timeout (default 50 ms; a paused or overloaded Redis cannot stall
//! requests). On an error or a timeout, the [`OnFailure`] policy answers: return the error
//! (the layer's [`FailurePolicy`](stormwall_ratelimit::FailurePolicy) then admits or answers
//! 503), admit, reject, or decide on a local in-memory limit with the quota divided by the
//! number of instances ([`local_quota`]). After 3 consecutive failures a short circuit skips
//! Redis for 100 ms, doubling up to 2 s, so a dead Redis is not hammered; then a single probe
//! request tries Redis again, and when it answers every decision goes back to Redis. The
//! connection reconnects by itself after an error ([`redis::aio::ConnectionManager`], or the
//! cluster connection which also follows slot moves); on one server, when the short circuit
//! opens (or a probe fails) on a **timeout**, the store also replaces the connection, so a
//! connection that swallows everything without ever failing (a host gone without a reset, a
//! partition) does not keep every call timing out.
//!
//! A call that timed out may still run on Redis later (e.g. a paused server catching up): it
//! then spends quota for a request that was decided by the failure policy. That errs on the
//! side of the limit.
//!
//! # Client
//!
//! The [`redis`] crate (1.x): its `ConnectionManager` multiplexes concurrent calls over one
//! connection (pipelining them on the wire) and reconnects; its cluster client routes by slot
//! and handles `MOVED`/`ASK`; `redis::Script` does the `EVALSHA`/`NOSCRIPT` dance. `fred`
//! would serve too; `redis` is the one the workspace already uses, and is enough.
//!
//! # Metrics
//!
//! | Name | Kind | Labels | Meaning |
//! |---|---|---|---|
//! | `stormwall_redis_decisions_total` | counter | | decisions made by Redis |
//! | `stormwall_redis_errors_total` | counter | `kind` = `timeout` \| `error` | failed Redis calls |
//! | `stormwall_redis_fallbacks_total` | counter | `policy` = `error` \| `open` \| `closed` \| `local` | decisions answered by the failure policy |
//! | `stormwall_redis_short_circuits_total` | counter | | decisions that skipped Redis (short circuit open) |
//! | `stormwall_redis_reconnects_total` | counter | | connections replaced after timeouts (one server) |
//! | `stormwall_redis_circuit_open` | gauge | | 1 while the short circuit is open |
//! | `stormwall_redis_latency_seconds` | histogram | | round-trip time of successful calls |
//!
//! [`RedisStore::stats`] gives the same counts as a [`RedisStats`] snapshot. Failures are
//! logged with `tracing` (`warn` when the short circuit opens, `debug` per failed call).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod keys;
mod policy;
mod store;

pub use keys::KeyTag;
pub use policy::{OnFailure, local_quota};
pub use store::{
    CHECK_SCRIPT, CheckFuture, ConnectError, RedisStats, RedisStore, RedisStoreBuilder, ResetFuture,
};
