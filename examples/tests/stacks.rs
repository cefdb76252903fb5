//! The facade's standard stacks against real loopback servers: every outbound rejection
//! surfaces as the one `stormwall::Error` with its kind, the inbound stack answers 429/503 as
//! responses, caches serve hits without calling the origin, and a TOML configuration builds a
//! working stack.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormwall::body::Body;
use stormwall::cache::CacheLayer;
use stormwall::circuit::{BreakerConfig, CircuitBreakerLayer, Window};
use stormwall::config::StormwallConfig;
use stormwall::core::key::PeerIp;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use stormwall::retry::{Backoff, RetryLayer};
use stormwall::{Error, InboundStack, Outbound, OutboundStack};
use stormwall_tests::fault::FaultServer;
use stormwall_tests::http::TestServer;
use tokio::sync::{Notify, Semaphore};
use tower::{Layer, ServiceExt};

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http::<Body>()
}

async fn get_via(svc: &Outbound, url: &str) -> Result<(StatusCode, Bytes), Error> {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let res = svc.clone().oneshot(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Ok((status, body))
}

// ---------------------------------------------------------------- outbound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_open_breaker_fails_fast_with_retry_after() {
    let server = FaultServer::start().await;
    server.fail(1.0, StatusCode::SERVICE_UNAVAILABLE);
    let breaker = CircuitBreakerLayer::new(
        "stacks-breaker",
        BreakerConfig::new()
            .window(Window::ConsecutiveFailures(3))
            .wait_duration(Duration::from_secs(30)),
    )
    .unwrap();
    let svc = OutboundStack::new()
        .circuit_breaker(breaker)
        .layer(client());
    for _ in 0..3 {
        let (status, _) = get_via(&svc, &server.url("/")).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let err = get_via(&svc, &server.url("/")).await.unwrap_err();
    assert!(err.is_circuit_open(), "{err}");
    let after = err.retry_after().expect("the remaining open time");
    assert!(
        after > Duration::ZERO && after <= Duration::from_secs(30),
        "{after:?}"
    );
    assert_eq!(
        server.stats().requests,
        3,
        "the open breaker did not call the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_rate_limit_in_reject_mode_is_rate_limited() {
    let server = TestServer::start(|_req| async { stormwall_tests::http::ok("hi") }).await;
    let limit = RateLimitLayer::new(Limit::global(
        "stacks-reject",
        Quota::per_minute(2).unwrap(),
    ))
    .headers_on_admitted(false);
    let svc = OutboundStack::new().rate_limit(limit).layer(client());
    for _ in 0..2 {
        let (status, body) = get_via(&svc, &server.url("/")).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"hi"[..]));
    }
    let err = get_via(&svc, &server.url("/")).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    let after = err
        .retry_after()
        .expect("when the request would be admitted");
    assert!(
        after > Duration::ZERO && after <= Duration::from_secs(30),
        "{after:?}"
    );
    assert_eq!(server.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_attempt_timeout_is_a_timeout() {
    let server = FaultServer::start().await;
    server.hang();
    let svc = OutboundStack::new()
        .attempt_timeout(Duration::from_millis(200))
        .layer(client());
    let err = get_via(&svc, &server.url("/slow")).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(server.stats().requests, 1);
    server.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_retries_heal_a_503_blip() {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let server = TestServer::start(move |_req| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut res = stormwall_tests::http::ok(if n < 2 { "down" } else { "up" });
            if n < 2 {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            res
        }
    })
    .await;
    let retry = RetryLayer::new().max_attempts(3).backoff(Backoff::none());
    let stats = retry.clone();
    let svc = OutboundStack::new().retry(retry).layer(client());
    let (status, body) = get_via(&svc, &server.url("/blip")).await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"up"[..]));
    assert_eq!(server.calls(), 3);
    assert_eq!(stats.stats().retries, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_cache_hit_does_not_call_the_origin() {
    let server = TestServer::start(|_req| async {
        let mut res = stormwall_tests::http::ok("cached body");
        res.headers_mut()
            .insert("cache-control", "max-age=60".parse().unwrap());
        res
    })
    .await;
    let svc = OutboundStack::new()
        .cache(CacheLayer::private())
        .layer(client());
    let first = get_via(&svc, &server.url("/doc")).await.unwrap();
    let second = get_via(&svc, &server.url("/doc")).await.unwrap();
    assert_eq!(first, (StatusCode::OK, Bytes::from("cached body")));
    assert_eq!(second, first);
    assert_eq!(server.calls(), 1, "the second GET was a cache hit");
}

// ---------------------------------------------------------------- inbound

struct App {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(router: Router) -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    App { addr, task }
}

async fn plain_get(addr: SocketAddr, path: &str) -> Response<Bytes> {
    let res = stormwall_tests::http::client()
        .get(format!("http://{addr}{path}").parse().unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_over_the_per_ip_limit_is_429_with_headers() {
    let per_ip = Limit::new("per-ip", PeerIp::new(), Quota::per_minute(2).unwrap());
    let router = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(InboundStack::new().rate_limit(RateLimitLayer::new(per_ip)));
    let app = serve(router).await;
    for _ in 0..2 {
        let res = plain_get(app.addr, "/").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().contains_key("ratelimit"), "{res:?}");
    }
    let res = plain_get(app.addr, "/").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{res:?}");
    let policy = res.headers()["ratelimit-policy"].to_str().unwrap();
    assert!(
        policy.contains("per-ip") && policy.contains("q=2"),
        "{policy}"
    );
    assert!(
        res.headers()["ratelimit"].to_str().unwrap().contains("r=0"),
        "{res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_saturated_concurrency_limit_is_503_with_retry_after() {
    let entered = Arc::new(Notify::new());
    let gate = Arc::new(Semaphore::new(0));
    let (e, g) = (entered.clone(), gate.clone());
    let router = Router::new()
        .route(
            "/hold",
            get(move || {
                let (e, g) = (e.clone(), g.clone());
                async move {
                    e.notify_one();
                    let _permit = g.acquire().await.unwrap();
                    "released"
                }
            }),
        )
        .layer(InboundStack::new().concurrency_limit(1));
    let app = serve(router).await;
    let addr = app.addr;
    let held = tokio::spawn(async move { plain_get(addr, "/hold").await });
    tokio::time::timeout(Duration::from_secs(10), entered.notified())
        .await
        .expect("the first request reached the handler");
    let res = plain_get(addr, "/hold").await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    gate.add_permits(1);
    let first = held.await.unwrap();
    assert_eq!(
        (first.status(), &first.body()[..]),
        (StatusCode::OK, &b"released"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_shared_cache_serves_the_second_get() {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let router = Router::new()
        .route(
            "/doc",
            get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut res = Response::new(format!("version {n}"));
                    res.headers_mut()
                        .insert("cache-control", "public, max-age=60".parse().unwrap());
                    Ok::<_, Infallible>(res)
                }
            }),
        )
        .layer(InboundStack::new().cache(CacheLayer::shared()));
    let app = serve(router).await;
    let first = plain_get(app.addr, "/doc").await;
    let second = plain_get(app.addr, "/doc").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(&first.body()[..], b"version 0");
    assert_eq!(&second.body()[..], b"version 0");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second GET was a cache hit"
    );
}

// ---------------------------------------------------------------- configuration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_configuration_builds_working_stacks() {
    let config = StormwallConfig::from_toml_str(
        r#"
        [outbound]
        name = "partner"
        preset = "standard"
        attempt_timeout = "2s"

        [outbound.rate_limit]
        per_second = 0.5
        burst = 2
        mode = "reject"

        [inbound]
        standard = false

        [inbound.rate_limit]
        per_second = 0.5
        burst = 1
        key = "peer_ip"
        "#,
    )
    .unwrap();

    let server = TestServer::start(|req: Request<hyper::body::Incoming>| async move {
        stormwall_tests::http::ok(req.uri().path().to_owned())
    })
    .await;
    let outbound = config.outbound.as_ref().unwrap().build().unwrap();
    let svc = outbound.layer(client());
    // Distinct paths, so neither the cache nor the coalescer hides a request.
    for path in ["/a", "/b"] {
        let (status, body) = get_via(&svc, &server.url(path)).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, path.as_bytes()));
    }
    let err = get_via(&svc, &server.url("/c")).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert_eq!(server.calls(), 2);

    let inbound = config.inbound.as_ref().unwrap().build().unwrap();
    let app = serve(
        Router::new()
            .route("/", get(|| async { "hi" }))
            .layer(inbound),
    )
    .await;
    assert_eq!(plain_get(app.addr, "/").await.status(), StatusCode::OK);
    assert_eq!(
        plain_get(app.addr, "/").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}
