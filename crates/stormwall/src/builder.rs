//! [`ServiceBuilderExt`]: one method per Stormwall layer on tower's `ServiceBuilder`.

use tower::ServiceBuilder;
#[cfg(any(
    feature = "coalesce",
    feature = "ratelimit",
    feature = "circuit",
    feature = "retry",
    feature = "cache"
))]
use tower::layer::util::Stack;

mod sealed {
    pub trait Sealed<T> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Extension methods on [`ServiceBuilder`] that add the Stormwall layers, in the style of
/// tower-http's `ServiceBuilderExt`. Layers added first are outermost.
///
/// The outbound order recommended in the [crate docs](crate#the-standard-stacks) is cache →
/// coalesce → retry → circuit breaker → rate limit (wait) → attempt timeout → client.
///
/// ```
/// use std::time::Duration;
/// use tower::ServiceBuilder;
/// use stormwall::ServiceBuilderExt;
/// use stormwall::circuit::{BreakerConfig, CircuitBreakerLayer};
/// use stormwall::retry::RetryLayer;
///
/// let builder = ServiceBuilder::new()
///     .retry(RetryLayer::new().max_attempts(3))
///     .circuit_breaker(CircuitBreakerLayer::new("partner", BreakerConfig::new()).unwrap())
///     .timeout(Duration::from_secs(2));
/// # let _ = builder;
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Adds a [`CoalesceLayer`](crate::coalesce::CoalesceLayer).
    #[cfg(feature = "coalesce")]
    fn coalesce<K>(
        self,
        layer: crate::coalesce::CoalesceLayer<K>,
    ) -> ServiceBuilder<Stack<crate::coalesce::CoalesceLayer<K>, L>>;

    /// Adds a [`RateLimitLayer`](crate::ratelimit::RateLimitLayer).
    #[cfg(feature = "ratelimit")]
    fn rate_limit<St>(
        self,
        layer: crate::ratelimit::RateLimitLayer<St>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::RateLimitLayer<St>, L>>;

    /// Adds a [`CircuitBreakerLayer`](crate::circuit::CircuitBreakerLayer).
    #[cfg(feature = "circuit")]
    fn circuit_breaker<C, K, M>(
        self,
        layer: crate::circuit::CircuitBreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::circuit::CircuitBreakerLayer<C, K, M>, L>>;

    /// Adds a [`RetryLayer`](crate::retry::RetryLayer).
    #[cfg(feature = "retry")]
    fn retry(
        self,
        layer: crate::retry::RetryLayer,
    ) -> ServiceBuilder<Stack<crate::retry::RetryLayer, L>>;

    /// Adds a [`CacheLayer`](crate::cache::CacheLayer).
    #[cfg(feature = "cache")]
    fn cache(
        self,
        layer: crate::cache::CacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::CacheLayer, L>>;

    /// Adds the whole [`OutboundStack`](crate::OutboundStack).
    #[cfg(feature = "full")]
    fn outbound_stack(
        self,
        stack: crate::OutboundStack,
    ) -> ServiceBuilder<Stack<crate::OutboundStack, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "coalesce")]
    fn coalesce<K>(
        self,
        layer: crate::coalesce::CoalesceLayer<K>,
    ) -> ServiceBuilder<Stack<crate::coalesce::CoalesceLayer<K>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "ratelimit")]
    fn rate_limit<St>(
        self,
        layer: crate::ratelimit::RateLimitLayer<St>,
    ) -> ServiceBuilder<Stack<crate::ratelimit::RateLimitLayer<St>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "circuit")]
    fn circuit_breaker<C, K, M>(
        self,
        layer: crate::circuit::CircuitBreakerLayer<C, K, M>,
    ) -> ServiceBuilder<Stack<crate::circuit::CircuitBreakerLayer<C, K, M>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn retry(
        self,
        layer: crate::retry::RetryLayer,
    ) -> ServiceBuilder<Stack<crate::retry::RetryLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn cache(
        self,
        layer: crate::cache::CacheLayer,
    ) -> ServiceBuilder<Stack<crate::cache::CacheLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "full")]
    fn outbound_stack(
        self,
        stack: crate::OutboundStack,
    ) -> ServiceBuilder<Stack<crate::OutboundStack, L>> {
        self.layer(stack)
    }
}
