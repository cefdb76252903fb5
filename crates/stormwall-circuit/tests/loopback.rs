//! The breaker against real servers on loopback (hyper, axum, tonic) and under real
//! multi-threaded contention. Real clock, small durations, count assertions only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use stormwall_circuit::{Breaker, BreakerConfig, CircuitBreakerLayer, State, Window};
use stormwall_tests::grpc::{EchoBehavior, EchoClient, EchoRequest, EchoServer};
use stormwall_tests::http::{TestServer, client, ok};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};

fn config(wait: Duration) -> BreakerConfig {
    BreakerConfig::new()
        .window(Window::Count(10))
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .wait_duration(wait)
        .permitted_calls_in_half_open(3)
}

/// Waits (real time, bounded) until `cond` holds.
async fn eventually(mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_upstream_fails_then_recovers() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let server = TestServer::start(move |_req| {
        let failing = f.load(Ordering::SeqCst);
        async move {
            if failing {
                let mut res = ok("down");
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                res
            } else {
                ok("up")
            }
        }
    })
    .await;
    let layer = CircuitBreakerLayer::new("upstream", config(Duration::from_millis(300))).unwrap();
    let mut events = layer.subscribe();
    let mut svc = layer.layer(client());
    let get = || {
        Request::get(server.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // The configured evidence: 5 calls at 100 % failure.
    for i in 1..=5 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let expected = if i < 5 { State::Closed } else { State::Open };
        assert_eq!(layer.breaker().state(), expected, "after call {i}");
    }
    assert_eq!(server.calls(), 5);

    // Open: 50 calls rejected without touching the upstream.
    for _ in 0..50 {
        let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
        assert!(err.is_open());
        assert!(err.open().unwrap().remaining <= Duration::from_millis(300));
    }
    assert_eq!(server.calls(), 5, "no call reached the upstream while open");

    // The upstream recovers; after the wait, 3 probes pass and close the breaker.
    failing.store(false, Ordering::SeqCst);
    let b = layer.breaker().clone();
    eventually(|| b.snapshot(tokio::time::Instant::now()).remaining_open == Some(Duration::ZERO))
        .await;
    for _ in 0..3 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(layer.breaker().state(), State::Closed);
    assert_eq!(server.calls(), 8);
    for _ in 0..20 {
        let res = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "up");
    }
    assert_eq!(server.calls(), 28);
    let mut path = Vec::new();
    while let Ok(e) = events.try_recv() {
        path.push(e.to);
    }
    assert_eq!(path, [State::Open, State::HalfOpen, State::Closed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_errors_open_the_breaker() {
    // A port nothing listens on: connection refused.
    let addr = stormwall_tests::free_addr();
    let layer = CircuitBreakerLayer::new("refused", config(Duration::from_secs(60))).unwrap();
    let mut svc = layer.layer(client());
    for _ in 0..5 {
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
        assert!(err.is_inner());
    }
    assert_eq!(layer.breaker().state(), State::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_inbound_open_breaker_answers_503_with_retry_after() {
    use axum::Router;
    use axum::routing::get;

    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let layer = CircuitBreakerLayer::new("inbound", config(Duration::from_secs(30)))
        .unwrap()
        .respond();
    let app = Router::new()
        .route(
            "/",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { (StatusCode::BAD_GATEWAY, "bad gateway") }
            }),
        )
        .layer(layer.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = client();
    let get = || {
        Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for _ in 0..5 {
        assert_eq!(
            client.request(get()).await.unwrap().status(),
            StatusCode::BAD_GATEWAY
        );
    }
    let res = client.request(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (29..=30).contains(&retry_after),
        "retry-after {retry_after}"
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "circuit breaker open\n"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        5,
        "the handler was not called while open"
    );
    let snap = &layer.stats().snapshot()[0];
    assert_eq!((snap.state, snap.rejected), (State::Open, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_unavailable_streak_opens_the_breaker() {
    let server = EchoServer::start(EchoBehavior {
        fail_with: Some(tonic::Code::Unavailable),
        ..EchoBehavior::default()
    })
    .await;
    let config = config(Duration::from_secs(30)).window(Window::ConsecutiveFailures(4));
    let layer = CircuitBreakerLayer::new("grpc", config).unwrap().respond();
    let mut client = EchoClient::new(layer.layer(server.channel().await));
    let req = || EchoRequest {
        message: "hi".into(),
    };
    for _ in 0..4 {
        let status = client.unary(req()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().starts_with("failing call"), "{status:?}");
    }
    assert_eq!(layer.breaker().state(), State::Open);
    let status = client.unary(req()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "circuit breaker open");
    assert_eq!(server.calls(), 4);

    // Successes (grpc-status in the trailers) are recorded at the end of the stream.
    let healthy = EchoServer::start(EchoBehavior::default()).await;
    let layer = CircuitBreakerLayer::new("grpc-ok", config_grpc_ok())
        .unwrap()
        .respond();
    let mut client = EchoClient::new(layer.layer(healthy.channel().await));
    for _ in 0..3 {
        assert_eq!(
            client.unary(req()).await.unwrap().into_inner().message,
            "hi"
        );
    }
    let snap = &layer.stats().snapshot()[0];
    assert_eq!((snap.counts.calls, snap.counts.failures), (3, 0));
}

fn config_grpc_ok() -> BreakerConfig {
    config(Duration::from_secs(1))
}

/// Half-open admits exactly the permitted probes, under 100 concurrent callers on a real
/// multi-threaded runtime, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_admits_exactly_the_permitted_probes_under_contention() {
    const CALLERS: usize = 100;
    const PERMITTED: u32 = 5;
    let rounds = if std::env::var("STORMWALL_EXTENDED").is_ok() {
        200
    } else {
        20
    };
    for round in 0..rounds {
        let config = BreakerConfig::new()
            .window(Window::Count(1))
            .minimum_calls(1)
            .wait_duration(Duration::from_millis(1))
            .permitted_calls_in_half_open(PERMITTED);
        let layer = CircuitBreakerLayer::new("contended", config).unwrap();
        let breaker: Arc<Breaker> = layer.breaker().clone();
        let now = tokio::time::Instant::now();
        let p = breaker.try_acquire(now).unwrap();
        breaker.record(p, true, false, now);
        assert_eq!(breaker.state(), State::Open);
        tokio::time::sleep(Duration::from_millis(3)).await;

        // The upstream holds every admitted probe until all callers have tried.
        let admitted = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (a, g) = (admitted.clone(), gate.clone());
        let upstream = tower::service_fn(move |_req: Request<()>| {
            let (a, g) = (a.clone(), g.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                let _permit = g.acquire().await.unwrap();
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
        let svc = layer.layer(upstream);
        let start = Arc::new(tokio::sync::Barrier::new(CALLERS));
        let mut tasks = Vec::new();
        for _ in 0..CALLERS {
            let mut svc = svc.clone();
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let fut = svc.ready().await.unwrap().call(Request::new(()));
                fut.await.is_ok()
            }));
        }
        // Everyone either got rejected or is parked in the upstream.
        let rejected_all = {
            let b = breaker.clone();
            move || {
                b.snapshot(tokio::time::Instant::now()).rejected
                    == (CALLERS as u64 - PERMITTED as u64)
            }
        };
        eventually(rejected_all).await;
        assert_eq!(
            admitted.load(Ordering::SeqCst),
            PERMITTED as u64,
            "round {round}"
        );
        gate.add_permits(CALLERS);
        let mut passed = 0;
        for t in tasks {
            passed += t.await.unwrap() as u64;
        }
        assert_eq!(passed, PERMITTED as u64, "round {round}");
        assert_eq!(breaker.state(), State::Closed, "round {round}");
    }
}
