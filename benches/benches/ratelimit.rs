//! Rate limiting: Stormwall vs `governor` (decisions) and vs `tower_governor` and
//! `tower::limit::RateLimit` behind `tower::buffer::Buffer` (full layer), same run.
//!
//! `cargo bench -p stormwall-benches --features ratelimit --bench ratelimit -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction counts (stable under load): build with `--no-run`, then run the bench binary
//! under `valgrind --tool=callgrind` with `RATELIMIT_CALLGRIND=<case>:<iterations>` (cases:
//! see [`callgrind`]); the binary then runs that case alone and exits. Per-call counts are
//! the difference between two iteration counts divided by the difference in iterations.

#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use circuit_http::{Request, Response};
use circuit_tower::{Layer, ServiceExt, service_fn};
use criterion::{Criterion, criterion_group};
use stormwall::ratelimit::{Clock, DirectLimiter, Limit, Limiter, Quota, RateLimitLayer};

/// A quota so large that every decision admits: the benches measure the admitted path.
fn huge() -> Quota {
    Quota::per_second(1_000_000_000).unwrap()
}

fn gov_huge() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::MAX)
}

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit/decision");

    // Single key, real clocks (governor: quanta; ours: tokio's Instant by default, or the
    // TSC through quanta with `Clock::tsc()`).
    let ours = DirectLimiter::new(huge());
    g.bench_function("stormwall DirectLimiter (GCRA, 1 CAS, tokio clock)", |b| {
        b.iter(|| black_box(ours.try_acquire(1).is_ok()))
    });
    let ours_tsc = DirectLimiter::with_clock(huge(), Clock::tsc());
    g.bench_function("stormwall DirectLimiter (GCRA, 1 CAS, Clock::tsc)", |b| {
        b.iter(|| black_box(ours_tsc.try_acquire(1).is_ok()))
    });
    g.bench_function(
        "stormwall DirectLimiter::try_spend (yes/no, tokio clock)",
        |b| b.iter(|| black_box(ours.try_spend(1).is_ok())),
    );
    g.bench_function(
        "stormwall DirectLimiter::try_spend (yes/no, Clock::tsc)",
        |b| b.iter(|| black_box(ours_tsc.try_spend(1).is_ok())),
    );
    let gov = governor::RateLimiter::direct(gov_huge());
    g.bench_function("governor direct", |b| {
        b.iter(|| black_box(gov.check().is_ok()))
    });

    // What the clock reads cost.
    g.bench_function("clock: tokio::time::Instant::now()", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    g.bench_function("clock: std::time::Instant::now()", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    let tsc = Clock::tsc();
    g.bench_function("clock: stormwall Clock::tsc().now() (quanta)", |b| {
        b.iter(|| black_box(tsc.now()))
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
    g.bench_function(
        "stormwall Limiter keyed (InMemoryStore, tokio clock)",
        |b| {
            b.iter(|| {
                i = (i + 7919) % 10_000;
                black_box(keyed.try_acquire(&i, 1).is_ok())
            })
        },
    );
    let keyed_tsc = keyed.clone().clock(Clock::tsc());
    g.bench_function("stormwall Limiter keyed (InMemoryStore, Clock::tsc)", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            black_box(keyed_tsc.try_acquire(&i, 1).is_ok())
        })
    });
    g.bench_function(
        "stormwall Limiter keyed try_spend (InMemoryStore, tokio clock)",
        |b| {
            b.iter(|| {
                i = (i + 7919) % 10_000;
                black_box(keyed.try_spend(&i, 1).is_ok())
            })
        },
    );
    g.bench_function(
        "stormwall Limiter keyed try_spend (InMemoryStore, Clock::tsc)",
        |b| {
            b.iter(|| {
                i = (i + 7919) % 10_000;
                black_box(keyed_tsc.try_spend(&i, 1).is_ok())
            })
        },
    );
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

/// tower_governor with a global key and a quota so large that every request is admitted.
fn tower_governor_layer() -> impl circuit_tower::Service<Request<Body>> + Clone {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .key_extractor(tower_governor::key_extractor::GlobalKeyExtractor)
        .finish()
        .unwrap();
    tower_governor::GovernorLayer::<_, _, Body>::new(config).layer(inner())
}

fn req() -> Request<Body> {
    Request::get("/").body(Body::empty()).unwrap()
}

/// One request through `svc` without an executor: `poll_ready`, `call`, and one poll of the
/// response future with a no-op waker (every layer here answers at once). This is the
/// layer's own cost; `oneshot` under `block_on` adds the executor's, which moves the
/// response several times (a cost that grows with the response type's size).
fn poll_once<S>(svc: &mut S) -> Result<S::Response, S::Error>
where
    S: circuit_tower::Service<Request<Body>>,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = std::pin::pin!(svc.call(req()));
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(res) => res,
        std::task::Poll::Pending => panic!("every service here answers at once"),
    }
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
    let ours_tsc = RateLimitLayer::new(Limit::global("global", huge()))
        .draft_headers(false)
        .clock(Clock::tsc())
        .layer(inner());
    g.bench_function(
        "stormwall RateLimit (global key, no headers, Clock::tsc)",
        |b| b.to_async(&rt).iter(|| ours_tsc.clone().oneshot(req())),
    );

    let tg = tower_governor_layer();
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

    // The same services polled directly (see `poll_once`): the layers' own cost.
    let mut g = c.benchmark_group("ratelimit/layer-poll");
    let (mut bare, mut plain, mut tsc, mut tg) = (bare, ours_plain, ours_tsc, tg);
    g.bench_function("no limiter (baseline)", |b| {
        b.iter(|| black_box(poll_once(&mut bare)))
    });
    g.bench_function("stormwall RateLimit (global key, no headers)", |b| {
        b.iter(|| black_box(poll_once(&mut plain)))
    });
    g.bench_function(
        "stormwall RateLimit (global key, no headers, Clock::tsc)",
        |b| b.iter(|| black_box(poll_once(&mut tsc))),
    );
    g.bench_function("tower_governor (global key)", |b| {
        b.iter(|| black_box(poll_once(&mut tg)))
    });
    g.finish();
}

