//! Loom model checks of the lock-free state: every interleaving (up to `LOOM_MAX_PREEMPTIONS`
//! preemptions, see `scripts/loom`) of two or three threads acquiring, recording and releasing.
//!
//! `RUSTFLAGS="--cfg stormwall_loom" cargo test -p stormwall-circuit --release --lib -- loom_`
//!
//! The state machine takes `now` as an argument, so the models pass instants instead of
//! reading a clock; windows and counters are small so that the search stays bounded.

use std::time::Duration;

use loom::sync::Arc;
use loom::sync::atomic::AtomicUsize;
use loom::thread;
use tokio::time::Instant;

use crate::breaker::{Breaker, State};
use crate::config::{BreakerConfig, Window};
use crate::window::{CountWindow, Counts, FAILED, SLOW, TimeWindow};

const WAIT: Duration = Duration::from_secs(10);

/// A breaker with a count window of 2 (both calls needed, trips at 50 % failures), opened by
/// two failures at `start`; its wait is over at `start + WAIT`.
fn opened(permitted: u32, start: Instant) -> Breaker {
    let config = BreakerConfig::new()
        .window(Window::Count(2))
        .minimum_calls(2)
        .failure_rate_threshold(50.0)
        .wait_duration(WAIT)
        .permitted_calls_in_half_open(permitted);
    let b = Breaker::new_at("loom", config, start).unwrap();
    for _ in 0..2 {
        let p = b.try_acquire(start).unwrap();
        b.record(p, true, false, start);
    }
    assert_eq!(b.state(), State::Open);
    b
}

fn transitions(b: &Breaker, now: Instant) -> u64 {
    b.snapshot(now).transitions
}

/// (a) Three callers race for two half-open probes: exactly two are admitted as probes (the
/// third is rejected, or admitted as a closed call once the probes closed the breaker), and
/// two successful probes close it.
#[test]
fn loom_half_open_admits_at_most_permitted_probes() {
    loom::model(|| {
        let start = Instant::now();
        let later = start + WAIT;
        let b = Arc::new(opened(2, start));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || match b.try_acquire(later) {
                    Ok(p) => {
                        let state = p.state();
                        b.record(p, false, false, later);
                        Some(state)
                    }
                    Err(open) => {
                        assert_eq!(open.state, State::HalfOpen);
                        None
                    }
                })
            })
            .collect();
        let admitted: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let probes = admitted
            .iter()
            .filter(|s| **s == Some(State::HalfOpen))
            .count();
        assert_eq!(probes, 2, "{admitted:?}");
        for s in &admitted {
            assert!(matches!(s, None | Some(State::HalfOpen | State::Closed)));
        }
        assert_eq!(b.state(), State::Closed);
        // closed → open, open → half-open, half-open → closed: each exactly once.
        assert_eq!(transitions(&b, later), 3);
    });
}

/// (a') Abandoned probes hand their slot back, and the slots in use never exceed the permitted
/// probes: with one probe permitted and two callers that each take one, give it back and try
/// again, no two probes are ever outstanding.
#[test]
fn loom_half_open_release_never_exceeds_permitted() {
    loom::model(|| {
        let start = Instant::now();
        let later = start + WAIT;
        let b = Arc::new(opened(1, start));
        // Probes held right now, as counted by the callers (never more than the breaker's).
        let held = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                let held = held.clone();
                thread::spawn(move || {
                    let mut probes = 0;
                    for _ in 0..2 {
                        if let Ok(p) = b.try_acquire(later) {
                            assert_eq!(p.state(), State::HalfOpen);
                            let before = held.fetch_add(1, loom::sync::atomic::Ordering::SeqCst);
                            assert_eq!(before, 0, "two probes outstanding");
                            held.fetch_sub(1, loom::sync::atomic::Ordering::SeqCst);
                            b.release(p);
                            probes += 1;
                        }
                    }
                    probes
                })
            })
            .collect();
        let probes: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        // The first attempt of whoever comes first always succeeds.
        assert!(probes >= 1);
        // Every probe was handed back: the breaker is still half-open with its slot free.
        assert_eq!(b.state(), State::HalfOpen);
        let p = b.try_acquire(later).unwrap();
        assert_eq!(p.state(), State::HalfOpen);
        assert!(b.try_acquire(later).is_err());
        b.record(p, false, false, later);
        assert_eq!(b.state(), State::Closed);
    });
}

