//! The Redis tier (feature `redis`): several cache instances, each with its own in-memory
//! tier, sharing one real `redis-server`.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use stormwall_cache::{Cache, CacheLayer, RedisTier};
use stormwall_tests::http::{TestClient, TestServer, client};
use stormwall_tests::redis::RedisServer;
use tower::{Layer, ServiceExt};

/// A wall clock the test moves by hand, shared by every instance (as NTP would).
#[derive(Clone)]
struct Wall(Arc<AtomicU64>);

impl Wall {
    fn new() -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Self(Arc::new(AtomicU64::new(now.as_millis() as u64)))
    }
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

fn tier(redis: &RedisServer, wall: &Wall) -> RedisTier {
    let wall = wall.clone();
    RedisTier::builder()
        // Generous: the machine is shared and loaded; the failure tests do not depend on it.
        .timeout(Duration::from_millis(500))
        .circuit(3, Duration::from_millis(50), Duration::from_millis(200))
        .clock(move || wall.now())
        .connect(&redis.url())
        .unwrap()
}

struct Instance {
    svc: Cache<TestClient>,
    layer: CacheLayer,
    tier: RedisTier,
}

fn instance(name: &str, tier: RedisTier) -> Instance {
    let layer = CacheLayer::shared().name(name).redis(tier.clone());
    Instance {
        svc: layer.layer(client()),
        layer,
        tier,
    }
}

struct Got {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Got {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }
    fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
    fn age(&self) -> Option<&str> {
        self.headers.get("age").map(|v| v.to_str().unwrap())
    }
}

/// A GET through `inst`; fails the test if it does not complete within 10 s (a hang guard,
/// not a timing assert: a healthy call takes milliseconds).
async fn get(inst: &Instance, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let call = async {
        let res = inst.svc.clone().oneshot(req).await.expect("request");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("a request hung")
}

async fn post(inst: &Instance, url: &str) -> StatusCode {
    let req = Request::post(url).body(Full::new(Bytes::new())).unwrap();
    let res = inst.svc.clone().oneshot(req).await.expect("request");
    res.status()
}

/// The origin: the path picks the caching headers; the body names the path, the request's
/// `Accept-Language` and a per-server call number.
async fn origin() -> TestServer {
    let n = Arc::new(AtomicU64::new(0));
    TestServer::start(move |req: Request<hyper::body::Incoming>| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        let path = req.uri().path().to_owned();
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default();
        async move {
            let mut res = Response::builder();
            res = match path.as_str() {
                "/aged" => res
                    .header("cache-control", "max-age=60")
                    .header("age", "10"),
                "/vary" => res
                    .header("cache-control", "max-age=60")
                    .header("vary", "accept-language"),
                "/private" => res.header("cache-control", "private, max-age=60"),
                "/cookie" => res
                    .header("cache-control", "max-age=60")
                    .header("set-cookie", "session=secret"),
                "/public" => res.header("cache-control", "public, max-age=60"),
                "/trailers" => res.header("cache-control", "max-age=60"),
                _ => res.header("cache-control", "max-age=60"),
            };
            res.body(Full::new(Bytes::from(format!("{path} {lang} #{n}"))))
                .unwrap()
        }
    })
    .await
}

async fn redis_conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn exists(redis: &RedisServer, key: &str) -> bool {
    let mut c = redis_conn(redis).await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<u64>(&mut c)
        .await
        .unwrap()
        == 1
}

