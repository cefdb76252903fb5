//! Scenario 1 — outage: the upstream answers 100 % `503` for a period, through the standard
//! outbound stack (`OutboundStack::standard`, with a breaker open time of 1 s so the test
//! stays short), then heals.
//!
//! Real clock and real sockets (a paused clock would auto-advance through the breaker's open
//! time while the load generator sleeps, which is not the behaviour under test). Every path is
//! distinct so neither the cache nor the coalescer hides upstream attempts.
//!
//! Bounds: retry amplification (upstream attempts / caller requests during the outage)
//! ≤ 1.2×; the breaker opens (rejections counted) and the upstream sees no new request while
//! it stays open (at most the attempts already on the wire); no request outlives the retry
//! deadline (10 s, + 1 s margin for a loaded box); after the heal the first success comes
//! within 2 × the open time (the breaker's remaining open time ≤ 1 s, then a half-open probe;
//! the second second is the margin) and the breaker ends closed with the last requests all
//! successful.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use records::Records;
use stormwall::circuit::{BreakerConfig, CircuitBreakerLayer, State, Window};
use stormwall::{ErrorKind, OutboundStack};
use stormwall_tests::fault::FaultServer;
use tower::{Layer, ServiceExt};

use crate::extended;

const OPEN: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(10);
const WORKERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(20);

mod records {
    use std::sync::Mutex;
    use std::time::Instant;

