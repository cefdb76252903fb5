//! The `axum_server` example against its own loopback server: tiers, draft-10 headers, and
//! that `X-Forwarded-For` from an untrusted peer does not choose the bucket.

use stormwall::core::key::TrustedProxies;
use stormwall_examples::Flags;
use stormwall_examples::axum_server::{Options, Server, ServerConfig, Tier, burst, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_key_is_throttled_after_its_quota_premium_is_not() {
    let options = Options {
        flags: Flags::default(),
        serve: false,
        trusted_proxies: Vec::new(),
        requests: 15,
    };
    let summary = run(&options)
        .await
        .unwrap()
        .expect("a summary without --serve");
    let free = &summary.free;
    assert_eq!(Tier::Free.per_minute(), 10);
    assert_eq!(
        (free.ok, free.throttled, free.other),
        (10, 5, 0),
        "{free:?}"
    );
    let names: Vec<&str> = free
        .first_429_headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        names,
        ["ratelimit", "ratelimit-policy", "retry-after"],
        "{free:?}"
    );
    let header = |name: &str| {
        &free
            .first_429_headers
            .iter()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
    };
    let retry_after: u64 = header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{free:?}");
    assert!(header("ratelimit-policy").contains("q=10"), "{free:?}");
    assert!(header("ratelimit").contains("r=0"), "{free:?}");

    let premium = &summary.premium;
    assert_eq!((premium.ok, premium.throttled), (15, 0), "{premium:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_from_an_untrusted_peer_shares_the_peer_bucket() {
    let config = ServerConfig {
        trusted: TrustedProxies::None,
        per_ip_per_minute: 5,
    };
    let server = Server::start(0, &config).await.unwrap();
    // Every request claims a different client; none is believed.
    let r = burst(server.addr(), "premium_a", 8, |i| {
        Some(format!("203.0.113.{i}"))
    })
    .await;
    assert_eq!((r.ok, r.throttled), (5, 3), "{r:?}");
    let policy = &r
        .first_429_headers
        .iter()
        .find(|(k, _)| k == "ratelimit-policy")
        .unwrap()
        .1;
    assert!(policy.contains("per-ip"), "{policy}");

    // The same traffic through a trusted proxy (loopback): each client has its own bucket.
    let config = ServerConfig {
        trusted: TrustedProxies::cidrs(["127.0.0.0/8"]).unwrap(),
        per_ip_per_minute: 5,
    };
    let server = Server::start(0, &config).await.unwrap();
    let r = burst(server.addr(), "premium_b", 8, |i| {
        Some(format!("203.0.113.{i}"))
    })
    .await;
    assert_eq!((r.ok, r.throttled), (8, 0), "{r:?}");
    // ... while one client behind it is still limited.
    let r = burst(server.addr(), "premium_c", 8, |_| {
        Some("198.51.100.7".to_owned())
    })
    .await;
    assert_eq!((r.ok, r.throttled), (5, 3), "{r:?}");
}

#[test]
fn tiers_by_table_and_prefix() {
    assert_eq!(Tier::of_key("demo-premium"), Tier::Premium);
    assert_eq!(Tier::of_key("basic_x"), Tier::Basic);
    assert_eq!(Tier::of_key("whatever"), Tier::Free);
    let o = Options::parse(
        [
            "--serve",
            "--trusted-proxies",
            "10.0.0.0/8, 127.0.0.1",
            "--port",
            "9",
        ]
        .map(String::from),
    );
    assert!(o.serve);
    assert_eq!(o.trusted_proxies, ["10.0.0.0/8", "127.0.0.1"]);
    assert_eq!(o.flags.port, 9);
}
