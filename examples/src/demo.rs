//! The demo's scenarios (see `examples/demo.rs`): the same requests without and with the
//! standard Stormwall outbound stack against a local rate-limited API.

use std::time::Duration;

use crate::{ApiConfig, DemoApi, Flags, Outcome, ScenarioResult, measure, print_table, write_svg};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormwall::OutboundStack;
use stormwall::body::Body;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use tower::{Layer, Service, ServiceExt};

/// The examples' error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends one GET with any tower HTTP client and reads the whole body.
async fn get<S, B>(mut client: S, url: String) -> Outcome
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let req = Request::get(url).body(Full::new(Bytes::new()))?;
    let res = client
        .ready()
        .await
        .map_err(Into::into)?
        .call(req)
        .await
        .map_err(Into::into)?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(Into::into)?
        .to_bytes();
    Ok((status, body))
}

/// The standard outbound stack, with the API's quota as a waiting limiter: 10/s, with a burst
/// of 9 rather than 10 — one token of margin, so that a few microseconds of clock skew
/// between our limiter and the API's never cost a 429.
fn stormwall_stack() -> OutboundStack {
    let quota = Quota::per_second(10)
        .and_then(|q| q.with_burst(9))
        .expect("valid quota");
    OutboundStack::standard("demo-api")
        .without_cache()
        .retry(
            stormwall::retry::RetryLayer::new()
                .max_attempts(6)
                .deadline(Duration::from_secs(60)),
        )
        .rate_limit(
            RateLimitLayer::new(Limit::global("demo-api", quota)).wait(Duration::from_secs(60)),
        )
        .attempt_timeout(Duration::from_secs(5))
}

struct Scenario {
    name: &'static str,
    paths: Vec<String>,
    config: ApiConfig,
}

fn scenarios(flags: &Flags) -> Vec<Scenario> {
    let distinct = if flags.quick { 30 } else { 100 };
    let flaky_n = if flags.quick { 20 } else { 50 };
    let mut mixed = Vec::new();
    for i in 0..120u32 {
        // 120 requests over 8 users and 4 posts, as a page view fan-out would send them.
        if i % 3 == 0 {
            mixed.push(format!("/posts/{}", i % 4));
        } else {
            mixed.push(format!("/users/{}", i % 8));
        }
    }
    vec![
        Scenario {
            name: "50 concurrent requests for one user",
            paths: vec!["/users/1".to_owned(); 50],
            config: ApiConfig::default(),
        },
        Scenario {
            name: "100 concurrent requests for one resource",
            paths: vec!["/posts/1".to_owned(); 100],
            config: ApiConfig::default(),
        },
        Scenario {
            name: "100 concurrent requests for 100 distinct resources",
            paths: (0..distinct).map(|i| format!("/items/{i}")).collect(),
            config: ApiConfig::default(),
        },
        Scenario {
            name: "mixed workload: 120 requests over 8 users and 4 posts",
            paths: mixed,
            config: ApiConfig::default(),
        },
        Scenario {
            name: "flaky upstream (a share of calls fail with 503)",
            paths: (0..flaky_n).map(|i| format!("/orders/{i}")).collect(),
            config: ApiConfig {
                fail_rate: flags.fail_rate.unwrap_or(0.2),
                ..ApiConfig::default()
            },
        },
    ]
}

/// Runs every scenario without and with Stormwall, prints the tables (unless `--json`), writes
/// the SVG chart and returns the measurements (without, with) per scenario.
pub async fn run(flags: &Flags) -> Result<Vec<ScenarioResult>, BoxError> {
    let api = DemoApi::start(flags.port, ApiConfig::default()).await?;
    let base = api.base_url();
    let talk = !flags.json && !flags.quiet;
    if talk {
        println!(
            "Stormwall demo: a local API on {base} allows 10 requests/s (burst 10) and answers 429 beyond."
        );
        println!(
            "Each scenario runs twice: a plain hyper client, then the standard Stormwall outbound stack."
        );
    }

    let plain = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut all: Vec<ScenarioResult> = Vec::new();
    let mut chart: Option<(Vec<u32>, Vec<u32>)> = None;

    for scenario in scenarios(flags) {
        // Without Stormwall.
        api.reset(scenario.config);
        let without = {
            let requests = scenario
                .paths
                .iter()
                .map(|p| {
                    let client = plain.clone();
                    let url = format!("{base}{p}");
                    move || get(client, url)
                })
                .collect();
            measure(scenario.name, "without", &api, requests).await
        };
        // Let the API's bucket refill before the second run.
        api.reset(scenario.config);
        let stack = stormwall_stack();
        let svc = stack.layer(Client::builder(TokioExecutor::new()).build_http::<Body>());
        let mut with = {
            let requests = scenario
                .paths
                .iter()
                .map(|p| {
                    let client = svc.clone();
                    let url = format!("{base}{p}");
                    move || get(client, url)
                })
                .collect();
            measure(scenario.name, "with", &api, requests).await
        };
        with.layer_stats = stack.stats_lines();
        if scenario.name.contains("distinct") {
            chart = Some((
                without.upstream_per_100ms.clone(),
                with.upstream_per_100ms.clone(),
            ));
        }
        if talk {
            print_table(scenario.name, &[without.clone(), with.clone()]);
        }
        all.push(without);
        all.push(with);
    }

    let svg = flags
        .svg
        .clone()
        .unwrap_or_else(|| "stormwall-demo.svg".to_owned());
    if let Some((without, with)) = chart {
        write_svg(
            &svg,
            "Upstream requests per 100 ms: 100 distinct resources",
            &[("without Stormwall", &without), ("with Stormwall", &with)],
            1.0,
        )?;
    }
    if flags.quiet {
        // Nothing to print.
    } else if flags.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!("\nChart of upstream requests per 100 ms written to {svg}");
    }
    Ok(all)
}
