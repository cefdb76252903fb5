//! [`RedisTier`]: a shared second tier on Redis behind the in-memory store (feature `redis`).

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{RedisError, Value};
use bytes::Bytes;
use http::header::{ETAG, LAST_MODIFIED};
use http::{Request, Response};
use http_body::Body;
use parking_lot::Mutex;
use stormwall_core::response::ResponseBody;
use stormwall_core::time::Instant;
use tokio::sync::Notify;
use tower_service::Service;

use crate::codec;
use crate::layer::Shared;
use crate::policy::{self, Use};
use crate::service::{Ctx, serve, spawn_refresh};
use crate::status::{Fwd, Status};
use crate::store::{Entry, Variants};

/// Why a [`RedisTier`] could not be set up (an invalid URL).
#[derive(Debug)]
pub struct RedisTierError(RedisError);

impl fmt::Display for RedisTierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not set up the Redis cache tier: {}", self.0)
    }
}

impl std::error::Error for RedisTierError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Configures and connects a [`RedisTier`].
///
/// ```
/// use std::time::Duration;
/// use stormwall_cache::RedisTier;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormwall_cache::RedisTierError> {
/// let tier = RedisTier::builder()
///     .prefix("shop-cache")
///     .timeout(Duration::from_millis(20))
///     .max_value_bytes(512 * 1024)
///     .keep_stale(Duration::from_secs(60))
///     .connect("redis://127.0.0.1:6379/")?; // lazy: Redis may be down now
/// assert_eq!(tier.stats().hits, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTierBuilder {
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    keep_stale: Duration,
    circuit: (u32, Duration, Duration),
    clock: Clock,
    broadcast: bool,
}

impl fmt::Debug for RedisTierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTierBuilder")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("keep_stale", &self.keep_stale)
            .finish_non_exhaustive()
    }
}

impl Default for RedisTierBuilder {
    fn default() -> Self {
        Self {
            prefix: "stormwall-cache".to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(250),
            max_value_bytes: 1024 * 1024 + 64 * 1024,
            keep_stale: Duration::ZERO,
            circuit: (3, Duration::from_millis(100), Duration::from_secs(2)),
            clock: Arc::new(SystemTime::now),
            broadcast: true,
        }
    }
}

impl RedisTierBuilder {
    /// The key prefix (default `stormwall-cache`). Keys are
    /// `<prefix>:shared:<primary key>` (or `:private:`), e.g.
    /// `stormwall-cache:shared:GET https://example.com/a?b=1`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The longest one Redis call may take (default 50 ms; zero is raised to 1 ms). A lookup
    /// that takes longer is a miss (the request goes to the origin); a write or delete that
    /// takes longer is abandoned. Either way it counts in [`RedisTierStats::timeouts`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The longest one (re)connection attempt takes (default 250 ms). Requests never wait
    /// for it longer than [`timeout`](Self::timeout).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The largest encoded value written to Redis (all the variants of one URL: headers,
    /// bodies and timestamps; default 1 MiB + 64 KiB, to fit one default-sized entry). Larger
    /// ones stay in the local tier only and count in [`RedisTierStats::too_large`].
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// How long an entry stays in Redis after its useful life (freshness plus its
    /// `stale-while-revalidate` / `stale-if-error` grace) when it has a validator (`ETag` or
    /// `Last-Modified`), so that another instance can revalidate it with a conditional request
    /// instead of fetching it in full (default 0: gone when no longer usable).
    pub fn keep_stale(mut self, keep: Duration) -> Self {
        self.keep_stale = keep;
        self
    }

    /// The short circuit: after `threshold` consecutive failed calls, skip Redis (lookups are
    /// misses, writes are dropped) for `min_backoff`, doubling up to `max_backoff` while the
    /// calls after each pause keep failing. Default 3 failures, 100 ms to 2 s; a threshold of
    /// 0 disables it.
    pub fn circuit(mut self, threshold: u32, min_backoff: Duration, max_backoff: Duration) -> Self {
        self.circuit = (threshold, min_backoff, max_backoff.max(min_backoff));
        self
    }

