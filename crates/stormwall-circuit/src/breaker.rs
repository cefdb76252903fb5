//! The breaker state machine: pure (it takes `now` as an argument), lock-free and
//! allocation-free per call.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use stormwall_core::time::Epoch;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::config::{BreakerConfig, ConfigError, Window};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::window::{CountWindow, Counts, FAILED, SLOW, TimeWindow};

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum State {
    /// Calls pass and are recorded.
    Closed = 0,
    /// Calls are rejected until the wait is over.
    Open = 1,
    /// A limited number of probes pass; their outcome closes or reopens the breaker.
    HalfOpen = 2,
    /// Manually opened: every call is rejected until the breaker is closed by hand.
    ForcedOpen = 3,
    /// Manually disabled: every call passes, nothing is recorded.
    Disabled = 4,
    /// Manually set: every call passes and is recorded, the breaker never opens.
    MetricsOnly = 5,
}

impl State {
    fn from_bits(b: u64) -> Self {
        match b & 0b111 {
            0 => Self::Closed,
            1 => Self::Open,
            2 => Self::HalfOpen,
            3 => Self::ForcedOpen,
            4 => Self::Disabled,
            _ => Self::MetricsOnly,
        }
    }

    /// A short lower-case name (`"closed"`, `"open"`, `"half_open"`, ...), as used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics_only",
        }
    }

    /// Whether calls are rejected in this state (half-open rejects only beyond its probes).
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open | Self::ForcedOpen)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// State word: state (3 bits) | epoch (13 bits) << 3 | payload (48 bits) << 16.
// Payload: Open = reopen time in µs since `start`; HalfOpen = probes admitted.
const EPOCH_SHIFT: u32 = 3;
const EPOCH_MASK: u64 = (1 << 13) - 1;
const PAYLOAD_SHIFT: u32 = 16;
const PAYLOAD_MAX: u64 = (1 << 48) - 1;

fn word(state: State, epoch: u64, payload: u64) -> u64 {
    state as u64 | (epoch & EPOCH_MASK) << EPOCH_SHIFT | payload.min(PAYLOAD_MAX) << PAYLOAD_SHIFT
}
fn epoch_of(w: u64) -> u64 {
    (w >> EPOCH_SHIFT) & EPOCH_MASK
}
fn payload_of(w: u64) -> u64 {
    w >> PAYLOAD_SHIFT
}

// Half-open results: done (17 bits) | failures << 17 | slow << 34 | epoch << 51.
const H: u32 = 17;
const M17: u64 = (1 << H) - 1;

/// The right to make one call, from [`Breaker::try_acquire`]; hand it back with the outcome to
/// [`Breaker::record`], or to [`Breaker::release`] if the call was abandoned. It is neither
/// `Clone` nor `Copy`, so one call is recorded once.
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    // The 13-bit epoch of the state word: two bytes keep the permit (and the response future
    // that carries it) small.
    epoch: u16,
    kind: State,
}

impl Permit {
    #[inline]
    fn new(epoch: u64, kind: State) -> Self {
        Self {
            epoch: epoch as u16,
            kind,
        }
    }

    #[inline]
    fn epoch(&self) -> u64 {
        self.epoch as u64
    }

    /// The state the call was admitted in.
    pub fn state(&self) -> State {
        self.kind
    }
}

/// A call was rejected because the breaker is open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {name} is {state}; retry in {remaining:?}")]
pub struct CircuitOpen {
    /// How long until the breaker lets a probe through (zero when half-open and all probes
    /// are taken; the wait duration as a hint when forced open).
    pub remaining: Duration,
    /// The state that rejected the call.
    pub state: State,
    /// The breaker's name.
    pub name: Arc<str>,
}

