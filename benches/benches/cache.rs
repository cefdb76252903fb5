//! HTTP cache: hit path and miss path of Stormwall's `CacheLayer` against `http-cache-tower`
//! (moka manager) and `tower-resilience-cache`, same run, same in-process origin.
//!
//! `cargo bench -p stormwall-benches --features cache --bench cache`
//!
//! The origin is an in-process `service_fn` answering `200`, `Cache-Control: max-age=3600` and
//! a 1 KiB body, so the figures are the layers' own cost. Each iteration sends one `GET` and
//! reads the whole response body.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_bytes::Bytes;
use cache_http_body_util::{BodyExt, Full};
use circuit_http::{Request, Response};
use circuit_tower::{Layer, Service, ServiceExt, service_fn};
use criterion::{Criterion, criterion_group, criterion_main};

const BODY: &[u8] = &[b'x'; 1024];

async fn origin(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("cache-control", "max-age=3600")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// One GET through `svc`, body read to the end.
async fn fetch<S, B>(svc: &S, url: &str) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: BodyExt,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(request(url)).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes().len()
}

fn stormwall() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<stormwall::core::response::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
> + Clone {
    stormwall::cache::CacheLayer::private()
        .max_bytes(256 * 1024 * 1024)
        .layer(service_fn(origin))
}

fn http_cache_tower() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<http_cache_tower::HttpCacheBody<Full<Bytes>>>,
    Error = http_cache_tower::HttpCacheError,
> + Clone {
    http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default())
        .layer(service_fn(origin))
}

fn tower_resilience() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = tower_resilience_cache::CacheError<Infallible>,
> + Clone {
    tower_resilience_cache::CacheLayer::builder()
        .max_size(1_000_000)
        .ttl(std::time::Duration::from_secs(3600))
        .key_extractor(|req: &Request<Full<Bytes>>| req.uri().to_string())
        .build()
        .unwrap()
        .layer(service_fn(origin))
}

fn hit(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("cache/hit");
    let url = "http://api.example/users/1?fields=all";
    macro_rules! bench {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            assert_eq!(rt.block_on(fetch(&svc, url)), BODY.len());
            g.bench_function($name, |b| {
                b.to_async(&rt)
                    .iter(|| async { black_box(fetch(&svc, url).await) })
            });
        }};
    }
    bench!("stormwall", stormwall());
    bench!("http-cache-tower", http_cache_tower());
    bench!("tower-resilience-cache", tower_resilience());
    g.finish();
}

fn miss(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("cache/miss");
    macro_rules! bench {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            let n = AtomicU64::new(0);
            g.bench_function($name, |b| {
                b.to_async(&rt).iter(|| async {
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    let url = format!("http://api.example/items/{i}");
                    black_box(fetch(&svc, &url).await)
                })
            });
        }};
    }
    bench!("stormwall", stormwall());
    bench!("http-cache-tower", http_cache_tower());
    bench!("tower-resilience-cache", tower_resilience());
    g.finish();
}

criterion_group!(benches, hit, miss);
criterion_main!(benches);