    /// The wall clock used to timestamp values and to age them when read (default
    /// [`SystemTime::now`]). Ages cross processes as "age at a wall-clock time", so instances
    /// sharing a Redis need synchronized clocks (NTP); a reader whose clock is behind the
    /// writer's counts no negative time. Tests and simulations can inject their own clock.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// let frozen = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let builder = stormwall_cache::RedisTier::builder().clock(move || frozen);
    /// # let _ = builder;
    /// ```
    pub fn clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Whether purges and invalidations are broadcast to the other instances (default on):
    /// each one publishes them on the channel `<prefix>:purge`, and every tier subscribed to
    /// it removes the same keys from the local tiers of its layers, so that a purge on one
    /// instance reaches every instance's memory, not only Redis. Messages sent while an
    /// instance is disconnected from Redis are lost to it (Redis pub/sub keeps nothing):
    /// its local copies then live until their freshness ends.
    pub fn broadcast(mut self, yes: bool) -> Self {
        self.broadcast = yes;
        self
    }

    /// A tier on one Redis server (or Valkey), e.g. `redis://127.0.0.1:6379/`. Connects
    /// lazily: the tier is returned even if Redis is down (lookups are then misses) and
    /// reconnects by itself. Call it within a Tokio runtime.
    pub fn connect(self, url: &str) -> Result<RedisTier, RedisTierError> {
        let client = ::redis::Client::open(url).map_err(RedisTierError)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(RedisTierError)?;
        let inner = Arc::new(Inner {
            conn,
            prefix: self.prefix,
            timeout: self.timeout,
            max_value_bytes: self.max_value_bytes,
            keep_stale: self.keep_stale,
            clock: self.clock,
            circuit: Circuit {
                threshold: self.circuit.0,
                min: self.circuit.1,
                max: self.circuit.2,
                failures: AtomicU32::new(0),
                open: Mutex::new(None),
            },
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            counters: Counters::default(),
            broadcast: self.broadcast,
            locals: Mutex::new(Vec::new()),
            listener: Mutex::new(None),
        });
        if self.broadcast
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let task = handle.spawn(listen(client, Arc::downgrade(&inner), self.connect_timeout));
            *inner.listener.lock() = Some(task.abort_handle());
        }
        Ok(RedisTier { inner })
    }
}

/// The broadcast listener: (re)subscribes to `<prefix>:purge` and applies what arrives to
/// the local tiers, until the tier is dropped (its `Drop` aborts this task).
async fn listen(client: ::redis::Client, tier: Weak<Inner>, connect_timeout: Duration) {
    use futures_core::Stream;
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(channel) = tier.upgrade().map(|t| t.channel()) else {
            return;
        };
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, RedisError>(pubsub.into_on_message())
        };
        if let Ok(Ok(mut stream)) = tokio::time::timeout(connect_timeout, subscribed).await {
            backoff = Duration::from_millis(50);
            while let Some(msg) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await
            {
                let Some(t) = tier.upgrade() else {
                    return;
                };
                t.apply(msg.get_payload_bytes());
            }
        }
        // Disconnected (or Redis down): try again shortly.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// The short circuit over Redis calls.
struct Circuit {
    threshold: u32,
    min: Duration,
    max: Duration,
    failures: AtomicU32,
    /// While open: until when, and the current backoff.
    open: Mutex<Option<(Instant, Duration)>>,
}

impl Circuit {
    fn skip(&self) -> bool {
        matches!(*self.open.lock(), Some((until, _)) if Instant::now() < until)
    }

