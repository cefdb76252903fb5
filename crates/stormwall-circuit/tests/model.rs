//! Property test: random call sequences through the breaker and through a simple reference
//! model (a `VecDeque` window, plain fields) must agree on every decision and every state.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use stormwall_circuit::{Breaker, BreakerConfig, Permit, State, WaitStrategy, Window};
use tokio::time::Instant;

#[derive(Debug, Clone)]
enum Op {
    /// Let time pass.
    Advance(u32),
    /// Acquire a permit and keep it pending.
    Acquire,
    /// Complete the pending permit at this index (modulo the pending count).
    Complete {
        idx: usize,
        failed: bool,
        slow: bool,
    },
    /// Abandon a pending permit.
    Abandon(usize),
    /// Acquire and complete at once.
    Call { failed: bool, slow: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u32..3_000).prop_map(Op::Advance),
        2 => Just(Op::Acquire),
        3 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(|(idx, failed, slow)| Op::Complete { idx, failed, slow }),
        1 => any::<usize>().prop_map(Op::Abandon),
        6 => (any::<bool>(), any::<bool>()).prop_map(|(failed, slow)| Op::Call { failed, slow }),
    ]
}

#[derive(Debug, Clone)]
struct Params {
    window: Window,
    minimum_calls: u32,
    failure_rate: f64,
    slow: Option<f64>,
    wait: WaitStrategy,
    permitted: u32,
}

fn params() -> impl Strategy<Value = Params> {
    let window = prop_oneof![
        (1u32..12).prop_map(Window::Count),
        (1u32..5).prop_map(Window::Time),
        (1u32..5).prop_map(Window::ConsecutiveFailures),
    ];
    let wait = prop_oneof![
        (1u64..5_000).prop_map(|ms| WaitStrategy::Fixed(Duration::from_millis(ms))),
        (1u64..2_000, 1u32..4, 2_000u64..10_000).prop_map(|(b, m, max)| {
            WaitStrategy::Exponential {
                base: Duration::from_millis(b),
                multiplier: m as f64,
                max: Duration::from_millis(max),
            }
        }),
    ];
    (
        window,
        1u32..12,
        1u32..=100,
        proptest::option::of(1u32..=100),
        wait,
        1u32..4,
    )
        .prop_map(|(window, min, fr, slow, wait, permitted)| {
            let minimum_calls = match window {
                Window::Count(n) => min.min(n),
                _ => min,
            };
            Params {
                window,
                minimum_calls,
                failure_rate: fr as f64,
                slow: slow.map(|s| s as f64),
                wait,
                permitted,
            }
        })
}

/// The reference: obviously correct, slow, single-threaded.
struct Model {
    p: Params,
    state: State,
    epoch: u64,
    count: VecDeque<(bool, bool)>,
    timed: Vec<(u64, bool, bool)>,
    run: u32,
    until_us: u64,
    opens: u32,
    issued: u32,
    probes: Vec<(bool, bool)>,
}

fn ceil_us(d: Duration) -> u64 {
    let us = d.as_micros() as u64;
    if !d.subsec_nanos().is_multiple_of(1_000) {
        us + 1
    } else {
        us
    }
}

impl Model {
    fn new(p: Params) -> Self {
        Self {
            p,
            state: State::Closed,
            epoch: 0,
            count: VecDeque::new(),
            timed: Vec::new(),
            run: 0,
            until_us: 0,
            opens: 0,
            issued: 0,
            probes: Vec::new(),
        }
    }

    fn over(&self, calls: u64, failures: u64, slow: u64, minimum: u64) -> bool {
        if calls < minimum || calls == 0 {
            return false;
        }
        let fr = failures as f64 * 100.0 / calls as f64;
        let sr = slow as f64 * 100.0 / calls as f64;
        fr >= self.p.failure_rate || self.p.slow.is_some_and(|t| sr >= t)
    }

    fn transition(&mut self, to: State) {
        self.state = to;
        self.epoch += 1;
        self.count.clear();
        self.timed.clear();
        self.run = 0;
    }

    fn trip(&mut self, now_us: u64) {
        self.opens += 1;
        let wait = self.p.wait.wait(self.opens).max(Duration::from_micros(1));
        self.until_us = now_us + ceil_us(wait);
        self.transition(State::Open);
    }

    fn acquire(&mut self, now_us: u64) -> Result<u64, Duration> {
        match self.state {
            State::Closed => Ok(self.epoch),
            State::Open if now_us < self.until_us => {
                Err(Duration::from_micros(self.until_us - now_us))
            }
            State::Open => {
                self.transition(State::HalfOpen);
                self.issued = 1;
                self.probes.clear();
                Ok(self.epoch)
            }
            State::HalfOpen if self.issued >= self.p.permitted => Err(Duration::ZERO),
            State::HalfOpen => {
                self.issued += 1;
                Ok(self.epoch)
            }
            s => unreachable!("model never enters {s:?}"),
        }
    }

