//! The `redis_shared_limit` example against a private `redis-server`: two instances, one quota.

use stormwall_examples::redis_shared_limit::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_admit_more_than_the_shared_quota() {
    let options = Options {
        quota: 20,
        requests: 30,
        ..Options::default()
    };
    let s = run(&options).await.unwrap();
    assert!(s.total_admitted <= 20, "{s:?}");
    // Both instances took part, every request was answered, and Redis made the decisions.
    // (each round sends to both at once, so both are admitted until the quota is gone)
    assert!(s.a.admitted >= 9 && s.b.admitted >= 9, "{s:?}");
    assert_eq!(s.a.admitted + s.a.rejected, 30, "{s:?}");
    assert_eq!(s.b.admitted + s.b.rejected, 30, "{s:?}");
    assert_eq!(s.a.redis_decisions + s.b.redis_decisions, 60, "{s:?}");
    assert_eq!(s.a.fallbacks + s.b.fallbacks, 0, "{s:?}");
    // Redis answered every decision, so the quota was spent exactly.
    assert_eq!(s.total_admitted, 20, "{s:?}");
}

#[test]
fn options_parse() {
    let o = Options::parse(
        [
            "--redis-url",
            "redis://x/",
            "--quota",
            "5",
            "--requests",
            "7",
        ]
        .map(String::from),
    );
    assert_eq!(o.redis_url.as_deref(), Some("redis://x/"));
    assert_eq!((o.quota, o.requests), (5, 7));
}
