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

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) revalidated_not_modified: AtomicU64,
    pub(crate) revalidated_modified: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) collapsed: AtomicU64,
    pub(crate) invalidated: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, name: &'static str) {
    counter.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(name).increment(1);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CacheStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: l(&self.hits),
            misses: l(&self.misses),
            stale_served: l(&self.stale_served),
            revalidated_not_modified: l(&self.revalidated_not_modified),
            revalidated_modified: l(&self.revalidated_modified),
            stored: l(&self.stored),
            collapsed: l(&self.collapsed),
            invalidated: l(&self.invalidated),
            ..CacheStats::default()
        }
    }
}
