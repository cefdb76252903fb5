//! Where stored responses live: the [`Store`] trait and the default in-memory [`MemoryStore`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use moka::notification::RemovalCause;
use stormwall_core::SharedResponse;
use stormwall_core::time::Instant;

use crate::directives::ResponseDirectives;
use crate::policy::{self, Freshness, Rules, VaryKey};

/// One stored response (one variant of a URL): the buffered response, the secondary key its
/// `Vary` header selects, and the freshness facts computed when it was received.
pub struct Entry {
    pub(crate) response: SharedResponse,
    pub(crate) vary: VaryKey,
    pub(crate) directives: ResponseDirectives,
    pub(crate) freshness: Freshness,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("status", &self.response.status())
            .field("vary", &self.vary)
            .field("lifetime", &self.freshness.lifetime)
            .finish()
    }
}

impl Entry {
    /// Computes the freshness of `response`, received at `response_time` for a request sent
    /// at `request_time` with `request_headers`.
    pub(crate) fn new(
        rules: &Rules,
        response: SharedResponse,
        request_headers: &HeaderMap,
        request_time: Instant,
        response_time: Instant,
        response_system: SystemTime,
    ) -> Self {
        let headers = response.headers();
        let directives = ResponseDirectives::from_headers(headers);
        let lifetime = policy::freshness_lifetime(
            rules,
            response.status(),
            headers,
            &directives,
            response_system,
        );
        let corrected_initial_age =
            policy::corrected_initial_age(headers, request_time, response_time, response_system);
        Self {
            vary: policy::vary_key(headers, request_headers),
            directives,
            freshness: Freshness {
                response_time,
                corrected_initial_age,
                lifetime,
            },
            response,
        }
    }

    /// The stored response.
    pub fn response(&self) -> &SharedResponse {
        &self.response
    }

    /// Its freshness lifetime (RFC 9111 §4.2.1).
    pub fn freshness_lifetime(&self) -> Duration {
        self.freshness.lifetime
    }

    /// Its current age at `now` (RFC 9111 §4.2.3).
    pub fn current_age(&self, now: Instant) -> Duration {
        self.freshness.current_age(now)
    }

    /// Memory estimate, for weighing.
    pub fn weight(&self) -> usize {
        self.response.weight() + 64
    }
}

/// All stored variants of one URL (one primary key), newest last.
pub type Variants = Arc<[Arc<Entry>]>;

/// A cache store: primary key (`"GET http://host/path?query"`) → [`Variants`].
///
/// The store is synchronous (the in-memory hit path must not allocate a future). It only
/// keeps and evicts; all HTTP semantics live in the layer.
pub trait Store: Send + Sync + 'static {
    /// The variants stored for `key`.
    fn get(&self, key: &str) -> Option<Variants>;
    /// Replaces the variants stored for `key`.
    fn put(&self, key: &str, variants: Variants);
    /// Removes `key`; whether it was present.
    fn remove(&self, key: &str) -> bool;
    /// Removes every key for which `matches` is true; how many were removed.
    fn remove_matching(&self, matches: &dyn Fn(&str) -> bool) -> usize;
    /// Removes everything.
    fn clear(&self);
    /// Bytes currently stored (estimate).
    fn stored_bytes(&self) -> u64;
    /// Number of keys stored.
    fn len(&self) -> u64;
    /// Whether the store is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entries evicted because the store was full.
    fn evictions(&self) -> u64 {
        0
    }
    /// Runs pending housekeeping (so that sizes and eviction counts are exact).
    fn sync(&self) {}
}

/// The default store: in memory, bounded by total bytes (moka, weighted by
/// [`SharedResponse::weight`]), least-recently/frequently used entries evicted first.
///
/// ```
/// use stormwall_cache::{MemoryStore, Store};
/// let store = MemoryStore::new(64 * 1024 * 1024);
/// assert!(store.get("GET http://example.com/").is_none());
/// ```
pub struct MemoryStore {
    cache: moka::sync::Cache<String, Variants>,
    evictions: Arc<AtomicU64>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes` (estimated).
    pub fn new(max_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, variants: &Variants| {
                let w: usize = variants.iter().map(|e| e.weight()).sum::<usize>() + key.len();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_key, _value, cause| {
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("stormwall_cache_evictions_total").increment(1);
                }
            })
            .build();
        Self { cache, evictions }
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Option<Variants> {
        self.cache.get(key)
    }

    fn put(&self, key: &str, variants: Variants) {
        self.cache.insert(key.to_owned(), variants);
    }

    fn remove(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    fn remove_matching(&self, matches: &dyn Fn(&str) -> bool) -> usize {
        let keys: Vec<Arc<String>> = self
            .cache
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(k, _)| k)
            .collect();
        let n = keys.len();
        for k in keys {
            self.cache.invalidate(k.as_str());
        }
        n
    }

    fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }

    fn stored_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}
