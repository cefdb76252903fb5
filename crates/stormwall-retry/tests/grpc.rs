//! gRPC through the retry layer against a real tonic server on loopback: which codes are
//! retried, and `grpc-retry-pushback-ms`.

use stormwall_retry::{Backoff, RetryBody, RetryBudget, RetryLayer};
use stormwall_tests::grpc::{EchoBehavior, EchoClient, EchoRequest, EchoServer};
use tonic::Code;
use tower::{Layer, ServiceBuilder};

async fn run(behavior: EchoBehavior) -> (Result<u64, Code>, u64, RetryLayer) {
    run_with(behavior, true).await
}

async fn run_with(
    behavior: EchoBehavior,
    retry_grpc: bool,
) -> (Result<u64, Code>, u64, RetryLayer) {
    let server = EchoServer::start(behavior).await;
    let channel = server.channel().await;
    // tonic's channel takes its own body type: box ours into it.
    let inner = ServiceBuilder::new()
        .map_request(|req: http::Request<RetryBody<tonic::body::Body>>| {
            req.map(tonic::body::Body::new)
        })
        .service(channel);
    let layer = RetryLayer::new()
        .backoff(Backoff::none())
        .budget(RetryBudget::unlimited())
        .max_attempts(3)
        .retry_grpc(retry_grpc);
    let mut client = EchoClient::new(layer.layer(inner));
    let res = client
        .unary(EchoRequest {
            message: "hi".into(),
        })
        .await
        .map(|r| r.into_inner().call)
        .map_err(|s| s.code());
    (res, server.calls(), layer)
}

fn failing(code: Code, metadata: Vec<(&'static str, &'static str)>) -> EchoBehavior {
    EchoBehavior {
        fail_with: Some(code),
        metadata,
        ..EchoBehavior::default()
    }
}

#[tokio::test]
async fn unavailable_is_retried() {
    let (res, calls, layer) = run(failing(Code::Unavailable, vec![])).await;
    assert_eq!(res, Err(Code::Unavailable));
    assert_eq!(calls, 3);
    assert_eq!(layer.stats().retries, 2);
}

#[tokio::test]
async fn grpc_calls_are_posts_and_need_the_opt_in() {
    let (res, calls, _) = run_with(failing(Code::Unavailable, vec![]), false).await;
    assert_eq!(res, Err(Code::Unavailable));
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn success_is_not_retried() {
    let (res, calls, _) = run(EchoBehavior::default()).await;
    assert_eq!(res, Ok(1));
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn negative_or_garbage_pushback_means_do_not_retry() {
    for value in ["-1", "later"] {
        let (res, calls, _) = run(failing(
            Code::Unavailable,
            vec![("grpc-retry-pushback-ms", value)],
        ))
        .await;
        assert_eq!(res, Err(Code::Unavailable));
        assert_eq!(calls, 1, "pushback {value}");
    }
}

#[tokio::test]
async fn resource_exhausted_only_with_pushback() {
    let (res, calls, _) = run(failing(Code::ResourceExhausted, vec![])).await;
    assert_eq!(res, Err(Code::ResourceExhausted));
    assert_eq!(calls, 1);
    let (res, calls, _) = run(failing(
        Code::ResourceExhausted,
        vec![("grpc-retry-pushback-ms", "5")],
    ))
    .await;
    assert_eq!(res, Err(Code::ResourceExhausted));
    assert_eq!(calls, 3);
}

#[tokio::test]
async fn other_codes_are_not_retried() {
    for code in [Code::Internal, Code::InvalidArgument, Code::NotFound] {
        let (res, calls, _) = run(failing(code, vec![])).await;
        assert_eq!(res, Err(code));
        assert_eq!(calls, 1, "{code:?}");
    }
}
