//! Integration tests against a real hyper upstream on loopback (real clock; asserts counts,
//! never timings).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stormwall_retry::{Backoff, RetryBody, RetryBudget, RetryLayer};
use stormwall_tests::http::{TestServer, ok};
use tower::{Layer, Service, ServiceExt};

fn extended() -> bool {
    std::env::var("STORMWALL_EXTENDED").is_ok_and(|v| v == "1")
}

fn client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

fn status(code: u16) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::from_static(b"status")))
        .unwrap()
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// Sends `total` GETs with `concurrency` tasks; returns how many got a 200.
async fn flood<S>(svc: S, url: String, total: usize, concurrency: usize) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
{
    let per_task = total / concurrency;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let mut svc = svc.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let mut ok = 0;
            for _ in 0..per_task {
                let res = svc.ready().await.unwrap().call(get(&url)).await.unwrap();
                let status = res.status();
                let _ = res.into_body().collect().await;
                ok += usize::from(status == StatusCode::OK);
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += r.unwrap();
    }
    ok
}

fn fast() -> RetryLayer {
    RetryLayer::new().backoff(Backoff::none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_outage_with_default_budget_stays_below_1_2() {
    let server = TestServer::start(|_req| async { status(503) }).await;
    let n = if extended() { 100_000 } else { 10_000 };
    let layer = fast(); // default budget: ratio 0.2, floor 10/s, ttl 10 s
    let svc = layer.layer(client::<RetryBody<Full<Bytes>>>());
    let ok = flood(svc, server.url("/"), n, 50).await;
    assert_eq!(ok, 0);
    let ratio = server.calls() as f64 / n as f64;
    eprintln!(
        "outage: {} upstream attempts for {n} requests = {ratio:.4}; {:?}",
        server.calls(),
        layer.stats()
    );
    assert!(ratio <= 1.2, "ratio {ratio}");
    // Retries did happen (the floor), and the budget refused the rest.
    assert!(layer.stats().retries > 0);
    assert!(layer.stats().budget_exhausted > (n as u64) / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stacked_layers_do_not_multiply_load() {
    let server = TestServer::start(|_req| async { status(503) }).await;
    let n = 10_000;
    let (l1, l2, l3) = (fast(), fast(), fast());
    let svc = l1.layer(l2.layer(l3.layer(client())));
    let ok = flood(svc, server.url("/"), n, 50).await;
    assert_eq!(ok, 0);
    let ratio = server.calls() as f64 / n as f64;
    eprintln!(
        "stacked: {} upstream attempts for {n} requests = {ratio:.4} (bound 1.728, naive 27)",
        server.calls()
    );
    assert!(ratio <= 1.2f64.powi(3), "ratio {ratio}");
    assert!(l3.stats().retries > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blips_of_30_percent_are_healed() {
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let server = TestServer::start(move |_req| {
        // A cheap deterministic pseudo-random sequence (splitmix), 30% failures.
        let n = c.fetch_add(1, Ordering::Relaxed);
        let mut z = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 31;
        async move {
            if z % 100 < 30 {
                status(503)
            } else {
                ok("fine")
            }
        }
    })
    .await;
    let n = 10_000;
    // 30% failures need ~0.43 retries per request; a budget ratio of 1.0 allows that.
    let layer = fast()
        .max_attempts(8)
        .budget(RetryBudget::new(Duration::from_secs(10), 10, 1.0).unwrap());
    let svc = layer.layer(client());
    let ok = flood(svc, server.url("/"), n, 50).await;
    eprintln!(
        "blips: {ok}/{n} succeeded, {} upstream calls; {:?}",
        server.calls(),
        layer.stats()
    );
    assert!(ok as f64 >= 0.999 * n as f64, "{ok}");
    assert!(layer.stats().retries > 1000);
}

type HandlerFuture = std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

type Recorded = Arc<Mutex<Vec<Bytes>>>;

fn recording_server(
    fail_first: u64,
) -> (
    Recorded,
    impl Fn(Request<Incoming>) -> HandlerFuture + Clone + Send + Sync + 'static,
) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let count = Arc::new(AtomicU64::new(0));
    let handler = move |req: Request<Incoming>| {
        let seen = seen.clone();
        let n = count.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(body);
            if n < fail_first {
                status(503)
            } else {
                ok("done")
            }
        }) as HandlerFuture
    };
    (bodies, handler)
}

#[tokio::test]
async fn post_without_idempotency_key_is_never_retried() {
    let (bodies, handler) = recording_server(u64::MAX);
    let server = TestServer::start(handler).await;
    let layer = fast().budget(RetryBudget::unlimited()).max_attempts(5);
    let mut svc = layer.clone().layer(client());
    for _ in 0..20 {
        let req = Request::post(server.url("/orders"))
            .body(Full::new(Bytes::from("order")))
            .unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 503);
    }
    assert_eq!(server.calls(), 20);
    assert_eq!(bodies.lock().unwrap().len(), 20);
    assert_eq!(layer.stats().retries, 0);
}

#[tokio::test]
async fn post_with_idempotency_key_replays_the_body_byte_for_byte() {
    let (bodies, handler) = recording_server(2);
    let server = TestServer::start(handler).await;
    let layer = fast().budget(RetryBudget::unlimited()).max_attempts(5);
    let mut svc = layer.layer(client());
    let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    // Sent as several chunks to exercise buffering.
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = payload
        .chunks(4096)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post(server.url("/pay"))
        .header("idempotency-key", "abc-123")
        .body(body)
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3);
    for b in bodies.iter() {
        assert_eq!(b.as_ref(), payload.as_slice());
    }
}

#[tokio::test]
async fn streaming_body_over_the_cap_is_sent_once_untruncated() {
    let (bodies, handler) = recording_server(u64::MAX);
    let server = TestServer::start(handler).await;
    let layer = fast()
        .budget(RetryBudget::unlimited())
        .max_attempts(5)
        .body_limit(1024);
    let mut svc = layer.clone().layer(client());
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = payload
        .chunks(700)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::put(server.url("/upload")).body(body).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(server.calls(), 1);
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0].len(), payload.len());
    assert_eq!(bodies[0].as_ref(), payload.as_slice());
    assert_eq!(layer.stats().unbuffered_bodies, 1);
    assert_eq!(layer.stats().retries, 0);
}

