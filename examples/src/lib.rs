//! Shared pieces of the Stormwall examples: a local rate-limited, optionally flaky API, a
//! scenario runner that measures what a client sees, and report printing (table, JSON, SVG).
//!
//! The examples themselves live next to this crate: run them with `cargo run --example NAME`.

pub mod axum_server;
pub mod demo;
pub mod hyper_client;
pub mod redis_shared_limit;
pub mod tonic_client;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use stormwall::core::BoxError;
use stormwall::core::headers::{RateLimitPolicy, RateLimitStatus, format_retry_after};
use tokio::net::TcpListener;

/// Command-line flags shared by the examples: `--port N` (or `PORT`), `--json`, `--svg PATH`,
/// `--fail-rate F`, `--url URL`, `--quick`, `--quiet`.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// Port for the local server (0 = any free port).
    pub port: u16,
    /// Print JSON instead of tables.
    pub json: bool,
    /// Where to write the SVG chart.
    pub svg: Option<String>,
    /// Share of upstream calls that fail with 503 in the flaky scenario.
    pub fail_rate: Option<f64>,
    /// A base URL to call instead of the local API.
    pub url: Option<String>,
    /// Shorter runs (used by the tests).
    pub quick: bool,
    /// Print nothing: the caller reads the returned results (used by the tests, whose
    /// failure messages carry the results that matter).
    pub quiet: bool,
}

impl Flags {
    /// Parses `std::env::args()`; unknown flags are reported and ignored.
    pub fn from_env() -> Self {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses flags from an iterator of arguments.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut flags = Self {
            port: std::env::var("PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
            ..Self::default()
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--port" => flags.port = args.next().and_then(|p| p.parse().ok()).unwrap_or(0),
                "--json" => flags.json = true,
                "--svg" => flags.svg = args.next(),
                "--fail-rate" => flags.fail_rate = args.next().and_then(|f| f.parse().ok()),
                "--url" => flags.url = args.next(),
                "--quick" => flags.quick = true,
                "--quiet" => flags.quiet = true,
                other => eprintln!("ignoring unknown argument {other:?}"),
            }
        }
        flags
    }
}

/// How the local API behaves.
#[derive(Debug, Clone, Copy)]
pub struct ApiConfig {
    /// Requests allowed per second (token bucket refill rate).
    pub rate_per_sec: u32,
    /// Token bucket capacity.
    pub burst: u32,
    /// Share of admitted calls answered with 503 (0.0 = never).
    pub fail_rate: f64,
    /// How long each admitted call takes.
    pub latency: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 10,
            burst: 10,
            fail_rate: 0.0,
            latency: Duration::from_millis(300),
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
struct ApiState {
    config: Mutex<ApiConfig>,
    bucket: Mutex<Bucket>,
    calls: AtomicU64,
    throttled: AtomicU64,
    failed: AtomicU64,
    rng: AtomicU64,
    /// Arrival times of every call since the last reset.
    arrivals: Mutex<Vec<Duration>>,
    epoch: Mutex<Instant>,
}

/// A local API on loopback that allows `rate_per_sec` requests per second (a token bucket)
/// and answers `429` with `Retry-After` and draft-10 `RateLimit` headers beyond that;
/// optionally fails a share of calls with `503`.
#[derive(Debug, Clone)]
pub struct DemoApi {
    addr: SocketAddr,
    state: Arc<ApiState>,
}

/// What the API saw since the last reset.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ApiSnapshot {
    /// Every request that reached the API.
    pub calls: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// Requests answered 503 by the injected failures.
    pub failed: u64,
    /// Arrival times (ms since the reset) of every request.
    #[serde(skip)]
    pub arrivals: Vec<Duration>,
}

impl DemoApi {
    /// Starts the API on `127.0.0.1:port` (0 = a free port).
    pub async fn start(port: u16, config: ApiConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ApiState {
            config: Mutex::new(config),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(config.burst),
                updated: Instant::now(),
            }),
            calls: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rng: AtomicU64::new(RNG_SEED),
            arrivals: Mutex::new(Vec::new()),
            epoch: Mutex::new(Instant::now()),
        });
        let accept_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, state })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the behaviour and resets counters and the token bucket (full).
    pub fn reset(&self, config: ApiConfig) {
        *self.state.config.lock() = config;
        *self.state.bucket.lock() = Bucket {
            tokens: f64::from(config.burst),
            updated: Instant::now(),
        };
        self.state.calls.store(0, Ordering::SeqCst);
        self.state.throttled.store(0, Ordering::SeqCst);
        self.state.failed.store(0, Ordering::SeqCst);
        // The same failure sequence for every run: what one run drew must not shift the next
        // run's failures (on a loaded machine the plain client's run admits a varying number).
        self.state.rng.store(RNG_SEED, Ordering::Relaxed);
        self.state.arrivals.lock().clear();
        *self.state.epoch.lock() = Instant::now();
    }

    /// Counters since the last reset.
    pub fn snapshot(&self) -> ApiSnapshot {
        ApiSnapshot {
            calls: self.state.calls.load(Ordering::SeqCst),
            throttled: self.state.throttled.load(Ordering::SeqCst),
            failed: self.state.failed.load(Ordering::SeqCst),
            arrivals: self.state.arrivals.lock().clone(),
        }
    }
}

