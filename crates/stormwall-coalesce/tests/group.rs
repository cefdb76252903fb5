//! The plain async API, after Go's `singleflight` test suite, plus cancellation, timeouts and
//! the waiter cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use stormwall_coalesce::{CoalesceError, Group};
use tokio::sync::{Notify, oneshot};

/// A future that counts its runs, waits for `gate`, and reports being dropped.
struct Probe {
    runs: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
}

struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Probe {
    fn new() -> Self {
        Self {
            runs: Arc::new(AtomicUsize::new(0)),
            drops: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn call(
        &self,
        gate: Arc<Notify>,
        value: &'static str,
    ) -> impl Future<Output = Result<String, String>> + Send + 'static {
        let runs = self.runs.clone();
        let flag = DropFlag(self.drops.clone());
        async move {
            let _flag = flag;
            runs.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            Ok(value.to_owned())
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Lets spawned tasks run until they are all parked.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn do_returns_value() {
    let g: Group<&str, String, String> = Group::new();
    let v = g.run("key", async { Ok("bar".to_owned()) }).await;
    assert_eq!(v, Ok("bar".to_owned()));
    let s = g.stats().snapshot();
    assert_eq!(
        (s.misses, s.hits, s.errors, s.in_flight_keys, s.waiters),
        (1, 0, 0, 0, 0)
    );
}

#[tokio::test]
async fn do_returns_error() {
    let g: Group<&str, String, String> = Group::new();
    let v = g.run("key", async { Err("some error".to_owned()) }).await;
    assert_eq!(v, Err(CoalesceError::Upstream("some error".to_owned())));
    assert_eq!(g.stats().snapshot().errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn do_dupe_suppress_ten_callers_one_call() {
    let g: Group<&str, String, String> = Group::new();
    let probe = Probe::new();
    let gate = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let g = g.clone();
        let fut = probe.call(gate.clone(), "bar");
        tasks.push(tokio::spawn(async move { g.run("key", fut).await }));
    }
    // Wait until every caller is attached, then let the one call finish.
    while g.stats().snapshot().waiters < 10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(g.stats().snapshot().in_flight_keys, 1);
    gate.notify_one();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok("bar".to_owned()));
    }
    assert_eq!(probe.runs(), 1);
    let s = g.stats().snapshot();
    assert_eq!(
        (s.misses, s.hits, s.waiters, s.in_flight_keys),
        (1, 9, 0, 0)
    );
    assert!((s.hit_rate() - 0.9).abs() < 1e-9);
}

#[tokio::test]
async fn errors_are_shared_with_every_waiter() {
    let g: Group<u8, u8, Arc<str>> = Group::new();
    let gate = Arc::new(Notify::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let calls = (0..5).map(|_| {
        let gate = gate.clone();
        let runs = runs.clone();
        g.run(1, async move {
            runs.fetch_add(1, Ordering::SeqCst);
            gate.notified().await;
            Err(Arc::from("boom"))
        })
    });
    let all = join_all(calls);
    let notify = async {
        settle().await;
        gate.notify_one();
    };
    let (results, ()) = tokio::join!(all, notify);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    for r in results {
        assert_eq!(r.unwrap_err().upstream().map(|e| &**e), Some("boom"));
    }
    assert_eq!(g.stats().snapshot().errors, 1);
}

#[tokio::test]
async fn new_call_after_completion_runs_fresh() {
    let g: Group<&str, usize> = Group::new();
    let runs = Arc::new(AtomicUsize::new(0));
    for i in 1..=3 {
        let runs = runs.clone();
        let v = g
            .run(
                "k",
                async move { Ok(runs.fetch_add(1, Ordering::SeqCst) + 1) },
            )
            .await
            .unwrap();
        assert_eq!(
            v, i,
            "each sequential call runs again: results are not kept"
        );
    }
    assert_eq!(g.stats().snapshot().misses, 3);
}

#[tokio::test]
async fn panic_does_not_hang_waiters() {
    let g: Group<&str, u32> = Group::new();
    let gate = Arc::new(Notify::new());
    let leader = {
        let gate = gate.clone();
        g.run("k", async move {
            gate.notified().await;
            panic!("upstream exploded");
        })
    };
    let waiters: Vec<_> = (0..4).map(|_| g.run("k", async { Ok(1) })).collect();
    let notify = async {
        settle().await;
        gate.notify_one();
    };
    let (lead, rest, ()) = tokio::join!(leader, join_all(waiters), notify);
    let err = lead.unwrap_err();
    assert!(err.is_panic());
    assert!(err.to_string().contains("upstream exploded"), "{err}");
    for r in rest {
        assert!(r.unwrap_err().is_panic());
    }
    let s = g.stats().snapshot();
    assert_eq!(
        (s.panics, s.errors, s.in_flight_keys, s.waiters),
        (1, 1, 0, 0)
    );
    // The key is usable again.
    assert_eq!(g.run("k", async { Ok(7) }).await, Ok(7));
}

#[tokio::test]
async fn leader_dropped_waiters_still_get_the_one_result() {
    let g: Group<&str, String, String> = Group::new();
    let probe = Probe::new();
    let gate = Arc::new(Notify::new());
    let mut leader = Box::pin(g.run("k", probe.call(gate.clone(), "v1")));
    // The leader starts the upstream call...
    assert!(futures_util::poll!(leader.as_mut()).is_pending());
    assert_eq!(probe.runs(), 1);
    let w1 = g.run("k", probe.call(gate.clone(), "other"));
    let w2 = g.run("k", probe.call(gate.clone(), "other"));
    // ... and goes away mid-flight.
    drop(leader);
    assert_eq!(g.stats().snapshot().cancelled, 0);
    let notify = async {
        settle().await;
        gate.notify_one();
    };
    let (r1, r2, ()) = tokio::join!(w1, w2, notify);
    assert_eq!(r1, Ok("v1".to_owned()));
    assert_eq!(r2, Ok("v1".to_owned()));
    assert_eq!(probe.runs(), 1, "one upstream call, continued by a waiter");
    let s = g.stats().snapshot();
    assert_eq!((s.misses, s.hits, s.cancelled), (1, 2, 0));
}

#[tokio::test]
async fn all_callers_dropped_drops_the_upstream_future() {
    let g: Group<&str, String, String> = Group::new();
    let probe = Probe::new();
    let gate = Arc::new(Notify::new());
    let mut a = Box::pin(g.run("k", probe.call(gate.clone(), "v")));
    let mut b = Box::pin(g.run("k", probe.call(gate.clone(), "v")));
    assert!(futures_util::poll!(a.as_mut()).is_pending());
    assert!(futures_util::poll!(b.as_mut()).is_pending());
    assert_eq!(probe.runs(), 1);
    // b's own future was dropped unpolled when it joined.
    assert_eq!(probe.drops.load(Ordering::SeqCst), 1);
    drop(a);
    assert_eq!(
        probe.drops.load(Ordering::SeqCst),
        1,
        "b still waits: call goes on"
    );
    drop(b);
    assert_eq!(
        probe.drops.load(Ordering::SeqCst),
        2,
        "upstream future dropped"
    );
    let s = g.stats().snapshot();
    assert_eq!((s.cancelled, s.in_flight_keys, s.waiters), (1, 0, 0));
    // The next call starts fresh.
    let fresh = g.run("k", async { Ok("fresh".to_owned()) }).await;
    assert_eq!(fresh, Ok("fresh".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn per_caller_timeout_leaves_the_others_waiting() {
    let g: Group<&str, &'static str> = Group::new();
    let short = g.clone().timeout(Duration::from_secs(1));
    let (tx, rx) = oneshot::channel::<&'static str>();
    let leader = g.run("k", async move { Ok(rx.await.unwrap_or("closed")) });
    let impatient = short.run("k", async { Ok("never") });
    let patient = g.run("k", async { Ok("never") });
    let driver = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        tx.send("done").unwrap();
    };
    let (l, i, p, ()) = tokio::join!(leader, impatient, patient, driver);
    assert_eq!(i, Err(CoalesceError::Timeout));
    assert_eq!(l, Ok("done"));
    assert_eq!(p, Ok("done"));
    let s = g.stats().snapshot();
    assert_eq!((s.timeouts, s.misses, s.hits), (1, 1, 2));
}

#[tokio::test(start_paused = true)]
async fn leader_timeout_does_not_cancel_the_call() {
    let g: Group<&str, &'static str> = Group::new().timeout(Duration::from_secs(1));
    let patient: Group<&str, &'static str> = Group::clone(&g);
    let (tx, rx) = oneshot::channel::<&'static str>();
    let leader = g.run("k", async move { Ok(rx.await.unwrap_or("closed")) });
    let mut waiter = Box::pin(patient.run("k", async { Ok("never") }));
    let (l, ()) = tokio::join!(leader, async {
        assert!(futures_util::poll!(waiter.as_mut()).is_pending());
    });
    assert_eq!(l, Err(CoalesceError::Timeout));
    tx.send("late").unwrap();
    // The waiter (also with a 1 s timeout, started later) takes over the call.
    assert_eq!(waiter.await, Ok("late"));
}

#[tokio::test]
async fn waiter_cap_sends_the_rest_upstream_alone() {
    let g: Group<&str, usize> = Group::new().max_waiters(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let runs = runs.clone();
            let gate = gate.clone();
            g.run("k", async move {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                gate.notified().await;
                Ok(n)
            })
        })
        .collect();
    let notify = async {
        settle().await;
        gate.notify_waiters();
    };
    let (results, ()) = tokio::join!(join_all(calls), notify);
    assert!(results.iter().all(Result::is_ok));
    // 1 leader + 2 waiters share one call; the other 2 callers run alone.
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let s = g.stats().snapshot();
    assert_eq!((s.misses, s.hits, s.overflows), (3, 2, 2));
}

#[tokio::test]
async fn distinct_keys_do_not_share() {
    let g: Group<u32, u32> = Group::new();
    let results = join_all((0..10).map(|k| g.run(k % 3, async move { Ok(k % 3) }))).await;
    for (k, r) in results.into_iter().enumerate() {
        assert_eq!(r, Ok(k as u32 % 3));
    }
}
