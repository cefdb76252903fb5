//! Paused-clock tests through the layer: every transition, every mode, every classifier path.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use stormwall_circuit::{
    BreakerConfig, CircuitBreakerError, CircuitBreakerLayer, State, WaitStrategy, Window,
};
use stormwall_core::classify::ResilienceClassifier;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt, service_fn};

/// An upstream whose status is set by the test; counts its calls; sleeps `delay_ms` first.
#[derive(Clone, Default)]
struct Upstream {
    status: Arc<AtomicU16>,
    calls: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
}

impl Upstream {
    fn new() -> Self {
        let u = Self::default();
        u.status.store(200, Ordering::SeqCst);
        u
    }
    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    fn service(
        self,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
    > + Clone {
        let u = self;
        service_fn(move |_req: Request<()>| {
            let u = u.clone();
            async move {
                u.calls.fetch_add(1, Ordering::SeqCst);
                let delay = u.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let status = u.status.load(Ordering::SeqCst);
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"x")))
                        .unwrap(),
                )
            }
        })
    }
}

fn small() -> BreakerConfig {
    BreakerConfig::new()
        .window(Window::Count(4))
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .wait_duration(Duration::from_secs(10))
        .permitted_calls_in_half_open(2)
}

async fn call<S, B, E>(svc: &mut S) -> Result<StatusCode, E>
where
    S: Service<Request<()>, Response = Response<B>, Error = E>,
{
    let res = svc.ready().await?.call(Request::new(())).await?;
    Ok(res.status())
}

