//! The generic (non-HTTP) tower mode.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use stormwall_coalesce::{CoalesceError, CoalesceLayer};
use stormwall_core::key::{KeyError, key_fn};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt, service_fn};

#[derive(Debug, PartialEq)]
struct NotFound(u64);

fn lookup(
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
) -> impl tower::Service<
    u64,
    Response = String,
    Error = NotFound,
    Future = impl Future<Output = Result<String, NotFound>> + Send + 'static,
> + Clone {
    service_fn(move |id: u64| {
        calls.fetch_add(1, Ordering::SeqCst);
        let gate = gate.clone();
        async move {
            let _p = gate.acquire().await.unwrap();
            if id == 0 {
                Err(NotFound(id))
            } else {
                Ok(format!("user {id}"))
            }
        }
    })
}

/// Key: the id; odd ids above 1000 cannot be keyed.
fn layer() -> stormwall_coalesce::GenericCoalesceLayer<
    impl stormwall_core::key::KeyExtractor<u64, Key = u64> + Clone,
> {
    CoalesceLayer::generic(key_fn(|id: &u64| {
        if *id > 1000 && id % 2 == 1 {
            Err(KeyError::custom("unkeyable"))
        } else {
            Ok(*id)
        }
    }))
}

async fn open_later(gate: &Semaphore) {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1000);
}

#[tokio::test]
async fn ten_callers_one_call_cloned_responses() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let layer = layer();
    let stats = layer.stats();
    let svc = layer.layer(lookup(calls.clone(), gate.clone()));
    let all = join_all((0..10).map(|_| svc.clone().oneshot(7)));
    let (results, ()) = tokio::join!(all, open_later(&gate));
    for r in results {
        assert_eq!(r.unwrap(), "user 7");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = stats.snapshot();
    assert_eq!((s.misses, s.hits), (1, 9));
}

#[tokio::test]
async fn one_error_shared_by_every_caller() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let svc = layer().layer(lookup(calls.clone(), gate.clone()));
    let all = join_all((0..4).map(|_| svc.clone().oneshot(0)));
    let (results, ()) = tokio::join!(all, open_later(&gate));
    let errors: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_err().into_upstream().unwrap())
        .collect();
    assert_eq!(*errors[0], NotFound(0));
    // The very same error value, shared.
    assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unkeyable_requests_pass_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let layer = layer();
    let stats = layer.stats();
    let svc = layer.layer(lookup(calls.clone(), gate.clone()));
    let all = join_all((0..3).map(|_| svc.clone().oneshot(1001)));
    let (results, ()) = tokio::join!(all, open_later(&gate));
    assert!(results.into_iter().all(|r| r.unwrap() == "user 1001"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(stats.snapshot().hits + stats.snapshot().misses, 0);
}

#[tokio::test(start_paused = true)]
async fn timeout_and_waiter_cap() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let layer = layer().timeout(Duration::from_secs(1)).max_waiters(1);
    let stats = layer.stats();
    let svc = layer.layer(lookup(calls.clone(), gate.clone()));
    let all = join_all((0..3).map(|_| svc.clone().oneshot(5)));
    let results = all.await;
    // Nobody opens the gate: every caller times out, and the third went upstream alone.
    for r in results {
        assert_eq!(r.unwrap_err(), CoalesceError::Timeout);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let s = stats.snapshot();
    // Timeouts of coalesced waits are counted (2); the lone caller's is not.
    assert_eq!((s.overflows, s.misses, s.hits, s.timeouts), (1, 2, 1, 2));
}
