//! Runs the demo's scenarios (quick mode) against the local API and checks the claims the
//! README makes about them.

use stormwall_examples::{Flags, ScenarioResult, demo};

fn find<'a>(all: &'a [ScenarioResult], scenario: &str, client: &str) -> &'a ScenarioResult {
    all.iter()
        .find(|r| r.scenario.contains(scenario) && r.client == client)
        .unwrap_or_else(|| panic!("no result for {scenario} / {client}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_scenarios_hold_their_promises() {
    let dir = std::env::temp_dir().join(format!("stormwall-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("demo.svg");
    let flags = Flags {
        quick: true,
        quiet: true,
        svg: Some(svg.to_str().unwrap().to_owned()),
        ..Flags::default()
    };
    let all = demo::run(&flags).await.unwrap();
    assert_eq!(all.len(), 10);

    // 50 concurrent requests for one user: the API allows a burst of 10 and refills one per
    // 100 ms, so a plain client gets 10 through plus one per 100 ms its burst took to arrive
    // (on a loaded machine, the 50 connections can take a few hundred ms); the rest are 429s.
    let without = find(&all, "one user", "without");
    assert_eq!(without.successes + without.throttled, 50, "{without:?}");
    assert!(without.successes >= 10, "{without:?}");
    assert!(without.throttled >= 25, "{without:?}");
    let with = find(&all, "one user", "with");
    assert_eq!((with.successes, with.upstream_calls), (50, 1), "{with:?}");

    // 100 for one resource: one upstream call.
    let with = find(&all, "one resource", "with");
    assert_eq!((with.successes, with.upstream_calls), (100, 1), "{with:?}");

    // Distinct resources: paced by the limiter, every one succeeds, no 429 reaches a caller.
    let without = find(&all, "distinct", "without");
    assert!(without.throttled > 0, "{without:?}");
    let with = find(&all, "distinct", "with");
    assert_eq!(with.successes, with.requests, "{with:?}");
    assert_eq!(with.throttled, 0, "{with:?}");

    // Mixed: coalescing saves calls, all succeed.
    let with = find(&all, "mixed", "with");
    assert_eq!(with.successes, with.requests, "{with:?}");
    assert!(with.upstream_calls < with.requests / 2, "{with:?}");

    // Flaky (20% 503): ≥ 99% success with Stormwall.
    let with = find(&all, "flaky", "with");
    assert!(
        with.successes * 100 >= with.requests * 99,
        "flaky success rate too low: {with:?}"
    );

    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert_eq!(chart.matches("<polyline").count(), 2);
}
