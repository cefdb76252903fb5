//! Scenario 7 — cancellation: callers dropped at random points (seeded, `tokio::time::timeout`
//! with a random bound, or `abort`) through every layer: the coalescing leader and its
//! waiters, the retry backoff, the rate-limit wait queue, the cache's revalidation (inline and
//! in the background).
//!
//! Bounds: no leaked tasks (the runtime's alive-task count returns to its baseline once the
//! stacks and clients are dropped, which also means every upstream connection closed); no
//! leaked permits or slots (coalesce in-flight keys and waiters return to 0; the rate limiter's
//! `waiting` returns to 0 and its queue then accepts `capacity` new waiters without a
//! `QueueFull`); stats consistent (retry attempts reach the upstream at most once each; the
//! fault server holds no request). Real clock, real sockets; only counts are asserted.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stormwall::OutboundStack;
use stormwall::cache::CacheLayer;
use stormwall::coalesce::CoalesceLayer;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use stormwall::retry::{Backoff, RetryBudget, RetryLayer};
use stormwall_tests::fault::{FaultServer, Reply, SplitMix64};
use tokio::time::timeout;
use tower::{Layer, ServiceExt};

use crate::extended;

const BOUND: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, stormwall::body::Body>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(url: String) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).unwrap()
}

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits (bounded) until the runtime's alive tasks are back to `baseline`; returns the count.
async fn settle(baseline: usize) -> usize {
    let start = Instant::now();
    while alive() > baseline && start.elapsed() < BOUND {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    alive()
}

/// Runs `fut`, dropped after `delay` unless it finished first (`Some`).
async fn maybe_dropped<F: Future>(fut: F, delay: Duration) -> Option<F::Output> {
    timeout(delay, fut).await.ok()
}

fn rounds() -> u64 {
    if extended() { 100 } else { 10 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_leader_and_waiters_dropped_at_random() {
    let server = FaultServer::builder().seed(7).start().await;
    let baseline = alive();
    let mut rng = SplitMix64::new(0xC0A1);
    let stack = OutboundStack::new().coalesce(CoalesceLayer::new());
    let svc = stack.layer(client());
    let stats = stack.coalesce_layer().unwrap().stats();
    let (mut finished, mut dropped, mut handovers, mut all_gone) = (0u64, 0u64, 0u64, 0u64);
    let mut unheld_before_release = 0u64;
    for round in 0..rounds() {
        // Odd rounds: every caller is dropped before the upstream answers (the call must be
        // cancelled); even rounds: random drop points around the release.
        let max_delay = if round % 2 == 1 { 60 } else { 150 };
        server.hang();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let delay = Duration::from_millis(rng.below(max_delay));
            let fut = svc.clone().oneshot(get(server.url(&format!("/c/{round}"))));
            tasks.push(tokio::spawn(maybe_dropped(fut, delay)));
            // The first caller leads; the others join at random offsets.
            tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
        }
        tokio::time::sleep(Duration::from_millis(75)).await;
        if round % 2 == 1
            && timeout(
                Duration::from_secs(2),
                server.wait_until(|s| s.hanging == 0),
            )
            .await
            .is_ok()
        {
            unheld_before_release += 1;
        }
        server.release();
        let mut outcomes = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Some(res) => {
                    assert_eq!(res.expect("released upstream answers").status(), 200);
                    finished += 1;
                    outcomes.push(true);
                }
                None => {
                    dropped += 1;
                    outcomes.push(false);
                }
            }
        }
        if !outcomes[0] && outcomes.iter().any(|o| *o) {
            handovers += 1;
        }
        if outcomes.iter().all(|o| !o) {
            all_gone += 1;
        }
        let s = stats.snapshot();
        assert_eq!(
            (s.in_flight_keys, s.waiters),
            (0, 0),
            "round {round}: {s:?}"
        );
    }
    let held = timeout(BOUND, server.wait_until(|s| s.hanging == 0))
        .await
        .expect("no request left hanging");
    let s = stats.snapshot();
    drop((svc, stack));
    let left = settle(baseline).await;
    println!(
        "cancellation/coalesce: {} rounds × 20 callers, {finished} finished, {dropped} dropped; \
         rounds where the leader was dropped and a waiter took over {handovers}, rounds where \
         every caller was dropped {all_gone} (upstream request released by the drop before \
         the fault server let go in {unheld_before_release} of them); coalesce {s:?}; \
         upstream {held:?}; alive tasks {left} (baseline {baseline})",
        rounds()
    );
    assert!(finished > 0 && dropped > 0, "both paths exercised");
    assert!(handovers > 0, "a dropped leader was never taken over");
    assert!(all_gone > 0, "no round dropped every caller");
    // Every round that lost all its callers cancelled its call (a round may cancel more than
    // one: callers that join after all earlier ones left start a fresh call).
    assert!(
        s.cancelled >= all_gone,
        "{s:?}: {all_gone} rounds lost every caller"
    );
    assert_eq!(
        s.hits + s.misses,
        20 * rounds(),
        "every caller accounted for: {s:?}"
    );
    assert!(
        held.requests <= s.misses,
        "one upstream request per call at most"
    );
    assert_eq!(
        unheld_before_release,
        rounds() / 2,
        "when every caller is gone the upstream request is dropped (its connection closes)"
    );
    assert!(left <= baseline, "tasks leaked: {left} alive vs {baseline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_backoff_dropped_at_random() {
    let server = FaultServer::builder().seed(8).start().await;
    server.fail(1.0, StatusCode::SERVICE_UNAVAILABLE);
    let baseline = alive();
    let mut rng = SplitMix64::new(0xBAC0);
    let retry = RetryLayer::new()
        .max_attempts(4)
        .backoff(
            Backoff::exponential(Duration::from_millis(40), Duration::from_millis(300)).unwrap(),
        )
        .budget(RetryBudget::unlimited());
    let stack = OutboundStack::new().retry(retry);
    let svc = stack.layer(client());
    let callers = 5 * rounds();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let delay = Duration::from_millis(rng.below(400));
        let fut = svc.clone().oneshot(get(server.url(&format!("/r/{i}"))));
        tasks.push(tokio::spawn(maybe_dropped(fut, delay)));
    }
    let mut finished = 0;
    for t in tasks {
        if let Some(res) = t.await.unwrap() {
            assert_eq!(res.expect("a 503 after the attempts").status(), 503);
            finished += 1;
        }
    }
    let rs = stack.retry_layer().unwrap().stats();
    let up = server.stats();
    drop((svc, stack));
    let left = settle(baseline).await;
    println!(
        "cancellation/retry: {callers} callers, {finished} finished, {} dropped; retry {rs:?}; \
         upstream {} requests; alive tasks {left} (baseline {baseline})",
        callers - finished,
        up.requests
    );
    assert_eq!(rs.requests, callers);
    assert!(rs.attempts <= 4 * callers && rs.attempts >= callers);
    assert!(up.requests <= rs.attempts, "{up:?} vs {rs:?}");
    assert!(finished > 0 && finished < callers, "both paths exercised");
    assert!(left <= baseline, "tasks leaked: {left} alive vs {baseline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_waiters_dropped_at_random() {
    const CAP: usize = 16;
    let server = FaultServer::builder().seed(9).start().await;
    let baseline = alive();
    let mut rng = SplitMix64::new(0x4A17);
    let quota = Quota::per_second(5).and_then(|q| q.with_burst(1)).unwrap();
    let limit = RateLimitLayer::new(Limit::global("cancel", quota))
        .wait(Duration::from_secs(30))
        .queue_capacity(CAP);
    let stack = OutboundStack::new().rate_limit(limit.clone());
    let svc = stack.layer(client());

    // Phase 1: more callers than the queue holds, dropped at random.
    let callers = 40;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let delay = Duration::from_millis(rng.below(600));
        let fut = svc.clone().oneshot(get(server.url(&format!("/w/{i}"))));
        tasks.push(tokio::spawn(maybe_dropped(fut, delay)));
    }
    let (mut admitted, mut rejected, mut dropped) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Some(Ok(_)) => admitted += 1,
            Some(Err(e)) => {
                assert!(e.is_rate_limited(), "{e}");
                rejected += 1;
            }
            None => dropped += 1,
        }
    }
    let after_drop = limit.stats();
    assert_eq!(after_drop.waiting, 0, "{after_drop:?}");

    // Phase 2: the queue takes `CAP` new waiters (none turned away), then they are aborted.
    let mut waiters = Vec::new();
    for i in 0..CAP {
        let fut = svc.clone().oneshot(get(server.url(&format!("/w2/{i}"))));
        waiters.push(tokio::spawn(fut));
    }
    let start = Instant::now();
    let mut full = limit.stats();
    while full.waiting + ((full.admitted - after_drop.admitted) as usize) < CAP
        && start.elapsed() < BOUND
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        full = limit.stats();
    }
    for w in &waiters {
        w.abort();
    }
    for w in waiters {
        let _ = w.await;
    }
    let end = limit.stats();
    // Nothing the dropped waiters held delays the next caller: it is admitted.
    let t = Instant::now();
    let fresh = timeout(BOUND, svc.clone().oneshot(get(server.url("/w3"))))
        .await
        .expect("bounded");
    let fresh_wait = t.elapsed();
    assert!(
        fresh.is_ok(),
        "a fresh caller after the cancellations was turned away"
    );
    let up = server.stats();
    drop((svc, stack, limit));
    let left = settle(baseline).await;
    println!(
        "cancellation/ratelimit wait: phase 1 {callers} callers → {admitted} admitted, \
         {rejected} rejected, {dropped} dropped, waiting after {}; phase 2 {CAP} new waiters → \
         {} waiting + {} admitted, queue-full {} → {}; after abort waiting {}; a fresh caller \
         then admitted after {fresh_wait:?}; upstream {} requests; alive tasks {left} \
         (baseline {baseline})",
        after_drop.waiting,
        full.waiting,
        full.admitted - after_drop.admitted,
        after_drop.queue_full,
        full.queue_full,
        end.waiting,
        up.requests,
    );
    assert!(dropped > 0, "some waiters were dropped");
    assert_eq!(
        full.waiting + (full.admitted - after_drop.admitted) as usize,
        CAP,
        "{full:?}"
    );
    assert_eq!(full.queue_full, after_drop.queue_full, "{full:?}");
    assert_eq!(end.waiting, 0, "{end:?}");
    assert!(left <= baseline, "tasks leaked: {left} alive vs {baseline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_revalidation_dropped_at_random() {
    let server = FaultServer::builder().seed(10).start().await;
    server.latency(Duration::from_millis(40));
    let baseline = alive();
    let mut rng = SplitMix64::new(0xCAC8);
    let stack = OutboundStack::new().cache(CacheLayer::private());
    let svc = stack.layer(client());
    let mut finished = 0u64;
    let mut dropped = 0u64;
    let callers = 3 * rounds();
    for (path, cc) in [
        ("/inline", "max-age=0, must-revalidate"),
        ("/background", "max-age=0, stale-while-revalidate=60"),
    ] {
        server.respond_with(
            Reply::new(StatusCode::OK)
                .header("cache-control", cc)
                .header("etag", "\"v1\"")
                .body("cached"),
        );
        let prime = svc.clone().oneshot(get(server.url(path))).await.unwrap();
        assert_eq!(prime.status(), 200);
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let delay = Duration::from_millis(rng.below(80));
            let fut = svc.clone().oneshot(get(server.url(path)));
            tasks.push(tokio::spawn(maybe_dropped(
                async move {
                    let res = fut.await.expect("answers");
                    res.into_body().collect().await.unwrap().to_bytes()
                },
                delay,
            )));
            tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
        }
        for t in tasks {
            match t.await.unwrap() {
                Some(body) => {
                    assert_eq!(&body[..], b"cached");
                    finished += 1;
                }
                None => dropped += 1,
            }
        }
        // After the storm of cancellations the entry still serves.
        let res = timeout(BOUND, svc.clone().oneshot(get(server.url(path))))
            .await
            .expect("bounded")
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let cs = stack.cache_layer().unwrap().handle().stats();
    drop((svc, stack));
    let left = settle(baseline).await;
    println!(
        "cancellation/cache revalidation: {} callers, {finished} finished, {dropped} dropped; \
         cache {cs:?}; alive tasks {left} (baseline {baseline})",
        2 * callers
    );
    assert!(finished > 0 && dropped > 0, "both paths exercised");
    assert!(cs.revalidated_modified + cs.revalidated_not_modified + cs.stale_served > 0);
    assert!(left <= baseline, "tasks leaked: {left} alive vs {baseline}");
}

