//! Faults on a real `redis-server`: killed mid-run, paused (SIGSTOP), down at start. The
//! configured policy holds from the next request, no request hangs (a 5 s watchdog per
//! decision, 100× the timeout: a liveness bound, not a timing assert), and decisions go back
//! to Redis by themselves when it returns. The added-latency bound (≤ the timeout) is
//! asserted in virtual time by the reliability suite (`tests/tests/reliability/redis_faults.rs`).

mod support;

use std::time::Duration;

use stormwall_core::time::Instant;
use stormwall_ratelimit::store::{CheckMode, LimitId, LimitKey, Store, StoreError};
use stormwall_ratelimit::{Algorithm, Decision, Quota};
use stormwall_redis::{OnFailure, RedisStore};
use stormwall_tests::redis::RedisServer;
use support::check;

const TIMEOUT: Duration = Duration::from_millis(50);
/// A liveness watchdog on one decision (not a performance bound): reaching it is a hang.
const HANG_BOUND: Duration = Duration::from_secs(5);

struct Probe {
    limit: LimitId,
    key: LimitKey,
    quota: Quota,
}

impl Probe {
    fn new(quota: Quota) -> Self {
        Self {
            limit: LimitId::new("faults"),
            key: LimitKey::from_string("k"),
            quota,
        }
    }

    /// One decision; panics if it hangs past the watchdog.
    async fn decide(&self, store: &RedisStore) -> Result<Decision, StoreError> {
        let c = [check(&self.limit, &self.key, self.quota, Algorithm::Gcra)];
        tokio::time::timeout(
            HANG_BOUND,
            store.check(Instant::now(), &c, CheckMode::Acquire),
        )
        .await
        .unwrap_or_else(|_| panic!("a decision hung (timeout {TIMEOUT:?}): {:?}", store.stats()))
    }
}

