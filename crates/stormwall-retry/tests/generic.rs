//! Generic (non-HTTP) mode, paused clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stormwall_core::time::Instant;
use stormwall_retry::{Backoff, RetryBudget, RetryLayer, RetryPolicy, Verdict};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Fails with `Err(code)` for the first `fail` calls, then answers `Ok(x)`.
fn flaky(
    fail: u32,
    code: u32,
) -> (
    Arc<AtomicU32>,
    impl Service<u32, Response = u32, Error = u32, Future: Send> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = service_fn(move |x: u32| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move { if n < fail { Err(code) } else { Ok(x) } }
    });
    (calls, svc)
}

fn policy(r: &Result<u32, u32>) -> Verdict {
    match r {
        Ok(_) => Verdict::Success,
        Err(503) => Verdict::Retry { after: None },
        Err(429) => Verdict::Retry {
            after: Some(Duration::from_secs(2)),
        },
        Err(_) => Verdict::Fail,
    }
}

fn base() -> RetryLayer {
    RetryLayer::new().budget(RetryBudget::unlimited())
}

#[tokio::test(start_paused = true)]
async fn retries_with_backoff_and_pushback() {
    let (calls, svc) = flaky(2, 503);
    let layer = base()
        .backoff(Backoff::fixed(Duration::from_millis(100)))
        .policy(policy);
    let mut svc = layer.layer(svc);
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(layer.stats().retries, 2);

    let (calls, svc) = flaky(1, 429);
    let mut svc = base().backoff(Backoff::none()).policy(policy).layer(svc);
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn fail_is_final_and_attempts_are_bounded() {
    let (calls, svc) = flaky(10, 400);
    let mut svc = base().policy(policy).layer(svc);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err.inner_error(), Some(&400));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (calls, svc) = flaky(10, 503);
    let mut svc = base()
        .backoff(Backoff::none())
        .max_attempts(4)
        .policy(policy)
        .layer(svc);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err.attempts(), 4);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[derive(Clone)]
struct NoReplay;

impl RetryPolicy<u32, u32, u32> for NoReplay {
    fn classify(&self, r: &Result<u32, u32>) -> Verdict {
        policy(r)
    }

    fn clone_request(&self, _req: &u32) -> Option<u32> {
        None
    }
}

#[tokio::test(start_paused = true)]
async fn requests_that_cannot_be_cloned_are_sent_once() {
    let (calls, svc) = flaky(10, 503);
    let mut svc = base().policy(NoReplay).layer(svc);
    assert!(svc.ready().await.unwrap().call(1).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_in_generic_mode() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let slow_then_fast = service_fn(move |x: u32| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<_, u32>(x)
        }
    });
    let layer = base()
        .backoff(Backoff::none())
        .attempt_timeout(Duration::from_secs(1))
        .policy(policy);
    let mut svc = layer.layer(slow_then_fast);
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(5).await.unwrap(), 5);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(layer.stats().attempt_timeouts, 1);
}

#[tokio::test(start_paused = true)]
async fn default_budget_bounds_an_outage() {
    let (calls, svc) = flaky(u32::MAX, 503);
    let layer = RetryLayer::new().backoff(Backoff::none()).policy(policy);
    let svc = layer.layer(svc);
    let n = 5_000;
    for _ in 0..n {
        let mut s = svc.clone();
        assert!(s.ready().await.unwrap().call(1).await.is_err());
    }
    let ratio = f64::from(calls.load(Ordering::SeqCst)) / f64::from(n);
    assert!(ratio <= 1.2, "{ratio}");
    assert!(layer.stats().budget_exhausted > 0);
}
