//! RFC 5861: stale-while-revalidate and stale-if-error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use stormwall_cache::CacheLayer;
use stormwall_tests::http::TestServer;

use crate::support::*;

async fn counting_origin(cc: &'static str) -> TestServer {
    let n = Arc::new(AtomicU64::new(0));
    TestServer::start(move |_req| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        async move { respond(200, &[("cache-control", cc.to_owned())], &format!("v{n}")) }
    })
    .await
}

// §3: the stale response is served at once; exactly one background request refreshes it.
#[tokio::test(start_paused = true)]
async fn s3_stale_while_revalidate_one_background_refresh() {
    let server = counting_origin("max-age=10, stale-while-revalidate=100").await;
    let layer = CacheLayer::private();
    let svc = cached(&layer);
    assert_eq!(get(&svc, &server.url("/a"), &[]).await.body, "v1");
    tokio::time::advance(Duration::from_secs(20)).await;
    // Several requests while stale: all answered at once from the cache.
    for _ in 0..5 {
        let got = get(&svc, &server.url("/a"), &[]).await;
        assert_eq!(got.body, "v1");
        let cs = got.cache_status();
        assert!(
            cs.contains("; hit; fwd=stale") && cs.contains("detail=stale-while-revalidate"),
            "{cs}"
        );
    }
    // Wait (bounded, no sleeps) for the background refresh to land.
    let mut refreshed = None;
    let mut stale_seen = 5;
    for _ in 0..100_000 {
        tokio::task::yield_now().await;
        if server.calls() == 2 {
            let got = get(&svc, &server.url("/a"), &[]).await;
            if got.body == "v2" {
                refreshed = Some(got);
                break;
            }
            stale_seen += 1;
        }
    }
    let refreshed = refreshed.expect("the background refresh stored v2");
    assert!(refreshed.is_hit());
    assert_eq!(server.calls(), 2, "exactly one background request");
    let stats = layer.handle().stats();
    assert_eq!(stats.stale_served, stale_seen);
    assert_eq!(stats.revalidated_modified, 1);
}

// The configurable default grace applies when the response has no stale-while-revalidate.
#[tokio::test(start_paused = true)]
async fn default_grace_stale_while_revalidate() {
    let server = counting_origin("max-age=10").await;
    let svc = cached(&CacheLayer::private().stale_while_revalidate(Duration::from_secs(30)));
    get(&svc, &server.url("/a"), &[]).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    let got = get(&svc, &server.url("/a"), &[]).await;
    assert_eq!(got.body, "v1");
    assert!(got.cache_status().contains("stale-while-revalidate"));
}

/// An origin that serves `cc` until `down` is set, then answers 503.
async fn failing_origin(cc: &'static str, down: Arc<AtomicBool>) -> TestServer {
    TestServer::start(move |_req| {
        let down = down.load(Ordering::SeqCst);
        async move {
            if down {
                respond(503, &[], "down")
            } else {
                respond(200, &[("cache-control", cc.to_owned())], "good")
            }
        }
    })
    .await
}

// §4: stale-if-error on 500/502/503/504 and on connection failure, with Cache-Status saying so.
#[tokio::test(start_paused = true)]
async fn s4_stale_if_error() {
    let down = Arc::new(AtomicBool::new(false));
    let server = failing_origin("max-age=10, stale-if-error=100", down.clone()).await;
    let layer = CacheLayer::private();
    let svc = cached(&layer);
    get(&svc, &server.url("/a"), &[]).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    down.store(true, Ordering::SeqCst);
    let got = get(&svc, &server.url("/a"), &[]).await;
    assert_eq!((got.status.as_u16(), &got.body[..]), (200, &b"good"[..]));
    let cs = got.cache_status();
    assert!(
        cs.contains("fwd=stale; fwd-status=503") && cs.contains("detail=stale-if-error"),
        "{cs}"
    );

    // Origin gone entirely: connection failure.
    let url = server.url("/a");
    drop(server);
    let got = get(&svc, &url, &[]).await;
    assert_eq!(got.body, "good");
    assert!(
        got.cache_status().contains("detail=stale-if-error"),
        "{}",
        got.cache_status()
    );
    assert_eq!(layer.handle().stats().stale_served, 2);

    // Beyond the window: the failure comes through.
    tokio::time::advance(Duration::from_secs(200)).await;
    let res = svc.clone();
    let err = tower::ServiceExt::oneshot(
        res,
        http::Request::get(&url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert!(err.is_err(), "connection failure surfaces once too stale");
}

// stale-if-error never overrides must-revalidate.
#[tokio::test(start_paused = true)]
async fn stale_if_error_not_with_must_revalidate() {
    let down = Arc::new(AtomicBool::new(false));
    let server = failing_origin(
        "max-age=10, stale-if-error=100, must-revalidate",
        down.clone(),
    )
    .await;
    let svc = cached(&CacheLayer::private());
    get(&svc, &server.url("/a"), &[]).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    down.store(true, Ordering::SeqCst);
    let got = get(&svc, &server.url("/a"), &[]).await;
    assert_eq!(got.status, 503);
    assert_eq!(got.body, "down");
}

// The configurable default stale-if-error grace.
#[tokio::test(start_paused = true)]
async fn default_grace_stale_if_error() {
    let down = Arc::new(AtomicBool::new(false));
    let server = failing_origin("max-age=10", down.clone()).await;
    let svc = cached(&CacheLayer::private().stale_if_error(Duration::from_secs(60)));
    get(&svc, &server.url("/a"), &[]).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    down.store(true, Ordering::SeqCst);
    let got = get(&svc, &server.url("/a"), &[]).await;
    assert_eq!(got.body, "good");
}
