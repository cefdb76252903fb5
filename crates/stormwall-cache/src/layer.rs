//! [`CacheLayer`]: configuration and the shared cache state.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use parking_lot::{Mutex, RwLock};
use stormwall_coalesce::Group;
use tower_layer::Layer;

use crate::policy::{self, Rules};
use crate::service::{Cache, Flight};
use crate::stats::{CacheStats, Counters};
use crate::status::{Status, format_name};
use crate::store::{MemoryStore, Store};

/// What the [`CacheLayer::predicate`] sees about a response the RFC rules allow storing.
#[derive(Debug)]
#[non_exhaustive]
pub struct Candidate<'a> {
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub request_headers: &'a HeaderMap,
    /// The response status.
    pub status: StatusCode,
    /// The response headers.
    pub response_headers: &'a HeaderMap,
}

type Predicate = Arc<dyn Fn(&Candidate<'_>) -> bool + Send + Sync>;

#[derive(Clone)]
struct Config {
    rules: Rules,
    name: String,
    max_bytes: u64,
    max_entry_bytes: usize,
    max_variants: usize,
    max_waiters: usize,
    store: Option<Arc<dyn Store>>,
    predicate: Option<Predicate>,
    #[cfg(feature = "redis")]
    redis: Option<crate::tier::RedisTier>,
}

/// State shared by every clone of a layer and its services.
pub(crate) struct Shared {
    pub(crate) rules: Rules,
    pub(crate) name: String,
    pub(crate) max_entry_bytes: usize,
    pub(crate) max_variants: usize,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) predicate: Option<Predicate>,
    pub(crate) group: Group<String, Flight>,
    pub(crate) refreshing: Mutex<HashSet<String>>,
    pub(crate) counters: Counters,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::tier::RedisTier>,
    /// Rendered `Cache-Status` values without a `ttl` (forwarded responses), by status: a
    /// pass-through clones one instead of formatting it.
    status_memo: RwLock<HashMap<Status, HeaderValue, foldhash::fast::RandomState>>,
}

/// Most distinct `ttl`-less `Cache-Status` values remembered (a handful in practice: the
/// reasons times the origin's status codes).
const STATUS_MEMO_MAX: usize = 256;

impl Shared {
    /// This cache's `Cache-Status` member for `st`.
    pub(crate) fn status_header(&self, st: Status) -> HeaderValue {
        if st.ttl.is_some() {
            return st.to_header(&self.name);
        }
        if let Some(v) = self.status_memo.read().get(&st) {
            return v.clone();
        }
        let v = st.to_header(&self.name);
        let mut memo = self.status_memo.write();
        if memo.len() < STATUS_MEMO_MAX {
            memo.insert(st, v.clone());
        }
        v
    }

    pub(crate) fn remove_key(&self, key: &str) -> bool {
        let removed = self.store.remove(key);
        #[cfg(feature = "redis")]
        self.tier_remove(key);
        if removed {
            self.counters.invalidated.bump();
        }
        removed
    }
}

/// A [`tower_layer::Layer`] adding an RFC 9111 HTTP cache (see the [crate docs](crate)).
///
/// Clones of a layer, and every service it makes, share one cache.
///
/// ```
/// use std::time::Duration;
/// use stormwall_cache::CacheLayer;
/// let layer = CacheLayer::shared()
///     .name("edge")
///     .max_bytes(256 * 1024 * 1024)
///     .max_entry_bytes(4 * 1024 * 1024)
///     .stale_while_revalidate(Duration::from_secs(10))
///     .stale_if_error(Duration::from_secs(300));
/// let handle = layer.handle();
/// assert_eq!(handle.stats().entries, 0);
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    config: Config,
    shared: Arc<OnceLock<Arc<Shared>>>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("shared", &self.config.rules.shared)
            .field("name", &self.config.name)
            .field("max_bytes", &self.config.max_bytes)
            .field("max_entry_bytes", &self.config.max_entry_bytes)
            .finish()
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::private()
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) $body:expr) => {
        $(#[$doc])*
        pub fn $name(mut self, $($arg: $ty),*) -> Self {
            #[allow(clippy::redundant_closure_call)]
            ($body)(&mut self.config);
            self.shared = Arc::new(OnceLock::new());
            self
        }
    };
}

