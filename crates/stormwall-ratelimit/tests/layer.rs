//! The layer's modes and options, on a paused clock with an in-process inner service.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use stormwall_core::key::HeaderKey;
use stormwall_ratelimit::algorithm::Algorithm;
use stormwall_ratelimit::{
    Cost, Limit, Priority, Quota, RateLimitLayer, RateLimitWait, RateLimited, RejectReason,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Inner = tower::util::ServiceFn<
    fn(Request<Full<Bytes>>) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>,
>;

fn ok_service() -> Inner {
    fn ok(
        _: Request<Full<Bytes>>,
    ) -> std::future::Ready<Result<Response<Full<Bytes>>, Infallible>> {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
    }
    service_fn(ok as fn(_) -> _)
}

fn req() -> Request<Full<Bytes>> {
    Request::get("/").body(Full::new(Bytes::new())).unwrap()
}

fn q(n: u64) -> Quota {
    Quota::per_second(n).unwrap()
}

#[tokio::test(start_paused = true)]
async fn wait_mode_serves_by_priority_then_fifo() {
    let order = Arc::new(Mutex::new(Vec::new()));
    let layer = RateLimitLayer::new(Limit::global("g", q(1).with_burst(1).unwrap()))
        .wait(Duration::from_secs(60));
    let o = order.clone();
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(move |r: Request<Full<Bytes>>| {
                let o = o.clone();
                async move {
                    o.lock().push(r.uri().path().to_owned());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            }));
    // The first takes the only token; the rest queue.
    let first = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let mut tasks = Vec::new();
    for (name, prio) in [("/a", 0), ("/b", 0), ("/c", 5), ("/d", 0), ("/e", 9)] {
        let mut r = Request::get(name).body(Full::new(Bytes::new())).unwrap();
        r.extensions_mut().insert(Priority(prio));
        tasks.push(tokio::spawn(svc.clone().oneshot(r)));
        tokio::task::yield_now().await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Priority order (a later, higher-priority waiter overtakes /a, which was first in line),
    // FIFO within a priority.
    assert_eq!(*order.lock(), ["/", "/e", "/c", "/a", "/b", "/d"]);
}

#[tokio::test(start_paused = true)]
async fn full_queue_rejects_at_once_and_dropped_waiters_release_their_place() {
    let layer = RateLimitLayer::new(Limit::global("g", q(1).with_burst(1).unwrap()))
        .wait(Duration::from_secs(60))
        .queue_capacity(2);
    let stats = layer.clone();
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    svc.clone().oneshot(req()).await.unwrap();
    let w1 = tokio::spawn(svc.clone().oneshot(req()));
    let w2 = tokio::spawn(svc.clone().oneshot(req()));
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(stats.stats().waiting, 2);
    let full = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        full.extensions().get::<RateLimited>().unwrap().reason,
        RejectReason::QueueFull
    );
    // A waiter that gives up frees its place.
    w2.abort();
    let _ = w2.await;
    assert_eq!(stats.stats().waiting, 1);
    let w3 = tokio::spawn(svc.clone().oneshot(req()));
    let start = Instant::now();
    assert_eq!(w1.await.unwrap().unwrap().status(), StatusCode::OK);
    let r3 = w3.await.unwrap().unwrap();
    assert_eq!(r3.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        r3.extensions().get::<RateLimitWait>().unwrap().0,
        Duration::from_secs(2)
    );
    assert_eq!(stats.stats().queue_full, 1);
}

#[tokio::test(start_paused = true)]
async fn wait_longer_than_max_wait_is_rejected_with_the_true_retry_after() {
    let layer = RateLimitLayer::new(Limit::global("g", q(1).with_burst(1).unwrap()))
        .wait(Duration::from_millis(500));
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    svc.clone().oneshot(req()).await.unwrap();
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let limited = res.extensions().get::<RateLimited>().unwrap();
    assert_eq!(limited.reason, RejectReason::WaitTooLong);
    assert_eq!(limited.retry_after, Duration::from_secs(1));
    assert_eq!(res.headers()["retry-after"], "1");
}

#[tokio::test(start_paused = true)]
async fn on_wait_hook_and_cost() {
    let waits = Arc::new(AtomicU64::new(0));
    let w = waits.clone();
    let layer = RateLimitLayer::new(Limit::global("g", q(10)))
        .wait(Duration::from_secs(5))
        .on_wait(move |e| {
            assert_eq!(&*e.limit, "g");
            w.fetch_add(
                u64::try_from(e.waited.as_millis()).unwrap(),
                Ordering::SeqCst,
            );
        });
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let mut big = req();
    big.extensions_mut().insert(Cost(10));
    svc.clone().oneshot(big).await.unwrap();
    let mut two = req();
    two.extensions_mut().insert(Cost(2));
    svc.clone().oneshot(two).await.unwrap();
    assert_eq!(waits.load(Ordering::SeqCst), 200);
    // A cost above the burst can never be admitted: rejected at once, Retry-After omitted.
    let mut huge = req();
    huge.extensions_mut().insert(Cost(11));
    let res = svc.clone().oneshot(huge).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_none());
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_counts_but_admits() {
    let layer = RateLimitLayer::new(Limit::global("g", q(2))).shadow(true);
    let stats = layer.clone();
    let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
    for _ in 0..5 {
        let res = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let s = stats.stats();
    assert_eq!((s.admitted, s.shadow_rejected, s.rejected), (5, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_resource_exhausted() {
    let layer = RateLimitLayer::new(Limit::global("g", q(1)));
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let grpc = || {
        Request::post("/echo.Echo/Unary")
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    svc.clone().oneshot(grpc()).await.unwrap();
    let res = svc.clone().oneshot(grpc()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1000");
    assert_eq!(res.headers()["content-type"], "application/grpc");
}

#[tokio::test(start_paused = true)]
async fn tiers_runtime_changes_and_custom_rejection() {
    let limit = Limit::new("per-key", HeaderKey::new("x-api-key"), q(1)).tiers(|r| {
        (r.headers().get("x-api-key")? == "premium").then(|| Quota::per_second(5).unwrap())
    });
    let handle = limit.quota_handle();
    let layer = RateLimitLayer::new(limit).on_reject(|r| {
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .body(Bytes::from(format!(
                "slow down {}ms",
                r.retry_after.as_millis()
            )))
            .unwrap()
    });
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let with_key = |k: &str| {
        Request::get("/")
            .header("x-api-key", k)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let admitted = |k: &'static str| {
        let svc = svc.clone();
        async move {
            let mut n = 0;
            for _ in 0..10 {
                if svc.clone().oneshot(with_key(k)).await.unwrap().status() == StatusCode::OK {
                    n += 1;
                }
            }
            n
        }
    };
    assert_eq!(admitted("free").await, 1);
    assert_eq!(admitted("premium").await, 5);
    handle.set(q(3));
    assert_eq!(admitted("other").await, 3);
    // "free" spent its one unit under 1/s; under 3/s (burst 3, 333 ms per unit) the same
    // state frees the next unit 333 ms later: Retry-After rounds it up.
    let res = svc.clone().oneshot(with_key("free")).await.unwrap();
    assert_eq!(res.headers()["retry-after"], "1");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "slow down 333ms");
}

#[tokio::test(start_paused = true)]
async fn leaky_bucket_shapes_in_reject_mode() {
    let layer = RateLimitLayer::new(
        Limit::global("g", q(10).with_burst(3).unwrap()).algorithm(Algorithm::LeakyBucket),
    );
    let svc = ServiceBuilder::new().layer(layer).service(ok_service());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(req()).await.unwrap();
            (res.status(), Instant::now() - start)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort();
    // Three pass, released 100 ms apart; the fourth finds the queue full.
    assert_eq!(
        out,
        [
            (StatusCode::OK, Duration::ZERO),
            (StatusCode::OK, Duration::from_millis(100)),
            (StatusCode::OK, Duration::from_millis(200)),
            (StatusCode::TOO_MANY_REQUESTS, Duration::ZERO),
        ]
    );
}

/// The TSC clock (real time, not paused) on a global limit, with the cached `RateLimit-Policy`
/// following a run-time quota change. 5 per hour: no unit refills while the test runs.
#[tokio::test]
async fn tsc_clock_global_limit_and_policy_follows_quota_changes() {
    use stormwall_ratelimit::Clock;
    use tower::Layer as _;
    let limit = Limit::global("g", Quota::per_hour(5).unwrap());
    let handle = limit.quota_handle();
    let svc = RateLimitLayer::new(limit)
        .clock(Clock::tsc())
        .layer(ok_service());
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let res = svc.clone().oneshot(req()).await.unwrap();
        if res.status() == StatusCode::OK {
            assert_eq!(res.headers()["ratelimit-policy"], "\"g\";q=5;w=3600");
        }
        statuses.push(res.status());
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!((ok, statuses.len() - ok), (5, 3));
    // A bigger quota: the spent state stays, the policy shows the new quota at once.
    // Spent: 5 × 720 s. Now 360 s per unit, burst 12 (4,320 s): one more fits, then one left.
    handle.set(Quota::per_hour(10).unwrap().with_burst(12).unwrap());
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["ratelimit-policy"], "\"g\";q=10;w=3600");
    // (t is 3,960 s minus the real time the test took, rounded up: not asserted exactly.)
    let status = res.headers()["ratelimit"].to_str().unwrap();
    assert!(status.starts_with("\"g\";r=1;t=39"), "{status}");
}

/// The decision counters reach the recorder installed when the layer was built, by outcome,
/// and agree with the stats handle: on the fast global path, the keyed path and in shadow mode.
#[tokio::test(start_paused = true)]
async fn decision_metrics_match_the_stats() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime: every poll happens on this thread, under the recorder.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let global = RateLimitLayer::new(Limit::global("g", q(2))).draft_headers(false);
    let keyed = RateLimitLayer::new(Limit::new("per-user", HeaderKey::new("x-user"), q(1)));
    let shadow = RateLimitLayer::new(Limit::global("s", q(1))).shadow(true);
    let mut stats = Vec::new();
    for (layer, n) in [(global, 5), (keyed, 4), (shadow, 3)] {
        stats.push(layer.clone());
        let mut svc = ServiceBuilder::new().layer(layer).service(ok_service());
        for i in 0..n {
            let req = Request::get("/")
                .header("x-user", if i % 2 == 0 { "a" } else { "b" })
                .body(Full::new(Bytes::new()))
                .unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
        }
    }

    let mut by_outcome = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != "stormwall_ratelimit_decisions_total" {
            continue;
        }
        let outcome = key
            .key()
            .labels()
            .find(|l| l.key() == "outcome")
            .map(|l| l.value().to_owned())
            .unwrap();
        let DebugValue::Counter(n) = value else {
            panic!("{outcome} is not a counter");
        };
        by_outcome.insert(outcome, n);
    }
    let sum = |f: fn(&stormwall_ratelimit::RateLimitStats) -> u64| {
        stats.iter().map(|l| f(&l.stats())).sum::<u64>()
    };
    // global: 2 admitted, 3 rejected; keyed: 2 admitted (a, b), 2 rejected; shadow: 3
    // admitted, 2 of them counted as shadow rejections.
    assert_eq!(sum(|s| s.admitted), 7);
    assert_eq!(sum(|s| s.rejected), 5);
    assert_eq!(sum(|s| s.shadow_rejected), 2);
    assert_eq!(by_outcome.get("admitted"), Some(&7), "{by_outcome:?}");
    assert_eq!(by_outcome.get("rejected"), Some(&5), "{by_outcome:?}");
    assert_eq!(
        by_outcome.get("shadow_rejected"),
        Some(&2),
        "{by_outcome:?}"
    );
}
