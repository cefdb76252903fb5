//! A lean HTTP/1.1 client for a plain `http://` upstream: one pool of
//! `hyper::client::conn::http1` connections to a single address.
//!
//! The hyper-util legacy client does more per request than a single-upstream proxy needs: it
//! hashes a pool key, compares authorities, clones itself twice and spawns a task per request
//! to return the connection to its pool. Here the pool is a stack of idle senders behind a
//! mutex; a connection goes back to it when its response body ends (or, without a body, when
//! the response is dropped), and a request that could not be written on a pooled connection
//! (closed meanwhile) is retried on another one.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use stormwall::body::{Body, boxed};
use stormwall::core::BoxError;
use stormwall::core::time::Instant;
use tokio::net::TcpStream;

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At most this many idle connections are kept.
const MAX_IDLE: usize = 1024;

/// The pool: cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub(crate) struct Http1Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `host:port` to connect to.
    address: String,
    /// The `Host` header: host and port (the port left out when it is 80), no user info.
    host: HeaderValue,
    /// Idle connections, the most recently used last.
    idle: Mutex<VecDeque<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Http1Pool {
    /// A pool of connections to `authority` (port 80 when it names none).
    pub(crate) fn new(authority: &Authority) -> Self {
        let port = authority.port_u16();
        let host = match port {
            Some(80) | None => authority.host().to_owned(),
            Some(port) => format!("{}:{port}", authority.host()),
        };
        let host = HeaderValue::from_str(&host).unwrap_or_else(|_| HeaderValue::from_static(""));
        let inner = Arc::new(Inner {
            address: format!("{}:{}", authority.host(), port.unwrap_or(80)),
            host,
            idle: Mutex::new(VecDeque::new()),
        });
        // Closes connections idle for longer than `IDLE_TIMEOUT` when no request comes to do
        // it; ends with the pool.
        let pool = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.evict(Instant::now());
            }
        });
        Self { inner }
    }
}

impl tower::Service<Request<Body>> for Http1Pool {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(self.inner.clone().send(req))
    }
}

impl Inner {
    /// The most recently used open idle connection.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(entry) = idle.pop_back() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete; drops the expired idle ones.
    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while idle
            .front()
            .is_some_and(|e| e.sender.is_closed() || now.duration_since(e.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back(Idle { sender, since: now });
        }
    }

    /// Drops the idle connections that are closed or idle for longer than `IDLE_TIMEOUT`.
    fn evict(&self, now: Instant) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|e| !e.sender.is_closed() && now.duration_since(e.since) <= IDLE_TIMEOUT);
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        let stream = TcpStream::connect(self.address.as_str()).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection error");
            }
        });
        Ok(sender)
    }

    async fn send(self: Arc<Self>, mut req: Request<Body>) -> Result<Response<Body>, BoxError> {
        // Origin-form request target and `Host`, as a client (not a proxy) sends them.
        let target = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(target);
        req.headers_mut()
            .entry(header::HOST)
            .or_insert_with(|| self.host.clone());
        // Pooled connections still sending an earlier request's body (the upstream answered
        // before reading all of it): set aside, back in the pool afterwards, not waited for.
        let mut busy = Vec::new();
        let result = loop {
            let Some(mut sender) = self.checkout() else {
                break self.send_fresh(req).await;
            };
            if !sender.is_ready() {
                // Most often the connection's task has not yet run since the last response
                // ended: let it run once.
                tokio::task::yield_now().await;
                if sender.is_closed() {
                    continue;
                }
                if !sender.is_ready() {
                    busy.push(sender);
                    continue;
                }
            }
            match sender.try_send_request(req).await {
                Ok(res) => break Ok(self.clone().response(res, sender)),
                Err(mut e) => match e.take_message() {
                    // Not written (the connection closed meanwhile): try another one.
                    Some(unsent) => req = unsent,
                    None => break Err(Box::new(e.into_error()) as BoxError),
                },
            }
        };
        for sender in busy {
            self.put(sender);
        }
        result
    }

    async fn send_fresh(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let mut sender = self.connect().await?;
        let res = sender.send_request(req).await?;
        Ok(self.clone().response(res, sender))
    }

    fn response(
        self: Arc<Self>,
        res: Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> Response<Body> {
        res.map(|body| {
            boxed(PooledBody {
                body,
                release: Some((sender, self)),
            })
        })
    }
}

/// A response body that returns its connection to the pool once it has ended.
struct PooledBody {
    body: Incoming,
    release: Option<(SendRequest<Body>, Arc<Inner>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.release.take() {
            pool.put(sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // The connection is unusable: drop it.
            Poll::Ready(Some(Err(_))) => this.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body that was never polled but has nothing left (no body, `Content-Length: 0`):
        // the exchange is complete. Otherwise dropping the sender closes the connection.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    use super::*;

    fn idle(pool: &Http1Pool) -> usize {
        pool.inner.idle.lock().unwrap().len()
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_reused_then_closed_after_the_idle_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        let pool = Http1Pool::new(&addr.to_string().parse().unwrap());
        for _ in 0..3 {
            let req = Request::get(format!("http://{addr}/x"))
                .body(boxed(Full::new(Bytes::new())))
                .unwrap();
            let res = pool.clone().oneshot(req).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            assert_eq!(idle(&pool), 1, "back in the pool once the body has ended");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        // No more requests: the reaper closes the connection after the idle timeout.
        tokio::time::advance(IDLE_TIMEOUT + IDLE_TIMEOUT / 2).await;
        for _ in 0..100 {
            if idle(&pool) == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(idle(&pool), 0);
    }
}
