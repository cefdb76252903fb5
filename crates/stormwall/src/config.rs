//! Configuration by file (TOML) and environment, for services that configure that way.
//!
//! Every section maps onto one stage of the [standard stacks](crate#the-standard-stacks);
//! absent sections keep the preset's default, `enabled = false` removes a stage. Durations are
//! written `"250ms"`, `"2s"`, `"5m"`, `"1h"`. Unknown fields are errors that name the field and
//! the line.
//!
//! ```
//! use stormwall::config::StormwallConfig;
//!
//! let config = StormwallConfig::from_toml_str(r#"
//!     [outbound]
//!     name = "partner-api"
//!     preset = "standard"
//!     attempt_timeout = "2s"
//!
//!     [outbound.retry]
//!     max_attempts = 4
//!     deadline = "10s"
//!
//!     [outbound.rate_limit]
//!     per_second = 10
//!     burst = 10
//!     mode = "wait"
//!     max_wait = "30s"
//!
//!     [inbound.rate_limit]
//!     per_second = 50
//!     burst = 100
//!     key = "peer_ip"
//!     clock = "tsc"   # the CPU's time-stamp counter; default "tokio" (follows a paused clock)
//! "#).unwrap();
//! let outbound = config.outbound.unwrap().build().unwrap();
//! assert!(outbound.rate_limit_layer().is_some());
//! let inbound = config.inbound.unwrap().build().unwrap();
//! assert!(inbound.rate_limit_layer().is_some());
//!
//! // Mistakes are reported with the field and the line.
//! let err = StormwallConfig::from_toml_str("[outbound.retry]\nmax_atempts = 3\n").unwrap_err();
//! assert!(err.to_string().contains("max_atempts"), "{err}");
//! assert!(err.to_string().contains("line 2"), "{err}");
//! ```
//!
//! Environment variables override the file: `STORMWALL__OUTBOUND__RETRY__MAX_ATTEMPTS=5` sets
//! `outbound.retry.max_attempts` (`__` separates the path; values are read as TOML scalars,
//! falling back to strings). See [`StormwallConfig::apply_env`].

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use stormwall_core::key::{ClientIp, HeaderKey, PeerIp, TrustedProxies};

use crate::cache::CacheLayer;
use crate::circuit::{BreakerConfig, CircuitBreakerLayer, Window};
use crate::coalesce::CoalesceLayer;
use crate::ratelimit::{Clock, Limit, Quota, RateLimitLayer};
use crate::retry::{Backoff, RetryBudget, RetryLayer};
use crate::{InboundStack, OutboundStack};

/// A configuration error: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Parses `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"1h"` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration `{s}` (expected e.g. \"250ms\", \"2s\", \"5m\")"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (ms, s, m, h)"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=86_400.0 * 366.0).contains(&secs) {
        return Err(format!("duration `{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(f64),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Text(s)) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(Raw::Secs(n)) => parse_duration(&n.to_string())
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// The whole configuration: an outbound and/or an inbound stack.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StormwallConfig {
    /// The outbound (client) stack.
    pub outbound: Option<OutboundConfig>,
    /// The inbound (server) stack.
    pub inbound: Option<InboundConfig>,
}

impl StormwallConfig {
    /// Parses a TOML document.
    pub fn from_toml_str(toml_text: &str) -> Result<Self, ConfigError> {
        let value: toml::Table = toml_text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new(format!("invalid TOML: {e}")))?;
        Self::from_table(value, Some(toml_text))
    }

    /// Reads a TOML file, then applies `STORMWALL__…` environment overrides.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::new(format!("{}: {e}", path.display())))?;
        Self::apply_env(&mut table, std::env::vars())?;
        Self::from_table(table, Some(&text))
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))
    }

    /// Applies overrides such as `STORMWALL__OUTBOUND__RETRY__MAX_ATTEMPTS=5` from `vars` to a
    /// TOML table (`__` separates the path, keys are lowercased; values are parsed as TOML
    /// scalars — integers, floats, booleans — and otherwise kept as strings).
    ///
    /// ```
    /// use stormwall::config::StormwallConfig;
    /// let mut table = toml::Table::new();
    /// StormwallConfig::apply_env(&mut table, [("STORMWALL__OUTBOUND__RETRY__MAX_ATTEMPTS".to_owned(), "5".to_owned())]).unwrap();
    /// assert_eq!(table["outbound"]["retry"]["max_attempts"].as_integer(), Some(5));
    /// ```
    pub fn apply_env(
        table: &mut toml::Table,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, raw) in vars {
            let Some(path) = name.strip_prefix("STORMWALL__") else {
                continue;
            };
            let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                return Err(ConfigError::new(format!(
                    "invalid override variable {name}"
                )));
            }
            let value = format!("v = {raw}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            let mut node = &mut *table;
            for key in &keys[..keys.len() - 1] {
                let entry = node
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                node = entry
                    .as_table_mut()
                    .ok_or_else(|| ConfigError::new(format!("{name}: `{key}` is not a table")))?;
            }
            node.insert(keys[keys.len() - 1].clone(), value);
        }
        Ok(())
    }

    fn from_table(table: toml::Table, source: Option<&str>) -> Result<Self, ConfigError> {
        // Re-serialize so that toml's deserializer can report lines in the original text when
        // we have it; otherwise deserialize the table directly.
        match source {
            Some(text) if table == text.parse::<toml::Table>().unwrap_or_default() => {
                toml::from_str(text).map_err(|e| ConfigError::new(e.to_string().trim().to_owned()))
            }
            _ => Self::deserialize(toml::Value::Table(table))
                .map_err(|e| ConfigError::new(e.to_string().trim().to_owned())),
        }
    }
}

