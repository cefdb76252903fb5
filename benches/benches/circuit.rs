//! Closed-state overhead of a circuit breaker per call: Stormwall against `failsafe` and
//! `tower-resilience-circuitbreaker`, same run, same inner service.
//!
//! `cargo bench -p stormwall-benches --features circuit --bench circuit`

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::convert::Infallible;
use std::future::Future;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use circuit_http::{Request, Response};
use circuit_tower::{Layer, Service, service_fn};
use criterion::{Criterion, criterion_group};
use stormwall::circuit::{Breaker, BreakerConfig, CircuitBreakerLayer, Window};

type Inner =
    circuit_tower::util::ServiceFn<fn(Request<()>) -> Ready<Result<Response<()>, Infallible>>>;

fn inner() -> Inner {
    fn handler(_req: Request<()>) -> Ready<Result<Response<()>, Infallible>> {
        ready(Ok(Response::new(())))
    }
    service_fn(handler as fn(_) -> _)
}

/// Polls a future that is ready at once (all of them here are), without an executor: the
/// measurement is the call, not a runtime's bookkeeping.
fn poll_now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the bench futures complete at once"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A named bench row: one call per invocation.
type Row = (&'static str, Box<dyn FnMut()>);

/// One closed-state call per invocation, for each row of `circuit/closed_call`: the same
/// closures run under criterion and under the instruction-count mode (see `main`).
fn closed_rows() -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut svc = inner();
    rows.push((
        "baseline (no breaker)",
        Box::new(move || {
            black_box(poll_now(svc.call(black_box(Request::new(())))).unwrap());
        }),
    ));
    let layer = CircuitBreakerLayer::new("bench", BreakerConfig::new()).unwrap();
    let mut svc = layer.layer(inner());
    rows.push((
        "stormwall",
        Box::new(move || {
            black_box(poll_now(svc.call(black_box(Request::new(())))).unwrap());
        }),
    ));
    let config = BreakerConfig::new().window(Window::Time(60));
    let layer = CircuitBreakerLayer::new("bench-time", config).unwrap();
    let mut svc = layer.layer(inner());
    rows.push((
        "stormwall (time window)",
        Box::new(move || {
            black_box(poll_now(svc.call(black_box(Request::new(())))).unwrap());
        }),
    ));
    let cb = failsafe::Config::new().build();
    let mut svc = inner();
    rows.push((
        "failsafe",
        Box::new(move || {
            use failsafe::futures::CircuitBreaker as _;
            black_box(poll_now(cb.call(svc.call(black_box(Request::new(()))))).unwrap());
        }),
    ));
    let mut svc = tower_resilience_layer().layer(inner());
    rows.push((
        "tower-resilience-circuitbreaker",
        Box::new(move || {
            black_box(poll_now(svc.call(black_box(Request::new(())))).unwrap());
        }),
    ));
    rows
}

/// tower-resilience's breaker as the rows configure it: failure rate 50 %, window of 100.
fn tower_resilience_layer() -> tower_resilience_circuitbreaker::CircuitBreakerLayer {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap()
}

fn closed_call(c: &mut Criterion) {
    // Inside a runtime context, for peers that need one; futures are polled directly.
    let rt = runtime();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("circuit/closed_call");
    for (name, mut row) in closed_rows() {
        g.bench_function(name, |b| b.iter(&mut row));
    }
    g.finish();

    // Readiness included (tower-resilience does work in poll_ready).
    let mut g = c.benchmark_group("circuit/ready_and_call");
    g.bench_function("stormwall", |b| {
        let layer = CircuitBreakerLayer::new("bench2", BreakerConfig::new()).unwrap();
        let mut svc = layer.layer(inner());
        b.iter(|| {
            let mut cx = Context::from_waker(Waker::noop());
            assert!(svc.poll_ready(&mut cx).is_ready());
            black_box(poll_now(svc.call(Request::new(()))).unwrap())
        })
    });
    g.bench_function("tower-resilience-circuitbreaker", |b| {
        let mut svc = tower_resilience_layer().layer(inner());
        b.iter(|| {
            let mut cx = Context::from_waker(Waker::noop());
            assert!(svc.poll_ready(&mut cx).is_ready());
            black_box(poll_now(svc.call(Request::new(()))).unwrap())
        })
    });
    g.finish();
}

fn state_machine(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit/state_machine");
    g.bench_function("stormwall acquire+record", |b| {
        let breaker = Breaker::new("sm", BreakerConfig::new()).unwrap();
        let now = tokio::time::Instant::now();
        b.iter(|| {
            let permit = breaker.try_acquire(black_box(now)).unwrap();
            breaker.record(permit, black_box(false), false, now);
        })
    });
    g.bench_function("failsafe call", |b| {
        use failsafe::CircuitBreaker as _;
        let cb = failsafe::Config::new().build();
        b.iter(|| black_box(cb.call(|| Ok::<_, ()>(black_box(1)))))
    });
    g.finish();
}

fn open_reject(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("circuit/open_reject");
    g.bench_function("stormwall", |b| {
        let config = BreakerConfig::new().wait_duration(Duration::from_secs(3_600));
        let layer = CircuitBreakerLayer::new("open", config).unwrap();
        layer.breaker().force_open();
        let mut svc = layer.layer(inner());
        b.iter(|| black_box(poll_now(svc.call(Request::new(()))).is_err()))
    });
    g.finish();
}

criterion_group!(benches, closed_call, state_machine, open_reject);

/// `CIRCUIT_CALLGRIND=N` runs each `circuit/closed_call` row `N` times and exits (no criterion),
/// for an instruction count that does not depend on the machine's load, or for CPU time:
///
/// ```text
/// CIRCUIT_CALLGRIND=20000 CIRCUIT_ROW=1 valgrind --tool=callgrind \
///     --toggle-collect='*count_row*' target/release/deps/circuit-<hash> --bench
/// ```
///
/// `CIRCUIT_ROW` picks one row (its index in `closed_rows`: 0 baseline, 1 stormwall, 2 stormwall
/// time window, 3 failsafe, 4 tower-resilience). Collection is on only inside `count_row`, after
/// 1,000 warm-up calls; BENCHMARKS.md takes `(Ir(2N) - Ir(N)) / N` per call.
fn main() {
    if let Ok(n) = std::env::var("CIRCUIT_CALLGRIND") {
        let n: u64 = n.parse().expect("CIRCUIT_CALLGRIND=<calls>");
        let only: Option<usize> = std::env::var("CIRCUIT_ROW")
            .ok()
            .map(|r| r.parse().unwrap());
        let rt = runtime();
        let _guard = rt.enter();
        for (i, (name, mut row)) in closed_rows().into_iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            // Warm up (lazy initialisation, first-call paths) outside the counted region.
            for _ in 0..1_000 {
                row();
            }
            count_row(&mut row, n);
            println!("{i}\t{name}\t{n} calls");
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

#[inline(never)]
fn count_row(row: &mut dyn FnMut(), n: u64) {
    for _ in 0..n {
        row();
    }
}
