//! One quota shared by 4 limiter instances (each its own Tokio runtime on its own thread, its
//! own store and connection) × 64 concurrent tasks, on one `redis-server` and on a 3-master
//! Redis Cluster: over 3 s, total admitted ≤ burst + rate·t, and within 2% of it (demand
//! far exceeds supply).

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use stormwall_core::time::Instant;
use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey, Store};
use stormwall_ratelimit::{Algorithm, Quota};
use stormwall_redis::{RedisStore, RedisStoreBuilder};
use stormwall_tests::redis::RedisServer;
use support::Cluster;

const INSTANCES: usize = 4;
const TASKS: usize = 64;
const RATE: u64 = 100;

/// 3 s by default; 10 s with `STORMWALL_EXTENDED=1`.
fn secs() -> u64 {
    if std::env::var_os("STORMWALL_EXTENDED").is_some() {
        10
    } else {
        3
    }
}

#[derive(Clone)]
enum Target {
    Single(String),
    Cluster(Vec<String>),
}

fn builder() -> RedisStoreBuilder {
    // Counts, not latency, are under test: a generous timeout so a loaded box does not turn
    // decisions into failures.
    RedisStore::builder().timeout(Duration::from_secs(2))
}

async fn connect(target: &Target) -> RedisStore {
    match target {
        Target::Single(url) => builder().connect(url).unwrap(),
        Target::Cluster(urls) => builder().connect_cluster(urls).await.unwrap(),
    }
}

struct Outcome {
    admitted: u64,
    rejected: u64,
    errors: u64,
    /// From the first request sent to the last answer: every decision ran on Redis within it.
    span: Duration,
    /// From the first answer to the last answer: Redis decided over at least this long.
    answered: Duration,
}

/// The floods measure counts against time: run them one at a time, so the tests of this
/// binary do not load the box for each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs the 4 × 64 flood for `secs` seconds. `per_instance` adds a second limit (per
/// instance, generous) to every check, making it a multi-limit check.
fn flood(target: Target, secs: u64, per_instance: bool) -> Outcome {
    let quota = Quota::per_second(RATE).unwrap();
    let admitted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(INSTANCES));
    let base = std::time::Instant::now();
    let first_answer = Arc::new(AtomicU64::new(u64::MAX));
    let last_answer = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..INSTANCES)
        .map(|i| {
            let (target, barrier) = (target.clone(), barrier.clone());
            let (admitted, rejected, errors) = (admitted.clone(), rejected.clone(), errors.clone());
            let (first_answer, last_answer) = (first_answer.clone(), last_answer.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let store = Arc::new(connect(&target).await);
                    let shared = Arc::new((LimitId::new("shared"), LimitKey::global()));
                    let own = Arc::new((
                        LimitId::new("instance"),
                        LimitKey::from_string(format!("instance-{i}")),
                    ));
                    barrier.wait();
                    let start = std::time::Instant::now();
                    let deadline = start + Duration::from_secs(secs);
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|_| {
                            let (store, shared, own) = (store.clone(), shared.clone(), own.clone());
                            let (admitted, rejected, errors) =
                                (admitted.clone(), rejected.clone(), errors.clone());
                            let (first_answer, last_answer) =
                                (first_answer.clone(), last_answer.clone());
                            tokio::spawn(async move {
                                while std::time::Instant::now() < deadline {
                                    let mut checks = vec![LimitCheck {
                                        limit: &shared.0,
                                        key: &shared.1,
                                        quota,
                                        algorithm: Algorithm::Gcra,
                                        cost: 1,
                                    }];
                                    if per_instance {
                                        checks.push(LimitCheck {
                                            limit: &own.0,
                                            key: &own.1,
                                            quota: Quota::per_second(10 * RATE).unwrap(),
                                            algorithm: Algorithm::SlidingLog,
                                            cost: 1,
                                        });
                                    }
                                    match store
                                        .check(Instant::now(), &checks, CheckMode::Acquire)
                                        .await
                                    {
                                        Ok(d) if d.allowed => {
                                            admitted.fetch_add(1, Ordering::Relaxed)
                                        }
                                        Ok(_) => rejected.fetch_add(1, Ordering::Relaxed),
                                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                                    };
                                    let at = base.elapsed().as_nanos() as u64;
                                    first_answer.fetch_min(at, Ordering::Relaxed);
                                    last_answer.fetch_max(at, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(2)).await;
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    (start, std::time::Instant::now())
                })
            })
        })
        .collect();
    let spans: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    Outcome {
        admitted: admitted.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        span: last - first,
        answered: Duration::from_nanos(
            last_answer
                .load(Ordering::Relaxed)
                .saturating_sub(first_answer.load(Ordering::Relaxed)),
        ),
    }
}

