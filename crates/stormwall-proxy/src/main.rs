//! `stormwall-proxy`: the Stormwall layers as a reverse proxy configured by a TOML file.
//!
//! ```text
//! stormwall-proxy --config proxy.toml          # run
//! stormwall-proxy --config proxy.toml --check  # validate the file and exit
//! ```
//!
//! It listens on `listen` (HTTP, or HTTPS with `[tls]`; HTTP/1.1 and HTTP/2 from clients),
//! forwards every request to `upstream` (`http://`, or `https://` through rustls; HTTP/1.1 to
//! the upstream by default, HTTP/2 by ALPN or with prior knowledge with `upstream_version`),
//! preserving the method, path, query and headers minus the hop-by-hop ones (`Connection` and
//! the headers it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`), and adds `Forwarded: for=…;proto=http|https;host=…` and `Via: 1.1 stormwall`.
//! Bodies are streamed unless a configured layer (cache, coalescing) needs them buffered.
//! Upstream errors become `502 Bad Gateway`. Upstream connections are kept alive and reused
//! (idle ones for up to 90 s).
//!
//! # Configuration
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! upstream = "https://api.partner.example/v2"  # http:// or https://; a path prefix is kept
//! admin = "127.0.0.1:9090"             # /health and /metrics (optional)
//! shutdown_timeout = "10s"             # grace period for in-flight requests (default 10s)
//! # The HTTP version spoken to the upstream:
//! #   "http1" (default) HTTP/1.1 only (an https:// upstream is offered only http/1.1 by ALPN)
//! #   "auto"            https:// only: offer h2 and http/1.1 by ALPN, speak what it picks
//! #   "http2"           HTTP/2 only: h2 by ALPN on https://, prior knowledge (h2c) on http://
//! # Over HTTP/2 all requests share one multiplexed connection; hop-by-hop headers are never
//! # sent, except `TE: trailers` (gRPC) with "http2" when the client sent it.
//! upstream_version = "http1"
//!
//! # HTTPS on `listen` (optional): PEM certificate chain (leaf first) and private key.
//! [tls]
//! cert_file = "/etc/stormwall/cert.pem"
//! key_file = "/etc/stormwall/key.pem"
//!
//! # Trust for an https:// upstream (optional): the Mozilla roots (webpki-roots) unless
//! # system_roots = false, plus every certificate of ca_file.
//! [upstream_tls]
//! ca_file = "/etc/stormwall/partner-ca.pem"
//! system_roots = true
//!
//! # Shared inbound limits (optional): every rate limit of [inbound] (and of the routes) keeps
//! # its state in Redis, so all proxies using the same server and prefix share one quota.
//! [redis]
//! url = "redis://127.0.0.1:6379/"
//! on_failure = "open"      # while Redis is unreachable: "open" (admit), "closed" (429),
//! instances = 4            #   or "local" (each proxy enforces quota / instances)
//! timeout = "50ms"         # per Redis call
//! prefix = "stormwall-proxy"
//!
//! # The inbound stack (stormwall::config::InboundConfig). Absent: no inbound stage at all.
//! # `standard = true` (the default once the section exists) starts from
//! # InboundStack::standard(): per-IP limit, concurrency limit, shared cache, coalescing.
//! [inbound]
//! standard = false
//! concurrency_limit = 1024
//!
//! [inbound.rate_limit]
//! per_second = 50
//! burst = 100
//! key = "peer_ip"          # or "client_ip" with trusted_proxies, "header", "global"
//! clock = "tsc"            # the CPU's time-stamp counter: cheaper reads (default "tokio")
//!
//! # The outbound stack around the upstream client (stormwall::config::OutboundConfig).
//! # Absent: a plain client.
//! [outbound]
//! preset = "fast_fail"
//! attempt_timeout = "5s"
//!
//! # Per-route overrides: the route's sections are merged over [inbound] / [outbound] field
//! # by field (`enabled = false` removes a layer). A request takes the route with the longest
//! # matching prefix (on a `/` boundary: "/search" matches "/search" and "/search/x", not
//! # "/searchx") whose `methods` include its method; else the global stacks. Every route has
//! # its own layer state: its own limiter buckets, cache, breaker.
//! [[route]]
//! name = "search"          # breaker name and /health label (default: the prefix)
//! prefix = "/search"
//! methods = ["GET", "HEAD"]  # default: every method
//! [route.inbound.rate_limit]
//! enabled = false
//! [route.outbound.retry]
//! max_attempts = 3
//! ```
//!
//! Unknown fields and invalid values are reported on stderr with the field and the line, and
//! the process exits with code 2 (with or without `--check`).
//!
//! # Admin endpoints
//!
//! - `GET /health`: `200` with
//!   `{"status":"ok","upstream":{"address":"…","reachable":true},"breakers":[{"route":"*","name":"upstream","state":"closed"}],"redis":{"address":"…","reachable":true}}`.
//!   `reachable`: a TCP connection to the upstream succeeded within one second. `breakers`:
//!   every chain's circuit breaker (`route` is `*` for the global stacks) and its state
//!   (`closed`, `open`, `half_open`, …). `redis` (only with `[redis]`): whether the server
//!   answered a `PING` within one second. `status` is `degraded` when a breaker is not closed
//!   or Redis is unreachable.
//! - `GET /metrics`: Prometheus text format: every `stormwall_*` metric of the layers, plus
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `stormwall_proxy_requests_total{method,status}` | counter | requests answered |
//! | `stormwall_proxy_request_duration_seconds` | histogram | time to the response head |
//! | `stormwall_proxy_upstream_errors_total` | counter | upstream failures answered with 502 |
//!
//! # Signals and logs
//!
//! SIGTERM or SIGINT stops accepting connections and lets in-flight requests finish for up to
//! `shutdown_timeout`; the process then exits with code 0. Logs go to stderr through
//! `tracing-subscriber`, filtered by `RUST_LOG` (default `info`): one line per request with
//! the method, path, status, duration, the `Cache-Status` value (when the cache answered)
//! and the inbound limiter's decision (`limiter=rejected` when it answered 429).

