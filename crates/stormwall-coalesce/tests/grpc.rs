//! A tonic unary call through a `Channel` wrapped in the layer, coalesced across 20 callers.

use std::time::Duration;

use futures_util::future::join_all;
use http::{Method, Request};
use stormwall_coalesce::CoalesceLayer;
use stormwall_core::key::KeyError;
use stormwall_tests::grpc::{EchoBehavior, EchoClient, EchoRequest, EchoServer};
use tower::Layer;

/// gRPC calls are POSTs and their message is in the body, which no key reads: key on the
/// method path plus a metadata entry the caller derives from the message.
fn grpc_layer() -> CoalesceLayer<
    impl stormwall_core::key::KeyExtractor<Request<tonic::body::Body>, Key = (String, String)> + Clone,
> {
    CoalesceLayer::new()
        .methods([Method::POST])
        .key_fn(|req: &Request<tonic::body::Body>| {
            let key = req
                .headers()
                .get("x-coalesce-key")
                .and_then(|v| v.to_str().ok())
                .ok_or(KeyError::custom("no x-coalesce-key"))?;
            Ok((req.uri().path().to_owned(), key.to_owned()))
        })
}

fn request(message: &str) -> tonic::Request<EchoRequest> {
    let mut req = tonic::Request::new(EchoRequest {
        message: message.to_owned(),
    });
    req.metadata_mut()
        .insert("x-coalesce-key", message.parse().unwrap());
    req
}

#[tokio::test(flavor = "current_thread")]
async fn twenty_unary_callers_one_server_call() {
    let server = EchoServer::start(EchoBehavior {
        delay: Duration::from_millis(200),
        fail_with: None,
        metadata: vec![("x-served-by", "echo-1")],
    })
    .await;
    let layer = grpc_layer();
    let stats = layer.stats();
    let svc = layer.layer(server.channel().await);
    // Every call is attached during the first poll of `join_all`, before the server can answer.
    let calls = (0..20).map(|_| {
        let mut client = EchoClient::new(svc.clone());
        async move { client.unary(request("hello")).await }
    });
    let results = join_all(calls).await;
    assert_eq!(server.calls(), 1, "one server call for 20 callers");
    for r in results {
        let res = r.expect("every caller gets the reply (grpc-status trailer shared)");
        assert_eq!(res.metadata().get("x-served-by").unwrap(), "echo-1");
        let reply = res.into_inner();
        assert_eq!(reply.message, "hello");
        assert_eq!(reply.call, 1);
    }
    let s = stats.snapshot();
    assert_eq!((s.misses, s.hits), (1, 19));
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_error_status_and_metadata_reach_every_caller() {
    let server = EchoServer::start(EchoBehavior {
        delay: Duration::from_millis(200),
        fail_with: Some(tonic::Code::NotFound),
        metadata: vec![("x-reason", "gone")],
    })
    .await;
    let svc = grpc_layer().layer(server.channel().await);
    let calls = (0..20).map(|_| {
        let mut client = EchoClient::new(svc.clone());
        async move { client.unary(request("missing")).await }
    });
    let results = join_all(calls).await;
    assert_eq!(server.calls(), 1);
    for r in results {
        let status = r.expect_err("the status is shared");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "failing call 1");
        assert_eq!(status.metadata().get("x-reason").unwrap(), "gone");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn different_messages_are_not_merged() {
    let server = EchoServer::start(EchoBehavior {
        delay: Duration::from_millis(50),
        ..EchoBehavior::default()
    })
    .await;
    let svc = grpc_layer().layer(server.channel().await);
    let calls = ["a", "b", "a", "b"].map(|m| {
        let mut client = EchoClient::new(svc.clone());
        async move { client.unary(request(m)).await.unwrap().into_inner().message }
    });
    let messages = join_all(calls).await;
    assert_eq!(messages, ["a", "b", "a", "b"]);
    assert_eq!(server.calls(), 2);
}
