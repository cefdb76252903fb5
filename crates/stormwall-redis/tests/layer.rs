//! End to end: the `RateLimitLayer` over the Redis store. Two axum servers (two "instances",
//! each with its own store and connection) share one quota through one `redis-server`;
//! wait mode waits for Redis-decided quota; a dead Redis with a fail-closed layer answers 503.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use stormwall_ratelimit::{FailurePolicy, Limit, Quota, RateLimitLayer};
use stormwall_redis::RedisStore;
use stormwall_tests::redis::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};

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

fn instance(url: &str, failure: FailurePolicy) -> (Router, RateLimitLayer<RedisStore>) {
    // A generous timeout: the first request connects and loads the script on a possibly
    // loaded box. (A killed Redis refuses connections at once: no wait on it.)
    let store = RedisStore::builder()
        .timeout(Duration::from_millis(500))
        .connect(url)
        .unwrap();
    let layer = RateLimitLayer::with_store(
        Limit::global("api", Quota::new(5, Duration::from_secs(3600)).unwrap()),
        store,
    )
    .failure_policy(failure);
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer.clone());
    (app, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_axum_instances_share_one_quota_then_fail_closed() {
    let mut server = RedisServer::start();
    let (a, la) = instance(&server.url(), FailurePolicy::Closed);
    let (b, lb) = instance(&server.url(), FailurePolicy::Closed);
    let addrs = [serve(a).await, serve(b).await];
    let client = stormwall_tests::http::client();
    let get = |addr: SocketAddr| {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://{addr}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            client.request(req).await.unwrap()
        }
    };
    let (mut ok, mut limited) = (0, 0);
    for i in 0..12 {
        let res = get(addrs[i % 2]).await;
        assert_eq!(res.headers()["ratelimit-policy"], r#""api";q=5;w=3600"#);
        match res.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert!(res.headers().contains_key("retry-after"));
            }
            s => panic!("unexpected {s}"),
        }
    }
    println!("two instances, one quota of 5: {ok} OK, {limited} 429");
    assert_eq!((ok, limited), (5, 7), "one quota across both instances");
    assert_eq!(la.stats().admitted + lb.stats().admitted, 5);

    server.kill();
    for i in 0..6 {
        let t = std::time::Instant::now();
        let res = get(addrs[i % 2]).await;
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "a dead Redis must not stall requests"
        );
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(la.stats().store_errors + lb.stats().store_errors, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_waits_for_redis_quota() {
    let server = RedisServer::start();
    let make = || {
        let store = RedisStore::builder()
            .timeout(Duration::from_secs(1))
            .connect(&server.url())
            .unwrap();
        RateLimitLayer::with_store(
            Limit::global(
                "partner",
                Quota::per_second(10).unwrap().with_burst(1).unwrap(),
            ),
            store,
        )
        .wait(Duration::from_secs(5))
    };
    let (la, lb) = (make(), make());
    let svc = |layer: RateLimitLayer<RedisStore>| {
        ServiceBuilder::new()
            .layer(layer)
            .service(tower::service_fn(|_req: Request<Full<Bytes>>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                )))
            }))
    };
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let mut s = svc(if i % 2 == 0 { la.clone() } else { lb.clone() });
            tokio::spawn(async move {
                let res = s
                    .ready()
                    .await
                    .unwrap()
                    .call(Request::new(Full::new(Bytes::new())))
                    .await
                    .unwrap();
                res.status()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let waited = la.stats().waited + lb.stats().waited;
    println!("10 calls through 2 instances at 10/s burst 1: {waited} waited");
    // Burst 1: only calls that happen to arrive when a token is free pass without waiting
    // (one, plus any call the box delays by 100 ms or more): most must wait.
    assert!(waited >= 5, "{waited}");
}
