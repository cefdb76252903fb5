//! The machinery shared by [`Group`](crate::Group) and [`Coalesce`](crate::Coalesce): one
//! *flight* per key in a sharded map, driven by one of its callers.
//!
//! * A flight holds the upstream future, a slot (optional waker) per caller, the number of
//!   callers still attached, and which caller is the *driver*. Only the driver polls the
//!   upstream future (so only the driver's task is woken by upstream progress); every other
//!   caller parks its waker and is woken exactly once, when the result is published.
//! * The driver polls with the future taken out of the lock (so a re-entrant call into the
//!   same group cannot deadlock) and inside `catch_unwind`, so a panic becomes a published
//!   failure instead of a hang.
//! * When the driver is dropped while others wait, it hands the role to another caller and
//!   wakes it; the upstream future keeps running. When the last caller is dropped, the upstream
//!   future is dropped (cancelled).
//! * On completion the map entry is removed *before* the result is published: a caller that
//!   found the flight in the map is attached to it and gets its result; a caller that comes
//!   after the removal starts a fresh call. Results are not kept: the value is moved out to the
//!   last attached caller.
//! * Lock order: map shard, then flight. Paths that must touch both (completion, cancellation)
//!   never hold the flight lock while taking the shard lock.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::Hash;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use parking_lot::Mutex;

use crate::stats::StatsInner;

/// An upstream call: polled to completion by the driver, then split into the driver's own
/// result and (when others wait) the value shared with them.
pub(crate) trait Upstream: Unpin + Send {
    /// What polling produces.
    type Output;
    /// What the driver gets.
    type Mine;
    /// What every other caller gets a clone of.
    type Shared: Clone + Send;

    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Self::Output>;

    /// Whether the output counts as an error in the stats.
    fn is_error(output: &Self::Output) -> bool;

    /// Splits the output. `share` is false when nobody else waits: no value to share then.
    fn split(output: Self::Output, share: bool) -> (Self::Mine, Option<Self::Shared>);
}

/// What a caller receives.
pub(crate) enum Delivery<M, S> {
    /// The driver's own result.
    Own(M),
    /// The value shared by the driver.
    Shared(S),
    /// The upstream call panicked (or never started): the message.
    Failed(Arc<str>),
}

enum Phase<U: Upstream> {
    /// `fut` is `None` while the driver polls it, and before the leader installed it.
    Running {
        fut: Option<U>,
    },
    Done(U::Shared),
    Failed(Arc<str>),
    /// Cancelled, or every caller took its result.
    Over,
}

struct State<U: Upstream> {
    phase: Phase<U>,
    /// One slot per attached caller (`Some(waker)` once polled); `None` = free slot.
    slots: Vec<Option<Option<Waker>>>,
    free: Vec<usize>,
    /// Callers attached and not yet served.
    attached: usize,
    driver: Option<usize>,
}

impl<U: Upstream> State<U> {
    fn register(&mut self) -> usize {
        self.attached += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i] = Some(None);
            i
        } else {
            self.slots.push(Some(None));
            self.slots.len() - 1
        }
    }

    fn unregister(&mut self, id: usize) {
        if let Some(slot) = self.slots.get_mut(id)
            && slot.take().is_some()
        {
            self.free.push(id);
        }
    }

    /// Takes the published value: moved out for the last attached caller, cloned otherwise.
    fn take_shared(&mut self) -> Option<U::Shared> {
        self.attached -= 1;
        if self.attached == 0 {
            match mem::replace(&mut self.phase, Phase::Over) {
                Phase::Done(v) => Some(v),
                _ => None,
            }
        } else {
            match &self.phase {
                Phase::Done(v) => Some(v.clone()),
                _ => None,
            }
        }
    }
}

pub(crate) struct Flight<K, U: Upstream> {
    core: Arc<Core<K, U>>,
    key: K,
    state: Mutex<State<U>>,
}

/// The map of flights of one group or one layer.
pub(crate) struct Core<K, U: Upstream> {
    /// foldhash: fast, with a per-map random seed (keys can come from clients).
    map: DashMap<K, Arc<Flight<K, U>>, foldhash::fast::RandomState>,
    pub(crate) stats: Arc<StatsInner>,
}

/// The flight maps of one layer, one per concrete flight type (the type depends on the
/// service the layer wraps, which the layer does not know). Every service a layer makes, by
/// any number of `layer()` calls (axum makes one per connection), finds the same map here.
pub(crate) struct Registry {
    pub(crate) stats: Arc<StatsInner>,
    cores: Mutex<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
}

impl Registry {
    pub(crate) fn new(stats: Arc<StatsInner>) -> Arc<Self> {
        Arc::new(Self {
            stats,
            cores: Mutex::new(HashMap::new()),
        })
    }

