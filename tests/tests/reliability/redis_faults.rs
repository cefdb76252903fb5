//! Scenario 6: Redis faults for distributed limits, through a fault-injecting TCP proxy
//! ([`TcpFaultProxy`]) in front of a real `redis-server`: slow (replies held 2 s), connection
//! reset in the middle of a script call (before the call is complete, and after Redis ran
//! it but before its reply), down (connections reset and refused), and a black hole (a
//! connection that swallows everything, as when the Redis host vanishes without a reset).
//!
//! For every fault and every [`OnFailure`] policy (error, open, closed, local share):
//! - the policy answers every decision during the fault (exactly: open admits, closed
//!   refuses with `retry_after` 1 s, error returns a failure, local admits its share 40 / 4);
//! - no decision hangs (each is bounded by a 5 s liveness watchdog, 100× the timeout);
//! - Redis decides nothing during the fault, every decision is counted as a fallback, every
//!   fallback is a failed call or a skip (short circuit), the proxy saw no more script calls
//!   than failed calls (skips never touch the wire), and the `stormwall_redis_*` metrics
//!   (a `DebuggingRecorder` local to the test's thread) agree with the stores' counters;
//! - once the fault ends, decisions go back to Redis by themselves.
//!
//! **Added latency** (issue: ≤ 50 ms) is asserted without a wall clock: with Tokio's clock
//! paused, a decision against a slow Redis takes exactly the 50 ms timeout of virtual time
//! (it ended by the timer: its reply was still held by the proxy), one against a reset
//! connection at most that, and once the short circuit is open a decision is ready on its
//! first poll (no I/O, no timer: 0 added). The real latencies are printed as figures.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use stormwall::ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey, Store, StoreError};
use stormwall::ratelimit::{Algorithm, Decision, Quota};
use stormwall::redis::{OnFailure, RedisStats, RedisStore};
use stormwall_core::time::Instant;
use stormwall_tests::redis::RedisServer;
use stormwall_tests::tcp_fault::{ResetAt, TcpFault, TcpFaultProxy, TcpFaultStats};

/// The store's timeout: the most a decision may wait for Redis.
const TIMEOUT: Duration = Duration::from_millis(50);
/// A liveness watchdog on one decision (not a performance bound): reaching it is a hang.
const HANG: Duration = Duration::from_secs(5);
/// How long a slow Redis takes to answer.
const SLOW: Duration = Duration::from_secs(2);
/// Decisions made during each fault.
const DURING: u64 = 30;
/// The shared quota: 40 per hour (10 per hour for each of 4 instances when local).
const LIMIT: u64 = 40;
const INSTANCES: u32 = 4;

const POLICIES: [OnFailure; 4] = [
    OnFailure::Error,
    OnFailure::Open,
    OnFailure::Closed,
    OnFailure::Local {
        instances: INSTANCES,
    },
];

fn label(p: OnFailure) -> &'static str {
    match p {
        OnFailure::Error => "error",
        OnFailure::Open => "open",
        OnFailure::Closed => "closed",
        OnFailure::Local { .. } => "local",
    }
}

struct Probe {
    limit: LimitId,
    key: LimitKey,
    quota: Quota,
}

impl Probe {
    fn new(name: &str, limit: u64) -> Self {
        Self {
            limit: LimitId::new(name),
            key: LimitKey::from_string("k"),
            quota: Quota::new(limit, Duration::from_secs(3600)).unwrap(),
        }
    }

    fn checks(&self) -> [LimitCheck<'_>; 1] {
        [LimitCheck {
            limit: &self.limit,
            key: &self.key,
            quota: self.quota,
            algorithm: Algorithm::Gcra,
            cost: 1,
        }]
    }

    /// One decision under the liveness watchdog, with its real duration.
    async fn decide(&self, store: &RedisStore) -> (Result<Decision, StoreError>, Duration) {
        let checks = self.checks();
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(
            HANG,
            store.check(Instant::now(), &checks, CheckMode::Acquire),
        )
        .await
        .unwrap_or_else(|_| panic!("a decision hung (> {HANG:?}): {:?}", store.stats()));
        (r, t.elapsed())
    }
}

