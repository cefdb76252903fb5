//! The `tonic_client` example (see `examples/tonic_client.rs`): coalescing, retries and a
//! circuit breaker around a tonic `Channel`, against a local gRPC echo server whose faults
//! are switched at run time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use futures_util::future::join_all;
use http::{Method, Request};
use stormwall::circuit::{
    BreakerConfig, CircuitBreaker, CircuitBreakerLayer, Respond, SingleBreaker, State, Window,
};
use stormwall::coalesce::{Coalesce, CoalesceLayer};
use stormwall::core::BoxError;
use stormwall::core::classify::ResilienceClassifier;
use stormwall::core::key::KeyError;
use stormwall::retry::{Backoff, Retry, RetryBody, RetryLayer};
use stormwall_tests::fault::{FaultHandle, FaultServer};
use stormwall_tests::grpc::{EchoClient, EchoRequest};
use tonic::body::Body as TonicBody;
use tonic::transport::Channel;
use tower::ServiceBuilder;
use tower::util::MapRequest;

use crate::Flags;

/// The metadata entry that identifies a call's message for coalescing.
pub const COALESCE_KEY: &str = "x-coalesce-key";

/// The layers, kept for their statistics.
#[derive(Debug, Clone)]
pub struct Layers {
    /// Coalesces unary calls (POSTs) by method path + [`COALESCE_KEY`].
    pub coalesce: CoalesceLayer<KeyByPathAndMessage>,
    /// Retries `UNAVAILABLE` (gRPC calls are POSTs: `retry_grpc(true)` opts in).
    pub retry: RetryLayer,
    /// Opens after 5 consecutive failures; answers `UNAVAILABLE` with
    /// `grpc-retry-pushback-ms` while open.
    pub circuit: CircuitBreakerLayer<ResilienceClassifier, SingleBreaker, Respond>,
}

/// The coalescing key: the gRPC method path and the caller's [`COALESCE_KEY`] entry.
///
/// A gRPC unary call is a `POST` whose message is in the body, which no key reads: keying by
/// the path alone would hand one caller's reply to another caller who sent a different
/// message. The caller therefore puts a digest of its message in the metadata
/// ([`request`] does); calls without it are not coalesced.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyByPathAndMessage;

impl<B> stormwall::core::key::KeyExtractor<Request<B>> for KeyByPathAndMessage {
    type Key = (String, String);

    fn extract(&self, req: &Request<B>) -> Result<(String, String), KeyError> {
        let key = req
            .headers()
            .get(COALESCE_KEY)
            .and_then(|v| v.to_str().ok())
            .ok_or(KeyError::custom("no x-coalesce-key"))?;
        Ok((req.uri().path().to_owned(), key.to_owned()))
    }
}

impl Layers {
    /// The example's configuration.
    pub fn new() -> Result<Self, BoxError> {
        let coalesce = CoalesceLayer::named("grpc")
            .methods([Method::POST])
            .key(KeyByPathAndMessage);
        let retry = RetryLayer::new()
            .retry_grpc(true)
            .max_attempts(3)
            .backoff(Backoff::exponential(
                Duration::from_millis(10),
                Duration::from_millis(100),
            )?)
            .deadline(Duration::from_secs(5));
        let circuit = CircuitBreakerLayer::new(
            "echo",
            BreakerConfig::new()
                .window(Window::ConsecutiveFailures(5))
                .wait_duration(Duration::from_secs(30))
                .permitted_calls_in_half_open(1),
        )?
        .respond();
        Ok(Self {
            coalesce,
            retry,
            circuit,
        })
    }

    /// coalesce → retry → circuit breaker → `channel`, as a tonic client.
    pub fn client(&self, channel: Channel) -> EchoClient<Stack> {
        let svc = ServiceBuilder::new()
            .layer(self.coalesce.clone())
            .layer(self.retry.clone())
            .layer(self.circuit.clone())
            .map_request(to_tonic as ToTonic)
            .service(channel);
        EchoClient::new(svc)
    }
}

type ToTonic = fn(Request<RetryBody<TonicBody>>) -> Request<TonicBody>;

/// tonic's channel takes its own body type: box the retry body into it.
fn to_tonic(req: Request<RetryBody<TonicBody>>) -> Request<TonicBody> {
    req.map(TonicBody::new)
}

/// The client stack: coalesce → retry → circuit breaker → `Channel`.
pub type Stack = Coalesce<
    Retry<
        CircuitBreaker<MapRequest<Channel, ToTonic>, ResilienceClassifier, SingleBreaker, Respond>,
    >,
    KeyByPathAndMessage,
>;

/// An echo request with its [`COALESCE_KEY`] (a digest of the message).
pub fn request(message: &str) -> tonic::Request<EchoRequest> {
    let mut hasher = DefaultHasher::new();
    message.hash(&mut hasher);
    let mut req = tonic::Request::new(EchoRequest {
        message: message.to_owned(),
    });
    if let Ok(v) = format!("{:016x}", hasher.finish()).parse() {
        req.metadata_mut().insert(COALESCE_KEY, v);
    }
    req
}

/// The example's options: the shared [`Flags`] plus `--callers N` (default 20) and `--calls
/// N` (sequential calls in the retry and breaker phases, default 10).
#[derive(Debug, Clone)]
pub struct Options {
    /// `--json`.
    pub flags: Flags,
    /// Concurrent identical calls in the coalescing phase.
    pub callers: u32,
    /// Sequential calls in the retry and breaker phases.
    pub calls: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            flags: Flags::default(),
            callers: 20,
            calls: 10,
        }
    }
}

