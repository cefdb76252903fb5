//! The Redis rate-limit store on loopback: decisions per second and latency with 1 and 64
//! concurrent callers, next to the ceiling (`redis-benchmark` running a plain `EVALSHA` of
//! the same script, same arguments) and the in-memory store.
//!
//! `cargo bench -p stormwall-benches --features redis --bench redis`
//!
//! Starts its own `redis-server` on a free loopback port (needs `redis-server` and
//! `redis-benchmark` on the PATH). Criterion measures the time per decision; a second pass
//! records every decision's latency for p50/p99 and runs `redis-benchmark`; both are
//! printed as a table.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey, Store};
use stormwall_ratelimit::{Algorithm, InMemoryStore, Quota};
use stormwall_redis::RedisStore;

/// Always admitted (10M/s), so every decision writes: the common case.
fn quota() -> Quota {
    Quota::per_second(10_000_000).unwrap()
}

struct Setup {
    limit: LimitId,
    key: LimitKey,
}

impl Setup {
    fn new() -> Self {
        Self {
            limit: LimitId::new("bench"),
            key: LimitKey::from_string("k"),
        }
    }

    fn checks(&self) -> [LimitCheck<'_>; 1] {
        [LimitCheck {
            limit: &self.limit,
            key: &self.key,
            quota: quota(),
            algorithm: Algorithm::Gcra,
            cost: 1,
        }]
    }
}

async fn decide<S: Store>(store: &S, setup: &Setup) -> bool {
    store
        .check(
            tokio::time::Instant::now(),
            &setup.checks(),
            CheckMode::Acquire,
        )
        .await
        .map(|d| d.allowed)
        .unwrap_or(false)
}

/// `iters` decisions spread over `callers` concurrent tasks; returns the wall time.
async fn concurrent<S: Store + Clone>(store: &S, callers: u64, iters: u64) -> Duration {
    let setup = Arc::new(Setup::new());
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (store, setup) = (store.clone(), setup.clone());
            let n = iters / callers + u64::from(i < iters % callers);
            tokio::spawn(async move {
                for _ in 0..n {
                    black_box(decide(&store, &setup).await);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// Every decision's latency with `callers` concurrent tasks, `total` decisions in all.
async fn latencies(store: &RedisStore, callers: usize, total: usize) -> (f64, Duration, Duration) {
    let setup = Arc::new(Setup::new());
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (store, setup) = (store.clone(), setup.clone());
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(total / callers);
                for _ in 0..total / callers {
                    let t = Instant::now();
                    assert!(decide(&store, &setup).await, "Redis decided");
                    out.push(t.elapsed());
                }
                out
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (rate, pct(0.50), pct(0.99))
}

/// `redis-benchmark` running `EVALSHA` of the same script with the arguments the store
/// sends; `pipeline` > 1 pipelines that many calls per client. Returns (requests/s, p50 ms,
/// p99 ms) from its `--csv` output.
fn redis_benchmark(
    port: u16,
    sha: &str,
    clients: usize,
    pipeline: usize,
    n: usize,
) -> (f64, f64, f64) {
    // ARGV: acquire, 1 limit, GCRA, key 1, limit, period µs, interval µs, burst, cost.
    let q = quota();
    let period = q.period().as_micros().max(1).to_string();
    let interval = q
        .emission_interval()
        .as_nanos()
        .div_ceil(1000)
        .max(1)
        .to_string();
    let (limit, burst) = (q.limit().to_string(), q.burst().to_string());
    let args = [
        "EVALSHA",
        sha,
        "1",
        "{stormwall:bench:s:k}:g",
        "1",
        "1",
        "g",
        "1",
        &limit,
        &period,
        &interval,
        &burst,
        "1",
    ];
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--csv"])
        .args(["-n", &n.to_string(), "-c", &clients.to_string()])
        .args(["-P", &pipeline.to_string()])
        .args(args)
        .output()
        .expect("redis-benchmark on the PATH");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"; read from the end (the test name is the command).
    let line = text.lines().last().unwrap_or_default();
    let cols: Vec<f64> = line
        .rsplit("\",\"")
        .map(|c| c.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    if cols.len() < 7 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (cols[6], cols[3], cols[1])
}

fn bench(c: &mut Criterion) {
    // The test kit's launcher: a private redis-server on a free port, ready when returned.
    let server = stormwall_tests::redis::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    let store = rt.block_on(async {
        let store = RedisStore::builder()
            .timeout(Duration::from_secs(1))
            .connect(&url)
            .unwrap();
        // Connect and load the script before measuring.
        assert!(decide(&store, &Setup::new()).await);
        store
    });
    let memory = InMemoryStore::new();

    let mut g = c.benchmark_group("redis_decision");
    for callers in [1u64, 64] {
        g.bench_function(format!("redis_store/{callers}_callers"), |b| {
            b.to_async(&rt)
                .iter_custom(|iters| concurrent(&store, callers, iters))
        });
        g.bench_function(format!("in_memory_store/{callers}_callers"), |b| {
            b.to_async(&rt)
                .iter_custom(|iters| concurrent(&memory, callers, iters))
        });
    }
    g.finish();

    // Throughput and latency percentiles next to the redis-benchmark ceiling.
    println!(
        "\n| callers | stormwall-redis decisions/s | p50 | p99 | redis-benchmark EVALSHA -c C: req/s, p50, p99 | ratio | redis-benchmark -c C -P 16 (pipelined): req/s |"
    );
    println!("|---|---|---|---|---|---|---|");
    for callers in [1usize, 64] {
        let total = if callers == 1 { 20_000 } else { 100_000 };
        let (rate, p50, p99) = rt.block_on(latencies(&store, callers, total));
        let sha = store.script_sha();
        let (rps, b50, b99) = redis_benchmark(server.port(), sha, callers, 1, total);
        let (prps, _, _) = redis_benchmark(server.port(), sha, callers, 16, total * 4);
        println!(
            "| {callers} | {rate:.0} | {p50:.0?} | {p99:.0?} | {rps:.0}, {b50:.3} ms, {b99:.3} ms | {:.2} | {prps:.0} |",
            rate / rps
        );
    }
    println!(
        "redis-benchmark command: redis-benchmark -h 127.0.0.1 -p PORT --csv -n N -c C [-P 16] EVALSHA {} 1 {{stormwall:bench:s:k}}:g 1 1 g 1 10000000 1000000 1 10000000 1\n",
        store.script_sha()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
