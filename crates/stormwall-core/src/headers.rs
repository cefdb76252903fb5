//! Peer headers that carry rate-limit and retry information, parsed once and tolerantly.
//!
//! | header | parse | format |
//! |---|---|---|
//! | `Retry-After` (delta-seconds or HTTP-date) | [`RetryAfter::parse`] | [`format_retry_after`] (rounds up: 300 ms → `1`) |
//! | `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10) | [`RateLimitPolicy::parse_all`] | [`RateLimitPolicy::format_all`] |
//! | `RateLimit` (draft-10) | [`RateLimitStatus::parse_all`] | [`RateLimitStatus::format_all`] |
//! | `X-RateLimit-Limit/Remaining/Reset` (legacy) | [`LegacyRateLimit::parse`] | [`LegacyRateLimit::write`] |
//! | `grpc-retry-pushback-ms` | [`GrpcPushback::parse_str`] | [`GrpcPushback::to_header_value`] |
//!
//! [`Pushback::from_headers`] combines them into the one question the layers ask: *how long
//! should the next request to this peer wait?*
//!
//! Every parser is total: malformed, negative, overflowing, non-UTF-8, repeated or huge values
//! are ignored or clamped (to [`MAX_PUSHBACK`]), never a panic.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use stormwall_core::headers::{Pushback, format_retry_after};
//! use stormwall_core::time::system_now;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", format_retry_after(Duration::from_millis(300)));
//! assert_eq!(headers["retry-after"], "1"); // never rounded down to 0
//!
//! headers.insert("ratelimit", r#""default";r=0;t=7"#.parse().unwrap());
//! let pushback = Pushback::from_headers(&headers, system_now());
//! // The longest signal wins: the quota resets in 7 s.
//! assert_eq!(pushback.delay, Some(Duration::from_secs(7)));
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The largest wait any peer header can impose (one day). Larger values are clamped to it.
pub const MAX_PUSHBACK: Duration = Duration::from_secs(86_400);

/// Values longer than this are ignored rather than parsed.
const MAX_FIELD_LEN: usize = 4096;

/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-10).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Legacy `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset`.
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// gRPC `grpc-retry-pushback-ms` (gRFC A6).
pub static GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

fn secs_f64(value: f64) -> Option<Duration> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(value).map_or(MAX_PUSHBACK, |d| d.min(MAX_PUSHBACK)))
}

fn parse_u64_lenient(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 40 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflowing digit strings saturate.
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

fn field_str(value: &HeaderValue) -> Option<&str> {
    if value.len() > MAX_FIELD_LEN {
        return None;
    }
    value.to_str().ok()
}

/// A parsed `Retry-After` value (RFC 9110 §10.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: <delay-seconds>` (clamped to [`MAX_PUSHBACK`]). Fractional seconds, which
    /// some servers send, are accepted.
    Delay(Duration),
    /// `Retry-After: <HTTP-date>`.
    Date(SystemTime),
}

impl RetryAfter {
    /// Parses a `Retry-After` value; `None` when malformed or negative.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_core::headers::RetryAfter;
    /// assert_eq!(RetryAfter::parse_str("120"), Some(RetryAfter::Delay(Duration::from_secs(120))));
    /// assert!(matches!(RetryAfter::parse_str("Wed, 21 Oct 2015 07:28:00 GMT"), Some(RetryAfter::Date(_))));
    /// assert_eq!(RetryAfter::parse_str("-5"), None);
    /// assert_eq!(RetryAfter::parse_str("soon"), None);
    /// ```
    pub fn parse_str(value: &str) -> Option<Self> {
        let value = value.trim();
        if value.is_empty() || value.len() > 64 {
            return None;
        }
        if let Some(secs) = parse_u64_lenient(value) {
            return Some(Self::Delay(Duration::from_secs(secs).min(MAX_PUSHBACK)));
        }
        if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return value
                .parse::<f64>()
                .ok()
                .and_then(secs_f64)
                .map(Self::Delay);
        }
        httpdate::parse_http_date(value).ok().map(Self::Date)
    }

    /// Parses a `Retry-After` header value.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        field_str(value).and_then(Self::parse_str)
    }

    /// The first valid `Retry-After` in `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(http::header::RETRY_AFTER)
            .iter()
            .find_map(Self::parse)
    }

    /// How long to wait from `now` (a date in the past means no wait), clamped to
    /// [`MAX_PUSHBACK`].
    pub fn delay(&self, now: SystemTime) -> Duration {
        match self {
            Self::Delay(d) => *d,
            Self::Date(date) => date
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(MAX_PUSHBACK),
        }
    }
}

