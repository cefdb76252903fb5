//! Shared pieces of the Stormwall examples (local upstreams and report printing).
//!
//! The examples themselves live next to this crate: run them with `cargo run --example NAME`.
