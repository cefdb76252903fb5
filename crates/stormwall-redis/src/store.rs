//! [`RedisStore`]: the [`Store`] on Redis, and its builder.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{RedisError, Script};
use stormwall_core::time::Instant;
use stormwall_ratelimit::store::{CheckMode, LimitCheck, LimitId, LimitKey, Store, StoreError};
use stormwall_ratelimit::{Decision, InMemoryStore, Quota};

use crate::keys::{KeyTag, algo_code};
use crate::policy::{Circuit, OnFailure, Pass, local_quota};

/// The Lua source of the decision script (one script for every algorithm, so a multi-limit
/// check that mixes algorithms is still one atomic call).
pub const CHECK_SCRIPT: &str = include_str!("check.lua");

/// Why a [`RedisStore`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error("could not set up the Redis rate-limit store: {0}")]
pub struct ConnectError(#[from] RedisError);

#[derive(Clone)]
enum Backend {
    Single(Arc<Single>),
    Cluster(ClusterConnection),
}

/// One Redis server: a connection manager that the store replaces with a fresh one when
/// calls time out. The manager reconnects by itself after an I/O error, but a connection
/// that swallows everything (a Redis host gone without a reset, a network partition, a
/// silently dropped NAT entry) never errors: without a replacement every call would time
/// out until the kernel gives up on the socket, many minutes later.
struct Single {
    client: redis::Client,
    config: ConnectionManagerConfig,
    conn: RwLock<ConnectionManager>,
}

impl Single {
    fn conn(&self) -> ConnectionManager {
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Backend {
    async fn invoke(self, inv: redis::ScriptInvocation<'_>) -> Result<Vec<i64>, RedisError> {
        match self {
            Self::Single(s) => inv.invoke_async(&mut s.conn()).await,
            Self::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
    }

    async fn del(self, keys: Vec<String>) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        match self {
            Self::Single(s) => cmd.query_async(&mut s.conn()).await,
            Self::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// Replaces the connection (one server only; the cluster connection manages its own).
    /// Calls in flight keep the old one until they end; then it closes. Returns whether a
    /// new connection was set up (it connects lazily, on the next call).
    fn renew(&self) -> bool {
        let Self::Single(s) = self else {
            return false;
        };
        match ConnectionManager::new_lazy_with_config(s.client.clone(), s.config.clone()) {
            Ok(fresh) => {
                *s.conn.write().unwrap_or_else(PoisonError::into_inner) = fresh;
                true
            }
            Err(_) => false,
        }
    }
}

/// Configures and connects a [`RedisStore`]. See the [crate docs](crate) for an example.
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    timeout: Duration,
    connect_timeout: Duration,
    on_failure: OnFailure,
    prefix: Arc<str>,
    tag: KeyTag,
    circuit: (u32, Duration, Duration),
    local: Option<InMemoryStore>,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(250),
            on_failure: OnFailure::Error,
            prefix: Arc::from("stormwall"),
            tag: KeyTag::Primary,
            circuit: (3, Duration::from_millis(100), Duration::from_secs(2)),
            local: None,
        }
    }
}

impl RedisStoreBuilder {
    /// The longest a decision waits for Redis (default 50 ms); beyond it the failure policy
    /// answers. Zero is raised to 1 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The longest one (re)connection attempt takes (default 250 ms). Requests never wait for
    /// it longer than [`timeout`](Self::timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// What to answer when Redis fails (default [`OnFailure::Error`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// The key prefix (default `stormwall`).
    pub fn prefix(mut self, prefix: impl Into<Arc<str>>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How keys are grouped into cluster slots (default [`KeyTag::Primary`]).
    pub fn key_tag(mut self, tag: KeyTag) -> Self {
        self.tag = tag;
        self
    }

    /// The short circuit: after `threshold` consecutive failures, skip Redis (use the failure
    /// policy at once) for `min_backoff`, doubling up to `max_backoff` while probes keep
    /// failing. Default 3 failures, 100 ms to 2 s. A threshold of 0 disables it.
    pub fn circuit(mut self, threshold: u32, min_backoff: Duration, max_backoff: Duration) -> Self {
        self.circuit = (threshold, min_backoff, max_backoff.max(min_backoff));
        self
    }

    /// The in-memory store used by [`OnFailure::Local`] (default: a new
    /// [`InMemoryStore`] with its default bounds).
    pub fn local_store(mut self, store: InMemoryStore) -> Self {
        self.local = Some(store);
        self
    }

    /// A store on one Redis server (or Valkey), e.g. `redis://127.0.0.1:6379/`. Connects
    /// lazily: the store is returned even if Redis is down (decisions then follow the failure
    /// policy until it is up), and reconnects by itself. Call it within a Tokio runtime (the
    /// connection runs a small task on it).
    pub fn connect(self, url: &str) -> Result<RedisStore, ConnectError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let cm = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(self.build(Backend::Single(Arc::new(Single {
            client,
            config,
            conn: RwLock::new(cm),
        }))))
    }

    /// A store on a Redis Cluster, given one or more of its nodes. Connects to the cluster
    /// now (it must be up); then follows topology changes and reconnects by itself.
    pub async fn connect_cluster<T: AsRef<str>>(
        self,
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<RedisStore, ConnectError> {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let client = ClusterClient::builder(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.timeout.max(Duration::from_millis(500)))
            .retries(1)
            .build()?;
        let conn = client.get_async_connection().await?;
        Ok(self.build(Backend::Cluster(conn)))
    }

    fn build(self, backend: Backend) -> RedisStore {
        let local = match self.on_failure {
            OnFailure::Local { .. } => Some(self.local.unwrap_or_default()),
            _ => None,
        };
        RedisStore {
            inner: Arc::new(Inner {
                backend,
                script: Script::new(CHECK_SCRIPT),
                timeout: self.timeout,
                on_failure: self.on_failure,
                prefix: self.prefix,
                tag: self.tag,
                circuit: Circuit::new(self.circuit.0, self.circuit.1, self.circuit.2),
                local,
                epoch: Instant::now(),
                counters: Counters::default(),
            }),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    redis: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    fallbacks: AtomicU64,
    short_circuits: AtomicU64,
    reconnects: AtomicU64,
}

/// A snapshot of a [`RedisStore`]'s counters ([`RedisStore::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisStats {
    /// Decisions Redis made.
    pub redis_decisions: u64,
    /// Redis calls that failed with an error (connection refused or lost, server error).
    pub errors: u64,
    /// Redis calls that did not answer within the timeout.
    pub timeouts: u64,
    /// Decisions answered by the failure policy (after an error, a timeout or a skip).
    pub fallbacks: u64,
    /// Decisions that skipped Redis because the short circuit was open.
    pub short_circuits: u64,
    /// Connections replaced because calls timed out (one server only: each time the short
    /// circuit opens, or a probe fails, on a timeout).
    pub reconnects: u64,
    /// Whether the short circuit is open now.
    pub circuit_open: bool,
}

struct Inner {
    backend: Backend,
    script: Script,
    timeout: Duration,
    on_failure: OnFailure,
    prefix: Arc<str>,
    tag: KeyTag,
    circuit: Circuit,
    local: Option<InMemoryStore>,
    epoch: Instant,
    counters: Counters,
}

/// Rate-limit state on Redis (one server, Valkey, or a Redis Cluster): a [`Store`] for the
/// [`RateLimitLayer`](stormwall_ratelimit::RateLimitLayer) and the
/// [`Limiter`](stormwall_ratelimit::Limiter).
///
/// Every decision is **one** `EVALSHA` of [`CHECK_SCRIPT`] (the script is loaded again by
/// itself after a `SCRIPT FLUSH` or a restart), atomic on the server, all or nothing over the
/// limits of the check, with time read from Redis `TIME`. See the [crate docs](crate) for the
/// key layout, the failure policy and an example.
///
/// Cloning is cheap and shares the connection and the counters.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &*self.inner;
        f.debug_struct("RedisStore")
            .field(
                "backend",
                &match i.backend {
                    Backend::Single(_) => "single",
                    Backend::Cluster(_) => "cluster",
                },
            )
            .field("timeout", &i.timeout)
            .field("on_failure", &i.on_failure)
            .field("prefix", &i.prefix)
            .field("tag", &i.tag)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder with the defaults: 50 ms timeout, [`OnFailure::Error`], prefix `stormwall`,
    /// [`KeyTag::Primary`], short circuit after 3 failures (100 ms to 2 s).
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// A store on one Redis server with the defaults (see [`RedisStoreBuilder::connect`];
    /// call it within a Tokio runtime).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormwall_redis::ConnectError> {
    /// // Connects lazily: this works even if no Redis listens there yet.
    /// let store = stormwall_redis::RedisStore::open("redis://127.0.0.1:1/")?;
    /// assert_eq!(store.stats().redis_decisions, 0);
    /// # Ok(()) }
    /// ```
    pub fn open(url: &str) -> Result<Self, ConnectError> {
        Self::builder().connect(url)
    }

    /// The SHA-1 of [`CHECK_SCRIPT`] (what `EVALSHA` names).
    pub fn script_sha(&self) -> &str {
        self.inner.script.get_hash()
    }

    /// The in-memory store of [`OnFailure::Local`], if that is the policy.
    pub fn local_store(&self) -> Option<&InMemoryStore> {
        self.inner.local.as_ref()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RedisStats {
        let c = &self.inner.counters;
        RedisStats {
            redis_decisions: c.redis.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            short_circuits: c.short_circuits.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            circuit_open: self.inner.circuit.is_open(),
        }
    }

    /// The Redis keys a check uses (see [`KeyTag::key_names`]).
    pub fn key_names(&self, checks: &[LimitCheck<'_>]) -> Vec<String> {
        self.inner.tag.key_names(&self.inner.prefix, checks)
    }
}

/// An owned copy of a [`LimitCheck`], for the fallback after the call returned.
#[derive(Debug, Clone)]
struct Owned {
    limit: LimitId,
    key: LimitKey,
    quota: Quota,
    algorithm: stormwall_ratelimit::Algorithm,
    cost: u64,
}

fn micros_up(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

fn us(v: i64) -> Duration {
    if v < 0 {
        Duration::MAX
    } else {
        Duration::from_micros(v.unsigned_abs())
    }
}

fn unlimited() -> Decision {
    Decision {
        allowed: true,
        limit: u64::MAX,
        period: Duration::ZERO,
        remaining: u64::MAX,
        reset: Duration::ZERO,
        retry_after: Duration::ZERO,
        delay: Duration::ZERO,
        index: 0,
    }
}

impl Inner {
    fn nanos(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn decisions(&self, checks: &[Owned], values: &[i64]) -> Result<Decision, StoreError> {
        if values.len() != checks.len() * 5 {
            return Err(StoreError::Unavailable(format!(
                "unexpected script reply: {} values for {} limits",
                values.len(),
                checks.len()
            )));
        }
        let all = checks.iter().zip(values.chunks_exact(5)).map(|(c, v)| {
            let allowed = v[0] == 1;
            Decision {
                allowed,
                limit: c.quota.limit(),
                period: c.quota.period(),
                remaining: v[1].max(0).unsigned_abs(),
                reset: us(v[2].max(0)),
                retry_after: if allowed { Duration::ZERO } else { us(v[3]) },
                delay: us(v[4].max(0)),
                index: 0,
            }
        });
        Ok(stormwall_ratelimit::store::combine(all).unwrap_or_else(unlimited))
    }

    /// The failure policy's answer.
    fn fallback(
        &self,
        now: Instant,
        checks: &[Owned],
        mode: CheckMode,
        err: StoreError,
    ) -> Result<Decision, StoreError> {
        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("stormwall_redis_fallbacks_total", "policy" => self.on_failure.label())
            .increment(1);
        match self.on_failure {
            OnFailure::Error => Err(err),
            OnFailure::Open => Ok(unlimited()),
            OnFailure::Closed => {
                let (limit, period) = checks
                    .first()
                    .map_or((0, Duration::ZERO), |c| (c.quota.limit(), c.quota.period()));
                Ok(Decision {
                    allowed: false,
                    limit,
                    period,
                    remaining: 0,
                    reset: Duration::from_secs(1),
                    retry_after: Duration::from_secs(1),
                    delay: Duration::ZERO,
                    index: 0,
                })
            }
            OnFailure::Local { instances } => {
                let Some(local) = &self.local else {
                    return Err(err);
                };
                let local_checks: Vec<LimitCheck<'_>> = checks
                    .iter()
                    .map(|c| LimitCheck {
                        limit: &c.limit,
                        key: &c.key,
                        quota: local_quota(c.quota, instances),
                        algorithm: c.algorithm,
                        cost: c.cost,
                    })
                    .collect();
                local.check_now(now, &local_checks, mode).map(|mut d| {
                    // Report the shared quota, not the local share.
                    if let Some(c) = checks.get(d.index) {
                        d.limit = c.quota.limit();
                        d.period = c.quota.period();
                    }
                    d
                })
            }
        }
    }

    fn failed(&self, now: Instant, probe: bool, err: &StoreError) {
        match err {
            StoreError::Timeout => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stormwall_redis_errors_total", "kind" => "timeout").increment(1);
            }
            _ => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stormwall_redis_errors_total", "kind" => "error").increment(1);
            }
        }
        if self
            .circuit
            .failure(self.nanos(Instant::now().max(now)), probe)
        {
            metrics::gauge!("stormwall_redis_circuit_open").set(1.0);
            tracing::warn!(error = %err, "stormwall redis: Redis failing, short circuit open");
            // Timeouts in a row: the connection may be a black hole that never errors. The
            // next call (the probe) goes out on a fresh one.
            if matches!(err, StoreError::Timeout) && self.backend.renew() {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stormwall_redis_reconnects_total").increment(1);
            }
        } else {
            tracing::debug!(error = %err, "stormwall redis: Redis call failed");
        }
    }

    async fn call(
        self: Arc<Self>,
        now: Instant,
        checks: Vec<Owned>,
        mode: CheckMode,
        probe: bool,
    ) -> Result<Decision, StoreError> {
        // If this probe's request is dropped before Redis answers, let another one probe.
        let mut guard = ProbeGuard {
            inner: probe.then(|| self.clone()),
        };
        let refs: Vec<LimitCheck<'_>> = checks
            .iter()
            .map(|c| LimitCheck {
                limit: &c.limit,
                key: &c.key,
                quota: c.quota,
                algorithm: c.algorithm,
                cost: c.cost,
            })
            .collect();
        let names = self.tag.key_names(&self.prefix, &refs);
        let mut inv = self.script.prepare_invoke();
        inv.arg(if mode == CheckMode::Acquire { "1" } else { "0" })
            .arg(checks.len());
        let mut next_key = 1usize;
        for (c, name) in checks.iter().zip(&names) {
            let log = c.algorithm == stormwall_ratelimit::Algorithm::SlidingLog;
            inv.key(name.as_str());
            if log {
                inv.key(format!("{name}s"));
            }
            inv.arg(algo_code(c.algorithm))
                .arg(next_key)
                .arg(c.quota.limit())
                .arg(micros_up(c.quota.period()))
                .arg(micros_up(c.quota.emission_interval()))
                .arg(c.quota.burst())
                .arg(c.cost);
            next_key += if log { 2 } else { 1 };
        }
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, self.backend.clone().invoke(inv)).await;
        guard.inner = None;
        let err = match result {
            Ok(Ok(values)) => {
                metrics::histogram!("stormwall_redis_latency_seconds")
                    .record(started.elapsed().as_secs_f64());
                match self.decisions(&checks, &values) {
                    Ok(d) => {
                        self.counters.redis.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("stormwall_redis_decisions_total").increment(1);
                        if self.circuit.success() {
                            metrics::gauge!("stormwall_redis_circuit_open").set(0.0);
                            tracing::info!(
                                "stormwall redis: Redis answers again, short circuit closed"
                            );
                        }
                        return Ok(d);
                    }
                    Err(e) => e,
                }
            }
            Ok(Err(e)) => StoreError::Unavailable(e.to_string()),
            Err(_) => StoreError::Timeout,
        };
        self.failed(now, probe, &err);
        self.fallback(now, &checks, mode, err)
    }
}

struct ProbeGuard {
    inner: Option<Arc<Inner>>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.circuit.abandon_probe();
        }
    }
}

/// The future of [`RedisStore`]'s [`Store::check`]: ready at once when Redis is skipped (no
/// limits, open short circuit), else one script call bounded by the timeout.
pub struct CheckFuture {
    state: State,
}

enum State {
    Ready(Option<Result<Decision, StoreError>>),
    // The redis client boxes every command future itself; one more box per call keeps this
    // type nameable without leaking the client's types.
    Call(Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send>>),
}

impl fmt::Debug for CheckFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckFuture")
            .field(
                "state",
                &match self.state {
                    State::Ready(_) => "ready",
                    State::Call(_) => "calling redis",
                },
            )
            .finish()
    }
}

