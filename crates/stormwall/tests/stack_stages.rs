//! The standard stacks with stages the presets do not use: a rate limiter over the Redis store
//! (a quota shared by two instances) and coalescing on a custom key, against real loopback
//! servers and a real `redis-server`.

#![cfg(all(feature = "full", feature = "redis"))]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormwall::body::Body;
use stormwall::coalesce::CoalesceLayer;
use stormwall::core::key::MethodPath;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use stormwall::redis::RedisStore;
use stormwall::{InboundStack, OutboundStack};
use stormwall_tests::http::{TestServer, ok};
use stormwall_tests::redis::RedisServer;
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt, service_fn};

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http::<Body>()
}

fn redis_limit(url: &str, prefix: &str, quota: Quota) -> RateLimitLayer<RedisStore> {
    let store = RedisStore::builder()
        .prefix(prefix.to_owned())
        // Counts are under test, not latency: generous on a loaded box.
        .timeout(Duration::from_secs(2))
        .connect(url)
        .expect("redis store");
    RateLimitLayer::with_store(Limit::global("partner", quota), store)
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// Two instances, each with its own outbound stack whose limiter keeps its state in one Redis:
/// together they get the partner's quota (3 per minute) once, not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_stacks_share_a_quota_through_redis() {
    let redis = RedisServer::start();
    let upstream = TestServer::start(|_req| async { ok("partner") }).await;
    let quota = Quota::per_minute(3).unwrap();
    let instances: Vec<_> = (0..2)
        .map(|_| {
            OutboundStack::standard("partner")
                .without_cache()
                .rate_limit(redis_limit(&redis.url(), "facade-out", quota))
                .layer(client())
        })
        .collect();
    let mut admitted = 0;
    let mut limited = 0;
    for i in 0..6 {
        let url = upstream.url(&format!("/item/{i}"));
        match instances[i % 2].clone().oneshot(get(&url)).await {
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::OK);
                admitted += 1;
            }
            Err(e) => {
                assert!(e.is_rate_limited(), "{e}");
                limited += 1;
            }
        }
    }
    assert_eq!((admitted, limited), (3, 3));
    assert_eq!(upstream.calls(), 3);
}

/// The inbound stack with a Redis-backed limiter answers 429 once the shared quota is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_stack_rejects_from_a_redis_quota() {
    let redis = RedisServer::start();
    let handler = service_fn(|_req: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
    });
    let quota = Quota::per_minute(2).unwrap();
    let a = InboundStack::standard()
        .without_cache()
        .rate_limit(redis_limit(&redis.url(), "facade-in", quota))
        .layer(handler);
    let b = InboundStack::standard()
        .without_cache()
        .rate_limit(redis_limit(&redis.url(), "facade-in", quota))
        .layer(handler);
    let mut statuses = Vec::new();
    for svc in [&a, &b, &a, &b] {
        let res = svc.clone().oneshot(get("http://svc/x")).await.unwrap();
        statuses.push(res.status());
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

/// Coalescing on a custom key (method and path, ignoring the query): two concurrent requests
/// that differ only in their query make one upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_stack_coalesces_on_a_custom_key() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = {
        let gate = Arc::clone(&gate);
        TestServer::start(move |_req| {
            let gate = Arc::clone(&gate);
            async move {
                gate.acquire().await.unwrap().forget();
                ok("user 1")
            }
        })
        .await
    };
    let coalesce = CoalesceLayer::new().key(MethodPath::new());
    let stats = coalesce.stats();
    let svc = OutboundStack::standard("partner")
        .without_cache()
        .coalesce(coalesce)
        .layer(client());
    let calls: Vec<_> = ["/users/1?v=a", "/users/1?v=b"]
        .into_iter()
        .map(|path| tokio::spawn(svc.clone().oneshot(get(&upstream.url(path)))))
        .collect();
    while stats.snapshot().hits < 1 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(2);
    for call in calls {
        let res = call.await.unwrap().unwrap();
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "user 1"
        );
    }
    assert_eq!(upstream.calls(), 1);
    let s = stats.snapshot();
    assert_eq!((s.misses, s.hits), (1, 1));
}
