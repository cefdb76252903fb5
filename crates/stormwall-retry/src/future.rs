//! The response future: buffering, attempts, backoff, hedging.

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use stormwall_core::BoxError;
use stormwall_core::classify::{ClassifiedResponse, ClassifyResponse, Failure, GrpcCode};
use stormwall_core::time::{Instant, saturating_add};
use tokio::time::{Sleep, Timeout};
use tower_service::Service;

use crate::backoff::JitterRng;
use crate::body::RetryBody;
use crate::error::RetryError;
use crate::service::Shared;
use crate::stats::inc;

pin_project! {
    #[project = SlotProj]
    enum Slot<F> {
        Empty,
        Plain { #[pin] fut: F },
        Timed { #[pin] fut: Timeout<F> },
    }
}

enum Attempt<T> {
    Done(T),
    TimedOut,
}

impl<F: Future> Slot<F> {
    fn is_running(&self) -> bool {
        !matches!(self, Self::Empty)
    }

    fn poll_attempt(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Attempt<F::Output>> {
        match self.project() {
            SlotProj::Empty => Poll::Pending,
            SlotProj::Plain { fut } => fut.poll(cx).map(Attempt::Done),
            SlotProj::Timed { fut } => fut.poll(cx).map(|r| match r {
                Ok(out) => Attempt::Done(out),
                Err(_) => Attempt::TimedOut,
            }),
        }
    }
}

/// The backoff / hedge timer, boxed on demand (only retries and hedges need one), which keeps
/// the future small on the no-retry path.
struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    const OFF: Self = Self(None);

    fn is_on(&self) -> bool {
        self.0.is_some()
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            None => Poll::Ready(()),
            Some(sleep) => sleep.as_mut().poll(cx),
        }
    }

    fn after(delay: Duration) -> Self {
        if delay.is_zero() {
            Self::OFF
        } else {
            Self(Some(Box::pin(tokio::time::sleep_until(saturating_add(
                Instant::now(),
                delay,
            )))))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Buffering,
    Launch,
    InFlight,
    Waiting,
    Done,
}

enum ReqBody<B> {
    Buffering {
        body: B,
        chunks: Vec<Bytes>,
        len: usize,
        trailers: Option<HeaderMap>,
    },
    Replay {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    Once(Option<RetryBody<B>>),
}

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    }
}

enum Final<T, E> {
    Response(T),
    Error(E),
    Timeout,
}

enum Decision<T, E> {
    Return(Result<T, RetryError<E>>),
    WaitOther,
    Retry(Duration),
}

struct Ctx<B> {
    shared: Arc<Shared>,
    parts: Option<Parts>,
    body: ReqBody<B>,
    attempts: u32,
    retries: u32,
    retryable: bool,
    prev_delay: Duration,
    rng: JitterRng,
    deadline: Option<Instant>,
}

fn reason(f: &Failure) -> &'static str {
    match f {
        Failure::Connect => "connect",
        Failure::Timeout => "timeout",
        Failure::Reset => "reset",
        Failure::Status(s) => match s.as_u16() {
            502 => "status_502",
            503 => "status_503",
            504 => "status_504",
            _ => "status_other",
        },
        Failure::BackOff { .. } => "back_off",
        Failure::Grpc {
            code: GrpcCode::Unavailable,
            ..
        } => "grpc_unavailable",
        Failure::Grpc { .. } => "grpc_other",
        _ => "other",
    }
}

impl<B> Ctx<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_buffer(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let limit = self.shared.config.body_limit;
        loop {
            let ReqBody::Buffering {
                body,
                chunks,
                len,
                trailers,
            } = &mut self.body
            else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    let data = concat(mem::take(chunks));
                    let trailers = trailers.take();
                    self.body = ReqBody::Replay { data, trailers };
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        *len = len.saturating_add(data.len());
                        if !data.is_empty() {
                            chunks.push(data);
                        }
                        if *len > limit {
                            let ReqBody::Buffering { body, chunks, .. } =
                                mem::replace(&mut self.body, ReqBody::Once(None))
                            else {
                                return Poll::Ready(Ok(()));
                            };
                            self.body =
                                ReqBody::Once(Some(RetryBody::prefixed(concat(chunks), body)));
                            self.not_replayable();
                            return Poll::Ready(Ok(()));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            match trailers {
                                Some(existing) => existing.extend(t),
                                None => *trailers = Some(t),
                            }
                        }
                    }
                },
            }
        }
    }

    fn not_replayable(&mut self) {
        self.retryable = false;
        inc(&self.shared.stats.unbuffered_bodies);
        tracing::debug!(
            limit = self.shared.config.body_limit,
            "request body exceeds the retry buffer limit; sending once, no retries"
        );
    }

    fn next_request(&mut self) -> Request<RetryBody<B>> {
        let body = match &mut self.body {
            ReqBody::Replay { data, trailers } => {
                RetryBody::buffered(data.clone(), trailers.clone())
            }
            ReqBody::Once(b) => b.take().unwrap_or_default(),
            ReqBody::Buffering { .. } => RetryBody::empty(),
        };
        let parts = if self.retryable {
            self.parts.clone()
        } else {
            self.parts.take()
        };
        let parts = parts.unwrap_or_else(|| Request::new(()).into_parts().0);
        Request::from_parts(parts, body)
    }

    fn start<F: Future>(&mut self, fut: F, hedge: bool) -> Slot<F> {
        self.attempts += 1;
        inc(&self.shared.stats.attempts);
        tracing::debug!(
            attempt = self.attempts,
            hedge,
            method = ?self.parts.as_ref().map(|p| &p.method),
            uri = ?self.parts.as_ref().map(|p| &p.uri),
            "retry: sending attempt"
        );
        let until = match (self.shared.config.attempt_timeout, self.deadline) {
            (Some(t), Some(d)) => Some(saturating_add(Instant::now(), t).min(d)),
            (Some(t), None) => Some(saturating_add(Instant::now(), t)),
            (None, d) => d,
        };
        match until {
            Some(at) => Slot::Timed {
                fut: tokio::time::timeout_at(at, fut),
            },
            None => Slot::Plain { fut },
        }
    }

    fn hedge_timer(&self) -> Timer {
        match self.shared.config.hedge_after {
            // Armed even for a zero delay (an immediate hedge).
            Some(d) if self.retryable && self.attempts < self.shared.config.max_attempts => {
                Timer(Some(Box::pin(tokio::time::sleep_until(saturating_add(
                    Instant::now(),
                    d,
                )))))
            }
            _ => Timer::OFF,
        }
    }

    fn finish<T, E>(&self, out: Final<T, E>) -> Result<T, RetryError<E>> {
        metrics::histogram!("stormwall_retry_attempts").record(f64::from(self.attempts));
        match out {
            Final::Response(r) => Ok(r),
            Final::Error(e) => Err(RetryError::inner(e, self.attempts)),
            Final::Timeout => Err(RetryError::attempt_timeout(self.attempts)),
        }
    }

    fn decide<ResB, E>(
        &mut self,
        out: Attempt<Result<Response<ResB>, E>>,
        other_running: bool,
    ) -> Decision<Response<ResB>, E>
    where
        E: fmt::Display + 'static,
    {
        let config = &self.shared.config;
        let (failure, out) = match out {
            Attempt::Done(Ok(res)) => {
                let class = match config.classifier.clone().classify_response(&res) {
                    ClassifiedResponse::Ready(r) => r,
                    ClassifiedResponse::RequiresEos(_) => Ok(()),
                };
                match class {
                    Ok(()) => {
                        self.shared.budget.deposit();
                        inc(&self.shared.stats.successes);
                        tracing::debug!(attempt = self.attempts, "retry: success");
                        return Decision::Return(self.finish(Final::<_, E>::Response(res)));
                    }
                    Err(f) => (f, Final::Response(res)),
                }
            }
            Attempt::Done(Err(e)) => (Failure::from_error(&e), Final::Error(e)),
            Attempt::TimedOut => {
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::debug!(attempts = self.attempts, "retry: deadline elapsed");
                    metrics::histogram!("stormwall_retry_attempts")
                        .record(f64::from(self.attempts));
                    return Decision::Return(Err(RetryError::deadline(self.attempts)));
                }
                inc(&self.shared.stats.attempt_timeouts);
                (Failure::Timeout, Final::Timeout)
            }
        };
        if !self.retryable || !config.should_retry(&failure) {
            tracing::debug!(attempt = self.attempts, %failure, "retry: not retryable");
            return Decision::Return(self.finish(out));
        }
        if other_running {
            tracing::debug!(attempt = self.attempts, %failure, "retry: waiting for the other attempt");
            return Decision::WaitOther;
        }
        if self.attempts >= config.max_attempts {
            tracing::debug!(attempts = self.attempts, %failure, "retry: attempts exhausted");
            return Decision::Return(self.finish(out));
        }
        let delay = match failure.pushback() {
            Some(p) => p.min(config.max_pushback),
            None => config
                .backoff
                .delay(self.retries + 1, self.prev_delay, &mut self.rng),
        };
        if let Some(deadline) = self.deadline
            && saturating_add(Instant::now(), delay) >= deadline
        {
            inc(&self.shared.stats.deadline_stops);
            tracing::debug!(?delay, %failure, "retry: next delay goes beyond the deadline");
            return Decision::Return(self.finish(out));
        }
        if !self.shared.budget.withdraw() {
            inc(&self.shared.stats.budget_exhausted);
            metrics::counter!("stormwall_retry_budget_exhausted_total").increment(1);
            tracing::debug!(%failure, "retry: budget exhausted");
            return Decision::Return(self.finish(out));
        }
        self.retries += 1;
        self.prev_delay = delay;
        inc(&self.shared.stats.retries);
        metrics::counter!("stormwall_retry_retries_total", "reason" => reason(&failure))
            .increment(1);
        tracing::debug!(retry = self.retries, ?delay, %failure, "retry: backing off");
        Decision::Retry(delay)
    }
}

