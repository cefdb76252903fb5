//! Soak: mixed traffic for a bounded time through the standard outbound stack
//! (`OutboundStack::standard` over a fault server answering 10 % `503` with 2 ms latency,
//! `Cache-Control: max-age=1` on its `200`s, 500 distinct paths, so the cache holds at most
//! 500 entries and misses keep the upstream busy) and the inbound stack
//! (`InboundStack::standard` on axum with a per-API-key limit over 100 keys), resident memory
//! sampled at regular intervals: 10 s with a sample every second by default, 5 minutes with
//! a sample every 10 s with `STORMWALL_EXTENDED=1`.
//!
//! Bounds: every request is answered (each wrapped in a 15 s timeout, above the retry
//! deadline of 10 s); outbound callers get ≥ 95 % `200` (retries absorb the 10 % `503`s);
//! inbound answers are only `200` or well-formed `429`; RSS after warm-up (the first fifth of
//! the run) never exceeds the warm-up sample by 20 MB.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormwall::core::key::HeaderKey;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use stormwall::{InboundStack, OutboundStack};
use stormwall_tests::fault::{FaultServer, Reply, SplitMix64};
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

use crate::extended;
use crate::key_flood::{MEMORY, rss_bytes};

const ANSWER_WITHIN: Duration = Duration::from_secs(15);
const WORKERS: u64 = 6;
/// Distinct outbound paths: with `max-age=1`, up to this many upstream fetches a second.
const OUT_PATHS: u64 = 500;
/// Growth allowed after warm-up.
const BOUND: i64 = 20_000_000;

#[derive(Debug, Default)]
struct Counts {
    out_ok: AtomicU64,
    out_err: AtomicU64,
    in_ok: AtomicU64,
    in_limited: AtomicU64,
    other: AtomicU64,
    hung: AtomicU64,
}

