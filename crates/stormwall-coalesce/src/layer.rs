//! [`CoalesceLayer`]: configuration of the HTTP coalescing layer.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use stormwall_core::key::KeyFn;
use tower_layer::Layer;

use crate::flight::Registry;
use crate::generic::GenericCoalesceLayer;
use crate::key::DefaultKey;
use crate::service::Coalesce;
use crate::stats::{StatsHandle, StatsInner};

/// Default cap on a shared response body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_waiters: Option<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_body: usize,
    pub(crate) identity_in_key: bool,
    pub(crate) methods: Vec<Method>,
}

/// Coalesces concurrent identical HTTP requests into one upstream call (see the
/// [crate docs](crate) for the rules and an example).
///
/// Every service made by one layer (and its clones) shares the same flights and stats, even
/// across `layer()` calls (axum, for example, layers a router once per connection). Two
/// separately built layers never share.
#[derive(Clone)]
pub struct CoalesceLayer<K = DefaultKey> {
    pub(crate) key: K,
    pub(crate) config: Config,
    pub(crate) stats: Arc<StatsInner>,
    pub(crate) registry: Arc<Registry>,
}

impl<K> fmt::Debug for CoalesceLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoalesceLayer")
            .field("key", &std::any::type_name::<K>())
            .field("config", &self.config)
            .field("name", &self.stats.name)
            .finish()
    }
}

impl Default for CoalesceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CoalesceLayer {
    /// Coalesces `GET` and `HEAD` requests by the [`DefaultKey`], sharing bodies up to
    /// [`DEFAULT_MAX_BODY`], with no waiter cap and no timeout.
    ///
    /// ```
    /// let layer = stormwall_coalesce::CoalesceLayer::new();
    /// # let _ = layer;
    /// ```
    pub fn new() -> Self {
        Self::named("default")
    }

    /// A layer for any service whose response is `Clone` (gRPC-free RPC clients, database
    /// lookups, ...): requests are keyed by `key` and responses and errors are shared. See
    /// [`GenericCoalesce`](crate::GenericCoalesce) for an example.
    pub fn generic<K>(key: K) -> GenericCoalesceLayer<K> {
        GenericCoalesceLayer::new(key, "default")
    }

    /// Like [`generic`](Self::generic), with `name = <name>` on the metrics.
    pub fn generic_named<K>(key: K, name: &'static str) -> GenericCoalesceLayer<K> {
        GenericCoalesceLayer::new(key, name)
    }

    /// Like [`new`](Self::new), with `name = <name>` on the metrics.
    pub fn named(name: &'static str) -> Self {
        let stats = StatsInner::new(name);
        Self {
            key: DefaultKey,
            config: Config {
                max_waiters: None,
                timeout: None,
                max_body: DEFAULT_MAX_BODY,
                identity_in_key: true,
                methods: vec![Method::GET, Method::HEAD],
            },
            registry: Registry::new(Arc::clone(&stats)),
            stats,
        }
    }
}

impl<K> CoalesceLayer<K> {
    /// Replaces the default key by a [`KeyExtractor`](stormwall_core::key::KeyExtractor).
    /// Requests it cannot key pass through uncoalesced.
    ///
    /// With a custom key, responses marked `Cache-Control: private` are no longer shared unless
    /// you state that the key identifies the user ([`key_includes_identity`](Self::key_includes_identity)).
    ///
    /// ```
    /// use stormwall_coalesce::CoalesceLayer;
    /// use stormwall_core::key::{HeaderKey, MethodPath};
    ///
    /// // Method, path and API key.
    /// let layer = CoalesceLayer::new()
    ///     .key((MethodPath::new(), HeaderKey::new("x-api-key")))
    ///     .key_includes_identity(true);
    /// # let _ = layer;
    /// ```
    pub fn key<K2>(self, key: K2) -> CoalesceLayer<K2> {
        CoalesceLayer {
            key,
            config: Config {
                identity_in_key: false,
                ..self.config
            },
            stats: self.stats,
            registry: self.registry,
        }
    }

    /// Replaces the default key by a closure `Fn(&Request<B>) -> Result<Key, KeyError>`.
    ///
    /// ```
    /// use stormwall_coalesce::CoalesceLayer;
    /// use stormwall_core::key::KeyError;
    ///
    /// let layer = CoalesceLayer::new().key_fn(|req: &http::Request<()>| {
    ///     Ok::<_, KeyError>(req.uri().path().to_owned())
    /// });
    /// # let _ = layer;
    /// ```
    pub fn key_fn<F>(self, f: F) -> CoalesceLayer<KeyFn<F>> {
        self.key(KeyFn(f))
    }

    /// Whether the key contains the caller's identity (`Authorization`, `Cookie`, an API key):
    /// only then are responses marked `Cache-Control: private` shared. True for the
    /// [`DefaultKey`], false after [`key`](Self::key).
    pub fn key_includes_identity(mut self, yes: bool) -> Self {
        self.config.identity_in_key = yes;
        self
    }

    /// At most `max` callers wait on one call besides the caller that started it; requests
    /// beyond that go upstream on their own.
    pub fn max_waiters(mut self, max: usize) -> Self {
        self.config.max_waiters = Some(max);
        self
    }

    /// Each caller waits at most `timeout` for a shared call and then gets `504 Gateway
    /// Timeout`; the call goes on for the others. Uncoalesced requests are not timed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Bodies up to `bytes` are buffered and shared; a larger one is streamed to the caller that
    /// drove the call, and each other waiter re-issues its own request.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }

    /// The methods that coalesce (default `GET`, `HEAD`); others pass straight through.
    /// Only add unsafe methods (e.g. `POST` for gRPC unary calls) with a key that identifies
    /// the request body: the body is not part of any key.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// The counters of every service made by this layer.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle {
            inner: Arc::clone(&self.stats),
        }
    }
}

impl<S, K: Clone> Layer<S> for CoalesceLayer<K> {
    type Service = Coalesce<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Coalesce::from_layer(inner, self.clone())
    }
}
