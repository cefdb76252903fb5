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
//! * A driver whose upstream can hand its result through unshared (an HTTP response when
//!   nobody waits) asks [`Flight::go_alone`] at that moment: under the shard lock, if it is the
//!   only caller attached, the flight leaves the map (a new caller starts a new flight) and the
//!   driver keeps the result for itself. A caller that joined first makes the answer "no".
//! * Lock order: map shard, then flight. Paths that must touch both (completion, cancellation)
//!   never hold the flight lock while taking the shard lock.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::Hash;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use crate::stats::StatsInner;
use crate::sync::{FlightMap, Hashed, Mutex};

/// The registry's lock (not part of the modeled state: a plain `parking_lot` mutex).
use parking_lot::Mutex as RegistryLock;

/// An upstream call: polled to completion by the driver, then split into the driver's own
/// result and (when others wait) the value shared with them.
pub(crate) trait Upstream: Unpin + Send {
    /// What polling produces.
    type Output;
    /// What the driver gets.
    type Mine;
    /// What every other caller gets a clone of.
    type Shared: Clone + Send;

    /// Polls the call. `alone` may be called once the upstream could hand its result to the
    /// driver unshared: it returns `true` when nobody else is (or can any more become)
    /// attached to the flight, which has then left the map.
    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
        alone: &mut dyn FnMut() -> bool,
    ) -> Poll<Self::Output>;

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
    key: Hashed<K>,
    state: Mutex<State<U>>,
}

/// The map of flights of one group or one layer.
pub(crate) struct Core<K, U: Upstream> {
    map: FlightMap<K, Arc<Flight<K, U>>>,
    pub(crate) stats: Arc<StatsInner>,
}

/// The flight maps of one layer, one per concrete flight type (the type depends on the
/// service the layer wraps, which the layer does not know). Every service a layer makes, by
/// any number of `layer()` calls (axum makes one per connection), finds the same map here.
pub(crate) struct Registry {
    pub(crate) stats: Arc<StatsInner>,
    cores: RegistryLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>,
}

impl Registry {
    pub(crate) fn new(stats: Arc<StatsInner>) -> Arc<Self> {
        Arc::new(Self {
            stats,
            cores: RegistryLock::new(HashMap::new()),
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
            map: FlightMap::new(),
            stats,
        }
    }

    /// Attaches a caller to the flight for `key`, starting one if needed. `max_waiters` caps
    /// the callers attached to one flight besides the first.
    pub(crate) fn join(self: &Arc<Self>, key: K, max_waiters: Option<usize>) -> Role<K, U>
    where
        K: Clone,
    {
        self.map.with_entry(self.map.hashed(key), |key, existing| {
            if let Some(flight) = existing {
                let mut state = flight.state.lock();
                if matches!(state.phase, Phase::Running { .. }) {
                    if max_waiters.is_some_and(|max| state.attached > max) {
                        return (None, Role::Overflow);
                    }
                    let id = state.register();
                    drop(state);
                    self.stats.waiter_added();
                    let waiter = Waiter {
                        flight: Arc::clone(flight),
                        id,
                        attached: true,
                        in_map: true,
                    };
                    return (None, Role::Follower(waiter));
                }
                // A finished or cancelled flight not yet removed: replace it.
            }
            let flight = self.new_flight(key.clone());
            (Some(Arc::clone(&flight)), Role::Leader(self.leader(flight)))
        })
    }

    fn new_flight(self: &Arc<Self>, key: Hashed<K>) -> Arc<Flight<K, U>> {
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
            in_map: true,
        }
    }

    fn remove(&self, flight: &Flight<K, U>) {
        self.map
            .remove_if(&flight.key, |v| std::ptr::eq(&**v, flight));
    }
}

impl<K: Hash + Eq, U: Upstream> Flight<K, U> {
    /// Takes the flight out of the map if its driver is the only caller attached (see the
    /// module docs). Under the shard lock, so no caller can join between the check and the
    /// removal; a caller that joined before makes it return `false`.
    fn go_alone(&self) -> bool {
        self.core.map.remove_if(&self.key, |v| {
            std::ptr::eq(&**v, self) && v.state.lock().attached == 1
        })
    }
}

/// The id of the leader, which has no waker slot.
const DRIVER_ID: usize = usize::MAX;

