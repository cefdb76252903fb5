//! A tonic `Echo` service on loopback that counts its calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// Code generated from `proto/echo.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all, unused_qualifications)]
pub mod proto {
    tonic::include_proto!("stormwall.test");
}

pub use proto::echo_client::EchoClient;
pub use proto::{EchoReply, EchoRequest};

/// What the echo server does with each call.
#[derive(Debug, Clone, Default)]
pub struct EchoBehavior {
    /// Delay before answering (lets concurrent callers pile up).
    pub delay: Duration,
    /// Answer with this status instead of a reply.
    pub fail_with: Option<tonic::Code>,
    /// Trailing/response metadata added to every reply: `(key, value)`.
    pub metadata: Vec<(&'static str, &'static str)>,
}

#[derive(Debug)]
struct EchoSvc {
    calls: Arc<AtomicU64>,
    behavior: EchoBehavior,
}

#[tonic::async_trait]
impl proto::echo_server::Echo for EchoSvc {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.behavior.delay.is_zero() {
            tokio::time::sleep(self.behavior.delay).await;
        }
        if let Some(code) = self.behavior.fail_with {
            let mut status = Status::new(code, format!("failing call {call}"));
            for (k, v) in &self.behavior.metadata {
                status
                    .metadata_mut()
                    .insert(*k, v.parse().expect("ascii metadata"));
            }
            return Err(status);
        }
        let mut response = Response::new(EchoReply {
            message: request.into_inner().message,
            call,
        });
        for (k, v) in &self.behavior.metadata {
            response
                .metadata_mut()
                .insert(*k, v.parse().expect("ascii metadata"));
        }
        Ok(response)
    }
}

/// A running echo server; stops on drop.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Starts the echo server on a free loopback port.
    pub async fn start(behavior: EchoBehavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(AtomicU64::new(0));
        let svc = EchoSvc {
            calls: calls.clone(),
            behavior,
        };
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(proto::echo_server::EchoServer::new(svc))
                .serve_with_incoming(incoming)
                .await;
        });
        Self { addr, calls, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many calls the server has handled.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// A tonic channel connected to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
