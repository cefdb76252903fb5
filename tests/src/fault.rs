//! A fault-injecting upstream: a loopback HTTP (HTTP/1.1 + HTTP/2) or gRPC server whose
//! misbehaviour is controlled at run time.
//!
//! [`FaultServer`] answers every request healthily until told otherwise through its
//! [`FaultHandle`] (the server derefs to it; [`FaultServer::handle`] gives a clonable one):
//!
//! | fault | method | what the client sees |
//! |---|---|---|
//! | latency | [`FaultHandle::latency`] | every answer is delayed (a `tokio::time::sleep`, so a paused clock applies) |
//! | throttling | [`FaultHandle::throttle`] | a fraction of requests get `429` + `Retry-After` (gRPC: `RESOURCE_EXHAUSTED` + `grpc-retry-pushback-ms`) |
//! | errors | [`FaultHandle::fail`], [`FaultHandle::fail_grpc`], [`FaultHandle::fail_with`] | a fraction of requests get the given status / gRPC code / arbitrary [`Reply`] (hostile headers included) |
//! | resets | [`FaultHandle::reset`] | a fraction of requests have their TCP connection dropped without an answer (an RST: accepted sockets have a zero linger); over HTTP/2 the other streams of that connection fail with it |
//! | hang | [`FaultHandle::hang`] / [`FaultHandle::release`] | requests are held, unanswered, until released |
//! | gone | [`FaultHandle::go_away`] / [`FaultHandle::come_back`] | the listener closes (connections refused, open connections dropped), then reopens on the same port |
//!
//! Which requests fail is decided by a seeded roll per request ([`roll`]): request number `n`
//! (in arrival order, from 0) fails when `roll(seed, n)` falls below the configured rate, so a
//! sequential run is reproducible bit for bit. Resets are rolled first, then errors:
//! `roll < reset_rate` resets, `roll < reset_rate + error_rate` errors, the rest succeed.
//!
//! Every request is counted ([`FaultHandle::stats`]); tests wait for the server to reach a
//! state with [`FaultHandle::wait_until`] instead of sleeping.
//!
//! # Bounds
//!
//! - **Count**: after [`FaultServerBuilder::max_requests`] requests (default 1,000,000) every
//!   further request is refused (its connection dropped) and counted in
//!   [`FaultStats::refused`].
//! - **Time**: after [`FaultServerBuilder::lifetime`] of *wall-clock* time (default 120 s; a
//!   watchdog thread, so a paused tokio clock cannot stretch or shorten it) the server goes
//!   away for good: hung requests are dropped, the port is closed.
//! - **Drop**: dropping the [`FaultServer`] does the same at once: every task it started ends.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use http::StatusCode;
//! use stormwall_tests::fault::FaultServer;
//!
//! let server = FaultServer::builder().seed(7).start().await;
//! let client = stormwall_tests::http::client();
//!
//! server.throttle(1.0, Duration::from_secs(3));
//! let res = client.get(server.url("/").parse().unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "3");
//!
//! server.heal();
//! let res = client.get(server.url("/").parse().unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(server.stats().requests, 2);
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use crate::grpc::proto;

/// The multiplier of the SplitMix64 sequence.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fault roll of request number `n` (from 0) of a server seeded with `seed`: a number in
/// `[0, 1)`. The request fails when the roll is below the configured rate.
///
/// ```
/// use stormwall_tests::fault::roll;
/// assert_eq!(roll(7, 3), roll(7, 3));
/// assert!((0.0..1.0).contains(&roll(7, 3)));
/// ```
pub fn roll(seed: u64, n: u64) -> f64 {
    let z = mix(seed.wrapping_add(n.wrapping_add(1).wrapping_mul(GOLDEN)));
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A small deterministic pseudo-random generator (SplitMix64) for reproducible test inputs.
///
/// ```
/// use stormwall_tests::fault::SplitMix64;
/// let mut a = SplitMix64::new(1);
/// let mut b = SplitMix64::new(1);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// ```
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// A number in `0..n` (`0` when `n` is `0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.next_u64() % n
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// A canned answer: status, headers and body.
///
/// Header values are raw bytes, so hostile values (non-UTF-8 `obs-text`, huge numbers,
/// repeated fields) go on the wire as given.
///
/// ```
/// use http::StatusCode;
/// use stormwall_tests::fault::Reply;
/// let reply = Reply::new(StatusCode::SERVICE_UNAVAILABLE)
///     .header("retry-after", "120")
///     .header("retry-after", &b"\xff"[..])
///     .body("down");
/// assert_eq!(reply.headers.get_all("retry-after").iter().count(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers (repeated names allowed).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Default for Reply {
    /// `200 OK` with body `ok`.
    fn default() -> Self {
        Self::new(StatusCode::OK).body("ok")
    }
}

