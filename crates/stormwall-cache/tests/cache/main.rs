//! Integration tests of the cache against a real origin on loopback, organized by RFC section.

mod support;

mod coalescing;
mod inbound;
mod passthrough;
mod rfc5861;
mod rfc9111_s3_storage;
mod rfc9111_s4_freshness_validation;
mod rfc9111_s5_request_directives;
mod rfc9211_and_control;
