//! RFC 9111 §5.2.1: request directives.

use std::time::Duration;

use stormwall_cache::CacheLayer;
use stormwall_tests::http::TestServer;

use crate::rfc9111_s4_freshness_validation::etag_origin;
use crate::support::*;

// §5.2.1.4 no-cache and §5.2.1.1 max-age: validate before use (fwd=request).
#[tokio::test(start_paused = true)]
async fn s5_2_1_no_cache_and_max_age() {
    let server = etag_origin("max-age=100").await;
    let svc = cached(&CacheLayer::private());
    get(&svc, &server.url("/a"), &[]).await;
    let nc = get(&svc, &server.url("/a"), &[("cache-control", "no-cache")]).await;
    assert!(
        nc.cache_status().contains("fwd=request; fwd-status=304"),
        "{}",
        nc.cache_status()
    );
    assert_eq!(server.calls(), 2);
    let pragma = get(&svc, &server.url("/a"), &[("pragma", "no-cache")]).await;
    assert!(pragma.cache_status().contains("fwd=request"));
    assert_eq!(server.calls(), 3);
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(
        get(&svc, &server.url("/a"), &[("cache-control", "max-age=30")])
            .await
            .is_hit()
    );
    let old = get(&svc, &server.url("/a"), &[("cache-control", "max-age=10")]).await;
    assert!(old.cache_status().contains("fwd=request"));
    assert_eq!(server.calls(), 4);
}

// §5.2.1.3 min-fresh and §5.2.1.2 max-stale.
#[tokio::test(start_paused = true)]
async fn s5_2_1_min_fresh_and_max_stale() {
    let server = etag_origin("max-age=100").await;
    let svc = cached(&CacheLayer::private());
    get(&svc, &server.url("/a"), &[]).await;
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(
        get(
            &svc,
            &server.url("/a"),
            &[("cache-control", "min-fresh=30")]
        )
        .await
        .is_hit()
    );
    let strict = get(
        &svc,
        &server.url("/a"),
        &[("cache-control", "min-fresh=50")],
    )
    .await;
    assert!(!strict.is_hit());
    assert_eq!(server.calls(), 2);
    // Revalidated just now: make it stale by 50 s.
    tokio::time::advance(Duration::from_secs(150)).await;
    let ok = get(
        &svc,
        &server.url("/a"),
        &[("cache-control", "max-stale=60")],
    )
    .await;
    assert!(ok.is_hit(), "{}", ok.cache_status());
    assert!(ok.cache_status().contains("detail=max-stale"));
    let too_old = get(
        &svc,
        &server.url("/a"),
        &[("cache-control", "max-stale=10")],
    )
    .await;
    assert!(!too_old.is_hit());
    assert_eq!(server.calls(), 3);
}

// §5.2.1.7 only-if-cached: 504 when nothing usable is stored, the stored response otherwise;
// §5.2.1.5 no-store in the request.
#[tokio::test]
async fn s5_2_1_only_if_cached() {
    let server = TestServer::start(|_req| async {
        respond(200, &[("cache-control", "max-age=100".to_owned())], "v")
    })
    .await;
    let svc = cached(&CacheLayer::shared());
    let miss = get(
        &svc,
        &server.url("/a"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(miss.status, 504);
    assert!(miss.cache_status().contains("detail=only-if-cached"));
    assert_eq!(server.calls(), 0);
    get(&svc, &server.url("/a"), &[]).await;
    let hit = get(
        &svc,
        &server.url("/a"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(hit.status, 200);
    assert_eq!(server.calls(), 1);
}
