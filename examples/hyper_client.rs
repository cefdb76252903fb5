//! The standard Stormwall outbound stack around a hyper-util client (HTTP and HTTPS):
//!
//! ```text
//! cargo run --example hyper_client [-- --port 0] [--requests 30] [--rate 10] [--fail-rate 0.2] [--url https://api.example.com] [--json]
//! ```
//!
//! Without `--url`, it starts a local API on loopback that allows `--rate` requests/s (429
//! with `Retry-After` beyond) and fails `--fail-rate` of its calls with 503, then sends
//! `--requests` concurrent GETs for distinct paths (`/items/N`) through the stack:
//! coalesce → retry (6 attempts, 60 s deadline, budget) → circuit breaker → rate limit (wait,
//! `--rate`/s) → attempt timeout (5 s) → client. The limiter paces the calls under the API's
//! quota and retries heal the 503s, so every request succeeds and no 429 reaches a caller. It
//! prints the outcomes per kind, what the API saw, and the stack's statistics.
//!
//! With `--url`, the same requests go to `URL/items/N`; `https://` URLs use rustls (ring)
//! with the Mozilla roots (webpki-roots), HTTP/2 by ALPN.

use stormwall_examples::hyper_client::{Options, run};

#[tokio::main]
async fn main() -> Result<(), stormwall::core::BoxError> {
    run(&Options::from_env()).await?;
    Ok(())
}
