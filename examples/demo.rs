//! The Stormwall demo, on the embedded in-memory default (nothing to install):
//!
//! ```text
//! cargo run --example demo [-- --port 0] [--json] [--svg stormwall-demo.svg] [--fail-rate 0.2] [--quick]
//! ```
//!
//! Starts a local API on loopback that allows 10 requests/s (a token bucket with a burst of
//! 10) and answers `429` with `Retry-After` beyond that, then runs the same scenarios twice —
//! with a plain hyper client, and with the standard Stormwall outbound stack (coalesce → retry
//! → circuit breaker → rate limit (wait, 10/s) → attempt timeout) — and prints a table per
//! scenario: requests, successes, failures (429/5xx), upstream calls, calls saved, p50/p99
//! latency, duration and each layer's statistics. `--json` prints the same as JSON. An SVG
//! chart of upstream requests per 100 ms (the 100-distinct-resources scenario, without vs
//! with Stormwall, against the API's limit) is written to `--svg` (default
//! `stormwall-demo.svg`).

use stormwall_examples::Flags;

#[tokio::main]
async fn main() -> Result<(), stormwall_examples::demo::BoxError> {
    stormwall_examples::demo::run(&Flags::from_env()).await?;
    Ok(())
}
