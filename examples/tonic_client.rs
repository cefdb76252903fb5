//! Coalescing, retries and a circuit breaker around a tonic `Channel`:
//!
//! ```text
//! cargo run --example tonic_client [-- --callers 20] [--calls 10] [--json]
//! ```
//!
//! Starts a local gRPC echo server (the test kit's fault server, on a free loopback port;
//! `--port` is accepted for symmetry but the server picks a free port) and calls it through
//! coalesce → retry → circuit breaker → `Channel`, in three phases:
//!
//! 1. **Coalescing**: `--callers` concurrent identical unary calls while each answer takes
//!    200 ms → one server call. gRPC calls are `POST`s and their message is in the body, so
//!    the coalescer is told to take `POST` and keys by method path + an `x-coalesce-key`
//!    metadata entry the client derives from the message (keying by path alone would merge
//!    calls with different messages).
//! 2. **Retries**: 30% of calls fail with `UNAVAILABLE`; the retry layer (`retry_grpc(true)`,
//!    3 attempts) retries them, and every call succeeds.
//! 3. **Circuit breaker**: every call fails with `UNAVAILABLE`; after 5 consecutive failures
//!    the breaker opens and answers `UNAVAILABLE` ("circuit breaker open") with
//!    `grpc-retry-pushback-ms` at once, without calling the server; the retry layer sees that
//!    the pushback ends after its deadline and stops.
//!
//! It prints the counts of each phase and each layer's statistics.

use stormwall_examples::tonic_client::{Options, run};

#[tokio::main]
async fn main() -> Result<(), stormwall::core::BoxError> {
    run(&Options::from_env()).await?;
    Ok(())
}
