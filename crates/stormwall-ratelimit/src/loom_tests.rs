//! Loom model checks of the lock-free cells (run with `scripts/loom`): every interleaving of
//! the threads below, up to `LOOM_MAX_PREEMPTIONS` preemptions, is explored.

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;

use crate::cell::{GcraCell, QuotaCell};
use crate::quota::Quota;

/// 1 unit per 100 ms, burst `burst`.
fn quota(burst: u64) -> Quota {
    Quota::new(10, Duration::from_secs(1))
        .unwrap()
        .with_burst(burst)
        .unwrap()
}

const NOW: u64 = 1_000_000_000;
const T: u64 = 100_000_000;

/// Three threads decide one unit each at the same instant on a bucket of burst 2: exactly two
/// are admitted (never more than the burst, and no admission lost to a CAS race), and the cell
/// ends exactly two emission intervals ahead.
#[test]
fn loom_gcra_three_deciders_never_exceed_burst() {
    loom::model(|| {
        let cell = Arc::new(GcraCell::new());
        let q = quota(2);
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let cell = cell.clone();
                thread::spawn(move || cell.decide(&q, NOW, 1, true, false).allowed)
            })
            .collect();
        let admitted = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&a| a)
            .count();
        assert_eq!(admitted, 2);
        assert_eq!(cell.tat(), NOW + 2 * T);
    });
}

/// The layer's admit-only path (`admit`) racing the store's `decide` on one cell (a pinned
/// global cell is used by both): exactly the burst is admitted, none lost, none counted twice.
#[test]
fn loom_gcra_admit_and_decide_share_the_burst() {
    loom::model(|| {
        let cell = Arc::new(GcraCell::new());
        let q = quota(2);
        let a = {
            let cell = cell.clone();
            thread::spawn(move || cell.admit(&q, NOW, 1))
        };
        let b = {
            let cell = cell.clone();
            thread::spawn(move || cell.decide(&q, NOW, 1, true, false).allowed)
        };
        let c = cell.admit(&q, NOW, 1);
        let admitted = [a.join().unwrap(), b.join().unwrap(), c]
            .into_iter()
            .filter(|&x| x)
            .count();
        assert_eq!(admitted, 2);
        assert_eq!(cell.tat(), NOW + 2 * T);
    });
}

/// Two threads with different costs: the admitted costs always sum to the cell's advance
/// (no lost update), and never above the burst.
#[test]
fn loom_gcra_costs_add_up() {
    loom::model(|| {
        let cell = Arc::new(GcraCell::new());
        let q = quota(3);
        let a = {
            let cell = cell.clone();
            thread::spawn(move || (cell.decide(&q, NOW, 2, true, false).allowed, 2))
        };
        let b = {
            let cell = cell.clone();
            thread::spawn(move || (cell.decide(&q, NOW, 2, true, false).allowed, 2))
        };
        let spent: u64 = [a.join().unwrap(), b.join().unwrap()]
            .into_iter()
            .filter(|(ok, _)| *ok)
            .map(|(_, c)| c)
            .sum();
        // Burst 3 holds one request of 2, never both.
        assert_eq!(spent, 2);
        assert_eq!(cell.tat(), NOW + spent * T);
    });
}

/// A refund (the undo of a multi-limit check) racing with a decision: neither is lost.
#[test]
fn loom_gcra_refund_and_decide() {
    loom::model(|| {
        let cell = Arc::new(GcraCell::new());
        let q = quota(2);
        assert!(cell.decide(&q, NOW, 1, true, false).allowed);
        let undo = {
            let cell = cell.clone();
            thread::spawn(move || cell.refund(&q, 1))
        };
        let other = {
            let cell = cell.clone();
            thread::spawn(move || cell.decide(&q, NOW, 1, true, false).allowed)
        };
        undo.join().unwrap();
        // With burst 2 and one unit spent, the other request is admitted whatever the order.
        assert!(other.join().unwrap());
        assert_eq!(cell.tat(), NOW + T);
    });
}

/// A reader of the quota cell racing with a writer sees the old quota or the new one, never
/// a mix of both.
#[test]
fn loom_quota_cell_never_tears() {
    loom::model(|| {
        let old = Quota::per_second(10).unwrap();
        let new = Quota::per_minute(7).unwrap().with_burst(3).unwrap();
        let cell = Arc::new(QuotaCell::new(old));
        let writer = {
            let cell = cell.clone();
            thread::spawn(move || cell.set(new))
        };
        let seen = cell.get();
        assert!(seen == old || seen == new, "torn read: {seen:?}");
        writer.join().unwrap();
        assert_eq!(cell.get(), new);
    });
}
