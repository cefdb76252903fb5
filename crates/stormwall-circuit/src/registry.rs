//! Which breaker judges a request: one for all, or one per key (bounded).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use stormwall_core::key::KeyExtractor;
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerSnapshot, Observers, State};
use crate::config::{BreakerConfig, ConfigError};

/// Chooses the breaker that judges a request. Implemented by [`SingleBreaker`] and
/// [`KeyedBreakers`].
pub trait SelectBreaker<Req>: Send + Sync + 'static {
    /// The breaker for `req`.
    fn select(&self, req: &Req) -> Arc<Breaker>;
}

/// The breakers of a layer, seen from a health endpoint. Implemented by [`SingleBreaker`] and
/// [`KeyedBreakers`].
pub trait Snapshots: Send + Sync + 'static {
    /// A snapshot of every breaker at `now`.
    fn snapshots(&self, now: Instant) -> Vec<BreakerSnapshot>;
    /// Requests judged by the fallback breaker (keyed breakers only).
    fn overflowed(&self) -> u64;
    /// Subscribes to state transitions.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::StateTransition>;
}

/// One breaker for every request.
#[derive(Debug)]
pub struct SingleBreaker {
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) observers: Observers,
}

impl<Req> SelectBreaker<Req> for SingleBreaker {
    #[inline]
    fn select(&self, _req: &Req) -> Arc<Breaker> {
        self.breaker.clone()
    }
}

impl Snapshots for SingleBreaker {
    fn snapshots(&self, now: Instant) -> Vec<BreakerSnapshot> {
        vec![self.breaker.snapshot(now)]
    }
    fn overflowed(&self) -> u64 {
        0
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::StateTransition> {
        self.observers.events.subscribe()
    }
}

/// One breaker per key (host, route, any [`KeyExtractor`]), at most `max_keys` of them.
///
/// At the bound, a new key evicts a *closed* breaker that has no call in flight; if every
/// breaker is open, half-open or busy, the new key is judged by the shared **fallback**
/// breaker (named `NAME/_fallback`), as are requests whose key cannot be extracted. Both
/// cases are counted (`stormwall_circuit_key_overflow_total`, [`CircuitStats::overflowed`]).
/// Concurrent first requests for new keys may overshoot `max_keys` by at most the number of
/// callers racing at that moment. Finding an eviction victim scans the map, which only
/// happens for a new key once the map is full.
///
/// [`CircuitStats::overflowed`]: crate::CircuitStats::overflowed
pub struct KeyedBreakers<E, K> {
    name: Arc<str>,
    config: BreakerConfig,
    extractor: E,
    max_keys: usize,
    map: DashMap<K, Arc<Breaker>>,
    fallback: Arc<Breaker>,
    observers: Observers,
    overflowed: AtomicU64,
}

impl<E, K: fmt::Debug + Eq + std::hash::Hash> fmt::Debug for KeyedBreakers<E, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("name", &self.name)
            .field("keys", &self.map.len())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<E, K> KeyedBreakers<E, K>
where
    K: Eq + std::hash::Hash + fmt::Debug + Clone,
{
    pub(crate) fn new(
        name: Arc<str>,
        config: BreakerConfig,
        extractor: E,
        max_keys: usize,
        observers: Observers,
    ) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(ConfigError::MaxKeys);
        }
        let fallback = Arc::new(Breaker::with_observers(
            format!("{name}/_fallback").into(),
            config.clone(),
            Instant::now(),
            observers.clone(),
        )?);
        Ok(Self {
            name,
            config,
            extractor,
            max_keys,
            map: DashMap::new(),
            fallback,
            observers,
            overflowed: AtomicU64::new(0),
        })
    }

    fn overflow(&self, why: &str) -> Arc<Breaker> {
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("stormwall_circuit_key_overflow_total", "breaker" => self.name.to_string())
            .increment(1);
        tracing::debug!(breaker = %self.name, why, "request judged by the fallback breaker");
        self.fallback.clone()
    }

    fn get_or_insert(&self, key: K) -> Arc<Breaker> {
        if let Some(b) = self.map.get(&key) {
            return b.clone();
        }
        if self.map.len() >= self.max_keys {
            // Evict one idle closed breaker, if any.
            let victim = self
                .map
                .iter()
                .find(|e| e.value().state() == State::Closed && Arc::strong_count(e.value()) == 1)
                .map(|e| e.key().clone());
            match victim {
                Some(k) => {
                    self.map.remove(&k);
                }
                _ => return self.overflow("max_keys reached"),
            }
        }
        let name: Arc<str> = format!("{}/{:?}", self.name, key).into();
        self.map
            .entry(key)
            .or_insert_with(|| {
                Arc::new(
                    Breaker::with_observers(
                        name,
                        self.config.clone(),
                        Instant::now(),
                        self.observers.clone(),
                    )
                    .expect("config validated when the layer was built"),
                )
            })
            .clone()
    }
}

impl<E, Req> SelectBreaker<Req> for KeyedBreakers<E, E::Key>
where
    E: KeyExtractor<Req> + Send + Sync + 'static,
{
    fn select(&self, req: &Req) -> Arc<Breaker> {
        match self.extractor.extract(req) {
            Ok(key) => self.get_or_insert(key),
            Err(_) => self.overflow("no key"),
        }
    }
}

impl<E, K> Snapshots for KeyedBreakers<E, K>
where
    E: Send + Sync + 'static,
    K: Eq + std::hash::Hash + Send + Sync + 'static,
{
    fn snapshots(&self, now: Instant) -> Vec<BreakerSnapshot> {
        let mut v: Vec<_> = self.map.iter().map(|e| e.value().snapshot(now)).collect();
        v.push(self.fallback.snapshot(now));
        v
    }
    fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::StateTransition> {
        self.observers.events.subscribe()
    }
}

/// A handle on the breakers of a layer, for health endpoints: see
/// [`CircuitBreakerLayer::stats`](crate::CircuitBreakerLayer::stats).
#[derive(Clone)]
pub struct CircuitStats {
    pub(crate) inner: Arc<dyn Snapshots>,
}

impl fmt::Debug for CircuitStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitStats").finish_non_exhaustive()
    }
}

impl CircuitStats {
    /// A snapshot of every breaker (for keyed layers, the fallback breaker comes last).
    pub fn snapshot(&self) -> Vec<BreakerSnapshot> {
        self.inner.snapshots(Instant::now())
    }

    /// Requests judged by the fallback breaker because of `max_keys` or a missing key.
    pub fn overflowed(&self) -> u64 {
        self.inner.overflowed()
    }

    /// Subscribes to the state transitions of every breaker of the layer.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::StateTransition> {
        self.inner.subscribe()
    }
}