// Instance B serves what instance A stored, as a hit, with the Age the entry has on the
// shared wall clock (origin Age 10 + 7 s elapsed), then from its own local tier.
#[tokio::test]
async fn b_hits_what_a_stored_with_the_right_age() {
    let redis = RedisServer::start();
    let server = origin().await;
    let wall = Wall::new();
    let a = instance("a", tier(&redis, &wall));
    let b = instance("b", tier(&redis, &wall));
    let url = server.url("/aged");

    let first = get(&a, &url, &[]).await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert_eq!(first.age(), Some("10"));
    a.tier.flush().await;
    assert_eq!(a.tier.stats().writes, 1);
    let key = a.tier.key_for(&url, true).unwrap();
    assert!(exists(&redis, &key).await, "{key} not in Redis");

    wall.advance(Duration::from_secs(7));
    let from_redis = get(&b, &url, &[]).await;
    assert_eq!(from_redis.status, StatusCode::OK);
    assert_eq!(from_redis.body, first.body, "B must serve A's response");
    assert!(from_redis.is_hit(), "{}", from_redis.cache_status());
    assert!(
        from_redis.cache_status().contains("detail=redis"),
        "{}",
        from_redis.cache_status()
    );
    assert_eq!(from_redis.age(), Some("17"));
    assert_eq!(server.calls(), 1);
    assert_eq!(b.tier.stats().hits, 1);
    // Copied into B's local tier: the next hit does not touch Redis.
    let local = get(&b, &url, &[]).await;
    assert!(local.is_hit());
    assert!(
        !local.cache_status().contains("redis"),
        "{}",
        local.cache_status()
    );
    assert_eq!(b.tier.stats().hits, 1);
    assert_eq!(b.layer.handle().stats().hits, 1);
    assert_eq!(server.calls(), 1);
}

// Vary: each variant is served only to requests that match it, on every instance.
#[tokio::test]
async fn vary_variants_stay_apart() {
    let redis = RedisServer::start();
    let server = origin().await;
    let wall = Wall::new();
    let a = instance("a", tier(&redis, &wall));
    let b = instance("b", tier(&redis, &wall));
    let url = server.url("/vary");

    let en = get(&a, &url, &[("accept-language", "en")]).await;
    let fr = get(&a, &url, &[("accept-language", "fr")]).await;
    assert_eq!(en.body, "/vary en #1");
    assert_eq!(fr.body, "/vary fr #2");
    a.tier.flush().await;

    let b_fr = get(&b, &url, &[("accept-language", "fr")]).await;
    assert!(b_fr.is_hit(), "{}", b_fr.cache_status());
    assert_eq!(b_fr.body, "/vary fr #2");
    let b_en = get(&b, &url, &[("accept-language", "en")]).await;
    assert!(b_en.is_hit(), "{}", b_en.cache_status());
    assert_eq!(b_en.body, "/vary en #1");
    let b_de = get(&b, &url, &[("accept-language", "de")]).await;
    assert!(!b_de.is_hit(), "{}", b_de.cache_status());
    assert_eq!(b_de.body, "/vary de #3");
    assert_eq!(server.calls(), 3);
}

// The storage rules decide before anything reaches Redis: `private`, `Set-Cookie` and
// `Authorization` (without `public`) stay out of the shared tier; `public` goes in.
#[tokio::test]
async fn private_cookie_and_authorization_not_shared() {
    let redis = RedisServer::start();
    let server = origin().await;
    let wall = Wall::new();
    let a = instance("a", tier(&redis, &wall));
    let b = instance("b", tier(&redis, &wall));

    for (path, headers) in [
        ("/private", &[][..]),
        ("/cookie", &[][..]),
        ("/plain", &[("authorization", "Bearer alice")][..]),
    ] {
        let url = server.url(path);
        let got = get(&a, &url, headers).await;
        assert!(
            !got.cache_status().contains("stored"),
            "{path}: {}",
            got.cache_status()
        );
        a.tier.flush().await;
        assert!(
            !exists(&redis, &a.tier.key_for(&url, true).unwrap()).await,
            "{path}"
        );
        let calls = server.calls();
        let other = get(&b, &url, headers).await;
        assert!(!other.is_hit(), "{path}: {}", other.cache_status());
        assert_eq!(server.calls(), calls + 1, "{path}");
    }
    assert_eq!(a.tier.stats().writes, 0);

    // `public` allows storing a response to an authorized request, and sharing it.
    let url = server.url("/public");
    let got = get(&a, &url, &[("authorization", "Bearer alice")]).await;
    assert!(
        got.cache_status().contains("stored"),
        "{}",
        got.cache_status()
    );
    a.tier.flush().await;
    let other = get(&b, &url, &[("authorization", "Bearer bob")]).await;
    assert!(other.is_hit(), "{}", other.cache_status());
    assert_eq!(other.body, got.body);
}

