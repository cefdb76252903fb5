//! Rejections and the rate-limit response headers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use stormwall_core::headers::{
    GRPC_RETRY_PUSHBACK_MS, LegacyRateLimit, RATELIMIT, RATELIMIT_POLICY, RateLimitPolicy,
    RateLimitStatus, ceil_secs, format_retry_after,
};
use stormwall_core::response::ResponseBody;

use crate::algorithm::Decision;
use crate::limit::Limit;

/// Why a request was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// A limit has no quota left (reject mode), or the upstream asked to back off.
    Limited,
    /// Wait mode: the earliest admission is later than the maximum wait.
    WaitTooLong,
    /// Wait mode: the wait queue is full.
    QueueFull,
    /// The store is full and refuses new keys.
    KeyCapacity,
    /// The store failed and the failure policy is [`FailurePolicy::Closed`](crate::FailurePolicy::Closed).
    StoreFailure,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Limited => "rate limit exceeded",
            Self::WaitTooLong => "rate limit exceeded: the wait for quota exceeds the maximum wait",
            Self::QueueFull => "rate limit exceeded: the wait queue is full",
            Self::KeyCapacity => "rate limit exceeded: too many distinct clients",
            Self::StoreFailure => "rate limiter unavailable",
        })
    }
}

/// Everything about a rejection, handed to a custom rejection response
/// ([`RateLimitLayer::on_reject`](crate::RateLimitLayer::on_reject)).
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Why.
    pub reason: RejectReason,
    /// The earliest time the request would be admitted (exact; `Retry-After` rounds it up).
    pub retry_after: Duration,
    /// The store's decision, when there was one.
    pub decision: Option<Decision>,
    /// The name of the limit that rejected, when known.
    pub limit: Option<Arc<str>>,
    /// The headers the default response carries (`Retry-After`, `RateLimit-Policy`,
    /// `RateLimit`, legacy `X-RateLimit-*` if enabled).
    pub headers: HeaderMap,
}

/// Which rate-limit headers the layer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderOptions {
    pub(crate) draft: bool,
    pub(crate) legacy: bool,
    pub(crate) on_admitted: bool,
}

pub(crate) fn quota_headers(
    headers: &mut HeaderMap,
    name: &str,
    d: &Decision,
    opts: HeaderOptions,
    overwrite: bool,
    cache: Option<&Limit>,
) {
    if d.limit == u64::MAX {
        return;
    }
    let mut put = |k: &http::HeaderName, v: Option<HeaderValue>| {
        if let Some(v) = v {
            if overwrite {
                headers.insert(k.clone(), v);
            } else if let http::header::Entry::Vacant(e) = headers.entry(k.clone()) {
                e.insert(v);
            }
        }
    };
    if opts.draft {
        if simple_name(name) && d.limit <= SF_INT_MAX && d.remaining <= SF_INT_MAX {
            // The same bytes as the core's formatters, without a structured-field serializer
            // (or `core::fmt`) on the hot path (see the `fast_headers_match_the_core_formatters`
            // test). The policy only changes with the quota: rendered once per quota.
            let w = ceil_secs(d.period);
            let t = ceil_secs(d.reset);
            let policy = || sf_item(name, (b'q', d.limit), (b'w', w));
            let policy = match cache {
                Some(limit) => limit.policy_value(d.limit, d.period, policy),
                None => policy(),
            };
            put(&RATELIMIT_POLICY, policy);
            put(&RATELIMIT, sf_item(name, (b'r', d.remaining), (b't', t)));
        } else {
            put(
                &RATELIMIT_POLICY,
                RateLimitPolicy::format_all(&[RateLimitPolicy::new(name, d.limit, d.period)]),
            );
            put(
                &RATELIMIT,
                RateLimitStatus::format_all(&[RateLimitStatus::new(name, d.remaining, d.reset)]),
            );
        }
    }
    if opts.legacy && (overwrite || !headers.contains_key("x-ratelimit-limit")) {
        LegacyRateLimit {
            limit: Some(d.limit),
            remaining: Some(d.remaining),
            reset: Some(Duration::from_secs(ceil_secs(d.reset))),
        }
        .write(headers);
    }
}

/// `"name";a=1;b=2`, written on the stack (one allocation: the header value itself).
fn sf_item(name: &str, a: (u8, u64), b: (u8, u64)) -> Option<HeaderValue> {
    let mut buf = [0u8; 128];
    let mut n = 0;
    let mut push = |bytes: &[u8]| {
        let end = n + bytes.len();
        let dst = buf.get_mut(n..end)?;
        dst.copy_from_slice(bytes);
        n = end;
        Some(())
    };
    let mut digits = [0u8; 20];
    let short = (|| {
        push(b"\"")?;
        push(name.as_bytes())?;
        push(b"\";")?;
        push(&[a.0, b'='])?;
        push(itoa(a.1, &mut digits))?;
        push(&[b';', b.0, b'='])?;
        push(itoa(b.1, &mut digits))
    })();
    match short {
        Some(()) => HeaderValue::from_bytes(&buf[..n]).ok(),
        None => HeaderValue::try_from(format!(
            "\"{name}\";{}={};{}={}",
            char::from(a.0),
            a.1,
            char::from(b.0),
            b.1
        ))
        .ok(),
    }
}