impl Reply {
    /// A reply with `status`, no headers and an empty body.
    pub fn new(status: StatusCode) -> Self {
        Self {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// A gRPC trailers-only answer with `code` (HTTP 200, `grpc-status` in the headers), as a
    /// gRPC server sends for a call that fails before any message.
    pub fn grpc(code: tonic::Code) -> Self {
        Self::new(StatusCode::OK)
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", (code as i32).to_string())
            .header("grpc-message", "injected fault")
    }

    /// Appends a header (repeated names are kept).
    ///
    /// # Panics
    ///
    /// If the name or the value is not a valid header name/value (a test-setup error).
    pub fn header<N, V>(mut self, name: N, value: V) -> Self
    where
        N: TryInto<HeaderName>,
        N::Error: fmt::Debug,
        V: TryInto<HeaderValue>,
        V::Error: fmt::Debug,
    {
        self.headers.append(
            name.try_into().expect("valid header name"),
            value.try_into().expect("valid header value"),
        );
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    fn to_response(&self, seq: u64) -> Response<FaultBody> {
        let mut res = Response::new(Either::Left(Full::new(self.body.clone())));
        *res.status_mut() = self.status;
        *res.headers_mut() = self.headers.clone();
        res.headers_mut()
            .insert(X_FAULT_SEQ.clone(), HeaderValue::from(seq));
        res
    }
}

/// `x-fault-seq`: the number (from 0) of the request this answer is for, on every answer of
/// an HTTP fault server.
pub static X_FAULT_SEQ: HeaderName = HeaderName::from_static("x-fault-seq");

/// What the server currently does with requests. See the [module docs](self) for the order in
/// which the faults apply.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Added to every answer (and to every reset).
    pub latency: Duration,
    /// Fraction of requests whose connection is dropped without an answer (`0.0..=1.0`).
    pub reset_rate: f64,
    /// Fraction of requests answered with [`Faults::error`] (`0.0..=1.0`).
    pub error_rate: f64,
    /// The error answer.
    pub error: Reply,
    /// The healthy answer of an HTTP server (a gRPC server runs its echo service instead).
    pub ok: Reply,
}

impl Default for Faults {
    /// Healthy: no latency, no errors, `200 ok`.
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            reset_rate: 0.0,
            error_rate: 0.0,
            error: Reply::new(StatusCode::SERVICE_UNAVAILABLE),
            ok: Reply::default(),
        }
    }
}

fn rate(r: f64) -> f64 {
    if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) }
}

/// A snapshot of a fault server's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultStats {
    /// Requests received (including refused ones).
    pub requests: u64,
    /// Requests answered healthily.
    pub ok: u64,
    /// Requests answered with the error reply.
    pub errors: u64,
    /// Requests whose connection was reset.
    pub resets: u64,
    /// Requests being held by [`FaultHandle::hang`] right now.
    pub hanging: u64,
    /// Requests refused because the server is over its request bound or its lifetime.
    pub refused: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// Whether the server is listening.
    pub up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Grpc,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    resets: AtomicU64,
    hanging: AtomicU64,
    refused: AtomicU64,
    connections: AtomicU64,
    up: AtomicBool,
}

struct Shared {
    addr: SocketAddr,
    kind: Kind,
    seed: u64,
    max_requests: u64,
    faults: Mutex<Arc<Faults>>,
    counters: Counters,
    /// Ticks on every counter change, for [`FaultHandle::wait_until`].
    tick: watch::Sender<()>,
    /// `true` while requests are held.
    hang: watch::Sender<bool>,
    /// `true` once the server is dropped or past its lifetime.
    shutdown: watch::Sender<bool>,
    accept: Mutex<Option<JoinHandle<()>>>,
    echo_calls: Arc<AtomicU64>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultServer")
            .field("addr", &self.addr)
            .field("kind", &self.kind)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn bump(&self, counter: &AtomicU64) -> u64 {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        self.tick.send_replace(());
        n
    }

