//! Coalescing: per-request overhead with unique keys (nothing to coalesce) and with 1,000
//! concurrent waiters on one key; Stormwall side by side with `async_singleflight` and
//! `tower-resilience-coalesce` in the same run. Before the criterion groups, prints the memory
//! each waiting caller costs (see `memory_per_waiter`).

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Waker};

use cache_bytes::Bytes;
use cache_http_body_util::Full;
use circuit_http::{Request, Response};
use circuit_tower::{Layer, ServiceExt, service_fn};
use coalesce_futures::future::join_all;
use criterion::{Criterion, Throughput, criterion_group};
use stormwall::coalesce::{CoalesceLayer, Group};
use stormwall::core::key::{KeyError, key_fn};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One hop through the scheduler, so that every caller is attached before the call finishes.
async fn upstream(k: u64) -> Result<u64, Infallible> {
    tokio::task::yield_now().await;
    Ok(k)
}

fn unique_keys(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("coalesce/unique_keys");
    let next = AtomicU64::new(0);
    let next = &next;

    g.bench_function("baseline: the future alone", |b| {
        b.to_async(&rt).iter(|| async move {
            let k = next.fetch_add(1, Ordering::Relaxed);
            black_box(async move { Ok::<u64, Infallible>(k) }.await)
        })
    });

    let group: Group<u64, u64, Infallible> = Group::new();
    let group = &group;
    g.bench_function("stormwall Group::run", |b| {
        b.to_async(&rt).iter(|| async move {
            let k = next.fetch_add(1, Ordering::Relaxed);
            black_box(group.run(k, async move { Ok(k) }).await)
        })
    });

    let sf: async_singleflight::Group<u64, u64, Infallible> = async_singleflight::Group::new();
    let sf = &sf;
    g.bench_function("async_singleflight Group::work", |b| {
        b.to_async(&rt).iter(|| async move {
            let k = next.fetch_add(1, Ordering::Relaxed);
            black_box(sf.work(&k, async move { Ok(k) }).await)
        })
    });

    let inner = service_fn(|k: u64| async move { Ok::<u64, Infallible>(k) });
    let sw = CoalesceLayer::generic(key_fn(|k: &u64| Ok::<_, KeyError>(*k))).layer(inner);
    let sw = &sw;
    g.bench_function("stormwall CoalesceLayer::generic (tower)", |b| {
        b.to_async(&rt).iter(|| async move {
            let k = next.fetch_add(1, Ordering::Relaxed);
            black_box(sw.clone().oneshot(k).await)
        })
    });

    let tr = tower_resilience_coalesce::CoalesceLayer::new(|k: &u64| *k).layer(inner);
    let tr = &tr;
    g.bench_function("tower-resilience-coalesce (tower)", |b| {
        b.to_async(&rt).iter(|| async move {
            let k = next.fetch_add(1, Ordering::Relaxed);
            black_box(tr.clone().oneshot(k).await)
        })
    });

    // HTTP: key = method + URI + vary headers, body buffered into a shared response.
    let http_inner = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{\"id\":1}"))))
    });
    g.bench_function("baseline: HTTP service alone", |b| {
        b.to_async(&rt).iter(|| async move {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let req = Request::get(format!("http://api/users/{k}"))
                .body(())
                .unwrap();
            black_box(http_inner.oneshot(req).await)
        })
    });
    let http = CoalesceLayer::new().layer(http_inner);
    let http = &http;
    g.bench_function("stormwall CoalesceLayer (HTTP)", |b| {
        b.to_async(&rt).iter(|| async move {
            let k = next.fetch_add(1, Ordering::Relaxed);
            let req = Request::get(format!("http://api/users/{k}"))
                .body(())
                .unwrap();
            black_box(http.clone().oneshot(req).await)
        })
    });
    g.finish();
}

const WAITERS: u64 = 1_000;

