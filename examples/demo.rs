//! The Stormwall demo (in-memory default, no setup needed):
//!
//! ```text
//! cargo run --example demo [-- --port 0]
//! ```
//!
//! Starts a local API on loopback that allows 10 requests/s and answers `429` with
//! `Retry-After` and draft-10 `RateLimit` headers beyond that, fires a burst of 50 concurrent
//! requests at it, and shows what the shared core reads from the answers: who each request
//! counts against, and how long the peer asked us to wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stormwall::core::headers::{Pushback, RateLimitPolicy, RateLimitStatus, format_retry_after};
use stormwall::core::key::{ClientIp, KeyExtractor, PeerAddr, TrustedProxies};
use stormwall::core::time::system_now;
use tokio::net::TcpListener;

const LIMIT_PER_SEC: u64 = 10;

fn port_arg() -> u16 {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--port" {
            return args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        }
    }
    std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// A fixed-window 10/s API that answers 429 beyond its quota.
async fn start_api(port: u16) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let window = Arc::new((AtomicU64::new(0), std::sync::Mutex::new(Instant::now())));
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let window = window.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(PeerAddr(peer));
                        let window = window.clone();
                        async move {
                            let (count, started) = &*window;
                            let elapsed = {
                                let mut started = started.lock().expect("lock");
                                if started.elapsed() >= Duration::from_secs(1) {
                                    *started = Instant::now();
                                    count.store(0, Ordering::SeqCst);
                                }
                                started.elapsed()
                            };
                            let used = count.fetch_add(1, Ordering::SeqCst) + 1;
                            let reset = Duration::from_secs(1).saturating_sub(elapsed);
                            let remaining = LIMIT_PER_SEC.saturating_sub(used);
                            let mut res = if used <= LIMIT_PER_SEC {
                                Response::new(Full::new(Bytes::from("{\"ok\":true}")))
                            } else {
                                let mut r = Response::new(Full::new(Bytes::from("slow down")));
                                *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                                r.headers_mut()
                                    .insert("retry-after", format_retry_after(reset));
                                r
                            };
                            let h = res.headers_mut();
                            if let Some(v) = RateLimitPolicy::format_all(&[RateLimitPolicy::new(
                                "api",
                                LIMIT_PER_SEC,
                                Duration::from_secs(1),
                            )]) {
                                h.insert("ratelimit-policy", v);
                            }
                            if let Some(v) = RateLimitStatus::format_all(&[RateLimitStatus::new(
                                "api", remaining, reset,
                            )]) {
                                h.insert("ratelimit", v);
                            }
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::main]
async fn main() {
    let addr = start_api(port_arg()).await;
    println!("local API on http://{addr} (allows {LIMIT_PER_SEC} requests/s, 429 beyond)\n");

    // Who a request counts against: a spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let mut req = Request::get("/users/1")
        .header("x-forwarded-for", "6.6.6.6")
        .body(())
        .expect("request");
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::from(([198, 51, 100, 7], 4242))));
    let key = ClientIp::new(TrustedProxies::None)
        .extract(&req)
        .expect("key");
    println!("client key with a spoofed X-Forwarded-For and no trusted proxies: {key}");

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let client = client.clone();
        let uri: http::Uri = format!("http://{addr}/users/1").parse().expect("uri");
        tasks.push(tokio::spawn(async move {
            let res = client.get(uri).await.expect("request");
            let pushback = Pushback::from_headers(res.headers(), system_now());
            let status = res.status();
            let _ = res.into_body().collect().await;
            (status, pushback)
        }));
    }
    let (mut ok, mut throttled, mut max_wait) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (status, pushback) = t.await.expect("task");
        if status.is_success() {
            ok += 1
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            throttled += 1
        }
        max_wait = max_wait.max(pushback.delay.unwrap_or_default());
    }
    println!("\n50 concurrent requests for /users/1, no protection:");
    println!(
        "  successes: {ok}\n  429s:      {throttled}\n  longest pushback the API asked for: {max_wait:?}\n  took {:?}",
        started.elapsed()
    );
}
