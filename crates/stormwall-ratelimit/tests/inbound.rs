//! Inbound: an axum server on loopback behind the rate limiter.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use stormwall_core::key::{ClientIp, HeaderKey, TrustedProxies};
use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitKey};
use stormwall_ratelimit::{Limit, Quota, RateLimitLayer};

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// The clock is paused (and nothing in the stack arms a timer), so the 50 requests arrive at
/// one instant: the outcome does not depend on how fast the machine is.
#[tokio::test(start_paused = true)]
async fn burst_of_50_gives_10_ok_and_40_correct_429s_even_with_spoofed_xff() {
    let layer = RateLimitLayer::new(Limit::new(
        "per-ip",
        ClientIp::new(TrustedProxies::None),
        Quota::per_second(10).unwrap().with_burst(10).unwrap(),
    ));
    let stats_layer = layer.clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let addr = serve(app).await;
    let client = stormwall_tests::http::client();

    let (mut ok, mut limited) = (0, 0);
    for i in 0..50u32 {
        let mut req = Request::get(format!("http://{addr}/"));
        if i % 2 == 1 {
            // A spoofed client address must not give a new bucket: no proxy is trusted.
            req = req.header("x-forwarded-for", format!("203.0.113.{i}"));
        }
        let res = client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let h = res.headers().clone();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(h["ratelimit-policy"], r#""per-ip";q=10;w=1"#);
        match status {
            StatusCode::OK => {
                ok += 1;
                assert_eq!(body, "ok");
                // Admitted responses carry the remaining quota.
                assert_eq!(
                    h["ratelimit"],
                    format!(r#""per-ip";r={};t=1"#, 10 - ok).as_str()
                );
            }
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                // The next token arrives in exactly 100 ms: Retry-After rounds *up* to 1 s.
                assert_eq!(h["retry-after"], "1");
                assert_eq!(h["ratelimit"], r#""per-ip";r=0;t=1"#);
                assert!(
                    std::str::from_utf8(&body)
                        .unwrap()
                        .contains("rate limit exceeded")
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 40));
    let stats = stats_layer.stats();
    assert_eq!((stats.admitted, stats.rejected), (10, 40));

    // 100 ms later exactly one more token is there.
    tokio::time::advance(Duration::from_millis(100)).await;
    let statuses = {
        let mut v = Vec::new();
        for _ in 0..2 {
            let res = client
                .request(
                    Request::get(format!("http://{addr}/"))
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            v.push(res.status());
        }
        v
    };
    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
}

#[tokio::test(start_paused = true)]
async fn rejected_by_per_user_limit_spends_nothing_globally() {
    let global = Limit::global("global", Quota::per_second(100).unwrap());
    let per_user = Limit::new(
        "per-user",
        HeaderKey::new("x-user"),
        Quota::per_second(1).unwrap(),
    );
    let global_id = global.id().clone();
    let layer = RateLimitLayer::new(global)
        .limit(per_user)
        .legacy_headers(true);
    let store = layer.store().clone();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let addr = serve(app).await;
    let client = stormwall_tests::http::client();

    let mut statuses = Vec::new();
    for _ in 0..20 {
        let res = client
            .request(
                Request::get(format!("http://{addr}/"))
                    .header("x-user", "alice")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            // The rejecting limit is the one reported, legacy headers included.
            assert_eq!(res.headers()["ratelimit-policy"], r#""per-user";q=1;w=1"#);
            assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
        }
        statuses.push(res.status());
    }
    assert_eq!(statuses.iter().filter(|s| s.is_success()).count(), 1);
    let peek = store
        .check_now(
            tokio::time::Instant::now(),
            &[LimitCheck {
                limit: &global_id,
                key: &LimitKey::global(),
                quota: Quota::per_second(100).unwrap(),
                algorithm: Default::default(),
                cost: 1,
            }],
            CheckMode::Peek,
        )
        .unwrap();
    // One request spent one unit; the 19 rejected ones spent nothing.
    assert_eq!(
        peek.remaining, 98,
        "99 left, and the peek itself would take one"
    );
}
