//! Where stored responses live: the [`Store`] trait and the default in-memory [`MemoryStore`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::header::AGE;
use http::{HeaderMap, HeaderValue};
use moka::notification::RemovalCause;
use parking_lot::Mutex;
use stormwall_core::SharedResponse;
use stormwall_core::time::Instant;

use crate::directives::ResponseDirectives;
use crate::policy::{self, Freshness, Rules, VaryKey};
use crate::status::CACHE_STATUS;

/// One stored response (one variant of a URL): the buffered response, the secondary key its
/// `Vary` header selects, and the freshness facts computed when it was received.
pub struct Entry {
    pub(crate) response: SharedResponse,
    pub(crate) vary: VaryKey,
    pub(crate) directives: ResponseDirectives,
    pub(crate) freshness: Freshness,
    /// The stored headers as served: with an `Age` slot and, last, a `Cache-Status` slot, so
    /// that serving clones one map and overwrites two values (no insert, no reallocation).
    pub(crate) served: HeaderMap,
    /// Whether the `Cache-Status` slot is the only `Cache-Status` value (the origin sent
    /// none): then it is overwritten without walking the values.
    pub(crate) own_status_only: bool,
    /// The `Age` and `Cache-Status` of a plain hit, as last rendered (they change once a
    /// second): a hit clones them instead of formatting.
    hit_memo: Mutex<Option<HitMemo>>,
}

/// `Age` and a plain hit's `Cache-Status` at one age (in whole seconds).
struct HitMemo {
    age_secs: u64,
    age: HeaderValue,
    status: HeaderValue,
}

