//! Rate limiting tower layer: GCRA, sliding and fixed windows, leaky bucket; keyed and tiered; wait or reject.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod algorithm;
mod memory;
mod quota;
pub mod store;

pub use algorithm::{Algorithm, Decision};
pub use memory::{AtCapacity, InMemoryStore, StoreStats};
pub use quota::{Quota, QuotaError};
pub use store::{CheckMode, LimitCheck, LimitId, LimitKey, Store, StoreError};
