//! An axum hello-world for the inbound load bench (`scripts/bench-inbound`), with or without
//! the inbound standard stack.
//!
//! ```text
//! inbound-server --port 8080            # bare axum
//! inbound-server --port 8081 --stack    # axum behind InboundStack::standard()
//! inbound-server --port 8082 --stack --without-cache
//! ```
//!
//! With `--stack`, the per-IP limit is raised to 10⁹/s so that the load generator (one IP) is
//! never rejected: the bench measures the stack's cost, not its rejections. The server stops by
//! itself after `--seconds` (default 60).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use stormwall::InboundStack;
use stormwall::core::key::PeerIp;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 8080u16;
    let mut stack = false;
    let mut without_cache = false;
    let mut seconds = 60u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).unwrap_or(port),
            "--stack" => stack = true,
            "--without-cache" => without_cache = true,
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut app: Router = Router::new().route("/", get(|| async { "hello, world" }));
    if stack {
        let quota = Quota::per_second(1_000_000_000)?;
        let mut inbound = InboundStack::standard().rate_limit(RateLimitLayer::new(Limit::new(
            "per-ip",
            PeerIp::new(),
            quota,
        )));
        if without_cache {
            inbound = inbound.without_cache();
        }
        app = app.layer(inbound);
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    );
    tokio::select! {
        r = server => r?,
        () = tokio::time::sleep(Duration::from_secs(seconds)) => {}
    }
    Ok(())
}
