//! Circuit breaker tower layer with count- and time-based sliding windows, failure and slow-call rates.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