fn thousand_waiters(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("coalesce/1000_waiters_one_key");
    g.throughput(Throughput::Elements(WAITERS));

    let group: Group<u64, u64, Infallible> = Group::new();
    let group = &group;
    g.bench_function("stormwall Group::run", |b| {
        b.to_async(&rt).iter(|| async move {
            let all = join_all((0..WAITERS).map(|_| group.run(1, upstream(1)))).await;
            assert!(all.iter().all(|r| *r == Ok(1)));
        })
    });

    let sf: async_singleflight::Group<u64, u64, Infallible> = async_singleflight::Group::new();
    let sf = &sf;
    g.bench_function("async_singleflight Group::work", |b| {
        b.to_async(&rt).iter(|| async move {
            let all = join_all((0..WAITERS).map(|_| sf.work(&1, upstream(1)))).await;
            assert!(all.iter().all(|r| *r == Ok(1)));
        })
    });

    let inner = service_fn(upstream);
    let sw = CoalesceLayer::generic(key_fn(|k: &u64| Ok::<_, KeyError>(*k))).layer(inner);
    let sw = &sw;
    g.bench_function("stormwall CoalesceLayer::generic (tower)", |b| {
        b.to_async(&rt).iter(|| async move {
            let all = join_all((0..WAITERS).map(|_| sw.clone().oneshot(1))).await;
            assert!(all.iter().all(|r| matches!(r, Ok(1))));
        })
    });

    let tr = tower_resilience_coalesce::CoalesceLayer::new(|k: &u64| *k).layer(inner);
    let tr = &tr;
    g.bench_function("tower-resilience-coalesce (tower)", |b| {
        b.to_async(&rt).iter(|| async move {
            let all = join_all((0..WAITERS).map(|_| tr.clone().oneshot(1))).await;
            assert!(all.iter().all(|r| matches!(r, Ok(1))));
        })
    });
    g.finish();
}

/// Resident memory in bytes (Linux `/proc/self/statm`), 0 elsewhere.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Memory per waiting caller: N callers wait on one key whose call never finishes. Each
/// caller's future is boxed and polled once (so every implementation has registered its
/// waiter), and the growth of resident memory is divided by N. This counts everything a
/// waiting caller costs: its future, what it registered (waker slot, channel receiver,
/// ...), and allocator overhead. Nothing is freed until all implementations are measured, so
/// one measurement cannot reuse memory freed by another.
fn memory_per_waiter() {
    const N: usize = 100_000;
    let rt = runtime();
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();

    fn poll_all<F: Future>(cx: &mut Context<'_>, futs: &mut [Pin<Box<F>>]) {
        for f in futs {
            assert!(f.as_mut().poll(cx).is_pending());
        }
    }

    println!("memory per waiting caller ({N} callers on one key, RSS growth / N):");
    let _guard = rt.enter();

    let group: Group<u64, u64, Infallible> = Group::new();
    let before = rss();
    let mut futs: Vec<_> = (0..N)
        .map(|_| Box::pin(group.run(1, std::future::pending())))
        .collect();
    poll_all(&mut cx, &mut futs);
    let per = (rss() - before) as f64 / N as f64;
    println!(
        "  stormwall Group::run: {per:.0} B (future: {} B)",
        size_of_val(&*futs[0])
    );
    keep.push(Box::new((group, futs)));

    let sw = CoalesceLayer::generic(key_fn(|k: &u64| Ok::<_, KeyError>(*k))).layer(service_fn(
        |_k: u64| std::future::pending::<Result<u64, Infallible>>(),
    ));
    let before = rss();
    let mut futs: Vec<_> = (0..N).map(|_| Box::pin(sw.clone().oneshot(1))).collect();
    poll_all(&mut cx, &mut futs);
    let per = (rss() - before) as f64 / N as f64;
    println!(
        "  stormwall CoalesceLayer::generic: {per:.0} B (future incl. oneshot: {} B)",
        size_of_val(&*futs[0])
    );
    keep.push(Box::new((sw, futs)));

    let sf: &'static async_singleflight::Group<u64, u64, Infallible> =
        Box::leak(Box::new(async_singleflight::Group::new()));
    let before = rss();
    let mut futs: Vec<_> = (0..N)
        .map(|_| Box::pin(sf.work(&1, std::future::pending())))
        .collect();
    poll_all(&mut cx, &mut futs);
    let per = (rss() - before) as f64 / N as f64;
    println!(
        "  async_singleflight Group::work: {per:.0} B (future: {} B)",
        size_of_val(&*futs[0])
    );
    keep.push(Box::new(futs));

    let tr =
        tower_resilience_coalesce::CoalesceLayer::new(|k: &u64| *k).layer(service_fn(|_k: u64| {
            std::future::pending::<Result<u64, Infallible>>()
        }));
    let before = rss();
    let mut futs: Vec<_> = (0..N).map(|_| Box::pin(tr.clone().oneshot(1))).collect();
    poll_all(&mut cx, &mut futs);
    let per = (rss() - before) as f64 / N as f64;
    println!(
        "  tower-resilience-coalesce: {per:.0} B (future incl. oneshot: {} B)",
        size_of_val(&*futs[0])
    );
    keep.push(Box::new((tr, futs)));
    drop(keep);
}

criterion_group!(benches, unique_keys, thousand_waiters);

fn main() {
    memory_per_waiter();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
