//! [`ResponseFuture`]: check → (queue → sleep → check)* → call → decorate.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use stormwall_core::response::ResponseBody;
use stormwall_core::time::{Instant, saturating_add};
use tokio::time::{Sleep, sleep_until};
use tower_service::Service;

use crate::adaptive::Gated;
use crate::algorithm::Decision;
use crate::layer::{FailurePolicy, Mode, Shared, WaitEvent};
use crate::response::{
    RateLimitWait, RateLimited, RejectReason, quota_headers, reject_response, rejection,
};
use crate::service::{Prepared, is_grpc};
use crate::stats::inc;
use crate::store::{CheckMode, LimitCheck, Store};
use crate::wait::Ticket;

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Start,
        Check { #[pin] fut: C },
        // Timers are boxed: they are only needed when a request waits, and an inline `Sleep`
        // would make every admitted request's future (moved a few times) much larger.
        Queued { deadline: Pin<Box<Sleep>> },
        Sleep { sleep: Pin<Box<Sleep>>, recheck: bool },
        Ready,
        Inner { #[pin] fut: F },
        Done,
    }
}

pin_project! {
    /// The waiting (or asynchronously decided) path; boxed, so that the admitted fast path's
    /// future stays small.
    pub(crate) struct SlowFuture<S, ReqB, St>
    where
        S: Service<Request<ReqB>>,
        St: Store,
    {
        #[pin]
        state: State<S::Future, St::CheckFuture>,
        ctx: Ctx<S, ReqB, St>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqB, St>
    where
        S: Service<Request<ReqB>>,
        St: Store,
    {
        // Admitted, no headers to add: the inner future alone.
        Fast { #[pin] fut: S::Future },
        // Admitted, with the shared state and the decision for the response's headers.
        Decorated { #[pin] fut: S::Future, deco: Deco<St> },
        // Boxed: rejections are the rare path, and keeping them small keeps every admitted
        // request's future small (it is moved a few times).
        Rejected { rejected: Box<(Arc<Shared<St>>, bool, RejectReason, Duration, Option<Decision>)> },
        Slow { fut: Pin<Box<SlowFuture<S, ReqB, St>>> },
        Done,
    }
}

pin_project! {
    /// The response future of [`RateLimit`](crate::RateLimit).
    pub struct ResponseFuture<S, ReqB, St>
    where
        S: Service<Request<ReqB>>,
        St: Store,
    {
        #[pin]
        kind: Kind<S, ReqB, St>,
    }
}

impl<S, ReqB, St> ResponseFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>>,
    St: Store,
{
    pub(crate) fn fast(fut: S::Future, deco: Option<Deco<St>>) -> Self {
        Self {
            kind: match deco {
                None => Kind::Fast { fut },
                Some(deco) => Kind::Decorated { fut, deco },
            },
        }
    }

    pub(crate) fn rejected(
        shared: Arc<Shared<St>>,
        grpc: bool,
        reason: RejectReason,
        retry: Duration,
        decision: Option<Decision>,
    ) -> Self {
        Self {
            kind: Kind::Rejected {
                rejected: Box::new((shared, grpc, reason, retry, decision)),
            },
        }
    }

    pub(crate) fn slow(
        inner: S,
        req: Request<ReqB>,
        shared: Arc<Shared<St>>,
        p: Prepared,
        started: Instant,
    ) -> Self {
        Self {
            kind: Kind::Slow {
                fut: Box::pin(SlowFuture::new(inner, req, shared, p, started)),
            },
        }
    }
}

impl<S, ReqB, St> ResponseFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>>,
    St: Store,
{
    /// Admitted by a shaper with a delay: sleep, then call.
    pub(crate) fn delayed(
        inner: S,
        req: Request<ReqB>,
        shared: Arc<Shared<St>>,
        p: Prepared,
        started: Instant,
        decision: Decision,
    ) -> Self {
        let mut slow = SlowFuture::new(inner, req, shared, p, started);
        slow.ctx.decision = Some(decision);
        slow.ctx.held = true;
        slow.state = State::Sleep {
            sleep: Box::pin(sleep_until(saturating_add(started, decision.delay))),
            recheck: false,
        };
        Self {
            kind: Kind::Slow {
                fut: Box::pin(slow),
            },
        }
    }
}

impl<S, ReqB, St, ResB> Future for ResponseFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let out = match this.kind.as_mut().project() {
            // The admitted path returns at once, without moving to `Done` (no drop, no
            // write): polling again after completion polls the inner future again, which the
            // `Future` contract leaves unspecified (it may panic), as it does here.
            KindProj::Fast { fut } => {
                return Poll::Ready(Ok(ready!(fut.poll(cx))?.map(ResponseBody::inner)));
            }
            KindProj::Decorated { fut, deco } => {
                let (mut parts, body) = ready!(fut.poll(cx))?.into_parts();
                decorate(&deco.shared, Some(&deco.decision()), &mut parts.headers);
                return Poll::Ready(Ok(Response::from_parts(parts, ResponseBody::inner(body))));
            }
            KindProj::Rejected { rejected } => {
                let (shared, grpc, reason, retry, decision) = &**rejected;
                Ok(reject_now(shared, *grpc, *reason, *retry, *decision))
            }
            KindProj::Slow { fut } => ready!(fut.as_mut().poll(cx)),
            KindProj::Done => panic!("ResponseFuture polled after completion"),
        };
        this.kind.set(Kind::Done);
        Poll::Ready(out)
    }
}

impl<S, ReqB, St> fmt::Debug for ResponseFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>>,
    St: Store,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Fast { .. } | Kind::Decorated { .. } => "admitted",
            Kind::Rejected { .. } => "rejected",
            Kind::Slow { .. } => "waiting or deciding",
            Kind::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &kind)
            .finish()
    }
}