    fn success(&self) {
        // The circuit only opens after `threshold` failures: no lock on the common path.
        let failures = self.failures.swap(0, Ordering::Relaxed);
        if self.threshold > 0 && failures >= self.threshold && self.open.lock().take().is_some() {
            tracing::info!("stormwall cache: Redis tier answers again");
        }
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if self.threshold == 0 || n < self.threshold {
            return;
        }
        let mut open = self.open.lock();
        let backoff = match *open {
            Some((_, b)) => (b * 2).min(self.max),
            None => {
                tracing::warn!("stormwall cache: Redis tier failing, skipping it for a while");
                self.min
            }
        };
        *open = Some((Instant::now() + backoff, backoff));
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    deletes: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    corrupt: AtomicU64,
    too_large: AtomicU64,
    skipped: AtomicU64,
    purges_received: AtomicU64,
}

/// A snapshot of a [`RedisTier`]'s counters ([`RedisTier::stats`]).
///
/// [`CacheStats`](crate::CacheStats) counts the local tier: a request answered from Redis
/// is a local miss there and a hit here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RedisTierStats {
    /// Local misses answered from Redis without the origin.
    pub hits: u64,
    /// Lookups in Redis that did not answer the request (nothing stored, no matching
    /// variant, or a stored response that needed validation).
    pub misses: u64,
    /// Values written (`SET … PX`).
    pub writes: u64,
    /// Keys deleted by invalidations and purges (as reported by Redis).
    pub deletes: u64,
    /// Calls that failed (connection refused or lost, server error).
    pub errors: u64,
    /// Calls that did not answer within the timeout.
    pub timeouts: u64,
    /// Values that could not be decoded (garbage, another encoding version): misses.
    pub corrupt: u64,
    /// Values not written because they exceeded [`max_value_bytes`](RedisTierBuilder::max_value_bytes).
    pub too_large: u64,
    /// Calls skipped because the short circuit was open (or too many writes were pending).
    pub skipped: u64,
    /// Purges and invalidations received from the broadcast channel and applied to the
    /// local tiers (including this instance's own).
    pub purges_received: u64,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
    max_value_bytes: usize,
    keep_stale: Duration,
    clock: Clock,
    circuit: Circuit,
    pending: AtomicUsize,
    idle: Notify,
    counters: Counters,
    broadcast: bool,
    /// The layers using this tier (for broadcast purges).
    locals: Mutex<Vec<Weak<Shared>>>,
    listener: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().take() {
            task.abort();
        }
    }
}

/// Most background writes and deletes in flight; beyond it they are dropped (counted in
/// [`RedisTierStats::skipped`]).
const MAX_PENDING: usize = 1024;

/// A shared second tier on Redis: instances of a service that use the same Redis share
/// what each of them cached (feature `redis`). Add it with
/// [`CacheLayer::redis`](crate::CacheLayer::redis).
///
/// Each instance keeps its in-memory store as the first tier, so hits stay in-process. On a
/// local miss, the request looks in Redis (one `GET`, bounded by the
/// [timeout](RedisTierBuilder::timeout)) before going to the origin; a usable stored
/// response is served (with an `Age` computed from wall-clock timestamps) and copied into
/// the local tier. Whatever the layer stores is written through to Redis in the background
/// (`SET … PX`, the entry's remaining useful life). Purges and unsafe-method invalidations
/// delete in Redis too, and are broadcast to the other instances' local tiers
/// ([`broadcast`](RedisTierBuilder::broadcast)). See the [crate docs](crate#redis-tier) for
/// the semantics.
///
/// Every failure degrades to "miss": a request never fails or waits longer than the timeout
/// because of Redis.
///
/// Cloning is cheap and shares the connection and the counters.
///
/// ```no_run
/// use stormwall_cache::{CacheLayer, RedisTier};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stormwall_cache::RedisTierError> {
/// let tier = RedisTier::open("redis://127.0.0.1:6379/")?;
/// let layer = CacheLayer::shared().name("edge").redis(tier.clone());
/// # let _ = layer;
/// // Later: how the shared tier is doing.
/// let stats = tier.stats();
/// println!("redis hits {} errors {}", stats.hits, stats.errors + stats.timeouts);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisTier {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

enum Outcome<T> {
    Ok(T),
    Failed,
}

impl RedisTier {
    /// A builder with the defaults (prefix `stormwall-cache`, 50 ms timeout).
    pub fn builder() -> RedisTierBuilder {
        RedisTierBuilder::default()
    }

    /// A tier on one Redis server with the defaults (see [`RedisTierBuilder::connect`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormwall_cache::RedisTierError> {
    /// // Connects lazily: this works even if no Redis listens there yet.
    /// let tier = stormwall_cache::RedisTier::open("redis://127.0.0.1:1/")?;
    /// assert_eq!(tier.stats().writes, 0);
    /// # Ok(()) }
    /// ```
    pub fn open(url: &str) -> Result<Self, RedisTierError> {
        Self::builder().connect(url)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RedisTierStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisTierStats {
            hits: get(&c.hits),
            misses: get(&c.misses),
            writes: get(&c.writes),
            deletes: get(&c.deletes),
            errors: get(&c.errors),
            timeouts: get(&c.timeouts),
            corrupt: get(&c.corrupt),
            too_large: get(&c.too_large),
            skipped: get(&c.skipped),
            purges_received: get(&c.purges_received),
        }
    }

