//! Coalescing for any [`Service`] whose response is `Clone` (not only HTTP).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::TryFuture;
use pin_project_lite::pin_project;
use stormwall_core::key::KeyExtractor;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::CoalesceError;
use crate::flight::{Core, Delivery, Registry, Role, Upstream, Waiter};
use crate::stats::{StatsHandle, StatsInner};

/// The upstream of a generic flight: the inner future; errors are shared behind an `Arc`.
pub(crate) struct GenericUpstream<F>(Pin<Box<F>>);

impl<F> Upstream for GenericUpstream<F>
where
    F: TryFuture + Send,
    F::Ok: Clone + Send,
    F::Error: Send + Sync,
{
    type Output = Result<F::Ok, F::Error>;
    type Mine = Result<F::Ok, Arc<F::Error>>;
    type Shared = Result<F::Ok, Arc<F::Error>>;

    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
        _alone: &mut dyn FnMut() -> bool,
    ) -> Poll<Self::Output> {
        self.0.as_mut().try_poll(cx)
    }

    fn is_error(output: &Self::Output) -> bool {
        output.is_err()
    }

    fn split(output: Self::Output, share: bool) -> (Self::Mine, Option<Self::Shared>) {
        let output = output.map_err(Arc::new);
        if share {
            (output.clone(), Some(output))
        } else {
            (output, None)
        }
    }
}

/// Coalesces calls to any service whose response is `Clone`, keyed by a
/// [`KeyExtractor`] (made by [`CoalesceLayer::generic`](crate::CoalesceLayer::generic)).
///
/// Errors are shared too: the service's error type becomes
/// [`CoalesceError<Arc<S::Error>>`](CoalesceError). Requests the extractor cannot key go
/// straight through. Use [`tower::util::MapErr`](https://docs.rs/tower/latest/tower/util/struct.MapErr.html)
/// or `HandleErrorLayer` to map the error back.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use stormwall_coalesce::CoalesceLayer;
/// use stormwall_core::key::{KeyError, key_fn};
/// use tower::{Layer, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Look users up by id; concurrent lookups for one id share one call.
/// let lookup = service_fn(|id: u64| async move { Ok::<_, Infallible>(format!("user {id}")) });
/// let layer = CoalesceLayer::generic(key_fn(|id: &u64| Ok::<_, KeyError>(*id)));
/// let svc = layer.layer(lookup);
/// assert_eq!(svc.oneshot(7).await.unwrap(), "user 7");
/// # }
/// ```
pub struct GenericCoalesce<S, K> {
    inner: S,
    shared: Arc<GenericShared<K>>,
}

struct GenericShared<K> {
    key: K,
    max_waiters: Option<usize>,
    timeout: Option<Duration>,
    stats: Arc<StatsInner>,
    registry: Arc<Registry>,
    flights: OnceLock<Box<dyn Any + Send + Sync>>,
}

type GenericCore<K, F> = Arc<Core<K, GenericUpstream<F>>>;

/// The layer of [`GenericCoalesce`]; see [`CoalesceLayer::generic`](crate::CoalesceLayer::generic).
#[derive(Clone)]
pub struct GenericCoalesceLayer<K> {
    key: K,
    max_waiters: Option<usize>,
    timeout: Option<Duration>,
    stats: Arc<StatsInner>,
    registry: Arc<Registry>,
}

impl<K> fmt::Debug for GenericCoalesceLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericCoalesceLayer")
            .field("key", &std::any::type_name::<K>())
            .field("max_waiters", &self.max_waiters)
            .field("timeout", &self.timeout)
            .field("name", &self.stats.name)
            .finish()
    }
}

impl<S: fmt::Debug, K> fmt::Debug for GenericCoalesce<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericCoalesce")
            .field("inner", &self.inner)
            .field("max_waiters", &self.shared.max_waiters)
            .field("timeout", &self.shared.timeout)
            .finish()
    }
}

impl<S: Clone, K> Clone for GenericCoalesce<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K> GenericCoalesceLayer<K> {
    pub(crate) fn new(key: K, name: &'static str) -> Self {
        let stats = StatsInner::new(name);
        Self {
            key,
            max_waiters: None,
            timeout: None,
            registry: Registry::new(Arc::clone(&stats)),
            stats,
        }
    }

    /// At most `max` callers wait on one call besides the caller that started it; requests
    /// beyond that go to the inner service on their own.
    pub fn max_waiters(mut self, max: usize) -> Self {
        self.max_waiters = Some(max);
        self
    }

    /// Each caller waits at most `timeout` for a shared call and then gets
    /// [`CoalesceError::Timeout`]; the call goes on for the others.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The counters of every service made by this layer.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle {
            inner: Arc::clone(&self.stats),
        }
    }
}

impl<S, K: Clone> Layer<S> for GenericCoalesceLayer<K> {
    type Service = GenericCoalesce<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        GenericCoalesce {
            inner,
            shared: Arc::new(GenericShared {
                key: self.key.clone(),
                max_waiters: self.max_waiters,
                timeout: self.timeout,
                stats: Arc::clone(&self.stats),
                registry: Arc::clone(&self.registry),
                flights: OnceLock::new(),
            }),
        }
    }
}