/// The preset an outbound stack starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// [`OutboundStack::standard`].
    #[default]
    Standard,
    /// [`OutboundStack::fast_fail`].
    FastFail,
    /// [`OutboundStack::tolerant`].
    Tolerant,
    /// Nothing enabled: only the sections present are.
    None,
}

/// `[outbound]`: the outbound stack.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// The upstream's name (breaker name, metric label). Default `upstream`.
    pub name: Option<String>,
    /// The preset to start from.
    #[serde(default)]
    pub preset: Preset,
    /// Per-attempt timeout.
    #[serde(default, deserialize_with = "de_duration")]
    pub attempt_timeout: Option<Duration>,
    /// `[outbound.cache]`.
    pub cache: Option<CacheConfig>,
    /// `[outbound.coalesce]`.
    pub coalesce: Option<CoalesceConfig>,
    /// `[outbound.retry]`.
    pub retry: Option<RetryConfig>,
    /// `[outbound.circuit]`.
    pub circuit: Option<CircuitConfig>,
    /// `[outbound.rate_limit]`.
    pub rate_limit: Option<RateLimitConfig>,
}

fn yes() -> bool {
    true
}

/// A cache section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `false` removes the stage.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Total bytes stored.
    pub max_bytes: Option<u64>,
    /// Largest body stored.
    pub max_entry_bytes: Option<usize>,
    /// Freshness for responses without any (off by default).
    #[serde(default, deserialize_with = "de_duration")]
    pub default_ttl: Option<Duration>,
    /// Default stale-while-revalidate grace.
    #[serde(default, deserialize_with = "de_duration")]
    pub stale_while_revalidate: Option<Duration>,
    /// Default stale-if-error grace.
    #[serde(default, deserialize_with = "de_duration")]
    pub stale_if_error: Option<Duration>,
}

/// A coalescing section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceConfig {
    /// `false` removes the stage.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Most waiters per key.
    pub max_waiters: Option<usize>,
    /// Largest body shared.
    pub max_body_bytes: Option<usize>,
    /// Per-caller timeout.
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
}

/// A retry section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// `false` removes the stage.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Attempts per request, the first included.
    pub max_attempts: Option<u32>,
    /// Exponential backoff base.
    #[serde(default, deserialize_with = "de_duration")]
    pub base_delay: Option<Duration>,
    /// Exponential backoff cap.
    #[serde(default, deserialize_with = "de_duration")]
    pub max_delay: Option<Duration>,
    /// Overall deadline across attempts.
    #[serde(default, deserialize_with = "de_duration")]
    pub deadline: Option<Duration>,
    /// Retry budget: share of requests that may be retried (e.g. 0.2).
    pub budget_ratio: Option<f32>,
    /// Retry budget floor: retries per second always allowed.
    pub budget_min_per_sec: Option<u32>,
    /// Retry POST/PATCH/… even without `Idempotency-Key`.
    pub retry_unsafe_methods: Option<bool>,
}

/// A circuit breaker section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// `false` removes the stage.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Count window: the last N calls.
    pub window_calls: Option<u32>,
    /// Time window: the last N seconds (instead of `window_calls`).
    pub window_secs: Option<u32>,
    /// Calls needed before the rates count.
    pub minimum_calls: Option<u32>,
    /// Failure rate (percent) that opens the breaker.
    pub failure_rate: Option<f64>,
    /// A call slower than this is slow.
    #[serde(default, deserialize_with = "de_duration")]
    pub slow_call_duration: Option<Duration>,
    /// Slow-call rate (percent) that opens the breaker.
    pub slow_call_rate: Option<f64>,
    /// How long the breaker stays open.
    #[serde(default, deserialize_with = "de_duration")]
    pub wait: Option<Duration>,
    /// Probes admitted when half-open.
    pub half_open_calls: Option<u32>,
}

