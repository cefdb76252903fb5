//! Request coalescing (singleflight) tower layer: N concurrent identical requests make one upstream call.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