/// What an admitted response's headers need from the decision, compact: the future that
/// holds it is moved a few times per request.
pub(crate) struct Deco<St> {
    shared: Arc<Shared<St>>,
    limit: u64,
    period: u64,
    remaining: u64,
    reset: u64,
    index: usize,
}

impl<St> Deco<St> {
    pub(crate) fn new(shared: Arc<Shared<St>>, d: &Decision) -> Self {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            shared,
            limit: d.limit,
            period: nanos(d.period),
            remaining: d.remaining,
            reset: nanos(d.reset),
            index: d.index,
        }
    }

    fn decision(&self) -> Decision {
        Decision {
            allowed: true,
            limit: self.limit,
            period: Duration::from_nanos(self.period),
            remaining: self.remaining,
            reset: Duration::from_nanos(self.reset),
            retry_after: Duration::ZERO,
            delay: Duration::ZERO,
            index: self.index,
        }
    }
}

/// Counts an admission (no wait).
#[inline]
pub(crate) fn count_admitted<St>(shared: &Shared<St>) {
    inc(&shared.counters.admitted);
    shared.counters.metric_admitted.increment(1);
}

/// Adds the remaining-quota headers to an admitted response.
fn decorate<St>(shared: &Shared<St>, decision: Option<&Decision>, headers: &mut http::HeaderMap) {
    if shared.headers.on_admitted
        && let Some(d) = decision
        && let Some(limit) = shared.limits.get(d.index)
    {
        quota_headers(headers, limit.name(), d, shared.headers, false, Some(limit));
    }
}

