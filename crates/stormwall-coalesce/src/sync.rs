//! The synchronisation the coalescing slot is built on: the flight map and the flight's lock.
//!
//! Normally a sharded [`DashMap`](dashmap::DashMap) and a `parking_lot` mutex. Under
//! `--cfg stormwall_loom` (see `scripts/loom`) the same two are built from `loom`'s mutex, so
//! the model checks in `flight.rs` explore every interleaving of joining, driving, handing over
//! and the no-waiter pass-through decision.

use std::hash::Hash;

#[cfg(not(stormwall_loom))]
pub(crate) use parking_lot::Mutex;

/// A mutex with `parking_lot`'s interface (no poisoning) over `loom`'s.
#[cfg(stormwall_loom)]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(stormwall_loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The map of flights: key → flight. Every operation holds the key's shard lock for its whole
/// duration, which is what makes "look up, inspect the flight, insert or attach" atomic.
pub(crate) struct FlightMap<K, V> {
    #[cfg(not(stormwall_loom))]
    inner: dashmap::DashMap<K, V, foldhash::fast::RandomState>,
    #[cfg(stormwall_loom)]
    inner: Mutex<std::collections::HashMap<K, V, foldhash::fast::RandomState>>,
}

impl<K: Hash + Eq, V> FlightMap<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            // foldhash: fast, with a per-map random seed (keys can come from clients).
            #[cfg(not(stormwall_loom))]
            inner: dashmap::DashMap::with_hasher(foldhash::fast::RandomState::default()),
            #[cfg(stormwall_loom)]
            inner: Mutex::new(std::collections::HashMap::with_hasher(
                foldhash::fast::RandomState::default(),
            )),
        }
    }

    /// Calls `f` with the key and its current value under the shard lock; a value `f` returns
    /// replaces (or becomes) the entry.
    pub(crate) fn with_entry<R>(
        &self,
        key: K,
        f: impl FnOnce(&K, Option<&V>) -> (Option<V>, R),
    ) -> R {
        #[cfg(not(stormwall_loom))]
        {
            use dashmap::mapref::entry::Entry;
            match self.inner.entry(key) {
                Entry::Occupied(mut entry) => {
                    let (new, r) = f(entry.key(), Some(entry.get()));
                    if let Some(v) = new {
                        entry.insert(v);
                    }
                    r
                }
                Entry::Vacant(entry) => {
                    let (new, r) = f(entry.key(), None);
                    if let Some(v) = new {
                        entry.insert(v);
                    }
                    r
                }
            }
        }
        #[cfg(stormwall_loom)]
        {
            let mut map = self.inner.lock();
            let (new, r) = f(&key, map.get(&key));
            if let Some(v) = new {
                map.insert(key, v);
            }
            r
        }
    }

    /// Removes the entry of `key` if `pred` holds for its value (called under the shard lock).
    /// Returns whether it was removed.
    pub(crate) fn remove_if(&self, key: &K, pred: impl FnOnce(&V) -> bool) -> bool {
        #[cfg(not(stormwall_loom))]
        {
            self.inner.remove_if(key, |_, v| pred(v)).is_some()
        }
        #[cfg(stormwall_loom)]
        {
            let mut map = self.inner.lock();
            if map.get(key).is_some_and(pred) {
                map.remove(key);
                true
            } else {
                false
            }
        }
    }
}

#[cfg(all(test, stormwall_loom))]
impl<K, V> FlightMap<K, V> {
    /// Entries in the map (model checks: no flight is left behind).
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().len()
    }
}
