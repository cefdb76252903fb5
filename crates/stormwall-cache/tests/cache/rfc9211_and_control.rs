//! RFC 9211 `Cache-Status` on every response, and the control surface: predicate, default
//! TTL, purges, stats.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use stormwall_cache::{CacheLayer, Candidate};
use stormwall_tests::http::TestServer;

use crate::support::*;

async fn origin(cc: &'static str) -> TestServer {
    TestServer::start(move |req: Request<hyper::body::Incoming>| async move {
        let hs: Vec<(&str, String)> = if cc.is_empty() {
            vec![]
        } else {
            vec![("cache-control", cc.to_owned())]
        };
        respond(200, &hs, req.uri().path())
    })
    .await
}

// RFC 9211: every response carries the cache's member, including bypassed ones; names that
// are not sf-tokens are quoted.
#[tokio::test]
async fn rfc9211_cache_status_on_every_response() {
    let server = origin("max-age=60").await;
    let svc = cached(&CacheLayer::private().name("my cache"));
    let range = get(&svc, &server.url("/r"), &[("range", "bytes=0-1")]).await;
    assert_eq!(
        range.cache_status(),
        "\"my cache\"; fwd=bypass; fwd-status=200"
    );
    let head = send(
        &svc,
        Request::head(server.url("/r"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        head.cache_status(),
        "\"my cache\"; fwd=method; fwd-status=200"
    );
    let del = send(
        &svc,
        Request::delete(server.url("/r"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(
        del.cache_status(),
        "\"my cache\"; fwd=method; fwd-status=200"
    );
    let miss = get(&svc, &server.url("/r"), &[]).await;
    assert!(miss.cache_status().contains("stored"));
    let hit = get(&svc, &server.url("/r"), &[]).await;
    assert!(hit.cache_status().starts_with("\"my cache\"; hit; ttl="));
}

// The predicate narrows what may be stored, on top of the RFC rules.
#[tokio::test]
async fn predicate_limits_storage() {
    let server = origin("max-age=60").await;
    let layer =
        CacheLayer::private().predicate(|c: &Candidate<'_>| c.uri.path().starts_with("/static/"));
    let svc = cached(&layer);
    for _ in 0..2 {
        get(&svc, &server.url("/static/a.css"), &[]).await;
        let api = get(&svc, &server.url("/api/x"), &[]).await;
        assert!(api.cache_status().contains("detail=predicate"));
    }
    assert_eq!(server.calls(), 3);
}

// Default TTL for responses without freshness information: off by default.
#[tokio::test]
async fn default_ttl_off_by_default() {
    let server = origin("").await;
    let svc = cached(&CacheLayer::private());
    get(&svc, &server.url("/a"), &[]).await;
    assert!(!get(&svc, &server.url("/a"), &[]).await.is_hit());
    let svc = cached(&CacheLayer::private().default_ttl(Duration::from_secs(30)));
    get(&svc, &server.url("/b"), &[]).await;
    let hit = get(&svc, &server.url("/b"), &[]).await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    // An explicit max-age=0 is information: the default TTL does not override it.
    let server0 = origin("max-age=0").await;
    get(&svc, &server0.url("/c"), &[]).await;
    assert!(!get(&svc, &server0.url("/c"), &[]).await.is_hit());
}

// Purge one URL, a URL prefix, or everything.
#[tokio::test]
async fn purge_api() {
    let server = origin("max-age=600").await;
    let layer = CacheLayer::private();
    let svc = cached(&layer);
    for p in ["/a/1", "/a/2", "/b/1"] {
        get(&svc, &server.url(p), &[]).await;
    }
    let handle = layer.handle();
    assert_eq!(handle.stats().entries, 3);
    assert!(handle.purge(&server.url("/b/1")));
    assert!(!handle.purge(&server.url("/b/1")));
    assert_eq!(handle.purge_prefix(&server.url("/a/")), 2);
    assert_eq!(handle.stats().entries, 0);
    get(&svc, &server.url("/a/1"), &[]).await;
    handle.purge_all();
    assert_eq!(handle.stats().entries, 0);
    assert!(!get(&svc, &server.url("/a/1"), &[]).await.is_hit());
    assert_eq!(server.calls(), 5);
}

// Metrics are emitted under the documented names.
#[tokio::test]
async fn metrics_names() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The counter handles are registered when the cache state is created.
    let layer = metrics::with_local_recorder(&recorder, || {
        let layer = CacheLayer::private();
        let _ = layer.handle();
        layer
    });
    let server = origin("max-age=60").await;
    let svc = cached(&layer);
    get(&svc, &server.url("/m"), &[]).await;
    get(&svc, &server.url("/m"), &[]).await;
    let counters: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((key.key().name().to_owned(), n)),
            _ => None,
        })
        .collect();
    assert_eq!(
        counters.get("stormwall_cache_hits_total"),
        Some(&1),
        "{counters:?}"
    );
    assert_eq!(counters.get("stormwall_cache_misses_total"), Some(&1));
    assert_eq!(counters.get("stormwall_cache_stored_total"), Some(&1));
}