/// A caller attached to a flight. Dropping it detaches the caller (see the module docs).
pub(crate) struct Waiter<K: Hash + Eq, U: Upstream> {
    flight: Arc<Flight<K, U>>,
    id: usize,
    attached: bool,
    /// `false` once the driver took the flight out of the map ([`Flight::go_alone`]).
    in_map: bool,
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
                let in_map = &mut self.in_map;
                let mut alone = || {
                    if !*in_map {
                        return true;
                    }
                    let removed = flight.go_alone();
                    if removed {
                        *in_map = false;
                    }
                    removed
                };
                let polled =
                    catch_unwind(AssertUnwindSafe(|| upstream.poll_upstream(cx, &mut alone)));
                match polled {
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
                        if self.in_map {
                            flight.core.remove(flight);
                        }
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
        if self.in_map {
            flight.core.remove(flight);
        }
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
                    if self.in_map {
                        flight.core.remove(flight);
                    }
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

/// Model checks of the coalescing slot (`scripts/loom`): every interleaving of two callers
/// joining, driving, handing over and taking the no-waiter pass-through.
#[cfg(all(test, stormwall_loom))]
mod loom_slot {
    use std::future::poll_fn;

    use super::*;

    /// An upstream that answers `7` at once, asking `alone()` first like the HTTP upstream
    /// does at the response head. Output: (value, went alone).
    struct Answer;

    impl Upstream for Answer {
        type Output = (u32, bool);
        type Mine = (u32, bool);
        type Shared = u32;

        fn poll_upstream(
            &mut self,
            _cx: &mut Context<'_>,
            alone: &mut dyn FnMut() -> bool,
        ) -> Poll<Self::Output> {
            Poll::Ready((7, alone()))
        }

        fn is_error(_: &Self::Output) -> bool {
            false
        }

        fn split(output: Self::Output, share: bool) -> (Self::Mine, Option<Self::Shared>) {
            // Going alone means nobody can be attached to share with.
            assert!(!(output.1 && share), "went alone with a waiter attached");
            (output, share.then_some(output.0))
        }
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        /// The caller drove the call: (value, went alone).
        Own(u32, bool),
        Shared(u32),
        Failed,
    }

    fn wait(mut waiter: Waiter<u8, Answer>) -> Got {
        match loom::future::block_on(poll_fn(|cx| waiter.poll(cx))) {
            Delivery::Own((v, alone)) => Got::Own(v, alone),
            Delivery::Shared(v) => Got::Shared(v),
            Delivery::Failed(_) => Got::Failed,
        }
    }

    /// A caller: joins, installs the call when it leads, waits for the result.
    fn call(core: &Arc<Core<u8, Answer>>) -> Got {
        match core.join(0, None) {
            Role::Leader(w) => {
                w.install(Answer);
                wait(w)
            }
            Role::Follower(w) => wait(w),
            Role::Overflow => unreachable!("no waiter cap"),
        }
    }

    fn core() -> Arc<Core<u8, Answer>> {
        Arc::new(Core::new(StatsInner::new("loom")))
    }

    fn assert_clean(core: &Core<u8, Answer>) {
        assert_eq!(core.map.len(), 0, "a flight was left in the map");
        let s = core.stats.snapshot();
        assert_eq!((s.in_flight_keys, s.waiters), (0, 0), "{s:?}");
    }

    /// Two concurrent callers: each gets the value; either they shared one call (the driver
    /// did not go alone, the other got the shared value) or the first went alone before the
    /// second joined and the second made its own call. Never a lost waiter (a hang would be
    /// reported by loom as a deadlock).
    #[test]
    fn loom_waiter_never_lost_and_pass_through_races_with_join() {
        loom::model(|| {
            let core = core();
            let other = Arc::clone(&core);
            let t = loom::thread::spawn(move || call(&other));
            let a = call(&core);
            let b = t.join().expect("caller thread");
            match (&a, &b) {
                (Got::Own(7, false), Got::Shared(7))
                | (Got::Shared(7), Got::Own(7, false))
                | (Got::Own(7, true), Got::Own(7, true)) => {}
                _ => panic!("unexpected deliveries: {a:?}, {b:?}"),
            }
            assert_clean(&core);
        });
    }

    /// The leader is dropped before it polled: a caller that joined it is handed the call
    /// (and drives it), a caller that came after the cancellation starts its own call. Either
    /// way it gets the value, never a failure.
    #[test]
    fn loom_leader_dropped_hands_the_call_over() {
        loom::model(|| {
            let core = core();
            let other = Arc::clone(&core);
            let t = loom::thread::spawn(move || call(&other));
            match core.join(0, None) {
                Role::Leader(w) => {
                    w.install(Answer);
                    drop(w);
                }
                Role::Follower(w) => drop(w),
                Role::Overflow => unreachable!("no waiter cap"),
            }
            let b = t.join().expect("caller thread");
            assert!(matches!(b, Got::Own(7, _)), "{b:?}");
            assert_clean(&core);
        });
    }

    /// A waiter that gives up (dropped) while the leader completes: the leader still gets its
    /// value and nothing is left behind.
    #[test]
    fn loom_waiter_dropped_while_leader_completes() {
        loom::model(|| {
            let core = core();
            let Role::Leader(leader) = core.join(0, None) else {
                unreachable!("the first caller leads")
            };
            leader.install(Answer);
            let Role::Follower(follower) = core.join(0, None) else {
                unreachable!("the flight is running")
            };
            let t = loom::thread::spawn(move || drop(follower));
            let a = wait(leader);
            t.join().expect("dropping thread");
            // Shared or not depends on whether the waiter left first; never alone while it
            // was attached (checked in `split`).
            assert!(matches!(a, Got::Own(7, _)), "{a:?}");
            assert_clean(&core);
        });
    }
}
