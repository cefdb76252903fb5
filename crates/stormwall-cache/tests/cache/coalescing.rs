//! Concurrent misses and revalidations of one key make one upstream request.

use std::sync::Arc;

use stormwall_cache::CacheLayer;
use stormwall_tests::http::TestServer;
use tokio::sync::Semaphore;

use crate::support::*;

/// An origin that holds every request until `gate` gets permits.
async fn gated_origin(cc: &'static str, gate: Arc<Semaphore>) -> TestServer {
    TestServer::start(move |req: http::Request<hyper::body::Incoming>| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.expect("gate");
            let who = req
                .headers()
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            respond(
                200,
                &[("cache-control", cc.to_owned())],
                &format!("for {who}"),
            )
        }
    })
    .await
}

async fn release_when_called(server: &TestServer, gate: &Semaphore, calls: u64) {
    for _ in 0..1_000_000 {
        if server.calls() >= calls {
            break;
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(10_000);
}

// 100 concurrent misses for one URL → 1 origin request; the 99 waiters say `collapsed`.
#[tokio::test]
async fn hundred_concurrent_misses_one_origin_request() {
    let n = if std::env::var("STORMWALL_EXTENDED").is_ok() {
        1_000
    } else {
        100
    };
    let gate = Arc::new(Semaphore::new(0));
    let server = gated_origin("max-age=60", gate.clone()).await;
    let layer = CacheLayer::shared();
    let svc = cached(&layer);
    let url = server.url("/hot");
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let svc = svc.clone();
            let url = url.clone();
            tokio::spawn(async move { get(&svc, &url, &[]).await })
        })
        .collect();
    release_when_called(&server, &gate, 1).await;
    let mut collapsed = 0;
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.body, "for ");
        if got.cache_status().contains("; collapsed") {
            collapsed += 1;
            assert!(got.cache_status().contains("fwd=uri-miss; fwd-status=200"));
        } else {
            assert!(
                got.cache_status().contains("stored"),
                "{}",
                got.cache_status()
            );
        }
    }
    assert_eq!(server.calls(), 1);
    assert_eq!(collapsed, n - 1);
    assert_eq!(layer.handle().stats().collapsed, (n - 1) as u64);
}

// Never hand one user's response to another: a response that is not storable for a shared
// cache (private) is not shared with waiters; each goes upstream with its own credentials.
#[tokio::test]
async fn waiters_do_not_get_private_responses() {
    let gate = Arc::new(Semaphore::new(0));
    let server = gated_origin("private, max-age=60", gate.clone()).await;
    let svc = cached(&CacheLayer::shared());
    let url = server.url("/me");
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let svc = svc.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let who = format!("user{i}");
                let got = get(&svc, &url, &[("authorization", &who)]).await;
                (who, got)
            })
        })
        .collect();
    release_when_called(&server, &gate, 1).await;
    for t in tasks {
        let (who, got) = t.await.unwrap();
        assert_eq!(got.body, format!("for {who}"));
    }
    assert_eq!(server.calls(), 10);
}

// Concurrent revalidations of one stale entry make one conditional request; the waiters get
// the freshened response with `collapsed`.
#[tokio::test(start_paused = true)]
async fn concurrent_revalidations_one_conditional_request() {
    let gate = Arc::new(Semaphore::new(1));
    let g = gate.clone();
    let server = TestServer::start(move |req: http::Request<hyper::body::Incoming>| {
        let g = g.clone();
        async move {
            let _permit = g.acquire().await.expect("gate");
            if req
                .headers()
                .get("if-none-match")
                .is_some_and(|v| v == "\"v1\"")
            {
                respond(304, &[("cache-control", "max-age=10".to_owned())], "")
            } else {
                respond(
                    200,
                    &[
                        ("cache-control", "max-age=10".to_owned()),
                        ("etag", "\"v1\"".to_owned()),
                    ],
                    "body",
                )
            }
        }
    })
    .await;
    let layer = CacheLayer::shared();
    let svc = cached(&layer);
    let url = server.url("/r");
    get(&svc, &url, &[]).await;
    // Close the gate (the first request used its permit and gave it back).
    let held = gate.clone().acquire_owned().await.unwrap();
    tokio::time::advance(std::time::Duration::from_secs(60)).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let svc = svc.clone();
            let url = url.clone();
            tokio::spawn(async move { get(&svc, &url, &[]).await })
        })
        .collect();
    for _ in 0..1_000_000 {
        if server.calls() >= 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    drop(held);
    let mut collapsed = 0;
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.body, "body");
        assert!(
            got.cache_status().contains("fwd=stale; fwd-status=304"),
            "{}",
            got.cache_status()
        );
        if got.cache_status().contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(
        server.calls(),
        2,
        "one conditional request for 20 stale requests"
    );
    assert_eq!(collapsed, 19);
    assert_eq!(layer.handle().stats().revalidated_not_modified, 1);
}
