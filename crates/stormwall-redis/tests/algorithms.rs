//! Each algorithm on a real `redis-server`: admits the quota, then rejects with a sane
//! `retry_after`; peeks spend nothing; multi-limit checks are all or nothing; keys get TTLs;
//! the script comes back after `SCRIPT FLUSH`; reset forgets a key.

mod support;

use std::time::Duration;

use stormwall_core::time::Instant;
use stormwall_ratelimit::store::{CheckMode, LimitId, LimitKey, Store};
use stormwall_ratelimit::{Algorithm, Quota};
use stormwall_tests::redis::RedisServer;
use support::{check, cli};

const ALGOS: [Algorithm; 5] = [
    Algorithm::Gcra,
    Algorithm::LeakyBucket,
    Algorithm::SlidingLog,
    Algorithm::SlidingCounter,
    Algorithm::FixedWindow,
];

#[tokio::test]
async fn every_algorithm_admits_its_quota_then_rejects() {
    let server = RedisServer::start();
    let store = support::store(&server.url());
    // A long period, so the test's own pace cannot refill anything. The fixed window and the
    // sliding counter are aligned on multiples of the period: a window boundary may pass
    // during the test, so they are checked over a 1-hour period.
    let q = Quota::new(5, Duration::from_secs(3600)).unwrap();
    for algo in ALGOS {
        let limit = LimitId::new(format!("algo-{algo:?}"));
        let key = LimitKey::from_string("k");
        let c = [check(&limit, &key, q, algo)];
        // A peek spends nothing.
        let peek = store
            .check(Instant::now(), &c, CheckMode::Peek)
            .await
            .unwrap();
        assert!(peek.allowed, "{algo:?}");
        assert_eq!(peek.remaining, 4, "{algo:?} peek");
        let mut admitted = 0;
        let mut last = None;
        for _ in 0..8 {
            let d = store
                .check(Instant::now(), &c, CheckMode::Acquire)
                .await
                .unwrap();
            admitted += u64::from(d.allowed);
            last = Some(d);
        }
        let d = last.unwrap();
        // (The leaky-bucket shaper admits `burst` and tells the later ones to wait.)
        assert_eq!(admitted, 5, "{algo:?}");
        assert!(!d.allowed, "{algo:?}");
        assert_eq!((d.limit, d.period), (5, Duration::from_secs(3600)));
        assert_eq!(d.remaining, 0, "{algo:?}");
        assert!(d.retry_after > Duration::ZERO, "{algo:?}: {d:?}");
        assert!(
            d.retry_after <= Duration::from_secs(2 * 3600),
            "{algo:?}: {d:?}"
        );
        // A cost above the quota can never be admitted.
        let big = [stormwall_ratelimit::store::LimitCheck { cost: 6, ..c[0] }];
        let never = store
            .check(Instant::now(), &big, CheckMode::Acquire)
            .await
            .unwrap();
        assert_eq!(never.retry_after, Duration::MAX, "{algo:?}");
        // Every key it wrote has a TTL within two periods.
        for name in store.key_names(&c) {
            let ttl: i64 = cli(server.port(), &["pttl", &name]).trim().parse().unwrap();
            assert!(
                ttl > 0 && ttl <= 2 * 3_600_000,
                "{algo:?} {name}: pttl {ttl}"
            );
        }
    }
    println!("{:?}", store.stats());
}

#[tokio::test]
async fn gcra_retry_after_is_the_emission_interval() {
    let server = RedisServer::start();
    let store = support::store(&server.url());
    let limit = LimitId::new("gcra");
    let key = LimitKey::from_string("k");
    let q = Quota::new(2, Duration::from_secs(100)).unwrap();
    let c = [check(&limit, &key, q, Algorithm::Gcra)];
    for _ in 0..2 {
        assert!(
            store
                .check(Instant::now(), &c, CheckMode::Acquire)
                .await
                .unwrap()
                .allowed
        );
    }
    let d = store
        .check(Instant::now(), &c, CheckMode::Acquire)
        .await
        .unwrap();
    assert!(!d.allowed);
    // One unit comes back 50 s after the first admission (minus the test's own pace).
    assert!(
        d.retry_after <= Duration::from_secs(50) && d.retry_after > Duration::from_secs(49),
        "{d:?}"
    );
    assert!(
        d.reset <= Duration::from_secs(100) && d.reset > Duration::from_secs(99),
        "{d:?}"
    );
}

#[tokio::test]
async fn multi_limit_is_all_or_nothing() {
    let server = RedisServer::start();
    let store = support::store(&server.url());
    let (global, user) = (LimitId::new("global"), LimitId::new("per-user"));
    let g = LimitKey::global();
    let (alice, bob) = (LimitKey::from_string("alice"), LimitKey::from_string("bob"));
    let hour = Duration::from_secs(3600);
    let gq = Quota::new(10, hour).unwrap();
    let uq = Quota::new(2, hour).unwrap();
    for algo in ALGOS {
        let global = LimitId::new(format!("{}-{algo:?}", global.name()));
        let both = |k| {
            [
                check(&global, &g, gq, algo),
                check(&user, k, uq, Algorithm::SlidingLog),
            ]
        };
        for _ in 0..2 {
            assert!(
                store
                    .check(Instant::now(), &both(&alice), CheckMode::Acquire)
                    .await
                    .unwrap()
                    .allowed
            );
        }
        // Alice is over her limit: rejected by limit 1, and the global limit is not spent.
        for _ in 0..5 {
            let d = store
                .check(Instant::now(), &both(&alice), CheckMode::Acquire)
                .await
                .unwrap();
            assert!(!d.allowed);
            assert_eq!(d.index, 1);
        }
        let peek = store
            .check(Instant::now(), &both(&bob), CheckMode::Peek)
            .await
            .unwrap();
        assert!(peek.allowed);
        // The global limit reports the least remaining: 10 - 2 spent - 1 (this request).
        assert_eq!(
            peek.remaining, 1,
            "{algo:?}: the per-user limit of bob (2 - 1)"
        );
        let gpeek = store
            .check(Instant::now(), &both(&bob)[..1], CheckMode::Peek)
            .await
            .unwrap();
        assert_eq!(
            gpeek.remaining, 7,
            "{algo:?}: only alice's two admissions spent globally"
        );
        store.reset(&user, &alice).await.unwrap();
        let _ = store.reset(&global, &g).await;
    }
}

