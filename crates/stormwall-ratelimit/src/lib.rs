//! Rate limiting tower layer: GCRA, sliding and fixed windows, leaky bucket; keyed and tiered; wait or reject.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
#![cfg_attr(docsrs, feature(doc_cfg))]

mod adaptive;
pub mod algorithm;
mod future;
mod layer;
mod limit;
mod limiter;
mod memory;
mod quota;
mod response;
mod service;
mod stats;
pub mod store;
mod wait;

pub use algorithm::{Algorithm, Decision};
pub use future::ResponseFuture;
pub use layer::{FailurePolicy, Mode, RateLimitLayer, WaitEvent};
pub use limit::{Cost, Limit, Priority, QuotaHandle};
pub use limiter::{AcquireError, DirectLimiter, Limiter};
pub use memory::{AtCapacity, InMemoryStore, StoreStats};
pub use quota::{Quota, QuotaError};
pub use response::{RateLimitWait, RateLimited, RejectReason, Rejection};
pub use service::RateLimit;
pub use stats::RateLimitStats;
pub use store::{CheckMode, LimitCheck, LimitId, LimitKey, Store, StoreError};