    fn drop_one(&self, counter: &AtomicU64) {
        counter.fetch_sub(1, Ordering::SeqCst);
        self.tick.send_replace(());
    }

    fn faults(&self) -> Arc<Faults> {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn accept_slot(&self) -> std::sync::MutexGuard<'_, Option<JoinHandle<()>>> {
        self.accept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds a [`FaultServer`].
#[derive(Debug, Clone)]
pub struct FaultServerBuilder {
    kind: Kind,
    seed: u64,
    max_requests: u64,
    lifetime: Duration,
}

impl Default for FaultServerBuilder {
    fn default() -> Self {
        Self {
            kind: Kind::Http,
            seed: 0,
            max_requests: 1_000_000,
            lifetime: Duration::from_secs(120),
        }
    }
}

impl FaultServerBuilder {
    /// Serves the gRPC `Echo` service (`stormwall_tests::grpc::proto`) instead of plain HTTP:
    /// healthy calls are echoed, [`FaultHandle::throttle`] answers `RESOURCE_EXHAUSTED` with
    /// `grpc-retry-pushback-ms`. HTTP/2 only, as gRPC is.
    pub fn grpc(mut self) -> Self {
        self.kind = Kind::Grpc;
        self
    }

    /// The seed of the fault rolls (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Requests after this many are refused (default 1,000,000).
    pub fn max_requests(mut self, n: u64) -> Self {
        self.max_requests = n;
        self
    }

    /// Wall-clock time after which the server goes away for good (default 120 s).
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Starts the server on a free `127.0.0.1` port.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound, or outside a tokio runtime.
    pub async fn start(self) -> FaultServer {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            addr,
            kind: self.kind,
            seed: self.seed,
            max_requests: self.max_requests,
            faults: Mutex::new(Arc::new(Faults::default())),
            counters: Counters::default(),
            tick: watch::Sender::new(()),
            hang: watch::Sender::new(false),
            shutdown: watch::Sender::new(false),
            accept: Mutex::new(None),
            echo_calls: Arc::new(AtomicU64::new(0)),
        });
        spawn_accept(&shared, listener);
        let (watchdog, rx) = channel::<()>();
        let weak = Arc::downgrade(&shared);
        let lifetime = self.lifetime;
        std::thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(lifetime)
                && let Some(shared) = weak.upgrade()
            {
                stop(&shared);
            }
        });
        FaultServer {
            handle: FaultHandle { shared },
            _watchdog: watchdog,
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn stop(shared: &Shared) {
    shared.shutdown.send_replace(true);
    shared.hang.send_replace(false);
    if let Some(task) = shared.accept_slot().take() {
        task.abort();
    }
    shared.tick.send_replace(());
}

/// Marks the server down when the accept task ends, however it ends (declared before the
/// listener, so it drops after it).
struct UpGuard(Arc<Shared>);

impl Drop for UpGuard {
    fn drop(&mut self) {
        self.0.counters.up.store(false, Ordering::SeqCst);
        self.0.tick.send_replace(());
    }
}

fn spawn_accept(shared: &Arc<Shared>, listener: TcpListener) {
    shared.counters.up.store(true, Ordering::SeqCst);
    shared.tick.send_replace(());
    let guard = UpGuard(shared.clone());
    let task = tokio::spawn(async move {
        let guard = guard;
        let listener = listener;
        let shared = guard.0.clone();
        let mut shutdown = shared.shutdown.subscribe();
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    // Dropping a connection is then an RST, like a crashed upstream.
                    let _ = stream.set_zero_linger();
                    shared.bump(&shared.counters.connections);
                    conns.spawn(serve_connection(shared.clone(), stream));
                }
                // Reap finished connections so the set stays bounded.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    *shared.accept_slot() = Some(task);
}

type FaultBody = Either<Full<Bytes>, tonic::body::Body>;

/// The error a request "returns" when its connection is being killed.
#[derive(Debug)]
struct Killed;

impl fmt::Display for Killed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset by the fault server")
    }
}

impl std::error::Error for Killed {}