/// Decides (bounded: 15 s of wall-clock time) until Redis makes a decision; returns it and
/// how long that took.
async fn until_redis_decides(store: &RedisStore, probe: &Probe) -> (Decision, Duration) {
    let t = std::time::Instant::now();
    loop {
        let before = store.stats().redis_decisions;
        let (r, _) = probe.decide(store).await;
        if store.stats().redis_decisions > before {
            return (r.expect("a Redis decision"), t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "Redis never came back: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn store(url: &str, policy: OnFailure, prefix: &str) -> RedisStore {
    RedisStore::builder()
        .timeout(TIMEOUT)
        .on_failure(policy)
        .prefix(prefix.to_owned())
        .connect(url)
        .unwrap()
}

/// Checks one decision against the policy; counts local admissions.
fn holds(policy: OnFailure, r: &Result<Decision, StoreError>, admitted: &mut u64) {
    match policy {
        OnFailure::Error => {
            let e = r
                .as_ref()
                .expect_err("the error policy returns the failure");
            assert!(e.is_failure(), "{e:?}");
        }
        OnFailure::Open => assert!(r.as_ref().unwrap().allowed, "fail open admits"),
        OnFailure::Closed => {
            let d = r.as_ref().unwrap();
            assert!(!d.allowed, "fail closed refuses");
            assert_eq!(d.retry_after, Duration::from_secs(1));
            assert_eq!(d.limit, LIMIT);
        }
        OnFailure::Local { .. } => {
            let d = r.as_ref().expect("the local fallback answers");
            assert_eq!(d.limit, LIMIT, "decisions report the shared quota");
            *admitted += u64::from(d.allowed);
        }
    }
}

fn delta(a: RedisStats, b: RedisStats) -> RedisStats {
    let mut d = b;
    d.redis_decisions -= a.redis_decisions;
    d.errors -= a.errors;
    d.timeouts -= a.timeouts;
    d.fallbacks -= a.fallbacks;
    d.short_circuits -= a.short_circuits;
    d.reconnects -= a.reconnects;
    d
}

/// What one (fault, policy) run measured.
#[derive(Debug)]
struct Run {
    policy: OnFailure,
    during: RedisStats,
    proxy: TcpFaultStats,
    /// Real durations of the decisions that called Redis and failed, and of the skipped ones.
    slowest_failed: Duration,
    slowest_skipped: Duration,
    recovery: Duration,
    /// Quota spent on Redis by calls whose answer the client never saw.
    ghost: u64,
    total: RedisStats,
}

/// One fault under one policy: warm up, 5 Redis decisions, the fault for 30 decisions, heal,
/// recovery, 10 Redis decisions.
async fn run(redis: &RedisServer, fault: TcpFault, policy: OnFailure, name: &str) -> Run {
    let proxy = TcpFaultProxy::start(redis.addr());
    let prefix = format!("s6-{name}-{}", label(policy));
    let store = store(&proxy.redis_url(), policy, &prefix);
    // Connect and load the script on a throwaway limit (first calls cost a few round trips).
    until_redis_decides(&store, &Probe::new("warm-up", 1_000_000)).await;
    let warm = store.stats();
    let probe = Probe::new("s6", LIMIT);
    for _ in 0..5 {
        assert!(until_redis_decides(&store, &probe).await.0.allowed);
    }
    let before = store.stats();
    let proxy_before = proxy.stats();

    proxy.set(fault);
    let mut admitted = 0;
    let (mut slowest_failed, mut slowest_skipped) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..DURING {
        let s = store.stats();
        let (r, took) = probe.decide(&store).await;
        holds(policy, &r, &mut admitted);
        if store.stats().short_circuits > s.short_circuits {
            slowest_skipped = slowest_skipped.max(took);
        } else {
            slowest_failed = slowest_failed.max(took);
        }
    }
    let during = delta(before, store.stats());
    let p = proxy.stats();
    let mut proxy_during = p;
    proxy_during.scripts -= proxy_before.scripts;
    proxy_during.resets -= proxy_before.resets;
    if let OnFailure::Local { instances } = policy {
        // A loaded box may have timed out a call or two before the fault: those were
        // decided locally already (admitted: the local state was fresh).
        let before_fault = before.fallbacks - warm.fallbacks;
        assert_eq!(
            admitted + before_fault,
            LIMIT / u64::from(instances),
            "the local share of the quota"
        );
    }
    let failed = during.errors + during.timeouts;
    assert_eq!(during.redis_decisions, 0, "{name}: {during:?}");
    assert_eq!(during.fallbacks, DURING, "every decision by the policy");
    assert_eq!(
        failed + during.short_circuits,
        DURING,
        "a fallback is a failed call or a skip: {during:?}"
    );
    assert!(failed >= 3, "{during:?}");
    assert!(
        during.short_circuits > 0,
        "a failing Redis is not hammered: {during:?}"
    );
    // Skipped decisions never reach the wire: the proxy saw at most the failed calls. On a
    // loaded box the proxy's thread may count a call that failed *before* the fault late
    // (twice if it was the first call, `EVALSHA` again after `NOSCRIPT`): those are allowed
    // for, and are 0 on a quiet box.
    let late = 2 * (before.errors + before.timeouts);
    assert!(
        proxy_during.scripts <= failed + late,
        "skipped decisions never reach the wire: {proxy_during:?} vs {during:?}, {late} late"
    );
    match fault {
        TcpFault::Delay(_) | TcpFault::Blackhole => {
            assert_eq!(during.timeouts, failed, "ended by the timeout: {during:?}");
            assert!(proxy_during.scripts >= 1, "{proxy_during:?}");
            // Timeouts opened the short circuit: the store replaced the connection (a black
            // hole never errors, so nothing else would: finding F6).
            assert!(during.reconnects >= 1, "{during:?}");
        }
        TcpFault::Reset(_) => assert!(
            proxy_during.resets >= 1 && proxy_during.scripts >= 1,
            "the proxy cut a script call: {proxy_during:?}"
        ),
        TcpFault::Down => assert!(proxy_during.resets + p.refused >= 1, "{p:?}"),
        TcpFault::None => unreachable!(),
    }

    proxy.heal();
    let (first, recovery) = until_redis_decides(&store, &probe).await;
    let spent_by_decisions = store.stats().redis_decisions - warm.redis_decisions;
    let ghost = (LIMIT - spent_by_decisions)
        .checked_sub(first.remaining)
        .unwrap_or_else(|| {
            panic!(
                "Redis reports more quota left ({}) than its decisions allow ({})",
                first.remaining,
                LIMIT - spent_by_decisions
            )
        });
    // Back on Redis: the short circuit is closed and every decision calls Redis again (a
    // call slower than the timeout on a loaded box would still be a call, not a skip).
    let s = store.stats();
    assert!(!s.circuit_open, "{s:?}");
    for _ in 0..3 {
        let _ = probe.decide(&store).await;
    }
    let after = delta(s, store.stats());
    assert_eq!(
        after.short_circuits,
        0,
        "{name} {}: {after:?}",
        label(policy)
    );
    assert_eq!(after.redis_decisions + after.errors + after.timeouts, 3);
    Run {
        policy,
        during,
        proxy: proxy_during,
        slowest_failed,
        slowest_skipped,
        recovery,
        ghost,
        total: store.stats(),
    }
}

/// Runs a fault under the four policies at once (one Redis, a proxy and a store each),
/// checks the metrics against the stores' counters, prints the figures.
async fn scenario(fault: TcpFault, name: &str) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime: every poll happens on this thread, under the recorder.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let redis = RedisServer::start();
    let runs = futures_util::future::join_all(POLICIES.map(|p| run(&redis, fault, p, name))).await;

    let mut seen = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        if let DebugValue::Counter(n) = value {
            seen.insert(format!("{}{{{}}}", key.key().name(), labels.join(",")), n);
        }
    }
    let get = |k: &str| seen.get(k).copied().unwrap_or(0);
    let sum = |f: fn(&RedisStats) -> u64| runs.iter().map(|r| f(&r.total)).sum::<u64>();
    for r in &runs {
        assert_eq!(
            get(&format!(
                "stormwall_redis_fallbacks_total{{policy={}}}",
                label(r.policy)
            )),
            r.total.fallbacks,
            "the fallback metric counts {}",
            label(r.policy)
        );
    }
    assert_eq!(
        get("stormwall_redis_errors_total{kind=error}")
            + get("stormwall_redis_errors_total{kind=timeout}"),
        sum(|s| s.errors + s.timeouts),
        "the error metric counts every failed call: {seen:?}"
    );
    assert_eq!(
        get("stormwall_redis_short_circuits_total{}"),
        sum(|s| s.short_circuits)
    );
    assert_eq!(
        get("stormwall_redis_decisions_total{}"),
        sum(|s| s.redis_decisions)
    );
    assert_eq!(
        get("stormwall_redis_reconnects_total{}"),
        sum(|s| s.reconnects)
    );

    for r in &runs {
        println!(
            "scenario 6 {name} [{}]: {} decisions by the policy ({} failed calls: {} errors, {} \
             timeouts; {} skipped; {} connections replaced), proxy saw {} script calls, {} \
             resets; slowest failed call {:?}, slowest skipped {:?}; Redis decides again {:?} \
             after the heal; quota spent on Redis by unanswered calls: {}",
            label(r.policy),
            r.during.fallbacks,
            r.during.errors + r.during.timeouts,
            r.during.errors,
            r.during.timeouts,
            r.during.short_circuits,
            r.during.reconnects,
            r.proxy.scripts,
            r.proxy.resets,
            r.slowest_failed,
            r.slowest_skipped,
            r.recovery,
            r.ghost,
        );
    }
    println!(
        "scenario 6 {name}: metrics {:?}",
        seen.iter()
            .filter(|(k, _)| k.starts_with("stormwall_redis"))
            .collect::<std::collections::BTreeMap<_, _>>()
    );
}

#[tokio::test]
async fn reset_mid_request_every_policy_holds_then_recovers() {
    scenario(TcpFault::Reset(ResetAt::MidRequest), "reset mid-request").await;
}

#[tokio::test]
async fn reset_before_reply_every_policy_holds_then_recovers() {
    scenario(TcpFault::Reset(ResetAt::BeforeReply), "reset before reply").await;
}

#[tokio::test]
async fn slow_redis_every_policy_holds_then_recovers() {
    scenario(TcpFault::Delay(SLOW), "slow 2 s").await;
}

#[tokio::test]
async fn redis_down_every_policy_holds_then_recovers() {
    scenario(TcpFault::Down, "down").await;
}

#[tokio::test]
async fn black_hole_every_policy_holds_then_recovers() {
    scenario(TcpFault::Blackhole, "black hole").await;
}

/// Waits (bounded: a 10 s hang guard) until the proxy's counters satisfy `pred`; the proxy
/// runs on its own thread, so this blocks only the test's thread.
fn wait_proxy(proxy: &TcpFaultProxy, pred: impl Fn(&TcpFaultStats) -> bool) -> TcpFaultStats {
    proxy.wait_until(Duration::from_secs(10), pred)
}

/// The added latency, in virtual time: the store's only wait is its timeout timer.
#[tokio::test]
async fn added_latency_is_the_timeout_at_most_and_zero_once_short_circuited() {
    let redis = RedisServer::start();
    let probe = Probe::new("s6-latency", 1_000_000);
    let mut figures = Vec::new();
    for fault in [
        TcpFault::Delay(SLOW),
        TcpFault::Reset(ResetAt::MidRequest),
        TcpFault::Blackhole,
    ] {
        let proxy = TcpFaultProxy::start(redis.addr());
        let store = store(&proxy.redis_url(), OnFailure::Closed, "s6-latency");
        // Real time for the connection and the script load.
        until_redis_decides(&store, &probe).await;
        let warm = store.stats();
        proxy.set(fault);
        tokio::time::pause();
        let mut waits = Vec::new();
        // Three failed calls open the short circuit (the default threshold).
        for _ in 0..3 {
            let (s, p) = (store.stats(), proxy.stats());
            let t = Instant::now();
            let (r, _) = probe.decide(&store).await;
            let waited = t.elapsed();
            assert!(!r.unwrap().allowed);
            let d = delta(s, store.stats());
            assert_eq!(
                d.errors + d.timeouts,
                1,
                "{fault:?}: one failed call: {d:?}"
            );
            assert!(
                waited <= TIMEOUT + Duration::from_millis(1),
                "{fault:?}: waited {waited:?} of virtual time (timeout {TIMEOUT:?})"
            );
            if let TcpFault::Delay(_) | TcpFault::Blackhole = fault {
                // The call reached the proxy and its answer never came: the decision ended by
                // the timer, after exactly the timeout.
                assert_eq!(d.timeouts, 1);
                assert!(waited >= TIMEOUT, "{waited:?}");
                let now = wait_proxy(&proxy, |x| x.scripts > p.scripts);
                assert_eq!(now.replies, p.replies, "no reply reached the client");
            }
            waits.push(waited);
        }
        assert!(store.stats().circuit_open);
        // Short circuit open: ready on the first poll, no timer and no I/O.
        let scripts = proxy.stats().scripts;
        let skipped = store.stats().short_circuits;
        for _ in 0..20 {
            let checks = probe.checks();
            let r = store
                .check(Instant::now(), &checks, CheckMode::Acquire)
                .now_or_never()
                .expect("a short-circuited decision is ready at once");
            assert!(!r.unwrap().allowed);
        }
        assert_eq!(store.stats().short_circuits - skipped, 20);
        // After the backoff (100 ms), one probe: again at most the timeout.
        tokio::time::advance(Duration::from_millis(100)).await;
        let t = Instant::now();
        let (r, _) = probe.decide(&store).await;
        let probe_wait = t.elapsed();
        assert!(!r.unwrap().allowed);
        assert!(probe_wait <= TIMEOUT + Duration::from_millis(1));
        tokio::time::resume();
        // Only the probe went to Redis. Allowed for: calls the proxy's thread may count late
        // on a loaded box (a warm-up call that failed, twice with `NOSCRIPT`; the three
        // failed calls of a reset fault, not waited for above), all 0 on a quiet box.
        let mut late = 2 * (warm.errors + warm.timeouts);
        if let TcpFault::Reset(_) = fault {
            late += 3;
        }
        let s = proxy.stats();
        assert!(
            s.scripts <= scripts + 1 + late,
            "only the probe went to Redis: {s:?} ({late} late)"
        );
        figures.push(format!(
            "{fault:?}: failed calls waited {waits:?} of virtual time, 20 short-circuited \
             decisions 0, the probe after the backoff {probe_wait:?}"
        ));
        proxy.heal();
        drop(proxy);
    }
    for f in figures {
        println!("scenario 6 added latency: {f}");
    }
}