    /// One caller request.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Record {
        pub(super) start: Instant,
        pub(super) end: Instant,
        pub(super) ok: bool,
        pub(super) circuit_open: bool,
    }

    #[derive(Debug, Default)]
    pub(super) struct Records(pub(super) Mutex<Vec<Record>>);

    impl Records {
        pub(super) fn push(&self, r: Record) {
            self.0.lock().unwrap().push(r);
        }
        pub(super) fn all(&self) -> Vec<Record> {
            self.0.lock().unwrap().clone()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_amplification_breaker_deadline_recovery() {
    outage(false).await;
}

/// The same outage as a black hole: the upstream holds every request unanswered (attempt
/// timeout 300 ms instead of the preset's 2 s, so the breaker sees its 20 failures within a
/// second or two). Same bounds; the hung attempts are all let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_outage_amplification_breaker_deadline_recovery() {
    outage(true).await;
}

async fn outage(blackhole: bool) {
    let outage = if extended() {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(3)
    };
    let server = FaultServer::builder().seed(1).start().await;
    let breaker = CircuitBreakerLayer::new(
        "outage",
        BreakerConfig::new()
            .window(Window::Count(100))
            .minimum_calls(20)
            .failure_rate_threshold(50.0)
            .wait_duration(OPEN)
            .permitted_calls_in_half_open(3),
    )
    .unwrap();
    let mut stack = OutboundStack::standard("outage").circuit_breaker(breaker);
    if blackhole {
        stack = stack.attempt_timeout(Duration::from_millis(300));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<stormwall::body::Body>();
    let svc = stack.layer(client);
    let cb = stack.circuit_layer().unwrap().breaker().clone();
    let retry = stack.retry_layer().unwrap().clone();

    if blackhole {
        server.hang();
    } else {
        server.fail(1.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    let records = Arc::new(Records::default());
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let up0 = server.stats().requests;
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (svc, records, stop, seq, base) = (
            svc.clone(),
            records.clone(),
            stop.clone(),
            seq.clone(),
            server.url(""),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = seq.fetch_add(1, Ordering::SeqCst);
                let req = Request::get(format!("{base}/item/{w}/{n}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let start = Instant::now();
                let result = svc.clone().oneshot(req).await;
                let end = Instant::now();
                let (ok, circuit_open) = match &result {
                    Ok(res) => (res.status() == StatusCode::OK, false),
                    Err(e) => (false, e.kind() == ErrorKind::CircuitOpen),
                };
                records.push(records::Record {
                    start,
                    end,
                    ok,
                    circuit_open,
                });
                tokio::time::sleep(PAUSE).await;
            }
        }));
    }

    // While the outage lasts: catch the breaker open and check the upstream sees nothing new
    // for as long as it stays open.
    let mut open_checks = 0u32;
    let mut grew_while_open = 0u64;
    while t0.elapsed() < outage {
        let snap = cb.snapshot(stormwall::core::time::Instant::now());
        if snap.state == State::Open
            && snap
                .remaining_open
                .is_some_and(|r| r > Duration::from_millis(300))
        {
            let (u0, transitions) = (server.stats().requests, snap.transitions);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let after = cb.snapshot(stormwall::core::time::Instant::now());
            if after.transitions == transitions {
                open_checks += 1;
                grew_while_open = grew_while_open.max(server.stats().requests - u0);
            }
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let t_heal = Instant::now();
    let up_outage = server.stats().requests - up0;
    let rejected = cb.snapshot(stormwall::core::time::Instant::now()).rejected;
    server.heal();

    // Recovery: run until the breaker is closed and a few successes followed, bounded.
    let recovery_window = OPEN * 2 + Duration::from_millis(1500);
    while t_heal.elapsed() < recovery_window {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        tokio::time::timeout(DEADLINE + Duration::from_secs(5), w)
            .await
            .expect("workers stop")
            .unwrap();
    }

    let all = records.all();
    let during: Vec<_> = all.iter().filter(|r| r.start < t_heal).collect();
    let caller_requests = during.len() as u64;
    let amplification = up_outage as f64 / caller_requests as f64;
    let circuit_open = during.iter().filter(|r| r.circuit_open).count();
    let max_latency = all.iter().map(|r| r.end - r.start).max().unwrap();
    let first_success = all
        .iter()
        .filter(|r| r.ok)
        .map(|r| r.end)
        .min()
        .expect("a success after the heal");
    let recovery = first_success.saturating_duration_since(t_heal);
    let mut after: Vec<_> = all.iter().filter(|r| r.start >= t_heal).collect();
    after.sort_by_key(|r| r.start);
    let tail = &after[after.len().saturating_sub(20)..];
    let final_state = cb.state();
    let rs = retry.stats();
    println!(
        "{} outage {:?}: {caller_requests} caller requests, {up_outage} upstream attempts → \
         amplification {amplification:.3}× (retry layer: {} requests, {} attempts, {} budget-exhausted); \
         breaker rejected {rejected} ({circuit_open} callers saw CircuitOpen), {open_checks} open periods \
         checked, upstream growth while open ≤ {grew_while_open}; slowest request {max_latency:?} \
         (deadline {DEADLINE:?}); first success {recovery:?} after the heal (bound {:?}); \
         final state {final_state:?}, last {} requests all ok: {}",
        if blackhole { "black-hole" } else { "503" },
        outage,
        rs.requests,
        rs.attempts,
        rs.budget_exhausted,
        OPEN * 2,
        tail.len(),
        tail.iter().all(|r| r.ok),
    );

    assert!(caller_requests > 50, "load too low: {caller_requests}");
    assert!(
        amplification <= 1.2,
        "retry amplification {amplification:.3} > 1.2"
    );
    assert!(rejected > 0, "the breaker never rejected");
    assert!(circuit_open > 0, "no caller saw the breaker open");
    assert!(open_checks > 0, "never observed a stable open period");
    assert!(
        grew_while_open <= WORKERS as u64,
        "upstream grew by {grew_while_open} while the breaker was open"
    );
    assert!(
        max_latency <= DEADLINE + Duration::from_secs(1),
        "a request took {max_latency:?}"
    );
    assert!(
        recovery <= OPEN * 2,
        "recovery took {recovery:?} > 2 × {OPEN:?}"
    );
    assert_eq!(final_state, State::Closed);
    assert!(tail.len() >= 10 && tail.iter().all(|r| r.ok));
}

/// Finding F5 (fixed): through the standard outbound stack, attempt timeouts and refused
/// connections — retryable by `default_retryable` — are retried. (They were not while the retry
/// layer saw the facade's concrete [`stormwall::Error`], which the core's classification cannot
/// downcast; the stack now hands it a boxed error whose source chain it walks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_failures_through_the_standard_stack_are_retried_f5() {
    let server = FaultServer::builder().seed(5).start().await;
    let stack = OutboundStack::standard("f5")
        .without_circuit_breaker()
        .attempt_timeout(Duration::from_millis(100));
    let client = Client::builder(TokioExecutor::new()).build_http::<stormwall::body::Body>();
    let svc = stack.layer(client);
    let retry = stack.retry_layer().unwrap().clone();
    let get = |n: u32| {
        Request::get(server.url(&format!("/f5/{n}")))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    // Attempt timeouts: the upstream holds every request.
    server.hang();
    let mut timeouts = 0;
    for n in 0..5 {
        let err = svc.clone().oneshot(get(n)).await.unwrap_err();
        timeouts += u32::from(err.kind() == ErrorKind::Timeout);
    }
    let after_timeouts = retry.stats();
    server.release();
    let hung = server.stats().requests;

    // Refused connections: the upstream is gone.
    server.go_away().await;
    let mut refused = 0;
    for n in 5..10 {
        let err = svc.clone().oneshot(get(n)).await.unwrap_err();
        refused += u32::from(err.kind() == ErrorKind::Upstream);
    }
    let after_refused = retry.stats();
    println!(
        "F5: 5 attempt timeouts → {timeouts} Timeout errors, {} retries ({hung} upstream \
         requests); 5 refused connections → {refused} Upstream errors, {} retries \
         (default_retryable says both are retryable; budget exhausted {})",
        after_timeouts.retries,
        after_refused.retries - after_timeouts.retries,
        after_refused.budget_exhausted,
    );
    assert_eq!(timeouts, 5);
    assert_eq!(refused, 5);
    assert_eq!(after_refused.budget_exhausted, 0, "not the budget's doing");
    assert_eq!(after_refused.deadline_stops, 0, "not the deadline's doing");
    assert!(
        after_timeouts.retries > 0,
        "F5: attempt timeouts are not retried"
    );
    assert!(
        after_refused.retries > after_timeouts.retries,
        "F5: refused connections are not retried"
    );
}
