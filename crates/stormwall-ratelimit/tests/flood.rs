//! Key flood: far more distinct keys than the cap. Memory stays bounded, existing keys keep
//! their state. 1,000,000 keys under a 100,000-key cap (`STORMWALL_EXTENDED=1`: 5,000,000).

use std::time::Duration;

use stormwall_ratelimit::algorithm::Algorithm;
use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey};
use stormwall_ratelimit::{AtCapacity, InMemoryStore, Quota, StoreError};
use tokio::time::Instant;

const CAP: usize = 100_000;

fn flood_keys() -> u64 {
    if std::env::var_os("STORMWALL_EXTENDED").is_some() {
        5_000_000
    } else {
        1_000_000
    }
}

fn check(store: &InMemoryStore, id: &LimitId, key: u64, q: Quota) -> Result<bool, StoreError> {
    let key = LimitKey::from_key(&key);
    let c = LimitCheck {
        limit: id,
        key: &key,
        quota: q,
        algorithm: Algorithm::Gcra,
        cost: 1,
    };
    store
        .check_now(Instant::now(), &[c], CheckMode::Acquire)
        .map(|d| d.allowed)
}

#[tokio::test(start_paused = true)]
async fn flood_is_refused_at_the_cap_and_live_keys_keep_their_state() {
    let store = InMemoryStore::new().max_keys(CAP);
    let id = LimitId::new("per-client");
    let q = Quota::per_hour(1).unwrap();
    let (mut admitted, mut refused) = (0u64, 0u64);
    for key in 0..flood_keys() {
        match check(&store, &id, key, q) {
            Ok(true) => admitted += 1,
            Ok(false) => panic!("a fresh key is never rate limited"),
            Err(StoreError::Capacity(CAP)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(admitted, CAP as u64);
    assert_eq!(refused, flood_keys() - CAP as u64);
    let stats = store.stats();
    assert_eq!(stats.keys, CAP);
    assert_eq!(stats.swept, 0, "no live key is ever evicted");
    // ~100 bytes per key including the table's spare capacity.
    let per_key = stats.approx_bytes / CAP;
    assert!(per_key <= 128, "{per_key} bytes per key");
    eprintln!(
        "flood: {} keys held, ~{} bytes total, {} bytes/key by layout",
        stats.keys,
        stats.approx_bytes,
        InMemoryStore::bytes_per_key()
    );
    // The first keys are still spent: their limit was not reset by the flood.
    for key in [0, 1, 50_000, CAP as u64 - 1] {
        assert_eq!(check(&store, &id, key, q), Ok(false));
    }
}

#[tokio::test(start_paused = true)]
async fn flood_overflows_into_one_shared_bucket() {
    let store = InMemoryStore::new()
        .max_keys(CAP)
        .at_capacity(AtCapacity::Overflow);
    let id = LimitId::new("per-client");
    let q = Quota::per_hour(10).unwrap();
    let total = flood_keys() / 4;
    let admitted = (0..total)
        .filter(|&k| check(&store, &id, k, q).unwrap())
        .count();
    // Own buckets for the first CAP keys, then one shared bucket of 10 for everyone else.
    assert_eq!(admitted, CAP + 10);
    assert_eq!(store.len(), CAP + 1);
    assert_eq!(store.stats().overflowed, total - CAP as u64);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept_to_make_room() {
    let store = InMemoryStore::new()
        .max_keys(1_000)
        .sweep_interval(Duration::from_millis(100));
    let id = LimitId::new("per-client");
    let q = Quota::per_second(10).unwrap();
    for key in 0..1_000 {
        assert_eq!(check(&store, &id, key, q), Ok(true));
    }
    assert!(check(&store, &id, 5_000, q).is_err());
    // After 100 ms every bucket is full again: the keys are idle and can go.
    tokio::time::advance(Duration::from_millis(100)).await;
    for key in 10_000..11_000 {
        assert_eq!(check(&store, &id, key, q), Ok(true));
    }
    assert_eq!(store.len(), 1_000);
    assert_eq!(store.stats().swept, 1_000);
}