fn assert_shared_quota(name: &str, o: &Outcome, secs: u64) {
    let burst = RATE;
    let interval = Duration::from_secs(1) / RATE as u32;
    // Every decision happened inside [first send, last answer] on the Redis clock.
    let upper = burst + (o.span.as_nanos() / interval.as_nanos()) as u64;
    let expected = burst + RATE * secs;
    // Redis decided over at least `answered`: under demand it admitted at least about
    // burst + rate·answered (minus one interval at each end).
    let floor = burst + (o.answered.as_nanos() / interval.as_nanos()) as u64;
    println!(
        "{name}: {INSTANCES} instances x {TASKS} tasks, {secs} s: admitted {} (burst + rate*t = {expected}; \
         bound over the measured span {:?} = {upper}; over the answered span {:?} = {floor}), rejected {}, errors {}",
        o.admitted, o.span, o.answered, o.rejected, o.errors
    );
    assert_eq!(o.errors, 0, "{name}: no Redis failures expected");
    assert!(
        o.rejected > 10 * o.admitted,
        "{name}: demand must far exceed supply"
    );
    assert!(o.admitted <= upper, "{name}: {} > {upper}", o.admitted);
    // Within 2% of burst + rate·t, t being the time Redis was deciding (a loaded box may
    // take a while to send the first request after the start line).
    let low = floor as f64 * 0.98;
    assert!(
        (o.admitted as f64) >= low && (o.admitted as f64) <= upper as f64,
        "{name}: {} not within 2% of {floor}..{upper}",
        o.admitted
    );
    // And, on a box that started on time, within 2% of the nominal figure for the 3 s.
    if o.answered >= Duration::from_secs(secs) - Duration::from_millis(60) {
        assert!(
            (o.admitted as f64 - expected as f64).abs() <= expected as f64 * 0.02,
            "{name}: {} not within 2% of {expected}",
            o.admitted
        );
    }
}

#[test]
fn four_instances_share_one_quota_on_one_server() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let server = RedisServer::start();
    let o = flood(Target::Single(server.url()), secs(), false);
    assert_shared_quota("single server", &o, secs());
}

#[test]
fn four_instances_share_one_quota_on_a_cluster_with_multi_limit_checks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    let o = flood(Target::Cluster(cluster.urls()), secs(), true);
    assert_shared_quota("3-master cluster, multi-limit", &o, secs());
}

/// Hash tags at work: multi-limit checks keyed by user (per user, then per user and
/// endpoint) spread over the 3 masters, each check one script on one node; the same two keys
/// without a common tag are refused by the cluster (CROSSSLOT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_multi_limit_checks_spread_by_hash_tag() {
    let cluster = Cluster::start();
    let store = RedisStore::builder()
        .timeout(Duration::from_secs(2))
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let (user, endpoint) = (LimitId::new("per-user"), LimitId::new("per-user-endpoint"));
    let q = Quota::new(3, Duration::from_secs(3600)).unwrap();
    let mut nodes = std::collections::HashSet::new();
    for u in 0..30 {
        let uk = LimitKey::from_string(format!("user-{u}"));
        let ek = LimitKey::from_string(format!("user-{u}/orders"));
        let checks = [
            LimitCheck {
                limit: &user,
                key: &uk,
                quota: q,
                algorithm: Algorithm::Gcra,
                cost: 1,
            },
            LimitCheck {
                limit: &endpoint,
                key: &ek,
                quota: Quota::new(2, Duration::from_secs(3600)).unwrap(),
                algorithm: Algorithm::FixedWindow,
                cost: 1,
            },
        ];
        let mut admitted = 0;
        for _ in 0..4 {
            let d = store
                .check(Instant::now(), &checks, CheckMode::Acquire)
                .await
                .unwrap();
            admitted += u64::from(d.allowed);
        }
        assert_eq!(admitted, 2, "user {u}: the per-endpoint limit (2) binds");
        let names = store.key_names(&checks);
        let node = cluster.node_of(&names[0]);
        assert_eq!(
            node,
            cluster.node_of(&names[1]),
            "both keys of a check on one node"
        );
        nodes.insert(node);
        // The per-user limit was spent only by admitted requests: 3 - 2 = 1 left.
        let d = store
            .check(Instant::now(), &checks[..1], CheckMode::Peek)
            .await
            .unwrap();
        assert_eq!(
            d.remaining, 0,
            "user {u}: peek of 1 unit leaves 0 of the last 1"
        );
        assert!(d.allowed);
    }
    println!(
        "30 users' multi-limit state spread over {} of 3 masters",
        nodes.len()
    );
    assert!(nodes.len() >= 2, "keys should spread over the masters");
    let s = store.stats();
    assert_eq!((s.errors, s.timeouts), (0, 0));
    // Without a common tag, the cluster refuses a script over these keys.
    let out = support::cli(
        cluster.nodes[0].port(),
        &[
            "eval",
            "return 1",
            "2",
            "stormwall:per-user:s:user-1",
            "stormwall:per-user:s:user-2",
        ],
    );
    let text = out;
    assert!(text.contains("CROSSSLOT"), "{text}");
}
