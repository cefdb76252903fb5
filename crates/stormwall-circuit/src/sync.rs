//! The atomics of the lock-free state. Under `--cfg stormwall_loom` (see `scripts/loom`) they
//! are `loom`'s, so that the model checks in `loom_tests` explore every interleaving of the
//! breaker's word, the windows and the half-open counters; otherwise they are `std`'s.

#[cfg(not(stormwall_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

#[cfg(stormwall_loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
