//! Outbound: a wait-mode limiter in front of a real loopback upstream that enforces its own
//! quota and answers 429 beyond it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;
use stormwall_core::key::AuthorityKey;
use stormwall_ratelimit::{Limit, Quota, RateLimitLayer, RateLimitWait};
use stormwall_tests::http::TestServer;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(b"")));
    *res.status_mut() = code;
    res
}

/// Sends `n` concurrent requests through `svc`; returns the statuses.
async fn burst<S>(svc: S, url: &str, n: usize) -> Vec<StatusCode>
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<stormwall_core::response::ResponseBody<hyper::body::Incoming>>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug,
{
    let mut tasks = Vec::new();
    for _ in 0..n {
        let svc = svc.clone();
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        tasks.push(tokio::spawn(async move {
            let res = svc.oneshot(req).await.unwrap();
            let _ = res.extensions().get::<RateLimitWait>();
            res.status()
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The upstream allows 10 requests/s (token bucket, burst 10, on the paused clock) and
/// answers 429 beyond it.
#[tokio::test(start_paused = true)]
async fn hundred_concurrent_requests_wait_their_turn_no_upstream_429() {
    let rejected = Arc::new(AtomicU64::new(0));
    let bucket = Arc::new(Mutex::new(None::<Instant>)); // GCRA TAT
    let (r, b) = (rejected.clone(), bucket.clone());
    let upstream = TestServer::start(move |_req| {
        let (r, b) = (r.clone(), b.clone());
        async move {
            let now = Instant::now();
            let t = Duration::from_millis(100);
            let mut tat = b.lock();
            let base = tat.map_or(now, |x| x.max(now));
            if base + t <= now + t * 10 {
                *tat = Some(base + t);
                status(StatusCode::OK)
            } else {
                r.fetch_add(1, Ordering::SeqCst);
                status(StatusCode::TOO_MANY_REQUESTS)
            }
        }
    })
    .await;

    let layer = RateLimitLayer::new(Limit::new(
        "partner",
        AuthorityKey,
        Quota::per_second(10).unwrap().with_burst(1).unwrap(),
    ))
    .wait(Duration::from_secs(60))
    .queue_capacity(200)
    .headers_on_admitted(false);
    let stats = layer.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(stormwall_tests::http::client());

    let start = Instant::now();
    let statuses = burst(svc, &upstream.url("/"), 100).await;
    let elapsed = start.elapsed();
    eprintln!("wait mode: 100 requests in {elapsed:?} (paused clock)");

    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        100
    );
    assert_eq!(rejected.load(Ordering::SeqCst), 0);
    assert_eq!(upstream.calls(), 100);
    // 100 requests at 10/s with a burst of 1: the last leaves at 9.9 s (paused clock).
    assert!(
        elapsed >= Duration::from_millis(9_900) && elapsed < Duration::from_secs(11),
        "{elapsed:?}"
    );
    let s = stats.stats();
    assert_eq!((s.admitted, s.rejected, s.waited), (100, 0, 99));
}

/// The upstream's quota (10 per aligned second) is not configured on the client at all: the
/// client learns it from `RateLimit` headers (and from its 429s, if any).
#[tokio::test(start_paused = true)]
async fn upstream_advertised_quota_is_respected_without_configuring_it() {
    let rejected = Arc::new(AtomicU64::new(0));
    let window = Arc::new(Mutex::new((0u64, 0u64))); // (window index, count)
    let epoch = Instant::now();
    let (r, w) = (rejected.clone(), window.clone());
    let upstream = TestServer::start(move |_req| {
        let (r, w) = (r.clone(), w.clone());
        async move {
            let el = epoch.elapsed();
            let idx = el.as_secs();
            let to_reset = Duration::from_secs(idx + 1) - el;
            let mut g = w.lock();
            if g.0 != idx {
                *g = (idx, 0);
            }
            let ok = g.1 < 10;
            if ok {
                g.1 += 1;
            }
            let remaining = 10 - g.1;
            let secs = to_reset.as_secs() + u64::from(to_reset.subsec_nanos() > 0);
            let mut res = if ok {
                status(StatusCode::OK)
            } else {
                r.fetch_add(1, Ordering::SeqCst);
                let mut res = status(StatusCode::TOO_MANY_REQUESTS);
                res.headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
                res
            };
            res.headers_mut().insert(
                "ratelimit",
                format!(r#""default";r={remaining};t={secs}"#)
                    .parse()
                    .unwrap(),
            );
            res
        }
    })
    .await;

    // A generous local limit: the real one comes from the upstream's headers.
    let layer = RateLimitLayer::new(Limit::new(
        "partner",
        AuthorityKey,
        Quota::per_second(1_000_000).unwrap(),
    ))
    .wait(Duration::from_secs(60))
    .queue_capacity(200)
    .headers_on_admitted(false)
    .adaptive(true, true);
    let stats = layer.clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(stormwall_tests::http::client());

    let start = Instant::now();
    let statuses = burst(svc, &upstream.url("/"), 100).await;
    let elapsed = start.elapsed();
    eprintln!("learned quota: 100 requests in {elapsed:?} (paused clock)");
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        100
    );
    assert_eq!(
        rejected.load(Ordering::SeqCst),
        0,
        "no request sent past the advertised quota"
    );
    assert_eq!(upstream.calls(), 100);
    // 10 windows of 10 requests; a window's unused tail may be lost to the rounded-up reset.
    assert!(
        elapsed >= Duration::from_secs(9) && elapsed < Duration::from_secs(25),
        "{elapsed:?}"
    );
    assert!(stats.stats().pushbacks >= 9, "{:?}", stats.stats());
}

/// Reject mode in front of an upstream that answers 429 + Retry-After: after the first 429
/// the key is paused, and requests are rejected locally (not sent) until the reset.
#[tokio::test(start_paused = true)]
async fn upstream_429_pauses_the_key() {
    let upstream = TestServer::start(|_req| async {
        let mut res = status(StatusCode::TOO_MANY_REQUESTS);
        res.headers_mut()
            .insert("retry-after", "5".parse().unwrap());
        res
    })
    .await;
    let layer = RateLimitLayer::new(Limit::new(
        "partner",
        AuthorityKey,
        Quota::per_second(1000).unwrap(),
    ))
    .adaptive(true, false);
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(stormwall_tests::http::client());
    let url = upstream.url("/");
    let get = || Request::get(&url).body(Full::new(Bytes::new())).unwrap();
    let first = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..5 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let limited = res
            .extensions()
            .get::<stormwall_ratelimit::RateLimited>()
            .expect("rejected locally");
        assert!(limited.retry_after <= Duration::from_secs(5));
    }
    assert_eq!(upstream.calls(), 1, "paused: nothing sent");
    tokio::time::advance(Duration::from_secs(5)).await;
    let _ = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(upstream.calls(), 2, "resumed after the reset");
}
