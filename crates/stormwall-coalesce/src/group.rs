//! The plain async API: [`Group`].

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::error::CoalesceError;
use crate::flight::{Core, Delivery, Role, Upstream, Waiter};
use crate::stats::{StatsHandle, StatsInner};

type BoxFuture<V, E> = Pin<Box<dyn Future<Output = Result<V, E>> + Send>>;

/// The upstream of a [`Group`]: a boxed future whose result is cloned for the other callers.
pub(crate) struct Dup<V, E>(BoxFuture<V, E>);

impl<V: Clone + Send, E: Clone + Send> Upstream for Dup<V, E> {
    type Output = Result<V, E>;
    type Mine = Result<V, E>;
    type Shared = Result<V, E>;

    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
        _alone: &mut dyn FnMut() -> bool,
    ) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }

    fn is_error(output: &Self::Output) -> bool {
        output.is_err()
    }

    fn split(output: Self::Output, share: bool) -> (Self::Mine, Option<Self::Shared>) {
        if share {
            (output.clone(), Some(output))
        } else {
            (output, None)
        }
    }
}

/// Runs at most one future per key at a time; concurrent callers with the same key share its
/// result (Go's `singleflight.Group`, without tower).
///
/// * The first caller for a key starts the call (a *miss*); callers arriving while it is in
///   flight wait for it (*hits*) and get a clone of its `Ok` value or of its error. A call made
///   after the previous one finished runs fresh: results are not kept.
/// * The call is driven by whichever caller is polled, without spawning: if the first caller
///   is dropped (or times out), the call goes on for the others; when every caller is gone,
///   the call's future is dropped.
/// * A panic in the call becomes [`CoalesceError::Panicked`] for every caller.
/// * Optional [`max_waiters`](Self::max_waiters): callers beyond it run their own future;
///   optional per-caller [`timeout`](Self::timeout).
///
/// `Group` is cheap to clone; clones share the flights and the stats.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use stormwall_coalesce::Group;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let group: Group<u64, String, String> = Group::new();
///
/// let fetch = |id: u64| {
///     let calls = calls.clone();
///     async move {
///         calls.fetch_add(1, Ordering::SeqCst);
///         tokio::task::yield_now().await;
///         Ok::<_, String>(format!("user {id}"))
///     }
/// };
///
/// // Ten concurrent callers, one call.
/// let results = futures_util::future::join_all((0..10).map(|_| group.run(1, fetch(1)))).await;
/// assert!(results.iter().all(|r| r.as_deref() == Ok("user 1")));
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
///
/// let stats = group.stats().snapshot();
/// assert_eq!((stats.misses, stats.hits), (1, 9));
/// # }
/// ```
pub struct Group<K, V, E = Infallible>
where
    K: Hash + Eq,
    V: Clone + Send,
    E: Clone + Send,
{
    core: Arc<Core<K, Dup<V, E>>>,
    max_waiters: Option<usize>,
    timeout: Option<Duration>,
}

impl<K, V, E> Clone for Group<K, V, E>
where
    K: Hash + Eq,
    V: Clone + Send,
    E: Clone + Send,
{
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
            max_waiters: self.max_waiters,
            timeout: self.timeout,
        }
    }
}

impl<K, V, E> fmt::Debug for Group<K, V, E>
where
    K: Hash + Eq,
    V: Clone + Send,
    E: Clone + Send,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.core.stats.name)
            .field("max_waiters", &self.max_waiters)
            .field("timeout", &self.timeout)
            .field("stats", &self.core.stats.snapshot())
            .finish()
    }
}

