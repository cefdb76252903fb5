//! The `hyper_client` example against a local API that allows 10 requests/s and fails 20% of
//! its calls with 503.

use stormwall_examples::Flags;
use stormwall_examples::hyper_client::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_succeeds_and_no_429_reaches_a_caller() {
    let options = Options {
        flags: Flags {
            fail_rate: Some(0.2),
            ..Flags::default()
        },
        requests: 20,
        rate: 10,
    };
    let summary = run(&options).await.unwrap();
    assert_eq!(summary.requests, 20);
    assert_eq!(summary.successes, 20, "{summary:?}");
    assert_eq!(summary.throttled, 0, "{summary:?}");
    assert_eq!(summary.outcomes.get("200"), Some(&20), "{summary:?}");
    // The API did fail some calls: the retries healed them.
    let failed = summary.upstream_failures.unwrap();
    assert!(failed > 0, "{summary:?}");
    assert_eq!(
        summary.upstream_calls.unwrap(),
        20 + failed + summary.upstream_throttled.unwrap()
    );
    assert!(
        summary.stats.iter().any(|l| l.contains("retry")),
        "{summary:?}"
    );
}

#[test]
fn options_parse() {
    let o = Options::parse(
        [
            "--requests",
            "5",
            "--rate",
            "3",
            "--url",
            "https://x.invalid",
        ]
        .map(String::from),
    );
    assert_eq!((o.requests, o.rate), (5, 3));
    assert_eq!(o.flags.url.as_deref(), Some("https://x.invalid"));
}
