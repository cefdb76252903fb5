//! The admin listener: `/health` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use stormwall::circuit::{Breaker, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long `/health` waits for a TCP connection to the upstream.
const HEALTH_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/health` reports on.
#[derive(Debug)]
pub(crate) struct Health {
    /// The upstream's `host:port`.
    pub(crate) upstream: String,
    /// Every chain's breaker: `(chain name, breaker)`.
    pub(crate) breakers: Vec<(String, Arc<Breaker>)>,
    /// `Some` when `[redis]` is configured: its `host:port` (`None` inside for `unix:`).
    pub(crate) redis: Option<Option<String>>,
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: PrometheusHandle, health: Arc<Health>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let health = health.clone();
                async move { Ok::<_, Infallible>(handle(&req, &metrics, &health).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Whether a TCP connection to `addr` succeeds within the health timeout.
async fn tcp_reachable(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(HEALTH_CONNECT_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Whether Redis at `addr` answers a `PING` (with `+PONG`, or with an authentication error:
/// it is up, the proxy's own connection authenticates) within the health timeout.
async fn redis_reachable(addr: &str) -> bool {
    let ping = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.ok()?;
        let reply = &buf[..n];
        Some(reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"))
    };
    matches!(
        tokio::time::timeout(HEALTH_CONNECT_TIMEOUT, ping).await,
        Ok(Some(true))
    )
}

/// A JSON string literal (names come from the config file).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `/health` body: `status` is `degraded` when a breaker is not closed or Redis is
/// unreachable, else `ok`.
async fn health_body(health: &Health) -> String {
    let reachable = tcp_reachable(&health.upstream).await;
    let mut degraded = false;
    let breakers: Vec<String> = health
        .breakers
        .iter()
        .map(|(route, breaker)| {
            let state = breaker.state();
            degraded |= matches!(state, State::Open | State::HalfOpen | State::ForcedOpen);
            format!(
                "{{\"route\":{},\"name\":{},\"state\":\"{state}\"}}",
                json_string(route),
                json_string(breaker.name())
            )
        })
        .collect();
    let redis = match &health.redis {
        None => String::new(),
        Some(addr) => {
            let up = match addr {
                Some(addr) => redis_reachable(addr).await,
                None => false,
            };
            degraded |= !up;
            format!(
                ",\"redis\":{{\"address\":{},\"reachable\":{up}}}",
                json_string(addr.as_deref().unwrap_or("unix socket"))
            )
        }
    };
    let status = if degraded { "degraded" } else { "ok" };
    format!(
        "{{\"status\":\"{status}\",\"upstream\":{{\"address\":{},\"reachable\":{reachable}}},\
         \"breakers\":[{}]{redis}}}\n",
        json_string(&health.upstream),
        breakers.join(",")
    )
}

async fn handle(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    health: &Health,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/health" => respond(
            StatusCode::OK,
            "application/json",
            health_body(health).await,
        ),
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