impl CacheLayer {
    /// A private cache (RFC 9111 §1: for one user, e.g. around an outbound HTTP client).
    pub fn private() -> Self {
        Self {
            config: Config {
                rules: Rules::default(),
                name: "stormwall".to_owned(),
                max_bytes: 64 * 1024 * 1024,
                max_entry_bytes: 1024 * 1024,
                max_variants: 16,
                max_waiters: 10_000,
                store: None,
                predicate: None,
                #[cfg(feature = "redis")]
                redis: None,
            },
            shared: Arc::new(OnceLock::new()),
        }
    }

    /// A shared cache (in front of a server, or around a client used for many users): never
    /// stores `private` responses, responses with `Set-Cookie`, or responses to requests with
    /// `Authorization` or `Cookie` unless `public`, `s-maxage` or `must-revalidate` allow it;
    /// honours `s-maxage` and `proxy-revalidate`.
    pub fn shared() -> Self {
        let mut layer = Self::private();
        layer.config.rules.shared = true;
        layer
    }

    setter! {
        /// The cache's name in `Cache-Status` (default `stormwall`).
        name(name: impl Into<String>) |c: &mut Config| c.name = name.into()
    }
    setter! {
        /// Total bytes the default in-memory store may hold (default 64 MiB).
        max_bytes(bytes: u64) |c: &mut Config| c.max_bytes = bytes
    }
    setter! {
        /// Largest body stored (default 1 MiB). Larger responses stream through uncached.
        max_entry_bytes(bytes: usize) |c: &mut Config| c.max_entry_bytes = bytes
    }
    setter! {
        /// Most variants (`Vary`) kept per URL (default 16); the oldest is dropped beyond.
        max_variants(n: usize) |c: &mut Config| c.max_variants = n.max(1)
    }
    setter! {
        /// Most requests waiting on one upstream call (default 10 000); beyond it, requests go
        /// upstream on their own.
        max_waiters(n: usize) |c: &mut Config| c.max_waiters = n
    }
    setter! {
        /// A freshness lifetime for responses carrying no explicit freshness and no
        /// `Last-Modified` (off by default; useful outbound against APIs sending none).
        default_ttl(ttl: Duration) |c: &mut Config| c.rules.default_ttl = Some(ttl)
    }
    setter! {
        /// Default `stale-while-revalidate` grace when the response has none (default 0).
        stale_while_revalidate(grace: Duration) |c: &mut Config| c.rules.default_swr = grace
    }
    setter! {
        /// Default `stale-if-error` grace when the response has none (default 0).
        stale_if_error(grace: Duration) |c: &mut Config| c.rules.default_sie = grace
    }
    setter! {
        /// Cap of heuristic freshness (10 % of the `Last-Modified` age; default 1 day).
        heuristic_max(max: Duration) |c: &mut Config| c.rules.heuristic_max = max
    }
    setter! {
        /// Shared mode: key stored responses on the forwarding headers
        /// ([`FORWARDING_HEADERS`](crate::FORWARDING_HEADERS): `X-Forwarded-Host`,
        /// `X-Original-URL`, …) as if every response varied on them (default on), so that a
        /// request with a forged value is never served to anyone else. Turn off only if no
        /// origin behind the cache reflects these headers.
        key_forwarding_headers(yes: bool) |c: &mut Config| c.rules.key_forwarding_headers = yes
    }
    setter! {
        /// Scheme assumed for requests whose URI has none (inbound; default `http`).
        https(yes: bool) |c: &mut Config| c.rules.default_scheme = if yes { "https" } else { "http" }
    }
    setter! {
        /// Use this store instead of the default [`MemoryStore`].
        store(store: impl Store) |c: &mut Config| c.store = Some(Arc::new(store))
    }
    #[cfg(feature = "redis")]
    setter! {
        /// Adds a shared second tier on Redis behind the local store (feature `redis`; see
        /// [`RedisTier`](crate::RedisTier) and the [crate docs](crate#redis-tier)).
        redis(tier: crate::tier::RedisTier) |c: &mut Config| c.redis = Some(tier)
    }

