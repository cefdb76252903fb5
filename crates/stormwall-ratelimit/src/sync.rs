//! The atomics of the lock-free state (the GCRA cell, the quota cell). Under
//! `--cfg stormwall_loom` (see `scripts/loom`) they are `loom`'s, so that the model checks in
//! `loom_tests` explore every interleaving; otherwise they are `std`'s.

#[cfg(not(stormwall_loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering, fence};

#[cfg(stormwall_loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering, fence};

/// One step of a spin loop (a yield under loom, so that the model checker can schedule the
/// thread being waited for).
#[inline]
pub(crate) fn spin() {
    #[cfg(stormwall_loom)]
    loom::thread::yield_now();
    #[cfg(not(stormwall_loom))]
    std::hint::spin_loop();
}