/// Formats a wait as `Retry-After` delta-seconds, rounding **up** so that a client that waits
/// the advertised time is admitted (300 ms → `1`, 1.2 s → `2`, zero → `0`).
pub fn format_retry_after(wait: Duration) -> HeaderValue {
    HeaderValue::from(ceil_secs(wait))
}

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// One policy of a `RateLimit-Policy` field (draft-10 §3): `"name";q=100;w=60`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// The policy name (an sf-string).
    pub name: String,
    /// `q`: the quota allocated (required).
    pub quota: u64,
    /// `w`: the window, in seconds.
    pub window: Option<Duration>,
    /// `qu`: the quota unit (`"requests"` when absent).
    pub quota_unit: Option<String>,
    /// `pk`: the partition key (an sf-binary).
    pub partition_key: Option<Vec<u8>>,
}

/// One entry of a `RateLimit` field (draft-10 §4): `"name";r=50;t=30`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// The name of the policy this status is for.
    pub name: String,
    /// `r`: the remaining quota units (required).
    pub remaining: u64,
    /// `t`: seconds until the quota resets.
    pub reset: Option<Duration>,
    /// `pk`: the partition key.
    pub partition_key: Option<Vec<u8>>,
}

fn sf_list(headers: &HeaderMap, name: &HeaderName) -> Vec<sfv::Item> {
    let mut items = Vec::new();
    for value in headers.get_all(name) {
        let Some(s) = field_str(value) else { continue };
        // A malformed field line is ignored as a whole (RFC 9651 §4.2).
        let Ok(list) = sfv::Parser::new(s).parse::<sfv::List>() else {
            continue;
        };
        for entry in list {
            if let sfv::ListEntry::Item(item) = entry {
                items.push(item);
            }
        }
    }
    items
}

fn item_name(item: &sfv::Item) -> Option<String> {
    match &item.bare_item {
        sfv::BareItem::String(s) => Some(s.as_str().to_owned()),
        sfv::BareItem::Token(t) => Some(t.as_str().to_owned()),
        _ => None,
    }
}

fn param_u64(item: &sfv::Item, key: &str) -> Option<u64> {
    let value = item
        .params
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| v)?;
    let n = i64::from(value.as_integer()?);
    u64::try_from(n).ok()
}

fn param_bytes(item: &sfv::Item, key: &str) -> Option<Vec<u8>> {
    item.params
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .and_then(|(_, v)| v.as_byte_sequence().map(<[u8]>::to_vec))
}

fn param_string(item: &sfv::Item, key: &str) -> Option<String> {
    item.params
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .and_then(|(_, v)| v.as_string().map(|s| s.as_str().to_owned()))
}

fn serialize_item(
    ser: &mut sfv::ListSerializer<String>,
    name: &str,
    params: &[(&str, u64)],
    quota_unit: Option<&str>,
    pk: Option<&[u8]>,
) {
    let name =
        sfv::StringRef::from_str(name).unwrap_or_else(|_| sfv::StringRef::constant("default"));
    let mut item = ser.bare_item(name);
    for (k, v) in params {
        let key = sfv::KeyRef::constant(k);
        let v = i64::try_from(*v)
            .ok()
            .and_then(|v| sfv::Integer::try_from(v).ok())
            .unwrap_or(sfv::Integer::MAX);
        item = item.parameter(key, v);
    }
    if let Some(unit) = quota_unit.and_then(|u| sfv::StringRef::from_str(u).ok()) {
        item = item.parameter(sfv::KeyRef::constant("qu"), unit);
    }
    if let Some(pk) = pk {
        let _ = item.parameter(sfv::KeyRef::constant("pk"), pk);
    }
}

