//! An RFC 9111 HTTP cache as a tower layer: Vary, validation, `stale-while-revalidate`,
//! `stale-if-error`, RFC 9211 `Cache-Status`, and coalesced misses.
//!
//! [`CacheLayer`] works outbound (around a hyper client; [`private`](CacheLayer::private) or
//! [`shared`](CacheLayer::shared)) and inbound (in front of an axum router; shared). The
//! freshness and validation logic is implemented from the RFCs, as pure functions taking
//! `now`, and unit-tested section by section.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use stormwall_cache::CacheLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any `Service<Request<_>, Response = Response<B>>`: here a stand-in for a hyper client.
//! let origin = service_fn(|_req: Request<Full<Bytes>>| async {
//!     let res = Response::builder()
//!         .header("cache-control", "max-age=60")
//!         .body(Full::new(Bytes::from_static(b"hello")))
//!         .unwrap();
//!     Ok::<_, Infallible>(res)
//! });
//! let layer = CacheLayer::private().name("client-cache");
//! let handle = layer.handle();
//! let svc = ServiceBuilder::new().layer(layer).service(origin);
//!
//! let get = || Request::get("http://api.example/users/1").body(Full::default()).unwrap();
//! let first = svc.clone().oneshot(get()).await.unwrap();
//! assert_eq!(
//!     first.headers()["cache-status"],
//!     "client-cache; fwd=uri-miss; fwd-status=200; ttl=60; stored"
//! );
//! let second = svc.clone().oneshot(get()).await.unwrap();
//! assert_eq!(second.headers()["cache-status"], "client-cache; hit; ttl=60");
//! assert_eq!(second.headers()["age"], "0");
//! assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), "hello");
//! assert_eq!(handle.stats().hits, 1);
//! # }
//! ```
//!
//! Inbound, in front of an axum router (the error type stays `Infallible`):
//!
//! ```
//! use axum::{Router, routing::get};
//! use stormwall_cache::CacheLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { ([("cache-control", "s-maxage=30")], "home") }))
//!     .layer(CacheLayer::shared().name("edge"));
//! # let _ = app;
//! ```
//!
//! # What is implemented
//!
//! - **Storage (RFC 9111 §3)**: only `GET` with a final, understood status (not 206/304);
//!   never with `no-store` (request or response). A shared cache never stores `private`
//!   responses, responses carrying `Set-Cookie`, or responses to requests with
//!   `Authorization` (§3.5) — or `Cookie`, which we treat the same way — unless `public`,
//!   `s-maxage` or `must-revalidate` allow it. `Connection`-named and hop-by-hop headers are
//!   not stored (§3.1). A response needs explicit freshness, a heuristically cacheable status,
//!   or the configured [default TTL](CacheLayer::default_ttl). On top of these rules, an
//!   optional [predicate](CacheLayer::predicate). A response with no freshness information
//!   at all (no `max-age`/`s-maxage`/`Expires`/`Last-Modified`, no default TTL), no `ETag`
//!   and no stale grace is not stored either: no later request could be answered from it
//!   without the origin (`detail=no-freshness`).
//! - **Pass-through**: whether a response will be stored is decided from its head (status,
//!   `Cache-Control`, `Vary: *`, `Set-Cookie`, declared `Content-Length` over the per-entry
//!   cap, …); one that will not be is handed to the caller as it streams, never buffered.
//! - **Key (§4, §4.1)**: method + scheme + authority (the URI's, else `Host`) + path + query.
//!   `Vary` makes secondary keys; several variants per URL are kept; `Vary: *` never matches.
//! - **Freshness (§4.2)**: `s-maxage` (shared), `max-age`, `Expires − Date` (an invalid
//!   `Expires` is "expired"), heuristic 10 % of the `Last-Modified` age capped by
//!   [`heuristic_max`](CacheLayer::heuristic_max); `Age` computed per §4.2.3 and sent on every
//!   response served from the cache.
//! - **Validation (§4.3)**: stale or `no-cache` responses are revalidated with
//!   `If-None-Match`/`If-Modified-Since`; a 304 freshens the stored headers; clients'
//!   conditional requests are answered from the cache. `must-revalidate`, `proxy-revalidate`
//!   and `s-maxage` (shared) forbid serving stale, whatever the client's `max-stale`.
//! - **Request directives (§5.2.1)**: `max-age`, `max-stale`, `min-fresh`, `no-cache`
//!   (and `Pragma: no-cache`), `no-store`, `only-if-cached` (504 when nothing usable).
//! - **Invalidation (§4.4)**: a 2xx/3xx answer to an unsafe method removes the target URI and
//!   same-origin `Location`/`Content-Location`.
//! - **RFC 5861**: `stale-while-revalidate` serves stale at once and refreshes once in a
//!   spawned tokio task (at most 1024 in flight; outside a tokio runtime, no background
//!   refresh: the next request past the grace revalidates); `stale-if-error` serves stale on
//!   500/502/503/504 or a connection error. Both have a configurable default grace.
//! - **RFC 9211**: a `Cache-Status` member on every response: `hit`, `fwd=` (`bypass`,
//!   `method`, `uri-miss`, `vary-miss`, `request`, `stale`), `fwd-status`, `ttl` (negative
//!   when stale), `stored`, `collapsed`, and a `detail` saying why something was not stored or
//!   why stale was served.
//! - **Coalescing**: concurrent misses and revalidations of one URL make one upstream request,
//!   through [`stormwall_coalesce::Group`]. A waiter only reuses the result if it was stored
//!   and its own request matches the stored `Vary`; otherwise it goes upstream on its own, so
//!   one user's response is never handed to another.
//! - **Store**: the [`Store`] trait; the default [`MemoryStore`] is bounded by total bytes
//!   (moka, weighted); bodies over [`max_entry_bytes`](CacheLayer::max_entry_bytes) stream
//!   through uncached. Purges: [`CacheHandle::purge`], [`purge_prefix`](CacheHandle::purge_prefix),
//!   [`purge_all`](CacheHandle::purge_all).
//!
//! Not implemented: partial content (range requests bypass the cache), `HEAD` from stored
//! `GET`s.
//!
//! # Redis tier
//!
//! With the `redis` feature, `RedisTier` adds a shared second tier behind each
//! instance's in-memory store, so that instances of a service behind a load balancer share
//! what any of them fetched:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use stormwall_cache::{CacheLayer, RedisTier};
//!
//! let tier = RedisTier::builder()
//!     .timeout(Duration::from_millis(50))
//!     .connect("redis://127.0.0.1:6379/")?;
//! let layer = CacheLayer::shared().name("edge").redis(tier);
//! # let _ = layer;
//! # Ok(()) }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```
//!
//! - **Reads.** Hits in the local tier never touch Redis. A local miss (or a stale local
//!   entry) looks in Redis once (`GET`, bounded by the timeout) before the origin. A usable
//!   stored response is served as a hit (`Cache-Status: …; hit; ttl=…; detail=redis`, or
//!   `detail=redis-max-stale` / `redis-stale-while-revalidate` when served stale) and
//!   copied into the local tier; a stored response that needs validation is revalidated
//!   with a conditional request. The decision follows the same RFC 9111 rules as a local
//!   entry (request directives, `Vary`, `stale-while-revalidate`, …).
//! - **Writes.** Every response the layer stores is written through in the background
//!   (`SET key value PX ttl`, ttl = the entry's remaining freshness plus its stale grace, plus
//!   `keep_stale` when it has a validator). Values above
//!   `max_value_bytes` stay local. One Redis key holds all the variants
//!   of one URL: `<prefix>:shared:<primary key>` (`:private:` for a private
//!   cache; a shared cache never reads a private cache's entries). Concurrent writers of
//!   different variants of one URL: the last write wins (the other variant is fetched again).
//! - **What is stored** is decided before the write, by the same rules: `no-store`,
//!   `private`, `Set-Cookie`, `Authorization` without `public`/`s-maxage`/`must-revalidate`
//!   never reach Redis in shared mode. Secondary keys (`Vary`, forwarding headers) travel
//!   with each variant — including the request header values they name, as in memory.
//! - **Time.** Ages cross processes as "age at a wall-clock time" (an `Instant` does not), so
//!   `Age` and freshness are right on another instance as long as the instances' clocks are
//!   synchronized; a reader whose clock is behind counts no negative time.
//! - **Encoding.** Compact and versioned: magic `SWC`, a version byte, the writer's mode,
//!   then per variant its status, wall-clock timestamp, age and lifetime (ms), secondary
//!   key, headers, body and trailers (not the HTTP version nor extensions). A value that
//!   does not decode (garbage, truncated, another version) is a miss, counted in
//!   `RedisTierStats::corrupt`, and is overwritten by the next store.
//! - **Invalidation.** [`CacheHandle::purge`], [`purge_prefix`](CacheHandle::purge_prefix)
//!   (`SCAN MATCH` on the key namespace, glob characters escaped),
//!   [`purge_all`](CacheHandle::purge_all) and unsafe-method invalidation (§4.4) delete in
//!   Redis too, in the background (`RedisTier::flush` waits for them), and are broadcast on
//!   the pub/sub channel `<prefix>:purge`: every instance subscribed removes the same keys
//!   from its local tier. Redis pub/sub keeps nothing, so an instance disconnected at that
//!   moment misses the message and keeps its local copy until its freshness ends
//!   (`RedisTierBuilder::broadcast(false)` turns the broadcast off: then purges reach Redis
//!   and the local tier of the instance they run on only). Purges are not ordered with
//!   writes still in flight: a write-through started before a purge may land after it.
//! - **Failures.** Every Redis call has a timeout (default 50 ms); an error or a timeout is a
//!   miss (the request goes to the origin) or a dropped write, never a failed request, and
//!   counts in `RedisTierStats` and `stormwall_cache_redis_errors_total`.
//!   After 3 consecutive failures a short circuit skips Redis for 100 ms, doubling up to
//!   2 s. The connection reconnects by itself; sharing resumes when Redis is back.
//! - **Not covered:** `only-if-cached` requests are answered from the local tier only;
//!   concurrent local misses of one URL each look in Redis (the origin call is still
//!   coalesced); Redis Cluster (one server or Valkey only).
//! - **Stats.** [`CacheStats`] counts the local tier (a request answered from Redis is a local
//!   miss); `RedisTier::stats` counts the shared one.
//!
//! # Metrics
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `stormwall_cache_hits_total` | counter | answered from the cache |
//! | `stormwall_cache_misses_total` | counter | went upstream (miss or revalidation) |
//! | `stormwall_cache_stale_served_total` | counter | stale responses served |
//! | `stormwall_cache_revalidated_not_modified_total` | counter | revalidations answered 304 |
//! | `stormwall_cache_revalidated_modified_total` | counter | revalidations answered in full |
//! | `stormwall_cache_stored_total` | counter | responses stored |
//! | `stormwall_cache_collapsed_total` | counter | requests served by another's upstream call |
//! | `stormwall_cache_invalidations_total` | counter | entries removed by unsafe methods or purges |
//! | `stormwall_cache_evictions_total` | counter | entries evicted because the store was full |
//! | `stormwall_cache_stored_bytes` | gauge | bytes stored (updated by [`CacheHandle::stats`]) |
//!
//! With the `redis` feature, the Redis tier adds:
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `stormwall_cache_redis_hits_total` | counter | local misses answered from Redis |
//! | `stormwall_cache_redis_misses_total` | counter | Redis lookups that did not answer the request |
//! | `stormwall_cache_redis_writes_total` | counter | values written to Redis |
//! | `stormwall_cache_redis_deletes_total` | counter | keys deleted in Redis by invalidations and purges |
//! | `stormwall_cache_redis_errors_total` | counter | label `kind` = `error` \| `timeout` \| `decode` |
//! | `stormwall_cache_redis_skipped_total` | counter | calls skipped (short circuit open, too many pending writes) |
//! | `stormwall_cache_redis_purges_received_total` | counter | broadcast purges applied to the local tier |
//!
//! `tracing` events are emitted at debug level for hits, misses, storage decisions,
//! invalidations and background revalidations.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "redis")]
mod codec;
mod directives;
mod future;
mod layer;
mod policy;
mod service;
mod stats;
mod status;
mod store;
#[cfg(feature = "redis")]
mod tier;

pub use directives::{RequestDirectives, ResponseDirectives};
pub use future::ResponseFuture;
pub use layer::{CacheHandle, CacheLayer, Candidate};
pub use policy::FORWARDING_HEADERS;
pub use service::Cache;
pub use stats::CacheStats;
pub use store::{Entry, MemoryStore, READ_SAMPLE, Store, Variants};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use tier::{RedisTier, RedisTierBuilder, RedisTierError, RedisTierStats};
