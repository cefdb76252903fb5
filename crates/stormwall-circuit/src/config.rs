//! Breaker configuration and its validation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Largest count-based window (calls) and largest number of half-open probes.
pub const MAX_WINDOW_CALLS: u32 = 1 << 20;
/// Largest time-based window, in seconds.
pub const MAX_WINDOW_SECS: u32 = 3_600;
/// Largest number of calls admitted in the half-open state.
pub const MAX_HALF_OPEN_CALLS: u32 = 65_535;

/// What a breaker counts to decide whether to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `n` seconds, kept as a ring of per-second buckets.
    Time(u32),
    /// Open after `n` failures in a row (rates and `minimum_calls` are not used while closed).
    ConsecutiveFailures(u32),
}

/// How long the breaker stays open, by how many times it has opened in a row (1 for the first
/// open since it was last closed).
#[derive(Clone)]
pub enum WaitStrategy {
    /// Always the same duration.
    Fixed(Duration),
    /// `base * multiplier^(opens - 1)`, capped at `max`.
    Exponential {
        /// The first wait.
        base: Duration,
        /// The growth factor (≥ 1).
        multiplier: f64,
        /// The longest wait.
        max: Duration,
    },
    /// Any function of the number of consecutive opens.
    Custom(Arc<dyn Fn(u32) -> Duration + Send + Sync>),
}

impl fmt::Debug for WaitStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(d) => f.debug_tuple("Fixed").field(d).finish(),
            Self::Exponential {
                base,
                multiplier,
                max,
            } => f
                .debug_struct("Exponential")
                .field("base", base)
                .field("multiplier", multiplier)
                .field("max", max)
                .finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

