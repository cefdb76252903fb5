//! Rate limiting: Stormwall vs `governor` (decisions) and vs `tower_governor` and
//! `tower::limit::RateLimit` behind `tower::buffer::Buffer` (full layer), same run.
//!
//! `cargo bench -p stormwall-benches --features ratelimit --bench ratelimit -- --warm-up-time 1 --measurement-time 3`

#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use circuit_http::{Request, Response};
use circuit_tower::{Layer, ServiceExt, service_fn};
use criterion::{Criterion, criterion_group, criterion_main};
use stormwall::ratelimit::{DirectLimiter, Limit, Limiter, Quota, RateLimitLayer};

/// A quota so large that every decision admits: the benches measure the admitted path.
fn huge() -> Quota {
    Quota::per_second(1_000_000_000).unwrap()
}

fn gov_huge() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::MAX)
}

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit/decision");

    // Single key, real clocks (governor: quanta; ours: tokio's Instant).
    let ours = DirectLimiter::new(huge());
    g.bench_function("stormwall DirectLimiter (GCRA, 1 CAS)", |b| {
        b.iter(|| black_box(ours.try_acquire(1).is_ok()))
    });
    let gov = governor::RateLimiter::direct(gov_huge());
    g.bench_function("governor direct", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });

    // What the clock read costs (tokio's Instant, the one the layers must use).
    g.bench_function("clock: tokio::time::Instant::now()", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });

    // Single key, decision only (no clock read): explicit time / fake clock.
    let mut now = 1u64;
    g.bench_function("stormwall DirectLimiter at explicit now", |b| {
        b.iter(|| {
            now += 1;
            black_box(ours.try_acquire_at(now, 1).is_ok())
        })
    });
    let clock = governor::clock::FakeRelativeClock::default();
    let gov_fake = governor::RateLimiter::direct_with_clock(gov_huge(), clock.clone());
    g.bench_function("governor direct with FakeRelativeClock", |b| {
        b.iter(|| {
            clock.advance(Duration::from_nanos(1));
            black_box(gov_fake.check().is_ok())
        })
    });

    // Keyed: 10,000 integer keys in a DashMap.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let keyed = Limiter::new("bench", huge());
    let gov_keyed = governor::RateLimiter::dashmap(gov_huge());
    for k in 0..10_000u64 {
        let _ = keyed.try_acquire(&k, 1);
        let _ = gov_keyed.check_key(&k);
    }
    let mut i = 0u64;
    g.bench_function("stormwall Limiter keyed (InMemoryStore)", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(keyed.try_acquire(&i, 1).is_ok())
        })
    });
    g.bench_function("governor keyed dashmap", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(gov_keyed.check_key(&i).is_ok())
        })
    });
    g.finish();
}

type Inner =
    circuit_tower::util::ServiceFn<fn(Request<Body>) -> Ready<Result<Response<Body>, Infallible>>>;

fn inner() -> Inner {
    fn ok(_: Request<Body>) -> Ready<Result<Response<Body>, Infallible>> {
        ready(Ok(Response::new(Body::empty())))
    }
    service_fn(ok as fn(_) -> _)
}

fn req() -> Request<Body> {
    Request::get("/").body(Body::empty()).unwrap()
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("ratelimit/layer");

    let bare = inner();
    g.bench_function("no limiter (baseline)", |b| {
        b.to_async(&rt).iter(|| bare.oneshot(req()))
    });

    let ours = RateLimitLayer::new(Limit::global("global", huge())).layer(inner());
    g.bench_function("stormwall RateLimit (global key, headers)", |b| {
        b.to_async(&rt).iter(|| ours.clone().oneshot(req()))
    });
    let ours_plain = RateLimitLayer::new(Limit::global("global", huge()))
        .draft_headers(false)
        .layer(inner());
    g.bench_function("stormwall RateLimit (global key, no headers)", |b| {
        b.to_async(&rt).iter(|| ours_plain.clone().oneshot(req()))
    });

    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
        .finish()
        .unwrap();
    let tg = tower_governor::GovernorLayer::<_, _, Body>::new(config).layer(inner());
    g.bench_function("tower_governor (global key)", |b| {
        b.to_async(&rt).iter(|| tg.clone().oneshot(req()))
    });

    let tower_rl = circuit_tower::buffer::Buffer::new(
        circuit_tower::limit::RateLimit::new(
            inner(),
            circuit_tower::limit::rate::Rate::new(u64::MAX, Duration::from_secs(1)),
        ),
        1024,
    );
    g.bench_function("tower::limit::RateLimit behind Buffer", |b| {
        b.to_async(&rt).iter(|| tower_rl.clone().oneshot(req()))
    });
    g.finish();
}

criterion_group!(benches, decisions, layers);
criterion_main!(benches);