/// The seed of the injected failures' random sequence (restored by [`DemoApi::reset`]).
const RNG_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

fn next_random(state: &ApiState) -> f64 {
    // xorshift64*, shared by all connections: deterministic enough for a demo.
    let mut x = state.rng.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.rng.store(x, Ordering::Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

async fn handle(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let config = *state.config.lock();
    state.calls.fetch_add(1, Ordering::SeqCst);
    let since = state.epoch.lock().elapsed();
    state.arrivals.lock().push(since);
    let rate = f64::from(config.rate_per_sec.max(1));
    let (admitted, tokens_left, wait) = {
        let mut bucket = state.bucket.lock();
        let now = Instant::now();
        let refill = now.duration_since(bucket.updated).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(config.burst));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            (true, bucket.tokens, Duration::ZERO)
        } else {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
            (false, bucket.tokens, wait)
        }
    };
    let policy = RateLimitPolicy::format_all(&[RateLimitPolicy::new(
        "api",
        u64::from(config.burst),
        Duration::from_secs_f64(f64::from(config.burst) / rate),
    )]);
    let status = RateLimitStatus::format_all(&[RateLimitStatus::new(
        "api",
        tokens_left.floor() as u64,
        wait.max(Duration::from_secs_f64(1.0 / rate)),
    )]);
    let mut res = if !admitted {
        state.throttled.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(Full::new(Bytes::from_static(
            b"{\"error\":\"rate limited\"}",
        )));
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, format_retry_after(wait));
        res
    } else {
        tokio::time::sleep(config.latency).await;
        if config.fail_rate > 0.0 && next_random(state) < config.fail_rate {
            state.failed.fetch_add(1, Ordering::SeqCst);
            let mut res = Response::new(Full::new(Bytes::from_static(
                b"{\"error\":\"unavailable\"}",
            )));
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            res
        } else {
            let body = format!("{{\"path\":\"{}\"}}", req.uri().path());
            let mut res = Response::new(Full::new(Bytes::from(body)));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            res
        }
    };
    if let Some(p) = policy {
        res.headers_mut().insert("ratelimit-policy", p);
    }
    if let Some(s) = status {
        res.headers_mut().insert("ratelimit", s);
    }
    res
}

/// A response as the scenario runner sees it: status and body, or an error.
pub type Outcome = Result<(StatusCode, Bytes), BoxError>;

/// What one scenario measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub scenario: String,
    /// `without` or `with` Stormwall.
    pub client: String,
    /// Requests sent by the callers.
    pub requests: u64,
    /// 2xx responses.
    pub successes: u64,
    /// 429 responses the callers saw.
    pub throttled: u64,
    /// 5xx responses the callers saw.
    pub server_errors: u64,
    /// Errors (rejections by a layer, transport errors).
    pub errors: u64,
    /// Requests that reached the API.
    pub upstream_calls: u64,
    /// Upstream calls avoided: requests − upstream calls (never negative).
    pub calls_saved: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Wall-clock duration, ms.
    pub duration_ms: f64,
    /// Upstream requests per 100 ms bucket.
    pub upstream_per_100ms: Vec<u32>,
    /// Per-layer statistics, as text lines.
    pub layer_stats: Vec<String>,
}

/// Runs every request future concurrently and measures what the callers saw.
pub async fn measure<F, Fut>(
    scenario: &str,
    client: &str,
    api: &DemoApi,
    requests: Vec<F>,
) -> ScenarioResult
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for make in requests {
        let fut = make();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let out = fut.await;
            (out, t.elapsed())
        }));
    }
    let mut result = ScenarioResult {
        scenario: scenario.to_owned(),
        client: client.to_owned(),
        ..ScenarioResult::default()
    };
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (out, latency) = task
            .await
            .unwrap_or_else(|e| (Err(e.into()), Duration::ZERO));
        result.requests += 1;
        latencies.push(latency);
        match out {
            Ok((status, _)) if status.is_success() => result.successes += 1,
            Ok((StatusCode::TOO_MANY_REQUESTS, _)) => result.throttled += 1,
            Ok((status, _)) if status.is_server_error() => result.server_errors += 1,
            Ok(_) | Err(_) => result.errors += 1,
        }
    }
    result.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    result.p50_ms = pct(0.5);
    result.p99_ms = pct(0.99);
    let snap = api.snapshot();
    result.upstream_calls = snap.calls;
    result.calls_saved = result.requests.saturating_sub(snap.calls);
    let buckets = (result.duration_ms / 100.0).ceil() as usize + 1;
    let mut per = vec![0u32; buckets.max(1)];
    for a in snap.arrivals {
        let i = (a.as_millis() / 100) as usize;
        if i >= per.len() {
            per.resize(i + 1, 0);
        }
        per[i] += 1;
    }
    result.upstream_per_100ms = per;
    result
}

