//! [`Cache`]: the service.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, AGE, CONTENT_LENGTH, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use parking_lot::Mutex;
use stormwall_core::SharedResponse;
use stormwall_core::response::{BufferError, ResponseBody};
use stormwall_core::time::{Instant, system_now};
use tower_service::Service;

use crate::directives::{RequestDirectives, ResponseDirectives};
use crate::future::ResponseFuture;
use crate::layer::{CacheHandle, Candidate, Shared};
use crate::policy::{self, NotStorable, Use};
use crate::status::{CACHE_STATUS, Fwd, Status};
use crate::store::Entry;

thread_local! {
    static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The key `call` just built in [`KEY`], as an owned string (for the paths going upstream).
/// Valid until the next key is built on this thread: `call` takes it before returning.
fn built_key() -> String {
    KEY.with_borrow(|k| k.clone())
}

/// What one upstream call produced, as shared with the requests that waited for it.
#[derive(Clone)]
pub(crate) enum Flight {
    /// Stored (or freshened by a 304): waiters whose request matches its `Vary` use it.
    Stored { entry: Arc<Entry>, fwd_status: u16 },
    /// The origin failed and the caller got a stale response (`stale-if-error`).
    Stale,
    /// Not storable: waiters go upstream on their own.
    Uncacheable,
}

/// An RFC 9111 HTTP cache in front of `S` (see the [crate docs](crate)). Made by
/// [`CacheLayer`](crate::CacheLayer).
pub struct Cache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for Cache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("shared", &self.shared.rules.shared)
            .finish()
    }
}

impl<S> Cache<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// A handle on the cache: purges and stats.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            shared: self.shared.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the cache, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Everything about a request the upstream path needs once the request has moved.
pub(crate) struct Ctx {
    pub(crate) key: String,
    pub(crate) req_headers: HeaderMap,
    uri: Uri,
    pub(crate) req_cc: RequestDirectives,
    pub(crate) fwd: Fwd,
    pub(crate) validating: Option<Arc<Entry>>,
    pub(crate) stale_if_error: Option<Duration>,
}

impl Ctx {
    /// The stale entry to serve when the origin fails, if `stale-if-error` allows.
    fn stale_for_error(&self, now: Instant) -> Option<&Arc<Entry>> {
        let entry = self.validating.as_ref()?;
        let window = self.stale_if_error?;
        let staleness = entry
            .freshness
            .current_age(now)
            .saturating_sub(entry.freshness.lifetime);
        (staleness <= window).then_some(entry)
    }
}

type Slot<B, E> = Arc<Mutex<Option<Result<Response<ResponseBody<B>>, E>>>>;

fn synthetic<B>(shared: &Shared, code: StatusCode, st: Status) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = code;
    res.headers_mut()
        .append(CACHE_STATUS.clone(), shared.status_header(st));
    res
}

/// Builds the response for a stored entry: a 304 if the client's validators match, else the
/// stored response; with `Age` and `Cache-Status`.
///
/// The headers are one clone of the entry's pre-built map (stored headers plus `Age` and
/// `Cache-Status` slots) whose two slots are overwritten; a plain hit takes both values from
/// the entry's memo.
pub(crate) fn serve<B>(
    shared: &Shared,
    entry: &Entry,
    req_headers: &HeaderMap,
    now: Instant,
    st: Status,
) -> Response<ResponseBody<B>> {
    let conditional = policy::has_client_conditionals(req_headers);
    let age = entry.freshness.current_age(now);
    serve_with(shared, entry, req_headers, conditional, age, st)
}

