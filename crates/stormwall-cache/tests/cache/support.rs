//! Shared helpers: a cached client against a loopback origin.

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use stormwall_cache::{Cache, CacheLayer};
use stormwall_tests::http::{TestClient, client};
use tower::{Layer, ServiceExt};

pub(crate) type Client = Cache<TestClient>;

pub(crate) fn cached(layer: &CacheLayer) -> Client {
    layer.layer(client())
}

pub(crate) struct Got {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Got {
    pub(crate) fn cache_status(&self) -> String {
        self.headers
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    }
    pub(crate) fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub(crate) async fn send(svc: &Client, req: Request<Full<Bytes>>) -> Got {
    let res = svc.clone().oneshot(req).await.expect("request");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub(crate) async fn get(svc: &Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(svc, req.body(Full::new(Bytes::new())).unwrap()).await
}

/// A response with these headers and body.
pub(crate) fn respond(
    status: u16,
    headers: &[(&str, String)],
    body: &str,
) -> Response<Full<Bytes>> {
    let mut res = Response::builder().status(status);
    for (k, v) in headers {
        res = res.header(*k, v.as_str());
    }
    res.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

pub(crate) fn http_date(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

pub(crate) fn now_date() -> String {
    http_date(SystemTime::now())
}
