//! The `axum_server` example (see `examples/axum_server.rs`): an axum server behind the
//! inbound stack with a per-client-IP limit (forwarding headers believed only from trusted
//! proxies) and per-API-key tiered limits (free / basic / premium, per minute and per hour),
//! answering `429` with `Retry-After` and the draft-10 `RateLimit` / `RateLimit-Policy` fields.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormwall::InboundStack;
use stormwall::core::BoxError;
use stormwall::core::key::{ClientIp, HeaderKey, TrustedProxies};
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Flags;

/// The header carrying the API key.
pub const API_KEY: &str = "x-api-key";

/// A plan: how many requests an API key may send per minute and per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Tier {
    /// 10 per minute, 100 per hour (also keys that are missing or unknown).
    Free,
    /// 60 per minute, 1,000 per hour.
    Basic,
    /// 600 per minute, 10,000 per hour.
    Premium,
}

/// Known API keys (a stand-in for a database lookup); other keys are tiered by prefix.
const KEY_TABLE: &[(&str, Tier)] = &[
    ("demo-free", Tier::Free),
    ("demo-basic", Tier::Basic),
    ("demo-premium", Tier::Premium),
];

impl Tier {
    /// The tier of an API key: the lookup table first, then the prefix (`premium_`,
    /// `basic_`), else free.
    pub fn of_key(key: &str) -> Self {
        if let Some((_, tier)) = KEY_TABLE.iter().find(|(k, _)| *k == key) {
            return *tier;
        }
        if key.starts_with("premium_") {
            Self::Premium
        } else if key.starts_with("basic_") {
            Self::Basic
        } else {
            Self::Free
        }
    }

    /// The tier of a request (by its `x-api-key`).
    pub fn of_headers(headers: &HeaderMap) -> Self {
        headers
            .get(API_KEY)
            .and_then(|v| v.to_str().ok())
            .map_or(Self::Free, Self::of_key)
    }

    /// Requests per minute.
    pub const fn per_minute(self) -> u64 {
        match self {
            Self::Free => 10,
            Self::Basic => 60,
            Self::Premium => 600,
        }
    }

    /// Requests per hour.
    pub const fn per_hour(self) -> u64 {
        match self {
            Self::Free => 100,
            Self::Basic => 1_000,
            Self::Premium => 10_000,
        }
    }

    /// The tier's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Basic => "basic",
            Self::Premium => "premium",
        }
    }
}

/// The server's limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Proxies whose `X-Forwarded-For` is believed (default: none).
    pub trusted: TrustedProxies,
    /// Requests per minute per client IP (default 300).
    pub per_ip_per_minute: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            trusted: TrustedProxies::None,
            per_ip_per_minute: 300,
        }
    }
}

/// The rate-limit layer: per client IP, then per API key per minute and per hour, each API
/// key's quota chosen by its tier ([`Limit::tiers`]). A request is admitted only if all three
/// admit it; a rejected one spends nothing in any.
pub fn rate_limit(config: &ServerConfig) -> Result<RateLimitLayer, BoxError> {
    let per_ip = Limit::new(
        "per-ip",
        ClientIp::new(config.trusted.clone()),
        Quota::per_minute(config.per_ip_per_minute)?,
    );
    let minute = |t: Tier| Quota::per_minute(t.per_minute());
    let hour = |t: Tier| Quota::per_hour(t.per_hour());
    let per_minute = [
        minute(Tier::Free)?,
        minute(Tier::Basic)?,
        minute(Tier::Premium)?,
    ];
    let per_hour = [hour(Tier::Free)?, hour(Tier::Basic)?, hour(Tier::Premium)?];
    let tier_index = |req: &Request<()>| Tier::of_headers(req.headers()) as usize;
    // Requests without an API key share one free-tier bucket ("unkeyed").
    let key_minute = Limit::new("key-minute", HeaderKey::new(API_KEY), per_minute[0])
        .tiers(move |req| Some(per_minute[tier_index(req)]));
    let key_hour = Limit::new("key-hour", HeaderKey::new(API_KEY), per_hour[0])
        .tiers(move |req| Some(per_hour[tier_index(req)]));
    Ok(RateLimitLayer::new(per_ip)
        .limit(key_minute)
        .limit(key_hour))
}

/// The application: `GET /api/hello` behind the inbound stack (rate limits, then a
/// concurrency limit of 256). The shared cache and the coalescer are left out: responses
/// depend on the `x-api-key`, which neither keys on by default.
pub fn app(config: &ServerConfig) -> Result<Router, BoxError> {
    let stack = InboundStack::standard()
        .rate_limit(rate_limit(config)?)
        .concurrency_limit(256)
        .without_cache()
        .without_coalesce();
    Ok(Router::new()
        .route(
            "/api/hello",
            get(|headers: HeaderMap| async move {
                format!(
                    "{{\"hello\":\"world\",\"tier\":\"{}\"}}",
                    Tier::of_headers(&headers).name()
                )
            }),
        )
        .layer(stack))
}