/// [`serve`], with whether the request carries validators and the entry's current age
/// already known.
fn serve_with<B>(
    shared: &Shared,
    entry: &Entry,
    req_headers: &HeaderMap,
    conditional: bool,
    age: Duration,
    st: Status,
) -> Response<ResponseBody<B>> {
    let mut headers = entry.served.clone();
    let age_secs = policy::age_secs(age);
    let (age, status) = if st.is_plain_hit() {
        entry.hit_headers(age_secs, &shared.name, || st.to_header(&shared.name))
    } else {
        (policy::age_header(age_secs), shared.status_header(st))
    };
    if let Some(slot) = headers.get_mut(AGE) {
        *slot = age;
    }
    if entry.own_status_only {
        if let Some(slot) = headers.get_mut(&CACHE_STATUS) {
            *slot = status;
        }
    } else {
        set_last(&mut headers, &CACHE_STATUS, status);
    }
    let stored = &entry.response;
    let mut res = if conditional && policy::not_modified_for(req_headers, stored.headers()) {
        headers.remove(CONTENT_LENGTH);
        let mut res = Response::new(ResponseBody::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let mut res = Response::new(ResponseBody::buffered(
            stored.body().clone(),
            stored.trailers().cloned(),
        ));
        *res.status_mut() = stored.status();
        *res.version_mut() = stored.version();
        if !stored.extensions().is_empty() {
            *res.extensions_mut() = stored.extensions().clone();
        }
        res
    };
    *res.headers_mut() = headers;
    res
}

/// Overwrites the last value of `name` (our slot, after those the origin sent).
fn set_last(headers: &mut HeaderMap, name: &HeaderName, value: HeaderValue) {
    match headers.entry(name) {
        header::Entry::Occupied(mut e) => {
            if let Some(last) = e.iter_mut().last() {
                *last = value;
            }
        }
        header::Entry::Vacant(e) => {
            e.insert(value);
        }
    }
}

fn select<'a>(variants: &'a [Arc<Entry>], req_headers: &HeaderMap) -> Option<&'a Arc<Entry>> {
    variants.iter().rev().find(|e| e.vary.matches(req_headers))
}