#[tokio::test]
async fn script_is_reloaded_after_flush_and_reset_forgets() {
    let server = RedisServer::start();
    let store = support::store(&server.url());
    let limit = LimitId::new("flush");
    let key = LimitKey::from_string("k");
    let q = Quota::new(1, Duration::from_secs(3600)).unwrap();
    let c = [check(&limit, &key, q, Algorithm::Gcra)];
    assert!(
        store
            .check(Instant::now(), &c, CheckMode::Acquire)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(
        cli(server.port(), &["script", "exists", store.script_sha()]).trim(),
        "1"
    );
    assert_eq!(cli(server.port(), &["script", "flush"]).trim(), "OK");
    assert_eq!(
        cli(server.port(), &["script", "exists", store.script_sha()]).trim(),
        "0"
    );
    // NOSCRIPT → SCRIPT LOAD → EVALSHA, transparently; the state survived.
    assert!(
        !store
            .check(Instant::now(), &c, CheckMode::Acquire)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(
        cli(server.port(), &["script", "exists", store.script_sha()]).trim(),
        "1"
    );
    store.reset(&limit, &key).await.unwrap();
    assert!(
        store
            .check(Instant::now(), &c, CheckMode::Acquire)
            .await
            .unwrap()
            .allowed
    );
    let s = store.stats();
    assert_eq!((s.redis_decisions, s.errors, s.fallbacks), (3, 0, 0));
}

#[tokio::test]
async fn short_keys_expire_by_themselves() {
    let server = RedisServer::start();
    let store = support::store(&server.url());
    let limit = LimitId::new("ttl");
    let key = LimitKey::from_string("k");
    let q = Quota::new(1, Duration::from_secs(1)).unwrap();
    let mut with_ttl = 0;
    for algo in ALGOS {
        let c = [check(&limit, &key, q, algo)];
        assert!(
            store
                .check(Instant::now(), &c, CheckMode::Acquire)
                .await
                .unwrap()
                .allowed
        );
        let mut names = store.key_names(&c);
        if algo == Algorithm::SlidingLog {
            names.push(format!("{}s", names[0]));
        }
        for name in names {
            let ttl: i64 = cli(server.port(), &["pttl", &name]).trim().parse().unwrap();
            // -1 would be a key without a TTL; -2 a key already expired (a stalled box).
            assert_ne!(ttl, -1, "{algo:?} {name} has no TTL");
            assert!(ttl <= 2_000, "{algo:?} {name}: pttl {ttl}");
            with_ttl += u32::from(ttl > 0);
        }
    }
    assert!(with_ttl > 0);
    // Wait (real time: Redis expires by its own clock) until every key is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = cli(server.port(), &["dbsize"])
            .trim()
            .parse::<u64>()
            .unwrap();
        if n == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} keys did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn leaky_bucket_spaces_releases_by_server_time() {
    let server = RedisServer::start();
    let store = support::store(&server.url());
    let limit = LimitId::new("shaper");
    let key = LimitKey::from_string("k");
    let q = Quota::per_second(1).unwrap().with_burst(3).unwrap();
    let c = [check(&limit, &key, q, Algorithm::LeakyBucket)];
    let mut delays = Vec::new();
    for _ in 0..3 {
        let d = store
            .check(Instant::now(), &c, CheckMode::Acquire)
            .await
            .unwrap();
        assert!(d.allowed);
        delays.push(d.delay);
    }
    // The queue is full: the 4th is rejected.
    assert!(
        !store
            .check(Instant::now(), &c, CheckMode::Acquire)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(delays[0], Duration::ZERO);
    // Each release one emission interval (1 s) after the previous one, minus the time the
    // test itself took between calls.
    for (i, d) in delays.iter().enumerate() {
        assert!(*d <= Duration::from_secs(1) * i as u32, "{delays:?}");
    }
    assert!(
        delays[1] > Duration::ZERO && delays[1] < delays[2],
        "{delays:?}"
    );
}

#[tokio::test]
async fn limiter_acquire_waits_on_redis_quota() {
    let server = RedisServer::start();
    let store = support::store(&server.url());
    let q = Quota::per_second(20).unwrap().with_burst(1).unwrap();
    let limiter = stormwall_ratelimit::Limiter::with_store("acquire", q, store);
    for _ in 0..4 {
        limiter
            .acquire(&"k", 1, Duration::from_secs(2))
            .await
            .expect("admitted within the wait");
    }
    let d = limiter.decide(&"k", 1, CheckMode::Peek).await.unwrap();
    assert!(d.remaining <= 1);
    assert_eq!(limiter.store().stats().errors, 0);
}