    fn abandon(&mut self, epoch: u64) {
        if self.state == State::HalfOpen && epoch == self.epoch {
            self.issued -= 1;
        }
    }

    fn record(&mut self, epoch: u64, failed: bool, slow: bool, now_us: u64) {
        if epoch != self.epoch {
            return;
        }
        match self.state {
            State::Closed => match self.p.window {
                Window::Count(n) => {
                    self.count.push_back((failed, slow));
                    if self.count.len() > n as usize {
                        self.count.pop_front();
                    }
                    let calls = self.count.len() as u64;
                    let f = self.count.iter().filter(|c| c.0).count() as u64;
                    let s = self.count.iter().filter(|c| c.1).count() as u64;
                    if self.over(calls, f, s, self.p.minimum_calls as u64) {
                        self.trip(now_us);
                    }
                }
                Window::Time(n) => {
                    let sec = now_us / 1_000_000;
                    self.timed.push((sec, failed, slow));
                    self.timed.retain(|c| c.0 + n as u64 > sec);
                    let calls = self.timed.len() as u64;
                    let f = self.timed.iter().filter(|c| c.1).count() as u64;
                    let s = self.timed.iter().filter(|c| c.2).count() as u64;
                    if self.over(calls, f, s, self.p.minimum_calls as u64) {
                        self.trip(now_us);
                    }
                }
                Window::ConsecutiveFailures(n) => {
                    if failed || slow {
                        self.run += 1;
                        if self.run >= n {
                            self.trip(now_us);
                        }
                    } else {
                        self.run = 0;
                    }
                }
            },
            State::HalfOpen => {
                self.probes.push((failed, slow));
                if self.probes.len() as u32 == self.p.permitted {
                    let calls = self.probes.len() as u64;
                    let f = self.probes.iter().filter(|c| c.0).count() as u64;
                    let s = self.probes.iter().filter(|c| c.1).count() as u64;
                    if self.over(calls, f, s, 1) {
                        self.trip(now_us);
                    } else {
                        self.opens = 0;
                        self.transition(State::Closed);
                    }
                }
            }
            _ => {}
        }
    }
}

fn run(p: Params, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut config = BreakerConfig::new()
        .window(p.window)
        .minimum_calls(p.minimum_calls)
        .failure_rate_threshold(p.failure_rate)
        .wait_strategy(p.wait.clone())
        .permitted_calls_in_half_open(p.permitted);
    if let Some(s) = p.slow {
        config = config.slow_call(Duration::from_millis(100), s);
    }
    let start = Instant::now();
    let breaker = Breaker::new_at("model", config, start).unwrap();
    let mut model = Model::new(p);
    let mut now_us: u64 = 0;
    let mut pending: Vec<(Permit, u64)> = Vec::new();
    for op in ops {
        let now = start + Duration::from_micros(now_us);
        match op {
            Op::Advance(ms) => now_us += ms as u64 * 1_000 + 7,
            Op::Acquire => {
                let real = breaker.try_acquire(now);
                let expected = model.acquire(now_us);
                prop_assert_eq!(real.is_ok(), expected.is_ok(), "acquire at {}", now_us);
                match (real, expected) {
                    (Ok(permit), Ok(epoch)) => pending.push((permit, epoch)),
                    (Err(e), Err(remaining)) => prop_assert_eq!(e.remaining, remaining),
                    _ => unreachable!(),
                }
            }
            Op::Complete { idx, failed, slow } if !pending.is_empty() => {
                let (permit, epoch) = pending.swap_remove(idx % pending.len());
                breaker.record(permit, failed, slow, now);
                model.record(epoch, failed, slow, now_us);
            }
            Op::Abandon(idx) if !pending.is_empty() => {
                let (permit, epoch) = pending.swap_remove(idx % pending.len());
                breaker.release(permit);
                model.abandon(epoch);
            }
            Op::Complete { .. } | Op::Abandon(_) => {}
            Op::Call { failed, slow } => {
                let real = breaker.try_acquire(now);
                let expected = model.acquire(now_us);
                prop_assert_eq!(real.is_ok(), expected.is_ok(), "call at {}", now_us);
                if let (Ok(permit), Ok(epoch)) = (real, expected) {
                    breaker.record(permit, failed, slow, now);
                    model.record(epoch, failed, slow, now_us);
                }
            }
        }
        prop_assert_eq!(breaker.state(), model.state);
    }
    Ok(())
}

fn cases() -> u32 {
    if std::env::var("STORMWALL_EXTENDED").is_ok() {
        100_000
    } else {
        10_000
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_reference_model(p in params(), ops in proptest::collection::vec(op(), 1..120)) {
        run(p, ops)?;
    }
}
