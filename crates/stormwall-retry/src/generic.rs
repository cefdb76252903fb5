//! Generic (non-HTTP) mode: any request type, a user policy decides.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use stormwall_core::time::{Instant, saturating_add};
use tokio::time::{Sleep, Timeout};
use tower_layer::Layer;
use tower_service::Service;

use crate::backoff::JitterRng;
use crate::error::RetryError;
use crate::layer::RetryLayer;
use crate::service::Shared;
use crate::stats::{RetryStats, inc};

/// What a [`RetryPolicy`] says about one attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A success: return it (and deposit into the budget).
    Success,
    /// A transient failure: retry, after `after` if the peer said so (else after the backoff).
    Retry {
        /// A server-provided delay (clamped to the layer's max pushback).
        after: Option<Duration>,
    },
    /// A permanent failure: return it as is.
    Fail,
}

/// Decides, in generic mode, whether an outcome is retried and how to copy a request.
///
/// Closures `Fn(&Result<Res, E>) -> Verdict` are policies for `Req: Clone`.
///
/// ```
/// use std::time::Duration;
/// use stormwall_retry::{RetryPolicy, Verdict};
///
/// /// Retries `Busy(ms)` after the delay the server asked for; never retries `Invalid`.
/// #[derive(Clone)]
/// struct Db;
/// #[derive(Debug)]
/// enum DbError { Busy(u64), Invalid }
///
/// impl RetryPolicy<String, u64, DbError> for Db {
///     fn classify(&self, result: &Result<u64, DbError>) -> Verdict {
///         match result {
///             Ok(_) => Verdict::Success,
///             Err(DbError::Busy(ms)) => Verdict::Retry { after: Some(Duration::from_millis(*ms)) },
///             Err(DbError::Invalid) => Verdict::Fail,
///         }
///     }
///     fn clone_request(&self, query: &String) -> Option<String> {
///         Some(query.clone())
///     }
/// }
/// assert_eq!(Db.classify(&Err(DbError::Invalid)), Verdict::Fail);
/// ```
pub trait RetryPolicy<Req, Res, E> {
    /// Judges the outcome of one attempt.
    fn classify(&self, result: &Result<Res, E>) -> Verdict;

    /// A copy of `req` for a later attempt; `None` means "cannot replay": sent once.
    fn clone_request(&self, req: &Req) -> Option<Req>;
}

impl<Req, Res, E, F> RetryPolicy<Req, Res, E> for F
where
    Req: Clone,
    F: Fn(&Result<Res, E>) -> Verdict,
{
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        self(result)
    }

    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// A [`Layer`] for the generic mode; see [`RetryLayer::policy`].
///
/// It uses the attempts, backoff, timeouts, deadline, max pushback, budget and stats of the
/// [`RetryLayer`] it was made from (the HTTP-only settings are ignored; no hedging).
#[derive(Debug, Clone)]
pub struct GenericRetryLayer<P> {
    layer: RetryLayer,
    policy: P,
}

impl RetryLayer {
    /// Switches to the generic (non-HTTP) mode: any `Service<Req>`, with `policy` deciding
    /// what is retried.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_retry::{Backoff, RetryBudget, RetryLayer, Verdict};
    /// use tower::{Layer, Service, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    /// let c = calls.clone();
    /// let flaky = service_fn(move |x: u32| {
    ///     let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ///     async move { if n == 0 { Err("blip") } else { Ok(x * 2) } }
    /// });
    /// let layer = RetryLayer::new()
    ///     .backoff(Backoff::fixed(Duration::from_millis(10)))
    ///     .budget(RetryBudget::unlimited())
    ///     .policy(|r: &Result<u32, &str>| match r {
    ///         Ok(_) => Verdict::Success,
    ///         Err(_) => Verdict::Retry { after: None },
    ///     });
    /// let mut svc = layer.layer(flaky);
    /// assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
    /// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    /// # }
    /// ```
    pub fn policy<P>(self, policy: P) -> GenericRetryLayer<P> {
        GenericRetryLayer {
            layer: self,
            policy,
        }
    }
}

impl<P> GenericRetryLayer<P> {
    /// A snapshot of the counters of every service built by this layer.
    pub fn stats(&self) -> RetryStats {
        self.layer.stats()
    }
}

impl<P: Clone, S> Layer<S> for GenericRetryLayer<P> {
    type Service = GenericRetry<P, S>;

    fn layer(&self, inner: S) -> Self::Service {
        GenericRetry {
            inner,
            policy: self.policy.clone(),
            shared: Arc::new(Shared {
                config: self.layer.config.clone(),
                budget: self.layer.budget.clone(),
                stats: self.layer.stats.clone(),
            }),
        }
    }
}

/// The generic-mode retry service (see [`RetryLayer::policy`]).
#[derive(Clone)]
pub struct GenericRetry<P, S> {
    inner: S,
    policy: P,
    shared: Arc<Shared>,
}

impl<P, S: fmt::Debug> fmt::Debug for GenericRetry<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericRetry")
            .field("inner", &self.inner)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<P, S> GenericRetry<P, S> {
    /// A snapshot of the counters (shared with the layer and every clone).
    pub fn stats(&self) -> RetryStats {
        self.shared.stats.snapshot()
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<P, S, Req> Service<Req> for GenericRetry<P, S>
where
    P: RetryPolicy<Req, S::Response, S::Error> + Clone,
    S: Service<Req> + Clone,
{
    type Response = S::Response;
    type Error = RetryError<S::Error>;
    type Future = GenericResponseFuture<P, S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| RetryError::inner(e, 0))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        inc(&self.shared.stats.requests);
        metrics::counter!("stormwall_retry_requests_total").increment(1);
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        let config = &self.shared.config;
        let deadline = config.deadline.map(|d| saturating_add(Instant::now(), d));
        let seed = self.shared.stats.next_seed();
        GenericResponseFuture {
            attempt: Attempt::Idle,
            timer: None,
            service,
            policy: self.policy.clone(),
            shared: self.shared.clone(),
            req: Some(req),
            attempts: 0,
            retries: 0,
            prev_delay: Duration::ZERO,
            rng: JitterRng::new(seed),
            deadline,
        }
    }
}