impl Options {
    /// Parses `std::env::args()`.
    pub fn from_env() -> Self {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses arguments; unknown ones go to [`Flags::parse`].
    pub fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut options = Self::default();
        let mut rest = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--callers" => {
                    options.callers = args.next().and_then(|n| n.parse().ok()).unwrap_or(20)
                }
                "--calls" => options.calls = args.next().and_then(|n| n.parse().ok()).unwrap_or(10),
                _ => rest.push(arg),
            }
        }
        options.flags = Flags::parse(rest);
        options
    }
}

/// What each phase saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// Phase 1: concurrent identical calls.
    pub coalesce_callers: u32,
    /// Phase 1: callers that got the echo.
    pub coalesce_ok: u32,
    /// Phase 1: calls that reached the server.
    pub coalesce_server_calls: u64,
    /// Phase 2: sequential calls against a server failing a share with `UNAVAILABLE`.
    pub retry_calls: u32,
    /// Phase 2: calls that succeeded.
    pub retry_ok: u32,
    /// Phase 2: `UNAVAILABLE` answers the server gave.
    pub retry_server_failures: u64,
    /// Phase 2: calls that reached the server.
    pub retry_server_calls: u64,
    /// Phase 2: retries made by the retry layer.
    pub retries: u64,
    /// Phase 3: sequential calls against a server failing every call.
    pub breaker_calls: u32,
    /// Phase 3: calls that reached the server.
    pub breaker_server_calls: u64,
    /// Phase 3: calls the open breaker answered (`UNAVAILABLE`, "circuit breaker open").
    pub breaker_rejected_calls: u32,
    /// Phase 3: the breaker's state at the end.
    pub breaker_state: String,
}

fn requests(server: &FaultHandle) -> u64 {
    server.stats().requests
}

/// Runs the three phases against a local gRPC echo server and prints what each saw.
pub async fn run(options: &Options) -> Result<Summary, BoxError> {
    let server = FaultServer::builder().grpc().seed(3).start().await;
    let handle = server.handle();
    let layers = Layers::new()?;
    let client = layers.client(handle.channel());
    let mut summary = Summary::default();

    // 1. Coalescing: N concurrent identical calls while each answer takes 200 ms.
    handle.latency(Duration::from_millis(200));
    let before = requests(&handle);
    let calls = (0..options.callers).map(|_| {
        let mut client = client.clone();
        async move { client.unary(request("hello")).await }
    });
    let results = join_all(calls).await;
    summary.coalesce_callers = options.callers;
    summary.coalesce_ok = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|r| r.get_ref().message == "hello"))
        .count() as u32;
    summary.coalesce_server_calls = requests(&handle) - before;

    // 2. Retries: 30% of calls fail with UNAVAILABLE; each is retried.
    handle.heal();
    handle.fail_grpc(0.3, tonic::Code::Unavailable);
    let before = handle.stats();
    let retries_before = layers.retry.stats().retries;
    for i in 0..options.calls {
        let mut client = client.clone();
        if client.unary(request(&format!("call {i}"))).await.is_ok() {
            summary.retry_ok += 1;
        }
    }
    let after = handle.stats();
    summary.retry_calls = options.calls;
    summary.retry_server_calls = after.requests - before.requests;
    summary.retry_server_failures = after.errors - before.errors;
    summary.retries = layers.retry.stats().retries - retries_before;

    // 3. The breaker: every call fails; after 5 consecutive failures it opens and answers
    // at once, without calling the server (and the retry layer stops: the breaker's pushback
    // ends after the retry deadline).
    handle.fail_grpc(1.0, tonic::Code::Unavailable);
    let before = requests(&handle);
    for i in 0..options.calls {
        let mut client = client.clone();
        if let Err(status) = client.unary(request(&format!("doomed {i}"))).await
            && status.message() == "circuit breaker open"
        {
            summary.breaker_rejected_calls += 1;
        }
    }
    summary.breaker_calls = options.calls;
    summary.breaker_server_calls = requests(&handle) - before;
    let state = layers.circuit.breaker().state();
    summary.breaker_state = format!("{state:?}");
    debug_assert!(matches!(
        state,
        State::Open | State::HalfOpen | State::Closed
    ));

    if options.flags.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "tonic client: coalesce -> retry -> circuit breaker -> Channel ({})",
            handle.url("")
        );
        println!(
            "1. coalescing: {} concurrent identical calls -> {} replies from {} server call(s)",
            summary.coalesce_callers, summary.coalesce_ok, summary.coalesce_server_calls
        );
        println!(
            "2. retries:    {} calls, 30% UNAVAILABLE -> {} succeeded; the server saw {} calls ({} UNAVAILABLE), {} retries",
            summary.retry_calls,
            summary.retry_ok,
            summary.retry_server_calls,
            summary.retry_server_failures,
            summary.retries
        );
        println!(
            "3. breaker:    {} calls, all UNAVAILABLE -> the server saw {} calls; {} answered by the open breaker; state {}",
            summary.breaker_calls,
            summary.breaker_server_calls,
            summary.breaker_rejected_calls,
            summary.breaker_state
        );
        println!("coalesce: {:?}", layers.coalesce.stats().snapshot());
        println!("retry:    {:?}", layers.retry.stats());
        println!("circuit:  {:?}", layers.circuit.stats().snapshot());
    }
    drop(server);
    Ok(summary)
}