impl WaitStrategy {
    /// The wait for the `opens`-th consecutive open (1-based).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_circuit::WaitStrategy;
    ///
    /// let s = WaitStrategy::Exponential {
    ///     base: Duration::from_secs(1),
    ///     multiplier: 2.0,
    ///     max: Duration::from_secs(5),
    /// };
    /// assert_eq!(s.wait(1), Duration::from_secs(1));
    /// assert_eq!(s.wait(3), Duration::from_secs(4));
    /// assert_eq!(s.wait(10), Duration::from_secs(5));
    /// ```
    pub fn wait(&self, opens: u32) -> Duration {
        match self {
            Self::Fixed(d) => *d,
            Self::Exponential {
                base,
                multiplier,
                max,
            } => {
                let exp = opens.saturating_sub(1).min(1_000) as i32;
                let secs = base.as_secs_f64() * multiplier.powi(exp);
                if !secs.is_finite() || secs >= max.as_secs_f64() {
                    *max
                } else {
                    Duration::from_secs_f64(secs).min(*max)
                }
            }
            Self::Custom(f) => f(opens.max(1)),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A rate threshold outside `(0, 100]`.
    #[error("{name} must be in (0, 100] percent, got {value}")]
    Threshold {
        /// Which threshold.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// A window of zero or of more than the maximum size.
    #[error("window size must be in 1..={max}, got {value}")]
    Window {
        /// The size given.
        value: u32,
        /// The largest allowed.
        max: u32,
    },
    /// `minimum_calls` of zero or larger than a count window (the breaker could never open).
    #[error("minimum_calls must be in 1..={max}, got {value}")]
    MinimumCalls {
        /// The value given.
        value: u32,
        /// The largest allowed.
        max: u32,
    },
    /// `permitted_calls_in_half_open` outside `1..=65535`.
    #[error("permitted_calls_in_half_open must be in 1..={max}, got {value}", max = MAX_HALF_OPEN_CALLS)]
    HalfOpenCalls {
        /// The value given.
        value: u32,
    },
    /// A zero or exponential strategy with a multiplier below 1, or a wait longer than a year.
    #[error("invalid wait duration: {0}")]
    Wait(&'static str),
    /// Zero `max_keys` for keyed breakers.
    #[error("max_keys must be at least 1")]
    MaxKeys,
}

/// The settings of one breaker. Built with setters by value and checked by
/// [`BreakerConfig::validate`] (the layer calls it for you).
///
/// Defaults (Resilience4j's): count window of 100 calls, `minimum_calls` 100, failure rate
/// threshold 50 %, no slow-call detection, wait 60 s, 10 half-open probes.
///
/// ```
/// use std::time::Duration;
/// use stormwall_circuit::{BreakerConfig, Window};
///
/// let config = BreakerConfig::new()
///     .window(Window::Time(30))
///     .minimum_calls(20)
///     .failure_rate_threshold(25.0)
///     .slow_call(Duration::from_secs(2), 80.0)
///     .wait_duration(Duration::from_secs(10))
///     .permitted_calls_in_half_open(3);
/// assert!(config.validate().is_ok());
/// assert!(BreakerConfig::new().failure_rate_threshold(0.0).validate().is_err());
/// ```
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate_threshold: f64,
    pub(crate) slow_call_duration: Option<Duration>,
    pub(crate) slow_call_rate_threshold: f64,
    pub(crate) wait: WaitStrategy,
    pub(crate) permitted_calls_in_half_open: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl BreakerConfig {
    /// The default configuration (see the type docs).
    pub fn new() -> Self {
        Self {
            window: Window::Count(100),
            minimum_calls: 100,
            failure_rate_threshold: 50.0,
            slow_call_duration: None,
            slow_call_rate_threshold: 100.0,
            wait: WaitStrategy::Fixed(Duration::from_secs(60)),
            permitted_calls_in_half_open: 10,
        }
    }

    /// The window the rates are computed over.
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// How many calls the window must hold before the rates are judged.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// Open when the failure rate (percent) is at least this.
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.failure_rate_threshold = percent;
        self
    }

    /// Calls taking at least `duration` are slow; open when the slow-call rate (percent) is at
    /// least `rate_percent`.
    pub fn slow_call(mut self, duration: Duration, rate_percent: f64) -> Self {
        self.slow_call_duration = Some(duration);
        self.slow_call_rate_threshold = rate_percent;
        self
    }

    /// A fixed open duration.
    pub fn wait_duration(mut self, wait: Duration) -> Self {
        self.wait = WaitStrategy::Fixed(wait);
        self
    }

    /// A growing open duration.
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// How many probes the half-open state admits (the rest are rejected, not queued).
    pub fn permitted_calls_in_half_open(mut self, n: u32) -> Self {
        self.permitted_calls_in_half_open = n;
        self
    }

    /// The slow-call duration, if slow calls are detected.
    pub fn slow_call_duration(&self) -> Option<Duration> {
        self.slow_call_duration
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate_ok = |v: f64| v > 0.0 && v <= 100.0;
        if !rate_ok(self.failure_rate_threshold) {
            return Err(ConfigError::Threshold {
                name: "failure_rate_threshold",
                value: self.failure_rate_threshold,
            });
        }
        if !rate_ok(self.slow_call_rate_threshold) {
            return Err(ConfigError::Threshold {
                name: "slow_call_rate_threshold",
                value: self.slow_call_rate_threshold,
            });
        }
        let (size, max) = match self.window {
            Window::Count(n) | Window::ConsecutiveFailures(n) => (n, MAX_WINDOW_CALLS),
            Window::Time(n) => (n, MAX_WINDOW_SECS),
        };
        if size == 0 || size > max {
            return Err(ConfigError::Window { value: size, max });
        }
        let min_max = match self.window {
            Window::Count(n) => n,
            _ => u32::MAX,
        };
        if self.minimum_calls == 0 || self.minimum_calls > min_max {
            return Err(ConfigError::MinimumCalls {
                value: self.minimum_calls,
                max: min_max,
            });
        }
        if self.permitted_calls_in_half_open == 0
            || self.permitted_calls_in_half_open > MAX_HALF_OPEN_CALLS
        {
            return Err(ConfigError::HalfOpenCalls {
                value: self.permitted_calls_in_half_open,
            });
        }
        const YEAR: Duration = Duration::from_secs(365 * 86_400);
        match &self.wait {
            WaitStrategy::Fixed(d) => {
                if d.is_zero() || *d > YEAR {
                    return Err(ConfigError::Wait("must be in (0, 1 year]"));
                }
            }
            WaitStrategy::Exponential {
                base,
                multiplier,
                max,
            } => {
                if base.is_zero() || *max > YEAR || max < base {
                    return Err(ConfigError::Wait("need 0 < base <= max <= 1 year"));
                }
                if !(multiplier.is_finite() && *multiplier >= 1.0) {
                    return Err(ConfigError::Wait("multiplier must be finite and >= 1"));
                }
            }
            WaitStrategy::Custom(_) => {}
        }
        Ok(())
    }
}
