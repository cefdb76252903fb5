//! The listener: accept loop, per-request logging and metrics, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use futures_util::FutureExt;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics_exporter_prometheus::PrometheusHandle;
use stormwall::body::{Body, boxed};
use stormwall::core::key::PeerAddr;
use stormwall::core::time::Instant;
use stormwall::ratelimit::RateLimited;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::Loaded;
use crate::forward::{self, ProxyService, Target};

/// Runs the proxy until SIGTERM/SIGINT, then drains in-flight requests.
pub(crate) async fn run(loaded: Loaded, metrics: PrometheusHandle) -> Result<(), String> {
    let config = loaded.config;
    let target = Target::new(&config.upstream);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let admin = match config.admin {
        Some(addr) => {
            let admin = crate::admin::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on admin address {addr}: {e}"))?;
            Some(tokio::spawn(crate::admin::serve(
                admin,
                metrics,
                target.socket_authority(),
            )))
        }
        None => None,
    };
    let service = forward::build(target, loaded.inbound.as_ref(), loaded.outbound.as_ref());
    tracing::info!(
        listen = %config.listen,
        upstream = %config.upstream,
        admin = ?config.admin,
        "stormwall-proxy started"
    );

    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Transient (e.g. out of file descriptors): log and keep accepting.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let hyper_svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    handle(service.clone(), peer, req)
                });
                let conn = builder.serve_connection(TokioIo::new(stream), hyper_svc);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection error");
                    }
                });
            }
            signal = &mut shutdown => {
                tracing::info!(signal, "shutting down: no new connections, draining in-flight requests");
                break;
            }
        }
    }
    drop(listener);
    let timeout = config.shutdown_timeout();
    let drained = tokio::time::timeout(timeout, graceful.shutdown()).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    match drained {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!(
            ?timeout,
            "shutdown timeout elapsed; closing remaining connections"
        ),
    }
    Ok(())
}

fn handle(
    service: ProxyService,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(PeerAddr(peer));
    // Combinators rather than an `async` block: the compiler cannot prove an `async` block
    // holding the boxed service's future `Send`.
    service.oneshot(req.map(boxed)).map(move |result| {
        let Ok(res) = result;
        let elapsed = start.elapsed();
        let status = res.status();
        let cache = res
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let limiter = if res.extensions().get::<RateLimited>().is_some() {
            "rejected"
        } else {
            "-"
        };
        tracing::info!(
            %method,
            path,
            status = status.as_u16(),
            cache,
            limiter,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            %peer,
            "request"
        );
        metrics::counter!(
            "stormwall_proxy_requests_total",
            "method" => method.to_string(),
            "status" => status.as_str().to_owned()
        )
        .increment(1);
        metrics::histogram!("stormwall_proxy_request_duration_seconds")
            .record(elapsed.as_secs_f64());
        Ok(res)
    })
}

/// Resolves with the signal's name on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                std::future::pending().await
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
