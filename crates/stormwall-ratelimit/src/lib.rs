//! Rate limiting tower layer: GCRA, sliding and fixed windows, leaky bucket; keyed and tiered; wait or reject.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
