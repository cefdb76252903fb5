//! Test kit for Stormwall: real servers and clients on loopback, never mocks.
//!
//! - [`http`]: a hyper HTTP/1.1 + HTTP/2 server on a free loopback port around any handler,
//!   with a call counter, and a hyper-util client.
//! - [`grpc`]: a tonic `Echo` service (generated from `proto/echo.proto` by protox) that counts
//!   its calls and can attach trailing metadata.
//! - [`redis`]: starts a private `redis-server` on a free port and stops it on drop.
//! - [`tcp_fault`]: a fault-injecting TCP proxy for Redis (slow, black hole, reset in the
//!   middle of a script call, down), on its own thread.
//!
//! Everything here binds to `127.0.0.1` only and stops when dropped.

pub mod fault;
pub mod grpc;
pub mod http;
pub mod redis;
pub mod tcp_fault;

use std::net::{SocketAddr, TcpListener};

/// Reserves a free TCP port on `127.0.0.1` and returns it (the listener is closed again, so a
/// child process can bind it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A loopback socket address with a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
