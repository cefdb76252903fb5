//! The listener: accept loop, per-request logging and metrics, graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use futures_util::FutureExt;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use stormwall::body::{Body, boxed};
use stormwall::core::key::PeerAddr;
use stormwall::core::time::Instant;
use stormwall::ratelimit::RateLimited;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::Loaded;
use crate::forward::{self, ClientHop, ProxyService, Target};

/// How often the metrics exporter folds histogram samples into its summaries.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How long a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the proxy until SIGTERM/SIGINT, then drains in-flight requests.
pub(crate) async fn run(mut loaded: Loaded, metrics: PrometheusHandle) -> Result<(), String> {
    let version = loaded.config.upstream_version();
    let target = Target::new(&loaded.config.upstream, version);
    let client = forward::client(&target, loaded.tls.upstream.take(), version);
    let redis = loaded.config.redis.clone();
    let service = forward::build(&target, &client, &loaded, redis.as_ref())?;
    let breakers = forward::breakers(&loaded);
    let tls = loaded.tls.listen.take().map(TlsAcceptor::from);
    let config = loaded.config;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    // The exporter keeps histogram samples until they are folded into its summaries: without
    // this upkeep (or a scrape) every request's duration sample would stay in memory.
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP);
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        })
    };
    let admin = match config.admin {
        Some(addr) => {
            let admin = crate::admin::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on admin address {addr}: {e}"))?;
            let health = crate::admin::Health {
                upstream: target.socket_authority(),
                breakers,
                redis: redis.as_ref().map(|r| r.socket_address()),
            };
            Some(tokio::spawn(crate::admin::serve(
                admin,
                metrics,
                Arc::new(health),
            )))
        }
        None => None,
    };
    tracing::info!(
        listen = %config.listen,
        tls = tls.is_some(),
        upstream = %config.upstream,
        upstream_version = ?version,
        admin = ?config.admin,
        routes = config.route.len(),
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
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let hop = ClientHop::new(peer, if tls.is_some() { "https" } else { "http" });
                let hyper_svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    handle(service.clone(), peer, hop.clone(), req)
                });
                match &tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), hyper_svc);
                        let conn = graceful.watch(conn.into_owned());
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, %peer, "connection error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, bounded in time, so a
                        // slow client cannot stall the accept loop.
                        let accept = acceptor.accept(stream);
                        let builder = builder.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), hyper_svc);
                            if let Err(e) = watcher.watch(conn.into_owned()).await {
                                tracing::debug!(error = %e, %peer, "connection error");
                            }
                        });
                    }
                }
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
    upkeep.abort();
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
    hop: ClientHop,
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static {
    let start = Instant::now();
    let method = req.method().clone();
    // Only the log line needs the path: no copy when it is disabled.
    let log = tracing::enabled!(tracing::Level::INFO);
    let path = log.then(|| req.uri().path().to_owned());
    req.extensions_mut().insert(PeerAddr(peer));
    req.extensions_mut().insert(hop);
    // Combinators rather than an `async` block: the compiler cannot prove an `async` block
    // holding the boxed service's future `Send`.
    service.oneshot(req.map(boxed)).map(move |result| {
        let Ok(res) = result;
        let elapsed = start.elapsed();
        let status = res.status();
        // The fields are computed only when the line is enabled (`RUST_LOG` at info or below).
        if let Some(path) = path {
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
        }
        request_metrics().record(&method, status, elapsed);
        Ok(res)
    })
}

/// The per-request metrics, with their handles kept: looking a labelled counter up in the
/// recorder's registry on every request (building and hashing its key) costs more than the
/// increment itself.
struct RequestMetrics {
    /// `stormwall_proxy_requests_total{method,status}`, one handle per pair seen so far.
    requests: RwLock<Vec<(Method, StatusCode, Counter)>>,
    /// `stormwall_proxy_request_duration_seconds`.
    duration: Histogram,
}

impl RequestMetrics {
    fn record(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        let cached = self
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(m, s, _)| *s == status && m == method)
            .map(|(_, _, counter)| counter.clone());
        let counter = cached.unwrap_or_else(|| {
            let counter = metrics::counter!(
                "stormwall_proxy_requests_total",
                "method" => method.to_string(),
                "status" => status.as_str().to_owned()
            );
            let mut requests = self
                .requests
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            // Bounded: methods outside the standard ones and odd statuses are rare, but a
            // client could send many distinct methods; past the bound, look them up each time.
            if requests.len() < MAX_CACHED_COUNTERS {
                requests.push((method.clone(), status, counter.clone()));
            }
            counter
        });
        counter.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// How many `(method, status)` counter handles [`RequestMetrics`] keeps.
const MAX_CACHED_COUNTERS: usize = 64;

/// The process's request metrics (handles taken from the recorder installed in `main`).
fn request_metrics() -> &'static RequestMetrics {
    static METRICS: OnceLock<RequestMetrics> = OnceLock::new();
    METRICS.get_or_init(|| RequestMetrics {
        requests: RwLock::new(Vec::new()),
        duration: metrics::histogram!("stormwall_proxy_request_duration_seconds"),
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
