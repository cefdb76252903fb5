//! RFC 9111 HTTP cache tower layer with Vary, validation, stale-while-revalidate and stale-if-error.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
