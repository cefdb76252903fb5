//! Races between joining, finishing, dropping and timing out, on a multi-threaded runtime:
//! every round makes exactly one upstream call per flight, every surviving caller gets that
//! call's value, and nothing is left attached afterwards. Larger with `STORMWALL_EXTENDED=1`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stormwall_coalesce::{CoalesceError, Group};

fn rounds() -> u64 {
    if std::env::var("STORMWALL_EXTENDED").as_deref() == Ok("1") {
        2_000
    } else {
        150
    }
}

/// A tiny xorshift, so the test needs no RNG crate and is reproducible per round.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_drops_and_completions_race_safely() {
    let group: Group<u64, u64, ()> = Group::new().timeout(Duration::from_millis(50));
    let calls = Arc::new(AtomicU64::new(0));
    for round in 0..rounds() {
        let calls_before = calls.load(Ordering::SeqCst);
        let misses_before = group.stats().snapshot().misses;
        let mut seed = round * 2_654_435_761 + 1;
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let group = group.clone();
            let calls = calls.clone();
            let work = next(&mut seed) % 3;
            let drop_after = next(&mut seed) % 4;
            tasks.push(tokio::spawn(async move {
                let fut = group.run(round, async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    for _ in 0..work {
                        tokio::task::yield_now().await;
                    }
                    Ok(n)
                });
                if drop_after <= 1 {
                    // Poll once (maybe as the driver), maybe yield, then give up: dropped
                    // mid-flight.
                    let mut fut = std::pin::pin!(fut);
                    if let std::task::Poll::Ready(r) = futures_util::poll!(fut.as_mut()) {
                        return Some(r);
                    }
                    if drop_after == 1 {
                        tokio::task::yield_now().await;
                    }
                    None
                } else {
                    Some(fut.await)
                }
            }));
        }
        let mut values = Vec::new();
        for t in tasks {
            match t.await.expect("no task panicked") {
                Some(Ok(v)) => values.push(v),
                Some(Err(CoalesceError::Timeout)) | None => {}
                Some(Err(e)) => panic!("unexpected error: {e:?}"),
            }
        }
        // Every value comes from a call of this round, and there are no more distinct values
        // than flights started (one upstream call per flight, shared by its callers).
        let misses = group.stats().snapshot().misses - misses_before;
        assert!(values.iter().all(|v| *v > calls_before));
        values.sort_unstable();
        values.dedup();
        assert!(
            values.len() as u64 <= misses,
            "round {round}: {} distinct values from {misses} flights",
            values.len()
        );
        let s = group.stats().snapshot();
        assert_eq!(s.waiters, 0, "round {round}: nobody left attached");
        assert_eq!(s.in_flight_keys, 0, "round {round}: no flight left");
    }
    let s = group.stats().snapshot();
    assert_eq!(s.hits + s.misses, 16 * rounds());
    // Coalescing happened; a flight makes at most one call (none if cancelled before its
    // future was first polled).
    assert!(s.hits > 0);
    assert!(s.cancelled > 0, "the cancellation path was exercised");
    let calls = calls.load(Ordering::SeqCst);
    assert!(calls <= s.misses && calls + s.cancelled >= s.misses);
}