/// A state change, delivered to the transition hook and to [`Breaker::subscribe`]rs.
#[derive(Debug, Clone)]
pub struct StateTransition {
    /// The breaker's name (for keyed breakers `layer-name/key`).
    pub name: Arc<str>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// When.
    pub at: Instant,
    /// The window (or the half-open probes) that led to the change.
    pub counts: Counts,
    /// How long the breaker stays open, when `to` is [`State::Open`].
    pub open_for: Option<Duration>,
}

/// A transition hook: called synchronously by the thread that made the transition.
pub type TransitionHook = Arc<dyn Fn(&StateTransition) + Send + Sync>;

/// A health snapshot of one breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    /// The breaker's name.
    pub name: Arc<str>,
    /// The current state (an open breaker whose wait is over stays `Open` until the next call).
    pub state: State,
    /// The current window (closed and metrics-only states) or the half-open probes' results.
    pub counts: Counts,
    /// Failure rate of `counts`, percent.
    pub failure_rate: f64,
    /// Slow-call rate of `counts`, percent.
    pub slow_call_rate: f64,
    /// Time left before a probe is admitted, when open.
    pub remaining_open: Option<Duration>,
    /// Consecutive failures (consecutive-failures mode).
    pub consecutive_failures: u32,
    /// How many times the breaker opened since it was last closed.
    pub consecutive_opens: u32,
    /// Calls rejected since the breaker was created.
    pub rejected: u64,
    /// Transitions since the breaker was created.
    pub transitions: u64,
}

#[derive(Debug)]
enum WindowImpl {
    Count(CountWindow),
    Time(TimeWindow),
    Consecutive(u32),
}

struct Metrics {
    success: Counter,
    failure: Counter,
    slow: Counter,
    rejected: Counter,
    state: Gauge,
    failure_rate: Gauge,
    slow_rate: Gauge,
}

impl Metrics {
    fn new(name: &Arc<str>) -> Self {
        let n = name.to_string();
        Self {
            success: metrics::counter!("stormwall_circuit_calls_total", "breaker" => n.clone(), "outcome" => "success"),
            failure: metrics::counter!("stormwall_circuit_calls_total", "breaker" => n.clone(), "outcome" => "failure"),
            slow: metrics::counter!("stormwall_circuit_slow_calls_total", "breaker" => n.clone()),
            rejected: metrics::counter!("stormwall_circuit_rejected_total", "breaker" => n.clone()),
            state: metrics::gauge!("stormwall_circuit_state", "breaker" => n.clone()),
            failure_rate: metrics::gauge!("stormwall_circuit_failure_rate", "breaker" => n.clone()),
            slow_rate: metrics::gauge!("stormwall_circuit_slow_call_rate", "breaker" => n),
        }
    }
}

/// Where transitions are reported: an optional hook and a broadcast channel.
#[derive(Clone)]
pub(crate) struct Observers {
    pub(crate) hook: Option<TransitionHook>,
    pub(crate) events: broadcast::Sender<StateTransition>,
}

impl fmt::Debug for Observers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observers")
            .field("hook", &self.hook.is_some())
            .field("subscribers", &self.events.receiver_count())
            .finish()
    }
}

impl Default for Observers {
    fn default() -> Self {
        Self {
            hook: None,
            events: broadcast::channel(64).0,
        }
    }
}

