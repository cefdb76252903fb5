//! Inbound: a shared cache in front of an axum router (`Infallible` preserved).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::get as route_get;
use http::Request;
use http_body_util::BodyExt;
use stormwall_cache::CacheLayer;
use tower::{Service, ServiceExt};

async fn call<S>(svc: &S, host: &str, path: &str) -> (String, String)
where
    S: Service<Request<Body>, Error = Infallible> + Clone,
    S::Response: axum::response::IntoResponse,
{
    let req = Request::get(path)
        .header("host", host)
        .body(Body::empty())
        .unwrap();
    let res = axum::response::IntoResponse::into_response(svc.clone().oneshot(req).await.unwrap());
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

// The key includes the authority (Host) and the query; the error type stays Infallible.
#[tokio::test]
async fn axum_router_host_and_query_keys() {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let layer = CacheLayer::shared().name("edge");
    let app: Router = Router::new()
        .route(
            "/page",
            route_get(move |headers: http::HeaderMap| {
                let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let host = headers["host"].to_str().unwrap().to_owned();
                    ([("cache-control", "max-age=60")], format!("{host} #{n}"))
                }
            }),
        )
        .layer(layer.clone());
    let (a1, s1) = call(&app, "a.example", "/page").await;
    let (a2, s2) = call(&app, "a.example", "/page").await;
    let (b1, _) = call(&app, "b.example", "/page").await;
    let (q1, _) = call(&app, "a.example", "/page?x=1").await;
    assert_eq!(a1, a2);
    assert!(s1.starts_with("edge; fwd=uri-miss; fwd-status=200"), "{s1}");
    assert!(s2.starts_with("edge; hit"), "{s2}");
    assert_eq!(b1, "b.example #2", "different Host, different entry");
    assert_eq!(q1, "a.example #3", "different query, different entry");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(layer.handle().purge("http://a.example/page"));
    let (a3, _) = call(&app, "a.example", "/page").await;
    assert_eq!(a3, "a.example #4");
}
