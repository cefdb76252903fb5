//! Request coalescing (singleflight) tower layer: N concurrent identical requests make one upstream call.
//!
//! This crate is part of [Stormwall](https://docs.rs/stormwall).
//!
//! # Example
//!
//! ```
//! use stormwall_coalesce::Group;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let group: Group<u64, String> = Group::new();
//! let user = group.run(1, async { Ok(String::from("ada")) }).await.unwrap();
//! assert_eq!(user, "ada");
//! # }
//! ```

mod error;
mod flight;
mod future;
mod generic;
mod group;
mod key;
mod layer;
mod service;
mod stats;
mod upstream;

pub use self::error::CoalesceError;
pub use self::future::ResponseFuture;
pub use self::generic::{GenericCoalesce, GenericCoalesceLayer, GenericFuture};
pub use self::group::{Group, Run};
pub use self::key::{DefaultKey, KEY_HEADERS, RequestKey};
pub use self::layer::{CoalesceLayer, DEFAULT_MAX_BODY};
pub use self::service::Coalesce;
pub use self::stats::{CoalesceStats, StatsHandle};
pub use self::upstream::CoalesceFailure;