/// Counts a rejection and builds its response.
pub(crate) fn reject_now<St, ResB>(
    shared: &Shared<St>,
    grpc: bool,
    reason: RejectReason,
    retry: Duration,
    decision: Option<Decision>,
) -> Response<ResponseBody<ResB>> {
    inc(&shared.counters.rejected);
    if reason == RejectReason::QueueFull {
        inc(&shared.counters.queue_full);
        metrics::counter!("stormwall_ratelimit_queue_full_total").increment(1);
    }
    shared.counters.metric_rejected.increment(1);
    let limit = shared
        .limits
        .get(decision.map_or(0, |d| d.index))
        .map(|l| Arc::from(l.name()));
    tracing::debug!(
        ?reason,
        ?retry,
        limit = limit.as_deref(),
        "stormwall rate limit: rejected"
    );
    let r = rejection(reason, retry, decision, limit, shared.headers);
    let mut res = reject_response(&r, grpc, shared.on_reject.as_ref());
    res.extensions_mut().insert(RateLimited {
        reason,
        retry_after: retry,
    });
    res
}

struct Ctx<S, ReqB, St> {
    inner: S,
    req: Option<Request<ReqB>>,
    shared: Arc<Shared<St>>,
    p: Prepared,
    started: Instant,
    released: Option<Instant>,
    ticket: Option<Ticket>,
    decision: Option<Decision>,
    gated: Option<Gated>,
    /// Whether the request was ever held (queued or asleep): if not, no clock read is needed
    /// to know it waited zero.
    held: bool,
}

impl<S, ReqB, St> SlowFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>>,
    St: Store,
{
    pub(crate) fn new(
        inner: S,
        req: Request<ReqB>,
        shared: Arc<Shared<St>>,
        p: Prepared,
        started: Instant,
    ) -> Self {
        Self {
            state: State::Start,
            ctx: Ctx {
                inner,
                req: Some(req),
                shared,
                p,
                started,
                released: None,
                ticket: None,
                decision: None,
                gated: None,
                held: false,
            },
        }
    }
}

/// What to do next after a step of the state machine.
enum Next<C> {
    Check(C),
    Queue(Instant),
    Sleep(Instant, bool),
    Ready,
    Reject(RejectReason, Duration, Option<Decision>),
}

impl<S, ReqB, St: Store> Ctx<S, ReqB, St> {
    fn deadline(&self) -> Instant {
        match self.shared.mode {
            Mode::Wait { max_wait } => saturating_add(self.started, max_wait),
            Mode::Reject => self.started,
        }
    }

    fn begin(&mut self) -> Next<St::CheckFuture> {
        if let Mode::Wait { .. } = self.shared.mode
            && self.shared.queue.has_waiters(self.p.queue_key)
        {
            // Others wait for the same keys: take a place behind them (FIFO).
            return match self.shared.queue.enqueue(self.p.queue_key, self.p.priority) {
                Some(t) => {
                    self.ticket = Some(t);
                    Next::Queue(self.deadline())
                }
                None => Next::Reject(RejectReason::QueueFull, Duration::from_secs(1), None),
            };
        }
        self.check(self.started)
    }

    fn check(&mut self, now: Instant) -> Next<St::CheckFuture> {
        let shared = &*self.shared;
        if let Some(adaptive) = &shared.adaptive {
            let keys = self
                .p
                .keys
                .iter()
                .zip(&shared.limits)
                .filter(|(_, l)| l.adaptive)
                .map(|((k, _), l)| (l.id.id(), k.clone()));
            match adaptive.gate(keys, now) {
                Ok(g) => self.gated = Some(g),
                Err(wait) => return self.over(now, wait, None),
            }
        }
        let cost = self.p.cost;
        let fut = if let (Some((key, quota)), [limit]) = (self.p.keys.single(), &shared.limits[..])
        {
            let c = [LimitCheck {
                limit: &limit.id,
                key,
                quota: *quota,
                algorithm: limit.algorithm,
                cost,
            }];
            shared.store.check(now, &c, CheckMode::Acquire)
        } else {
            let c: Vec<LimitCheck<'_>> = self
                .p
                .keys
                .iter()
                .zip(&shared.limits)
                .map(|((key, quota), limit)| LimitCheck {
                    limit: &limit.id,
                    key,
                    quota: *quota,
                    algorithm: limit.algorithm,
                    cost,
                })
                .collect();
            shared.store.check(now, &c, CheckMode::Acquire)
        };
        Next::Check(fut)
    }

