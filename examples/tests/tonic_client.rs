//! The `tonic_client` example against a local gRPC server: coalescing, retries of
//! `UNAVAILABLE`, and the breaker opening after a streak of `UNAVAILABLE`.

use stormwall_examples::tonic_client::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesces_retries_and_opens_the_breaker() {
    let s = run(&Options::default()).await.unwrap();

    // 20 concurrent identical calls, one server call.
    assert_eq!((s.coalesce_callers, s.coalesce_ok), (20, 20), "{s:?}");
    assert_eq!(s.coalesce_server_calls, 1, "{s:?}");

    // Every UNAVAILABLE was retried: all calls succeed, one retry per failure.
    assert_eq!(s.retry_ok, s.retry_calls, "{s:?}");
    assert!(
        s.retry_server_failures > 0,
        "the seed makes some calls fail: {s:?}"
    );
    assert_eq!(s.retries, s.retry_server_failures, "{s:?}");
    assert_eq!(
        s.retry_server_calls,
        u64::from(s.retry_calls) + s.retry_server_failures,
        "{s:?}"
    );

    // The breaker opened after 5 consecutive failures; the rest never reached the server.
    assert_eq!(s.breaker_server_calls, 5, "{s:?}");
    assert_eq!(s.breaker_state, "Open", "{s:?}");
    // Call 1 used its 3 attempts; call 2 failed twice and met the open breaker; calls 3.. too.
    assert_eq!(s.breaker_rejected_calls, s.breaker_calls - 1, "{s:?}");
}