/// Runs one case `n` times, for callgrind (`RATELIMIT_CALLGRIND=<case>:<n>`). Cases:
/// `none` (setup only), `direct`, `direct-tsc`, `governor`, `keyed`, `keyed-tsc`,
/// `keyed-spend`, `keyed-spend-tsc`,
/// `governor-keyed`, `layer-bare`, `layer`, `layer-headers`, `layer-tsc`, `tower-governor`,
/// `direct-admit`, `direct-tsc-admit`, and the executor-free `poll-bare`, `poll-layer`, `poll-layer-tsc`,
/// `poll-tower-governor` (see [`poll_once`]).
fn callgrind(case: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let direct = DirectLimiter::new(huge());
    let direct_tsc = DirectLimiter::with_clock(huge(), Clock::tsc());
    let gov = governor::RateLimiter::direct(gov_huge());
    let keyed = Limiter::new("bench", huge());
    let keyed_tsc = keyed.clone().clock(Clock::tsc());
    let gov_keyed = governor::RateLimiter::dashmap(gov_huge());
    for k in 0..10_000u64 {
        let _ = keyed.try_acquire(&k, 1);
        let _ = gov_keyed.check_key(&k);
    }
    let layer = |headers: bool, clock: Clock| {
        RateLimitLayer::new(Limit::global("global", huge()))
            .draft_headers(headers)
            .clock(clock)
            .layer(inner())
    };
    let plain = layer(false, Clock::tokio());
    let with_headers = layer(true, Clock::tokio());
    let tsc = layer(false, Clock::tsc());
    let tg = tower_governor_layer();
    let bare = inner();
    let f = Fixtures {
        direct,
        direct_tsc,
        gov,
        keyed,
        keyed_tsc,
        gov_keyed,
        plain,
        with_headers,
        tsc,
        tg,
        bare,
    };
    callgrind_case(&rt, &f, case, n);
}

struct Fixtures<G, K, T> {
    direct: DirectLimiter,
    direct_tsc: DirectLimiter,
    gov: G,
    keyed: Limiter,
    keyed_tsc: Limiter,
    gov_keyed: K,
    plain: stormwall::ratelimit::RateLimit<Inner>,
    with_headers: stormwall::ratelimit::RateLimit<Inner>,
    tsc: stormwall::ratelimit::RateLimit<Inner>,
    tg: T,
    bare: Inner,
}

