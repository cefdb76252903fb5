//! RFC 9111 HTTP cache tower layer.
mod directives;
mod policy;
pub use directives::{RequestDirectives, ResponseDirectives};