/// Everything at once: the standard outbound stack (cache, coalescing, retry, breaker, a
/// waiting rate limit, attempt timeout) over a flaky upstream, callers dropped at random.
/// Afterwards no slot is held anywhere, and once the upstream heals a request gets through
/// (a dropped half-open probe does not wedge the breaker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_stack_callers_dropped_at_random() {
    use stormwall::circuit::{BreakerConfig, CircuitBreakerLayer, Window};

    let server = FaultServer::builder().seed(11).start().await;
    server.latency(Duration::from_millis(20));
    server.fail(0.6, StatusCode::SERVICE_UNAVAILABLE);
    let baseline = alive();
    let mut rng = SplitMix64::new(0x57AC);
    let quota = Quota::per_second(200)
        .and_then(|q| q.with_burst(20))
        .unwrap();
    let breaker = CircuitBreakerLayer::new(
        "cancel-all",
        BreakerConfig::new()
            .window(Window::Count(20))
            .minimum_calls(10)
            .failure_rate_threshold(50.0)
            .wait_duration(Duration::from_millis(200))
            .permitted_calls_in_half_open(2),
    )
    .unwrap();
    let stack = OutboundStack::standard("cancel-all")
        .circuit_breaker(breaker)
        .rate_limit(
            RateLimitLayer::new(Limit::global("cancel-all", quota))
                .wait(Duration::from_secs(5))
                .queue_capacity(64),
        );
    let svc = stack.layer(client());
    let callers = 20 * rounds();
    let mut tasks = Vec::new();
    for i in 0..callers {
        let delay = Duration::from_millis(rng.below(300));
        let path = format!("/all/{}", i % 10);
        let fut = svc.clone().oneshot(get(server.url(&path)));
        tasks.push(tokio::spawn(maybe_dropped(fut, delay)));
        tokio::time::sleep(Duration::from_millis(rng.below(4))).await;
    }
    let (mut finished, mut dropped) = (0u64, 0u64);
    for t in tasks {
        match t.await.unwrap() {
            Some(_) => finished += 1,
            None => dropped += 1,
        }
    }
    let co = stack.coalesce_layer().unwrap().stats().snapshot();
    let rl = stack.rate_limit_layer().unwrap().stats();
    assert_eq!((co.in_flight_keys, co.waiters), (0, 0), "{co:?}");
    assert_eq!(rl.waiting, 0, "{rl:?}");

    // Heal: within the bound a request gets through the whole stack.
    server.heal();
    let start = Instant::now();
    let mut recovered = None;
    while start.elapsed() < BOUND {
        if let Ok(res) = svc.clone().oneshot(get(server.url("/all/after"))).await
            && res.status() == StatusCode::OK
        {
            recovered = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = timeout(BOUND, server.wait_until(|s| s.hanging == 0))
        .await
        .expect("nothing held");
    let cb = stack
        .circuit_layer()
        .unwrap()
        .breaker()
        .snapshot(stormwall::core::time::Instant::now());
    drop((svc, stack));
    let left = settle(baseline).await;
    println!(
        "cancellation/standard stack: {callers} callers, {finished} finished, {dropped} dropped; \
         coalesce {co:?}; ratelimit {rl:?}; breaker state {:?} ({} rejected, {} transitions); \
         recovered after the heal in {recovered:?}; upstream {held:?}; alive tasks {left} \
         (baseline {baseline})",
        cb.state, cb.rejected, cb.transitions
    );
    assert!(finished > 0 && dropped > 0, "both paths exercised");
    assert!(
        recovered.is_some(),
        "the stack stayed wedged after the heal"
    );
    assert!(left <= baseline, "tasks leaked: {left} alive vs {baseline}");
}