#[tokio::test(start_paused = true)]
async fn walks_closed_open_half_open_open_half_open_closed() {
    let up = Upstream::new();
    let layer = CircuitBreakerLayer::new("walk", small()).unwrap();
    let mut events = layer.subscribe();
    let mut svc = layer.layer(up.clone().service());

    // Closed: 4xx is not a failure; two 500s out of four trip it (50 %).
    up.set(404);
    assert_eq!(call(&mut svc).await.unwrap(), StatusCode::NOT_FOUND);
    assert_eq!(call(&mut svc).await.unwrap(), StatusCode::NOT_FOUND);
    up.set(500);
    assert_eq!(
        call(&mut svc).await.unwrap(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(layer.breaker().state(), State::Closed);
    assert_eq!(
        call(&mut svc).await.unwrap(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(layer.breaker().state(), State::Open);
    assert_eq!(up.calls(), 4);

    // Open: rejected with the remaining time, upstream untouched.
    advance(Duration::from_secs(3)).await;
    let err = call(&mut svc).await.unwrap_err();
    let open = err.open().expect("rejection");
    assert_eq!(open.remaining, Duration::from_secs(7));
    assert_eq!(open.state, State::Open);
    assert_eq!(up.calls(), 4);

    // Still open just before the wait is over: never straight to closed.
    advance(Duration::from_millis(6_999)).await;
    assert!(call(&mut svc).await.unwrap_err().is_open());
    assert_eq!(layer.breaker().state(), State::Open);

    // Half-open: probes fail → open again.
    advance(Duration::from_millis(1)).await;
    assert_eq!(
        call(&mut svc).await.unwrap(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(layer.breaker().state(), State::HalfOpen);
    assert_eq!(
        call(&mut svc).await.unwrap(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(layer.breaker().state(), State::Open);
    assert_eq!(up.calls(), 6);

    // Half-open again; probes succeed → closed.
    advance(Duration::from_secs(10)).await;
    up.set(200);
    assert_eq!(call(&mut svc).await.unwrap(), StatusCode::OK);
    assert_eq!(call(&mut svc).await.unwrap(), StatusCode::OK);
    assert_eq!(layer.breaker().state(), State::Closed);

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push((e.from, e.to));
    }
    let (c, o, h) = (State::Closed, State::Open, State::HalfOpen);
    assert_eq!(seen, vec![(c, o), (o, h), (h, o), (o, h), (h, c)]);
    let snap = layer.stats().snapshot();
    assert_eq!(snap[0].state, State::Closed);
    assert_eq!(snap[0].transitions, 5);
    assert_eq!(snap[0].rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn half_open_rejects_excess_probes_without_queueing() {
    let up = Upstream::new();
    up.delay_ms.store(1_000, Ordering::SeqCst);
    let layer = CircuitBreakerLayer::new("probes", small()).unwrap();
    layer.breaker().force_open();
    layer.breaker().close();
    let svc = layer.layer(up.clone().service());
    up.set(503);
    for _ in 0..4 {
        let _ = call(&mut svc.clone()).await;
    }
    assert_eq!(layer.breaker().state(), State::Open);
    advance(Duration::from_secs(10)).await;
    up.set(200);
    // Five concurrent callers, two probes: three rejected at once (not queued).
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let mut s = svc.clone();
        tasks.push(tokio::spawn(async move { call(&mut s).await }));
    }
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.is_open());
                assert_eq!(e.open().unwrap().state, State::HalfOpen);
                rejected += 1;
            }
        }
    }
    assert_eq!((ok, rejected), (2, 3));
    assert_eq!(layer.breaker().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn exponential_wait_grows_and_resets_on_close() {
    let up = Upstream::new();
    let config = small().wait_strategy(WaitStrategy::Exponential {
        base: Duration::from_secs(1),
        multiplier: 2.0,
        max: Duration::from_secs(3),
    });
    let layer = CircuitBreakerLayer::new("exp", config).unwrap();
    let mut svc = layer.layer(up.clone().service());
    up.set(500);
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    let mut waits = vec![];
    for _ in 0..3 {
        let e = call(&mut svc).await.unwrap_err();
        waits.push(e.open().unwrap().remaining);
        advance(e.open().unwrap().remaining).await;
        // Probes fail: reopen with a longer wait.
        call(&mut svc).await.unwrap();
        call(&mut svc).await.unwrap();
    }
    assert_eq!(waits, [1, 2, 3].map(Duration::from_secs));
    assert_eq!(layer.stats().snapshot()[0].consecutive_opens, 4);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_measured_from_call_to_response() {
    let up = Upstream::new();
    up.delay_ms.store(2_000, Ordering::SeqCst);
    let config = small().slow_call(Duration::from_secs(1), 75.0);
    let layer = CircuitBreakerLayer::new("slow", config).unwrap();
    let mut svc = layer.layer(up.clone().service());
    for _ in 0..3 {
        assert_eq!(call(&mut svc).await.unwrap(), StatusCode::OK);
    }
    assert_eq!(layer.breaker().state(), State::Closed);
    assert_eq!(layer.stats().snapshot()[0].counts.slow, 3);
    up.delay_ms.store(10, Ordering::SeqCst);
    call(&mut svc).await.unwrap();
    // 3 slow of 4 = 75 %.
    assert_eq!(layer.breaker().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_seconds() {
    let up = Upstream::new();
    let config = BreakerConfig::new()
        .window(Window::Time(5))
        .minimum_calls(3)
        .failure_rate_threshold(60.0)
        .wait_duration(Duration::from_secs(1));
    let layer = CircuitBreakerLayer::new("time", config).unwrap();
    let mut svc = layer.layer(up.clone().service());
    up.set(500);
    call(&mut svc).await.unwrap();
    call(&mut svc).await.unwrap();
    advance(Duration::from_secs(6)).await; // both failures expire
    up.set(200);
    call(&mut svc).await.unwrap();
    up.set(500);
    call(&mut svc).await.unwrap();
    assert_eq!(
        layer.breaker().state(),
        State::Closed,
        "1 of 2 calls in the window"
    );
    call(&mut svc).await.unwrap();
    // 2 failures of 3 = 66 % ≥ 60 %.
    assert_eq!(layer.breaker().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_mode() {
    let up = Upstream::new();
    let config = small().window(Window::ConsecutiveFailures(3));
    let layer = CircuitBreakerLayer::new("streak", config).unwrap();
    let mut svc = layer.layer(up.clone().service());
    for status in [500, 500, 200, 500, 500] {
        up.set(status);
        call(&mut svc).await.unwrap();
    }
    assert_eq!(layer.breaker().state(), State::Closed);
    call(&mut svc).await.unwrap();
    assert_eq!(layer.breaker().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn manual_states() {
    let up = Upstream::new();
    let layer = CircuitBreakerLayer::new("manual", small()).unwrap();
    let mut svc = layer.layer(up.clone().service());
    let b = layer.breaker().clone();

    b.force_open();
    let e = call(&mut svc).await.unwrap_err();
    assert_eq!(e.open().unwrap().state, State::ForcedOpen);
    advance(Duration::from_secs(3_600)).await;
    assert!(
        call(&mut svc).await.unwrap_err().is_open(),
        "forced open never half-opens"
    );
    assert_eq!(up.calls(), 0);

    b.disable();
    up.set(500);
    for _ in 0..10 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(
        b.snapshot(Instant::now()).counts.calls,
        0,
        "disabled records nothing"
    );

    b.metrics_only();
    for _ in 0..10 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(b.state(), State::MetricsOnly);
    assert_eq!(b.snapshot(Instant::now()).counts.failures, 4);

    b.close();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.snapshot(Instant::now()).counts.calls,
        0,
        "closing starts a clean window"
    );
}

#[tokio::test(start_paused = true)]
async fn too_many_requests_is_configurable() {
    let up = Upstream::new();
    up.set(429);
    let default = CircuitBreakerLayer::new("429", small()).unwrap();
    let mut svc = default.layer(up.clone().service());
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(default.breaker().state(), State::Open);

    let lenient = CircuitBreakerLayer::new("429-ok", small())
        .unwrap()
        .classifier(ResilienceClassifier::new().too_many_requests_is_failure(false));
    let mut svc = lenient.layer(up.clone().service());
    for _ in 0..8 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(lenient.breaker().state(), State::Closed);

    // A custom predicate replaces the classifier.
    let custom = CircuitBreakerLayer::new("pred", small())
        .unwrap()
        .failure_if(|s: StatusCode, _: &HeaderMap| s == StatusCode::TOO_MANY_REQUESTS);
    let mut svc = custom.layer(up.clone().service());
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(custom.breaker().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_are_failures_and_pass_through() {
    let layer = CircuitBreakerLayer::new("errors", small()).unwrap();
    let svc = service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    });
    let mut svc = layer.layer(svc);
    for _ in 0..4 {
        let e = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap_err();
        assert!(e.is_inner());
        assert_eq!(
            e.into_inner().unwrap().kind(),
            std::io::ErrorKind::ConnectionRefused
        );
    }
    assert_eq!(layer.breaker().state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn respond_mode_answers_503_with_retry_after_and_grpc_unavailable() {
    let up = Upstream::new();
    let layer = CircuitBreakerLayer::new("respond", small())
        .unwrap()
        .respond();
    let mut svc = layer.layer(up.clone().service());
    layer.breaker().force_open();
    layer.breaker().close();
    up.set(500);
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    advance(Duration::from_millis(8_500)).await;
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "2"); // 1.5 s rounded up
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"circuit breaker open\n");

    let grpc = Request::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let res = svc.ready().await.unwrap().call(grpc).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1500");
    assert_eq!(up.calls(), 4);
}

type Frames =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn grpc_response(code: &'static str) -> Response<Frames> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", code.parse().unwrap());
    let frames = vec![
        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn grpc_status_in_trailers_is_classified_at_end_of_stream() {
    let code = Arc::new(Mutex::new("14"));
    let c = code.clone();
    let svc = service_fn(move |_req: Request<()>| {
        let code = *c.lock().unwrap();
        async move { Ok::<_, Infallible>(grpc_response(code)) }
    });
    let layer = CircuitBreakerLayer::new("eos", small()).unwrap();
    let mut svc = layer.layer(svc);
    for i in 0..4 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        // Nothing recorded until the body ends.
        assert_eq!(layer.stats().snapshot()[0].counts.calls, i);
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    }
    assert_eq!(layer.breaker().state(), State::Open);

    // NOT_FOUND (5) is the caller's fault, not a failure; a dropped body records nothing.
    layer.breaker().close();
    *code.lock().unwrap() = "5";
    for _ in 0..4 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap();
    }
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    drop(res);
    let snap = &layer.stats().snapshot()[0];
    assert_eq!(
        (snap.state, snap.counts.calls, snap.counts.failures),
        (State::Closed, 4, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_independent_and_bounded() {
    use stormwall_core::key::HeaderKey;
    let up = Upstream::new();
    let layer = CircuitBreakerLayer::new("keyed", small())
        .unwrap()
        .keyed(HeaderKey::new("x-tenant"), 2)
        .unwrap();
    let mut svc = layer.layer(up.clone().service());
    let req = |t: &str| Request::builder().header("x-tenant", t).body(()).unwrap();
    up.set(500);
    for _ in 0..4 {
        svc.ready().await.unwrap().call(req("a")).await.unwrap();
    }
    up.set(200);
    let e = svc.ready().await.unwrap().call(req("a")).await.unwrap_err();
    assert!(e.is_open());
    assert!(
        svc.ready().await.unwrap().call(req("b")).await.is_ok(),
        "b has its own breaker"
    );
    // At the bound (a open, b closed and idle): c evicts b.
    assert!(svc.ready().await.unwrap().call(req("c")).await.is_ok());
    assert_eq!(layer.stats().overflowed(), 0);
    // Trip c too: now a and c are open, d has nowhere to go → fallback breaker.
    up.set(500);
    for _ in 0..3 {
        svc.ready().await.unwrap().call(req("c")).await.unwrap();
    }
    assert!(svc.ready().await.unwrap().call(req("d")).await.is_ok());
    assert_eq!(layer.stats().overflowed(), 1);
    // A request without the header also goes to the fallback.
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .is_ok()
    );
    assert_eq!(layer.stats().overflowed(), 2);
    let snaps = layer.stats().snapshot();
    assert_eq!(snaps.len(), 3);
    assert!(
        snaps
            .iter()
            .any(|s| s.name.ends_with("_fallback") && s.counts.calls == 2)
    );
    assert_eq!(snaps.iter().filter(|s| s.state == State::Open).count(), 2);
}

#[tokio::test(start_paused = true)]
async fn transition_hook_is_called() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let up = Upstream::new();
    let layer = CircuitBreakerLayer::new("hook", small())
        .unwrap()
        .on_transition(move |t| {
            s.lock()
                .unwrap()
                .push((t.to, t.open_for, t.counts.failures))
        });
    let mut svc = layer.layer(up.clone().service());
    up.set(500);
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(State::Open, Some(Duration::from_secs(10)), 4)]
    );
}

#[test]
fn bad_config_is_a_typed_error() {
    assert!(CircuitBreakerLayer::new("x", BreakerConfig::new().window(Window::Count(0))).is_err());
    assert!(
        CircuitBreakerLayer::new(
            "x",
            BreakerConfig::new()
                .window(Window::Count(5))
                .minimum_calls(6)
        )
        .is_err()
    );
    assert!(
        CircuitBreakerLayer::new("x", BreakerConfig::new().permitted_calls_in_half_open(0))
            .is_err()
    );
    assert!(
        CircuitBreakerLayer::new("x", BreakerConfig::new().wait_duration(Duration::ZERO)).is_err()
    );
    let e = CircuitBreakerLayer::new("x", BreakerConfig::new().failure_rate_threshold(101.0))
        .unwrap_err();
    assert!(e.to_string().contains("failure_rate_threshold"));
    assert!(
        CircuitBreakerLayer::new("x", BreakerConfig::new())
            .unwrap()
            .keyed(stormwall_core::key::GlobalKey, 0)
            .is_err()
    );
}

#[test]
fn error_type_is_usable() {
    let e: CircuitBreakerError<std::io::Error> =
        CircuitBreakerError::Inner(std::io::Error::other("boom"));
    assert!(e.is_inner());
    assert_eq!(e.to_string(), "boom");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_half_open_slot() {
    let up = Upstream::new();
    up.delay_ms.store(5_000, Ordering::SeqCst);
    let config = small().permitted_calls_in_half_open(1);
    let layer = CircuitBreakerLayer::new("dropped", config).unwrap();
    let mut svc = layer.layer(up.clone().service());
    up.set(500);
    up.delay_ms.store(0, Ordering::SeqCst);
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    advance(Duration::from_secs(10)).await;
    up.delay_ms.store(5_000, Ordering::SeqCst);
    up.set(200);
    // The only probe times out at the caller and is dropped.
    let probe = svc.ready().await.unwrap().call(Request::new(()));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), probe)
            .await
            .is_err()
    );
    assert_eq!(layer.breaker().state(), State::HalfOpen);
    // Its slot is free again: the next caller is admitted as the probe and closes the breaker.
    up.delay_ms.store(0, Ordering::SeqCst);
    assert_eq!(call(&mut svc).await.unwrap(), StatusCode::OK);
    assert_eq!(layer.breaker().state(), State::Closed);
}

#[test]
fn metrics_are_recorded_under_their_documented_names() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let config = BreakerConfig::new()
            .window(Window::Count(2))
            .minimum_calls(2)
            .wait_duration(Duration::from_secs(1));
        let start = Instant::now();
        let b = stormwall_circuit::Breaker::new_at("m", config, start).unwrap();
        let p = b.try_acquire(start).unwrap();
        b.record(p, false, false, start);
        let p = b.try_acquire(start).unwrap();
        b.record(p, true, false, start);
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire(start).is_err());
    });
    let mut seen = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        seen.insert(format!("{name}{{{}}}", labels.join(",")), value);
    }
    let get = |k: &str| {
        seen.get(k)
            .unwrap_or_else(|| panic!("{k} missing from {:?}", seen.keys()))
    };
    assert_eq!(
        *get("stormwall_circuit_calls_total{breaker=m,outcome=success}"),
        DebugValue::Counter(1)
    );
    assert_eq!(
        *get("stormwall_circuit_calls_total{breaker=m,outcome=failure}"),
        DebugValue::Counter(1)
    );
    assert_eq!(
        *get("stormwall_circuit_rejected_total{breaker=m}"),
        DebugValue::Counter(1)
    );
    assert_eq!(
        *get("stormwall_circuit_transitions_total{breaker=m,from=closed,to=open}"),
        DebugValue::Counter(1)
    );
    assert!(
        matches!(get("stormwall_circuit_state{breaker=m}"), DebugValue::Gauge(v) if v.into_inner() == 1.0)
    );
    assert!(
        matches!(get("stormwall_circuit_failure_rate{breaker=m}"), DebugValue::Gauge(v) if v.into_inner() == 50.0)
    );
}
