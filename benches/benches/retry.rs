//! Overhead of the no-retry path (the first attempt succeeds) of a retry layer per call:
//! Stormwall against `tower::retry` with a trivial policy and `tower-resilience-retry`, same
//! run, same always-OK inner service.
//!
//! `cargo bench -p stormwall-benches --features retry --bench retry`

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::Duration;

use circuit_http::{Request, Response};
use circuit_tower::retry::{Policy, RetryLayer as TowerRetryLayer};
use circuit_tower::{Layer, Service, ServiceExt};
use criterion::{Criterion, criterion_group, criterion_main};
use stormwall::retry::{Backoff, RetryLayer};

/// An inner service that answers `200 OK` at once, for any request type.
#[derive(Clone, Copy, Debug)]
struct AlwaysOk;

impl<R> Service<R> for AlwaysOk {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: R) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

fn clone_request(req: &Request<String>) -> Request<String> {
    let mut out = Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    out
}

/// The smallest useful `tower::retry` policy: keep a copy of the request, retry errors only.
#[derive(Clone, Copy, Debug)]
struct Trivial;

impl<Res, E> Policy<Request<String>, Res, E> for Trivial {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<String>,
        result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        result.is_err().then(|| ready(()))
    }

    fn clone_request(&mut self, req: &Request<String>) -> Option<Request<String>> {
        Some(clone_request(req))
    }
}

/// `tower-resilience-retry` needs `Req: Clone`; `http::Request` is not, so wrap it.
#[derive(Debug)]
struct CloneReq(Request<String>);

impl Clone for CloneReq {
    fn clone(&self) -> Self {
        Self(clone_request(&self.0))
    }
}

fn req() -> Request<String> {
    let mut r = Request::new(String::new());
    *r.uri_mut() = circuit_http::Uri::from_static("http://upstream.test/items/42");
    r.headers_mut().insert(
        "accept",
        circuit_http::HeaderValue::from_static("application/json"),
    );
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn no_retry_path(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("retry/no_retry_path");

    g.bench_function("baseline (no retry layer)", |b| {
        let mut svc = AlwaysOk;
        b.to_async(&rt).iter(|| {
            let fut = svc.call(req());
            async move { black_box(fut.await.unwrap()) }
        })
    });

    g.bench_function("stormwall", |b| {
        let layer = RetryLayer::new();
        let svc = layer.layer(AlwaysOk);
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move {
                black_box(
                    ServiceExt::<Request<String>>::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(req())
                        .await
                        .unwrap(),
                )
            }
        })
    });

    g.bench_function("stormwall (timeout + deadline + hedging armed)", |b| {
        let layer = RetryLayer::new()
            .backoff(Backoff::none())
            .attempt_timeout(Duration::from_secs(5))
            .deadline(Duration::from_secs(10))
            .hedge_after(Duration::from_secs(1));
        let svc = layer.layer(AlwaysOk);
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move {
                black_box(
                    ServiceExt::<Request<String>>::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(req())
                        .await
                        .unwrap(),
                )
            }
        })
    });

    g.bench_function("tower::retry (trivial policy)", |b| {
        let svc = TowerRetryLayer::new(Trivial).layer(AlwaysOk);
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move {
                black_box(
                    ServiceExt::<Request<String>>::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(req())
                        .await
                        .unwrap(),
                )
            }
        })
    });

    g.bench_function("tower-resilience-retry", |b| {
        let layer =
            tower_resilience_retry::RetryLayer::<CloneReq, Response<()>, Infallible>::builder()
                .max_attempts(3)
                .exponential_backoff(Duration::from_millis(100))
                .build();
        let svc = layer.layer(AlwaysOk);
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move {
                black_box(
                    ServiceExt::<CloneReq>::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(CloneReq(req()))
                        .await
                        .unwrap(),
                )
            }
        })
    });

    g.finish();
}

criterion_group!(benches, no_retry_path);
criterion_main!(benches);