impl RateLimitPolicy {
    /// A policy of `quota` units per `window`.
    pub fn new(name: impl Into<String>, quota: u64, window: Duration) -> Self {
        Self {
            name: name.into(),
            quota,
            window: Some(window),
            quota_unit: None,
            partition_key: None,
        }
    }

    /// Every valid policy in the `RateLimit-Policy` fields of `headers`. Entries without the
    /// required `q`, or with a non-string name, are skipped; a malformed field line is ignored.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_core::headers::RateLimitPolicy;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("ratelimit-policy", r#""burst";q=100;w=60, "daily";q=1000;w=86400"#.parse().unwrap());
    /// let p = RateLimitPolicy::parse_all(&h);
    /// assert_eq!(p.len(), 2);
    /// assert_eq!((p[0].quota, p[0].window), (100, Some(Duration::from_secs(60))));
    /// ```
    pub fn parse_all(headers: &HeaderMap) -> Vec<Self> {
        sf_list(headers, &RATELIMIT_POLICY)
            .iter()
            .filter_map(|item| {
                Some(Self {
                    name: item_name(item)?,
                    quota: param_u64(item, "q")?,
                    window: param_u64(item, "w")
                        .map(|w| Duration::from_secs(w).min(MAX_PUSHBACK * 366)),
                    quota_unit: param_string(item, "qu"),
                    partition_key: param_bytes(item, "pk"),
                })
            })
            .collect()
    }

    /// Formats policies as one `RateLimit-Policy` field value. Numbers above the structured-field
    /// integer range (15 digits) are clamped to its maximum.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_core::headers::RateLimitPolicy;
    /// let v = RateLimitPolicy::format_all(&[RateLimitPolicy::new("per-ip", 10, Duration::from_secs(1))]);
    /// assert_eq!(v.unwrap(), r#""per-ip";q=10;w=1"#);
    /// ```
    pub fn format_all(policies: &[Self]) -> Option<HeaderValue> {
        let mut ser = sfv::ListSerializer::new();
        for p in policies {
            let mut params = vec![("q", p.quota)];
            if let Some(w) = p.window {
                params.push(("w", ceil_secs(w)));
            }
            serialize_item(
                &mut ser,
                &p.name,
                &params,
                p.quota_unit.as_deref(),
                p.partition_key.as_deref(),
            );
        }
        ser.finish().and_then(|s| HeaderValue::from_str(&s).ok())
    }
}

impl RateLimitStatus {
    /// A status: `remaining` units left, resetting in `reset`.
    pub fn new(name: impl Into<String>, remaining: u64, reset: Duration) -> Self {
        Self {
            name: name.into(),
            remaining,
            reset: Some(reset),
            partition_key: None,
        }
    }

    /// Every valid entry in the `RateLimit` fields of `headers`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_core::headers::RateLimitStatus;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("ratelimit", r#""default";r=0;t=30"#.parse().unwrap());
    /// let s = RateLimitStatus::parse_all(&h);
    /// assert_eq!((s[0].remaining, s[0].reset), (0, Some(Duration::from_secs(30))));
    /// ```
    pub fn parse_all(headers: &HeaderMap) -> Vec<Self> {
        sf_list(headers, &RATELIMIT)
            .iter()
            .filter_map(|item| {
                Some(Self {
                    name: item_name(item)?,
                    remaining: param_u64(item, "r")?,
                    reset: param_u64(item, "t").map(|t| Duration::from_secs(t).min(MAX_PUSHBACK)),
                    partition_key: param_bytes(item, "pk"),
                })
            })
            .collect()
    }