async fn start_inbound() -> SocketAddr {
    let quota = Quota::per_second(50)
        .and_then(|q| q.with_burst(20))
        .unwrap();
    let stack = InboundStack::standard().rate_limit(RateLimitLayer::new(Limit::new(
        "per-key",
        HeaderKey::new("x-api-key"),
        quota,
    )));
    let app = Router::new()
        .route("/{*path}", get(|| async { "inbound ok" }))
        .layer(stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_memory_is_flat_after_warm_up() {
    let _serial = MEMORY.lock().await;
    let (run, every) = if extended() {
        (Duration::from_secs(300), Duration::from_secs(10))
    } else {
        (Duration::from_secs(10), Duration::from_secs(1))
    };

    let server = FaultServer::builder()
        .seed(11)
        .max_requests(u64::MAX)
        .lifetime(run + Duration::from_secs(60))
        .start()
        .await;
    server.respond_with(
        Reply::new(StatusCode::OK)
            .header("cache-control", "max-age=1")
            .body("upstream ok"),
    );
    server.update(|f| {
        f.latency = Duration::from_millis(2);
        f.error_rate = 0.1;
    });
    let outbound = OutboundStack::standard("soak");
    let client = Client::builder(TokioExecutor::new()).build_http::<stormwall::body::Body>();
    let out_svc = outbound.layer(client);
    let inbound = start_inbound().await;
    let in_client = stormwall_tests::http::client();

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (out_svc, in_client, counts, stop, base) = (
            out_svc.clone(),
            in_client.clone(),
            counts.clone(),
            stop.clone(),
            server.url(""),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(0x50ac + w);
            while !stop.load(Ordering::Relaxed) {
                if w % 2 == 0 {
                    let path = rng.below(OUT_PATHS);
                    // Outbound: through retry, breaker, coalescing and the cache.
                    let req = Request::get(format!("{base}/item/{path}"))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let call = async {
                        match out_svc.clone().oneshot(req).await {
                            Ok(res) => {
                                let ok = res.status() == StatusCode::OK;
                                let _ = res.into_body().collect().await;
                                ok
                            }
                            Err(_) => false,
                        }
                    };
                    match tokio::time::timeout(ANSWER_WITHIN, call).await {
                        Ok(true) => counts.out_ok.fetch_add(1, Ordering::Relaxed),
                        Ok(false) => counts.out_err.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counts.hung.fetch_add(1, Ordering::Relaxed),
                    };
                } else {
                    // Inbound: rate limit per API key, concurrency limit, shared cache.
                    let path = rng.below(200);
                    let req = Request::get(format!("http://{inbound}/page/{path}"))
                        .header("x-api-key", format!("key-{}", rng.below(100)))
                        .body(Full::<Bytes>::default())
                        .unwrap();
                    let call = async {
                        let res = in_client.request(req).await.ok()?;
                        let status = res.status();
                        let well_formed = status != StatusCode::TOO_MANY_REQUESTS
                            || res.headers().contains_key(http::header::RETRY_AFTER);
                        let _ = res.into_body().collect().await;
                        Some((status, well_formed))
                    };
                    match tokio::time::timeout(ANSWER_WITHIN, call).await {
                        Ok(Some((StatusCode::OK, _))) => {
                            counts.in_ok.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(Some((StatusCode::TOO_MANY_REQUESTS, true))) => {
                            counts.in_limited.fetch_add(1, Ordering::Relaxed)
                        }
                        Ok(_) => counts.other.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counts.hung.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }

    // Samples: (elapsed, requests answered so far, RSS).
    let answered = |c: &Counts| {
        c.out_ok.load(Ordering::Relaxed)
            + c.out_err.load(Ordering::Relaxed)
            + c.in_ok.load(Ordering::Relaxed)
            + c.in_limited.load(Ordering::Relaxed)
            + c.other.load(Ordering::Relaxed)
    };
    let t0 = Instant::now();
    let mut samples = vec![(Duration::ZERO, 0, rss_bytes())];
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    while t0.elapsed() < run {
        tick.tick().await;
        samples.push((t0.elapsed(), answered(&counts), rss_bytes()));
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        tokio::time::timeout(ANSWER_WITHIN + Duration::from_secs(5), w)
            .await
            .expect("workers stop")
            .unwrap();
    }

    let warm = samples.len() / 5;
    let base = samples[warm].2 as i64;
    let peak_growth = samples[warm..]
        .iter()
        .map(|s| s.2 as i64 - base)
        .max()
        .unwrap_or(0);
    let series: Vec<String> = samples
        .iter()
        .map(|(t, n, rss)| format!("{:.0}s/{n}/{:.1}MB", t.as_secs_f64(), *rss as f64 / 1e6))
        .collect();
    let (out_ok, out_err) = (
        counts.out_ok.load(Ordering::Relaxed),
        counts.out_err.load(Ordering::Relaxed),
    );
    println!(
        "soak {run:?}: {} requests answered ({out_ok} outbound 200, {out_err} outbound failed, \
         {} inbound 200, {} inbound 429, {} other, {} hung); upstream saw {} requests; RSS \
         after warm-up (sample {warm}, {:.1} MB) peak growth {:+.1} MB; series \
         (elapsed/answered/RSS): {}",
        answered(&counts),
        counts.in_ok.load(Ordering::Relaxed),
        counts.in_limited.load(Ordering::Relaxed),
        counts.other.load(Ordering::Relaxed),
        counts.hung.load(Ordering::Relaxed),
        server.stats().requests,
        base as f64 / 1e6,
        peak_growth as f64 / 1e6,
        series.join(" "),
    );

    assert_eq!(counts.hung.load(Ordering::Relaxed), 0, "a request hung");
    assert_eq!(
        counts.other.load(Ordering::Relaxed),
        0,
        "unexpected answers"
    );
    assert!(out_ok + out_err > 0 && counts.in_ok.load(Ordering::Relaxed) > 0);
    assert!(
        out_ok * 100 >= (out_ok + out_err) * 95,
        "retries absorb the 10 % 503s: {out_ok} / {}",
        out_ok + out_err
    );
    assert!(samples.len() >= 5, "{} samples", samples.len());
    assert!(
        peak_growth < BOUND,
        "RSS grew {peak_growth} bytes after warm-up"
    );
}