    /// Over quota (or paused by the upstream) for `retry`.
    fn over(
        &mut self,
        now: Instant,
        retry: Duration,
        decision: Option<Decision>,
    ) -> Next<St::CheckFuture> {
        if let Some(g) = self.gated.take() {
            g.cancel();
        }
        let shared = &*self.shared;
        if shared.shadow {
            inc(&shared.counters.shadow_rejected);
            shared.counters.metric_shadow_rejected.increment(1);
            self.decision = decision;
            self.ticket = None;
            return Next::Ready;
        }
        match shared.mode {
            Mode::Reject => Next::Reject(RejectReason::Limited, retry, decision),
            Mode::Wait { .. } => {
                let deadline = self.deadline();
                let at = saturating_add(now, retry);
                if retry == Duration::MAX || at > deadline {
                    return Next::Reject(RejectReason::WaitTooLong, retry, decision);
                }
                if self.ticket.is_none() {
                    match shared.queue.enqueue(self.p.queue_key, self.p.priority) {
                        Some(t) => self.ticket = Some(t),
                        None => return Next::Reject(RejectReason::QueueFull, retry, decision),
                    }
                }
                self.decision = decision;
                Next::Sleep(at, true)
            }
        }
    }

    fn decided(&mut self, result: Result<Decision, crate::StoreError>) -> Next<St::CheckFuture> {
        match result {
            Ok(d) if d.allowed => {
                self.decision = Some(d);
                self.ticket = None;
                if d.delay > Duration::ZERO {
                    Next::Sleep(saturating_add(self.shared.clock.now(), d.delay), false)
                } else {
                    Next::Ready
                }
            }
            Ok(d) => self.over(self.shared.clock.now(), d.retry_after, Some(d)),
            Err(e) => {
                if let Some(g) = self.gated.take() {
                    g.cancel();
                }
                if !e.is_failure() {
                    return Next::Reject(RejectReason::KeyCapacity, Duration::from_secs(1), None);
                }
                inc(&self.shared.counters.store_errors);
                metrics::counter!("stormwall_ratelimit_store_errors_total").increment(1);
                tracing::warn!(error = %e, "stormwall rate limit: store failed");
                match self.shared.failure {
                    FailurePolicy::Open => {
                        self.ticket = None;
                        Next::Ready
                    }
                    FailurePolicy::Closed => {
                        Next::Reject(RejectReason::StoreFailure, Duration::from_secs(1), None)
                    }
                }
            }
        }
    }

    fn limit_name(&self, d: Option<&Decision>) -> Option<Arc<str>> {
        let i = d.map_or(0, |d| d.index);
        self.shared.limits.get(i).map(|l| Arc::from(l.name()))
    }

