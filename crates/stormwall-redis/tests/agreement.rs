//! The Redis script agrees with the in-memory store (the reference semantics): the same
//! sequence of multi-limit checks (mixed algorithms, costs, keys, peeks) gives the same
//! admissions, remaining counts, reporting limit and "never" answers on both. Quotas are per
//! day, so the few milliseconds the test takes cannot refill anything, and Redis' windows
//! (aligned on the UTC day) and the in-memory store's (aligned on its creation) both hold the
//! whole test (unless a run straddles midnight UTC: a window of a few milliseconds a day).

mod support;

use std::time::Duration;

use stormwall_core::time::Instant;
use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey, Store};
use stormwall_ratelimit::{Algorithm, InMemoryStore, Quota};
use stormwall_tests::redis::RedisServer;

const ALGOS: [Algorithm; 5] = [
    Algorithm::Gcra,
    Algorithm::LeakyBucket,
    Algorithm::SlidingLog,
    Algorithm::SlidingCounter,
    Algorithm::FixedWindow,
];

#[tokio::test]
async fn redis_and_in_memory_agree_on_every_algorithm_pair() {
    let server = RedisServer::start();
    let redis = support::store(&server.url());
    let day = Duration::from_secs(86_400);
    let gq = Quota::new(20, day).unwrap();
    let uq = Quota::new(5, day).unwrap().with_burst(4).unwrap();
    let users: Vec<LimitKey> = (0..3)
        .map(|u| LimitKey::from_string(format!("u{u}")))
        .collect();
    let g = LimitKey::global();
    let mut seed: u64 = 0x5eed;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut compared = 0;
    for a in ALGOS {
        for b in ALGOS {
            let memory = InMemoryStore::new();
            let global = LimitId::new(format!("g-{a:?}-{b:?}"));
            let user = LimitId::new(format!("u-{a:?}-{b:?}"));
            for step in 0..40 {
                let key = &users[next(3) as usize];
                let cost = 1 + next(3) + if next(20) == 0 { 10 } else { 0 };
                let mode = if next(5) == 0 {
                    CheckMode::Peek
                } else {
                    CheckMode::Acquire
                };
                let checks = [
                    LimitCheck {
                        limit: &global,
                        key: &g,
                        quota: gq,
                        algorithm: a,
                        cost,
                    },
                    LimitCheck {
                        limit: &user,
                        key,
                        quota: uq,
                        algorithm: b,
                        cost,
                    },
                ];
                let m = memory.check(Instant::now(), &checks, mode).await.unwrap();
                let r = redis.check(Instant::now(), &checks, mode).await.unwrap();
                let ctx = format!(
                    "{a:?}/{b:?} step {step} cost {cost} {mode:?}: memory {m:?}, redis {r:?}"
                );
                assert_eq!(m.allowed, r.allowed, "{ctx}");
                assert_eq!(m.index, r.index, "{ctx}");
                assert_eq!(m.remaining, r.remaining, "{ctx}");
                assert_eq!((m.limit, m.period), (r.limit, r.period), "{ctx}");
                assert_eq!(
                    m.retry_after == Duration::MAX,
                    r.retry_after == Duration::MAX,
                    "{ctx}"
                );
                let windowed =
                    |x: Algorithm| matches!(x, Algorithm::SlidingCounter | Algorithm::FixedWindow);
                if !m.allowed && m.retry_after != Duration::MAX && !windowed(a) && !windowed(b) {
                    // Same wait, up to the time between the two calls and µs rounding. (The
                    // window algorithms' waits run to the end of a window, which is aligned
                    // differently: on the UTC day on Redis, on the store's creation in memory.)
                    let diff = m.retry_after.abs_diff(r.retry_after);
                    assert!(diff < Duration::from_secs(5), "{ctx}");
                }
                compared += 1;
            }
        }
    }
    println!("{compared} decisions compared, all equal");
    assert_eq!(redis.stats().errors, 0);
}
