//! The bounded wait queue: priority order, FIFO within a priority, per key combination.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};

use parking_lot::Mutex;

type Pos = (Reverse<u8>, u64);

#[derive(Debug)]
pub(crate) struct WaitQueue {
    inner: Mutex<Inner>,
    /// `inner.len`, readable without the lock: every admitted request in wait mode asks
    /// whether anyone waits, and almost always nobody does.
    waiting: AtomicUsize,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    len: usize,
    queues: HashMap<u64, BTreeMap<Pos, Option<Waker>>>,
}

/// A place in the wait queue; dropping it releases the place (and wakes the next waiter).
#[derive(Debug)]
pub(crate) struct Ticket {
    queue: Arc<WaitQueue>,
    key: u64,
    pos: Pos,
}

impl WaitQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            waiting: AtomicUsize::new(0),
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Whether someone already waits for this key combination.
    pub(crate) fn has_waiters(&self, key: u64) -> bool {
        if self.len() == 0 {
            return false;
        }
        let inner = self.inner.lock();
        inner.len > 0 && inner.queues.contains_key(&key)
    }

    /// Takes a place, or `None` when the queue is full.
    pub(crate) fn enqueue(self: &Arc<Self>, key: u64, priority: u8) -> Option<Ticket> {
        let mut inner = self.inner.lock();
        if inner.len >= self.capacity {
            return None;
        }
        inner.seq += 1;
        inner.len += 1;
        self.waiting.store(inner.len, Ordering::Release);
        let pos = (Reverse(priority), inner.seq);
        let q = inner.queues.entry(key).or_default();
        // A new head (higher priority than everyone waiting) must be told to go; the old
        // head finds out it is no longer first when it wakes.
        q.insert(pos, None);
        Some(Ticket {
            queue: self.clone(),
            key,
            pos,
        })
    }
}

impl Ticket {
    /// Whether this ticket is first in its queue; if not, registers the waker.
    pub(crate) fn poll_head(&self, cx: &mut Context<'_>) -> bool {
        let mut inner = self.queue.inner.lock();
        let Some(q) = inner.queues.get_mut(&self.key) else {
            return true;
        };
        if q.keys().next() == Some(&self.pos) {
            return true;
        }
        if let Some(slot) = q.get_mut(&self.pos) {
            match slot {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        false
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.queue.inner.lock();
        let Some(q) = inner.queues.get_mut(&self.key) else {
            return;
        };
        let was_head = q.keys().next() == Some(&self.pos);
        if q.remove(&self.pos).is_none() {
            return;
        }
        let next = if was_head {
            q.values_mut().next().and_then(Option::take)
        } else {
            None
        };
        if q.is_empty() {
            inner.queues.remove(&self.key);
        }
        inner.len -= 1;
        self.queue.waiting.store(inner.len, Ordering::Release);
        drop(inner);
        if let Some(w) = next {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn priority_then_fifo_and_drop_releases() {
        let q = Arc::new(WaitQueue::new(3));
        let mut cx = Context::from_waker(Waker::noop());
        let a = q.enqueue(1, 0).unwrap();
        let b = q.enqueue(1, 0).unwrap();
        let c = q.enqueue(1, 5).unwrap();
        assert!(q.enqueue(1, 9).is_none(), "full");
        assert!(c.poll_head(&mut cx));
        assert!(!a.poll_head(&mut cx));
        drop(c);
        assert!(a.poll_head(&mut cx));
        drop(a);
        assert!(b.poll_head(&mut cx));
        assert_eq!(q.len(), 1);
        drop(b);
        assert_eq!(q.len(), 0);
        assert!(!q.has_waiters(1));
    }
}
