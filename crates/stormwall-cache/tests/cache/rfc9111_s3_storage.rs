//! RFC 9111 §3 (storing responses) and §4 (cache key, Vary).

use std::sync::Arc;

use stormwall_cache::CacheLayer;
use stormwall_tests::http::TestServer;

use crate::support::*;

/// An origin answering every request with `status`, these headers and a body counting calls.
async fn origin(status: u16, headers: &[(&str, &str)]) -> TestServer {
    let headers: Arc<Vec<(String, String)>> = Arc::new(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    TestServer::start(move |_req| {
        let headers = headers.clone();
        let n = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move {
            let hs: Vec<(&str, String)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            respond(status, &hs, &format!("response {n}"))
        }
    })
    .await
}

/// Sends `n` GETs and returns the origin's call count and the last response.
async fn twice(
    layer: &CacheLayer,
    server: &TestServer,
    req_headers: &[(&str, &str)],
) -> (u64, Got) {
    let svc = cached(layer);
    let first = get(&svc, &server.url("/r"), req_headers).await;
    assert_eq!(first.body, "response 1");
    let second = get(&svc, &server.url("/r"), req_headers).await;
    (server.calls(), second)
}

// §3: a fresh storable response is stored and served from the cache, with Age and
// Cache-Status.
#[tokio::test]
async fn s3_stores_and_serves_fresh() {
    let server = origin(200, &[("cache-control", "max-age=60")]).await;
    let layer = CacheLayer::private().name("test-cache");
    let svc = cached(&layer);
    let first = get(&svc, &server.url("/r"), &[]).await;
    // hyper's server adds a whole-second Date: the apparent age is below one second.
    let cs = first.cache_status();
    assert!(
        cs == "test-cache; fwd=uri-miss; fwd-status=200; ttl=60; stored"
            || cs == "test-cache; fwd=uri-miss; fwd-status=200; ttl=59; stored",
        "{cs}"
    );
    let second = get(&svc, &server.url("/r"), &[]).await;
    assert_eq!(server.calls(), 1);
    assert_eq!(second.body, "response 1");
    assert!(second.cache_status().starts_with("test-cache; hit; ttl="));
    assert!(
        second.header("age").is_some(),
        "Age on every cached response"
    );
    let stats = layer.handle().stats();
    assert_eq!((stats.hits, stats.misses, stats.stored), (1, 1, 1));
    assert!(stats.bytes_stored > 0);
    assert_eq!(stats.entries, 1);
}

// §3: no-store in the response or the request: never stored.
#[tokio::test]
async fn s3_no_store() {
    let server = origin(200, &[("cache-control", "no-store, max-age=60")]).await;
    let (calls, second) = twice(&CacheLayer::shared(), &server, &[]).await;
    assert_eq!(calls, 2);
    assert_eq!(second.body, "response 2");
    assert!(second.cache_status().contains("detail=no-store"));

    let server = origin(200, &[("cache-control", "max-age=60")]).await;
    let (calls, _) = twice(
        &CacheLayer::shared(),
        &server,
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(calls, 2);
}

// §3 / §5.2.2.7: private responses are not stored by a shared cache, but are by a private one.
#[tokio::test]
async fn s3_private_in_shared_mode() {
    let server = origin(200, &[("cache-control", "private, max-age=60")]).await;
    let (calls, second) = twice(&CacheLayer::shared(), &server, &[]).await;
    assert_eq!(calls, 2);
    assert!(second.cache_status().contains("detail=private"));

    let server = origin(200, &[("cache-control", "private, max-age=60")]).await;
    let (calls, second) = twice(&CacheLayer::private(), &server, &[]).await;
    assert_eq!(calls, 1);
    assert!(second.is_hit());
}

// §3.5: a shared cache stores a response to a request with Authorization only with public,
// s-maxage or must-revalidate; and never hands one user's response to another otherwise.
#[tokio::test]
async fn s3_5_authorization() {
    let auth = [("authorization", "Bearer alice")];
    let server = origin(200, &[("cache-control", "max-age=60")]).await;
    let (calls, second) = twice(&CacheLayer::shared(), &server, &auth).await;
    assert_eq!(
        calls, 2,
        "not stored without public/s-maxage/must-revalidate"
    );
    assert!(second.cache_status().contains("detail=authorization"));
    // Bob never sees Alice's response either.
    let layer = CacheLayer::shared();
    let svc = cached(&layer);
    let alice = get(&svc, &server.url("/x"), &auth).await;
    let bob = get(&svc, &server.url("/x"), &[("authorization", "Bearer bob")]).await;
    assert_ne!(alice.body, bob.body);

    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "must-revalidate, max-age=60",
    ] {
        let server = origin(200, &[("cache-control", cc)]).await;
        let (calls, second) = twice(&CacheLayer::shared(), &server, &auth).await;
        assert_eq!(calls, 1, "{cc}: stored");
        assert!(second.is_hit(), "{cc}");
    }
    // A private cache is the user's own: stored.
    let server = origin(200, &[("cache-control", "max-age=60")]).await;
    let (calls, _) = twice(&CacheLayer::private(), &server, &auth).await;
    assert_eq!(calls, 1);
}

// Set-Cookie responses are never stored by a shared cache (one user's session would go to
// everyone); requests with Cookie are treated like Authorization.
#[tokio::test]
async fn s3_set_cookie_and_cookie_in_shared_mode() {
    let server = origin(
        200,
        &[("cache-control", "max-age=60"), ("set-cookie", "sid=alice")],
    )
    .await;
    let (calls, second) = twice(&CacheLayer::shared(), &server, &[]).await;
    assert_eq!(calls, 2);
    assert!(second.cache_status().contains("detail=set-cookie"));

    let server = origin(200, &[("cache-control", "max-age=60")]).await;
    let (calls, _) = twice(&CacheLayer::shared(), &server, &[("cookie", "sid=alice")]).await;
    assert_eq!(calls, 2);
}

// §3.1: header fields named in Connection, and hop-by-hop fields, are not stored.
#[tokio::test]
async fn s3_1_connection_named_headers_not_stored() {
    let server = origin(
        200,
        &[
            ("cache-control", "max-age=60"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("x-end", "kept"),
        ],
    )
    .await;
    let (calls, second) = twice(&CacheLayer::private(), &server, &[]).await;
    assert_eq!(calls, 1);
    assert_eq!(second.header("x-end"), Some("kept"));
    assert_eq!(second.header("x-hop"), None);
}

// §3 / §4.2.2: heuristic freshness only for heuristically cacheable statuses.
#[tokio::test]
async fn s4_2_2_heuristic_only_for_heuristic_statuses() {
    let long_ago =
        http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(100_000));
    let date = now_date();
    let lm = [
        ("last-modified", long_ago.as_str()),
        ("date", date.as_str()),
    ];
    let server = origin(200, &lm).await;
    let (calls, second) = twice(&CacheLayer::private(), &server, &[]).await;
    assert_eq!(calls, 1, "200 + Last-Modified: heuristically fresh");
    assert!(second.is_hit());
    let server = origin(201, &lm).await;
    let (calls, second) = twice(&CacheLayer::private(), &server, &[]).await;
    assert_eq!(calls, 2, "201 is not heuristically cacheable");
    assert!(second.cache_status().contains("detail=no-freshness"));
}

// §4: the key includes the query; §4.1: Vary selects among several variants per URL;
// `Vary: *` never matches.
#[tokio::test]
async fn s4_key_query_and_vary() {
    let server = TestServer::start(|req: http::Request<hyper::body::Incoming>| async move {
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let vary = if req.uri().path() == "/star" {
            "*"
        } else {
            "accept-language"
        };
        respond(
            200,
            &[
                ("cache-control", "max-age=60".to_owned()),
                ("vary", vary.to_owned()),
            ],
            &format!("{} {lang}", req.uri()),
        )
    })
    .await;
    let layer = CacheLayer::shared();
    let svc = cached(&layer);
    let a = get(&svc, &server.url("/p?q=1"), &[]).await;
    let b = get(&svc, &server.url("/p?q=2"), &[]).await;
    assert_ne!(a.body, b.body);
    assert_eq!(server.calls(), 2, "different query, different entries");

    let en = get(&svc, &server.url("/v"), &[("accept-language", "en")]).await;
    let fr = get(&svc, &server.url("/v"), &[("accept-language", "fr")]).await;
    assert!(
        fr.cache_status().contains("fwd=vary-miss"),
        "{}",
        fr.cache_status()
    );
    assert_eq!(server.calls(), 4);
    let en2 = get(&svc, &server.url("/v"), &[("accept-language", "en")]).await;
    let fr2 = get(&svc, &server.url("/v"), &[("accept-language", "fr")]).await;
    assert_eq!(server.calls(), 4, "both variants stored");
    assert_eq!((&en2.body, &fr2.body), (&en.body, &fr.body));
    assert!(en2.is_hit());

    let s1 = get(&svc, &server.url("/star"), &[]).await;
    let s2 = get(&svc, &server.url("/star"), &[]).await;
    assert_eq!(server.calls(), 6, "Vary: * never matches");
    assert!(s1.cache_status().contains("detail=vary-star"));
    assert!(!s2.is_hit());
}

// Bodies over the per-entry cap stream through complete and uncached.
#[tokio::test]
async fn store_per_entry_cap_streams_through() {
    let big = "x".repeat(10_000);
    let server = TestServer::start(move |_req| {
        let big = big.clone();
        async move { respond(200, &[("cache-control", "max-age=60".to_owned())], &big) }
    })
    .await;
    let layer = CacheLayer::private().max_entry_bytes(1_000);
    let svc = cached(&layer);
    let first = get(&svc, &server.url("/big"), &[]).await;
    assert_eq!(first.body.len(), 10_000);
    assert!(first.cache_status().contains("detail=too-large"));
    let second = get(&svc, &server.url("/big"), &[]).await;
    assert_eq!(second.body.len(), 10_000);
    assert_eq!(server.calls(), 2);
}

// The in-memory store is bounded by total bytes: old entries are evicted.
#[tokio::test]
async fn store_bounded_by_bytes_evicts() {
    let body = "y".repeat(2_000);
    let server = TestServer::start(move |_req| {
        let body = body.clone();
        async move { respond(200, &[("cache-control", "max-age=600".to_owned())], &body) }
    })
    .await;
    let layer = CacheLayer::private().max_bytes(20_000);
    let svc = cached(&layer);
    for i in 0..50 {
        let got = get(&svc, &server.url(&format!("/e{i}")), &[]).await;
        assert_eq!(got.body.len(), 2_000);
    }
    let stats = layer.handle().stats();
    assert!(stats.bytes_stored <= 20_000, "{stats:?}");
    assert!(stats.entries < 50, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");
}