    /// Formats statuses as one `RateLimit` field value (`t` rounded up to whole seconds).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_core::headers::RateLimitStatus;
    /// let v = RateLimitStatus::format_all(&[RateLimitStatus::new("per-ip", 3, Duration::from_millis(200))]);
    /// assert_eq!(v.unwrap(), r#""per-ip";r=3;t=1"#);
    /// ```
    pub fn format_all(statuses: &[Self]) -> Option<HeaderValue> {
        let mut ser = sfv::ListSerializer::new();
        for s in statuses {
            let mut params = vec![("r", s.remaining)];
            if let Some(t) = s.reset {
                params.push(("t", ceil_secs(t)));
            }
            serialize_item(&mut ser, &s.name, &params, None, s.partition_key.as_deref());
        }
        ser.finish().and_then(|s| HeaderValue::from_str(&s).ok())
    }
}

/// The legacy `X-RateLimit-Limit`, `-Remaining` and `-Reset` headers.
///
/// `X-RateLimit-Reset` is sent by some APIs as seconds until reset and by others (GitHub) as a
/// Unix timestamp; values above one billion are read as timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LegacyRateLimit {
    /// `X-RateLimit-Limit`.
    pub limit: Option<u64>,
    /// `X-RateLimit-Remaining`.
    pub remaining: Option<u64>,
    /// `X-RateLimit-Reset`, as a wait from `now`.
    pub reset: Option<Duration>,
}

impl LegacyRateLimit {
    /// Parses the legacy headers; `None` if none of them is present and valid.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// use stormwall_core::headers::LegacyRateLimit;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("x-ratelimit-remaining", "0".parse().unwrap());
    /// h.insert("x-ratelimit-reset", "1700000060".parse().unwrap()); // a Unix timestamp
    /// let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// let l = LegacyRateLimit::parse(&h, now).unwrap();
    /// assert_eq!((l.remaining, l.reset), (Some(0), Some(Duration::from_secs(60))));
    /// ```
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Self> {
        let num = |name: &HeaderName| {
            headers
                .get(name)
                .and_then(field_str)
                .and_then(parse_u64_lenient)
        };
        let reset = headers
            .get(&X_RATELIMIT_RESET)
            .and_then(field_str)
            .and_then(|s| {
                let s = s.trim();
                if let Some(n) = parse_u64_lenient(s) {
                    if n > 1_000_000_000 {
                        let at = UNIX_EPOCH.checked_add(Duration::from_secs(n))?;
                        return Some(
                            at.duration_since(now)
                                .unwrap_or(Duration::ZERO)
                                .min(MAX_PUSHBACK),
                        );
                    }
                    return Some(Duration::from_secs(n).min(MAX_PUSHBACK));
                }
                s.parse::<f64>().ok().and_then(secs_f64)
            });
        let parsed = Self {
            limit: num(&X_RATELIMIT_LIMIT),
            remaining: num(&X_RATELIMIT_REMAINING),
            reset,
        };
        (parsed != Self::default()).then_some(parsed)
    }

    /// Writes the legacy headers (reset as delta-seconds, rounded up).
    pub fn write(&self, headers: &mut HeaderMap) {
        if let Some(limit) = self.limit {
            headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(limit));
        }
        if let Some(remaining) = self.remaining {
            headers.insert(X_RATELIMIT_REMAINING.clone(), HeaderValue::from(remaining));
        }
        if let Some(reset) = self.reset {
            headers.insert(
                X_RATELIMIT_RESET.clone(),
                HeaderValue::from(ceil_secs(reset)),
            );
        }
    }
}

/// gRPC's `grpc-retry-pushback-ms` trailer (gRFC A6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcPushback {
    /// Retry after this long (clamped to [`MAX_PUSHBACK`]).
    After(Duration),
    /// A negative or unparseable value: the server asks not to retry.
    DoNotRetry,
}

