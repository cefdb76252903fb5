//! [`Coalesce`]: the HTTP coalescing service.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use stormwall_core::key::KeyExtractor;
use stormwall_core::response::ResponseBody;
use tower_service::Service;

use crate::flight::{Core, Registry, Role};
use crate::future::ResponseFuture;
use crate::layer::{CoalesceLayer, Config};
use crate::stats::{StatsHandle, StatsInner};
use crate::upstream::HttpUpstream;

type HttpCore<K, F, RB> = Arc<Core<K, HttpUpstream<F, RB>>>;

struct Shared<K> {
    key: K,
    config: Config,
    stats: Arc<StatsInner>,
    registry: Arc<Registry>,
    /// `Arc<Core<Key, HttpUpstream<..>>>`, fetched from the layer's registry on the first call
    /// (its type depends on the inner service, which the layer does not know).
    flights: OnceLock<Box<dyn Any + Send + Sync>>,
}

/// Coalesces concurrent identical requests to `S` (made by [`CoalesceLayer`]).
pub struct Coalesce<S, K = crate::key::DefaultKey> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S: Clone, K> Clone for Coalesce<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K> fmt::Debug for Coalesce<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S> Coalesce<S> {
    /// Wraps `inner` with the default configuration ([`CoalesceLayer::new`]).
    pub fn new(inner: S) -> Self {
        Self::from_layer(inner, CoalesceLayer::new())
    }

    /// The layer, to configure.
    pub fn layer() -> CoalesceLayer {
        CoalesceLayer::new()
    }
}

impl<S, K> Coalesce<S, K> {
    pub(crate) fn from_layer(inner: S, layer: CoalesceLayer<K>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                key: layer.key,
                config: layer.config,
                stats: layer.stats,
                registry: layer.registry,
                flights: OnceLock::new(),
            }),
        }
    }

    /// The counters (shared with the layer and its other services).
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

impl<S, K, ReqB, RB> Service<Request<ReqB>> for Coalesce<S, K>
where
    S: Service<Request<ReqB>, Response = Response<RB>> + Clone,
    S::Future: Send + 'static,
    S::Error: fmt::Display + Send + 'static,
    RB: Body<Data = Bytes> + Unpin + Send + 'static,
    RB::Error: fmt::Display,
    K: KeyExtractor<Request<ReqB>>,
    K::Key: Send + Sync + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, RB, K::Key>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &*self.shared;
        let config = &shared.config;
        if !config.methods.contains(req.method()) {
            return ResponseFuture::direct(self.inner.call(req));
        }
        let key = match shared.key.extract(&req) {
            Ok(key) => key,
            Err(error) => {
                tracing::debug!(%error, "coalesce: no key, calling alone");
                return ResponseFuture::direct(self.inner.call(req));
            }
        };
        let other;
        let core = match shared
            .flights
            .get_or_init(|| {
                Box::new(
                    shared
                        .registry
                        .core::<K::Key, HttpUpstream<S::Future, RB>>(),
                )
            })
            .downcast_ref::<HttpCore<K::Key, S::Future, RB>>()
        {
            Some(core) => core,
            None => {
                // The same service used with a second request type: look its map up each time.
                other = shared
                    .registry
                    .core::<K::Key, HttpUpstream<S::Future, RB>>();
                &other
            }
        };
        let stats = &shared.stats;
        match core.join(key, config.max_waiters) {
            Role::Leader(waiter) => {
                stats.miss();
                tracing::debug!(
                    name = stats.name,
                    method = %req.method(),
                    uri = %req.uri(),
                    "coalesce: leader, calling upstream"
                );
                let head = req.method() == http::Method::HEAD;
                let fut = self.inner.call(req);
                waiter.install(HttpUpstream::new(
                    fut,
                    config.max_body,
                    config.identity_in_key,
                    head,
                ));
                ResponseFuture::waiting(waiter, None, config.timeout)
            }
            Role::Follower(waiter) => {
                stats.hit();
                tracing::debug!(
                    name = stats.name,
                    method = %req.method(),
                    uri = %req.uri(),
                    "coalesce: joined the call in flight"
                );
                let svc = self.inner.clone();
                ResponseFuture::waiting(waiter, Some((svc, req)), config.timeout)
            }
            Role::Overflow => {
                stats.miss();
                stats.overflow();
                tracing::debug!(
                    name = stats.name,
                    "coalesce: waiter cap reached, calling alone"
                );
                ResponseFuture::direct(self.inner.call(req))
            }
        }
    }
}
