//! Inbound: an axum router with the layer in front of a slow handler, served on loopback.
//! axum layers the router once per connection: the flights must still be shared.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use stormwall_coalesce::CoalesceLayer;
use stormwall_tests::http::client;
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_handler_runs_once_for_concurrent_identical_requests() {
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let (r, g) = (runs.clone(), gate.clone());
    let app = Router::new()
        .route(
            "/report",
            get(move || {
                let (r, g) = (r.clone(), g.clone());
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                    let _p = g.acquire().await.unwrap();
                    format!("report #{n}")
                }
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = client();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            let req = Request::get(format!("http://{addr}/report"))
                .body(Full::<Bytes>::default())
                .unwrap();
            tokio::spawn(async move {
                let res = client.request(req).await.unwrap();
                let status = res.status();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
        })
        .collect();
    for _ in 0..10_000 {
        if stats.snapshot().waiters == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(stats.snapshot().waiters, 20, "all 20 requests are waiting");
    gate.add_permits(100);
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    for (status, body) in results {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "report #1");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    let s = stats.snapshot();
    assert_eq!((s.misses, s.hits), (1, 19));
    server.abort();
}
