//! RFC 9111 HTTP cache tower layer.
mod directives;
mod future;
mod layer;
mod policy;
mod service;
mod stats;
mod status;
mod store;

pub use directives::{RequestDirectives, ResponseDirectives};
pub use future::ResponseFuture;
pub use layer::{CacheHandle, CacheLayer, Candidate};
pub use service::Cache;
pub use stats::CacheStats;
pub use store::{Entry, MemoryStore, Store, Variants};
