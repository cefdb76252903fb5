//! gRPC: a tonic client behind the limiter sees `RESOURCE_EXHAUSTED` with a pushback hint, and
//! the server is not called.

use std::time::Duration;

use stormwall_ratelimit::{Limit, Quota, RateLimitLayer};
use stormwall_tests::grpc::{EchoBehavior, EchoClient, EchoRequest, EchoServer};
use tower::ServiceBuilder;

#[tokio::test]
async fn tonic_client_gets_resource_exhausted_over_quota() {
    let server = EchoServer::start(EchoBehavior::default()).await;
    let channel = server.channel().await;
    let limited = ServiceBuilder::new()
        .layer(RateLimitLayer::new(Limit::global(
            "echo",
            Quota::new(2, Duration::from_secs(3600)).unwrap(),
        )))
        .service(channel);
    let mut client = EchoClient::new(limited);
    for i in 0..2 {
        let reply = client
            .unary(EchoRequest {
                message: format!("hi {i}"),
            })
            .await
            .unwrap();
        assert_eq!(reply.get_ref().message, format!("hi {i}"));
    }
    let status = client
        .unary(EchoRequest {
            message: "one too many".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    // The next unit of a 2-per-hour quota comes 30 minutes after the first call: the hint is
    // 30 minutes less the (real) time the three calls took, never more.
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1_800_000 - 60_000..=1_800_000).contains(&pushback),
        "pushback {pushback} ms"
    );
    assert_eq!(
        server.calls(),
        2,
        "the rejected call never reached the server"
    );
}
