//! Retry tower layer: backoff with jitter, retry budgets, Retry-After, idempotency rules, hedging.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
