//! RFC 9111 §4.2 (freshness, age), §4.3 (validation), §4.4 (invalidation). Instant-based ages
//! run on a paused clock; HTTP dates are explicit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use stormwall_cache::CacheLayer;
use stormwall_tests::http::TestServer;

use crate::support::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An origin with a strong validator: 304 when If-None-Match matches, else 200.
pub(crate) async fn etag_origin(cc: &'static str) -> TestServer {
    TestServer::start(move |req: Request<hyper::body::Incoming>| async move {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            respond(
                304,
                &[
                    ("cache-control", cc.to_owned()),
                    ("x-fresh", "new".to_owned()),
                ],
                "",
            )
        } else {
            respond(
                200,
                &[
                    ("cache-control", cc.to_owned()),
                    ("etag", "\"v1\"".to_owned()),
                    ("x-fresh", "old".to_owned()),
                ],
                "full body",
            )
        }
    })
    .await
}

// §4.2.1/§4.2.3: max-age, resident time on a paused clock, Age header, then stale.
#[tokio::test(start_paused = true)]
async fn s4_2_max_age_and_age_header() {
    let server = TestServer::start(|_req| async {
        respond(200, &[("cache-control", "max-age=100".to_owned())], "v")
    })
    .await;
    let layer = CacheLayer::private();
    let svc = cached(&layer);
    get(&svc, &server.url("/a"), &[]).await;
    tokio::time::advance(secs(50)).await;
    let hit = get(&svc, &server.url("/a"), &[]).await;
    assert!(hit.is_hit());
    let age: u64 = hit.header("age").unwrap().parse().unwrap();
    assert!((50..=51).contains(&age), "age {age}");
    tokio::time::advance(secs(60)).await;
    let stale = get(&svc, &server.url("/a"), &[]).await;
    assert_eq!(server.calls(), 2);
    assert!(
        stale.cache_status().contains("fwd=stale; fwd-status=200"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(layer.handle().stats().revalidated_modified, 1);
}

// §4.2.3: the origin's Age counts towards the current age.
#[tokio::test(start_paused = true)]
async fn s4_2_3_origin_age_counts() {
    let server = TestServer::start(|_req| async {
        respond(
            200,
            &[
                ("cache-control", "max-age=100".to_owned()),
                ("age", "90".to_owned()),
            ],
            "v",
        )
    })
    .await;
    let svc = cached(&CacheLayer::private());
    let first = get(&svc, &server.url("/a"), &[]).await;
    assert!(
        first.cache_status().contains("ttl=10"),
        "{}",
        first.cache_status()
    );
    tokio::time::advance(secs(5)).await;
    assert!(get(&svc, &server.url("/a"), &[]).await.is_hit());
    tokio::time::advance(secs(6)).await;
    assert!(!get(&svc, &server.url("/a"), &[]).await.is_hit());
    assert_eq!(server.calls(), 2);
}

// §4.2.1: Expires − Date; an invalid Expires means already expired.
#[tokio::test]
async fn s4_2_1_expires() {
    let server = TestServer::start(|req: Request<hyper::body::Incoming>| async move {
        let now = SystemTime::now();
        let expires = if req.uri().path() == "/bad" {
            "0".to_owned()
        } else {
            http_date(now + Duration::from_secs(30))
        };
        respond(200, &[("date", http_date(now)), ("expires", expires)], "v")
    })
    .await;
    let svc = cached(&CacheLayer::private());
    let first = get(&svc, &server.url("/ok"), &[]).await;
    let cs = first.cache_status();
    assert!(cs.contains("ttl=29") || cs.contains("ttl=30"), "{cs}");
    assert!(get(&svc, &server.url("/ok"), &[]).await.is_hit());
    get(&svc, &server.url("/bad"), &[]).await;
    assert!(!get(&svc, &server.url("/bad"), &[]).await.is_hit());
    assert_eq!(server.calls(), 3);
}

// §4.2.1: s-maxage applies to shared caches only, before max-age.
#[tokio::test(start_paused = true)]
async fn s4_2_1_s_maxage_shared_only() {
    let server = TestServer::start(|_req| async {
        respond(
            200,
            &[("cache-control", "max-age=10, s-maxage=100".to_owned())],
            "v",
        )
    })
    .await;
    let shared = cached(&CacheLayer::shared());
    let private = cached(&CacheLayer::private());
    get(&shared, &server.url("/a"), &[]).await;
    get(&private, &server.url("/a"), &[]).await;
    tokio::time::advance(secs(50)).await;
    assert!(get(&shared, &server.url("/a"), &[]).await.is_hit());
    assert!(!get(&private, &server.url("/a"), &[]).await.is_hit());
}

// §4.3.1/§4.3.3/§4.3.4: stale → conditional request → 304 freshens the stored headers.
#[tokio::test(start_paused = true)]
async fn s4_3_revalidation_304_freshens() {
    let server = etag_origin("max-age=100").await;
    let layer = CacheLayer::private();
    let svc = cached(&layer);
    let first = get(&svc, &server.url("/a"), &[]).await;
    assert_eq!(first.header("x-fresh"), Some("old"));
    tokio::time::advance(secs(200)).await;
    let second = get(&svc, &server.url("/a"), &[]).await;
    assert_eq!(server.calls(), 2);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, "full body");
    assert_eq!(
        second.header("x-fresh"),
        Some("new"),
        "304 headers replace stored ones"
    );
    assert!(
        second.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status()
    );
    let third = get(&svc, &server.url("/a"), &[]).await;
    assert!(third.is_hit());
    assert_eq!(third.header("x-fresh"), Some("new"));
    assert_eq!(layer.handle().stats().revalidated_not_modified, 1);
}

// §4.3.2: the cache answers a client's conditional request from a fresh stored response.
#[tokio::test]
async fn s4_3_2_client_conditional_from_cache() {
    let server = etag_origin("max-age=100").await;
    let svc = cached(&CacheLayer::private());
    get(&svc, &server.url("/a"), &[]).await;
    let nm = get(&svc, &server.url("/a"), &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());
    assert!(nm.is_hit());
    let full = get(&svc, &server.url("/a"), &[("if-none-match", "\"other\"")]).await;
    assert_eq!(full.status, 200);
    assert_eq!(server.calls(), 1);
}

// §5.2.2.4: a no-cache response is validated on every use.
#[tokio::test]
async fn s5_2_2_4_no_cache_response_always_validated() {
    let server = etag_origin("no-cache").await;
    let svc = cached(&CacheLayer::shared());
    get(&svc, &server.url("/a"), &[]).await;
    for i in 0..3 {
        let got = get(&svc, &server.url("/a"), &[]).await;
        assert_eq!(got.body, "full body");
        assert!(got.cache_status().contains("fwd-status=304"));
        assert_eq!(server.calls(), 2 + i);
    }
}

// §5.2.2.2/§5.2.2.8: a client's max-stale never overrides must-revalidate, nor
// proxy-revalidate in a shared cache (but does in a private one).
#[tokio::test(start_paused = true)]
async fn s5_2_2_max_stale_vs_revalidate_directives() {
    for (cc, shared, revalidated) in [
        ("max-age=10, must-revalidate", false, true),
        ("max-age=10, proxy-revalidate", true, true),
        ("max-age=10, s-maxage=10", true, true),
        ("max-age=10, proxy-revalidate", false, false),
        ("max-age=10", true, false),
    ] {
        let server = etag_origin(cc).await;
        let layer = if shared {
            CacheLayer::shared()
        } else {
            CacheLayer::private()
        };
        let svc = cached(&layer);
        get(&svc, &server.url("/a"), &[]).await;
        tokio::time::advance(secs(100)).await;
        let got = get(&svc, &server.url("/a"), &[("cache-control", "max-stale")]).await;
        assert_eq!(
            server.calls() == 2,
            revalidated,
            "{cc} shared={shared}: {}",
            got.cache_status()
        );
        if !revalidated {
            assert!(
                got.is_hit() && got.cache_status().contains("ttl=-"),
                "{}",
                got.cache_status()
            );
        }
    }
}

// §4.4: a successful unsafe method invalidates the target URI and same-origin Location /
// Content-Location, not other origins.
#[tokio::test]
async fn s4_4_unsafe_methods_invalidate() {
    let posts = Arc::new(AtomicU64::new(0));
    let p = posts.clone();
    let server = TestServer::start(move |req: Request<hyper::body::Incoming>| {
        let p = p.clone();
        async move {
            if req.method() == http::Method::POST {
                p.fetch_add(1, Ordering::SeqCst);
                let fail = req.uri().path() == "/fail";
                return respond(
                    if fail { 500 } else { 201 },
                    &[
                        ("location", "/items/7".to_owned()),
                        (
                            "content-location",
                            "http://elsewhere.example/other".to_owned(),
                        ),
                    ],
                    "",
                );
            }
            respond(
                200,
                &[("cache-control", "max-age=600".to_owned())],
                req.uri().path(),
            )
        }
    })
    .await;
    let layer = CacheLayer::shared();
    let svc = cached(&layer);
    for path in ["/items", "/items/7", "/other", "/fail"] {
        get(&svc, &server.url(path), &[]).await;
    }
    assert_eq!(server.calls(), 4);
    let post = |path: &str| {
        Request::post(server.url(path))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let res = send(&svc, post("/items")).await;
    assert!(res.cache_status().contains("fwd=method; fwd-status=201"));
    assert!(
        !get(&svc, &server.url("/items"), &[]).await.is_hit(),
        "target invalidated"
    );
    assert!(
        !get(&svc, &server.url("/items/7"), &[]).await.is_hit(),
        "Location invalidated"
    );
    assert!(
        get(&svc, &server.url("/other"), &[]).await.is_hit(),
        "other origin untouched"
    );
    // An error response does not invalidate.
    send(&svc, post("/fail")).await;
    assert!(get(&svc, &server.url("/fail"), &[]).await.is_hit());
    assert_eq!(posts.load(Ordering::SeqCst), 2);
    assert!(layer.handle().stats().invalidated >= 2);
}
