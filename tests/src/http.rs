//! A loopback HTTP server around any async handler, and a client for it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The client type returned by [`client`].
pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// A running loopback server. Dropping it stops accepting connections and aborts the
/// connections it serves.
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl TestServer {
    /// Starts a server on a free `127.0.0.1` port that answers every request with `handler`.
    /// Each request increments [`TestServer::calls`] before the handler runs.
    pub async fn start<H, Fut>(handler: H) -> Self
    where
        H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicU64::new(0));
        let counter = calls.clone();
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _peer)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let counter = counter.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            calls,
            accept,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// How many requests the server has received so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A hyper-util client (HTTP/1.1 and HTTP/2 prior knowledge off) for the test servers.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A plain `200 OK` response with `body`.
pub fn ok(body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::new(Full::new(body.into()))
}