    /// The Redis key holding the variants of `url` as a cache in `shared` mode stores them
    /// (`None` for a URL that is not absolute).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stormwall_cache::RedisTierError> {
    /// let tier = stormwall_cache::RedisTier::open("redis://127.0.0.1:1/")?;
    /// assert_eq!(
    ///     tier.key_for("HTTP://Example.com:80/a?b", true).as_deref(),
    ///     Some("stormwall-cache:shared:GET http://example.com/a?b")
    /// );
    /// # Ok(()) }
    /// ```
    pub fn key_for(&self, url: &str, shared: bool) -> Option<String> {
        let key = policy::url_key(&http::Method::GET, url)?;
        Some(self.inner.redis_key(shared, &key))
    }

    /// Waits until the background writes and deletes started so far are done (or abandoned
    /// at their timeout). Useful before shutting down, and in tests.
    pub async fn flush(&self) {
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inner.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

fn mode(shared: bool) -> &'static str {
    if shared { "shared" } else { "private" }
}

/// Escapes the glob characters of `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One broadcast purge: `k <mode> <key>`, `p <mode> <prefix>` or `a <mode> `.
fn purge_message(kind: char, shared: bool, arg: &str) -> String {
    format!("{kind} {} {arg}", mode(shared))
}

impl Inner {
    fn channel(&self) -> String {
        format!("{}:purge", self.prefix)
    }

    /// Applies a broadcast purge to the local tiers of this mode (never back to Redis).
    fn apply(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let mut parts = text.splitn(3, ' ');
        let (Some(kind), Some(m)) = (parts.next(), parts.next()) else {
            return;
        };
        let arg = parts.next().unwrap_or("");
        let locals: Vec<Arc<Shared>> = {
            let mut locals = self.locals.lock();
            locals.retain(|w| w.strong_count() > 0);
            locals.iter().filter_map(Weak::upgrade).collect()
        };
        let mut applied = false;
        for shared in locals.iter().filter(|s| mode(s.rules.shared) == m) {
            match kind {
                "k" => {
                    shared.store.remove(arg);
                }
                "p" => {
                    shared.store.remove_matching(&|k: &str| k.starts_with(arg));
                }
                "a" => shared.store.clear(),
                _ => continue,
            }
            applied = true;
        }
        if applied {
            self.counters
                .purges_received
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormwall_cache_redis_purges_received_total").increment(1);
            tracing::debug!(message = text, "stormwall cache: broadcast purge applied");
        }
    }

    /// Publishes a purge to the other instances (part of the caller's background work).
    async fn publish(&self, message: String) {
        if !self.broadcast {
            return;
        }
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(self.channel()).arg(message);
        let _ = self.call::<u64>(cmd).await;
    }

    fn redis_key(&self, shared: bool, key: &str) -> String {
        format!("{}:{}:{key}", self.prefix, mode(shared))
    }

