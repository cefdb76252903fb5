//! The synchronisation the coalescing slot is built on: the flight map and the flight's lock.
//!
//! Normally a sharded [`DashMap`](dashmap::DashMap) and a `parking_lot` mutex. Under
//! `--cfg stormwall_loom` (see `scripts/loom`) the same two are built from `loom`'s mutex, so
//! the model checks in `flight.rs` explore every interleaving of joining, driving, handing over
//! and the no-waiter pass-through decision.

use std::hash::{BuildHasher, Hash, Hasher};

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

/// A key with its hash, computed once (when the caller joins): the map uses the stored hash
/// when the flight is inserted and again when it is removed, instead of hashing the key twice.
#[derive(Clone)]
pub(crate) struct Hashed<K> {
    hash: u64,
    key: K,
}

impl<K: Hash> Hash for Hashed<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: PartialEq> PartialEq for Hashed<K> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for Hashed<K> {}

/// The map's hasher: the keys carry their hash already ([`Hashed`]), taken as it is.
#[derive(Clone, Copy, Default)]
pub(crate) struct PreHashed;

impl BuildHasher for PreHashed {
    type Hasher = PreHasher;

    fn build_hasher(&self) -> PreHasher {
        PreHasher(0)
    }
}

pub(crate) struct PreHasher(u64);

impl Hasher for PreHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `Hashed`; fold anything else in anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The map of flights: key → flight. Every operation holds the key's shard lock for its whole
/// duration, which is what makes "look up, inspect the flight, insert or attach" atomic.
pub(crate) struct FlightMap<K, V> {
    /// Hashes the keys (once per caller, see [`Hashed`]).
    hasher: foldhash::fast::RandomState,
    #[cfg(not(stormwall_loom))]
    inner: dashmap::DashMap<Hashed<K>, V, PreHashed>,
    #[cfg(stormwall_loom)]
    inner: Mutex<std::collections::HashMap<Hashed<K>, V, PreHashed>>,
}

impl<K: Hash + Eq, V> FlightMap<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            // foldhash: fast, with a per-map random seed (keys can come from clients).
            hasher: foldhash::fast::RandomState::default(),
            #[cfg(not(stormwall_loom))]
            inner: dashmap::DashMap::with_hasher(PreHashed),
            #[cfg(stormwall_loom)]
            inner: Mutex::new(std::collections::HashMap::with_hasher(PreHashed)),
        }
    }

    /// `key` with its hash, for [`with_entry`](Self::with_entry) and
    /// [`remove_if`](Self::remove_if).
    pub(crate) fn hashed(&self, key: K) -> Hashed<K> {
        Hashed {
            hash: self.hasher.hash_one(&key),
            key,
        }
    }

    /// Calls `f` with the key and its current value under the shard lock; a value `f` returns
    /// replaces (or becomes) the entry.
    pub(crate) fn with_entry<R>(
        &self,
        key: Hashed<K>,
        f: impl FnOnce(&Hashed<K>, Option<&V>) -> (Option<V>, R),
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
    pub(crate) fn remove_if(&self, key: &Hashed<K>, pred: impl FnOnce(&V) -> bool) -> bool {
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
