//! HTTP cache: hit path, storable miss path and uncacheable miss path (pass-through) of
//! Stormwall's `CacheLayer` against `http-cache-tower` (moka manager) and
//! `tower-resilience-cache`, same run, same in-process origin.
//!
//! `cargo bench -p stormwall-benches --features cache --bench cache`
//!
//! The origin is an in-process `service_fn` answering `200` and a 1 KiB body, with
//! `Cache-Control: max-age=3600` (hit and miss groups) or no freshness information at all
//! (`cache/pass`: a typical API response, which a cache must forward and not store), so the
//! figures are the layers' own cost. Each iteration sends one `GET` and reads the whole
//! response body. `baseline` rows are the origin alone, without any layer.
//!
//! Instruction counts (stable on a loaded machine): with `CACHE_CALLGRIND=<group>:<row>:<n>`
//! (group `hit`, `miss` or `pass`, or `hit-shared` for a shared cache's hit, stormwall
//! only; row `baseline`, `stormwall`, `http-cache-tower` or
//! `tower-resilience-cache`) the binary runs `n` iterations of one row instead of criterion,
//! e.g. under `valgrind --tool=callgrind`; the difference between two `n` divided by the
//! difference of `n` is the cost per iteration, setup excluded. With `CACHE_AB=<rounds>:<n>`
//! it times the hit rows interleaved (see `interleaved`) instead.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use cache_bytes::Bytes;
use cache_http_body_util::{BodyExt, Full};
use circuit_http::{Request, Response};
use circuit_tower::{Layer, Service, ServiceExt, service_fn};
use criterion::{Criterion, criterion_group};

const BODY: &[u8] = &[b'x'; 1024];

async fn origin(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("cache-control", "max-age=3600")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap())
}

/// A typical API response: no `Cache-Control`, `Expires`, `Last-Modified` or `ETag`.
async fn api_origin(_req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
        .unwrap())
}

/// What an origin is: `origin` or `api_origin` (generic, so no row pays for a box).
trait Origin: FnMut(Request<Full<Bytes>>) -> Self::Fut + Clone + Copy + Send + Sync + 'static {
    type Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static;
}

impl<F, Fut> Origin for F
where
    F: FnMut(Request<Full<Bytes>>) -> Fut + Clone + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    type Fut = Fut;
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

fn baseline(
    o: impl Origin,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
{
    service_fn(o)
}

fn stormwall(
    o: impl Origin,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<stormwall::core::response::ResponseBody<Full<Bytes>>>,
    Error = Infallible,
> + Clone {
    stormwall::cache::CacheLayer::private()
        .max_bytes(256 * 1024 * 1024)
        .layer(service_fn(o))
}

fn http_cache_tower(
    o: impl Origin,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<http_cache_tower::HttpCacheBody<Full<Bytes>>>,
    Error = http_cache_tower::HttpCacheError,
> + Clone {
    http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default()).layer(service_fn(o))
}

fn tower_resilience(
    o: impl Origin,
) -> impl Service<
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
        .layer(service_fn(o))
}

const HIT_URL: &str = "http://api.example/users/1?fields=all";

fn hit(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("cache/hit");
    macro_rules! bench {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            assert_eq!(rt.block_on(fetch(&svc, HIT_URL)), BODY.len());
            g.bench_function($name, |b| {
                b.to_async(&rt)
                    .iter(|| async { black_box(fetch(&svc, HIT_URL).await) })
            });
        }};
    }
    bench!("baseline", baseline(origin));
    bench!("stormwall", stormwall(origin));
    bench!("http-cache-tower", http_cache_tower(origin));
    bench!("tower-resilience-cache", tower_resilience(origin));
    g.finish();
}

/// A new URL every iteration: `prefix` + a counter.
fn misses(c: &mut Criterion, group: &str, prefix: &'static str, o: impl Origin) {
    let rt = runtime();
    let mut g = c.benchmark_group(group);
    macro_rules! bench {
        ($name:literal, $svc:expr) => {{
            let svc = $svc;
            let n = AtomicU64::new(0);
            g.bench_function($name, |b| {
                b.to_async(&rt).iter(|| async {
                    let i = n.fetch_add(1, Ordering::Relaxed);
                    let url = format!("{prefix}{i}");
                    black_box(fetch(&svc, &url).await)
                })
            });
        }};
    }
    bench!("baseline", baseline(o));
    bench!("stormwall", stormwall(o));
    bench!("http-cache-tower", http_cache_tower(o));
    bench!("tower-resilience-cache", tower_resilience(o));
    g.finish();
}

