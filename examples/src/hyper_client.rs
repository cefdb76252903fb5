//! The `hyper_client` example (see `examples/hyper_client.rs`): the standard outbound stack
//! around a hyper-util client that speaks HTTP and HTTPS (rustls, webpki roots), calling a
//! local flaky, rate-limited API or any base URL.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stormwall::body::Body;
use stormwall::core::BoxError;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use stormwall::retry::RetryLayer;
use stormwall::{Outbound, OutboundStack};
use tower::{Layer, ServiceExt};

use crate::{ApiConfig, DemoApi, Flags};

/// A hyper-util client for `http://` and `https://` URLs: rustls with the `ring` provider and
/// the Mozilla (webpki) roots, HTTP/1.1 and HTTP/2 (by ALPN).
pub fn https_client() -> Result<Client<HttpsConnector<HttpConnector>, Body>, BoxError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// The outbound stack for a partner allowing `per_second` requests per second: the standard
/// preset without the cache, up to 6 attempts within 60 s, and a waiting limiter at that rate
/// (burst one below it, so that clock skew between us and the partner never costs a 429).
pub fn stack(per_second: u64) -> Result<OutboundStack, BoxError> {
    let quota = Quota::per_second(per_second)?.with_burst(per_second.saturating_sub(1).max(1))?;
    Ok(OutboundStack::standard("partner-api")
        .without_cache()
        .retry(
            RetryLayer::new()
                .max_attempts(6)
                .deadline(Duration::from_secs(60)),
        )
        .rate_limit(
            RateLimitLayer::new(Limit::global("partner-api", quota)).wait(Duration::from_secs(60)),
        )
        .attempt_timeout(Duration::from_secs(5)))
}

/// The example's options: the shared [`Flags`] (`--url`, `--fail-rate`, `--port`, `--json`)
/// plus `--requests N` (default 30) and `--rate N` (the partner's requests per second,
/// default 10).
#[derive(Debug, Clone)]
pub struct Options {
    /// `--url`, `--fail-rate`, `--port`, `--json`.
    pub flags: Flags,
    /// How many requests to send.
    pub requests: u32,
    /// The partner's quota, requests per second.
    pub rate: u64,
}

impl Options {
    /// Parses `std::env::args()`.
    pub fn from_env() -> Self {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses arguments; unknown ones go to [`Flags::parse`].
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut requests = 30;
        let mut rate = 10;
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--requests" => requests = args.next().and_then(|n| n.parse().ok()).unwrap_or(30),
                "--rate" => {
                    rate = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(10)
                        .max(1)
                }
                _ => rest.push(arg),
            }
        }
        Self {
            flags: Flags::parse(rest),
            requests,
            rate,
        }
    }
}

/// What the callers saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// The base URL called.
    pub base_url: String,
    /// Requests sent by the callers.
    pub requests: u32,
    /// Outcomes by kind: `"200"`, `"429"`, `"503"`, `"error: rate limited"`, ...
    pub outcomes: BTreeMap<String, u32>,
    /// 2xx answers.
    pub successes: u32,
    /// 429 answers that reached a caller.
    pub throttled: u32,
    /// Requests that reached the local API (None for `--url`).
    pub upstream_calls: Option<u64>,
    /// Requests the local API failed with 503.
    pub upstream_failures: Option<u64>,
    /// Requests the local API answered 429.
    pub upstream_throttled: Option<u64>,
    /// The stack's statistics.
    pub stats: Vec<String>,
}

async fn get(client: Outbound, url: String) -> String {
    let req = match Request::get(&url).body(Full::new(Bytes::new())) {
        Ok(req) => req,
        Err(e) => return format!("error: {e}"),
    };
    match client.oneshot(req).await {
        Ok(res) => {
            let status = res.status();
            // Read the body so the connection can be reused.
            let _ = res.into_body().collect().await;
            status.as_u16().to_string()
        }
        Err(e) if e.is_rate_limited() => "error: rate limited".to_owned(),
        Err(e) if e.is_circuit_open() => "error: circuit open".to_owned(),
        Err(e) if e.is_timeout() => "error: timeout".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// Sends `--requests` concurrent GETs for distinct paths (`/items/0`, `/items/1`, ...)
/// through the stack, to `--url` or to a local API that allows 10 requests/s and fails
/// `--fail-rate` (default 0.2) of its calls with 503; prints and returns what the callers saw.
pub async fn run(options: &Options) -> Result<Summary, BoxError> {
    let flags = &options.flags;
    let (api, base) = match &flags.url {
        Some(url) => (None, url.trim_end_matches('/').to_owned()),
        None => {
            let api = DemoApi::start(
                flags.port,
                ApiConfig {
                    rate_per_sec: u32::try_from(options.rate).unwrap_or(u32::MAX),
                    burst: u32::try_from(options.rate).unwrap_or(u32::MAX),
                    fail_rate: flags.fail_rate.unwrap_or(0.2),
                    ..ApiConfig::default()
                },
            )
            .await?;
            let base = api.base_url();
            (Some(api), base)
        }
    };
    let stack = stack(options.rate)?;
    let client = stack.layer(https_client()?);
    let tasks: Vec<_> = (0..options.requests)
        .map(|i| tokio::spawn(get(client.clone(), format!("{base}/items/{i}"))))
        .collect();
    let mut summary = Summary {
        base_url: base.clone(),
        requests: options.requests,
        ..Summary::default()
    };
    for task in tasks {
        let outcome = task.await.unwrap_or_else(|e| format!("error: {e}"));
        if outcome.starts_with('2') {
            summary.successes += 1;
        }
        if outcome == "429" {
            summary.throttled += 1;
        }
        *summary.outcomes.entry(outcome).or_default() += 1;
    }
    if let Some(api) = &api {
        let snap = api.snapshot();
        summary.upstream_calls = Some(snap.calls);
        summary.upstream_failures = Some(snap.failed);
        summary.upstream_throttled = Some(snap.throttled);
    }
    summary.stats = stack.stats_lines();
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} concurrent GETs to {base}/items/N through the standard outbound stack (limit {}/s, wait)",
            options.requests, options.rate
        );
        for (outcome, n) in &summary.outcomes {
            println!("  {outcome:<22} {n}");
        }
        if let (Some(calls), Some(failed), Some(throttled)) = (
            summary.upstream_calls,
            summary.upstream_failures,
            summary.upstream_throttled,
        ) {
            println!(
                "  the API saw {calls} calls: {failed} answered 503, {throttled} answered 429"
            );
        }
        println!("stack statistics:");
        for line in &summary.stats {
            println!("  {line}");
        }
    }
    Ok(summary)
}
