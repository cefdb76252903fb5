//! The core's pieces against real servers and clients on loopback: shared responses through
//! hyper and tonic (trailers included), peer keys from axum's connection info, and
//! classification of real HTTP and gRPC outcomes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stormwall_core::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, Failure, GrpcCode, ResilienceClassifier,
};
use stormwall_core::key::{ClientIp, KeyExtractor, MethodPath, PeerIp, TrustedProxies};
use stormwall_core::response::{ResponseBody, SharedResponse};
use stormwall_tests::grpc::{EchoBehavior, EchoClient, EchoRequest, EchoServer};
use tokio::net::TcpListener;

const CAP: usize = 1 << 20;

/// Serves `make()` (a response whose body has trailers) over HTTP/2 on a free port.
async fn serve_h2<F>(make: F) -> SocketAddr
where
    F: Fn() -> Response<ResponseBody<Full<Bytes>>> + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let make = make.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let res = make();
                    async move { Ok::<_, Infallible>(res) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    t.insert("x-checksum", "abc123".parse().unwrap());
    t
}

#[tokio::test]
async fn shared_response_keeps_body_and_trailers_through_hyper() {
    // Origin: a body with trailers.
    let origin = serve_h2(|| {
        Response::builder()
            .header("x-origin", "1")
            .body(ResponseBody::buffered(
                Bytes::from_static(b"payload"),
                Some(trailers()),
            ))
            .unwrap()
    })
    .await;
    let client = h2_client();
    let res = client
        .get(format!("http://{origin}/").parse().unwrap())
        .await
        .unwrap();
    let shared = SharedResponse::buffer(res, CAP).await.unwrap();
    assert_eq!(shared.body(), "payload");
    assert_eq!(shared.headers()["x-origin"], "1");
    assert_eq!(shared.trailers().unwrap()["x-checksum"], "abc123");

    // Relay: serve the shared response again, as a hyper response body, to a second client.
    let relay_copy = shared.clone();
    let relay = serve_h2(move || relay_copy.to_response::<Full<Bytes>>()).await;
    for _ in 0..3 {
        let res = client
            .get(format!("http://{relay}/").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.headers()["x-origin"], "1");
        let collected = res.into_body().collect().await.unwrap();
        let t = collected
            .trailers()
            .cloned()
            .expect("trailers survive the round trip");
        assert_eq!(t["x-checksum"], "abc123");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "payload");
    }
}

#[tokio::test]
async fn over_cap_body_arrives_whole_through_hyper() {
    let big = Bytes::from(vec![7u8; 300_000]);
    let body = big.clone();
    let origin = serve_h2(move || Response::new(ResponseBody::full(body.clone()))).await;
    let res = h2_client()
        .get(format!("http://{origin}/").parse().unwrap())
        .await
        .unwrap();
    let err = SharedResponse::buffer(res, 1000).await.unwrap_err();
    let stormwall_core::response::BufferError::TooLarge(res) = err else {
        panic!("expected TooLarge");
    };
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), big);
}

/// A tower service around a tonic channel that buffers every response into a
/// [`SharedResponse`] and hands out a copy, recording the raw response head and trailers.
#[derive(Clone)]
struct Buffering {
    channel: tonic::transport::Channel,
    seen: Arc<Mutex<Vec<SharedResponse>>>,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Request<tonic::body::Body>> for Buffering {
    type Response = Response<ResponseBody<tonic::body::Body>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = BoxFut<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.channel, cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        // The clone that was driven to readiness is the one to call (tower's idiom).
        let clone = self.channel.clone();
        let mut channel = std::mem::replace(&mut self.channel, clone);
        let seen = self.seen.clone();
        Box::pin(async move {
            let res = tower::Service::call(&mut channel, req).await?;
            let shared = SharedResponse::buffer(res, CAP)
                .await
                .map_err(|e| format!("{e}"))?;
            seen.lock().unwrap().push(shared.clone());
            Ok(shared.to_response())
        })
    }
}