fn store_entry(shared: &Shared, key: &str, entry: Arc<Entry>) {
    let mut list: Vec<Arc<Entry>> = shared
        .store
        .get(key)
        .map(|v| v.iter().filter(|e| e.vary != entry.vary).cloned().collect())
        .unwrap_or_default();
    list.push(entry);
    if list.len() > shared.max_variants {
        let excess = list.len() - shared.max_variants;
        list.drain(..excess);
    }
    let variants: crate::store::Variants = list.into();
    #[cfg(feature = "redis")]
    shared.tier_write(key, &variants);
    shared.store.put(key, variants);
    shared.counters.stored.bump();
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Cache<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = req.method();
        if policy::is_unsafe(method) {
            let inner = self.take_inner();
            let shared = self.shared.clone();
            return ResponseFuture::upstream(Box::pin(unsafe_call(shared, inner, req)));
        }
        let shared = &self.shared;
        let flags = policy::RequestFlags::scan(req.headers());
        let scheme = shared.rules.default_scheme;
        // The hit path builds the key in a reused thread-local buffer: no allocation.
        let lookup = if method == Method::GET && !flags.bypass {
            KEY.with_borrow_mut(|buf| {
                buf.clear();
                policy::write_get_key(buf, req.uri(), req.headers(), scheme)
                    .map(|()| shared.store.get(buf))
            })
        } else {
            None
        };
        let Some(found) = lookup else {
            let fwd = if method == Method::GET {
                Fwd::Bypass
            } else {
                Fwd::Method
            };
            let shared = shared.clone();
            let inner = self.take_inner();
            return ResponseFuture::upstream(Box::pin(passthrough(shared, inner, req, fwd)));
        };
        let req_cc = if flags.directives {
            RequestDirectives::from_headers(req.headers())
        } else {
            RequestDirectives::default()
        };
        let mut fwd = Fwd::UriMiss;
        let mut validating = None;
        let mut stale_if_error = None;
        if let Some(variants) = &found {
            fwd = Fwd::VaryMiss;
            if let Some(entry) = select(variants, req.headers()) {
                let age = entry.freshness.current_age(Instant::now());
                match policy::decide_at(
                    &shared.rules,
                    &entry.freshness,
                    &entry.directives,
                    &req_cc,
                    age,
                ) {
                    Use::Serve { stale } => {
                        shared.counters.hits.bump();
                        let mut st = Status::hit(policy::ttl_at(&entry.freshness, age));
                        if stale {
                            shared.counters.stale_served.bump();
                            st = st.detail("max-stale");
                        }
                        tracing::debug!(uri = %req.uri(), stale, "cache hit");
                        return ResponseFuture::ready(serve_with(
                            shared,
                            entry,
                            req.headers(),
                            flags.conditionals,
                            age,
                            st,
                        ));
                    }
                    Use::StaleWhileRevalidate => {
                        shared.counters.hits.bump();
                        shared.counters.stale_served.bump();
                        let mut st = Status::hit(policy::ttl_at(&entry.freshness, age))
                            .detail("stale-while-revalidate");
                        st.fwd = Some(Fwd::Stale);
                        let res =
                            serve_with(shared, entry, req.headers(), flags.conditionals, age, st);
                        tracing::debug!(uri = %req.uri(), "cache hit (stale-while-revalidate)");
                        let key = built_key();
                        let (shared, entry) = (shared.clone(), entry.clone());
                        let inner = self.take_inner();
                        spawn_refresh(shared, inner, &req, key, entry, req_cc);
                        return ResponseFuture::ready(res);
                    }
                    Use::Validate {
                        request,
                        stale_if_error: sie,
                    } => {
                        fwd = if request { Fwd::Request } else { Fwd::Stale };
                        validating = Some(entry.clone());
                        stale_if_error = sie;
                    }
                }
            }
        }
        drop(found);
        let key = built_key();
        if req_cc.only_if_cached {
            tracing::debug!(key = %key, "only-if-cached: nothing usable stored");
            return ResponseFuture::ready(synthetic(
                shared,
                StatusCode::GATEWAY_TIMEOUT,
                Status::default().detail("only-if-cached"),
            ));
        }
        shared.counters.misses.bump();
        tracing::debug!(key = %key, fwd = ?fwd, "cache miss");
        let ctx = Ctx {
            key,
            req_headers: req.headers().clone(),
            uri: req.uri().clone(),
            req_cc,
            fwd,
            validating,
            stale_if_error,
        };
        let shared = shared.clone();
        let inner = self.take_inner();
        ResponseFuture::upstream(Box::pin(miss(shared, inner, req, ctx)))
    }
}

impl<S: Clone> Cache<S> {
    /// The inner service for a call going upstream, leaving a clone in its place (the one
    /// `poll_ready` was called on goes with the request). Hits never need it.
    fn take_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

async fn call_inner<S, R>(inner: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    poll_fn(|cx| inner.poll_ready(cx)).await?;
    inner.call(req).await
}

fn add_status<B>(shared: &Shared, res: &mut Response<B>, st: Status) {
    res.headers_mut()
        .append(CACHE_STATUS.clone(), shared.status_header(st));
}

async fn passthrough<S, ReqB, ResB>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqB>,
    fwd: Fwd,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    let res = call_inner(&mut inner, req).await?;
    let mut st = Status::fwd(fwd);
    st.fwd_status = Some(res.status().as_u16());
    let mut res = res.map(ResponseBody::inner);
    add_status(&shared, &mut res, st);
    Ok(res)
}

/// RFC 9111 §4.4: a successful unsafe request invalidates the target URI and same-origin
/// `Location` / `Content-Location`.
async fn unsafe_call<S, ReqB, ResB>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    let origin = policy::request_origin(req.uri(), req.headers(), shared.rules.default_scheme);
    let uri = req.uri().clone();
    let res = call_inner(&mut inner, req).await?;
    let status = res.status();
    if (status.is_success() || status.is_redirection())
        && let Some(origin) = origin
    {
        for key in policy::invalidation_keys(&origin, &uri, res.headers()) {
            if shared.remove_key(&key) {
                tracing::debug!(key = %key, "invalidated by unsafe method");
            }
        }
    }
    let mut st = Status::fwd(Fwd::Method);
    st.fwd_status = Some(status.as_u16());
    let mut res = res.map(ResponseBody::inner);
    add_status(&shared, &mut res, st);
    Ok(res)
}

