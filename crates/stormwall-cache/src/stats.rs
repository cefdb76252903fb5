//! Counters and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a cache's counters (see [`CacheHandle::stats`](crate::CacheHandle::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests answered from the cache without contacting the origin (fresh, or stale
    /// allowed by `max-stale` / `stale-while-revalidate`).
    pub hits: u64,
    /// Cacheable requests that went to the origin (misses and revalidations).
    pub misses: u64,
    /// Stale responses served (`max-stale`, `stale-while-revalidate`, `stale-if-error`).
    pub stale_served: u64,
    /// Revalidations answered `304 Not Modified`.
    pub revalidated_not_modified: u64,
    /// Revalidations answered with a full response.
    pub revalidated_modified: u64,
    /// Responses stored.
    pub stored: u64,
    /// Requests that waited for another request's upstream call (coalesced).
    pub collapsed: u64,
    /// Entries removed by invalidation (unsafe methods) or purges.
    pub invalidated: u64,
    /// Bytes currently stored (estimate).
    pub bytes_stored: u64,
    /// URLs currently stored.
    pub entries: u64,
    /// Entries evicted because the store was full.
    pub evictions: u64,
}

/// A counter with its `metrics` handle, registered once (no registry lookup per request).
#[derive(Debug)]
pub(crate) struct Metric {
    n: AtomicU64,
    handle: metrics::Counter,
}

impl Metric {
    fn new(name: &'static str) -> Self {
        Self {
            n: AtomicU64::new(0),
            handle: metrics::counter!(name),
        }
    }

    pub(crate) fn bump(&self) {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.handle.increment(1);
    }

    fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) hits: Metric,
    pub(crate) misses: Metric,
    pub(crate) stale_served: Metric,
    pub(crate) revalidated_not_modified: Metric,
    pub(crate) revalidated_modified: Metric,
    pub(crate) stored: Metric,
    pub(crate) collapsed: Metric,
    pub(crate) invalidated: Metric,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            hits: Metric::new("stormwall_cache_hits_total"),
            misses: Metric::new("stormwall_cache_misses_total"),
            stale_served: Metric::new("stormwall_cache_stale_served_total"),
            revalidated_not_modified: Metric::new("stormwall_cache_revalidated_not_modified_total"),
            revalidated_modified: Metric::new("stormwall_cache_revalidated_modified_total"),
            stored: Metric::new("stormwall_cache_stored_total"),
            collapsed: Metric::new("stormwall_cache_collapsed_total"),
            invalidated: Metric::new("stormwall_cache_invalidations_total"),
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            stale_served: self.stale_served.get(),
            revalidated_not_modified: self.revalidated_not_modified.get(),
            revalidated_modified: self.revalidated_modified.get(),
            stored: self.stored.get(),
            collapsed: self.collapsed.get(),
            invalidated: self.invalidated.get(),
            ..CacheStats::default()
        }
    }
}