/// Wait for a slot, or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitMode {
    /// Wait (outbound shaping).
    Wait,
    /// Reject (inbound 429).
    Reject,
}

/// Where a rate limiter reads the time (see [`Clock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockChoice {
    /// tokio's clock (the default): follows `tokio::time::pause`, reads `clock_gettime`.
    #[default]
    Tokio,
    /// The CPU's time-stamp counter: about a third of the cost per read on a VM; does not
    /// follow a paused tokio clock. For production processes such as `stormwall-proxy`.
    Tsc,
}

/// What an inbound limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyConfig {
    /// One bucket for everything.
    Global,
    /// The TCP peer's IP.
    PeerIp,
    /// The client IP behind trusted proxies (`trusted_proxies` CIDRs or `trusted_hops`).
    ClientIp,
    /// A header's value; the header is named by `header`.
    Header,
}

/// A rate-limit section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `false` removes the stage.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Requests per second (fractions allowed).
    pub per_second: f64,
    /// Burst (defaults to the per-second rate, at least 1).
    pub burst: Option<u64>,
    /// Wait (outbound default) or reject (inbound default).
    pub mode: Option<LimitMode>,
    /// Longest wait in wait mode.
    #[serde(default, deserialize_with = "de_duration")]
    pub max_wait: Option<Duration>,
    /// What the limit is keyed by (inbound default `peer_ip`, outbound `global`).
    pub key: Option<KeyConfig>,
    /// With `key = "header"`: the header name.
    pub header: Option<String>,
    /// With `key = "client_ip"`: trusted proxy networks.
    pub trusted_proxies: Option<Vec<String>>,
    /// With `key = "client_ip"`: the number of trusted proxy hops.
    pub trusted_hops: Option<usize>,
    /// Where the limiter reads the time: `"tokio"` (default) or `"tsc"`.
    #[serde(default)]
    pub clock: ClockChoice,
}

/// `[inbound]`: the inbound stack.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Start from [`InboundStack::standard`] (default true) or from nothing.
    pub standard: Option<bool>,
    /// `[inbound.rate_limit]`.
    pub rate_limit: Option<RateLimitConfig>,
    /// Most requests in flight (load shedding beyond).
    pub concurrency_limit: Option<usize>,
    /// `[inbound.cache]`.
    pub cache: Option<CacheConfig>,
    /// `[inbound.coalesce]`.
    pub coalesce: Option<CoalesceConfig>,
}

fn field<T, E: fmt::Display>(path: &str, r: Result<T, E>) -> Result<T, ConfigError> {
    r.map_err(|e| ConfigError::new(format!("{path}: {e}")))
}

impl CacheConfig {
    fn build(&self, mut layer: CacheLayer) -> CacheLayer {
        if let Some(b) = self.max_bytes {
            layer = layer.max_bytes(b);
        }
        if let Some(b) = self.max_entry_bytes {
            layer = layer.max_entry_bytes(b);
        }
        if let Some(t) = self.default_ttl {
            layer = layer.default_ttl(t);
        }
        if let Some(g) = self.stale_while_revalidate {
            layer = layer.stale_while_revalidate(g);
        }
        if let Some(g) = self.stale_if_error {
            layer = layer.stale_if_error(g);
        }
        layer
    }
}

impl CoalesceConfig {
    fn build(&self) -> CoalesceLayer {
        let mut layer = CoalesceLayer::new();
        if let Some(n) = self.max_waiters {
            layer = layer.max_waiters(n);
        }
        if let Some(b) = self.max_body_bytes {
            layer = layer.max_body_bytes(b);
        }
        if let Some(t) = self.timeout {
            layer = layer.timeout(t);
        }
        layer
    }
}