    /// The map of flights of type `U` for keys `K`, created on first use.
    pub(crate) fn core<K, U>(&self) -> Arc<Core<K, U>>
    where
        K: Hash + Eq + Send + Sync + 'static,
        U: Upstream + 'static,
    {
        let mut cores = self.cores.lock();
        cores
            .entry(TypeId::of::<Arc<Core<K, U>>>())
            .or_insert_with(|| Box::new(Arc::new(Core::<K, U>::new(Arc::clone(&self.stats)))))
            .downcast_ref::<Arc<Core<K, U>>>()
            .map(Arc::clone)
            .expect("registry entries are keyed by their type")
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.stats.name)
            .finish_non_exhaustive()
    }
}

/// The role of a caller after [`Core::join`].
pub(crate) enum Role<K: Hash + Eq, U: Upstream> {
    /// Started a new flight: must [`Waiter::install`] the upstream future.
    Leader(Waiter<K, U>),
    /// Joined a flight in progress.
    Follower(Waiter<K, U>),
    /// The flight has as many waiters as allowed: go upstream alone.
    Overflow,
}

impl<K: Hash + Eq, U: Upstream> Core<K, U> {
    pub(crate) fn new(stats: Arc<StatsInner>) -> Self {
        Self {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            stats,
        }
    }

    /// Attaches a caller to the flight for `key`, starting one if needed. `max_waiters` caps
    /// the callers attached to one flight besides the first.
    pub(crate) fn join(self: &Arc<Self>, key: K, max_waiters: Option<usize>) -> Role<K, U>
    where
        K: Clone,
    {
        match self.map.entry(key) {
            Entry::Occupied(mut entry) => {
                let flight = entry.get();
                {
                    let mut state = flight.state.lock();
                    if matches!(state.phase, Phase::Running { .. }) {
                        if max_waiters.is_some_and(|max| state.attached > max) {
                            return Role::Overflow;
                        }
                        let id = state.register();
                        drop(state);
                        self.stats.waiter_added();
                        return Role::Follower(Waiter {
                            flight: Arc::clone(flight),
                            id,
                            attached: true,
                        });
                    }
                }
                // A finished or cancelled flight not yet removed: replace it.
                let flight = self.new_flight(entry.key().clone());
                entry.insert(Arc::clone(&flight));
                Role::Leader(self.leader(flight))
            }
            Entry::Vacant(entry) => {
                let flight = self.new_flight(entry.key().clone());
                entry.insert(Arc::clone(&flight));
                Role::Leader(self.leader(flight))
            }
        }
    }

    fn new_flight(self: &Arc<Self>, key: K) -> Arc<Flight<K, U>> {
        Arc::new(Flight {
            core: Arc::clone(self),
            key,
            state: Mutex::new(State {
                phase: Phase::Running { fut: None },
                slots: Vec::new(),
                free: Vec::new(),
                attached: 1,
                driver: Some(DRIVER_ID),
            }),
        })
    }

    fn leader(&self, flight: Arc<Flight<K, U>>) -> Waiter<K, U> {
        // `new_flight` attached the leader as the driver. The driver needs no waker slot:
        // upstream progress wakes it.
        let id = DRIVER_ID;
        self.stats.flight_started();
        self.stats.waiter_added();
        Waiter {
            flight,
            id,
            attached: true,
        }
    }

    fn remove(&self, flight: &Flight<K, U>) {
        self.map
            .remove_if(&flight.key, |_, v| std::ptr::eq(&**v, flight));
    }
}

/// The id of the leader, which has no waker slot.
const DRIVER_ID: usize = usize::MAX;

/// A caller attached to a flight. Dropping it detaches the caller (see the module docs).
pub(crate) struct Waiter<K: Hash + Eq, U: Upstream> {
    flight: Arc<Flight<K, U>>,
    id: usize,
    attached: bool,
}

fn panic_message(payload: &(dyn Any + Send)) -> Arc<str> {
    let msg = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "non-string panic payload"
    };
    Arc::from(format!("upstream call panicked: {msg}"))
}

impl<K: Hash + Eq, U: Upstream> Waiter<K, U> {
    /// Installs the upstream future (leader only, right after [`Core::join`]).
    pub(crate) fn install(&self, fut: U) {
        let mut state = self.flight.state.lock();
        if let Phase::Running { fut: slot } = &mut state.phase {
            *slot = Some(fut);
        }
    }