/// Waits (bounded) until Redis decides again.
async fn until_redis_decides(store: &RedisStore, probe: &Probe) -> Duration {
    let before = store.stats().redis_decisions;
    let t = std::time::Instant::now();
    while store.stats().redis_decisions == before {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "Redis never came back: {:?}",
            store.stats()
        );
        let _ = probe.decide(store).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

/// Connects and loads the script (a first call costs a few round trips, which a loaded box
/// could stretch past the 50 ms timeout), on a throwaway limit.
async fn warm(store: &RedisStore) {
    let warmup = Probe {
        limit: LimitId::new("warm-up"),
        key: LimitKey::from_string("w"),
        quota: Quota::per_second(1000).unwrap(),
    };
    until_redis_decides(store, &warmup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_redis_falls_back_to_local_limit_then_recovers() {
    let mut server = RedisServer::start();
    let port = server.port();
    let store = RedisStore::builder()
        .timeout(TIMEOUT)
        .on_failure(OnFailure::Local { instances: 4 })
        .connect(&server.url())
        .unwrap();
    // 40 per hour shared; 10 per hour for each of 4 instances when local.
    warm(&store).await;
    let probe = Probe::new(Quota::new(40, Duration::from_secs(3600)).unwrap());
    let before = store.stats().redis_decisions;
    for _ in 0..5 {
        assert!(probe.decide(&store).await.unwrap().allowed);
    }
    let up = store.stats().redis_decisions;
    assert_eq!(up, before + 5);

    server.kill();
    // From the next request on: the local limit (10 per hour here), never an error, never a hang.
    let mut local_admitted = 0;
    for _ in 0..30 {
        let d = probe
            .decide(&store)
            .await
            .expect("the local fallback answers");
        local_admitted += u64::from(d.allowed);
        assert_eq!(d.limit, 40, "decisions report the shared quota");
    }
    assert_eq!(local_admitted, 10, "the local share of the quota: 40 / 4");
    // Concurrent callers are bounded too.
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let probe = Probe::new(Quota::new(40, Duration::from_secs(3600)).unwrap());
                probe.decide(&store).await.is_ok()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap());
    }
    let s = store.stats();
    println!("after kill: {s:?}");
    assert_eq!(s.redis_decisions, up);
    assert!(s.fallbacks >= 62);
    assert!(s.errors + s.timeouts >= 3, "{s:?}");
    assert!(s.short_circuits > 0, "a dead Redis is not hammered: {s:?}");
    assert!(s.circuit_open);

    // Restart on the same port: decisions go back to Redis by themselves (the script is
    // loaded again on NOSCRIPT). The state on Redis was lost with the process (no persistence).
    let _server = RedisServer::start_on(port);
    let took = until_redis_decides(&store, &probe).await;
    println!("Redis decides again {took:?} after the restart");
    let s = store.stats();
    for _ in 0..10 {
        assert!(probe.decide(&store).await.unwrap().allowed);
    }
    let s2 = store.stats();
    assert_eq!(s2.redis_decisions, s.redis_decisions + 10);
    assert_eq!(s2.fallbacks, s.fallbacks);
    assert!(!s2.circuit_open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_redis_fails_closed_within_the_timeout_then_recovers() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .timeout(TIMEOUT)
        .on_failure(OnFailure::Closed)
        .connect(&server.url())
        .unwrap();
    warm(&store).await;
    let probe = Probe::new(Quota::new(1000, Duration::from_secs(3600)).unwrap());
    for _ in 0..5 {
        assert!(probe.decide(&store).await.unwrap().allowed);
    }
    let fallbacks = store.stats().fallbacks;
    server.signal("STOP");
    for _ in 0..20 {
        let d = probe.decide(&store).await.unwrap();
        assert!(!d.allowed, "fail closed while Redis does not answer");
        assert_eq!(d.retry_after, Duration::from_secs(1));
    }
    let s = store.stats();
    println!("while paused: {s:?}");
    assert!(s.timeouts >= 3, "{s:?}");
    assert_eq!(s.fallbacks, fallbacks + 20);
    server.signal("CONT");
    let took = until_redis_decides(&store, &probe).await;
    println!("Redis decides again {took:?} after SIGCONT");
    let d = probe.decide(&store).await.unwrap();
    assert!(d.allowed);
    assert_eq!(d.limit, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_and_error_policies_after_a_kill() {
    let mut server = RedisServer::start();
    let open = RedisStore::builder()
        .timeout(TIMEOUT)
        .on_failure(OnFailure::Open)
        .connect(&server.url())
        .unwrap();
    let error = RedisStore::builder()
        .timeout(TIMEOUT)
        .circuit(0, Duration::ZERO, Duration::ZERO)
        .connect(&server.url())
        .unwrap();
    warm(&open).await;
    warm(&error).await;
    let probe = Probe::new(Quota::new(1, Duration::from_secs(3600)).unwrap());
    assert!(probe.decide(&open).await.unwrap().allowed);
    assert!(
        !probe.decide(&error).await.unwrap().allowed,
        "shared quota of 1 spent"
    );
    server.kill();
    for _ in 0..10 {
        assert!(
            probe.decide(&open).await.unwrap().allowed,
            "fail open admits"
        );
        let e = probe.decide(&error).await.unwrap_err();
        assert!(e.is_failure(), "{e:?}");
    }
    let s = error.stats();
    assert_eq!(
        s.short_circuits, 0,
        "circuit disabled: every call tries Redis"
    );
    assert_eq!(s.errors + s.timeouts, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_up() {
    let port = stormwall_tests::free_port();
    let store = RedisStore::builder()
        .timeout(TIMEOUT)
        .on_failure(OnFailure::Open)
        .connect(&format!("redis://127.0.0.1:{port}/"))
        .unwrap();
    let probe = Probe::new(Quota::new(2, Duration::from_secs(3600)).unwrap());
    for _ in 0..5 {
        assert!(probe.decide(&store).await.unwrap().allowed);
    }
    assert_eq!(store.stats().redis_decisions, 0);
    let _server = RedisServer::start_on(port);
    until_redis_decides(&store, &probe).await;
    // Redis now counts: at most 2 per hour.
    let mut admitted = 0;
    for _ in 0..5 {
        admitted += u64::from(probe.decide(&store).await.unwrap().allowed);
    }
    assert!(
        admitted <= 1,
        "the first Redis decision spent 1 of 2: {admitted}"
    );
}
