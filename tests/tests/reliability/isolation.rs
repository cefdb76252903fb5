//! Scenario 5 — cross-user isolation through cache (shared mode) + coalescing.
//!
//! The outbound stack with a shared cache and the coalescer (no retry/breaker: they do not
//! share responses) in front of a loopback origin that echoes the caller's identity
//! (`Authorization` or `Cookie`) in the body, marks it cacheable (`max-age=60`, a careless
//! origin), sets `Set-Cookie` for some users, and reflects unkeyed headers
//! (`X-Forwarded-Host`, `X-Original-URL`, `X-Forwarded-Scheme`, `X-Host`) in a public page.
//!
//! Bounds: 100 concurrent users on one URL (two rounds) each get their own body and only
//! their own `Set-Cookie`; after a poisoning attempt with unkeyed headers (sequential, then
//! concurrent with the victims), every plain caller receives the clean page.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormwall::OutboundStack;
use stormwall::cache::CacheLayer;
use stormwall::coalesce::CoalesceLayer;
use stormwall_tests::http::TestServer;
use tower::{Layer, ServiceExt};

const USERS: usize = 100;
const REFLECTED: [&str; 4] = [
    "x-forwarded-host",
    "x-original-url",
    "x-forwarded-scheme",
    "x-host",
];

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

async fn origin(req: Request<Incoming>) -> Response<Full<Bytes>> {
    tokio::time::sleep(Duration::from_millis(30)).await;
    let h = req.headers();
    let auth = header(h, "authorization");
    let cookie = header(h, "cookie");
    let mut res = Response::builder();
    let body = if req.uri().path() == "/profile" {
        let id = if auth != "-" { auth } else { cookie.clone() };
        if cookie.ends_with("0") || cookie.ends_with("3") {
            res = res.header("set-cookie", format!("renewed={cookie}"));
        }
        res = res.header("cache-control", "max-age=60");
        format!("user={id}")
    } else {
        res = res.header("cache-control", "public, max-age=60");
        if req.uri().path().starts_with("/vary") {
            res = res.header("vary", REFLECTED.join(", "));
        }
        REFLECTED
            .iter()
            .map(|n| format!("{n}={}", header(h, n)))
            .collect::<Vec<_>>()
            .join(";")
    };
    res.body(Full::new(Bytes::from(body))).unwrap()
}

fn identity(i: usize) -> (&'static str, String) {
    if i.is_multiple_of(2) {
        ("authorization", format!("Bearer user-{i}"))
    } else {
        ("cookie", format!("session=user-{i}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_or_cookie_crosses_users() {
    let server = TestServer::start(origin).await;
    let stack = OutboundStack::new()
        .cache(CacheLayer::shared())
        .coalesce(CoalesceLayer::new());
    let client = Client::builder(TokioExecutor::new()).build_http::<stormwall::body::Body>();
    let svc = stack.layer(client);
    let url = server.url("/profile");

    let mut leaks = Vec::new();
    let mut cookie_leaks = Vec::new();
    for round in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..USERS {
            let (svc, url) = (svc.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let (name, value) = identity(i);
                let req = Request::get(url)
                    .header(name, value.clone())
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let res = svc.oneshot(req).await.expect("origin answers");
                let set_cookie: Vec<String> = res
                    .headers()
                    .get_all("set-cookie")
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (
                    i,
                    value,
                    String::from_utf8_lossy(&body).into_owned(),
                    set_cookie,
                )
            }));
        }
        for t in tasks {
            let (i, value, body, set_cookie) = t.await.unwrap();
            if body != format!("user={value}") {
                leaks.push(format!("round {round} user {i}: got {body:?}"));
            }
            for c in set_cookie {
                if c != format!("renewed={value}") {
                    cookie_leaks.push(format!("round {round} user {i}: Set-Cookie {c:?}"));
                }
            }
        }
    }
    let cache = stack.cache_layer().unwrap().handle().stats();
    let coalesce = stack.coalesce_layer().unwrap().stats().snapshot();
    println!(
        "isolation: {} users × 2 rounds, origin calls {}, cross-user bodies {}, foreign \
         Set-Cookie {}; cache {cache:?}; coalesce {coalesce:?}",
        USERS,
        server.calls(),
        leaks.len(),
        cookie_leaks.len(),
    );
    assert!(leaks.is_empty(), "responses crossed users: {leaks:?}");
    assert!(
        cookie_leaks.is_empty(),
        "Set-Cookie crossed users: {cookie_leaks:?}"
    );
    assert_eq!(
        server.calls(),
        2 * USERS as u64,
        "every user reached the origin"
    );
}

/// What a poisoning attempt did to plain callers.
#[derive(Debug, Default)]
struct Poisoning {
    sequential: bool,
    concurrent: usize,
    coalesced: u64,
    collapsed: u64,
}