/// A running server; stops when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts the server on `127.0.0.1:port` (0 = a free port).
    pub async fn start(port: u16, config: &ServerConfig) -> Result<Self, BoxError> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let app = app(config)?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Ok(Self { addr, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the task ends (never, unless the listener fails).
    pub async fn wait(mut self) -> Result<(), BoxError> {
        (&mut self.task).await?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a burst of requests got.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BurstReport {
    /// The API key sent.
    pub api_key: String,
    /// `200` answers.
    pub ok: u32,
    /// `429` answers.
    pub throttled: u32,
    /// Other answers or transport errors.
    pub other: u32,
    /// The rate-limit headers of the first `429` (name, value), if any.
    pub first_429_headers: Vec<(String, String)>,
}

/// Sends `n` sequential `GET /api/hello` with `api_key` (and `X-Forwarded-For: xff` if given)
/// and counts the answers.
pub async fn burst(
    addr: SocketAddr,
    api_key: &str,
    n: u32,
    xff: impl Fn(u32) -> Option<String>,
) -> BurstReport {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut report = BurstReport {
        api_key: api_key.to_owned(),
        ..BurstReport::default()
    };
    for i in 0..n {
        let mut req = Request::get(format!("http://{addr}/api/hello")).header(API_KEY, api_key);
        if let Some(xff) = xff(i) {
            req = req.header("x-forwarded-for", xff);
        }
        let Ok(req) = req.body(Full::new(Bytes::new())) else {
            report.other += 1;
            continue;
        };
        match client.request(req).await {
            Ok(res) if res.status() == StatusCode::OK => report.ok += 1,
            Ok(res) if res.status() == StatusCode::TOO_MANY_REQUESTS => {
                report.throttled += 1;
                if report.first_429_headers.is_empty() {
                    report.first_429_headers = rate_limit_headers(res.headers());
                }
            }
            Ok(_) | Err(_) => report.other += 1,
        }
    }
    report
}

fn rate_limit_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let wanted = ["retry-after", "ratelimit", "ratelimit-policy"];
    let mut out = BTreeMap::new();
    for name in wanted {
        if let Some(v) = headers.get(name) {
            out.insert(name.to_owned(), v.to_str().unwrap_or("<binary>").to_owned());
        }
    }
    out.into_iter().collect()
}

/// The example's options: the shared [`Flags`] plus `--serve`, `--trusted-proxies CIDR,CIDR`
/// (or `TRUSTED_PROXIES`) and `--requests N` (per key, default 15).
#[derive(Debug, Clone)]
pub struct Options {
    /// `--port`, `--json`.
    pub flags: Flags,
    /// Keep serving instead of running the self-test burst.
    pub serve: bool,
    /// Networks whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Requests per key in the burst.
    pub requests: u32,
}

impl Options {
    /// Parses `std::env::args()`.
    pub fn from_env() -> Self {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses arguments; unknown ones go to [`Flags::parse`].
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut serve = false;
        let mut trusted: Vec<String> = std::env::var("TRUSTED_PROXIES")
            .map(|v| split_list(&v))
            .unwrap_or_default();
        let mut requests = 15;
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--serve" => serve = true,
                "--trusted-proxies" => {
                    trusted = args.next().map(|v| split_list(&v)).unwrap_or_default()
                }
                "--requests" => requests = args.next().and_then(|n| n.parse().ok()).unwrap_or(15),
                _ => rest.push(arg),
            }
        }
        Self {
            flags: Flags::parse(rest),
            serve,
            trusted_proxies: trusted,
            requests,
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What the self-test burst saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The free key's burst.
    pub free: BurstReport,
    /// The premium key's burst.
    pub premium: BurstReport,
}

/// Starts the server; with `--serve`, serves until interrupted; otherwise sends a burst for a
/// free and a premium key, prints what they got and returns it.
pub async fn run(options: &Options) -> Result<Option<Summary>, BoxError> {
    let trusted = if options.trusted_proxies.is_empty() {
        TrustedProxies::None
    } else {
        TrustedProxies::cidrs(&options.trusted_proxies)?
    };
    let config = ServerConfig {
        trusted,
        ..ServerConfig::default()
    };
    let server = Server::start(options.flags.port, &config).await?;
    let addr = server.addr();
    if options.serve {
        println!(
            "listening on http://{addr}/api/hello (x-api-key: demo-free, basic_*, premium_*); Ctrl-C stops"
        );
        tokio::select! {
            r = server.wait() => r?,
            r = tokio::signal::ctrl_c() => r?,
        }
        return Ok(None);
    }
    let n = options.requests;
    let free = burst(addr, "demo-free", n, |_| None).await;
    let premium = burst(addr, "premium_acme", n, |_| None).await;
    let summary = Summary { free, premium };
    if options.flags.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("axum server with the inbound stack on http://{addr}");
        for r in [&summary.free, &summary.premium] {
            let tier = Tier::of_key(&r.api_key);
            println!(
                "{:<14} ({:<7} {:>3}/min {:>5}/h): {n} requests -> {} x 200, {} x 429, {} other",
                r.api_key,
                tier.name(),
                tier.per_minute(),
                tier.per_hour(),
                r.ok,
                r.throttled,
                r.other
            );
        }
        if let Some(r) = [&summary.free, &summary.premium]
            .into_iter()
            .find(|r| !r.first_429_headers.is_empty())
        {
            println!("headers of the first 429 ({}):", r.api_key);
            for (k, v) in &r.first_429_headers {
                println!("  {k}: {v}");
            }
        }
    }
    Ok(Some(summary))
}