impl GrpcPushback {
    /// Parses the value of `grpc-retry-pushback-ms`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stormwall_core::headers::GrpcPushback;
    /// assert_eq!(GrpcPushback::parse_str("250"), GrpcPushback::After(Duration::from_millis(250)));
    /// assert_eq!(GrpcPushback::parse_str("-1"), GrpcPushback::DoNotRetry);
    /// assert_eq!(GrpcPushback::parse_str("abc"), GrpcPushback::DoNotRetry);
    /// ```
    pub fn parse_str(value: &str) -> Self {
        match parse_u64_lenient(value) {
            Some(ms) => Self::After(Duration::from_millis(ms).min(MAX_PUSHBACK)),
            None => Self::DoNotRetry,
        }
    }

    /// Parses the `grpc-retry-pushback-ms` entry of `headers` (or trailers), if present.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get(&GRPC_RETRY_PUSHBACK_MS)
            .map(|v| field_str(v).map_or(Self::DoNotRetry, Self::parse_str))
    }

    /// The header value for this pushback (`-1` for [`GrpcPushback::DoNotRetry`]).
    pub fn to_header_value(&self) -> HeaderValue {
        match self {
            Self::After(d) => HeaderValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Self::DoNotRetry => HeaderValue::from_static("-1"),
        }
    }
}

/// Everything a peer said about when to send the next request, combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushback {
    /// How long to wait before the next request: the longest of `Retry-After`, the reset of
    /// an exhausted `RateLimit` entry (`r=0`) or of an exhausted legacy quota
    /// (`X-RateLimit-Remaining: 0`), and `grpc-retry-pushback-ms`.
    pub delay: Option<Duration>,
    /// The most restrictive remaining quota the peer advertised, with its reset.
    pub remaining: Option<(u64, Option<Duration>)>,
    /// The peer asked not to retry (negative/unparseable `grpc-retry-pushback-ms`).
    pub do_not_retry: bool,
}