pin_project! {
    #[project = AttemptProj]
    enum Attempt<F> {
        Idle,
        Plain { #[pin] fut: F },
        Timed { #[pin] fut: Timeout<F> },
    }
}

pin_project! {
    /// The response future of [`GenericRetry`].
    pub struct GenericResponseFuture<P, S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        attempt: Attempt<S::Future>,
        timer: Option<Pin<Box<Sleep>>>,
        service: S,
        policy: P,
        shared: Arc<Shared>,
        req: Option<Req>,
        attempts: u32,
        retries: u32,
        prev_delay: Duration,
        rng: JitterRng,
        deadline: Option<Instant>,
    }
}

impl<P, S, Req> fmt::Debug for GenericResponseFuture<P, S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenericResponseFuture")
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<P, S, Req> Future for GenericResponseFuture<P, S, Req>
where
    P: RetryPolicy<Req, S::Response, S::Error>,
    S: Service<Req>,
{
    type Output = Result<S::Response, RetryError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(sleep) = this.timer.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                *this.timer = None;
            }
            let out = match this.attempt.as_mut().project() {
                AttemptProj::Idle => {
                    if let Err(e) = ready!(this.service.poll_ready(cx)) {
                        return Poll::Ready(Err(RetryError::inner(e, *this.attempts)));
                    }
                    let config = &this.shared.config;
                    let Some(original) = this.req.take() else {
                        // Unreachable: a request is kept for every attempt we start.
                        return Poll::Ready(Err(RetryError::deadline(*this.attempts)));
                    };
                    let req = if *this.attempts + 1 < config.max_attempts {
                        match this.policy.clone_request(&original) {
                            Some(copy) => {
                                *this.req = Some(copy);
                                original
                            }
                            None => original,
                        }
                    } else {
                        original
                    };
                    *this.attempts += 1;
                    inc(&this.shared.stats.attempts);
                    tracing::debug!(attempt = *this.attempts, "retry: sending attempt");
                    let fut = this.service.call(req);
                    let until = match (config.attempt_timeout, *this.deadline) {
                        (Some(t), Some(d)) => Some(saturating_add(Instant::now(), t).min(d)),
                        (Some(t), None) => Some(saturating_add(Instant::now(), t)),
                        (None, d) => d,
                    };
                    this.attempt.set(match until {
                        Some(at) => Attempt::Timed {
                            fut: tokio::time::timeout_at(at, fut),
                        },
                        None => Attempt::Plain { fut },
                    });
                    continue;
                }
                AttemptProj::Plain { fut } => Some(ready!(fut.poll(cx))),
                AttemptProj::Timed { fut } => ready!(fut.poll(cx)).ok(),
            };
            this.attempt.set(Attempt::Idle);
            let attempts = *this.attempts;
            let config = &this.shared.config;
            let verdict = match &out {
                Some(result) => this.policy.classify(result),
                None => {
                    if this.deadline.is_some_and(|d| Instant::now() >= d) {
                        return Poll::Ready(Err(RetryError::deadline(attempts)));
                    }
                    inc(&this.shared.stats.attempt_timeouts);
                    Verdict::Retry { after: None }
                }
            };
            let finish = |out: Option<Result<S::Response, S::Error>>| {
                metrics::histogram!("stormwall_retry_attempts").record(f64::from(attempts));
                Poll::Ready(match out {
                    Some(Ok(res)) => Ok(res),
                    Some(Err(e)) => Err(RetryError::inner(e, attempts)),
                    None => Err(RetryError::attempt_timeout(attempts)),
                })
            };
            let after = match verdict {
                Verdict::Success => {
                    this.shared.budget.deposit();
                    inc(&this.shared.stats.successes);
                    return finish(out);
                }
                Verdict::Fail => return finish(out),
                Verdict::Retry { after } => after,
            };
            if this.req.is_none() || attempts >= config.max_attempts {
                return finish(out);
            }
            let delay = match after {
                Some(p) => p.min(config.max_pushback),
                None => config
                    .backoff
                    .delay(*this.retries + 1, *this.prev_delay, this.rng),
            };
            if let Some(deadline) = *this.deadline
                && saturating_add(Instant::now(), delay) >= deadline
            {
                inc(&this.shared.stats.deadline_stops);
                return finish(out);
            }
            if !this.shared.budget.withdraw() {
                inc(&this.shared.stats.budget_exhausted);
                metrics::counter!("stormwall_retry_budget_exhausted_total").increment(1);
                return finish(out);
            }
            *this.retries += 1;
            *this.prev_delay = delay;
            inc(&this.shared.stats.retries);
            metrics::counter!("stormwall_retry_retries_total", "reason" => "policy").increment(1);
            tracing::debug!(retry = *this.retries, ?delay, "retry: backing off");
            if !delay.is_zero() {
                *this.timer = Some(Box::pin(tokio::time::sleep_until(saturating_add(
                    Instant::now(),
                    delay,
                ))));
            }
        }
    }
}