/// The headers a stored response is served with: its own, then `Age` and `Cache-Status`
/// placeholders (overwritten on every use; see [`Entry::served`]).
fn served_headers(stored: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(stored.len() + 2);
    let mut last = None;
    for (name, value) in stored {
        if last != Some(name) {
            headers.insert(name.clone(), value.clone());
            last = Some(name);
        } else {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(AGE, HeaderValue::from_static("0"));
    headers.append(CACHE_STATUS.clone(), HeaderValue::from_static("-"));
    headers
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
        let directives = ResponseDirectives::from_headers(response.headers());
        Self::with_directives(
            rules,
            response,
            directives,
            request_headers,
            request_time,
            response_time,
            response_system,
        )
    }

    /// [`Entry::new`] with the response's directives already parsed.
    pub(crate) fn with_directives(
        rules: &Rules,
        response: SharedResponse,
        directives: ResponseDirectives,
        request_headers: &HeaderMap,
        request_time: Instant,
        response_time: Instant,
        response_system: SystemTime,
    ) -> Self {
        let headers = response.headers();
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
            vary: policy::secondary_key(rules, headers, request_headers),
            directives,
            freshness: Freshness {
                response_time,
                corrected_initial_age,
                lifetime,
            },
            served: served_headers(headers),
            own_status_only: !headers.contains_key(&CACHE_STATUS),
            hit_memo: Mutex::new(None),
            response,
        }
    }

    /// An entry from facts computed elsewhere (an entry read back from a shared tier).
    #[cfg(feature = "redis")]
    pub(crate) fn from_parts(
        response: SharedResponse,
        vary: VaryKey,
        directives: ResponseDirectives,
        freshness: Freshness,
    ) -> Self {
        let headers = response.headers();
        Self {
            vary,
            directives,
            freshness,
            served: served_headers(headers),
            own_status_only: !headers.contains_key(&CACHE_STATUS),
            hit_memo: Mutex::new(None),
            response,
        }
    }

    /// `Age` and a plain hit's `Cache-Status` (rendered by `render` for cache `name`) at
    /// `age_secs`: from the memo when it holds this age, else rendered and remembered. Never
    /// waits: under contention, renders without the memo.
    pub(crate) fn hit_headers(
        &self,
        age_secs: u64,
        name: &str,
        render: impl FnOnce() -> HeaderValue,
    ) -> (HeaderValue, HeaderValue) {
        let Some(mut memo) = self.hit_memo.try_lock() else {
            return (policy::age_header(age_secs), render());
        };
        if let Some(m) = memo.as_ref()
            && m.age_secs == age_secs
            // One entry could be served by two caches sharing a store: the name must match.
            && m.status.as_bytes().strip_prefix(name.as_bytes()).is_some_and(|rest| rest.starts_with(b";"))
        {
            return (m.age.clone(), m.status.clone());
        }
        let m = HitMemo {
            age_secs,
            age: policy::age_header(age_secs),
            status: render(),
        };
        let out = (m.age.clone(), m.status.clone());
        *memo = Some(m);
        out
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
        // The served copy of the headers shares the values (reference-counted) and adds one
        // map: about 32 bytes per field.
        self.response.weight() + 32 * self.served.len() + 160
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
/// Lookups go through a concurrent hash index (one read lock, no allocation); moka owns the
/// size bound and the eviction policy. One lookup in [`READ_SAMPLE`] is also recorded in
/// moka, so its admission/eviction policy still sees which entries are hot, without paying
/// moka's read bookkeeping on every hit.
///
/// ```
/// use stormwall_cache::{MemoryStore, Store};
/// let store = MemoryStore::new(64 * 1024 * 1024);
/// assert!(store.get("GET http://example.com/").is_none());
/// ```
pub struct MemoryStore {
    index: Arc<Index>,
    policy: moka::sync::Cache<String, Variants, foldhash::fast::RandomState>,
    evictions: Arc<AtomicU64>,
}

/// The lookup index: foldhash (fast, with a per-map random seed: keys come from clients).
type Index = dashmap::DashMap<String, Variants, foldhash::fast::RandomState>;

/// One lookup in this many is recorded in moka's eviction policy (per thread).
pub const READ_SAMPLE: u32 = 8;

thread_local! {
    static READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.policy.entry_count())
            .field("bytes", &self.policy.weighted_size())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes` (estimated).
    pub fn new(max_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let index = Arc::new(Index::with_hasher(foldhash::fast::RandomState::default()));
        let counter = evictions.clone();
        let listener_index = Arc::downgrade(&index);
        let policy = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, variants: &Variants| {
                let w: usize = variants.iter().map(|e| e.weight()).sum::<usize>() + key.len();
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |key: Arc<String>, value: Variants, cause| {
                // Drop the index entry only if it still holds the evicted value (a newer
                // value for the key may have been put meanwhile).
                if let Some(index) = listener_index.upgrade() {
                    index.remove_if(key.as_str(), |_, v| Arc::ptr_eq(v, &value));
                }
                if cause == RemovalCause::Size {
                    counter.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("stormwall_cache_evictions_total").increment(1);
                }
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            index,
            policy,
            evictions,
        }
    }
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> Option<Variants> {
        let found = self.index.get(key).map(|v| v.value().clone());
        if found.is_some() {
            let sample = READS.with(|n| {
                let v = n.get().wrapping_add(1);
                n.set(v);
                v % READ_SAMPLE == 0
            });
            if sample {
                let _ = self.policy.get(key);
            }
        }
        found
    }

    fn put(&self, key: &str, variants: Variants) {
        self.index.insert(key.to_owned(), variants.clone());
        self.policy.insert(key.to_owned(), variants);
    }

    fn remove(&self, key: &str) -> bool {
        let removed = self.index.remove(key).is_some();
        self.policy.invalidate(key);
        removed
    }

    fn remove_matching(&self, matches: &dyn Fn(&str) -> bool) -> usize {
        let keys: Vec<String> = self
            .index
            .iter()
            .filter(|e| matches(e.key()))
            .map(|e| e.key().clone())
            .collect();
        keys.iter().filter(|k| self.remove(k)).count()
    }

    fn clear(&self) {
        self.index.clear();
        self.policy.invalidate_all();
        self.policy.run_pending_tasks();
    }

    fn stored_bytes(&self) -> u64 {
        self.policy.weighted_size()
    }

    fn len(&self) -> u64 {
        self.index.len() as u64
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn sync(&self) {
        self.policy.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn entry(body: usize) -> Variants {
        let response = SharedResponse::from_parts(
            StatusCode::OK,
            HeaderMap::new(),
            vec![b'x'; body].into(),
            None,
        );
        let now = Instant::now();
        let e = Entry::new(
            &Rules::default(),
            response,
            &HeaderMap::new(),
            now,
            now,
            SystemTime::now(),
        );
        vec![Arc::new(e)].into()
    }

    // The index and the policy agree after evictions: the byte bound holds and evicted keys
    // are gone from lookups too.
    #[tokio::test]
    async fn bounded_by_bytes_index_follows_evictions() {
        let store = MemoryStore::new(50_000);
        for i in 0..200 {
            store.put(&format!("GET http://h/{i}"), entry(1_000));
            store.sync();
        }
        store.sync();
        assert!(store.stored_bytes() <= 50_000, "{}", store.stored_bytes());
        assert!(store.evictions() > 0);
        let present = (0..200)
            .filter(|i| store.get(&format!("GET http://h/{i}")).is_some())
            .count() as u64;
        assert_eq!(present, store.len());
        assert!(present < 200);
        // Replacing a value keeps the newer one.
        let v = entry(10);
        store.put("GET http://h/x", entry(10));
        store.put("GET http://h/x", v.clone());
        store.sync();
        assert!(Arc::ptr_eq(&store.get("GET http://h/x").unwrap(), &v));
        assert_eq!(
            store.remove_matching(&|k| k.starts_with("GET http://h/x")),
            1
        );
        store.clear();
        assert_eq!(store.len(), 0);
    }
}