impl Future for CheckFuture {
    type Output = Result<Decision, StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Ready(r) => {
                Poll::Ready(r.take().unwrap_or_else(|| {
                    Err(StoreError::Unavailable("polled after completion".into()))
                }))
            }
            State::Call(f) => f.as_mut().poll(cx),
        }
    }
}

/// The future of [`RedisStore`]'s [`Store::reset`].
pub struct ResetFuture {
    inner: Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>,
}

impl fmt::Debug for ResetFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResetFuture").finish_non_exhaustive()
    }
}

impl Future for ResetFuture {
    type Output = Result<(), StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl Store for RedisStore {
    type CheckFuture = CheckFuture;
    type ResetFuture = ResetFuture;

    fn check(&self, now: Instant, checks: &[LimitCheck<'_>], mode: CheckMode) -> CheckFuture {
        if checks.is_empty() {
            return CheckFuture {
                state: State::Ready(Some(Ok(unlimited()))),
            };
        }
        let owned: Vec<Owned> = checks
            .iter()
            .map(|c| Owned {
                limit: c.limit.clone(),
                key: c.key.clone(),
                quota: c.quota,
                algorithm: c.algorithm,
                cost: c.cost,
            })
            .collect();
        let inner = &self.inner;
        let pass = inner.circuit.pass(inner.nanos(Instant::now().max(now)));
        if pass == Pass::Skip {
            inner
                .counters
                .short_circuits
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormwall_redis_short_circuits_total").increment(1);
            let r = inner.fallback(
                now,
                &owned,
                mode,
                StoreError::Unavailable("Redis is failing (short circuit open)".into()),
            );
            return CheckFuture {
                state: State::Ready(Some(r)),
            };
        }
        CheckFuture {
            state: State::Call(Box::pin(self.inner.clone().call(
                now,
                owned,
                mode,
                pass == Pass::Probe,
            ))),
        }
    }

    /// Deletes the key's state for every algorithm, under the tag a check of `limit` alone
    /// (or as the first limit) uses. State kept under another limit's tag (a non-first limit
    /// of a multi-limit check, see [`KeyTag::Primary`]) is not found; it expires by itself.
    fn reset(&self, limit: &LimitId, key: &LimitKey) -> ResetFuture {
        let names = self.inner.tag.reset_names(&self.inner.prefix, limit, key);
        let backend = self.inner.backend.clone();
        let timeout = self.inner.timeout;
        ResetFuture {
            inner: Box::pin(async move {
                match tokio::time::timeout(timeout, backend.del(names)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
                    Err(_) => Err(StoreError::Timeout),
                }
            }),
        }
    }
}
