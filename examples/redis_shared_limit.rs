//! Two instances sharing one rate-limit quota through Redis:
//!
//! ```text
//! cargo run --example redis_shared_limit [-- --redis-url redis://127.0.0.1:6379/] [--quota 20] [--requests 30] [--json]
//! ```
//!
//! Builds two instances of a service, each with its own reject-mode rate limiter and its own
//! Redis connection (`stormwall_redis::RedisStore`), both enforcing one global limit of
//! `--quota` requests per minute whose state lives in Redis. It sends `--requests` rounds of one
//! request to each instance at the same time and prints what each admitted: together, never more than the
//! quota. Without `--redis-url` (or `REDIS_URL`) it starts a private `redis-server` on a free
//! loopback port (it must be installed) and stops it at the end. If Redis fails, requests are
//! rejected rather than admitted (`OnFailure::Closed`), so the quota holds even then.
//! (`--port` is accepted for symmetry; nothing listens.)

use stormwall_examples::redis_shared_limit::{Options, run};

#[tokio::main]
async fn main() -> Result<(), stormwall::core::BoxError> {
    run(&Options::from_env()).await?;
    Ok(())
}