// A private-mode cache's entries live in another namespace and are never served by a
// shared-mode cache on the same Redis.
#[tokio::test]
async fn private_mode_entries_never_reach_shared_mode() {
    let redis = RedisServer::start();
    let server = origin().await;
    let wall = Wall::new();
    let private_tier = tier(&redis, &wall);
    let layer = CacheLayer::private().name("p").redis(private_tier.clone());
    let p = Instance {
        svc: layer.layer(client()),
        layer,
        tier: private_tier,
    };
    let s = instance("s", tier(&redis, &wall));
    let url = server.url("/private");
    let got = get(&p, &url, &[]).await;
    assert!(
        got.cache_status().contains("stored"),
        "{}",
        got.cache_status()
    );
    p.tier.flush().await;
    assert!(exists(&redis, &p.tier.key_for(&url, false).unwrap()).await);
    let shared = get(&s, &url, &[]).await;
    assert!(!shared.is_hit(), "{}", shared.cache_status());
    assert_eq!(server.calls(), 2);
    assert_eq!(p.layer.handle().stats().stored, 1);
}

/// Polls (up to 10 s) until `done` holds, running `step` between tries.
async fn eventually(mut step: impl AsyncFnMut(), mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        step().await;
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// Purges on A delete in Redis and are broadcast: B's local tier drops its copy too, and B
// goes to the origin. With the broadcast off, B's local copy stays until purged on B.
#[tokio::test]
async fn purges_delete_in_redis() {
    let redis = RedisServer::start();
    let server = origin().await;
    let wall = Wall::new();
    let a = instance("a", tier(&redis, &wall));
    let b = instance("b", tier(&redis, &wall));
    let url = server.url("/one");
    get(&a, &url, &[]).await;
    a.tier.flush().await;
    assert!(get(&b, &url, &[]).await.is_hit());
    assert_eq!(b.layer.handle().stats().entries, 1);

    assert!(a.layer.handle().purge(&url));
    a.tier.flush().await;
    assert!(!exists(&redis, &a.tier.key_for(&url, true).unwrap()).await);
    // B's listener may still be subscribing: purge again until the broadcast lands.
    let purged = eventually(
        async || {
            a.layer.handle().purge(&url);
            a.tier.flush().await;
        },
        || b.layer.handle().stats().entries == 0,
    )
    .await;
    assert!(purged, "B kept its copy: {:?}", b.tier.stats());
    assert!(b.tier.stats().purges_received >= 1);
    let calls = server.calls();
    assert!(!get(&b, &url, &[]).await.is_hit());
    assert_eq!(server.calls(), calls + 1);

    // Without the broadcast: Redis is purged, B's local copy is not.
    let quiet = |redis: &RedisServer| {
        RedisTier::builder()
            .prefix("quiet")
            .broadcast(false)
            .connect(&redis.url())
            .unwrap()
    };
    let qa = instance("qa", quiet(&redis));
    let qb = instance("qb", quiet(&redis));
    let url = server.url("/quiet");
    get(&qa, &url, &[]).await;
    qa.tier.flush().await;
    assert!(get(&qb, &url, &[]).await.is_hit());
    qa.layer.handle().purge(&url);
    qa.tier.flush().await;
    assert!(!exists(&redis, &qa.tier.key_for(&url, true).unwrap()).await);
    assert!(
        get(&qb, &url, &[]).await.is_hit(),
        "no broadcast: B keeps its copy"
    );
    qb.layer.handle().purge(&url);
    assert!(!get(&qb, &url, &[]).await.is_hit());

    // Prefix and everything: glob characters in URLs are matched literally.
    for path in ["/api/x", "/api/y", "/api*/z", "/other"] {
        get(&a, &server.url(path), &[]).await;
    }
    a.tier.flush().await;
    assert_eq!(a.layer.handle().purge_prefix(&server.url("/api/")), 2);
    a.tier.flush().await;
    let key = |p: &str| a.tier.key_for(&server.url(p), true).unwrap();
    assert!(!exists(&redis, &key("/api/x")).await);
    assert!(!exists(&redis, &key("/api/y")).await);
    assert!(exists(&redis, &key("/api*/z")).await);
    assert!(exists(&redis, &key("/other")).await);
    a.layer.handle().purge_all();
    a.tier.flush().await;
    assert!(!exists(&redis, &key("/api*/z")).await);
    assert!(!exists(&redis, &key("/other")).await);
    assert!(a.tier.stats().deletes >= 5, "{:?}", a.tier.stats());
}

// RFC 9111 §4.4 across instances: a successful POST through A deletes the URL in Redis, so
// an instance that does not have it locally goes to the origin.
#[tokio::test]
async fn unsafe_method_invalidates_in_redis() {
    let redis = RedisServer::start();
    let server = origin().await;
    let wall = Wall::new();
    let a = instance("a", tier(&redis, &wall));
    let b = instance("b", tier(&redis, &wall));
    let c = instance("c", tier(&redis, &wall));
    let url = server.url("/doc");
    get(&a, &url, &[]).await;
    a.tier.flush().await;
    assert!(get(&b, &url, &[]).await.is_hit());
    assert!(exists(&redis, &a.tier.key_for(&url, true).unwrap()).await);
    assert_eq!(post(&a, &url).await, StatusCode::OK);
    a.tier.flush().await;
    assert!(!exists(&redis, &a.tier.key_for(&url, true).unwrap()).await);
    let got = get(&c, &url, &[]).await;
    assert!(!got.is_hit(), "{}", got.cache_status());
    // B's local copy goes too (broadcast; B may still be subscribing: POST until it lands).
    let dropped = eventually(
        async || {
            post(&a, &url).await;
            a.tier.flush().await;
        },
        || b.layer.handle().stats().entries == 0,
    )
    .await;
    assert!(dropped, "B kept its copy: {:?}", b.tier.stats());
}

// Garbage or another encoding version in Redis is a miss (never a panic), counted; the
// fresh response then overwrites it.
#[tokio::test]
async fn corrupted_value_is_a_miss() {
    let redis = RedisServer::start();
    let server = origin().await;
    let wall = Wall::new();
    let a = instance("a", tier(&redis, &wall));
    let b = instance("b", tier(&redis, &wall));
    let mut conn = redis_conn(&redis).await;
    for (i, garbage) in [
        &b"not a cache entry"[..],
        &b"SWC\x02\x01\x00\x01whatever"[..],
        &b"SWC\x01\x01\x00\x05\x00"[..],
        &b""[..],
    ]
    .into_iter()
    .enumerate()
    {
        let url = server.url(&format!("/bad{i}"));
        let key = a.tier.key_for(&url, true).unwrap();
        redis::cmd("SET")
            .arg(&key)
            .arg(garbage)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let got = get(&a, &url, &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(!got.is_hit(), "{}", got.cache_status());
        assert_eq!(a.tier.stats().corrupt, i as u64 + 1);
        a.tier.flush().await;
        // Overwritten with a good value: B now hits.
        assert!(get(&b, &url, &[]).await.is_hit());
    }
}

// Values over the size cap stay local.
#[tokio::test]
async fn too_large_values_stay_local() {
    let redis = RedisServer::start();
    let server = origin().await;
    let small = RedisTier::builder()
        .max_value_bytes(16)
        .connect(&redis.url())
        .unwrap();
    let a = instance("a", small);
    let url = server.url("/big");
    assert!(get(&a, &url, &[]).await.cache_status().contains("stored"));
    a.tier.flush().await;
    assert_eq!(a.tier.stats().too_large, 1);
    assert_eq!(a.tier.stats().writes, 0);
    assert!(!exists(&redis, &a.tier.key_for(&url, true).unwrap()).await);
}

// Redis killed: requests still succeed from the origin, errors are counted, nothing hangs
// (every call has a hang guard). Restarted on the same port: sharing resumes.
/// Whether, within `tries` rounds 100 ms apart, a fresh URL stored by `a` is a hit on `b`
/// (sharing works again after a fault).
async fn sharing_resumes(
    a: &Instance,
    b: &Instance,
    server: &TestServer,
    path: &str,
    tries: u32,
) -> bool {
    for i in 0..tries {
        let url = server.url(&format!("/{path}{i}"));
        get(a, &url, &[]).await;
        a.tier.flush().await;
        if get(b, &url, &[]).await.is_hit() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn redis_down_then_back() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let server = origin().await;
    let wall = Wall::new();
    let breaker = |redis: &RedisServer| {
        let wall = wall.clone();
        RedisTier::builder()
            .timeout(Duration::from_millis(500))
            .circuit(3, Duration::from_secs(2), Duration::from_secs(2))
            .clock(move || wall.now())
            .connect(&redis.url())
            .unwrap()
    };
    let a = instance("a", breaker(&redis));
    let b = instance("b", breaker(&redis));
    get(&a, &server.url("/warm"), &[]).await;
    a.tier.flush().await;
    assert!(get(&b, &server.url("/warm"), &[]).await.is_hit());

    redis.kill();
    let mut i = 0;
    // Until the short circuit has seen its 3 failures (each call fails or times out).
    while a.tier.stats().errors + a.tier.stats().timeouts < 3 {
        i += 1;
        assert!(i < 50, "failures not counted: {:?}", a.tier.stats());
        let url = server.url(&format!("/down{i}"));
        let got = get(&a, &url, &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.body.starts_with(b"/down"));
        assert!(
            got.cache_status().contains("stored"),
            "{}",
            got.cache_status()
        );
        a.tier.flush().await;
        // A still has its local tier.
        assert!(get(&a, &url, &[]).await.is_hit());
    }
    // The short circuit is open (for 2 s): the next miss skips Redis altogether.
    let got = get(&a, &server.url("/skipped"), &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    let down = a.tier.stats();
    assert!(
        down.skipped > 0,
        "the short circuit skips a dead Redis: {down:?}"
    );
    assert_eq!(down.hits, 0);

    let _redis = RedisServer::start_on(port);
    // Sharing resumes once the connection is back and the short circuit closes: poll.
    assert!(
        sharing_resumes(&a, &b, &server, "up", 150).await,
        "sharing did not resume: {:?}",
        a.tier.stats()
    );
}

/// An origin whose `/etag` answers `304` to a matching `If-None-Match`, and `/swr` allows
/// serving stale while revalidating. Returns the server and the count of conditional requests.
async fn validating_origin() -> (TestServer, Arc<AtomicU64>) {
    let conditional = Arc::new(AtomicU64::new(0));
    let seen = conditional.clone();
    let n = Arc::new(AtomicU64::new(0));
    let server = TestServer::start(move |req: Request<hyper::body::Incoming>| {
        let n = n.fetch_add(1, Ordering::SeqCst) + 1;
        let inm = req.headers().get("if-none-match").cloned();
        if inm.is_some() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
        let path = req.uri().path().to_owned();
        async move {
            let cc = if path == "/swr" {
                "max-age=5, stale-while-revalidate=600"
            } else {
                "max-age=5"
            };
            let res = Response::builder()
                .header("cache-control", cc)
                .header("etag", "\"v1\"");
            if inm.as_ref().is_some_and(|v| v == "\"v1\"") {
                return res
                    .status(StatusCode::NOT_MODIFIED)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
            }
            res.body(Full::new(Bytes::from(format!("{path} #{n}"))))
                .unwrap()
        }
    })
    .await;
    (server, conditional)
}

fn keeping_tier(redis: &RedisServer, wall: &Wall) -> RedisTier {
    let wall = wall.clone();
    RedisTier::builder()
        .timeout(Duration::from_millis(500))
        .keep_stale(Duration::from_secs(600))
        .clock(move || wall.now())
        .connect(&redis.url())
        .unwrap()
}

// A response that went stale in Redis (kept there by `keep_stale` thanks to its ETag) is
// revalidated by another instance with a conditional request; the 304 serves A's body.
#[tokio::test]
async fn stale_in_redis_is_revalidated_conditionally() {
    let redis = RedisServer::start();
    let (server, conditional) = validating_origin().await;
    let wall = Wall::new();
    let a = instance("a", keeping_tier(&redis, &wall));
    let b = instance("b", keeping_tier(&redis, &wall));
    let url = server.url("/etag");
    let first = get(&a, &url, &[]).await;
    assert_eq!(first.body, "/etag #1");
    a.tier.flush().await;

    wall.advance(Duration::from_secs(10));
    let got = get(&b, &url, &[]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "/etag #1", "the 304 freshens Redis' copy");
    let cs = got.cache_status();
    assert!(
        cs.contains("fwd=stale") && cs.contains("fwd-status=304"),
        "{cs}"
    );
    assert_eq!(conditional.load(Ordering::SeqCst), 1);
    assert_eq!(server.calls(), 2);
    // The freshened entry was written back: a third instance hits without the origin.
    b.tier.flush().await;
    let c = instance("c", keeping_tier(&redis, &wall));
    let again = get(&c, &url, &[]).await;
    assert!(again.is_hit(), "{}", again.cache_status());
    assert_eq!(again.age(), Some("0"));
    assert_eq!(server.calls(), 2);
}

// stale-while-revalidate across instances: B serves Redis' stale copy at once and refreshes
// it once in the background.
#[tokio::test]
async fn stale_while_revalidate_from_redis() {
    let redis = RedisServer::start();
    let (server, _) = validating_origin().await;
    let wall = Wall::new();
    let a = instance("a", tier(&redis, &wall));
    let b = instance("b", tier(&redis, &wall));
    let url = server.url("/swr");
    get(&a, &url, &[]).await;
    a.tier.flush().await;
    wall.advance(Duration::from_secs(10));
    let got = get(&b, &url, &[]).await;
    assert!(got.is_hit(), "{}", got.cache_status());
    assert!(
        got.cache_status()
            .contains("detail=redis-stale-while-revalidate"),
        "{}",
        got.cache_status()
    );
    assert_eq!(got.body, "/swr #1");
    assert_eq!(got.age(), Some("10"));
    // The background refresh reaches the origin (poll: it runs on its own task).
    for _ in 0..100 {
        if server.calls() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.calls(), 2);
}

// A frozen Redis (SIGSTOP: connections accepted, no answers): every call ends at the
// timeout, counted; requests are answered by the origin. Thawed: sharing resumes.
#[tokio::test]
async fn frozen_redis_times_out_into_misses() {
    let redis = RedisServer::start();
    let server = origin().await;
    let quick = |redis: &RedisServer| {
        RedisTier::builder()
            .timeout(Duration::from_millis(100))
            .circuit(0, Duration::ZERO, Duration::ZERO)
            .connect(&redis.url())
            .unwrap()
    };
    let a = instance("a", quick(&redis));
    let b = instance("b", quick(&redis));
    // Connect both before freezing.
    get(&a, &server.url("/warm"), &[]).await;
    a.tier.flush().await;
    assert!(get(&b, &server.url("/warm"), &[]).await.is_hit());

    redis.signal("STOP");
    for i in 0..3 {
        let url = server.url(&format!("/frozen{i}"));
        let got = get(&b, &url, &[]).await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.body.starts_with(b"/frozen"));
        assert!(!got.is_hit());
    }
    b.tier.flush().await;
    let frozen = b.tier.stats();
    // Each miss: one lookup and one write-through, both timed out.
    assert!(frozen.timeouts >= 6, "{frozen:?}");
    assert_eq!(frozen.skipped, 0, "circuit disabled");

    redis.signal("CONT");
    assert!(
        sharing_resumes(&a, &b, &server, "thawed", 100).await,
        "sharing did not resume: {:?}",
        b.tier.stats()
    );
}