/// One circuit breaker.
///
/// The state machine is usable without the layer: ask [`try_acquire`](Self::try_acquire)
/// before a call and [`record`](Self::record) its outcome, passing the current time. The
/// closed state takes no lock and allocates nothing.
///
/// ```
/// use std::time::Duration;
/// use stormwall_circuit::{Breaker, BreakerConfig, State, Window};
/// use tokio::time::Instant;
///
/// let config = BreakerConfig::new()
///     .window(Window::Count(4))
///     .minimum_calls(4)
///     .wait_duration(Duration::from_secs(5))
///     .permitted_calls_in_half_open(1);
/// let start = Instant::now();
/// let breaker = Breaker::new_at("api", config, start).unwrap();
/// for failed in [false, true, true, false] {
///     let permit = breaker.try_acquire(start).unwrap();
///     breaker.record(permit, failed, false, start);
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let err = breaker.try_acquire(start + Duration::from_secs(1)).unwrap_err();
/// assert_eq!(err.remaining, Duration::from_secs(4));
///
/// let later = start + Duration::from_secs(5);
/// let probe = breaker.try_acquire(later).unwrap();
/// assert_eq!(breaker.state(), State::HalfOpen);
/// assert!(breaker.try_acquire(later).is_err()); // one probe only
/// breaker.record(probe, false, false, later);
/// assert_eq!(breaker.state(), State::Closed);
/// ```
pub struct Breaker {
    name: Arc<str>,
    config: BreakerConfig,
    start: Instant,
    /// `start`, for cheap conversions of instants into seconds since it.
    epoch: Epoch,
    /// Read by every call: kept on its own cache lines, away from the `Arc` reference count
    /// (written by every call) and the window (written when outcomes change).
    word: Padded<AtomicU64>,
    window: Padded<WindowImpl>,
    consecutive: AtomicU32,
    /// 1 + the second of the last failed or slow call recorded in a time window (0: none).
    last_bad_sec: AtomicU64,
    half_open: AtomicU64,
    opens: AtomicU32,
    rejected: AtomicU64,
    transitions: AtomicU64,
    metrics: Metrics,
    observers: Observers,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Breaker {
    /// A closed breaker, started now.
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig) -> Result<Self, ConfigError> {
        Self::new_at(name, config, Instant::now())
    }

    /// A closed breaker whose clock starts at `start` (time windows count seconds from it).
    pub fn new_at(
        name: impl Into<Arc<str>>,
        config: BreakerConfig,
        start: Instant,
    ) -> Result<Self, ConfigError> {
        Self::with_observers(name.into(), config, start, Observers::default())
    }

    pub(crate) fn with_observers(
        name: Arc<str>,
        config: BreakerConfig,
        start: Instant,
        observers: Observers,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let window = match config.window {
            Window::Count(n) => WindowImpl::Count(CountWindow::new(n)),
            Window::Time(n) => WindowImpl::Time(TimeWindow::new(n)),
            Window::ConsecutiveFailures(n) => WindowImpl::Consecutive(n),
        };
        let metrics = Metrics::new(&name);
        metrics.state.set(0.0);
        Ok(Self {
            name,
            config,
            start,
            epoch: Epoch::new(start),
            word: Padded(AtomicU64::new(word(State::Closed, 0, 0))),
            window: Padded(window),
            consecutive: AtomicU32::new(0),
            last_bad_sec: AtomicU64::new(0),
            half_open: AtomicU64::new(0),
            opens: AtomicU32::new(0),
            rejected: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            metrics,
            observers,
        })
    }

