//! Scenario 2 — overload: 10× the inbound quota (per-IP GCRA, 50/s with a burst of 50,
//! through `InboundStack` on a real axum server on loopback) for a period (3 s; extended
//! 30 s).
//!
//! Bounds: admitted ≤ burst + rate · t, where t is the client-side span from the first
//! request sent to the last answer received (every server decision lies inside it) — the
//! exact GCRA bound; every rejection is a well-formed `429` (`Retry-After` and the draft-10
//! `RateLimit` / `RateLimit-Policy` fields parse with the core parsers, `r=0`); admitted
//! latency is printed next to a baseline run below the quota and only bounded generously
//! (p99 < 1 s); resident memory grows by less than 50 MB.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use stormwall::InboundStack;
use stormwall::core::headers::{RateLimitPolicy, RateLimitStatus, RetryAfter};
use stormwall::core::key::PeerIp;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::extended;

const RATE: u64 = 50;
const BURST: u64 = 50;

async fn start(stack: InboundStack) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route("/", get(|| async { "admitted" }))
        .layer(stack);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, task)
}

fn stack() -> InboundStack {
    let quota = Quota::per_second(RATE)
        .and_then(|q| q.with_burst(BURST))
        .unwrap();
    InboundStack::new().rate_limit(RateLimitLayer::new(Limit::new(
        "per-ip",
        PeerIp::new(),
        quota,
    )))
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[derive(Debug, Default)]
struct Tally {
    admitted: Vec<Duration>,
    rejected: u64,
    malformed: Vec<String>,
    other: Vec<StatusCode>,
}

/// Sends `rps` requests per second for `period` from `workers` paced tasks.
async fn drive(addr: SocketAddr, rps: u64, period: Duration, workers: u64) -> (Tally, Duration) {
    let client = stormwall_tests::http::client();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let per_worker = Duration::from_secs_f64(workers as f64 / rps as f64);
    let total = (rps as f64 * period.as_secs_f64()) as u64;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, tally, sent) = (client.clone(), tally.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_worker);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while sent.fetch_add(1, Ordering::SeqCst) < total {
                tick.tick().await;
                let req = Request::get(format!("http://{addr}/"))
                    .body(Full::<Bytes>::default())
                    .unwrap();
                let start = Instant::now();
                let res = client.request(req).await.expect("loopback request");
                let (parts, body) = res.into_parts();
                let _ = body.collect().await;
                let took = start.elapsed();
                let mut t = tally.lock().await;
                match parts.status {
                    StatusCode::OK => t.admitted.push(took),
                    StatusCode::TOO_MANY_REQUESTS => {
                        t.rejected += 1;
                        let h = &parts.headers;
                        let ra = RetryAfter::from_headers(h).map(|r| r.delay(SystemTime::now()));
                        let status = RateLimitStatus::parse_all(h);
                        let policy = RateLimitPolicy::parse_all(h);
                        let ok = ra.is_some_and(|d| d <= Duration::from_secs(2))
                            && status.len() == 1
                            && status[0].remaining == 0
                            && policy.len() == 1
                            && policy[0].name == status[0].name;
                        if !ok && t.malformed.len() < 5 {
                            t.malformed.push(format!("{h:?}"));
                        }
                    }
                    s => t.other.push(s),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let span = t0.elapsed();
    let tally = std::mem::take(&mut *tally.lock().await);
    (tally, span)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_admits_exactly_the_quota_with_well_formed_429s() {
    let period = if extended() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(3)
    };

    // Baseline: a fresh server, half the quota, 1 s.
    let (base_addr, base_task) = start(stack()).await;
    let (mut base, _) = drive(base_addr, RATE / 2, Duration::from_secs(1), 5).await;
    base_task.abort();
    assert_eq!(base.rejected, 0, "the baseline stays under the quota");
    base.admitted.sort();

    let rss0 = rss_bytes();
    let inbound = stack();
    let layer = inbound.rate_limit_layer().unwrap().clone();
    let (addr, task) = start(inbound).await;
    let (mut t, span) = drive(addr, RATE * 10, period, 40).await;
    task.abort();
    let rss1 = rss_bytes();
    t.admitted.sort();

    let admitted = t.admitted.len() as u64;
    let sent = admitted + t.rejected + t.other.len() as u64;
    let bound = BURST as f64 + RATE as f64 * span.as_secs_f64();
    let offered = sent as f64 / span.as_secs_f64();
    let stats = layer.stats();
    let growth = rss1 as i64 - rss0 as i64;
    println!(
        "overload {period:?} at 10× ({} req/s asked, {offered:.0} req/s achieved over {span:?}): \
         {sent} sent, {admitted} admitted (bound burst + rate·t = {bound:.1}), {} rejected \
         (all well-formed 429: {}); layer stats admitted {} rejected {}; admitted latency \
         p50 {:?} p99 {:?} vs baseline p50 {:?} p99 {:?}; RSS {:.1} MB → {:.1} MB ({:+.1} MB)",
        RATE * 10,
        t.rejected,
        t.malformed.is_empty(),
        stats.admitted,
        stats.rejected,
        pct(&t.admitted, 0.5),
        pct(&t.admitted, 0.99),
        pct(&base.admitted, 0.5),
        pct(&base.admitted, 0.99),
        rss0 as f64 / 1e6,
        rss1 as f64 / 1e6,
        growth as f64 / 1e6,
    );

    assert!(t.other.is_empty(), "unexpected statuses: {:?}", t.other);
    assert!(t.malformed.is_empty(), "malformed 429s: {:?}", t.malformed);
    assert!(
        offered >= (RATE * 3) as f64,
        "the load generator reached only {offered:.0} req/s"
    );
    assert!(
        admitted as f64 <= bound,
        "admitted {admitted} > burst + rate·t = {bound:.1}"
    );
    // GCRA admits steadily under saturation: not far below the bound either.
    assert!(
        admitted as f64 >= bound * 0.5,
        "admitted {admitted} ≪ {bound:.1}"
    );
    assert_eq!(stats.admitted, admitted);
    assert_eq!(stats.rejected, t.rejected);
    assert!(pct(&t.admitted, 0.99) < Duration::from_secs(1));
    assert!(growth < 50_000_000, "RSS grew by {growth} bytes");
}