impl RetryConfig {
    fn build(&self, path: &str) -> Result<RetryLayer, ConfigError> {
        let mut layer = RetryLayer::new();
        if let Some(n) = self.max_attempts {
            if n == 0 {
                return Err(ConfigError::new(format!(
                    "{path}.max_attempts: must be at least 1"
                )));
            }
            layer = layer.max_attempts(n);
        }
        if self.base_delay.is_some() || self.max_delay.is_some() {
            let base = self.base_delay.unwrap_or(Duration::from_millis(100));
            let max = self.max_delay.unwrap_or(Duration::from_secs(10));
            layer = layer.backoff(field(
                &format!("{path}.base_delay/max_delay"),
                Backoff::exponential(base, max),
            )?);
        }
        if let Some(d) = self.deadline {
            layer = layer.deadline(d);
        }
        if self.budget_ratio.is_some() || self.budget_min_per_sec.is_some() {
            let budget = field(
                &format!("{path}.budget_ratio"),
                RetryBudget::new(
                    Duration::from_secs(10),
                    self.budget_min_per_sec.unwrap_or(10),
                    self.budget_ratio.unwrap_or(0.2),
                ),
            )?;
            layer = layer.budget(budget);
        }
        if let Some(yes) = self.retry_unsafe_methods {
            layer = layer.retry_unsafe_methods(yes);
        }
        Ok(layer)
    }
}

impl CircuitConfig {
    fn build(&self, name: &str, path: &str) -> Result<CircuitBreakerLayer, ConfigError> {
        let mut config = BreakerConfig::new();
        if let Some(n) = self.window_secs {
            config = config.window(Window::Time(n));
        } else if let Some(n) = self.window_calls {
            config = config.window(Window::Count(n));
        }
        if let Some(n) = self.minimum_calls {
            config = config.minimum_calls(n);
        }
        if let Some(r) = self.failure_rate {
            config = config.failure_rate_threshold(r);
        }
        if let Some(d) = self.slow_call_duration {
            config = config.slow_call(d, self.slow_call_rate.unwrap_or(100.0));
        }
        if let Some(w) = self.wait {
            config = config.wait_duration(w);
        }
        if let Some(n) = self.half_open_calls {
            config = config.permitted_calls_in_half_open(n);
        }
        field(path, CircuitBreakerLayer::new(name.to_owned(), config))
    }
}

impl RateLimitConfig {
    fn build(&self, path: &str, inbound: bool) -> Result<RateLimitLayer, ConfigError> {
        let mut quota = field(
            &format!("{path}.per_second"),
            Quota::per_second_f64(self.per_second),
        )?;
        if let Some(b) = self.burst {
            quota = field(&format!("{path}.burst"), quota.with_burst(b))?;
        }
        let default_key = if inbound {
            KeyConfig::PeerIp
        } else {
            KeyConfig::Global
        };
        let name = if inbound { "inbound" } else { "outbound" };
        let limit = match self.key.clone().unwrap_or(default_key) {
            KeyConfig::Global => Limit::global(name, quota),
            KeyConfig::PeerIp => Limit::new(name, PeerIp::new(), quota),
            KeyConfig::ClientIp => {
                let trusted = match (&self.trusted_proxies, self.trusted_hops) {
                    (Some(cidrs), _) => field(
                        &format!("{path}.trusted_proxies"),
                        TrustedProxies::cidrs(cidrs),
                    )?,
                    (None, Some(n)) => TrustedProxies::hops(n),
                    (None, None) => TrustedProxies::None,
                };
                Limit::new(name, ClientIp::new(trusted), quota)
            }
            KeyConfig::Header => {
                let header = self.header.as_deref().ok_or_else(|| {
                    ConfigError::new(format!("{path}.header: required with key = \"header\""))
                })?;
                let name_hdr = field(
                    &format!("{path}.header"),
                    http::HeaderName::from_bytes(header.as_bytes()),
                )?;
                Limit::new(name, HeaderKey::from_name(name_hdr), quota)
            }
        };
        let mut layer = RateLimitLayer::new(limit);
        if self.clock == ClockChoice::Tsc {
            layer = layer.clock(Clock::tsc());
        }
        let mode = self.mode.unwrap_or(if inbound {
            LimitMode::Reject
        } else {
            LimitMode::Wait
        });
        layer = match mode {
            LimitMode::Reject => layer.reject(),
            LimitMode::Wait => layer.wait(self.max_wait.unwrap_or(Duration::from_secs(30))),
        };
        Ok(layer)
    }
}