type GovDirect = governor::DefaultDirectRateLimiter;
type GovKeyed = governor::DefaultKeyedRateLimiter<u64>;

/// Picks the case, then runs its measured loop: `valgrind --tool=callgrind
/// --collect-atstart=no --toggle-collect='*callgrind_loop*'` counts only that loop (no setup,
/// no clock calibration). Each case is its own copy of [`callgrind_loop`] (a generic function
/// instantiated per closure), so a change in one case's code does not move another's, and
/// the loop does not compare the case name per iteration. Each layer call is one `block_on`
/// (the same for every layer case, the bare service's included: subtract `layer-bare` for
/// the overhead).
fn callgrind_case<T>(
    rt: &tokio::runtime::Runtime,
    f: &Fixtures<GovDirect, GovKeyed, T>,
    case: &str,
    n: u64,
) where
    T: circuit_tower::Service<Request<Body>> + Clone,
{
    let mut i = 0u64;
    let mut next = move || {
        i = (i + 7919) % 10_000;
        i
    };
    match case {
        "none" => callgrind_loop(n, || {}),
        "direct" => callgrind_loop(n, || _ = black_box(f.direct.try_acquire(1).is_ok())),
        "direct-tsc" => callgrind_loop(n, || _ = black_box(f.direct_tsc.try_acquire(1).is_ok())),
        "governor" => callgrind_loop(n, || _ = black_box(f.gov.check().is_ok())),
        "keyed" => callgrind_loop(n, || {
            _ = black_box(f.keyed.try_acquire(&next(), 1).is_ok());
        }),
        "keyed-spend" => callgrind_loop(n, || {
            _ = black_box(f.keyed.try_spend(&next(), 1).is_ok());
        }),
        "keyed-spend-tsc" => callgrind_loop(n, || {
            _ = black_box(f.keyed_tsc.try_spend(&next(), 1).is_ok());
        }),
        "keyed-tsc" => callgrind_loop(n, || {
            _ = black_box(f.keyed_tsc.try_acquire(&next(), 1).is_ok());
        }),
        "governor-keyed" => callgrind_loop(n, || {
            _ = black_box(f.gov_keyed.check_key(&next()).is_ok());
        }),
        "layer-bare" => callgrind_loop(n, || _ = black_box(rt.block_on(f.bare.oneshot(req())))),
        "layer" => callgrind_loop(n, || {
            _ = black_box(rt.block_on(f.plain.clone().oneshot(req())));
        }),
        "layer-headers" => callgrind_loop(n, || {
            _ = black_box(rt.block_on(f.with_headers.clone().oneshot(req())));
        }),
        "layer-tsc" => callgrind_loop(n, || {
            _ = black_box(rt.block_on(f.tsc.clone().oneshot(req())));
        }),
        "tower-governor" => callgrind_loop(n, || {
            _ = black_box(rt.block_on(f.tg.clone().oneshot(req())));
        }),
        "poll-bare" => {
            let mut svc = f.bare;
            callgrind_loop(n, || _ = black_box(poll_once(&mut svc)));
        }
        "poll-layer" => {
            let mut svc = f.plain.clone();
            callgrind_loop(n, || _ = black_box(poll_once(&mut svc)));
        }
        "poll-layer-tsc" => {
            let mut svc = f.tsc.clone();
            callgrind_loop(n, || _ = black_box(poll_once(&mut svc)));
        }
        "poll-tower-governor" => {
            let mut svc = f.tg.clone();
            callgrind_loop(n, || _ = black_box(poll_once(&mut svc)));
        }
        "direct-admit" => callgrind_loop(n, || _ = black_box(f.direct.try_spend(1).is_ok())),
        "direct-tsc-admit" => {
            callgrind_loop(n, || _ = black_box(f.direct_tsc.try_spend(1).is_ok()));
        }
        other => panic!("unknown case {other}"),
    }
}

/// The measured loop of one case.
#[inline(never)]
fn callgrind_loop(n: u64, mut call: impl FnMut()) {
    for _ in 0..n {
        call();
    }
}

criterion_group!(benches, decisions, layers);

fn main() {
    if let Ok(spec) = std::env::var("RATELIMIT_CALLGRIND") {
        let (case, n) = spec.split_once(':').unwrap_or((&spec, "100000"));
        callgrind(case, n.parse().expect("iterations"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
