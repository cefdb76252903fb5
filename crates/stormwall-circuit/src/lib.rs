//! Circuit breaker tower layer with count- and time-based sliding windows, failure and slow-call rates.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod breaker;
mod classify;
mod config;
pub mod error;
pub mod future;
mod layer;
mod registry;
mod service;
mod window;

pub use self::body::ResponseBody;
pub use self::breaker::{
    Breaker, BreakerSnapshot, CircuitOpen, Permit, State, StateTransition, TransitionHook,
};
pub use self::classify::FailureIf;
pub use self::config::{
    BreakerConfig, ConfigError, MAX_HALF_OPEN_CALLS, MAX_WINDOW_CALLS, MAX_WINDOW_SECS,
    WaitStrategy, Window,
};
pub use self::error::CircuitBreakerError;
pub use self::future::ResponseFuture;
pub use self::layer::{CircuitBreakerLayer, Fail, Respond};
pub use self::registry::{CircuitStats, KeyedBreakers, SelectBreaker, SingleBreaker, Snapshots};
pub use self::service::CircuitBreaker;
pub use self::window::Counts;