    /// One Redis command, bounded by the timeout and the short circuit; failures counted.
    async fn call<T: ::redis::FromRedisValue>(&self, cmd: ::redis::Cmd) -> Outcome<T> {
        if self.circuit.skip() {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormwall_cache_redis_skipped_total").increment(1);
            return Outcome::Failed;
        }
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.circuit.success();
                Outcome::Ok(v)
            }
            Ok(Err(e)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stormwall_cache_redis_errors_total", "kind" => "error")
                    .increment(1);
                tracing::debug!(error = %e, "stormwall cache: Redis call failed");
                self.circuit.failure();
                Outcome::Failed
            }
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stormwall_cache_redis_errors_total", "kind" => "timeout")
                    .increment(1);
                tracing::debug!("stormwall cache: Redis call timed out");
                self.circuit.failure();
                Outcome::Failed
            }
        }
    }

    /// Runs `work` in the background, counted in `pending` (for [`RedisTier::flush`]).
    fn spawn<F>(self: &Arc<Self>, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            self.done();
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormwall_cache_redis_skipped_total").increment(1);
            return;
        }
        let me = self.clone();
        handle.spawn(async move {
            work.await;
            me.done();
        });
    }

    fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    async fn delete(&self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(keys);
        if let Outcome::Ok(n) = self.call::<u64>(cmd).await {
            self.counters.deletes.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("stormwall_cache_redis_deletes_total").increment(n);
        }
    }

    /// Deletes every key matching `pattern` (SCAN + DEL, batch by batch).
    async fn delete_matching(&self, pattern: String) {
        let mut cursor: u64 = 0;
        // Bounded: at most this many SCAN rounds per purge (each bounded by the timeout).
        for _ in 0..100_000 {
            let mut cmd = ::redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let Outcome::Ok((next, keys)) = self.call::<(u64, Vec<String>)>(cmd).await else {
                return;
            };
            self.delete(keys).await;
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

impl Shared {
    /// Redis tier: writes `variants` of `key` through, in the background.
    pub(crate) fn tier_write(&self, key: &str, variants: &Variants) {
        let Some(tier) = &self.redis else {
            return;
        };
        let inner = &tier.inner;
        let now = Instant::now();
        let ttl = variants
            .iter()
            .map(|e| useful_life(self, inner.keep_stale, e, now))
            .max()
            .unwrap_or_default();
        let px = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if px == 0 {
            return;
        }
        let shared = self.rules.shared;
        let redis_key = inner.redis_key(shared, key);
        let variants = variants.clone();
        let me = inner.clone();
        inner.spawn(async move {
            let Some(value) = codec::encode(&variants, shared, Instant::now(), (me.clock)()) else {
                return;
            };
            if value.len() > me.max_value_bytes {
                me.counters.too_large.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(key = %redis_key, bytes = value.len(), "too large for the Redis tier");
                return;
            }
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(&redis_key).arg(value).arg("PX").arg(px);
            if let Outcome::Ok(()) = me.call::<()>(cmd).await {
                me.counters.writes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("stormwall_cache_redis_writes_total").increment(1);
            }
        });
    }

    /// Redis tier: registers this layer's state for broadcast purges.
    pub(crate) fn tier_register(self: &Arc<Self>) {
        if let Some(tier) = &self.redis {
            tier.inner.locals.lock().push(Arc::downgrade(self));
        }
    }

    /// Redis tier: deletes `key` in the background, and tells the other instances.
    pub(crate) fn tier_remove(&self, key: &str) {
        if let Some(tier) = &self.redis {
            let redis_key = tier.inner.redis_key(self.rules.shared, key);
            let message = purge_message('k', self.rules.shared, key);
            let me = tier.inner.clone();
            tier.inner.spawn(async move {
                me.delete(vec![redis_key]).await;
                me.publish(message).await;
            });
        }
    }

    /// Redis tier: deletes every key starting with `key_prefix` (`None`: every key of this
    /// cache's mode) in the background.
    pub(crate) fn tier_remove_prefix(&self, key_prefix: Option<&str>) {
        if let Some(tier) = &self.redis {
            let base = tier
                .inner
                .redis_key(self.rules.shared, key_prefix.unwrap_or(""));
            let pattern = format!("{}*", glob_escape(&base));
            let message = match key_prefix {
                Some(p) => purge_message('p', self.rules.shared, p),
                None => purge_message('a', self.rules.shared, ""),
            };
            let me = tier.inner.clone();
            tier.inner.spawn(async move {
                me.delete_matching(pattern).await;
                me.publish(message).await;
            });
        }
    }
}

/// How long `entry` stays useful from `now`: its remaining freshness plus its stale grace
/// (`stale-while-revalidate`, `stale-if-error`, or the layer's defaults), plus `keep_stale`
/// when it can be revalidated.
fn useful_life(shared: &Shared, keep_stale: Duration, entry: &Entry, now: Instant) -> Duration {
    let rules = &shared.rules;
    let d = &entry.directives;
    let grace = if d.forbids_stale(rules.shared) {
        Duration::ZERO
    } else {
        let swr = d.stale_while_revalidate.unwrap_or(rules.default_swr);
        let sie = d.stale_if_error.unwrap_or(rules.default_sie);
        swr.max(sie)
    };
    let headers = entry.response.headers();
    let validators = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let keep = if validators {
        keep_stale
    } else {
        Duration::ZERO
    };
    entry
        .freshness
        .lifetime
        .saturating_add(grace)
        .saturating_add(keep)
        .saturating_sub(entry.freshness.current_age(now))
}

/// Looks the request's key up in Redis, copies what it finds into the local store, and
/// answers from it when the RFC rules allow. Returns the request back otherwise, with `ctx`
/// pointing at a stored entry to revalidate if Redis had one.
pub(crate) async fn consult<S, ReqB, ResB>(
    shared: &Arc<Shared>,
    inner: S,
    req: Request<ReqB>,
    ctx: &mut Ctx,
) -> Result<Response<ResponseBody<ResB>>, (S, Request<ReqB>)>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Send + 'static,
{
    let Some(tier) = &shared.redis else {
        return Err((inner, req));
    };
    // A request that forces validation gains nothing from Redis.
    if ctx.fwd == Fwd::Request {
        return Err((inner, req));
    }
    let t = &tier.inner;
    let redis_key = t.redis_key(shared.rules.shared, &ctx.key);
    let mut cmd = ::redis::cmd("GET");
    cmd.arg(&redis_key);
    let value = match t.call::<Value>(cmd).await {
        Outcome::Ok(Value::BulkString(v)) => Bytes::from(v),
        Outcome::Ok(_) | Outcome::Failed => {
            t.counters.misses.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormwall_cache_redis_misses_total").increment(1);
            return Err((inner, req));
        }
    };
    let now = Instant::now();
    let Some(found) = codec::decode(&value, shared.rules.shared, now, (t.clock)()) else {
        t.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        t.counters.misses.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("stormwall_cache_redis_errors_total", "kind" => "decode").increment(1);
        metrics::counter!("stormwall_cache_redis_misses_total").increment(1);
        tracing::debug!(key = %redis_key, "undecodable value in the Redis tier: miss");
        return Err((inner, req));
    };
    let merged = merge(shared, &ctx.key, found, now);
    let selected = merged
        .iter()
        .rev()
        .find(|e| e.vary.matches(&ctx.req_headers))
        .cloned();
    let decision = selected.map(|entry| {
        let u = policy::decide_at(
            &shared.rules,
            &entry.freshness,
            &entry.directives,
            &ctx.req_cc,
            entry.freshness.current_age(now),
        );
        (entry, u)
    });
    let hit = |stale: bool| {
        t.counters.hits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("stormwall_cache_redis_hits_total").increment(1);
        if stale {
            shared.counters.stale_served.bump();
        }
    };
    match decision {
        Some((entry, Use::Serve { stale })) => {
            hit(stale);
            let st = Status::hit(policy::ttl_secs(&entry.freshness, now)).detail(if stale {
                "redis-max-stale"
            } else {
                "redis"
            });
            tracing::debug!(key = %ctx.key, stale, "cache hit (Redis tier)");
            Ok(serve(shared, &entry, &ctx.req_headers, now, st))
        }
        Some((entry, Use::StaleWhileRevalidate)) => {
            hit(true);
            let mut st = Status::hit(policy::ttl_secs(&entry.freshness, now))
                .detail("redis-stale-while-revalidate");
            st.fwd = Some(Fwd::Stale);
            let res = serve(shared, &entry, &ctx.req_headers, now, st);
            tracing::debug!(key = %ctx.key, "cache hit (Redis tier, stale-while-revalidate)");
            spawn_refresh(
                shared.clone(),
                inner,
                &req,
                ctx.key.clone(),
                entry,
                ctx.req_cc.clone(),
            );
            Ok(res)
        }
        Some((
            entry,
            Use::Validate {
                request,
                stale_if_error,
            },
        )) => {
            t.counters.misses.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormwall_cache_redis_misses_total").increment(1);
            ctx.fwd = if request { Fwd::Request } else { Fwd::Stale };
            ctx.validating = Some(entry);
            ctx.stale_if_error = stale_if_error;
            Err((inner, req))
        }
        None => {
            t.counters.misses.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("stormwall_cache_redis_misses_total").increment(1);
            Err((inner, req))
        }
    }
}

/// Copies the variants found in Redis into the local store: a Redis variant replaces a
/// local one with the same secondary key when it is younger. Returns the merged list.
fn merge(shared: &Shared, key: &str, found: Vec<Arc<Entry>>, now: Instant) -> Variants {
    let mut list: Vec<Arc<Entry>> = shared
        .store
        .get(key)
        .map(|v| v.to_vec())
        .unwrap_or_default();
    for entry in found {
        match list.iter().position(|e| e.vary == entry.vary) {
            Some(i) => {
                if entry.freshness.current_age(now) < list[i].freshness.current_age(now) {
                    list.remove(i);
                    list.push(entry);
                }
            }
            None => list.push(entry),
        }
    }
    if list.len() > shared.max_variants {
        let excess = list.len() - shared.max_variants;
        list.drain(..excess);
    }
    let variants: Variants = list.into();
    shared.store.put(key, variants.clone());
    variants
}