    /// Only store responses for which `predicate` returns true, on top of the RFC rules.
    ///
    /// ```
    /// let layer = stormwall_cache::CacheLayer::private()
    ///     .predicate(|c: &stormwall_cache::Candidate<'_>| c.uri.path().starts_with("/static/"));
    /// # let _ = layer;
    /// ```
    pub fn predicate<P>(mut self, predicate: P) -> Self
    where
        P: Fn(&Candidate<'_>) -> bool + Send + Sync + 'static,
    {
        self.config.predicate = Some(Arc::new(predicate));
        self.shared = Arc::new(OnceLock::new());
        self
    }

    pub(crate) fn state(&self) -> Arc<Shared> {
        self.shared
            .get_or_init(|| {
                let c = &self.config;
                let shared = Arc::new(Shared {
                    rules: c.rules.clone(),
                    name: format_name(&c.name),
                    max_entry_bytes: c.max_entry_bytes,
                    max_variants: c.max_variants,
                    store: c
                        .store
                        .clone()
                        .unwrap_or_else(|| Arc::new(MemoryStore::new(c.max_bytes))),
                    predicate: c.predicate.clone(),
                    group: Group::named("cache").max_waiters(c.max_waiters),
                    refreshing: Mutex::new(HashSet::new()),
                    counters: Counters::new(),
                    status_memo: RwLock::new(HashMap::default()),
                    #[cfg(feature = "redis")]
                    redis: c.redis.clone(),
                });
                #[cfg(feature = "redis")]
                shared.tier_register();
                shared
            })
            .clone()
    }

    /// A handle on the cache: purges and stats.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            shared: self.state(),
        }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = Cache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::from_shared(inner, self.state())
    }
}

/// Purges and stats of one cache (cheap to clone).
///
/// ```
/// use stormwall_cache::CacheLayer;
/// let handle = CacheLayer::private().handle();
/// assert!(!handle.purge("http://example.com/a"));
/// assert_eq!(handle.purge_prefix("http://example.com/"), 0);
/// handle.purge_all();
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl CacheHandle {
    /// Removes every stored variant of `url` (absolute: `http://host/path?query`).
    /// Whether anything was stored.
    pub fn purge(&self, url: &str) -> bool {
        policy::url_key(&Method::GET, url).is_some_and(|key| self.shared.remove_key(&key))
    }

    /// Removes every URL starting with `prefix` (absolute, e.g. `http://host/api/`).
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let Some(normalized) = policy::prefix_key(prefix) else {
            return 0;
        };
        let n = self
            .shared
            .store
            .remove_matching(&|k: &str| k.starts_with(&normalized));
        #[cfg(feature = "redis")]
        self.shared.tier_remove_prefix(Some(&normalized));
        for _ in 0..n {
            self.shared.counters.invalidated.bump();
        }
        n
    }

    /// Removes everything.
    pub fn purge_all(&self) {
        self.shared.store.clear();
        #[cfg(feature = "redis")]
        self.shared.tier_remove_prefix(None);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let store = &self.shared.store;
        store.sync();
        let bytes = store.stored_bytes();
        metrics::gauge!("stormwall_cache_stored_bytes").set(bytes as f64);
        CacheStats {
            bytes_stored: bytes,
            entries: store.len(),
            evictions: store.evictions(),
            ..self.shared.counters.snapshot()
        }
    }
}