/// The decimal digits of `v`.
fn itoa(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// The largest structured-field integer (RFC 9651).
const SF_INT_MAX: u64 = 999_999_999_999_999;

/// A name that serializes as an sf-string without escapes.
fn simple_name(name: &str) -> bool {
    name.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

pub(crate) fn rejection(
    reason: RejectReason,
    retry_after: Duration,
    decision: Option<Decision>,
    limit: Option<Arc<str>>,
    opts: HeaderOptions,
) -> Rejection {
    let mut headers = HeaderMap::new();
    if retry_after != Duration::MAX {
        headers.insert(RETRY_AFTER, format_retry_after(retry_after));
    }
    if let (Some(d), Some(name)) = (&decision, &limit) {
        quota_headers(&mut headers, name, d, opts, true, None);
    }
    Rejection {
        reason,
        retry_after,
        decision,
        limit,
        headers,
    }
}

pub(crate) type RejectFn = dyn Fn(&Rejection) -> Response<Bytes> + Send + Sync;

pub(crate) fn reject_response<B>(
    rejection: &Rejection,
    grpc: bool,
    custom: Option<&Arc<RejectFn>>,
) -> Response<ResponseBody<B>> {
    if grpc {
        let mut res = Response::new(ResponseBody::empty());
        let h = res.headers_mut();
        h.extend(rejection.headers.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("8"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("rate%20limit%20exceeded"),
        );
        if rejection.retry_after != Duration::MAX {
            let ms = u64::try_from(rejection.retry_after.as_millis()).unwrap_or(u64::MAX);
            let ms = ms
                + u64::from(
                    !rejection
                        .retry_after
                        .subsec_nanos()
                        .is_multiple_of(1_000_000),
                );
            h.insert(GRPC_RETRY_PUSHBACK_MS.clone(), HeaderValue::from(ms));
        }
        return res;
    }
    if let Some(f) = custom {
        let res = f(rejection);
        let (mut parts, body) = res.into_parts();
        for (k, v) in &rejection.headers {
            if !parts.headers.contains_key(k) {
                parts.headers.insert(k.clone(), v.clone());
            }
        }
        return Response::from_parts(parts, ResponseBody::full(body));
    }
    let status = match rejection.reason {
        RejectReason::StoreFailure => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::TOO_MANY_REQUESTS,
    };
    let body = match rejection.retry_after {
        Duration::MAX => format!("{}\n", rejection.reason),
        d => format!("{}; retry in {} s\n", rejection.reason, ceil_secs(d)),
    };
    let mut res = Response::new(ResponseBody::full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.extend(rejection.headers.clone());
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A response extension: how long the rate limiter held this request before sending it.
/// Present only when the request waited (absent means zero, which keeps the admitted fast
/// path free of an extension allocation). Layers timing the call (e.g. a circuit breaker's
/// slow-call clock) can subtract it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitWait(pub Duration);

/// A response extension on rejections: the rejection reason and the earliest admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// Why.
    pub reason: RejectReason,
    /// When the request would be admitted.
    pub retry_after: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_headers_match_the_core_formatters() {
        let opts = HeaderOptions {
            draft: true,
            legacy: false,
            on_admitted: true,
        };
        for (name, limit, period, remaining, reset) in [
            (
                "per-ip",
                10,
                Duration::from_secs(1),
                3,
                Duration::from_millis(200),
            ),
            (
                "a b_c.d",
                1_000_000,
                Duration::from_millis(1500),
                0,
                Duration::ZERO,
            ),
            (
                "x",
                1,
                Duration::from_secs(3600),
                1,
                Duration::from_nanos(1),
            ),
        ] {
            let d = Decision {
                allowed: true,
                limit,
                period,
                remaining,
                reset,
                retry_after: Duration::ZERO,
                delay: Duration::ZERO,
                index: 0,
            };
            let mut h = HeaderMap::new();
            quota_headers(&mut h, name, &d, opts, true, None);
            assert_eq!(
                Some(&h[&RATELIMIT_POLICY]),
                RateLimitPolicy::format_all(&[RateLimitPolicy::new(name, limit, period)]).as_ref()
            );
            assert_eq!(
                Some(&h[&RATELIMIT]),
                RateLimitStatus::format_all(&[RateLimitStatus::new(name, remaining, reset)])
                    .as_ref()
            );
        }
        // A name too long for the stack buffer takes the allocating fallback, same bytes.
        let long = "n".repeat(150);
        let d = Decision {
            allowed: true,
            limit: u64::from(u32::MAX),
            period: Duration::from_secs(60),
            remaining: 123_456,
            reset: Duration::from_millis(2500),
            retry_after: Duration::ZERO,
            delay: Duration::ZERO,
            index: 0,
        };
        let mut h = HeaderMap::new();
        quota_headers(&mut h, &long, &d, opts, true, None);
        assert_eq!(
            Some(&h[&RATELIMIT]),
            RateLimitStatus::format_all(&[RateLimitStatus::new(&long, 123_456, d.reset)]).as_ref()
        );
        // Names that need escaping go through the core's serializer.
        let mut h = HeaderMap::new();
        let d = Decision {
            allowed: true,
            limit: 1,
            period: Duration::from_secs(1),
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
            delay: Duration::ZERO,
            index: 0,
        };
        quota_headers(&mut h, "a\"b", &d, opts, true, None);
        assert_eq!(h[&RATELIMIT_POLICY], r#""a\"b";q=1;w=1"#);
    }
}
