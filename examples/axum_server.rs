//! An axum server protected by the Stormwall inbound stack:
//!
//! ```text
//! cargo run --example axum_server [-- --port 0] [--serve] [--trusted-proxies 10.0.0.0/8,127.0.0.1] [--requests 15] [--json]
//! ```
//!
//! Limits, checked together (a request rejected by one spends nothing in the others):
//!
//! - per client IP, 300/min: the client is the TCP peer unless the peer is in a trusted proxy
//!   network (`--trusted-proxies` or `TRUSTED_PROXIES`, comma-separated CIDRs; default none),
//!   in which case `X-Forwarded-For` is walked from the right;
//! - per API key (`x-api-key`), per minute and per hour, by tier: free 10/min + 100/h, basic
//!   60/min + 1,000/h, premium 600/min + 10,000/h. The tier comes from a lookup table
//!   (`demo-free`, `demo-basic`, `demo-premium`) or the key's prefix (`basic_`, `premium_`).
//!
//! Over a limit the answer is `429` with `Retry-After` and the draft-10 `RateLimit` /
//! `RateLimit-Policy` fields (admitted answers carry them too).
//!
//! Without `--serve` it starts itself on loopback, sends `--requests` requests for a free key
//! and for a premium key from an in-process client, prints the status counts and the headers
//! of the first 429, and exits. With `--serve` it keeps serving until Ctrl-C:
//! `curl -i -H 'x-api-key: demo-free' http://127.0.0.1:PORT/api/hello`.

use stormwall_examples::axum_server::{Options, run};

#[tokio::main]
async fn main() -> Result<(), stormwall::core::BoxError> {
    run(&Options::from_env()).await?;
    Ok(())
}
