//! The admin listener: `/health` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpStream};

/// How long `/health` waits for a TCP connection to the upstream.
const HEALTH_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves the admin endpoints on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: PrometheusHandle, upstream: String) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let upstream = upstream.clone();
                async move { Ok::<_, Infallible>(handle(&req, &metrics, &upstream).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    upstream: &str,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/health" => {
            let reachable = matches!(
                tokio::time::timeout(HEALTH_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await,
                Ok(Ok(_))
            );
            let body = format!(
                "{{\"status\":\"ok\",\"upstream\":{{\"address\":\"{upstream}\",\"reachable\":{reachable}}}}}\n"
            );
            respond(StatusCode::OK, "application/json", body)
        }
        "/metrics" => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// Binds the admin address.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