impl<S, K> GenericCoalesce<S, K> {
    /// The counters (shared with the layer).
    pub fn stats(&self) -> StatsHandle {
        StatsHandle {
            inner: Arc::clone(&self.shared.stats),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, Req> Service<Req> for GenericCoalesce<S, K>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Clone + Send + 'static,
    S::Error: Send + Sync + 'static,
    K: KeyExtractor<Req>,
    K::Key: Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = CoalesceError<Arc<S::Error>>;
    type Future = GenericFuture<S::Future, K::Key>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| CoalesceError::Upstream(Arc::new(e)))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        let key = match shared.key.extract(&req) {
            Ok(key) => key,
            Err(error) => {
                tracing::debug!(%error, "coalesce: no key, calling alone");
                return GenericFuture::direct(self.inner.call(req));
            }
        };
        let other;
        let core = match shared
            .flights
            .get_or_init(|| Box::new(shared.registry.core::<K::Key, GenericUpstream<S::Future>>()))
            .downcast_ref::<GenericCore<K::Key, S::Future>>()
        {
            Some(core) => core,
            None => {
                // The same service used with a second request type: look its map up each time.
                other = shared.registry.core::<K::Key, GenericUpstream<S::Future>>();
                &other
            }
        };
        let stats = &shared.stats;
        match core.join(key, shared.max_waiters) {
            Role::Leader(waiter) => {
                stats.miss();
                tracing::debug!(name = stats.name, "coalesce: leader, calling the service");
                waiter.install(GenericUpstream(Box::pin(self.inner.call(req))));
                GenericFuture::waiting(waiter, shared.timeout)
            }
            Role::Follower(waiter) => {
                stats.hit();
                tracing::debug!(name = stats.name, "coalesce: joined the call in flight");
                GenericFuture::waiting(waiter, shared.timeout)
            }
            Role::Overflow => {
                stats.miss();
                stats.overflow();
                tracing::debug!(
                    name = stats.name,
                    "coalesce: waiter cap reached, calling alone"
                );
                let mut fut = GenericFuture::direct(self.inner.call(req));
                fut.timeout = shared.timeout;
                fut
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, K>
    where
        F: TryFuture,
        F: Send,
        F::Ok: Clone,
        F::Ok: Send,
        F::Error: Send,
        F::Error: Sync,
        K: Hash,
        K: Eq,
    {
        Direct { #[pin] fut: F },
        Wait { waiter: Waiter<K, GenericUpstream<F>> },
        Done,
    }
}

pin_project! {
    /// The future of [`GenericCoalesce`].
    pub struct GenericFuture<F, K>
    where
        F: TryFuture,
        F: Send,
        F::Ok: Clone,
        F::Ok: Send,
        F::Error: Send,
        F::Error: Sync,
        K: Hash,
        K: Eq,
    {
        #[pin]
        kind: Kind<F, K>,
        timeout: Option<Duration>,
        // Boxed and created on the first pending poll, only when a timeout is set: a waiter
        // without a timeout does not carry a timer.
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<F, K> fmt::Debug for GenericFuture<F, K>
where
    F: TryFuture + Send,
    F::Ok: Clone + Send,
    F::Error: Send + Sync,
    K: Hash + Eq,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Direct { .. } => "direct",
            Kind::Wait { .. } => "wait",
            Kind::Done => "done",
        };
        f.debug_struct("GenericFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, K> GenericFuture<F, K>
where
    F: TryFuture + Send,
    F::Ok: Clone + Send,
    F::Error: Send + Sync,
    K: Hash + Eq,
{
    fn direct(fut: F) -> Self {
        Self {
            kind: Kind::Direct { fut },
            timeout: None,
            sleep: None,
        }
    }

    fn waiting(waiter: Waiter<K, GenericUpstream<F>>, timeout: Option<Duration>) -> Self {
        Self {
            kind: Kind::Wait { waiter },
            timeout,
            sleep: None,
        }
    }
}

impl<F, K> Future for GenericFuture<F, K>
where
    F: TryFuture + Send,
    F::Ok: Clone + Send,
    F::Error: Send + Sync,
    K: Hash + Eq,
{
    type Output = Result<F::Ok, CoalesceError<Arc<F::Error>>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.kind.as_mut().project() {
            KindProj::Direct { fut } => {
                if let Poll::Ready(res) = fut.try_poll(cx) {
                    this.kind.set(Kind::Done);
                    return Poll::Ready(res.map_err(|e| CoalesceError::Upstream(Arc::new(e))));
                }
            }
            KindProj::Wait { waiter } => {
                if let Poll::Ready(delivery) = waiter.poll(cx) {
                    this.kind.set(Kind::Done);
                    return Poll::Ready(match delivery {
                        Delivery::Own(r) | Delivery::Shared(r) => {
                            r.map_err(CoalesceError::Upstream)
                        }
                        Delivery::Failed(msg) => Err(CoalesceError::Panicked(msg)),
                    });
                }
            }
            KindProj::Done => panic!("GenericFuture polled after completion"),
        }
        let Some(timeout) = *this.timeout else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            *this.sleep = Some(Box::pin(tokio::time::sleep(timeout)));
        }
        let sleep = this.sleep.as_mut().expect("sleep set");
        ready!(sleep.as_mut().poll(cx));
        if let KindProj::Wait { waiter } = this.kind.as_mut().project() {
            waiter.stats().timeout();
        }
        tracing::debug!("coalesce: caller timed out");
        this.kind.set(Kind::Done);
        Poll::Ready(Err(CoalesceError::Timeout))
    }
}