pin_project! {
    /// The response future of [`Retry`](crate::Retry).
    ///
    /// It first buffers the request body (up to the limit), then polls the owned inner service
    /// ready and sends an attempt, waits for it (and, with hedging, for a second one), and
    /// backs off between attempts.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<RetryBody<B>>>,
    {
        #[pin]
        primary: Slot<S::Future>,
        // Boxed on demand: hedges are rare, and this keeps the future small.
        hedge: Option<Pin<Box<Slot<S::Future>>>>,
        timer: Timer,
        phase: Phase,
        service: S,
        ctx: Ctx<B>,
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("phase", &self.phase)
            .field("attempts", &self.ctx.attempts)
            .finish()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(service: S, shared: Arc<Shared>, req: Request<B>) -> Self {
        let (parts, body) = req.into_parts();
        let config = &shared.config;
        let wants_retries = config.max_attempts > 1;
        let retryable = wants_retries && config.method_is_retryable(&parts.method, &parts.headers);
        let seed = shared.stats.next_seed();
        let deadline = config.deadline.map(|d| saturating_add(Instant::now(), d));
        let mut ctx = Ctx {
            shared,
            parts: Some(parts),
            body: ReqBody::Once(None),
            attempts: 0,
            retries: 0,
            retryable,
            prev_delay: Duration::ZERO,
            rng: JitterRng::new(seed),
            deadline,
        };
        let phase = if !retryable {
            ctx.body = ReqBody::Once(Some(RetryBody::stream(body)));
            Phase::Launch
        } else if body.is_end_stream() {
            ctx.body = ReqBody::Replay {
                data: Bytes::new(),
                trailers: None,
            };
            Phase::Launch
        } else if body.size_hint().lower() > ctx.shared.config.body_limit as u64 {
            ctx.body = ReqBody::Once(Some(RetryBody::stream(body)));
            ctx.not_replayable();
            Phase::Launch
        } else {
            ctx.body = ReqBody::Buffering {
                body,
                chunks: Vec::new(),
                len: 0,
                trailers: None,
            };
            Phase::Buffering
        };
        Self {
            primary: Slot::Empty,
            hedge: None,
            timer: Timer::OFF,
            phase,
            service,
            ctx,
        }
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResB>>,
    S::Error: fmt::Display + 'static,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, RetryError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match *this.phase {
                Phase::Buffering => {
                    if let Err(e) = ready!(this.ctx.poll_buffer(cx)) {
                        *this.phase = Phase::Done;
                        return Poll::Ready(Err(RetryError::body(e)));
                    }
                    *this.phase = Phase::Launch;
                }
                Phase::Launch => {
                    match this.service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => {
                            *this.phase = Phase::Done;
                            return Poll::Ready(Err(RetryError::inner(e, this.ctx.attempts)));
                        }
                        Poll::Pending => {
                            // The deadline also bounds the wait for readiness before a retry.
                            if let Some(deadline) = this.ctx.deadline {
                                if !this.timer.is_on() {
                                    *this.timer =
                                        Timer(Some(Box::pin(tokio::time::sleep_until(deadline))));
                                }
                                if this.timer.poll_timer(cx).is_ready() {
                                    *this.phase = Phase::Done;
                                    *this.timer = Timer::OFF;
                                    return Poll::Ready(Err(RetryError::deadline(
                                        this.ctx.attempts,
                                    )));
                                }
                            }
                            return Poll::Pending;
                        }
                    }
                    let fut = this.service.call(this.ctx.next_request());
                    let slot = this.ctx.start(fut, false);
                    this.primary.set(slot);
                    *this.timer = this.ctx.hedge_timer();
                    *this.phase = Phase::InFlight;
                }
                Phase::Waiting => {
                    ready!(this.timer.poll_timer(cx));
                    *this.timer = Timer::OFF;
                    *this.phase = Phase::Launch;
                }
                Phase::InFlight => {
                    let mut next = None;
                    for hedge_slot in [false, true] {
                        let hedge_running = this.hedge.as_ref().is_some_and(|h| h.is_running());
                        let (slot, other) = if hedge_slot {
                            match this.hedge.as_mut() {
                                Some(h) => (h.as_mut(), this.primary.is_running()),
                                None => continue,
                            }
                        } else {
                            (this.primary.as_mut(), hedge_running)
                        };
                        let Poll::Ready(out) = slot.poll_attempt(cx) else {
                            continue;
                        };
                        if hedge_slot {
                            *this.hedge = None;
                        } else {
                            this.primary.set(Slot::Empty);
                        }
                        match this.ctx.decide(out, other) {
                            Decision::Return(result) => {
                                // Cancels the other attempt, if any, by dropping it.
                                this.primary.set(Slot::Empty);
                                *this.hedge = None;
                                *this.timer = Timer::OFF;
                                *this.phase = Phase::Done;
                                return Poll::Ready(result);
                            }
                            Decision::WaitOther => {}
                            Decision::Retry(delay) => {
                                next = Some(delay);
                                break;
                            }
                        }
                    }
                    if let Some(delay) = next {
                        *this.timer = Timer::after(delay);
                        *this.phase = Phase::Waiting;
                        continue;
                    }
                    // Hedging: one attempt in flight, the hedge timer armed.
                    if this.timer.is_on()
                        && (this.primary.is_running()
                            != this.hedge.as_ref().is_some_and(|h| h.is_running()))
                        && this.timer.poll_timer(cx).is_ready()
                    {
                        if this.ctx.attempts >= this.ctx.shared.config.max_attempts {
                            *this.timer = Timer::OFF;
                            return Poll::Pending;
                        }
                        match this.service.poll_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(e)) => {
                                tracing::debug!(error = %e, "retry: inner service not ready for a hedge");
                                *this.timer = Timer::OFF;
                                return Poll::Pending;
                            }
                            Poll::Ready(Ok(())) => {}
                        }
                        *this.timer = Timer::OFF;
                        if !this.ctx.shared.budget.withdraw() {
                            inc(&this.ctx.shared.stats.budget_exhausted);
                            metrics::counter!("stormwall_retry_budget_exhausted_total")
                                .increment(1);
                            return Poll::Pending;
                        }
                        inc(&this.ctx.shared.stats.hedges);
                        metrics::counter!("stormwall_retry_hedges_total").increment(1);
                        let fut = this.service.call(this.ctx.next_request());
                        let slot = this.ctx.start(fut, true);
                        if this.primary.is_running() {
                            *this.hedge = Some(Box::pin(slot));
                        } else {
                            this.primary.set(slot);
                        }
                        continue;
                    }
                    return Poll::Pending;
                }
                Phase::Done => {
                    panic!("ResponseFuture polled after completion");
                }
            }
        }
    }
}
