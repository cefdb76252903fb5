//! Runs N requests through one row of the whole-stack bench (`benches/benches/stack.rs`), for
//! instruction counts under callgrind (stable whatever the machine's load):
//!
//! ```sh
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/stack-ir <row> <n>
//! ```
//!
//! rows: `bare`, `standard`, `no-cache`, `retry-breaker-timeout`. Ir per request =
//! (Ir(n2) − Ir(n1)) / (n2 − n1), so start-up and warm-up cancel out.

use std::convert::Infallible;
use std::time::Duration;

use cache_bytes::Bytes;
use cache_http_body_util::{BodyExt, Full};
use circuit_http::{Request, Response};
use circuit_tower::{Layer, ServiceExt, service_fn};
use stormwall::OutboundStack;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};

fn main() {
    let mut args = std::env::args().skip(1);
    let row = args.next().unwrap_or_else(|| "standard".to_owned());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let bare = service_fn(|_req: Request<stormwall::body::Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let quota = Quota::per_second(1_000_000_000).expect("quota");
    let stack = match row.as_str() {
        "bare" => None,
        "standard" => Some(OutboundStack::standard("bench").rate_limit(
            RateLimitLayer::new(Limit::global("bench", quota)).wait(Duration::from_secs(1)),
        )),
        "no-cache" => Some(OutboundStack::standard("bench").without_cache()),
        "retry-breaker-timeout" => Some(
            OutboundStack::standard("bench")
                .without_cache()
                .without_coalesce(),
        ),
        other => panic!("unknown row {other}"),
    };
    let svc = stack.map(|s| s.layer(bare));
    rt.block_on(async {
        let mut total = 0usize;
        for _ in 0..n {
            let body = match &svc {
                Some(svc) => {
                    let req = Request::get("http://api.example/users/1")
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let res = svc.clone().oneshot(req).await.expect("ok");
                    res.into_body().collect().await.expect("body").to_bytes()
                }
                None => {
                    let req = Request::get("http://api.example/users/1")
                        .body(stormwall::body::boxed(Full::new(Bytes::new())))
                        .expect("request");
                    let res = bare.oneshot(req).await.expect("ok");
                    res.into_body().collect().await.expect("body").to_bytes()
                }
            };
            total += body.len();
        }
        assert_eq!(total as u64, 2 * n);
    });
}