impl OutboundConfig {
    /// Builds the outbound stack this section describes.
    pub fn build(&self) -> Result<OutboundStack, ConfigError> {
        let name = self.name.as_deref().unwrap_or("upstream");
        let mut stack = match self.preset {
            Preset::Standard => OutboundStack::standard(name),
            Preset::FastFail => OutboundStack::fast_fail(name),
            Preset::Tolerant => OutboundStack::tolerant(name),
            Preset::None => OutboundStack::new(),
        };
        if let Some(t) = self.attempt_timeout {
            stack = stack.attempt_timeout(t);
        }
        if let Some(c) = &self.cache {
            stack = if c.enabled {
                stack.cache(c.build(CacheLayer::private()))
            } else {
                stack.without_cache()
            };
        }
        if let Some(c) = &self.coalesce {
            stack = if c.enabled {
                stack.coalesce(c.build())
            } else {
                stack.without_coalesce()
            };
        }
        if let Some(r) = &self.retry {
            stack = if r.enabled {
                stack.retry(r.build("outbound.retry")?)
            } else {
                stack.without_retry()
            };
        }
        if let Some(c) = &self.circuit {
            stack = if c.enabled {
                stack.circuit_breaker(c.build(name, "outbound.circuit")?)
            } else {
                stack.without_circuit_breaker()
            };
        }
        if let Some(r) = &self.rate_limit {
            stack = if r.enabled {
                stack.rate_limit(r.build("outbound.rate_limit", false)?)
            } else {
                stack.without_rate_limit()
            };
        }
        Ok(stack)
    }
}

impl InboundConfig {
    /// Builds the inbound stack this section describes.
    pub fn build(&self) -> Result<InboundStack, ConfigError> {
        let mut stack = if self.standard.unwrap_or(true) {
            InboundStack::standard()
        } else {
            InboundStack::new()
        };
        if let Some(r) = &self.rate_limit {
            stack = if r.enabled {
                stack.rate_limit(r.build("inbound.rate_limit", true)?)
            } else {
                stack.without_rate_limit()
            };
        }
        if let Some(n) = self.concurrency_limit {
            stack = stack.concurrency_limit(n);
        }
        if let Some(c) = &self.cache {
            stack = if c.enabled {
                stack.cache(c.build(CacheLayer::shared()))
            } else {
                stack.without_cache()
            };
        }
        if let Some(c) = &self.coalesce {
            stack = if c.enabled {
                stack.coalesce(c.build())
            } else {
                stack.without_coalesce()
            };
        }
        Ok(stack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("1e300s").is_err());
    }

    #[test]
    fn invalid_values_name_the_field() {
        let c = StormwallConfig::from_toml_str("[outbound.rate_limit]\nper_second = 0\n").unwrap();
        let err = c.outbound.unwrap().build().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("outbound.rate_limit.per_second"),
            "{err}"
        );
        let err = StormwallConfig::from_toml_str("[outbound]\nattempt_timeout = \"2 parsecs\"\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("attempt_timeout") || err.to_string().contains("line 2"),
            "{err}"
        );
        let c = StormwallConfig::from_toml_str(
            "[inbound.rate_limit]\nper_second = 5\nkey = \"header\"\n",
        )
        .unwrap();
        let err = c.inbound.unwrap().build().unwrap_err();
        assert!(
            err.to_string().contains("inbound.rate_limit.header"),
            "{err}"
        );
    }

    #[test]
    fn rate_limit_clock_is_configurable() {
        let c = StormwallConfig::from_toml_str("[inbound.rate_limit]\nper_second = 5\n").unwrap();
        let rl = c.inbound.unwrap().rate_limit.unwrap();
        assert_eq!(rl.clock, ClockChoice::Tokio);
        let c = StormwallConfig::from_toml_str(
            "[inbound.rate_limit]\nper_second = 5\nclock = \"tsc\"\n",
        )
        .unwrap();
        let rl = c.inbound.unwrap().rate_limit.unwrap();
        assert_eq!(rl.clock, ClockChoice::Tsc);
        let err = StormwallConfig::from_toml_str(
            "[inbound.rate_limit]\nper_second = 5\nclock = \"sundial\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("sundial"), "{err}");
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn env_overrides_and_disabling() {
        let mut table: toml::Table = "[outbound.retry]\nmax_attempts = 3\n".parse().unwrap();
        StormwallConfig::apply_env(
            &mut table,
            [
                (
                    "STORMWALL__OUTBOUND__RETRY__MAX_ATTEMPTS".to_owned(),
                    "7".to_owned(),
                ),
                (
                    "STORMWALL__OUTBOUND__CACHE__ENABLED".to_owned(),
                    "false".to_owned(),
                ),
                ("STORMWALL__OUTBOUND__NAME".to_owned(), "billing".to_owned()),
                ("UNRELATED".to_owned(), "x".to_owned()),
            ],
        )
        .unwrap();
        let config = StormwallConfig::deserialize(toml::Value::Table(table)).unwrap();
        let outbound = config.outbound.unwrap();
        assert_eq!(outbound.retry.as_ref().unwrap().max_attempts, Some(7));
        assert_eq!(outbound.name.as_deref(), Some("billing"));
        let stack = outbound.build().unwrap();
        assert!(stack.cache_layer().is_none());
        assert_eq!(stack.circuit_layer().unwrap().name().as_ref(), "billing");
    }
}