const VICTIMS: usize = 20;

async fn poison(
    svc: &stormwall::Outbound,
    stack: &OutboundStack,
    server: &TestServer,
    prefix: &str,
) -> Poisoning {
    let clean = REFLECTED
        .iter()
        .map(|n| format!("{n}=-"))
        .collect::<Vec<_>>()
        .join(";");
    let attack = |path: &str| {
        let mut b = Request::get(server.url(path));
        for n in REFLECTED {
            b = b.header(n, "evil.example");
        }
        b.body(Empty::<Bytes>::new()).unwrap()
    };
    let plain = |path: &str| {
        Request::get(server.url(path))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    async fn body_of(res: Response<stormwall::body::Body>) -> String {
        let b = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }
    let mut p = Poisoning::default();
    // 1. Sequential: the attacker primes the cache, then a victim asks.
    let seq_path = format!("{prefix}-seq");
    let _ = body_of(svc.clone().oneshot(attack(&seq_path)).await.unwrap()).await;
    let v = body_of(svc.clone().oneshot(plain(&seq_path)).await.unwrap()).await;
    p.sequential = v != clean;
    // 2. Concurrent: the attacker's request leads, victims join while it is in flight.
    let hits0 = stack.coalesce_layer().unwrap().stats().snapshot().hits;
    let coll0 = stack.cache_layer().unwrap().handle().stats().collapsed;
    let con_path = format!("{prefix}-con");
    let lead = tokio::spawn(svc.clone().oneshot(attack(&con_path)));
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut victims = Vec::new();
    for _ in 0..VICTIMS {
        victims.push(tokio::spawn(svc.clone().oneshot(plain(&con_path))));
    }
    let _ = lead.await.unwrap();
    for v in victims {
        if body_of(v.await.unwrap().unwrap()).await != clean {
            p.concurrent += 1;
        }
    }
    p.coalesced = stack.coalesce_layer().unwrap().stats().snapshot().hits - hits0;
    p.collapsed = stack.cache_layer().unwrap().handle().stats().collapsed - coll0;
    p
}

/// Poisoning with unkeyed headers (`X-Forwarded-Host`, `X-Original-URL`, ...) that the origin
/// reflects into a `public, max-age=60` page, the attacker first alone, then leading 20
/// concurrent victims:
///
/// - origin **with** `Vary` on the reflected headers: no victim is poisoned, sequentially or
///   concurrently (asserted);
/// - origin **without** `Vary` (the origin's bug; RFC 9111 lets a cache store it): no victim is
///   poisoned either, because the shared cache keys on the forwarding headers and the coalescer
///   has them in its key (finding F4, fixed; asserted);
/// - the same origin behind a cache whose store predicate refuses requests carrying the
///   forwarding headers: no victim is poisoned (asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_header_poisoning_never_reaches_other_users() {
    let server = TestServer::start(origin).await;
    let stack = OutboundStack::new()
        .cache(CacheLayer::shared())
        .coalesce(CoalesceLayer::new());
    let client = Client::builder(TokioExecutor::new()).build_http::<stormwall::body::Body>();
    let svc = stack.layer(client);

    let vary = poison(&svc, &stack, &server, "/vary").await;
    let plain = poison(&svc, &stack, &server, "/page").await;

    // The documented mitigation for an origin without `Vary`: a store predicate that refuses
    // responses to requests carrying the forwarding headers.
    let guarded_stack = OutboundStack::new()
        .cache(
            CacheLayer::shared().predicate(|c: &stormwall::cache::Candidate<'_>| {
                !REFLECTED.iter().any(|n| c.request_headers.contains_key(*n))
            }),
        )
        .coalesce(CoalesceLayer::new());
    let client = Client::builder(TokioExecutor::new()).build_http::<stormwall::body::Body>();
    let guarded_svc = guarded_stack.layer(client);
    let guarded = poison(&guarded_svc, &guarded_stack, &server, "/guarded").await;
    println!(
        "poisoning (unkeyed X-Forwarded-Host/X-Original-URL/X-Forwarded-Scheme/X-Host reflected \
         in a public page, {VICTIMS} concurrent victims): origin with Vary → {vary:?}; origin \
         without Vary → {plain:?}; without Vary + store predicate → {guarded:?}"
    );
    assert!(
        !vary.sequential && vary.concurrent == 0,
        "a variant reached a request that Vary says differs: {vary:?}"
    );
    assert!(
        vary.coalesced > 0,
        "the victims did not even join the attacker's call: {vary:?}"
    );
    assert!(
        !guarded.sequential && guarded.concurrent == 0,
        "the store predicate did not keep the attacker's page out: {guarded:?}"
    );
    assert!(
        !plain.sequential && plain.concurrent == 0,
        "F4: a forged forwarding header poisoned other users without Vary: {plain:?}"
    );
}
