//! Circuit breaker tower layer with count- and time-based sliding windows, failure and slow-call rates.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod config;
mod window;

pub use self::breaker::{
    Breaker, BreakerSnapshot, CircuitOpen, Permit, State, StateTransition, TransitionHook,
};
pub use self::config::{
    BreakerConfig, ConfigError, MAX_HALF_OPEN_CALLS, MAX_WINDOW_CALLS, MAX_WINDOW_SECS, WaitStrategy,
    Window,
};
pub use self::window::Counts;