/// A miss or revalidation: one upstream call per key (coalesced), waiters reuse its result
/// when it was stored and their request matches its `Vary`; otherwise they go on their own.
async fn miss<S, ReqB, ResB>(
    shared: Arc<Shared>,
    inner: S,
    req: Request<ReqB>,
    ctx: Ctx,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Send + 'static,
{
    #[cfg(feature = "redis")]
    let (inner, req, ctx) = {
        let mut ctx = ctx;
        match crate::tier::consult(&shared, inner, req, &mut ctx).await {
            Ok(res) => return Ok(res),
            Err((inner, req)) => (inner, req, ctx),
        }
    };
    let ctx = Arc::new(ctx);
    let slot: Slot<ResB, S::Error> = Arc::new(Mutex::new(None));
    let mut own = Some((inner, req));
    let run = shared.group.run_with(ctx.key.clone(), || {
        let (inner, req) = own.take().expect("make is called once");
        fetch(shared.clone(), inner, req, ctx.clone(), slot.clone())
    });
    let flight = run.await;
    if let Some(mine) = slot.lock().take() {
        return mine;
    }
    let now = Instant::now();
    match flight {
        Ok(Flight::Stored { entry, fwd_status }) if entry.vary.matches(&ctx.req_headers) => {
            shared.counters.collapsed.bump();
            let st = Status {
                fwd: Some(ctx.fwd),
                fwd_status: Some(fwd_status),
                ttl: Some(policy::ttl_secs(&entry.freshness, now)),
                collapsed: true,
                ..Status::default()
            };
            return Ok(serve(&shared, &entry, &ctx.req_headers, now, st));
        }
        Ok(Flight::Stale) => {
            if let Some(entry) = ctx.stale_for_error(now) {
                shared.counters.collapsed.bump();
                shared.counters.stale_served.bump();
                let st = Status {
                    fwd: Some(Fwd::Stale),
                    ttl: Some(policy::ttl_secs(&entry.freshness, now)),
                    collapsed: true,
                    detail: Some("stale-if-error"),
                    ..Status::default()
                };
                return Ok(serve(&shared, entry, &ctx.req_headers, now, st));
            }
        }
        _ => {}
    }
    // Not shareable with us: go upstream on our own.
    let Some((inner, req)) = own.take() else {
        // The leader's call panicked after taking our request: nothing to retry with.
        return Ok(synthetic(
            &shared,
            StatusCode::BAD_GATEWAY,
            Status::fwd(ctx.fwd).detail("upstream-panic"),
        ));
    };
    // Boxed: this rare path would otherwise make every miss's future (allocated and moved
    // on each miss) as large as the whole upstream call's.
    let _ = Box::pin(fetch(shared.clone(), inner, req, ctx, slot.clone())).await;
    let out = slot.lock().take();
    out.unwrap_or_else(|| {
        Ok(synthetic(
            &shared,
            StatusCode::BAD_GATEWAY,
            Status::default(),
        ))
    })
}

/// The upstream call of a miss or revalidation: forwards (conditionally), handles 304,
/// stale-if-error, storage; puts the caller's response in `slot` and returns what waiters
/// may share.
async fn fetch<S, ReqB, ResB>(
    shared: Arc<Shared>,
    mut inner: S,
    mut req: Request<ReqB>,
    ctx: Arc<Ctx>,
    slot: Slot<ResB, S::Error>,
) -> Result<Flight, std::convert::Infallible>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes> + Unpin,
{
    if let Some(entry) = &ctx.validating {
        policy::conditional_headers(entry.response.headers(), req.headers_mut());
    }
    let request_time = Instant::now();
    let result = call_inner(&mut inner, req).await;
    let now = Instant::now();
    let (flight, out) = match result {
        Err(e) => match ctx.stale_for_error(now) {
            Some(entry) => {
                shared.counters.stale_served.bump();
                tracing::debug!(key = %ctx.key, "origin unreachable: serving stale (stale-if-error)");
                let st = Status {
                    fwd: Some(Fwd::Stale),
                    ttl: Some(policy::ttl_secs(&entry.freshness, now)),
                    detail: Some("stale-if-error"),
                    ..Status::default()
                };
                (
                    Flight::Stale,
                    Ok(serve(&shared, entry, &ctx.req_headers, now, st)),
                )
            }
            None => (Flight::Uncacheable, Err(e)),
        },
        Ok(res) => on_response(&shared, &ctx, res, request_time, now).await,
    };
    *slot.lock() = Some(out);
    Ok(flight)
}

async fn on_response<ResB, E>(
    shared: &Shared,
    ctx: &Ctx,
    res: Response<ResB>,
    request_time: Instant,
    now: Instant,
) -> (Flight, Result<Response<ResponseBody<ResB>>, E>)
where
    ResB: Body<Data = Bytes> + Unpin,
{
    let status = res.status();
    let code = status.as_u16();
    let system = system_now();
    if policy::is_error_status(status)
        && let Some(entry) = ctx.stale_for_error(now)
    {
        shared.counters.stale_served.bump();
        tracing::debug!(key = %ctx.key, status = code, "origin error: serving stale (stale-if-error)");
        let st = Status {
            fwd: Some(Fwd::Stale),
            fwd_status: Some(code),
            ttl: Some(policy::ttl_secs(&entry.freshness, now)),
            detail: Some("stale-if-error"),
            ..Status::default()
        };
        return (
            Flight::Stale,
            Ok(serve(shared, entry, &ctx.req_headers, now, st)),
        );
    }
    if status == StatusCode::NOT_MODIFIED
        && let Some(old) = &ctx.validating
    {
        shared.counters.revalidated_not_modified.bump();
        let freshened = old
            .response
            .map_headers(|h| policy::freshen_headers(h, res.headers()));
        let entry = Arc::new(Entry::new(
            &shared.rules,
            freshened,
            &ctx.req_headers,
            request_time,
            now,
            system,
        ));
        let stored = !entry.directives.no_store;
        if stored {
            store_entry(shared, &ctx.key, entry.clone());
        } else {
            shared.remove_key(&ctx.key);
        }
        tracing::debug!(key = %ctx.key, "revalidated: 304");
        let st = Status {
            fwd: Some(ctx.fwd),
            fwd_status: Some(304),
            ttl: Some(policy::ttl_secs(&entry.freshness, now)),
            stored,
            ..Status::default()
        };
        let res = serve(shared, &entry, &ctx.req_headers, now, st);
        let flight = if stored {
            Flight::Stored {
                entry,
                fwd_status: 304,
            }
        } else {
            Flight::Uncacheable
        };
        return (flight, Ok(res));
    }
    if ctx.validating.is_some() && status != StatusCode::NOT_MODIFIED {
        shared.counters.revalidated_modified.bump();
    }
    let res_cc = ResponseDirectives::from_headers(res.headers());
    let mut verdict = policy::storable(
        &shared.rules,
        &Method::GET,
        &ctx.req_headers,
        &ctx.req_cc,
        status,
        res.headers(),
        &res_cc,
    );
    if verdict.is_ok() && !policy::worth_storing(&shared.rules, &ctx.req_cc, res.headers(), &res_cc)
    {
        verdict = Err(NotStorable::NoFreshness);
        // What the stored response is being revalidated into would not be stored: drop the
        // old one rather than keep validating it.
        if ctx.validating.is_some() {
            shared.store.remove(&ctx.key);
        }
    }
    if verdict.is_ok()
        && let Some(predicate) = &shared.predicate
        && !predicate(&Candidate {
            uri: &ctx.uri,
            request_headers: &ctx.req_headers,
            status,
            response_headers: res.headers(),
        })
    {
        verdict = Err(NotStorable::Predicate);
    }
    let mut st = Status::fwd(ctx.fwd);
    st.fwd_status = Some(code);
    if let Err(reason) = verdict {
        tracing::debug!(key = %ctx.key, status = code, reason = reason.as_str(), "not stored");
        let mut res = res.map(ResponseBody::inner);
        add_status(shared, &mut res, st.detail(reason.as_str()));
        return (Flight::Uncacheable, Ok(res));
    }
    let (mut parts, body) = res.into_parts();
    // `Connection` may name `Cache-Control` itself: parse again if anything was stripped.
    let res_cc = if policy::strip_unstorable(&mut parts.headers) {
        ResponseDirectives::from_headers(&parts.headers)
    } else {
        res_cc
    };
    match SharedResponse::buffer(Response::from_parts(parts, body), shared.max_entry_bytes).await {
        Ok(response) => {
            let entry = Arc::new(Entry::with_directives(
                &shared.rules,
                response,
                res_cc,
                &ctx.req_headers,
                request_time,
                now,
                system,
            ));
            store_entry(shared, &ctx.key, entry.clone());
            tracing::debug!(key = %ctx.key, status = code, lifetime = ?entry.freshness.lifetime, "stored");
            st.stored = true;
            st.ttl = Some(policy::ttl_secs(&entry.freshness, now));
            let res = serve(shared, &entry, &ctx.req_headers, now, st);
            (
                Flight::Stored {
                    entry,
                    fwd_status: code,
                },
                Ok(res),
            )
        }
        Err(BufferError::TooLarge(mut res)) => {
            tracing::debug!(key = %ctx.key, "too large to store: streaming through");
            add_status(shared, &mut res, st.detail(NotStorable::TooLarge.as_str()));
            (Flight::Uncacheable, Ok(res))
        }
        Err(BufferError::Body(_)) => {
            tracing::debug!(key = %ctx.key, "upstream body failed");
            (
                Flight::Uncacheable,
                Ok(synthetic(
                    shared,
                    StatusCode::BAD_GATEWAY,
                    st.detail("body-error"),
                )),
            )
        }
    }
}

/// Most background revalidations in flight at once.
const MAX_BACKGROUND: usize = 1024;

/// RFC 5861 §3: refresh a stale entry once, in the background.
pub(crate) fn spawn_refresh<S, ReqB, ResB>(
    shared: Arc<Shared>,
    inner: S,
    req: &Request<ReqB>,
    key: String,
    entry: Arc<Entry>,
    req_cc: RequestDirectives,
) where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Default + Send + 'static,
    ResB: Body<Data = Bytes> + Unpin + Send + 'static,
    ResB::Error: Send + 'static,
{
    {
        let mut refreshing = shared.refreshing.lock();
        // Bounded: beyond MAX_BACKGROUND refreshes in flight, the stale response is still
        // served and a later request revalidates in the foreground.
        if refreshing.len() >= MAX_BACKGROUND || !refreshing.insert(key.clone()) {
            return;
        }
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        shared.refreshing.lock().remove(&key);
        return;
    };
    let mut background = Request::new(ReqB::default());
    *background.method_mut() = Method::GET;
    *background.uri_mut() = req.uri().clone();
    *background.version_mut() = req.version();
    *background.headers_mut() = req.headers().clone();
    *background.extensions_mut() = req.extensions().clone();
    let ctx = Arc::new(Ctx {
        key: key.clone(),
        req_headers: req.headers().clone(),
        uri: req.uri().clone(),
        req_cc,
        fwd: Fwd::Stale,
        validating: Some(entry),
        stale_if_error: None,
    });
    handle.spawn(async move {
        let slot: Slot<ResB, S::Error> = Arc::new(Mutex::new(None));
        let run = shared.group.run_with(key.clone(), || {
            fetch(shared.clone(), inner, background, ctx, slot.clone())
        });
        let _ = run.await;
        drop(slot);
        shared.refreshing.lock().remove(&key);
        tracing::debug!(key = %key, "background revalidation done");
    });
}
