//! Paused-clock tests of the retry policy: backoff sequences, pushback, deadline, timeouts,
//! what is retried. The inner service is an in-process `service_fn` that follows a script, so
//! that the paused clock is exact.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use stormwall_core::time::Instant;
use stormwall_retry::{Backoff, Jitter, RetryBody, RetryBudget, RetryError, RetryLayer};
use tower::{Service, ServiceExt, service_fn};

type Req = Request<RetryBody<Full<Bytes>>>;
type Res = Response<Full<Bytes>>;

#[derive(Clone)]
enum Step {
    Respond(u16, Vec<(&'static str, String)>),
    Hang,
}

#[derive(Clone, Default)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    fn new(steps: Vec<Step>) -> Self {
        Self {
            steps: Arc::new(Mutex::new(steps.into())),
            times: Arc::default(),
        }
    }

    fn service(
        &self,
    ) -> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + Send {
        let script = self.clone();
        service_fn(move |_req: Req| {
            script.times.lock().unwrap().push(Instant::now());
            let step = script.steps.lock().unwrap().pop_front();
            async move {
                let (status, headers) = match step {
                    Some(Step::Respond(s, h)) => (s, h),
                    Some(Step::Hang) => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        (200, vec![])
                    }
                    None => (200, vec![]),
                };
                let mut res = Response::builder().status(status);
                for (k, v) in headers {
                    res = res.header(k, v);
                }
                Ok::<_, Infallible>(res.body(Full::new(Bytes::from("x"))).unwrap())
            }
        })
    }

    fn calls(&self) -> usize {
        self.times.lock().unwrap().len()
    }

    /// Gaps between consecutive attempts.
    fn gaps(&self) -> Vec<Duration> {
        let t = self.times.lock().unwrap();
        t.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

fn s503() -> Step {
    Step::Respond(503, vec![])
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://upstream/x")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn send<S>(svc: &mut S, req: Request<Full<Bytes>>) -> Result<S::Response, S::Error>
where
    S: Service<Request<Full<Bytes>>>,
{
    svc.ready().await?.call(req).await
}

fn unlimited() -> RetryLayer {
    RetryLayer::new().budget(RetryBudget::unlimited())
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn exponential_without_jitter_is_exact() {
    let script = Script::new(vec![s503(); 5]);
    let layer = unlimited().max_attempts(6).backoff(
        Backoff::exponential(MS * 100, MS * 1000)
            .unwrap()
            .jitter(Jitter::None),
    );
    let mut svc = layer.clone().layer_service(script.service());
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(script.gaps(), [100, 200, 400, 800, 1000].map(|m| MS * m));
    assert_eq!(layer.stats().retries, 5);
}

trait LayerExt {
    fn layer_service<S>(self, s: S) -> stormwall_retry::Retry<S>;
}

impl LayerExt for RetryLayer {
    fn layer_service<S>(self, s: S) -> stormwall_retry::Retry<S> {
        tower::Layer::layer(&self, s)
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_sequences_per_jitter_mode_stay_in_range() {
    let base = MS * 50;
    let max = MS * 2000;
    for jitter in [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        for seed in 0..10u64 {
            let script = Script::new(vec![s503(); 7]);
            let backoff = Backoff::exponential(base, max).unwrap().jitter(jitter);
            let layer = unlimited().max_attempts(8).backoff(backoff).seed(seed);
            let mut svc = layer.layer_service(script.service());
            assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
            let gaps = script.gaps();
            assert_eq!(gaps.len(), 7);
            let mut prev = base;
            for (i, gap) in gaps.into_iter().enumerate() {
                let nominal = backoff.nominal(i as u32 + 1);
                // The paused clock may add at most one timer tick (1 ms) of rounding.
                let (lo, hi) = match jitter {
                    Jitter::None => (nominal, nominal),
                    Jitter::Full => (Duration::ZERO, nominal),
                    Jitter::Equal => (nominal / 2, nominal),
                    Jitter::Decorrelated => (base, (prev * 3).min(max)),
                };
                assert!(
                    gap >= lo && gap <= hi + MS,
                    "{jitter:?} seed {seed} retry {i}: {gap:?} not in [{lo:?}, {hi:?}]"
                );
                prev = gap;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_waits_exactly() {
    let script = Script::new(vec![Step::Respond(503, vec![("retry-after", "2".into())])]);
    let layer = unlimited().backoff(Backoff::none());
    let mut svc = layer.layer_service(script.service());
    let start = Instant::now();
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(script.gaps(), [Duration::from_secs(2)]);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_and_429() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
    let script = Script::new(vec![Step::Respond(429, vec![("retry-after", date)])]);
    let layer = unlimited().backoff(Backoff::none());
    let mut svc = layer.layer_service(script.service());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    let gap = script.gaps()[0];
    // The date has one-second resolution and the wall clock keeps running.
    assert!(
        gap >= Duration::from_secs(1) && gap <= Duration::from_secs(3),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn ratelimit_reset_and_grpc_pushback_set_the_delay() {
    let script = Script::new(vec![
        Step::Respond(429, vec![("ratelimit", r#""default";r=0;t=4"#.into())]),
        Step::Respond(
            200,
            vec![
                ("content-type", "application/grpc".into()),
                ("grpc-status", "14".into()),
                ("grpc-retry-pushback-ms", "300".into()),
            ],
        ),
    ]);
    let layer = unlimited().max_attempts(3).backoff(Backoff::none());
    let mut svc = layer.layer_service(script.service());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(script.gaps(), [Duration::from_secs(4), MS * 300]);
}

#[tokio::test(start_paused = true)]
async fn grpc_negative_pushback_and_resource_exhausted_without_pushback_are_not_retried() {
    for headers in [
        vec![("grpc-status", "14"), ("grpc-retry-pushback-ms", "-1")],
        vec![("grpc-status", "14"), ("grpc-retry-pushback-ms", "soon")],
        vec![("grpc-status", "8")],
    ] {
        let mut h: Vec<(&'static str, String)> = vec![("content-type", "application/grpc".into())];
        h.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
        let script = Script::new(vec![Step::Respond(200, h)]);
        let mut svc = unlimited().layer_service(script.service());
        let res = send(&mut svc, get()).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], headers[0].1);
        assert_eq!(script.calls(), 1, "{headers:?}");
    }
    // RESOURCE_EXHAUSTED with a pushback is retried after it.
    let script = Script::new(vec![Step::Respond(
        200,
        vec![
            ("content-type", "application/grpc".into()),
            ("grpc-status", "8".into()),
            ("grpc-retry-pushback-ms", "150".into()),
        ],
    )]);
    let mut svc = unlimited().layer_service(script.service());
    send(&mut svc, get()).await.unwrap();
    assert_eq!(script.gaps(), [MS * 150]);
}

#[tokio::test(start_paused = true)]
async fn pushback_beyond_deadline_stops_at_once() {
    let script = Script::new(vec![Step::Respond(503, vec![("retry-after", "5".into())])]);
    let layer = unlimited().deadline(Duration::from_secs(1));
    let mut svc = layer.clone().layer_service(script.service());
    let start = Instant::now();
    let res = send(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(script.calls(), 1);
    assert_eq!(layer.stats().deadline_stops, 1);
}

#[tokio::test(start_paused = true)]
async fn pushback_is_clamped_by_max_pushback() {
    let script = Script::new(vec![Step::Respond(
        503,
        vec![("retry-after", "3600".into())],
    )]);
    let layer = unlimited().max_pushback(Duration::from_secs(3));
    let mut svc = layer.layer_service(script.service());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(script.gaps(), [Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_is_retried_and_deadline_cancels() {
    let script = Script::new(vec![Step::Hang]);
    let layer = unlimited()
        .backoff(Backoff::none())
        .attempt_timeout(Duration::from_secs(1));
    let mut svc = layer.clone().layer_service(script.service());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(script.gaps(), [Duration::from_secs(1)]);
    assert_eq!(layer.stats().attempt_timeouts, 1);

    // Every attempt hangs: the last attempt timeout is the error.
    let script = Script::new(vec![Step::Hang; 3]);
    let mut svc = unlimited()
        .backoff(Backoff::none())
        .attempt_timeout(Duration::from_secs(1))
        .layer_service(script.service());
    let err: RetryError<Infallible> = send(&mut svc, get()).await.unwrap_err();
    assert!(err.is_attempt_timeout());
    assert_eq!(err.attempts(), 3);

    // The deadline cuts an attempt in flight.
    let script = Script::new(vec![Step::Hang]);
    let mut svc = unlimited()
        .deadline(Duration::from_millis(2500))
        .layer_service(script.service());
    let start = Instant::now();
    let err = send(&mut svc, get()).await.unwrap_err();
    assert!(err.is_deadline());
    assert_eq!(start.elapsed(), MS * 2500);
}

#[tokio::test(start_paused = true)]
async fn what_is_retried() {
    for (status, retried) in [
        (500, false),
        (404, false),
        (400, false),
        (409, false),
        (502, true),
        (503, true),
        (504, true),
        (429, true),
    ] {
        let script = Script::new(vec![Step::Respond(status, vec![])]);
        let mut svc = unlimited()
            .backoff(Backoff::none())
            .layer_service(script.service());
        let res = send(&mut svc, get()).await.unwrap();
        let expected = if retried { 200 } else { status };
        assert_eq!(res.status(), StatusCode::from_u16(expected).unwrap());
        assert_eq!(script.calls(), 1 + usize::from(retried), "{status}");
    }
}

#[tokio::test(start_paused = true)]
async fn methods_idempotency_key_opt_in_and_custom_predicate() {
    let post = || {
        Request::builder()
            .method(Method::POST)
            .uri("http://upstream/x")
            .body(Full::new(Bytes::from("p")))
            .unwrap()
    };
    let script = Script::new(vec![s503()]);
    let mut svc = unlimited().layer_service(script.service());
    assert_eq!(send(&mut svc, post()).await.unwrap().status(), 503);
    assert_eq!(script.calls(), 1);

    let script = Script::new(vec![s503()]);
    let mut svc = unlimited()
        .backoff(Backoff::none())
        .retry_unsafe_methods(true)
        .layer_service(script.service());
    assert_eq!(send(&mut svc, post()).await.unwrap().status(), 200);
    assert_eq!(script.calls(), 2);

    let script = Script::new(vec![Step::Respond(500, vec![])]);
    let mut svc = unlimited()
        .backoff(Backoff::none())
        .retry_if(
            |f| matches!(f, stormwall_core::classify::Failure::Status(s) if s.as_u16() == 500),
        )
        .layer_service(script.service());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_stops_retries() {
    let script = Script::new(vec![s503(); 100]);
    let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap());
    let layer = RetryLayer::new()
        .backoff(Backoff::none())
        .budget(budget.clone());
    let mut svc = layer.clone().layer_service(script.service());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 503);
    assert_eq!(script.calls(), 1);
    assert_eq!(layer.stats().budget_exhausted, 1);
    for _ in 0..10 {
        budget.deposit();
    }
    // 10 successes × 0.2 = 2 tokens: exactly two retries.
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 503);
    assert_eq!(script.calls(), 4);
}

/// A service that insists on `poll_ready` before every `call` (like tower's contract).
#[derive(Clone)]
struct Strict {
    ready: bool,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    violations: Arc<std::sync::atomic::AtomicUsize>,
}

impl Service<Req> for Strict {
    type Response = Res;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Res, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        self.ready = true;
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        use std::sync::atomic::Ordering::SeqCst;
        if !std::mem::replace(&mut self.ready, false) {
            self.violations.fetch_add(1, SeqCst);
        }
        let n = self.calls.fetch_add(1, SeqCst);
        let status = if n < 3 { 503 } else { 200 };
        std::future::ready(Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap()))
    }
}

#[tokio::test(start_paused = true)]
async fn poll_ready_before_every_attempt() {
    let strict = Strict {
        ready: false,
        calls: Arc::default(),
        violations: Arc::default(),
    };
    let mut svc = unlimited()
        .max_attempts(4)
        .backoff(Backoff::none())
        .layer_service(strict.clone());
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(strict.calls.load(std::sync::atomic::Ordering::SeqCst), 4);
    assert_eq!(
        strict.violations.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn hedging_sends_a_second_attempt_only_for_retryable_requests() {
    let script = Script::new(vec![Step::Hang]);
    let layer = unlimited().hedge_after(MS * 100);
    let mut svc = layer.clone().layer_service(script.service());
    let start = Instant::now();
    assert_eq!(send(&mut svc, get()).await.unwrap().status(), 200);
    assert_eq!(start.elapsed(), MS * 100);
    assert_eq!(script.calls(), 2);
    assert_eq!(layer.stats().hedges, 1);

    // A POST without Idempotency-Key is never hedged.
    let script = Script::new(vec![Step::Hang]);
    let mut svc = unlimited()
        .hedge_after(MS * 100)
        .attempt_timeout(Duration::from_secs(1))
        .layer_service(script.service());
    let post = Request::post("http://upstream/x")
        .body(Full::new(Bytes::from("p")))
        .unwrap();
    let err = send(&mut svc, post).await.unwrap_err();
    assert!(err.is_attempt_timeout());
    assert_eq!(script.calls(), 1);

    // Hedges need budget.
    let script = Script::new(vec![Step::Hang]);
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
    let layer = RetryLayer::new()
        .budget(budget)
        .hedge_after(MS * 100)
        .attempt_timeout(Duration::from_secs(1))
        .max_attempts(3);
    let mut svc = layer.clone().layer_service(script.service());
    let err = send(&mut svc, get()).await.unwrap_err();
    assert!(err.is_attempt_timeout());
    assert_eq!(script.calls(), 1);
    assert_eq!(layer.stats().hedges, 0);
    // One refusal for the hedge, one for the retry after the timeout.
    assert_eq!(layer.stats().budget_exhausted, 2);
}

/// Ready for the first attempt (the caller's `poll_ready` and the future's), then never again
/// (e.g. a saturated connection pool).
#[derive(Clone)]
struct ReadyOnce {
    polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Service<Req> for ReadyOnce {
    type Response = Res;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Res, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if self.polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        std::future::ready(Ok(Response::builder()
            .status(503)
            .body(Full::new(Bytes::new()))
            .unwrap()))
    }
}

#[tokio::test(start_paused = true)]
async fn deadline_bounds_the_wait_for_readiness_before_a_retry() {
    let svc = ReadyOnce {
        polls: Arc::default(),
    };
    let mut svc = unlimited()
        .backoff(Backoff::none())
        .deadline(Duration::from_secs(2))
        .layer_service(svc);
    let start = Instant::now();
    let err = send(&mut svc, get()).await.unwrap_err();
    assert!(err.is_deadline());
    assert_eq!(err.attempts(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}