impl Pushback {
    /// Reads every pushback signal in `headers` (response headers or trailers).
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Self {
        let mut out = Self::default();
        let mut longest = |d: Duration| {
            out.delay = Some(out.delay.map_or(d, |cur| cur.max(d)));
        };
        if let Some(ra) = RetryAfter::from_headers(headers) {
            longest(ra.delay(now));
        }
        match GrpcPushback::from_headers(headers) {
            Some(GrpcPushback::After(d)) => longest(d),
            Some(GrpcPushback::DoNotRetry) => out.do_not_retry = true,
            None => {}
        }
        let mut remaining: Option<(u64, Option<Duration>)> = None;
        let mut consider = |r: u64, reset: Option<Duration>| {
            let better = match remaining {
                None => true,
                Some((cur, cur_reset)) => r < cur || (r == cur && reset > cur_reset),
            };
            if better {
                remaining = Some((r, reset));
            }
        };
        for status in RateLimitStatus::parse_all(headers) {
            consider(status.remaining, status.reset);
        }
        if let Some(legacy) = LegacyRateLimit::parse(headers, now)
            && let Some(r) = legacy.remaining
        {
            consider(r, legacy.reset);
        }
        if let Some((0, Some(reset))) = remaining {
            longest(reset);
        }
        out.remaining = remaining;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn retry_after_seconds_date_and_garbage() {
        let now = SystemTime::now();
        assert_eq!(
            RetryAfter::parse_str(" 2 ").map(|r| r.delay(now)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            RetryAfter::parse_str("0.25").map(|r| r.delay(now)),
            Some(Duration::from_millis(250))
        );
        let in_ten = now + Duration::from_secs(10);
        let date = httpdate::fmt_http_date(in_ten);
        let d = RetryAfter::parse_str(&date).unwrap().delay(now);
        assert!(
            d <= Duration::from_secs(10) && d >= Duration::from_secs(9),
            "{d:?}"
        );
        // A date in the past means "now".
        let past = httpdate::fmt_http_date(now - Duration::from_secs(100));
        assert_eq!(
            RetryAfter::parse_str(&past).unwrap().delay(now),
            Duration::ZERO
        );
        for bad in ["", "-1", "1e9", "NaN", "inf", "2 s", "tomorrow", "1.2.3"] {
            assert_eq!(RetryAfter::parse_str(bad), None, "{bad:?}");
        }
        // Overflow clamps.
        assert_eq!(
            RetryAfter::parse_str("99999999999999999999999999")
                .unwrap()
                .delay(now),
            MAX_PUSHBACK
        );
        // Repeated headers: the first valid one.
        let m = h(&[("retry-after", "x"), ("retry-after", "3")]);
        assert_eq!(
            RetryAfter::from_headers(&m),
            Some(RetryAfter::Delay(Duration::from_secs(3)))
        );
        // Non-UTF-8 is ignored.
        let mut m = HeaderMap::new();
        m.insert("retry-after", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(RetryAfter::from_headers(&m), None);
    }

    #[test]
    fn retry_after_formats_rounding_up() {
        assert_eq!(format_retry_after(Duration::ZERO), "0");
        assert_eq!(format_retry_after(Duration::from_nanos(1)), "1");
        assert_eq!(format_retry_after(Duration::from_millis(1000)), "1");
        assert_eq!(format_retry_after(Duration::from_millis(1001)), "2");
    }

    #[test]
    fn draft10_fields_parse_and_tolerate_junk() {
        let m = h(&[
            (
                "ratelimit-policy",
                r#""a";q=10;w=1;qu="requests", "b";q=5, tok;q=1, "noq";w=3"#,
            ),
            ("ratelimit", r#""a";r=3;t=1;pk=:AQID:, "b";r=-1, "c";r=0"#),
        ]);
        let p = RateLimitPolicy::parse_all(&m);
        assert_eq!(p.len(), 3, "{p:?}"); // "noq" lacks q
        assert_eq!(p[0].quota_unit.as_deref(), Some("requests"));
        assert_eq!(p[1].window, None);
        assert_eq!(p[2].name, "tok");
        let s = RateLimitStatus::parse_all(&m);
        assert_eq!(s.len(), 2, "{s:?}"); // r=-1 rejected
        assert_eq!(s[0].partition_key.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(s[1].reset, None);
        // A malformed line is ignored, the valid one kept.
        let m = h(&[("ratelimit", "\"x\";r=1;;;"), ("ratelimit", r#""y";r=2"#)]);
        let s = RateLimitStatus::parse_all(&m);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "y");
    }

    #[test]
    fn legacy_reset_delta_and_epoch() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let m = h(&[
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "7"),
            ("x-ratelimit-reset", "30"),
        ]);
        let l = LegacyRateLimit::parse(&m, now).unwrap();
        assert_eq!(l.limit, Some(100));
        assert_eq!(l.remaining, Some(7));
        assert_eq!(l.reset, Some(Duration::from_secs(30)));
        let m = h(&[("x-ratelimit-reset", "1999999990")]);
        assert_eq!(
            LegacyRateLimit::parse(&m, now).unwrap().reset,
            Some(Duration::ZERO)
        );
        let m = h(&[("x-ratelimit-remaining", "-3")]);
        assert_eq!(LegacyRateLimit::parse(&m, now), None);
        let mut out = HeaderMap::new();
        LegacyRateLimit {
            limit: Some(10),
            remaining: Some(0),
            reset: Some(Duration::from_millis(10)),
        }
        .write(&mut out);
        assert_eq!(out["x-ratelimit-reset"], "1");
    }

    #[test]
    fn grpc_pushback() {
        let m = h(&[("grpc-retry-pushback-ms", "1500")]);
        assert_eq!(
            GrpcPushback::from_headers(&m),
            Some(GrpcPushback::After(Duration::from_millis(1500)))
        );
        assert_eq!(GrpcPushback::parse_str(""), GrpcPushback::DoNotRetry);
        assert_eq!(
            GrpcPushback::parse_str("99999999999999999999999"),
            GrpcPushback::After(MAX_PUSHBACK)
        );
        assert_eq!(GrpcPushback::DoNotRetry.to_header_value(), "-1");
    }

    #[test]
    fn pushback_combines_signals() {
        let now = SystemTime::now();
        let m = h(&[
            ("retry-after", "2"),
            ("ratelimit", r#""a";r=5;t=60, "b";r=0;t=9"#),
        ]);
        let p = Pushback::from_headers(&m, now);
        assert_eq!(p.delay, Some(Duration::from_secs(9)));
        assert_eq!(p.remaining, Some((0, Some(Duration::from_secs(9)))));
        let m = h(&[("x-ratelimit-remaining", "4"), ("x-ratelimit-reset", "3")]);
        let p = Pushback::from_headers(&m, now);
        assert_eq!(p.delay, None);
        assert_eq!(p.remaining, Some((4, Some(Duration::from_secs(3)))));
        let m = h(&[("grpc-retry-pushback-ms", "-5")]);
        assert!(Pushback::from_headers(&m, now).do_not_retry);
        assert_eq!(
            Pushback::from_headers(&HeaderMap::new(), now),
            Pushback::default()
        );
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 _./-]{0,16}"
    }

    proptest! {
        #[test]
        fn retry_after_round_trips(ms in 0u64..MAX_PUSHBACK.as_millis() as u64) {
            let d = Duration::from_millis(ms);
            let v = format_retry_after(d);
            let back = RetryAfter::parse(&v).unwrap().delay(SystemTime::now());
            prop_assert!(back >= d, "{back:?} < {d:?}");
            prop_assert!(back - d < Duration::from_secs(1));
        }

        #[test]
        fn policy_round_trips(name in name_strategy(), q in 0u64..=999_999_999_999_999, w in 0u64..86_400, pk in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)), unit in proptest::option::of("[a-z]{1,10}")) {
            let mut p = RateLimitPolicy::new(name, q, Duration::from_secs(w));
            p.partition_key = pk;
            p.quota_unit = unit;
            let v = RateLimitPolicy::format_all(std::slice::from_ref(&p)).unwrap();
            let mut m = HeaderMap::new();
            m.insert(RATELIMIT_POLICY.clone(), v);
            prop_assert_eq!(RateLimitPolicy::parse_all(&m), vec![p]);
        }

        #[test]
        fn status_round_trips(name in name_strategy(), r in 0u64..1_000_000_000, t in 0u64..86_400) {
            let s = RateLimitStatus::new(name, r, Duration::from_secs(t));
            let v = RateLimitStatus::format_all(std::slice::from_ref(&s)).unwrap();
            let mut m = HeaderMap::new();
            m.insert(RATELIMIT.clone(), v);
            prop_assert_eq!(RateLimitStatus::parse_all(&m), vec![s]);
        }

        #[test]
        fn grpc_pushback_round_trips(ms in 0u64..MAX_PUSHBACK.as_millis() as u64) {
            let p = GrpcPushback::After(Duration::from_millis(ms));
            prop_assert_eq!(GrpcPushback::parse_str(p.to_header_value().to_str().unwrap()), p);
        }

        #[test]
        fn hostile_values_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                let mut m = HeaderMap::new();
                for name in [&http::header::RETRY_AFTER, &RATELIMIT, &RATELIMIT_POLICY, &X_RATELIMIT_RESET, &X_RATELIMIT_REMAINING, &GRPC_RETRY_PUSHBACK_MS] {
                    m.append(name.clone(), v.clone());
                }
                let p = Pushback::from_headers(&m, SystemTime::now());
                prop_assert!(p.delay.unwrap_or_default() <= MAX_PUSHBACK);
                let _ = RateLimitPolicy::parse_all(&m);
            }
        }
    }
}