    /// The breaker's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_bits(self.word.load(Ordering::Acquire))
    }

    /// Whether [`record`](Self::record) needs a real `now` (time windows and slow-call
    /// detection); otherwise the layer does not read the clock on the closed path.
    pub fn needs_clock(&self) -> bool {
        matches!(self.window.0, WindowImpl::Time(_)) || self.config.slow_call_duration.is_some()
    }

    /// Subscribes to state transitions.
    pub fn subscribe(&self) -> broadcast::Receiver<StateTransition> {
        self.observers.events.subscribe()
    }

    /// Whole seconds from the breaker's start to `now` (0 before it): a time window needs this
    /// on every call, so it goes through the start's [`Epoch`] (a few instructions) rather than
    /// an `Instant` subtraction.
    #[inline]
    fn secs(&self, now: Instant) -> u64 {
        self.epoch.nanos_to(now) / 1_000_000_000
    }

    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_micros() as u64
    }

    /// Asks to make a call at `now`.
    #[inline]
    pub fn try_acquire(&self, now: Instant) -> Result<Permit, CircuitOpen> {
        self.try_acquire_with(|| now)
    }

    /// [`try_acquire`](Self::try_acquire) reading the clock only when the state needs it.
    #[inline]
    pub(crate) fn try_acquire_with(
        &self,
        now: impl Fn() -> Instant,
    ) -> Result<Permit, CircuitOpen> {
        let mut w = self.word.load(Ordering::Acquire);
        let state = State::from_bits(w);
        if let State::Closed | State::Disabled | State::MetricsOnly = state {
            return Ok(Permit::new(epoch_of(w), state));
        }
        self.try_acquire_slow(&mut w, now())
    }

    #[cold]
    fn try_acquire_slow(&self, w: &mut u64, now: Instant) -> Result<Permit, CircuitOpen> {
        loop {
            let state = State::from_bits(*w);
            let epoch = epoch_of(*w);
            match state {
                State::Closed | State::Disabled | State::MetricsOnly => {
                    return Ok(Permit::new(epoch, state));
                }
                State::ForcedOpen => {
                    return Err(self.reject(state, self.config.wait.wait(1)));
                }
                State::Open => {
                    let until = payload_of(*w);
                    let now_us = self.micros(now);
                    if now_us < until {
                        return Err(self.reject(state, Duration::from_micros(until - now_us)));
                    }
                    let next = word(State::HalfOpen, epoch + 1, 1);
                    match self
                        .word
                        .compare_exchange(*w, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            self.after_transition(
                                State::Open,
                                State::HalfOpen,
                                now,
                                Counts::default(),
                                None,
                            );
                            return Ok(Permit::new(epoch_of(next), State::HalfOpen));
                        }
                        Err(actual) => *w = actual,
                    }
                }
                State::HalfOpen => {
                    let issued = payload_of(*w);
                    if issued >= self.config.permitted_calls_in_half_open as u64 {
                        return Err(self.reject(state, Duration::ZERO));
                    }
                    let next = word(State::HalfOpen, epoch, issued + 1);
                    match self
                        .word
                        .compare_exchange(*w, next, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => {
                            return Ok(Permit::new(epoch, State::HalfOpen));
                        }
                        Err(actual) => *w = actual,
                    }
                }
            }
        }
    }

    fn reject(&self, state: State, remaining: Duration) -> CircuitOpen {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.metrics.rejected.increment(1);
        tracing::debug!(breaker = %self.name, %state, ?remaining, "circuit breaker rejected a call");
        CircuitOpen {
            remaining,
            state,
            name: self.name.clone(),
        }
    }

    /// Hands back a permit whose call was abandoned (its future dropped): a half-open probe
    /// slot is freed for another caller; nothing is recorded.
    pub fn release(&self, permit: Permit) {
        if permit.kind != State::HalfOpen {
            return;
        }
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            if State::from_bits(w) != State::HalfOpen || epoch_of(w) != permit.epoch() {
                return;
            }
            let issued = payload_of(w);
            if issued == 0 {
                return;
            }
            let next = word(State::HalfOpen, permit.epoch(), issued - 1);
            match self
                .word
                .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => w = actual,
            }
        }
    }

    /// Records the outcome of a call admitted by `permit`, at `now`. `slow` is whether the call
    /// took at least the configured slow-call duration (the layer measures it).
    #[inline]
    pub fn record(&self, permit: Permit, failed: bool, slow: bool, now: Instant) {
        self.record_with(permit, failed, slow, || now)
    }

    /// The closed-state path of [`record`](Self::record), inline and small: a success into a
    /// count window full of successes changes nothing, and a success into a time window is
    /// counted and evaluated only when the window holds a failed or slow call. Everything else
    /// (failures, half-open probes, consecutive-failures mode, a trip) is out of line.
    #[inline]
    pub(crate) fn record_with(
        &self,
        permit: Permit,
        failed: bool,
        slow: bool,
        now: impl Fn() -> Instant,
    ) {
        if permit.kind == State::Disabled {
            return;
        }
        if failed {
            self.metrics.failure.increment(1);
        } else {
            self.metrics.success.increment(1);
        }
        if slow {
            self.metrics.slow.increment(1);
        }
        if !failed && !slow && matches!(permit.kind, State::Closed | State::MetricsOnly) {
            match &self.window.0 {
                // Whatever the epoch: the outcome would be dropped, or would change nothing.
                WindowImpl::Count(cw) if cw.full_of_successes() => return,
                WindowImpl::Time(tw) => {
                    let w = self.word.load(Ordering::Acquire);
                    if epoch_of(w) != permit.epoch() {
                        return;
                    }
                    let sec = self.secs(now());
                    // A success is counted, then the failure flag read (see `record_outcome`).
                    tw.record(sec, 0);
                    let last = self.last_bad_sec.load(Ordering::Acquire);
                    if last == 0 || last - 1 + tw.secs() <= sec {
                        // No failure or slow call in the window: a success cannot trip it.
                        return;
                    }
                    return self.evaluate_time_window(permit, w, sec, 0, now);
                }
                _ => {}
            }
        }
        self.record_outcome(permit, failed, slow, now);
    }

    /// The rest of [`record_with`](Self::record_with) (metrics already counted).
    #[inline(never)]
    fn record_outcome(&self, permit: Permit, failed: bool, slow: bool, now: impl Fn() -> Instant) {
        let w = self.word.load(Ordering::Acquire);
        if epoch_of(w) != permit.epoch() {
            // Admitted before the last transition: its outcome belongs to another period.
            return;
        }
        let bits = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        match permit.kind {
            State::HalfOpen => self.record_probe(permit, bits, now()),
            State::Closed | State::MetricsOnly => {
                let counts = match &self.window.0 {
                    WindowImpl::Count(cw) => cw.record(bits),
                    WindowImpl::Time(tw) => {
                        let sec = self.secs(now());
                        // A success that finds no failure flagged skips the evaluation, so a
                        // failure must be flagged before it is counted: then either the
                        // success's bucket update reads the failure's (and with it the flag:
                        // it evaluates), or the failure's reads the success's (the failure
                        // evaluates with it). Same second, same bucket word: no fence. (Flag
                        // after count, with acquire/release, both could read stale values and
                        // nobody trips: found by the loom model
                        // `loom_time_window_trips_exactly_once`.) Across a second boundary the
                        // two updates touch different buckets; on a weakly ordered CPU the
                        // trip may then wait for the next call.
                        if bits != 0 {
                            self.last_bad_sec.fetch_max(sec + 1, Ordering::AcqRel);
                            tw.record(sec, bits);
                        } else {
                            tw.record(sec, bits);
                            let last = self.last_bad_sec.load(Ordering::Acquire);
                            if last == 0 || last - 1 + tw.secs() <= sec {
                                // No failure or slow call in the window: a success cannot
                                // trip it, so the buckets need not be read.
                                return;
                            }
                        }
                        return self.evaluate_time_window(permit, w, sec, bits, now);
                    }
                    WindowImpl::Consecutive(n) => {
                        if bits != 0 {
                            let run = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                            if run >= *n && permit.kind == State::Closed {
                                let c = Counts {
                                    calls: run as u64,
                                    failures: run as u64,
                                    slow: 0,
                                };
                                self.trip(w, State::Closed, now(), c);
                            }
                        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
                            self.consecutive.store(0, Ordering::Release);
                        }
                        return;
                    }
                };
                let Some(counts) = counts else { return };
                self.publish_and_check(permit.kind, w, bits, counts, now);
            }
            State::Open | State::ForcedOpen | State::Disabled => {}
        }
    }

    /// Reads a time window at `sec` after a record and trips the breaker if it is over a
    /// threshold.
    #[cold]
    #[inline(never)]
    fn evaluate_time_window(
        &self,
        permit: Permit,
        w: u64,
        sec: u64,
        bits: u8,
        now: impl Fn() -> Instant,
    ) {
        let WindowImpl::Time(tw) = &self.window.0 else {
            return;
        };
        self.publish_and_check(permit.kind, w, bits, tw.counts(sec), now);
    }

    /// After a record: publishes the window's rates if the call failed or was slow (`bits`),
    /// and trips a closed breaker whose window is over a threshold.
    #[inline]
    fn publish_and_check(
        &self,
        kind: State,
        w: u64,
        bits: u8,
        counts: Counts,
        now: impl Fn() -> Instant,
    ) {
        if bits != 0 {
            self.metrics.failure_rate.set(counts.failure_rate());
            self.metrics.slow_rate.set(counts.slow_rate());
        }
        if kind == State::Closed && self.over_threshold(&counts, self.config.minimum_calls as u64) {
            self.trip(w, State::Closed, now(), counts);
        }
    }

    #[inline]
    fn over_threshold(&self, c: &Counts, minimum: u64) -> bool {
        // failures / calls * 100 >= threshold, without a division.
        let calls = c.calls as f64;
        c.calls >= minimum
            && c.calls > 0
            && (c.failures as f64 * 100.0 >= self.config.failure_rate_threshold * calls
                || (self.config.slow_call_duration.is_some()
                    && c.slow as f64 * 100.0 >= self.config.slow_call_rate_threshold * calls))
    }

    #[cold]
    fn record_probe(&self, permit: Permit, bits: u8, now: Instant) {
        let add =
            1 | (((bits & FAILED) >> 1) as u64) << H | (((bits & SLOW) >> 2) as u64) << (2 * H);
        let tag = permit.epoch() << (3 * H);
        let mut cur = self.half_open.load(Ordering::Acquire);
        let after = loop {
            let base = if cur >> (3 * H) == permit.epoch() {
                cur
            } else {
                tag
            };
            let next = base + add;
            match self.half_open.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break next,
                Err(actual) => cur = actual,
            }
        };
        let c = Counts {
            calls: after & M17,
            failures: (after >> H) & M17,
            slow: (after >> (2 * H)) & M17,
        };
        if c.calls < self.config.permitted_calls_in_half_open as u64 {
            return;
        }
        let w = self.word.load(Ordering::Acquire);
        if State::from_bits(w) != State::HalfOpen || epoch_of(w) != permit.epoch() {
            return;
        }
        if self.over_threshold(&c, 1) {
            self.trip(w, State::HalfOpen, now, c);
        } else {
            let next = word(State::Closed, epoch_of(w) + 1, 0);
            if self
                .word
                .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.opens.store(0, Ordering::Release);
                self.after_transition(State::HalfOpen, State::Closed, now, c, None);
            }
        }
    }

    /// Closed or half-open → open (only from the exact word `w`).
    #[cold]
    fn trip(&self, w: u64, from: State, now: Instant, counts: Counts) {
        if State::from_bits(w) != from {
            return;
        }
        let opens = self.opens.load(Ordering::Acquire).saturating_add(1);
        let wait = self.open_duration(opens);
        let until = self.micros(now).saturating_add(ceil_micros(wait));
        let next = word(State::Open, epoch_of(w) + 1, until);
        if self
            .word
            .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.opens.store(opens, Ordering::Release);
            self.after_transition(from, State::Open, now, counts, Some(wait));
        }
    }

    fn open_duration(&self, opens: u32) -> Duration {
        self.config
            .wait
            .wait(opens)
            .clamp(Duration::from_micros(1), Duration::from_secs(365 * 86_400))
    }

    fn after_transition(
        &self,
        from: State,
        to: State,
        now: Instant,
        counts: Counts,
        open_for: Option<Duration>,
    ) {
        // Every period starts with a clean window.
        match &self.window.0 {
            WindowImpl::Count(cw) => cw.reset(),
            WindowImpl::Time(tw) => tw.reset(),
            WindowImpl::Consecutive(_) => {}
        }
        self.consecutive.store(0, Ordering::Release);
        self.last_bad_sec.store(0, Ordering::Release);
        self.transitions.fetch_add(1, Ordering::Relaxed);
        self.metrics.state.set(to as u8 as f64);
        self.metrics.failure_rate.set(counts.failure_rate());
        self.metrics.slow_rate.set(counts.slow_rate());
        metrics::counter!(
            "stormwall_circuit_transitions_total",
            "breaker" => self.name.to_string(),
            "from" => from.as_str(),
            "to" => to.as_str()
        )
        .increment(1);
        if to == State::Open {
            tracing::warn!(breaker = %self.name, %from, ?open_for, failures = counts.failures, slow = counts.slow, calls = counts.calls, "circuit breaker opened");
        } else {
            tracing::info!(breaker = %self.name, %from, %to, "circuit breaker state change");
        }
        let event = StateTransition {
            name: self.name.clone(),
            from,
            to,
            at: now,
            counts,
            open_for,
        };
        if let Some(hook) = &self.observers.hook {
            hook(&event);
        }
        let _ = self.observers.events.send(event);
    }

    fn force(&self, to: State, now: Instant) {
        let mut w = self.word.load(Ordering::Acquire);
        loop {
            let from = State::from_bits(w);
            if from == to {
                return;
            }
            let next = word(to, epoch_of(w) + 1, 0);
            match self
                .word
                .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if to == State::Closed {
                        self.opens.store(0, Ordering::Release);
                    }
                    self.after_transition(from, to, now, Counts::default(), None);
                    return;
                }
                Err(actual) => w = actual,
            }
        }
    }

    /// Forces the breaker open: every call is rejected until [`close`](Self::close).
    pub fn force_open(&self) {
        self.force(State::ForcedOpen, Instant::now());
    }

    /// Disables the breaker: every call passes, nothing is recorded.
    pub fn disable(&self) {
        self.force(State::Disabled, Instant::now());
    }

    /// Records calls but never opens.
    pub fn metrics_only(&self) {
        self.force(State::MetricsOnly, Instant::now());
    }

    /// Closes the breaker with a clean window (from any state).
    pub fn close(&self) {
        self.force(State::Closed, Instant::now());
    }

    /// The breaker's health at `now`.
    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let w = self.word.load(Ordering::Acquire);
        let state = State::from_bits(w);
        let counts = match state {
            State::HalfOpen => {
                let h = self.half_open.load(Ordering::Acquire);
                if h >> (3 * H) == epoch_of(w) {
                    Counts {
                        calls: h & M17,
                        failures: (h >> H) & M17,
                        slow: (h >> (2 * H)) & M17,
                    }
                } else {
                    Counts::default()
                }
            }
            _ => match &self.window.0 {
                WindowImpl::Count(cw) => cw.counts().unwrap_or_default(),
                WindowImpl::Time(tw) => tw.counts(self.secs(now)),
                WindowImpl::Consecutive(_) => Counts::default(),
            },
        };
        let remaining_open = (state == State::Open)
            .then(|| Duration::from_micros(payload_of(w).saturating_sub(self.micros(now))));
        BreakerSnapshot {
            name: self.name.clone(),
            state,
            counts,
            failure_rate: counts.failure_rate(),
            slow_call_rate: counts.slow_rate(),
            remaining_open,
            consecutive_failures: self.consecutive.load(Ordering::Acquire),
            consecutive_opens: self.opens.load(Ordering::Acquire),
            rejected: self.rejected.load(Ordering::Relaxed),
            transitions: self.transitions.load(Ordering::Relaxed),
        }
    }
}

/// Aligned to 128 bytes (two cache lines, for adjacent-line prefetchers) against false sharing.
#[derive(Debug)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

fn ceil_micros(d: Duration) -> u64 {
    let us = d.as_micros();
    let us = if !d.subsec_nanos().is_multiple_of(1_000) {
        us + 1
    } else {
        us
    };
    us.min(PAYLOAD_MAX as u128) as u64
}