#[tokio::test]
async fn shared_response_survives_a_tonic_unary_call() {
    let server = EchoServer::start(EchoBehavior {
        metadata: vec![("x-tenant", "acme")],
        ..Default::default()
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = Buffering {
        channel: server.channel().await,
        seen: seen.clone(),
    };
    let mut client = EchoClient::new(svc);
    let reply = client
        .unary(EchoRequest {
            message: "hello".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("x-tenant").unwrap(), "acme");
    assert_eq!(reply.get_ref().message, "hello");
    assert_eq!(reply.get_ref().call, 1);
    let shared = seen.lock().unwrap()[0].clone();
    assert_eq!(shared.trailers().unwrap()["grpc-status"], "0");

    // The buffered response is classified as a success at end of stream.
    let ClassifiedResponse::RequiresEos(eos) =
        ResilienceClassifier::new().classify_response(&shared.to_response::<Full<Bytes>>())
    else {
        panic!("a gRPC response with trailers needs end-of-stream classification");
    };
    assert_eq!(eos.classify_eos(shared.trailers()), Ok(()));
}

#[tokio::test]
async fn grpc_error_status_and_message_survive_and_classify() {
    let server = EchoServer::start(EchoBehavior {
        fail_with: Some(tonic::Code::Unavailable),
        metadata: vec![("grpc-retry-pushback-ms", "250")],
        ..Default::default()
    })
    .await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut client = EchoClient::new(Buffering {
        channel: server.channel().await,
        seen: seen.clone(),
    });
    let status = client
        .unary(EchoRequest {
            message: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "failing call 1");
    let shared = seen.lock().unwrap()[0].clone();
    // tonic sends an error as a trailers-only response: grpc-status in the headers.
    let res = shared.to_response::<Full<Bytes>>();
    match ResilienceClassifier::new().classify_response(&res) {
        ClassifiedResponse::Ready(Err(f)) => {
            assert!(matches!(
                f,
                Failure::Grpc {
                    code: GrpcCode::Unavailable,
                    ..
                }
            ));
            assert_eq!(f.pushback(), Some(Duration::from_millis(250)));
        }
        ClassifiedResponse::Ready(Ok(())) => panic!("UNAVAILABLE classified as success"),
        ClassifiedResponse::RequiresEos(eos) => {
            let f = eos.classify_eos(shared.trailers()).unwrap_err();
            assert!(matches!(
                f,
                Failure::Grpc {
                    code: GrpcCode::Unavailable,
                    ..
                }
            ));
        }
    }
}

#[tokio::test]
async fn http_outcomes_from_a_real_server_classify() {
    let server = stormwall_tests::http::TestServer::start(|req: Request<Incoming>| async move {
        let (status, retry_after) = match req.uri().path() {
            "/ok" => (200, None),
            "/missing" => (404, None),
            "/throttled" => (429, Some("2")),
            "/down" => (503, None),
            "/busy" => (503, Some("5")),
            _ => (500, None),
        };
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(ra) = retry_after {
            res.headers_mut().insert("retry-after", ra.parse().unwrap());
        }
        res
    })
    .await;
    let client = stormwall_tests::http::client();
    let classify =
        |res: &Response<Incoming>| match ResilienceClassifier::new().classify_response(res) {
            ClassifiedResponse::Ready(r) => r,
            ClassifiedResponse::RequiresEos(_) => panic!("plain HTTP needs no eos"),
        };
    let get = |path: &str| client.get(server.url(path).parse().unwrap());
    assert_eq!(classify(&get("/ok").await.unwrap()), Ok(()));
    assert_eq!(classify(&get("/missing").await.unwrap()), Ok(()));
    let f = classify(&get("/throttled").await.unwrap()).unwrap_err();
    assert!(f.is_back_off());
    assert_eq!(f.pushback(), Some(Duration::from_secs(2)));
    assert_eq!(
        classify(&get("/down").await.unwrap()),
        Err(Failure::Status(StatusCode::SERVICE_UNAVAILABLE))
    );
    assert_eq!(
        classify(&get("/busy").await.unwrap())
            .unwrap_err()
            .pushback(),
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        classify(&get("/boom").await.unwrap()),
        Err(Failure::Status(StatusCode::INTERNAL_SERVER_ERROR))
    );

    // A refused connection is a connect error.
    let dead = stormwall_tests::free_addr();
    let err = client
        .get(format!("http://{dead}/").parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(Failure::from_error(&err), Failure::Connect);
}

#[tokio::test]
async fn axum_connect_info_and_matched_path_feed_the_extractors() {
    use axum::Router;
    use axum::extract::Request as AxumRequest;
    use axum::routing::get;

    async fn keys(req: AxumRequest) -> String {
        let peer = PeerIp::new().extract(&req).unwrap();
        let client = ClientIp::new(TrustedProxies::None).extract(&req).unwrap();
        let trusting_loopback = ClientIp::new(TrustedProxies::cidrs(["127.0.0.0/8"]).unwrap())
            .extract(&req)
            .unwrap();
        let route = MethodPath::new().extract(&req).unwrap();
        format!("{peer}|{client}|{trusting_loopback}|{route}")
    }

    let app = Router::new().route("/users/{id}", get(keys));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let client = stormwall_tests::http::client();
    let req = Request::get(format!("http://{addr}/users/42"))
        .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    // Untrusted: the spoofed header changes nothing. Trusted loopback proxy: the first
    // untrusted hop from the right. The route key is the template, not the concrete path.
    assert_eq!(
        body, "127.0.0.1|127.0.0.1|203.0.113.7|GET /users/{id}",
        "{body:?}"
    );
}
