//! The `redis_shared_limit` example (see `examples/redis_shared_limit.rs`): two instances of
//! a service, each with its own rate limiter and its own Redis connection, sharing one quota
//! through Redis.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use stormwall::core::BoxError;
use stormwall::ratelimit::{Limit, Quota, RateLimitLayer};
use stormwall_redis::{OnFailure, RedisStore};
use stormwall_tests::redis::RedisServer;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};

use crate::Flags;

/// The example's options: the shared [`Flags`] plus `--redis-url URL` (or `REDIS_URL`;
/// default: start a private `redis-server` on a free port), `--quota N` (requests per minute
/// shared by both instances, default 20) and `--requests N` (sent to each instance, default
/// 30).
#[derive(Debug, Clone)]
pub struct Options {
    /// `--json`.
    pub flags: Flags,
    /// An existing Redis; `None` starts one.
    pub redis_url: Option<String>,
    /// The shared quota, requests per minute.
    pub quota: u64,
    /// Requests per instance.
    pub requests: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            flags: Flags::default(),
            redis_url: None,
            quota: 20,
            requests: 30,
        }
    }
}

impl Options {
    /// Parses `std::env::args()`.
    pub fn from_env() -> Self {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses arguments; unknown ones go to [`Flags::parse`].
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut options = Self {
            redis_url: std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()),
            ..Self::default()
        };
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--redis-url" => options.redis_url = args.next(),
                "--quota" => {
                    options.quota = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(20)
                        .max(1)
                }
                "--requests" => {
                    options.requests = args.next().and_then(|n| n.parse().ok()).unwrap_or(30)
                }
                _ => rest.push(arg),
            }
        }
        options.flags = Flags::parse(rest);
        options
    }
}

/// What one instance admitted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InstanceReport {
    /// `200` answers.
    pub admitted: u32,
    /// `429` answers.
    pub rejected: u32,
    /// Other answers.
    pub other: u32,
    /// Decisions Redis made for this instance.
    pub redis_decisions: u64,
    /// Decisions the failure policy made (Redis slow or down).
    pub fallbacks: u64,
}

/// What both instances admitted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// The shared quota (requests per minute).
    pub quota: u64,
    /// Requests sent to each instance.
    pub requests_per_instance: u32,
    /// Instance A.
    pub a: InstanceReport,
    /// Instance B.
    pub b: InstanceReport,
    /// Admitted by both together (never above the quota).
    pub total_admitted: u32,
}

/// An instance: answers each request with a status.
type Instance = BoxCloneService<Request<Full<Bytes>>, StatusCode, Infallible>;

/// One instance: a handler behind a reject-mode rate limiter whose state is in Redis, with
/// its own connection. If Redis fails, requests are rejected (`OnFailure::Closed`), so the
/// shared quota holds even then.
fn instance(url: &str, prefix: &str, quota: Quota) -> Result<(Instance, RedisStore), BoxError> {
    let store = RedisStore::builder()
        .prefix(prefix.to_owned())
        .timeout(Duration::from_secs(1))
        .on_failure(OnFailure::Closed)
        .connect(url)?;
    let layer = RateLimitLayer::with_store(Limit::global("shared-quota", quota), store.clone());
    let handler = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let svc = layer.layer(handler).map_response(|res| res.status());
    Ok((BoxCloneService::new(svc), store))
}

/// Starts (or connects to) Redis, builds two instances sharing a quota, sends requests to
/// both at once, round after round, and prints and returns what each admitted.
pub async fn run(options: &Options) -> Result<Summary, BoxError> {
    let (_server, url) = match &options.redis_url {
        Some(url) => (None, url.clone()),
        None => {
            let server = tokio::task::spawn_blocking(RedisServer::start).await?;
            let url = server.url();
            (Some(server), url)
        }
    };
    // A fresh key prefix per run, so that reruns against the same Redis start from a full quota.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let prefix = format!("stormwall-example-{}-{nanos}", std::process::id());
    let quota = Quota::per_minute(options.quota)?;
    let (svc_a, store_a) = instance(&url, &prefix, quota)?;
    let (svc_b, store_b) = instance(&url, &prefix, quota)?;

    let mut summary = Summary {
        quota: options.quota,
        requests_per_instance: options.requests,
        ..Summary::default()
    };
    // Rounds: in each, one request to each instance at the same time.
    for i in 0..options.requests {
        let req = || Request::get(format!("/work/{i}")).body(Full::new(Bytes::new()));
        let (a, b) = tokio::join!(svc_a.clone().oneshot(req()?), svc_b.clone().oneshot(req()?));
        for (report, status) in [(&mut summary.a, a), (&mut summary.b, b)] {
            match status {
                Ok(StatusCode::OK) => report.admitted += 1,
                Ok(StatusCode::TOO_MANY_REQUESTS) => report.rejected += 1,
                _ => report.other += 1,
            }
        }
    }
    for (report, store) in [(&mut summary.a, &store_a), (&mut summary.b, &store_b)] {
        let stats = store.stats();
        report.redis_decisions = stats.redis_decisions;
        report.fallbacks = stats.fallbacks;
    }
    summary.total_admitted = summary.a.admitted + summary.b.admitted;
    if options.flags.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "two instances, one quota of {}/min in Redis ({url}); {} rounds of one request to each at once",
            options.quota, options.requests
        );
        for (name, r) in [("A", &summary.a), ("B", &summary.b)] {
            println!(
                "  instance {name}: {} admitted, {} x 429, {} other ({} decisions by Redis, {} by the failure policy)",
                r.admitted, r.rejected, r.other, r.redis_decisions, r.fallbacks
            );
        }
        println!(
            "  together: {} admitted (quota {})",
            summary.total_admitted, options.quota
        );
    }
    Ok(summary)
}