/// Prints results side by side as a table.
pub fn print_table(title: &str, results: &[ScenarioResult]) {
    println!("\n## {title}");
    println!(
        "{:<9} {:>8} {:>9} {:>5} {:>5} {:>6} {:>9} {:>6} {:>9} {:>9} {:>10}",
        "client",
        "requests",
        "successes",
        "429",
        "5xx",
        "errors",
        "upstream",
        "saved",
        "p50 ms",
        "p99 ms",
        "duration"
    );
    for r in results {
        println!(
            "{:<9} {:>8} {:>9} {:>5} {:>5} {:>6} {:>9} {:>6} {:>9.1} {:>9.1} {:>8.2} s",
            r.client,
            r.requests,
            r.successes,
            r.throttled,
            r.server_errors,
            r.errors,
            r.upstream_calls,
            r.calls_saved,
            r.p50_ms,
            r.p99_ms,
            r.duration_ms / 1000.0
        );
        for line in &r.layer_stats {
            println!("          {line}");
        }
    }
}

/// Writes an SVG chart of upstream requests per 100 ms, one line per series, with the API's
/// limit (requests per 100 ms) as a dashed line.
pub fn write_svg(
    path: &str,
    title: &str,
    series: &[(&str, &[u32])],
    limit_per_100ms: f64,
) -> std::io::Result<()> {
    const W: f64 = 900.0;
    const H: f64 = 420.0;
    const LEFT: f64 = 60.0;
    const RIGHT: f64 = 160.0;
    const TOP: f64 = 50.0;
    const BOTTOM: f64 = 50.0;
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    let max_len = series
        .iter()
        .map(|(_, s)| s.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let peak = series
        .iter()
        .flat_map(|(_, s)| s.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    // Keep the limit readable: a burst far above it is clipped and labelled with its value.
    let max_y = peak
        .min((limit_per_100ms * 12.0).max(12.0))
        .max(limit_per_100ms.ceil());
    let x = |i: usize| LEFT + (W - LEFT - RIGHT) * i as f64 / (max_len - 1) as f64;
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v.min(max_y) / max_y);
    let mut svg = String::new();
    svg.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    ));
    svg.push_str(&format!(
        "<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n"
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"25\" font-size=\"16\" text-anchor=\"middle\">{}</text>\n",
        (W - RIGHT + LEFT) / 2.0,
        escape(title)
    ));
    // Axes and grid.
    // Gridlines on whole numbers: a step of ceil(max / 6).
    let step = (max_y / 6.0).ceil().max(1.0);
    let mut v = 0.0;
    while v <= max_y + f64::EPSILON {
        let yy = y(v);
        svg.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        ));
        v += step;
    }
    let seconds = (max_len as f64 / 10.0).ceil() as usize;
    let tick = (seconds / 10).max(1);
    for s in (0..=seconds).step_by(tick) {
        let i = (s * 10).min(max_len - 1);
        let xx = x(i);
        svg.push_str(&format!(
            "<line x1=\"{xx:.1}\" y1=\"{:.1}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>\n<text x=\"{xx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{s}s</text>\n",
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 18.0
        ));
    }
    svg.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n<line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    ));
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time</text>\n<text x=\"15\" y=\"{:.1}\" transform=\"rotate(-90 15 {:.1})\" text-anchor=\"middle\">upstream requests per 100 ms</text>\n",
        (W - RIGHT + LEFT) / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    ));
    // Limit line.
    let ly = y(limit_per_100ms);
    svg.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"black\" stroke-dasharray=\"6 4\"/>\n",
        W - RIGHT
    ));
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\">API limit ({limit_per_100ms} / 100 ms)</text>\n",
        W - RIGHT + 8.0,
        ly + 4.0
    ));
    for (n, (name, values)) in series.iter().enumerate() {
        let color = colors[n % colors.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(f64::from(*v))))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        ));
        for (i, v) in values.iter().enumerate() {
            if f64::from(*v) > max_y {
                svg.push_str(&format!(
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">&#9650; {v} (clipped)</text>\n",
                    x(i) + 4.0,
                    y(max_y) + 12.0 + 14.0 * n as f64
                ));
            }
        }
        let ly = TOP + 20.0 + 20.0 * n as f64;
        svg.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            W - RIGHT + 8.0,
            W - RIGHT + 28.0,
            W - RIGHT + 34.0,
            ly + 4.0,
            escape(name)
        ));
    }
    svg.push_str("</svg>\n");
    std::fs::write(path, svg)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let f = Flags::parse(
            [
                "--port",
                "8080",
                "--json",
                "--svg",
                "x.svg",
                "--fail-rate",
                "0.2",
                "--quick",
            ]
            .map(String::from),
        );
        assert_eq!(f.port, 8080);
        assert!(f.json && f.quick);
        assert_eq!(f.svg.as_deref(), Some("x.svg"));
        assert_eq!(f.fail_rate, Some(0.2));
    }

    #[test]
    fn svg_is_well_formed() {
        let dir = std::env::temp_dir().join(format!("stormwall-svg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let path = path.to_str().unwrap();
        write_svg(
            path,
            "a <b>",
            &[("without", &[10, 0, 5]), ("with", &[1, 1, 1])],
            1.0,
        )
        .unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;"));
    }
}
