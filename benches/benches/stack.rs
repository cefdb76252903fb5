//! The whole outbound standard stack against a bare service, no-fault path.
//!
//! `cargo bench -p stormwall-benches --features stack --bench stack`
//!
//! The inner service answers `200` at once (no I/O), so the figure is the stack's own
//! per-request overhead: cache lookup (a miss: the response carries no freshness), coalescing
//! (a flight of one), retry (one attempt, budget deposit), breaker (closed), rate limiter (an
//! admitted GCRA decision) and the attempt timeout; the stages are unboxed, the stack boxes
//! once at its edge (future and body).

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::convert::Infallible;
use std::time::Duration;

use cache_bytes::Bytes;
use cache_http_body_util::{BodyExt, Full};
use circuit_http::{Request, Response};
use circuit_tower::{Layer, ServiceExt, service_fn};
use criterion::{Criterion, criterion_group, criterion_main};
use stormwall::OutboundStack;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bare = service_fn(|_req: Request<stormwall::body::Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let mut group = c.benchmark_group("outbound_stack");
    group.bench_function("bare service", |b| {
        b.to_async(&rt).iter(|| {
            let svc = bare;
            async move {
                let req = Request::get("http://api.example/users/1")
                    .body(stormwall::body::boxed(Full::new(Bytes::new())))
                    .expect("request");
                let res = svc.oneshot(req).await.expect("ok");
                res.into_body().collect().await.expect("body")
            }
        });
    });
    let quota = Quota::per_second(1_000_000_000).expect("quota");
    let standard = OutboundStack::standard("bench").rate_limit(
        RateLimitLayer::new(Limit::global("bench", quota)).wait(Duration::from_secs(1)),
    );
    let stacks = [
        ("standard stack (all six stages)", standard),
        (
            "standard stack without cache",
            OutboundStack::standard("bench").without_cache(),
        ),
        (
            "retry + breaker + timeout only",
            OutboundStack::standard("bench")
                .without_cache()
                .without_coalesce(),
        ),
    ];
    for (name, stack) in stacks {
        let svc = stack.layer(bare);
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let svc = svc.clone();
                async move {
                    let req = Request::get("http://api.example/users/1")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let res = svc.oneshot(req).await.expect("ok");
                    res.into_body().collect().await.expect("body")
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