mod admin;
mod config;
mod forward;
mod pool;
mod server;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use config::ProxyConfig;

const USAGE: &str = "usage: stormwall-proxy --config <proxy.toml> [--check]";

/// Exit code for invalid arguments or configuration.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug)]
struct Args {
    config: String,
    check: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut config = None;
    let mut check = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                config = Some(args.next().ok_or("--config needs a file")?);
            }
            "--check" => check = true,
            "--help" | "-h" => return Ok(None),
            other => {
                if let Some(path) = other.strip_prefix("--config=") {
                    config = Some(path.to_owned());
                } else {
                    return Err(format!("unknown argument `{other}`"));
                }
            }
        }
    }
    let config = config.ok_or("missing --config <file>")?;
    Ok(Some(Args { config, check }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let text = match std::fs::read_to_string(&args.config) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.config);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match ProxyConfig::parse(&text) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration in {}:\n{e}", args.config);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        return match config.build() {
            Ok(_) => {
                println!("{}: configuration OK", args.config);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: invalid configuration in {}: {e}", args.config);
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not in files, pipes or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // The recorder must be installed before the stacks are built: layers register their
    // metrics handles when they are constructed.
    let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("error: cannot install the metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = match config.build() {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: invalid configuration in {}: {e}", args.config);
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(loaded, metrics)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Args>, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_are_parsed() {
        let a = args(&["--config", "p.toml", "--check"]).unwrap().unwrap();
        assert_eq!(a.config, "p.toml");
        assert!(a.check);
        let a = args(&["--config=q.toml"]).unwrap().unwrap();
        assert_eq!(a.config, "q.toml");
        assert!(!a.check);
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&[]).unwrap_err().contains("--config"));
        assert!(args(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(args(&["--config"]).is_err());
    }
}