    fn released(&mut self) {
        let now = if self.held {
            self.shared.clock.now()
        } else {
            self.started
        };
        self.released = Some(now);
        let waited = now.saturating_duration_since(self.started);
        let c = &self.shared.counters;
        count_admitted(&self.shared);
        if waited > Duration::ZERO {
            inc(&c.waited);
            c.wait_nanos.fetch_add(
                u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            metrics::histogram!("stormwall_ratelimit_wait_seconds").record(waited.as_secs_f64());
            tracing::debug!(?waited, "stormwall rate limit: admitted after waiting");
            if let Some(hook) = &self.shared.on_wait {
                let limit = self
                    .limit_name(self.decision.as_ref())
                    .unwrap_or_else(|| Arc::from(""));
                hook(&WaitEvent { waited, limit });
            }
        }
    }

    fn reject<ResB>(
        &mut self,
        reason: RejectReason,
        retry: Duration,
        decision: Option<Decision>,
    ) -> Response<ResponseBody<ResB>> {
        self.ticket = None;
        let grpc = self.req.as_ref().is_some_and(|r| is_grpc(r.headers()));
        reject_now(&self.shared, grpc, reason, retry, decision)
    }
}

impl<S, ReqB, St, ResB> Future for SlowFuture<S, ReqB, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    St: Store,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Start => this.ctx.begin(),
                StateProj::Check { fut } => {
                    let result = ready!(fut.poll(cx));
                    this.ctx.decided(result)
                }
                StateProj::Queued { deadline } => {
                    let head = this.ctx.ticket.as_ref().is_none_or(|t| t.poll_head(cx));
                    if head {
                        this.ctx.check(this.ctx.shared.clock.now())
                    } else if deadline.as_mut().poll(cx).is_ready() {
                        let retry = this
                            .ctx
                            .decision
                            .map_or(Duration::from_secs(1), |d| d.retry_after);
                        let d = this.ctx.decision;
                        Next::Reject(RejectReason::WaitTooLong, retry, d)
                    } else {
                        return Poll::Pending;
                    }
                }
                StateProj::Sleep { sleep, recheck } => {
                    ready!(sleep.as_mut().poll(cx));
                    if !*recheck {
                        Next::Ready
                    } else if this.ctx.ticket.as_ref().is_none_or(|t| t.poll_head(cx)) {
                        this.ctx.check(this.ctx.shared.clock.now())
                    } else {
                        Next::Queue(this.ctx.deadline())
                    }
                }
                StateProj::Ready => {
                    if this.ctx.released.is_none() {
                        this.ctx.released();
                    }
                    if let Err(e) = ready!(this.ctx.inner.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(e));
                    }
                    let req = this.ctx.req.take().expect("request taken once");
                    let fut = this.ctx.inner.call(req);
                    this.state.set(State::Inner { fut });
                    continue;
                }
                StateProj::Inner { fut } => {
                    let result = ready!(fut.poll(cx));
                    this.state.set(State::Done);
                    let res = match result {
                        Ok(res) => res,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    return Poll::Ready(Ok(finish(this.ctx, res)));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            };
            match next {
                Next::Check(fut) => this.state.set(State::Check { fut }),
                Next::Queue(deadline) => {
                    this.ctx.held = true;
                    this.state.set(State::Queued {
                        deadline: Box::pin(sleep_until(deadline)),
                    });
                }
                Next::Sleep(at, recheck) => {
                    this.ctx.held = true;
                    this.state.set(State::Sleep {
                        sleep: Box::pin(sleep_until(at)),
                        recheck,
                    });
                }
                Next::Ready => this.state.set(State::Ready),
                Next::Reject(reason, retry, d) => {
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(this.ctx.reject(reason, retry, d)));
                }
            }
        }
    }
}

fn finish<S, ReqB, St: Store, ResB>(
    ctx: &mut Ctx<S, ReqB, St>,
    res: Response<ResB>,
) -> Response<ResponseBody<ResB>> {
    let (mut parts, body) = res.into_parts();
    let shared = &*ctx.shared;
    if let Some(g) = ctx.gated.take()
        && let Some(pause) = g.observe(parts.status, &parts.headers, shared.clock.now())
    {
        inc(&shared.counters.pushbacks);
        metrics::counter!("stormwall_ratelimit_pushbacks_total").increment(1);
        tracing::debug!(
            ?pause,
            "stormwall rate limit: upstream pushback, key paused"
        );
    }
    decorate(shared, ctx.decision.as_ref(), &mut parts.headers);
    let waited = ctx
        .released
        .map_or(Duration::ZERO, |r| r.saturating_duration_since(ctx.started));
    if waited > Duration::ZERO {
        parts.extensions.insert(RateLimitWait(waited));
    }
    Response::from_parts(parts, ResponseBody::inner(body))
}
