//! Reliability and security scenarios of issue 11, one module per scenario, each printing the
//! figure it measured (`cargo test -p stormwall-tests --test reliability -- --nocapture`).
//!
//! Done here (they need only the core and the test kit):
//! - [`spoofing`] (scenario 4): forged `X-Forwarded-For`/`Forwarded` from an untrusted peer
//!   all land in one bucket; through N trusted hops the right entry is the key.
//! - [`hostile_headers`] (scenario 8): hostile `Retry-After`, `RateLimit`, `RateLimit-Policy`,
//!   `X-RateLimit-*`, `grpc-retry-pushback-ms`, `Cache-Control`, `Vary` values through the
//!   core's parsers and classifier, in process and off the wire from the fault server.
//!
//! Across the layers (need the `full` feature: `--all-features`):
//! - [`outage`] (scenario 1): 100 % `503` through the standard outbound stack.
//! - [`overload`] (scenario 2): 10× a per-IP GCRA quota on an axum server.
//! - [`isolation`] (scenario 5): per-user responses and `Set-Cookie` through a shared cache
//!   and coalescing; unkeyed-header poisoning.
//! - [`cancellation`] (scenario 7): callers dropped at random through every layer.
//! - [`key_flood`] (scenario 3): random client IPs through trusted proxies and random API keys,
//!   end to end and on the limiter directly.
//! - [`soak`]: mixed traffic through both standard stacks, memory sampled.
//!
//! With the `redis` feature (also in `--all-features`; needs `redis-server`):
//! - [`redis_faults`] (scenario 6): slow, reset mid-script, down and black-holed Redis
//!   through a fault-injecting TCP proxy, under every failure policy; the added latency in
//!   virtual time. Killing and pausing the server: `crates/stormwall-redis/tests/faults.rs`.
//!
//! Long variants run with `STORMWALL_EXTENDED=1`; the default sizes still assert the bound.

#[cfg(feature = "full")]
mod cancellation;
mod hostile_headers;
#[cfg(feature = "full")]
mod isolation;
#[cfg(feature = "full")]
mod key_flood;
#[cfg(feature = "full")]
mod outage;
#[cfg(feature = "full")]
mod overload;
#[cfg(feature = "redis")]
mod redis_faults;
#[cfg(feature = "full")]
mod soak;
mod spoofing;

/// Whether the extended (long) variants run.
fn extended() -> bool {
    std::env::var_os("STORMWALL_EXTENDED").is_some_and(|v| v == "1")
}