fn miss(c: &mut Criterion) {
    misses(c, "cache/miss", "http://api.example/items/", origin);
}

fn pass(c: &mut Criterion) {
    misses(c, "cache/pass", "http://api.example/orders/", api_origin);
}

criterion_group!(benches, hit, miss, pass);

/// `n` iterations of `svc` (after one warm-up request, which stores the hit's entry).
fn run_n<S, B>(svc: S, prefix: Option<&str>, n: u64) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: BodyExt,
    B::Error: std::fmt::Debug,
{
    runtime().block_on(async {
        let mut total = fetch(&svc, HIT_URL).await;
        for i in 0..n {
            total += match prefix {
                None => fetch(&svc, HIT_URL).await,
                Some(p) => fetch(&svc, &format!("{p}{i}")).await,
            };
        }
        black_box(total)
    })
}

fn run_row(row: &str, o: impl Origin, prefix: Option<&str>, n: u64) -> usize {
    match row {
        "baseline" => run_n(baseline(o), prefix, n),
        "stormwall" => run_n(stormwall(o), prefix, n),
        "http-cache-tower" => run_n(http_cache_tower(o), prefix, n),
        "tower-resilience-cache" => run_n(tower_resilience(o), prefix, n),
        other => panic!("unknown row {other}"),
    }
}

/// `CACHE_CALLGRIND=<group>:<row>:<n>`: `n` iterations of one row, nothing else.
fn callgrind(spec: &str) {
    let mut parts = spec.split(':');
    let (Some(group), Some(row), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("CACHE_CALLGRIND=<hit|miss|pass>:<row>:<n>");
    };
    let n: u64 = n.parse().expect("iterations");
    let total = match group {
        "hit" => run_row(row, origin, None, n),
        // The hit of a shared cache (inbound; keyed on the forwarding headers too).
        "hit-shared" => {
            assert_eq!(row, "stormwall", "hit-shared has only the stormwall row");
            let svc = stormwall::cache::CacheLayer::shared()
                .max_bytes(256 * 1024 * 1024)
                .layer(service_fn(origin));
            run_n(svc, None, n)
        }
        "miss" => run_row(row, origin, Some("http://api.example/items/"), n),
        "pass" => run_row(row, api_origin, Some("http://api.example/orders/"), n),
        other => panic!("unknown group {other}"),
    };
    assert_eq!(total, (n as usize + 1) * BODY.len());
}

/// `CACHE_AB=<rounds>:<n>`: the hit rows interleaved, `n` iterations of each in turn for
/// `rounds` rounds, and the median time per iteration of each row (load drift on a shared
/// machine affects every row alike).
fn interleaved(spec: &str) {
    let (rounds, n) = spec.split_once(':').expect("CACHE_AB=<rounds>:<n>");
    let (rounds, n): (usize, u32) = (rounds.parse().expect("rounds"), n.parse().expect("n"));
    let rt = runtime();
    let base = baseline(origin);
    let ours = stormwall(origin);
    let trc = tower_resilience(origin);
    let mut times: [Vec<f64>; 3] = Default::default();
    rt.block_on(async {
        fetch(&ours, HIT_URL).await;
        fetch(&trc, HIT_URL).await;
        for _ in 0..rounds {
            macro_rules! time {
                ($i:expr, $svc:expr) => {{
                    let start = std::time::Instant::now();
                    for _ in 0..n {
                        black_box(fetch(&$svc, HIT_URL).await);
                    }
                    times[$i].push(start.elapsed().as_secs_f64() * 1e9 / f64::from(n));
                }};
            }
            time!(0, base);
            time!(1, ours);
            time!(2, trc);
        }
    });
    for (name, mut t) in ["baseline", "stormwall", "tower-resilience-cache"]
        .into_iter()
        .zip(times)
    {
        t.sort_by(f64::total_cmp);
        println!(
            "cache/hit/{name}: median {:.0} ns per request ({rounds} rounds of {n})",
            t[t.len() / 2]
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var("CACHE_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    if let Ok(spec) = std::env::var("CACHE_AB") {
        interleaved(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