impl<K, V, E> Default for Group<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone + Send,
    E: Clone + Send,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V, E> Group<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone + Send,
    E: Clone + Send,
{
    /// A group with no waiter cap and no timeout, named `"default"` in metrics.
    pub fn new() -> Self {
        Self::named("default")
    }

    /// A group whose metrics carry the label `name = <name>`.
    ///
    /// ```
    /// let group: stormwall_coalesce::Group<String, u32> = stormwall_coalesce::Group::named("users");
    /// # let _ = group;
    /// ```
    pub fn named(name: &'static str) -> Self {
        Self {
            core: Arc::new(Core::new(StatsInner::new(name))),
            max_waiters: None,
            timeout: None,
        }
    }

    /// At most `max` callers wait on one call besides the caller that started it; callers
    /// beyond that run their own future (counted as misses and overflows).
    ///
    /// ```
    /// let group = stormwall_coalesce::Group::<u32, u32>::new().max_waiters(100);
    /// # let _ = group;
    /// ```
    pub fn max_waiters(mut self, max: usize) -> Self {
        self.max_waiters = Some(max);
        self
    }

    /// Each caller waits at most `timeout` (from its first poll) and then gets
    /// [`CoalesceError::Timeout`]; the call goes on for the others.
    ///
    /// ```
    /// use std::time::Duration;
    /// let group = stormwall_coalesce::Group::<u32, u32>::new().timeout(Duration::from_secs(2));
    /// # let _ = group;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs `fut` for `key`, or joins the call already in flight for `key` (then `fut` is
    /// dropped without being polled). See [`Group`] for the rules.
    ///
    /// The returned future does the work when polled; it must be polled inside a Tokio runtime
    /// with the time driver when a [`timeout`](Self::timeout) is set.
    pub fn run<F>(&self, key: K, fut: F) -> Run<K, V, E>
    where
        F: Future<Output = Result<V, E>> + Send + 'static,
    {
        self.run_with(key, move || fut)
    }

    /// Like [`run`](Self::run), but builds the future only if this caller has to run it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let group = stormwall_coalesce::Group::<&str, u32>::new();
    /// let n = group.run_with("answer", || async { Ok(42) }).await.unwrap();
    /// assert_eq!(n, 42);
    /// # }
    /// ```
    pub fn run_with<F, Fut>(&self, key: K, make: F) -> Run<K, V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let stats = &self.core.stats;
        let kind = match self.core.join(key, self.max_waiters) {
            Role::Leader(waiter) => {
                stats.miss();
                tracing::debug!(group = stats.name, "coalesce: leader, starting the call");
                waiter.install(Dup(Box::pin(make())));
                RunKind::Wait { waiter }
            }
            Role::Follower(waiter) => {
                stats.hit();
                tracing::debug!(group = stats.name, "coalesce: joined the call in flight");
                RunKind::Wait { waiter }
            }
            Role::Overflow => {
                stats.miss();
                stats.overflow();
                tracing::debug!(
                    group = stats.name,
                    "coalesce: waiter cap reached, calling alone"
                );
                RunKind::Solo {
                    fut: Box::pin(make()),
                    stats: Arc::clone(stats),
                }
            }
        };
        Run {
            kind,
            timeout: self.timeout,
            sleep: None,
        }
    }

    /// The group's counters (shared by its clones).
    pub fn stats(&self) -> StatsHandle {
        StatsHandle {
            inner: Arc::clone(&self.core.stats),
        }
    }
}

enum RunKind<K, V, E>
where
    K: Hash + Eq,
    V: Clone + Send,
    E: Clone + Send,
{
    Wait {
        waiter: Waiter<K, Dup<V, E>>,
    },
    Solo {
        fut: BoxFuture<V, E>,
        stats: Arc<StatsInner>,
    },
    Done,
}

pin_project! {
    /// The future returned by [`Group::run`].
    pub struct Run<K, V, E>
    where
        K: Hash,
        K: Eq,
        V: Clone,
        V: Send,
        E: Clone,
        E: Send,
    {
        kind: RunKind<K, V, E>,
        timeout: Option<Duration>,
        // Boxed and created on the first pending poll, only when a timeout is set: a waiter
        // without a timeout does not carry a timer.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<K, V, E> fmt::Debug for Run<K, V, E>
where
    K: Hash + Eq,
    V: Clone + Send,
    E: Clone + Send,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            RunKind::Wait { .. } => "wait",
            RunKind::Solo { .. } => "solo",
            RunKind::Done => "done",
        };
        f.debug_struct("Run")
            .field("kind", &kind)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<K, V, E> Future for Run<K, V, E>
where
    K: Hash + Eq,
    V: Clone + Send,
    E: Clone + Send,
{
    type Output = Result<V, CoalesceError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind {
            RunKind::Wait { waiter } => {
                if let Poll::Ready(delivery) = waiter.poll(cx) {
                    *this.kind = RunKind::Done;
                    return Poll::Ready(match delivery {
                        Delivery::Own(r) | Delivery::Shared(r) => {
                            r.map_err(CoalesceError::Upstream)
                        }
                        Delivery::Failed(msg) => Err(CoalesceError::Panicked(msg)),
                    });
                }
            }
            RunKind::Solo { fut, .. } => {
                match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                    Ok(Poll::Pending) => {}
                    Ok(Poll::Ready(r)) => {
                        *this.kind = RunKind::Done;
                        return Poll::Ready(r.map_err(CoalesceError::Upstream));
                    }
                    Err(_) => {
                        *this.kind = RunKind::Done;
                        return Poll::Ready(Err(CoalesceError::Panicked(Arc::from(
                            "upstream call panicked",
                        ))));
                    }
                }
            }
            RunKind::Done => panic!("`Run` polled after completion"),
        }
        let Some(timeout) = *this.timeout else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            *this.sleep = Some(Box::pin(tokio::time::sleep(timeout)));
        }
        let sleep = this.sleep.as_mut().expect("sleep set above");
        if sleep.as_mut().poll(cx).is_ready() {
            match std::mem::replace(this.kind, RunKind::Done) {
                RunKind::Wait { waiter } => {
                    waiter.stats().timeout();
                    drop(waiter);
                }
                RunKind::Solo { stats, .. } => stats.timeout(),
                RunKind::Done => {}
            }
            tracing::debug!("coalesce: caller timed out");
            return Poll::Ready(Err(CoalesceError::Timeout));
        }
        Poll::Pending
    }
}