    pub(crate) fn stats(&self) -> &StatsInner {
        &self.flight.core.stats
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Delivery<U::Mine, U::Shared>> {
        assert!(self.attached, "coalesce waiter polled after completion");
        let flight = &*self.flight;
        let stats = &flight.core.stats;
        let mut state = flight.state.lock();
        let is_driver = state.driver == Some(self.id);
        if !is_driver && matches!(state.phase, Phase::Running { .. }) {
            if let Some(Some(slot)) = state.slots.get_mut(self.id) {
                match slot {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *slot = Some(cx.waker().clone()),
                }
            }
            return Poll::Pending;
        }
        match &mut state.phase {
            Phase::Running { fut } => {
                if !is_driver {
                    return Poll::Pending;
                }
                let Some(mut upstream) = fut.take() else {
                    // The leader never installed the future (its call panicked).
                    drop(state);
                    let msg: Arc<str> = Arc::from("upstream call was never started");
                    self.fail(Arc::clone(&msg));
                    return Poll::Ready(Delivery::Failed(msg));
                };
                drop(state);
                match catch_unwind(AssertUnwindSafe(|| upstream.poll_upstream(cx))) {
                    Ok(Poll::Pending) => {
                        let mut state = flight.state.lock();
                        if let Phase::Running { fut } = &mut state.phase {
                            *fut = Some(upstream);
                        }
                        Poll::Pending
                    }
                    Ok(Poll::Ready(output)) => {
                        drop(upstream);
                        if U::is_error(&output) {
                            stats.error();
                        }
                        flight.core.remove(flight);
                        let mut state = flight.state.lock();
                        let share = state.attached > 1;
                        let (mine, shared) = U::split(output, share);
                        state.attached -= 1;
                        state.phase = match shared {
                            Some(v) if state.attached > 0 => Phase::Done(v),
                            _ => Phase::Over,
                        };
                        let slots = mem::take(&mut state.slots);
                        let others = state.attached;
                        drop(state);
                        self.attached = false;
                        stats.flight_ended();
                        stats.waiter_removed();
                        tracing::debug!(waiters = others, "coalesce: upstream call completed");
                        wake_all(slots);
                        Poll::Ready(Delivery::Own(mine))
                    }
                    Err(payload) => {
                        let msg = panic_message(&*payload);
                        drop(payload);
                        // Dropping a future that panicked may panic again: contain it.
                        let _ = catch_unwind(AssertUnwindSafe(move || drop(upstream)));
                        stats.panic();
                        stats.error();
                        self.fail(Arc::clone(&msg));
                        Poll::Ready(Delivery::Failed(msg))
                    }
                }
            }
            Phase::Done(_) => {
                let value = state.take_shared();
                drop(state);
                self.attached = false;
                stats.waiter_removed();
                match value {
                    Some(v) => Poll::Ready(Delivery::Shared(v)),
                    None => Poll::Ready(Delivery::Failed(Arc::from("coalesced result lost"))),
                }
            }
            Phase::Failed(msg) => {
                let msg = Arc::clone(msg);
                state.attached -= 1;
                if state.attached == 0 {
                    state.phase = Phase::Over;
                }
                drop(state);
                self.attached = false;
                stats.waiter_removed();
                Poll::Ready(Delivery::Failed(msg))
            }
            Phase::Over => {
                drop(state);
                self.attached = false;
                stats.waiter_removed();
                Poll::Ready(Delivery::Failed(Arc::from("coalesced call was cancelled")))
            }
        }
    }

    /// Publishes a failure (driver only, flight lock not held).
    fn fail(&mut self, msg: Arc<str>) {
        let flight = &*self.flight;
        flight.core.remove(flight);
        let mut state = flight.state.lock();
        state.attached -= 1;
        state.phase = if state.attached > 0 {
            Phase::Failed(msg)
        } else {
            Phase::Over
        };
        let slots = mem::take(&mut state.slots);
        drop(state);
        self.attached = false;
        flight.core.stats.flight_ended();
        flight.core.stats.waiter_removed();
        tracing::debug!("coalesce: upstream call failed");
        wake_all(slots);
    }
}

impl<K: Hash + Eq, U: Upstream> Waiter<K, U> {
    /// Detaches without a result (dropped or timed out).
    pub(crate) fn detach(&mut self) {
        if !self.attached {
            return;
        }
        self.attached = false;
        let flight = &*self.flight;
        let stats = &flight.core.stats;
        stats.waiter_removed();
        let mut state = flight.state.lock();
        state.attached = state.attached.saturating_sub(1);
        match state.phase {
            Phase::Running { .. } => {
                if state.attached == 0 {
                    let fut = match mem::replace(&mut state.phase, Phase::Over) {
                        Phase::Running { fut } => fut,
                        _ => None,
                    };
                    drop(state);
                    flight.core.remove(flight);
                    stats.flight_ended();
                    stats.cancelled();
                    tracing::debug!("coalesce: every caller gone, upstream call cancelled");
                    drop(fut);
                    return;
                }
                state.unregister(self.id);
                if state.driver == Some(self.id) {
                    let next = state
                        .slots
                        .iter()
                        .position(Option::is_some)
                        .expect("an attached caller has a slot");
                    state.driver = Some(next);
                    let waker = state.slots[next].as_ref().and_then(Clone::clone);
                    drop(state);
                    tracing::debug!("coalesce: driver gone, handing the upstream call over");
                    if let Some(w) = waker {
                        w.wake();
                    }
                }
            }
            Phase::Done(_) | Phase::Failed(_) => {
                if state.attached == 0 {
                    state.phase = Phase::Over;
                }
            }
            Phase::Over => {}
        }
    }
}

fn wake_all(slots: Vec<Option<Option<Waker>>>) {
    for waker in slots.into_iter().flatten().flatten() {
        waker.wake();
    }
}

impl<K: Hash + Eq, U: Upstream> Drop for Waiter<K, U> {
    fn drop(&mut self) {
        self.detach();
    }
}