/// (a'') Two failing probes racing reopen the breaker exactly once.
#[test]
fn loom_half_open_failing_probes_reopen_once() {
    loom::model(|| {
        let start = Instant::now();
        let later = start + WAIT;
        let b = Arc::new(opened(2, start));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                thread::spawn(move || {
                    let p = b.try_acquire(later).unwrap();
                    assert_eq!(p.state(), State::HalfOpen);
                    b.record(p, true, false, later);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(transitions(&b, later), 3);
    });
}

fn closed(window: Window) -> Breaker {
    let config = BreakerConfig::new()
        .window(window)
        .minimum_calls(3)
        .failure_rate_threshold(50.0)
        .wait_duration(WAIT);
    Breaker::new_at("loom", config, Instant::now()).unwrap()
}

/// Runs one call per entry of `outcomes` (true = failed) on its own thread, all at `now`.
fn race(b: &Arc<Breaker>, outcomes: &[bool], now: Instant) {
    let handles: Vec<_> = outcomes
        .iter()
        .map(|&failed| {
            let b = b.clone();
            thread::spawn(move || {
                let p = b.try_acquire(now).unwrap();
                assert_eq!(p.state(), State::Closed);
                b.record(p, failed, false, now);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// (b) Three concurrent outcomes, two of them failures, in a count window of 3 with 3 calls
/// needed: the breaker opens, exactly once, whatever the interleaving.
#[test]
fn loom_count_window_trips_exactly_once() {
    loom::model(|| {
        let b = Arc::new(closed(Window::Count(3)));
        let now = Instant::now();
        race(&b, &[true, true, false], now);
        assert_eq!(b.state(), State::Open);
        assert_eq!(transitions(&b, now), 1);
    });
}

/// (b) One failure in three (33 % < 50 %): never opens, and no outcome is lost.
#[test]
fn loom_count_window_under_threshold_stays_closed() {
    loom::model(|| {
        let b = Arc::new(closed(Window::Count(3)));
        let now = Instant::now();
        race(&b, &[true, false, false], now);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(transitions(&b, now), 0);
        let c = b.snapshot(now).counts;
        assert_eq!((c.calls, c.failures), (3, 1));
    });
}

/// (b) The same with a time window: two failures and a success in the same second open it,
/// exactly once.
#[test]
fn loom_time_window_trips_exactly_once() {
    loom::model(|| {
        let b = Arc::new(closed(Window::Time(2)));
        let now = Instant::now();
        race(&b, &[true, false, true], now);
        assert_eq!(b.state(), State::Open);
        assert_eq!(transitions(&b, now), 1);
    });
}

/// (b) Consecutive-failures mode: two failures racing open it exactly once.
#[test]
fn loom_consecutive_failures_trip_exactly_once() {
    loom::model(|| {
        let b = Arc::new(closed(Window::ConsecutiveFailures(2)));
        let now = Instant::now();
        race(&b, &[true, true], now);
        assert_eq!(b.state(), State::Open);
        assert_eq!(transitions(&b, now), 1);
    });
}

/// The count window's aggregate never loses an outcome: concurrent records into distinct
/// slots all count; when the ring wraps, the aggregate still equals the slots' contents.
#[test]
fn loom_count_window_aggregate_matches_slots() {
    loom::model(|| {
        let w = Arc::new(CountWindow::new(4));
        let handles: Vec<_> = [FAILED, 0, FAILED | SLOW]
            .into_iter()
            .map(|bits| {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(bits);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let expected = Counts {
            calls: 3,
            failures: 2,
            slow: 1,
        };
        assert_eq!(w.counts(), Some(expected));
        assert_eq!(w.slot_counts(), expected);
    });
    loom::model(|| {
        // Three records into a ring of two: one slot is written twice, in either order.
        let w = Arc::new(CountWindow::new(2));
        let handles: Vec<_> = [FAILED, SLOW, FAILED]
            .into_iter()
            .map(|bits| {
                let w = w.clone();
                thread::spawn(move || {
                    w.record(bits);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let c = w.counts().unwrap();
        assert_eq!(c.calls, 2);
        assert_eq!(c, w.slot_counts());
    });
}

/// The time window never loses an outcome of the current second: three records in the same
/// second all count.
#[test]
fn loom_time_window_same_second_counts_all() {
    loom::model(|| {
        let w = Arc::new(TimeWindow::new(2));
        let handles: Vec<_> = [FAILED, 0, SLOW]
            .into_iter()
            .map(|bits| {
                let w = w.clone();
                thread::spawn(move || w.record(1, bits))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            w.counts(1),
            Counts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
    });
}

/// A record whose clock was read a lap earlier (second 0) racing two records of second 2 in
/// the same bucket: the current second's records are never lost (the late one is counted in
/// the current second or dropped, never the other way round).
#[test]
fn loom_time_window_late_record_loses_nothing_current() {
    loom::model(|| {
        let w = Arc::new(TimeWindow::new(2));
        let handles: Vec<_> = [(0, FAILED), (2, 0), (2, 0)]
            .into_iter()
            .map(|(sec, bits)| {
                let w = w.clone();
                thread::spawn(move || w.record(sec, bits))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let c = w.counts(2);
        assert!(c.calls == 2 || c.calls == 3, "{c:?}");
        assert_eq!(c.calls - c.failures, 2, "{c:?}");
    });
}