struct DropGuard {
    finished: bool,
    cancelled: Arc<AtomicBool>,
    notify: Arc<tokio::sync::Notify>,
}

impl DropGuard {
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.cancelled.store(true, Ordering::SeqCst);
            self.notify.notify_one();
        }
    }
}

#[tokio::test]
async fn hedge_wins_and_the_slow_attempt_is_cancelled() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(tokio::sync::Notify::new());
    let count = Arc::new(AtomicU64::new(0));
    let (c, n) = (cancelled.clone(), notify.clone());
    let server = TestServer::start(move |_req| {
        let i = count.fetch_add(1, Ordering::SeqCst);
        let guard = DropGuard {
            finished: false,
            cancelled: c.clone(),
            notify: n.clone(),
        };
        async move {
            let guard = guard;
            if i == 0 {
                // The slow first attempt: far longer than the test waits.
                tokio::time::sleep(Duration::from_secs(30)).await;
                guard.finish();
                ok("slow")
            } else {
                guard.finish();
                ok("hedge")
            }
        }
    })
    .await;
    let layer = fast()
        .budget(RetryBudget::unlimited())
        .hedge_after(Duration::from_millis(50));
    let mut svc = layer.clone().layer(client());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get(&server.url("/")))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "hedge");
    assert_eq!(server.calls(), 2);
    assert_eq!(layer.stats().hedges, 1);
    // The slow attempt's handler is dropped by the server once the client hangs up.
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cancelled.load(Ordering::SeqCst) {
            notify.notified().await;
        }
    })
    .await
    .expect("the slow attempt was not cancelled");
    assert!(cancelled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn connect_errors_are_retried() {
    // A port with nothing listening.
    let addr = stormwall_tests::free_addr();
    let layer = fast().budget(RetryBudget::unlimited()).max_attempts(3);
    let mut svc = layer.clone().layer(client::<RetryBody<Full<Bytes>>>());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get(&format!("http://{addr}/")))
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert!(err.inner_error().is_some_and(|e| e.is_connect()));
    assert_eq!(layer.stats().retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_outage_retries_stay_within_the_ratio_of_successes() {
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let server = TestServer::start(move |_req| {
        let n = c.fetch_add(1, Ordering::Relaxed);
        async move {
            if n.is_multiple_of(2) {
                status(503)
            } else {
                ok("fine")
            }
        }
    })
    .await;
    let n = 10_000;
    // No floor, so that the bound is exactly ratio × successes (+ at most one racing
    // withdrawal per concurrent caller).
    let layer = fast().budget(RetryBudget::new(Duration::from_secs(60), 0, 0.2).unwrap());
    let svc = layer.layer(client());
    let ok = flood(svc, server.url("/"), n, 50).await;
    let stats = layer.stats();
    eprintln!("partial outage: {ok}/{n} ok, {stats:?}");
    assert!(stats.retries > 0);
    assert!(
        stats.retries as f64 <= 0.2 * stats.successes as f64 + 50.0,
        "{stats:?}"
    );
    assert_eq!(server.calls(), stats.attempts);
}