async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let kill = Arc::new(Notify::new());
    // Dropped when this task ends (or is aborted): handlers still running on spawned HTTP/2
    // stream tasks see it and stop.
    let (alive, _) = watch::channel(());
    let mut shutdown = shared.shutdown.subscribe();
    let echo = proto::echo_server::EchoServer::new(FaultEcho {
        calls: shared.echo_calls.clone(),
    });
    let svc = {
        let kill = kill.clone();
        let alive = alive.subscribe();
        let shared = shared.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(
                shared.clone(),
                kill.clone(),
                alive.clone(),
                echo.clone(),
                req,
            )
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if shared.kind == Kind::Grpc {
        builder = builder.http2_only();
    }
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        () = kill.notified() => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
    drop(alive);
}

/// Resolves when the request should be abandoned: its connection died or the server stopped.
async fn interrupted(shared: &Shared, alive: &mut watch::Receiver<()>) {
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        _ = alive.changed() => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
}

struct Hanging<'a>(&'a Shared);

impl Drop for Hanging<'_> {
    fn drop(&mut self) {
        self.0.drop_one(&self.0.counters.hanging);
    }
}

async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    mut alive: watch::Receiver<()>,
    echo: proto::echo_server::EchoServer<FaultEcho>,
    req: Request<Incoming>,
) -> Result<Response<FaultBody>, Killed> {
    let seq = shared.bump(&shared.counters.requests);
    let refuse = |shared: &Shared| {
        shared.bump(&shared.counters.refused);
        kill.notify_one();
        Err(Killed)
    };
    if seq >= shared.max_requests || *shared.shutdown.borrow() {
        return refuse(&shared);
    }
    let mut hang = shared.hang.subscribe();
    if *hang.borrow_and_update() {
        let _hanging = {
            shared.bump(&shared.counters.hanging);
            Hanging(&shared)
        };
        tokio::select! {
            _ = hang.wait_for(|h| !*h) => {}
            () = interrupted(&shared, &mut alive) => return Err(Killed),
        }
    }
    if *shared.shutdown.borrow() {
        return refuse(&shared);
    }
    let faults = shared.faults();
    if !faults.latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(faults.latency) => {}
            () = interrupted(&shared, &mut alive) => return Err(Killed),
        }
    }
    let roll = roll(shared.seed, seq);
    let reset_rate = rate(faults.reset_rate);
    if roll < reset_rate {
        shared.bump(&shared.counters.resets);
        kill.notify_one();
        return Err(Killed);
    }
    if roll < reset_rate + rate(faults.error_rate) {
        shared.bump(&shared.counters.errors);
        return Ok(faults.error.to_response(seq));
    }
    shared.bump(&shared.counters.ok);
    match shared.kind {
        Kind::Http => Ok(faults.ok.to_response(seq)),
        Kind::Grpc => {
            let res = echo
                .oneshot(req)
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok(res.map(Either::Right))
        }
    }
}

/// The gRPC echo behind a gRPC fault server.
#[derive(Debug, Clone)]
struct FaultEcho {
    calls: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl proto::echo_server::Echo for FaultEcho {
    async fn unary(
        &self,
        request: tonic::Request<proto::EchoRequest>,
    ) -> Result<tonic::Response<proto::EchoReply>, tonic::Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(tonic::Response::new(proto::EchoReply {
            message: request.into_inner().message,
            call,
        }))
    }
}

/// A running fault server. Derefs to its [`FaultHandle`]; dropping it stops everything.
///
/// See the [module docs](self) for an example.
#[derive(Debug)]
pub struct FaultServer {
    handle: FaultHandle,
    /// Dropping it ends the lifetime watchdog thread.
    _watchdog: Sender<()>,
}

impl FaultServer {
    /// A builder (HTTP, seed 0, 1,000,000 requests, 120 s).
    pub fn builder() -> FaultServerBuilder {
        FaultServerBuilder::default()
    }

    /// Starts a healthy HTTP fault server with the default bounds.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// A clonable control handle (it does not keep the server alive).
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }
}

impl Deref for FaultServer {
    type Target = FaultHandle;
    fn deref(&self) -> &FaultHandle {
        &self.handle
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        stop(&self.handle.shared);
    }
}

/// Controls a [`FaultServer`] at run time. Cheap to clone; every method takes effect for the
/// requests that arrive (or, for [`FaultHandle::release`], are held) after it.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    shared: Arc<Shared>,
}

impl FaultHandle {
    /// The address the server listens on (the same after [`FaultHandle::come_back`]).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.shared.addr, path)
    }

    /// A lazily connecting tonic channel to the server (for a gRPC server).
    pub fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url(""))
            .expect("endpoint")
            .connect_lazy()
    }

    /// The current fault configuration.
    pub fn faults(&self) -> Faults {
        (*self.shared.faults()).clone()
    }

    /// Replaces the fault configuration.
    pub fn set(&self, faults: Faults) {
        *self
            .shared
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(faults);
    }

    /// Edits the fault configuration.
    pub fn update(&self, edit: impl FnOnce(&mut Faults)) {
        let mut faults = self.faults();
        edit(&mut faults);
        self.set(faults);
    }

    /// Delays every answer by `latency`.
    pub fn latency(&self, latency: Duration) {
        self.update(|f| f.latency = latency);
    }

    /// Answers a fraction `rate` of requests with a throttling answer asking to wait `wait`:
    /// HTTP `429` + `Retry-After` (whole seconds, rounded up); gRPC `RESOURCE_EXHAUSTED` +
    /// `grpc-retry-pushback-ms`.
    pub fn throttle(&self, rate: f64, wait: Duration) {
        let reply = match self.shared.kind {
            Kind::Http => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Reply::new(StatusCode::TOO_MANY_REQUESTS).header(RETRY_AFTER, secs.to_string())
            }
            Kind::Grpc => Reply::grpc(tonic::Code::ResourceExhausted)
                .header("grpc-retry-pushback-ms", wait.as_millis().to_string()),
        };
        self.fail_with(rate, reply);
    }

    /// Answers a fraction `rate` of requests with HTTP `status` (on a gRPC server too, as a
    /// proxy in front of it would).
    pub fn fail(&self, rate: f64, status: StatusCode) {
        self.fail_with(rate, Reply::new(status).body("injected fault"));
    }

    /// Answers a fraction `rate` of requests with a gRPC trailers-only failure `code`.
    pub fn fail_grpc(&self, rate: f64, code: tonic::Code) {
        self.fail_with(rate, Reply::grpc(code));
    }

    /// Answers a fraction `rate` of requests with `reply`.
    pub fn fail_with(&self, rate: f64, reply: Reply) {
        self.update(|f| {
            f.error_rate = rate;
            f.error = reply;
        });
    }

    /// Sets the healthy answer of an HTTP server (e.g. to send hostile headers on `200`s).
    pub fn respond_with(&self, reply: Reply) {
        self.update(|f| f.ok = reply);
    }

    /// Drops the connection of a fraction `rate` of requests without answering.
    pub fn reset(&self, rate: f64) {
        self.update(|f| f.reset_rate = rate);
    }

    /// Holds every request that arrives from now on, unanswered, until
    /// [`FaultHandle::release`] (or the server stops).
    pub fn hang(&self) {
        self.shared.hang.send_replace(true);
    }

    /// Lets held requests (and later ones) proceed through the other faults.
    pub fn release(&self) {
        self.shared.hang.send_replace(false);
    }

    /// Back to healthy: no latency, no errors, no resets, no hang (the healthy answer is
    /// kept).
    pub fn heal(&self) {
        self.release();
        self.update(|f| {
            let ok = f.ok.clone();
            *f = Faults {
                ok,
                ..Faults::default()
            };
        });
    }

    /// Stops listening and drops every open connection: new connections are refused until
    /// [`FaultHandle::come_back`]. Returns once the port is closed.
    pub async fn go_away(&self) {
        let task = self.shared.accept_slot().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port (no-op if already up).
    ///
    /// # Errors
    ///
    /// If the server was stopped (dropped or past its lifetime), or the port cannot be bound
    /// again.
    pub async fn come_back(&self) -> io::Result<()> {
        if *self.shared.shutdown.borrow() {
            return Err(io::Error::other("the fault server was stopped"));
        }
        if self.shared.accept_slot().is_some() {
            return Ok(());
        }
        let listener = bind(self.shared.addr)?;
        spawn_accept(&self.shared, listener);
        Ok(())
    }

    /// Whether the server is listening.
    pub fn is_up(&self) -> bool {
        self.shared.counters.up.load(Ordering::SeqCst)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> FaultStats {
        let c = &self.shared.counters;
        FaultStats {
            requests: c.requests.load(Ordering::SeqCst),
            ok: c.ok.load(Ordering::SeqCst),
            errors: c.errors.load(Ordering::SeqCst),
            resets: c.resets.load(Ordering::SeqCst),
            hanging: c.hanging.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            connections: c.connections.load(Ordering::SeqCst),
            up: c.up.load(Ordering::SeqCst),
        }
    }

    /// Waits until `pred` holds for the counters (checked on every change). Pair it with a
    /// `tokio::time::timeout` to bound it.
    pub async fn wait_until(&self, mut pred: impl FnMut(&FaultStats) -> bool) -> FaultStats {
        let mut tick = self.shared.tick.subscribe();
        loop {
            let stats = self.stats();
            if pred(&stats) {
                return stats;
            }
            if tick.changed().await.is_err() {
                return self.stats();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::{EchoClient, EchoRequest};
    use crate::http::{TestClient, client};
    use hyper_util::client::legacy::Client;
    use tokio::time::timeout;

    const BOUND: Duration = Duration::from_secs(20);

    fn h2_client() -> TestClient {
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http()
    }

    async fn get(
        client: &TestClient,
        server: &FaultHandle,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        timeout(BOUND, client.get(server.url("/").parse().unwrap()))
            .await
            .expect("bounded")
    }

    async fn body(res: Response<Incoming>) -> Bytes {
        use http_body_util::BodyExt;
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn healthy_answers_are_counted_and_numbered() {
        let server = FaultServer::start().await;
        for (n, c) in [client(), h2_client(), client()].iter().enumerate() {
            let res = get(c, &server).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()[&X_FAULT_SEQ], n.to_string().as_str());
            assert_eq!(body(res).await, "ok");
        }
        let stats = server.stats();
        assert_eq!((stats.requests, stats.ok, stats.errors), (3, 3, 0));
        assert!(stats.up);
    }

    #[tokio::test]
    async fn throttling_follows_the_seeded_rolls() {
        let server = FaultServer::builder().seed(42).start().await;
        server.throttle(0.3, Duration::from_millis(1500));
        let c = client();
        let mut throttled = Vec::new();
        for n in 0..100u64 {
            let res = get(&c, &server).await.unwrap();
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(res.headers()[RETRY_AFTER], "2"); // rounded up
                throttled.push(n);
            } else {
                assert_eq!(res.status(), StatusCode::OK);
            }
        }
        let expected: Vec<u64> = (0..100).filter(|&n| roll(42, n) < 0.3).collect();
        assert_eq!(throttled, expected);
        assert!((15..=45).contains(&throttled.len()), "{}", throttled.len());
        assert_eq!(server.stats().errors, throttled.len() as u64);
    }

    #[tokio::test]
    async fn server_errors_at_full_rate_over_h2() {
        let server = FaultServer::start().await;
        server.fail(1.0, StatusCode::BAD_GATEWAY);
        let c = h2_client();
        for _ in 0..5 {
            let res = get(&c, &server).await.unwrap();
            assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        }
        server.heal();
        assert_eq!(get(&c, &server).await.unwrap().status(), StatusCode::OK);
        assert_eq!(server.stats().errors, 5);
    }

    #[tokio::test]
    async fn resets_drop_the_connection_without_an_answer() {
        let server = FaultServer::start().await;
        server.reset(1.0);
        for c in [client(), h2_client()] {
            let err = get(&c, &server).await.unwrap_err();
            assert!(!err.is_connect(), "{err:?}");
        }
        assert_eq!(server.stats().resets, 2);
        assert_eq!(server.stats().ok, 0);
        server.reset(0.0);
        assert_eq!(
            get(&client(), &server).await.unwrap().status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn hang_holds_requests_until_released() {
        let server = FaultServer::start().await;
        server.hang();
        let handle = server.handle();
        let mut pending = tokio::spawn(async move { get(&client(), &handle).await });
        let stats = timeout(BOUND, server.wait_until(|s| s.hanging == 1))
            .await
            .unwrap();
        assert_eq!(stats.ok, 0);
        // Held: not answered while hanging.
        assert!(
            timeout(Duration::from_millis(300), &mut pending)
                .await
                .is_err()
        );
        server.release();
        let res = timeout(BOUND, pending).await.unwrap().unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(server.stats().hanging, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_every_answer() {
        let server = FaultServer::start().await;
        server.latency(Duration::from_secs(30));
        let start = tokio::time::Instant::now();
        let res = client()
            .get(server.url("/").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(start.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test]
    async fn goes_away_and_comes_back_on_the_same_port() {
        let server = FaultServer::start().await;
        let c = client();
        assert_eq!(get(&c, &server).await.unwrap().status(), StatusCode::OK);
        server.go_away().await;
        assert!(!server.is_up());
        let err = get(&c, &server).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        let addr = server.addr();
        server.come_back().await.unwrap();
        assert_eq!(server.addr(), addr);
        assert_eq!(get(&c, &server).await.unwrap().status(), StatusCode::OK);
        assert_eq!(server.stats().ok, 2);
    }

    #[tokio::test]
    async fn request_bound_refuses_the_excess() {
        let server = FaultServer::builder().max_requests(2).start().await;
        let c = client();
        for _ in 0..2 {
            assert_eq!(get(&c, &server).await.unwrap().status(), StatusCode::OK);
        }
        assert!(get(&c, &server).await.is_err());
        let stats = server.stats();
        assert_eq!((stats.ok, stats.refused), (2, 1));
    }

    #[tokio::test]
    async fn lifetime_bound_stops_the_server() {
        let server = FaultServer::builder()
            .lifetime(Duration::from_millis(50))
            .start()
            .await;
        timeout(BOUND, server.wait_until(|s| !s.up)).await.unwrap();
        let err = get(&client(), &server).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(server.come_back().await.is_err());
    }

    #[tokio::test]
    async fn drop_ends_hung_requests() {
        let server = FaultServer::start().await;
        let handle = server.handle();
        server.hang();
        let h = handle.clone();
        let pending = tokio::spawn(async move { get(&client(), &h).await });
        timeout(BOUND, handle.wait_until(|s| s.hanging == 1))
            .await
            .unwrap();
        drop(server);
        assert!(timeout(BOUND, pending).await.unwrap().unwrap().is_err());
        let stats = timeout(BOUND, handle.wait_until(|s| !s.up && s.hanging == 0))
            .await
            .unwrap();
        assert_eq!(stats.ok, 0);
    }

    #[tokio::test]
    async fn hostile_reply_goes_on_the_wire_verbatim() {
        let server = FaultServer::start().await;
        server.fail_with(
            1.0,
            Reply::new(StatusCode::TOO_MANY_REQUESTS)
                .header(RETRY_AFTER, &b"\xff\xfe"[..])
                .header(RETRY_AFTER, "99999999999999999999999"),
        );
        let res = get(&client(), &server).await.unwrap();
        let values: Vec<&[u8]> = res
            .headers()
            .get_all(RETRY_AFTER)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(values, [&b"\xff\xfe"[..], &b"99999999999999999999999"[..]]);
    }

    #[tokio::test]
    async fn grpc_faults() {
        let server = FaultServer::builder().grpc().start().await;
        let mut echo = EchoClient::new(server.channel());
        let call = |m: &str| {
            let mut echo = echo.clone();
            let req = EchoRequest {
                message: m.to_owned(),
            };
            async move { timeout(BOUND, echo.unary(req)).await.expect("bounded") }
        };
        assert_eq!(call("hi").await.unwrap().into_inner().message, "hi");

        server.throttle(1.0, Duration::from_millis(1500));
        let status = call("x").await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "1500"
        );

        server.fail_grpc(1.0, tonic::Code::Unavailable);
        assert_eq!(
            call("x").await.unwrap_err().code(),
            tonic::Code::Unavailable
        );

        server.heal();
        server.hang();
        let handle = server.handle();
        let pending = tokio::spawn(call("held"));
        timeout(BOUND, handle.wait_until(|s| s.hanging == 1))
            .await
            .unwrap();
        server.release();
        let reply = pending.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.message, "held");

        server.reset(1.0);
        let status = call("x").await.unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
            ),
            "{status:?}"
        );
        server.heal();
        let reply = echo
            .unary(EchoRequest {
                message: "again".to_owned(),
            })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().message, "again");
        assert_eq!(server.stats().resets, 1);
    }
}
