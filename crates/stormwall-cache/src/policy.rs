//! The pure RFC 9111 / RFC 5861 logic: storage rules, cache keys, Vary, freshness, age,
//! validation and invalidation. Every function takes `now` as an argument; nothing here reads
//! a clock, spawns or does I/O.

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_LOCATION, COOKIE, DATE, ETAG, EXPIRES,
    HeaderName, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    LAST_MODIFIED, LOCATION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, RANGE, SET_COOKIE, TE,
    TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use stormwall_core::time::Instant;

use crate::directives::{MAX_DELTA_SECONDS, RequestDirectives, ResponseDirectives};

/// Settings the pure rules depend on.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) shared: bool,
    pub(crate) heuristic_fraction: f64,
    pub(crate) heuristic_max: Duration,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) default_swr: Duration,
    pub(crate) default_sie: Duration,
    pub(crate) default_scheme: &'static str,
    /// Shared mode: treat the unkeyed forwarding headers as if every response varied on them.
    pub(crate) key_forwarding_headers: bool,
}

/// Request headers that commonly change what an origin renders (reflected links, redirects,
/// routing) without being part of the URL: in shared mode the cache keys on them as if every
/// response carried `Vary` for them, so a request carrying a forged value can only ever be
/// served its own response (cache-poisoning defence). Requests without them share one entry,
/// and a proxy that sets them consistently keeps one entry per value.
pub const FORWARDING_HEADERS: [&str; 9] = [
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "forwarded",
];

impl Default for Rules {
    fn default() -> Self {
        Self {
            shared: false,
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
            default_ttl: None,
            default_swr: Duration::ZERO,
            default_sie: Duration::ZERO,
            default_scheme: "http",
            key_forwarding_headers: true,
        }
    }
}

/// Why a response was not stored (RFC 9111 §3), reported in `Cache-Status` as `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStorable {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
    Predicate,
    TooLarge,
}

impl NotStorable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::NoStore => "no-store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::SetCookie => "set-cookie",
            Self::VaryStar => "vary-star",
            Self::NoFreshness => "no-freshness",
            Self::Predicate => "predicate",
            Self::TooLarge => "too-large",
        }
    }
}

/// RFC 9111 §4.2.2: status codes that are heuristically cacheable (RFC 9110 §15.1).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// What one pass over a request's header names tells the cache.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RequestFlags {
    /// Range or preconditions the cache does not evaluate: bypass.
    pub(crate) bypass: bool,
    /// `Cache-Control` or `Pragma` present: parse the directives.
    pub(crate) directives: bool,
    /// `If-None-Match` / `If-Modified-Since` present.
    pub(crate) conditionals: bool,
}

impl RequestFlags {
    /// One pass over the header names (cheaper than one hash lookup per header of interest).
    pub(crate) fn scan(headers: &HeaderMap) -> Self {
        let mut f = Self::default();
        for name in headers.keys() {
            if name == RANGE || name == IF_MATCH || name == IF_UNMODIFIED_SINCE || name == IF_RANGE
            {
                f.bypass = true;
            } else if name == http::header::CACHE_CONTROL || name == http::header::PRAGMA {
                f.directives = true;
            } else if name == IF_NONE_MATCH || name == IF_MODIFIED_SINCE {
                f.conditionals = true;
            }
        }
        f
    }
}

/// Safe methods (RFC 9110 §9.2.1): everything else invalidates on success (§4.4).
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// RFC 9111 §3: may this response be stored? `has_freshness` is whether the response carries
/// explicit freshness, is heuristically cacheable, or a default TTL applies.
pub(crate) fn storable(
    rules: &Rules,
    method: &Method,
    req_headers: &HeaderMap,
    req_cc: &RequestDirectives,
    status: StatusCode,
    res_headers: &HeaderMap,
    res_cc: &ResponseDirectives,
) -> Result<(), NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    // Final, understood statuses. 206 (ranges) and 304 are not stored as such.
    let code = status.as_u16();
    if !(200..600).contains(&code) || code == 206 || code == 304 {
        return Err(NotStorable::Status);
    }
    if req_cc.no_store || res_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if rules.shared {
        if res_cc.private {
            return Err(NotStorable::Private);
        }
        // §3.5; we treat Cookie like Authorization: credentials make a response per-user
        // unless the origin explicitly says it may be shared.
        if (req_headers.contains_key(AUTHORIZATION) || req_headers.contains_key(COOKIE))
            && !(res_cc.public || res_cc.s_maxage.is_some() || res_cc.must_revalidate)
        {
            return Err(NotStorable::Authorization);
        }
        if res_headers.contains_key(SET_COOKIE) {
            return Err(NotStorable::SetCookie);
        }
    }
    if matches!(vary_key(res_headers, req_headers), VaryKey::Star) {
        return Err(NotStorable::VaryStar);
    }
    let explicit = res_cc.public
        || (res_cc.private && !rules.shared)
        || res_headers.contains_key(EXPIRES)
        || res_cc.max_age.is_some()
        || (rules.shared && res_cc.s_maxage.is_some());
    if explicit || heuristically_cacheable(status) || rules.default_ttl.is_some() {
        Ok(())
    } else {
        Err(NotStorable::NoFreshness)
    }
}

/// Whether storing a response that [`storable`] allows could ever pay off. A response with no
/// freshness information at all (no `max-age`, `s-maxage` in a shared cache, `Expires`, no
/// `Last-Modified` for a heuristic, no default TTL) is stale the moment it is stored; without
/// a validator (`ETag`) to revalidate it and without any stale grace (`stale-while-revalidate`
/// or `stale-if-error` from the response, the request or the configured defaults; the
/// request's `max-stale`), no later request could be answered from it. Such responses (a
/// typical API response) are forwarded as they stream instead of being buffered and stored.
pub(crate) fn worth_storing(
    rules: &Rules,
    req_cc: &RequestDirectives,
    res_headers: &HeaderMap,
    res_cc: &ResponseDirectives,
) -> bool {
    res_cc.max_age.is_some()
        || (rules.shared && res_cc.s_maxage.is_some())
        || rules.default_ttl.is_some()
        || res_cc.stale_while_revalidate.is_some()
        || res_cc.stale_if_error.is_some()
        || !rules.default_swr.is_zero()
        || !rules.default_sie.is_zero()
        || req_cc.max_stale.is_some()
        || req_cc.stale_if_error.is_some()
        || res_headers.contains_key(EXPIRES)
        || res_headers.contains_key(LAST_MODIFIED)
        || res_headers.contains_key(ETAG)
}

/// Parses an HTTP date header; `Err(())` if present but invalid.
fn date_header(headers: &HeaderMap, name: HeaderName) -> Result<Option<SystemTime>, ()> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
            .map(Some)
            .ok_or(()),
    }
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

/// RFC 9111 §4.2.1 (plus §4.2.2 heuristics and the configured default TTL): the freshness
/// lifetime. `response_system` is the wall-clock time the response was received, used when
/// `Date` is missing or invalid.
pub(crate) fn freshness_lifetime(
    rules: &Rules,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &ResponseDirectives,
    response_system: SystemTime,
) -> Duration {
    if rules.shared
        && let Some(s) = cc.s_maxage
    {
        return s;
    }
    if let Some(m) = cc.max_age {
        return m;
    }
    let date = date_header(headers, DATE)
        .ok()
        .flatten()
        .unwrap_or(response_system);
    if headers.contains_key(EXPIRES) {
        // §5.3: an invalid Expires (e.g. "0") means "already expired".
        return match date_header(headers, EXPIRES) {
            Ok(Some(expires)) => since(expires, date),
            _ => Duration::ZERO,
        };
    }
    if (heuristically_cacheable(status) || cc.public)
        && let Ok(Some(last_modified)) = date_header(headers, LAST_MODIFIED)
    {
        let age = since(date, last_modified);
        let h = age.mul_f64(rules.heuristic_fraction.clamp(0.0, 1.0));
        return h.min(rules.heuristic_max);
    }
    rules.default_ttl.unwrap_or(Duration::ZERO)
}

/// RFC 9111 §4.2.3: `corrected_initial_age` at the time the response was received.
pub(crate) fn corrected_initial_age(
    headers: &HeaderMap,
    request_time: Instant,
    response_time: Instant,
    response_system: SystemTime,
) -> Duration {
    let age_value = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                Some(s.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS))
            } else {
                None
            }
        })
        .map_or(Duration::ZERO, |s| {
            Duration::from_secs(s.min(MAX_DELTA_SECONDS))
        });
    let apparent_age = match date_header(headers, DATE) {
        Ok(Some(date)) => since(response_system, date),
        _ => Duration::ZERO,
    };
    let response_delay = response_time.saturating_duration_since(request_time);
    let corrected_age_value = age_value + response_delay;
    apparent_age.max(corrected_age_value)
}

/// The secondary key of a stored response (RFC 9111 §4.1): the request's values of the
/// headers named by `Vary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VaryKey {
    /// `Vary: *` (or an unparseable Vary): never matches.
    Star,
    /// Header name → the request's normalized combined value (`None` when absent); and
    /// whether the forwarding headers are keyed (shared mode): then those the stored request
    /// carried are among the fields, and a request carrying any other one does not match.
    Fields(Vec<(HeaderName, Option<String>)>, bool),
}

/// [`FORWARDING_HEADERS`] as header names.
static FORWARDING_NAMES: std::sync::LazyLock<[HeaderName; 9]> =
    std::sync::LazyLock::new(|| FORWARDING_HEADERS.map(HeaderName::from_static));

/// Whether `headers` has `name` with the normalized combined value `stored` (what
/// [`combined_value`] would return), without allocating.
fn value_eq(headers: &HeaderMap, name: &HeaderName, stored: Option<&str>) -> bool {
    let mut values = headers.get_all(name).iter().peekable();
    let Some(stored) = stored else {
        return values.peek().is_none();
    };
    if values.peek().is_none() {
        return false;
    }
    let mut rest = stored.as_bytes();
    let mut nonempty = false;
    for v in values {
        let Ok(s) = std::str::from_utf8(v.as_bytes()) else {
            // Lossy decoding: take the allocating path.
            return combined_value(headers, name).as_deref() == Some(stored);
        };
        for part in s.split(',') {
            let part = part.trim();
            if nonempty {
                match rest.split_first() {
                    Some((b',', r)) => rest = r,
                    _ => return false,
                }
            }
            match rest.strip_prefix(part.as_bytes()) {
                Some(r) => rest = r,
                None => return false,
            }
            nonempty = nonempty || !part.is_empty();
        }
    }
    rest.is_empty()
}

fn combined_value(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        // Normalize: trim, collapse "a ,  b" whitespace around commas.
        let s = String::from_utf8_lossy(v.as_bytes());
        for part in s.split(',') {
            let part = part.trim();
            let o = out.get_or_insert_with(String::new);
            if !o.is_empty() {
                o.push(',');
            }
            o.push_str(part);
        }
    }
    out
}

/// The secondary key of a stored response under `rules`: its `Vary`, plus the forwarding
/// headers in shared mode (see [`FORWARDING_HEADERS`]).
pub(crate) fn secondary_key(
    rules: &Rules,
    res_headers: &HeaderMap,
    req_headers: &HeaderMap,
) -> VaryKey {
    let mut key = vary_key(res_headers, req_headers);
    if rules.shared
        && rules.key_forwarding_headers
        && let VaryKey::Fields(fields, forwarding) = &mut key
    {
        *forwarding = true;
        // Only those the request carried: the absence of the others is checked by one pass
        // over the new request's names (see `matches`), not one lookup per header.
        for name in FORWARDING_NAMES.iter() {
            if !fields.iter().any(|(n, _)| n == name)
                && let Some(value) = combined_value(req_headers, name)
            {
                fields.push((name.clone(), Some(value)));
            }
        }
    }
    key
}

/// Builds the secondary key for a response's `Vary` against the request that produced it.
pub(crate) fn vary_key(res_headers: &HeaderMap, req_headers: &HeaderMap) -> VaryKey {
    let mut fields: Vec<(HeaderName, Option<String>)> = Vec::new();
    for v in res_headers.get_all(VARY) {
        let Ok(s) = v.to_str() else {
            return VaryKey::Star;
        };
        for name in s.split(',') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if name == "*" {
                return VaryKey::Star;
            }
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                return VaryKey::Star;
            };
            if !fields.iter().any(|(n, _)| *n == name) {
                let value = combined_value(req_headers, &name);
                fields.push((name, value));
            }
        }
    }
    VaryKey::Fields(fields, false)
}

impl VaryKey {
    /// RFC 9111 §4.1: does a new request match this stored secondary key?
    pub(crate) fn matches(&self, req_headers: &HeaderMap) -> bool {
        match self {
            Self::Star => false,
            Self::Fields(fields, forwarding) => {
                fields
                    .iter()
                    .all(|(name, value)| value_eq(req_headers, name, value.as_deref()))
                    && (!forwarding
                        || req_headers.keys().all(|n| {
                            !FORWARDING_NAMES.contains(n) || fields.iter().any(|(f, _)| f == n)
                        }))
            }
        }
    }
}

/// Normalizes scheme and authority (lower case, default port removed).
fn origin_of(scheme: &str, authority: &str) -> String {
    let scheme = scheme.to_ascii_lowercase();
    let mut authority = authority.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => Some(":80"),
        "https" => Some(":443"),
        _ => None,
    };
    if let Some(port) = default
        && authority.ends_with(port)
    {
        authority.truncate(authority.len() - port.len());
    }
    format!("{scheme}://{authority}")
}

/// The origin (`scheme://authority`) of a request: from its URI, else its `Host` header.
pub(crate) fn request_origin(
    uri: &Uri,
    headers: &HeaderMap,
    default_scheme: &str,
) -> Option<String> {
    let scheme = uri.scheme_str().unwrap_or(default_scheme);
    let authority = match uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => headers
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .trim()
            .to_owned(),
    };
    if authority.is_empty() || authority.contains(['/', ' ', '@']) {
        return None;
    }
    Some(origin_of(scheme, &authority))
}

/// The primary cache key (RFC 9111 §4): method, scheme, authority, path and query.
pub(crate) fn primary_key(method: &Method, origin: &str, uri: &Uri) -> String {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut key = String::with_capacity(method.as_str().len() + origin.len() + pq.len() + 1);
    key.push_str(method.as_str());
    key.push(' ');
    key.push_str(origin);
    key.push_str(pq);
    key
}

/// The primary key of a `GET` request in one allocation (the hit path): same result as
/// `primary_key(GET, request_origin(..), uri)`.
#[cfg(test)]
pub(crate) fn get_key(uri: &Uri, headers: &HeaderMap, default_scheme: &str) -> Option<String> {
    let mut key = String::new();
    write_get_key(&mut key, uri, headers, default_scheme)?;
    Some(key)
}

/// Like [`get_key`], into a reusable buffer (no allocation once the buffer has grown).
pub(crate) fn write_get_key(
    key: &mut String,
    uri: &Uri,
    headers: &HeaderMap,
    default_scheme: &str,
) -> Option<()> {
    let scheme = uri.scheme_str().unwrap_or(default_scheme);
    let authority = match uri.authority() {
        Some(a) => a.as_str(),
        None => headers.get(http::header::HOST)?.to_str().ok()?.trim(),
    };
    if authority.is_empty() || authority.bytes().any(|b| matches!(b, b'/' | b' ' | b'@')) {
        return None;
    }
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        ":80"
    } else if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ""
    };
    let authority = if !default_port.is_empty() && authority.ends_with(default_port) {
        &authority[..authority.len() - default_port.len()]
    } else {
        authority
    };
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    key.reserve(7 + scheme.len() + authority.len() + pq.len());
    key.push_str("GET ");
    let start = key.len();
    key.push_str(scheme);
    key.push_str("://");
    key.push_str(authority);
    key[start..].make_ascii_lowercase();
    key.push_str(pq);
    Some(())
}

/// The primary key of an absolute URL (`scheme://authority/path?query`), for purges and
/// invalidation.
pub(crate) fn url_key(method: &Method, url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    let origin = origin_of(uri.scheme_str()?, uri.authority()?.as_str());
    Some(primary_key(method, &origin, &uri))
}

/// The key prefix for an absolute URL prefix (`http://host/api/`), for purges.
pub(crate) fn prefix_key(prefix: &str) -> Option<String> {
    let (scheme, rest) = prefix.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Some(format!("GET {}{}", origin_of(scheme, authority), path))
}

/// RFC 9111 §4.4: the keys a successful unsafe request invalidates: the target URI, and
/// `Location`/`Content-Location` when same-origin.
pub(crate) fn invalidation_keys(origin: &str, uri: &Uri, res_headers: &HeaderMap) -> Vec<String> {
    let mut keys = vec![primary_key(&Method::GET, origin, uri)];
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(v) = res_headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let Ok(target) = v.trim().parse::<Uri>() else {
            continue;
        };
        let target_origin = match (target.scheme_str(), target.authority()) {
            (Some(s), Some(a)) => origin_of(s, a.as_str()),
            (None, None) if target.path().starts_with('/') => origin.to_owned(),
            _ => continue,
        };
        if target_origin == origin {
            keys.push(primary_key(&Method::GET, origin, &target));
        }
    }
    keys
}

/// Headers a cache never stores (RFC 9111 §3.1): `Connection` and the fields it names,
/// hop-by-hop fields and proxy authentication fields. Whether there was anything to strip.
pub(crate) fn strip_unstorable(headers: &mut HeaderMap) -> bool {
    const CUSTOM: [&str; 3] = [
        "keep-alive",
        "proxy-connection",
        "proxy-authentication-info",
    ];
    // Most responses carry none of these: one pass over the names instead of ten removals.
    let any = headers.keys().any(|n| {
        n == CONNECTION
            || n == TE
            || n == TRANSFER_ENCODING
            || n == UPGRADE
            || n == TRAILER
            || n == PROXY_AUTHENTICATE
            || n == PROXY_AUTHORIZATION
            || CUSTOM.contains(&n.as_str())
    });
    if !any {
        return false;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        CONNECTION,
        TE,
        TRANSFER_ENCODING,
        UPGRADE,
        TRAILER,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
    ] {
        headers.remove(n);
    }
    for n in CUSTOM {
        headers.remove(n);
    }
    true
}

/// RFC 9111 §3.2 / §4.3.4: freshen stored headers with those of a 304: every field of the
/// 304 replaces the stored one, except unstorable fields and `Content-Length`.
pub(crate) fn freshen_headers(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    let mut incoming = not_modified.clone();
    strip_unstorable(&mut incoming);
    incoming.remove(CONTENT_LENGTH);
    let mut last: Option<HeaderName> = None;
    for (name, value) in incoming {
        match name {
            Some(n) => {
                stored.insert(n.clone(), value);
                last = Some(n);
            }
            None => {
                if let Some(n) = &last {
                    stored.append(n.clone(), value);
                }
            }
        }
    }
}

/// Weak comparison of entity tags (RFC 9110 §8.8.3.2).
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// RFC 9111 §4.3.2: evaluates the client's `If-None-Match` / `If-Modified-Since` against a
/// stored response; `true` means "answer 304".
pub(crate) fn not_modified_for(req_headers: &HeaderMap, stored: &HeaderMap) -> bool {
    if req_headers.contains_key(IF_NONE_MATCH) {
        let Some(etag) = stored.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return req_headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .any(|t| t.trim() == "*" || weak_eq(t, etag));
    }
    if let Ok(Some(since)) = date_header(req_headers, IF_MODIFIED_SINCE) {
        let lm = date_header(stored, LAST_MODIFIED).ok().flatten();
        let date = date_header(stored, DATE).ok().flatten();
        if let Some(lm) = lm.or(date) {
            return lm <= since;
        }
    }
    false
}

/// Whether the client's request carries validators the cache evaluates.
pub(crate) fn has_client_conditionals(req_headers: &HeaderMap) -> bool {
    req_headers.contains_key(IF_NONE_MATCH) || req_headers.contains_key(IF_MODIFIED_SINCE)
}

/// RFC 9111 §4.3.1: validators to send when revalidating a stored response.
pub(crate) fn conditional_headers(stored: &HeaderMap, out: &mut HeaderMap) {
    out.remove(IF_NONE_MATCH);
    out.remove(IF_MODIFIED_SINCE);
    if let Some(etag) = stored.get(ETAG) {
        out.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = stored.get(LAST_MODIFIED) {
        out.insert(IF_MODIFIED_SINCE, lm.clone());
    }
}

/// Timing and freshness facts about a stored response.
#[derive(Debug, Clone)]
pub(crate) struct Freshness {
    pub(crate) response_time: Instant,
    pub(crate) corrected_initial_age: Duration,
    pub(crate) lifetime: Duration,
}

impl Freshness {
    /// §4.2.3 `current_age`.
    pub(crate) fn current_age(&self, now: Instant) -> Duration {
        self.corrected_initial_age + now.saturating_duration_since(self.response_time)
    }
}

/// What may be done with a selected stored response for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// Serve it: fresh (`stale == false`) or stale allowed by the client's `max-stale`.
    Serve { stale: bool },
    /// Serve it stale now and revalidate in the background (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Forward (conditionally). `request`: because of the request's directives (`fwd=request`)
    /// rather than staleness (`fwd=stale`). `stale_if_error`: how stale it may be served if
    /// the origin fails.
    Validate {
        request: bool,
        stale_if_error: Option<Duration>,
    },
}

/// RFC 9111 §4.2, §4.3, §5.2.1, RFC 5861: decides how a stored response may be used.
#[cfg(test)]
pub(crate) fn decide(
    rules: &Rules,
    fresh: &Freshness,
    res_cc: &ResponseDirectives,
    req_cc: &RequestDirectives,
    now: Instant,
) -> Use {
    decide_at(rules, fresh, res_cc, req_cc, fresh.current_age(now))
}

/// [`decide`] for a stored response whose current age is `age`.
pub(crate) fn decide_at(
    rules: &Rules,
    fresh: &Freshness,
    res_cc: &ResponseDirectives,
    req_cc: &RequestDirectives,
    age: Duration,
) -> Use {
    let forbids_stale = res_cc.forbids_stale(rules.shared);
    let staleness = age.saturating_sub(fresh.lifetime);
    let is_fresh = fresh.lifetime > age;
    let sie = if forbids_stale {
        None
    } else {
        let window = res_cc
            .stale_if_error
            .or(req_cc.stale_if_error)
            .unwrap_or(rules.default_sie);
        (!window.is_zero()).then_some(window)
    };
    let sie = sie.filter(|w| staleness <= *w);
    // Request directives that force validation.
    let request_forces = req_cc.no_cache
        || req_cc.max_age.is_some_and(|m| age > m)
        || (is_fresh && req_cc.min_fresh.is_some_and(|m| fresh.lifetime - age < m));
    if request_forces {
        return Use::Validate {
            request: true,
            stale_if_error: sie,
        };
    }
    if res_cc.no_cache {
        return Use::Validate {
            request: false,
            stale_if_error: None,
        };
    }
    if is_fresh {
        return Use::Serve { stale: false };
    }
    if !forbids_stale {
        match req_cc.max_stale {
            Some(None) => return Use::Serve { stale: true },
            Some(Some(max)) if staleness <= max => return Use::Serve { stale: true },
            _ => {}
        }
        let swr = res_cc.stale_while_revalidate.unwrap_or(rules.default_swr);
        if !swr.is_zero() && staleness <= swr {
            return Use::StaleWhileRevalidate;
        }
    }
    Use::Validate {
        request: false,
        stale_if_error: sie,
    }
}

/// Statuses for which RFC 5861 `stale-if-error` applies.
pub(crate) fn is_error_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// A `ttl` in whole seconds, negative when stale (RFC 9211 §2.7).
pub(crate) fn ttl_secs(fresh: &Freshness, now: Instant) -> i64 {
    ttl_at(fresh, fresh.current_age(now))
}

/// [`ttl_secs`] for a stored response whose current age is `age`.
pub(crate) fn ttl_at(fresh: &Freshness, age: Duration) -> i64 {
    // Whole seconds, consistent with the `Age` header (both truncated).
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    secs(fresh.lifetime).saturating_sub(secs(age))
}

/// The current age (`age`) in whole seconds, as sent in `Age` (§5.1: capped).
pub(crate) fn age_secs(age: Duration) -> u64 {
    age.as_secs().min(MAX_DELTA_SECONDS)
}

/// The `Age` header value for `secs` (from [`age_secs`]).
pub(crate) fn age_header(secs: u64) -> HeaderValue {
    /// Preformatted small ages: cloning one is a reference-count increment, not an allocation.
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..=600u64).map(HeaderValue::from).collect());
    match SMALL.get(secs as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(secs),
    }
}

/// The `Age` header value for a served stored response (§5.1).
#[cfg(test)]
pub(crate) fn age_value(fresh: &Freshness, now: Instant) -> HeaderValue {
    age_header(age_secs(fresh.current_age(now)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::CACHE_CONTROL;

    const S: fn(u64) -> Duration = Duration::from_secs;

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
    fn shared() -> Rules {
        Rules {
            shared: true,
            ..Rules::default()
        }
    }
    fn store_check(
        rules: &Rules,
        req: &HeaderMap,
        status: u16,
        res: &HeaderMap,
    ) -> Result<(), NotStorable> {
        storable(
            rules,
            &Method::GET,
            req,
            &RequestDirectives::from_headers(req),
            StatusCode::from_u16(status).unwrap(),
            res,
            &ResponseDirectives::from_headers(res),
        )
    }
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + S(1_700_000_000)
    }
    fn date(t: SystemTime) -> String {
        httpdate::fmt_http_date(t)
    }

    // §3: method, status, no-store.
    #[test]
    fn s3_basic_storage_rules() {
        let r = Rules::default();
        let none = HeaderMap::new();
        let cc = h(&[("cache-control", "max-age=60")]);
        assert_eq!(store_check(&r, &none, 200, &cc), Ok(()));
        assert_eq!(store_check(&r, &none, 206, &cc), Err(NotStorable::Status));
        assert_eq!(store_check(&r, &none, 304, &cc), Err(NotStorable::Status));
        assert_eq!(
            store_check(
                &r,
                &none,
                200,
                &h(&[("cache-control", "no-store, max-age=9")])
            ),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            store_check(&r, &h(&[("cache-control", "no-store")]), 200, &cc),
            Err(NotStorable::NoStore)
        );
        let post = storable(
            &r,
            &Method::POST,
            &none,
            &RequestDirectives::default(),
            StatusCode::OK,
            &cc,
            &ResponseDirectives::from_headers(&cc),
        );
        assert_eq!(post, Err(NotStorable::Method));
    }

    // §3: heuristic freshness only for heuristically cacheable statuses.
    #[test]
    fn s3_heuristic_statuses() {
        let r = Rules::default();
        let none = HeaderMap::new();
        assert_eq!(store_check(&r, &none, 200, &none), Ok(()));
        assert_eq!(store_check(&r, &none, 404, &none), Ok(()));
        assert_eq!(
            store_check(&r, &none, 201, &none),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store_check(&r, &none, 500, &none),
            Err(NotStorable::NoFreshness)
        );
        assert_eq!(
            store_check(&r, &none, 500, &h(&[("cache-control", "max-age=5")])),
            Ok(())
        );
        let with_default = Rules {
            default_ttl: Some(S(5)),
            ..Rules::default()
        };
        assert_eq!(store_check(&with_default, &none, 201, &none), Ok(()));
    }

    // §3 + §3.5: private and Authorization in shared caches; Set-Cookie.
    #[test]
    fn s3_5_shared_cache_security() {
        let s = shared();
        let p = Rules::default();
        let none = HeaderMap::new();
        let private = h(&[("cache-control", "private, max-age=60")]);
        assert_eq!(
            store_check(&s, &none, 200, &private),
            Err(NotStorable::Private)
        );
        assert_eq!(store_check(&p, &none, 200, &private), Ok(()));
        let auth = h(&[("authorization", "Bearer x")]);
        let plain = h(&[("cache-control", "max-age=60")]);
        assert_eq!(
            store_check(&s, &auth, 200, &plain),
            Err(NotStorable::Authorization)
        );
        assert_eq!(store_check(&p, &auth, 200, &plain), Ok(()));
        for ok in [
            "public, max-age=60",
            "s-maxage=60",
            "must-revalidate, max-age=60",
        ] {
            assert_eq!(
                store_check(&s, &auth, 200, &h(&[("cache-control", ok)])),
                Ok(()),
                "{ok}"
            );
        }
        let cookie = h(&[("cookie", "sid=1")]);
        assert_eq!(
            store_check(&s, &cookie, 200, &plain),
            Err(NotStorable::Authorization)
        );
        let set_cookie = h(&[("cache-control", "max-age=60"), ("set-cookie", "a=b")]);
        assert_eq!(
            store_check(&s, &none, 200, &set_cookie),
            Err(NotStorable::SetCookie)
        );
    }

    // §4.1: Vary.
    #[test]
    fn s4_1_vary_matching() {
        let res = h(&[("vary", "Accept-Encoding, accept-language")]);
        let req = h(&[("accept-encoding", "gzip,  br"), ("accept-language", "en")]);
        let key = vary_key(&res, &req);
        assert!(key.matches(&h(&[
            ("accept-encoding", "gzip, br"),
            ("accept-language", "en")
        ])));
        assert!(!key.matches(&h(&[
            ("accept-encoding", "gzip"),
            ("accept-language", "en")
        ])));
        assert!(!key.matches(&h(&[("accept-encoding", "gzip, br")])));
        let star = vary_key(&h(&[("vary", "accept, *")]), &req);
        assert_eq!(star, VaryKey::Star);
        assert!(!star.matches(&req));
        assert!(vary_key(&HeaderMap::new(), &req).matches(&HeaderMap::new()));
        assert_eq!(
            store_check(
                &Rules::default(),
                &req,
                200,
                &h(&[("vary", "*"), ("cache-control", "max-age=9")])
            ),
            Err(NotStorable::VaryStar)
        );
    }

    // The allocation-free comparison agrees with the normalized combined value.
    #[test]
    fn value_eq_agrees_with_combined_value() {
        let name = HeaderName::from_static("accept-language");
        let cases: [&[&str]; 8] = [
            &[],
            &[""],
            &["en"],
            &["en, fr"],
            &["en ,  fr", "de"],
            &[", a"],
            &["a, ,b"],
            &["a,", "b"],
        ];
        for req in cases {
            let pairs: Vec<(&str, &str)> = req.iter().map(|v| ("accept-language", *v)).collect();
            let headers = h(&pairs);
            let want = combined_value(&headers, &name);
            for other in cases {
                let pairs: Vec<(&str, &str)> =
                    other.iter().map(|v| ("accept-language", *v)).collect();
                let stored = combined_value(&h(&pairs), &name);
                assert_eq!(
                    value_eq(&headers, &name, stored.as_deref()),
                    want == stored,
                    "{req:?} vs {other:?}"
                );
            }
        }
    }

    #[test]
    fn shared_mode_keys_on_forwarding_headers() {
        let shared = Rules {
            shared: true,
            ..Rules::default()
        };
        let poisoned = h(&[("x-forwarded-host", "evil.example")]);
        let key = secondary_key(&shared, &HeaderMap::new(), &poisoned);
        assert!(key.matches(&poisoned));
        assert!(
            !key.matches(&HeaderMap::new()),
            "a plain request must not get the forged page"
        );
        let plain = secondary_key(&shared, &HeaderMap::new(), &HeaderMap::new());
        assert!(plain.matches(&HeaderMap::new()));
        assert!(!plain.matches(&poisoned));
        // Private caches serve one user: nothing implicit.
        let private = secondary_key(&Rules::default(), &HeaderMap::new(), &poisoned);
        assert!(private.matches(&HeaderMap::new()));
        // Opting out restores plain RFC 9111 behaviour.
        let off = Rules {
            shared: true,
            key_forwarding_headers: false,
            ..Rules::default()
        };
        assert!(secondary_key(&off, &HeaderMap::new(), &poisoned).matches(&HeaderMap::new()));
        // Two forwarding headers: both must match, and no third may be added.
        let two = h(&[("x-forwarded-host", "a"), ("forwarded", "for=1")]);
        let key = secondary_key(&shared, &HeaderMap::new(), &two);
        assert!(key.matches(&two));
        assert!(!key.matches(&poisoned));
        assert!(!key.matches(&h(&[("x-forwarded-host", "a")])));
        let three = h(&[
            ("x-forwarded-host", "a"),
            ("forwarded", "for=1"),
            ("x-original-url", "/admin"),
        ]);
        assert!(!key.matches(&three));
        // Vary naming a forwarding header keeps its own (absent) value in the fields.
        let vary = h(&[("vary", "x-forwarded-host")]);
        let key = secondary_key(&shared, &vary, &HeaderMap::new());
        assert!(key.matches(&HeaderMap::new()));
        assert!(!key.matches(&poisoned));
    }

    // §4: primary key.
    #[test]
    fn s4_primary_key() {
        let uri: Uri = "http://Example.COM:80/a?b=1".parse().unwrap();
        let origin = request_origin(&uri, &HeaderMap::new(), "http").unwrap();
        assert_eq!(
            primary_key(&Method::GET, &origin, &uri),
            "GET http://example.com/a?b=1"
        );
        let rel: Uri = "/a?b=2".parse().unwrap();
        let origin = request_origin(&rel, &h(&[("host", "other:8080")]), "https").unwrap();
        assert_eq!(
            primary_key(&Method::GET, &origin, &rel),
            "GET https://other:8080/a?b=2"
        );
        assert!(request_origin(&rel, &HeaderMap::new(), "http").is_none());
        for (u, hs) in [
            ("http://Example.COM:80/a?b=1", HeaderMap::new()),
            ("/a?b=2", h(&[("host", "Other:8080")])),
            ("https://x:443", HeaderMap::new()),
            ("/", h(&[("host", "a/b")])),
            ("/", HeaderMap::new()),
        ] {
            let uri: Uri = u.parse().unwrap();
            let slow =
                request_origin(&uri, &hs, "http").map(|o| primary_key(&Method::GET, &o, &uri));
            assert_eq!(get_key(&uri, &hs, "http"), slow, "{u}");
        }
        assert!(request_origin(&rel, &h(&[("host", "a/b")]), "http").is_none());
        assert_eq!(
            url_key(&Method::GET, "http://x:80/p").unwrap(),
            "GET http://x/p"
        );
    }

    // §4.2.1: s-maxage > max-age > Expires > heuristic > default TTL.
    #[test]
    fn s4_2_1_freshness_lifetime() {
        let now = t0();
        let ok = StatusCode::OK;
        let calc = |r: &Rules, hs: &HeaderMap| {
            freshness_lifetime(r, ok, hs, &ResponseDirectives::from_headers(hs), now)
        };
        let both = h(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(calc(&Rules::default(), &both), S(10));
        assert_eq!(calc(&shared(), &both), S(20));
        let expires = h(&[("date", &date(now)), ("expires", &date(now + S(30)))]);
        assert_eq!(calc(&Rules::default(), &expires), S(30));
        let invalid = h(&[("expires", "0")]);
        assert_eq!(calc(&Rules::default(), &invalid), Duration::ZERO);
        let past = h(&[("date", &date(now)), ("expires", &date(now - S(30)))]);
        assert_eq!(calc(&Rules::default(), &past), Duration::ZERO);
    }

    // §4.2.2: heuristic freshness: 10% of the Last-Modified age, capped.
    #[test]
    fn s4_2_2_heuristic() {
        let now = t0();
        let hs = h(&[
            ("date", &date(now)),
            ("last-modified", &date(now - S(1000))),
        ]);
        let cc = ResponseDirectives::from_headers(&hs);
        let r = Rules::default();
        assert_eq!(
            freshness_lifetime(&r, StatusCode::OK, &hs, &cc, now),
            S(100)
        );
        let capped = Rules {
            heuristic_max: S(50),
            ..Rules::default()
        };
        assert_eq!(
            freshness_lifetime(&capped, StatusCode::OK, &hs, &cc, now),
            S(50)
        );
        // Not heuristically cacheable: no heuristic.
        assert_eq!(
            freshness_lifetime(&r, StatusCode::CREATED, &hs, &cc, now),
            Duration::ZERO
        );
    }

    // §4.2.3: Date/Age arithmetic.
    #[tokio::test(start_paused = true)]
    async fn s4_2_3_age_calculation() {
        let sys = t0();
        let request_time = Instant::now();
        tokio::time::advance(S(2)).await;
        let response_time = Instant::now();
        // Origin clock 10 s behind: apparent_age = 10; Age 3 + delay 2 = 5 → 10.
        let hs = h(&[("date", &date(sys - S(10))), ("age", "3")]);
        assert_eq!(
            corrected_initial_age(&hs, request_time, response_time, sys),
            S(10)
        );
        // Age dominates.
        let hs = h(&[("date", &date(sys)), ("age", "100")]);
        let cia = corrected_initial_age(&hs, request_time, response_time, sys);
        assert_eq!(cia, S(102));
        // Date in the future: apparent age 0. Malformed Age ignored.
        let hs = h(&[("date", &date(sys + S(50))), ("age", "x")]);
        assert_eq!(
            corrected_initial_age(&hs, request_time, response_time, sys),
            S(2)
        );
        let f = Freshness {
            response_time,
            corrected_initial_age: S(10),
            lifetime: S(60),
        };
        tokio::time::advance(S(5)).await;
        assert_eq!(f.current_age(Instant::now()), S(15));
        assert_eq!(ttl_secs(&f, Instant::now()), 45);
        assert_eq!(age_value(&f, Instant::now()), "15");
        tokio::time::advance(S(100)).await;
        assert_eq!(ttl_secs(&f, Instant::now()), -55);
    }

    fn fr(age: u64, lifetime: u64, now: Instant) -> Freshness {
        Freshness {
            response_time: now,
            corrected_initial_age: S(age),
            lifetime: S(lifetime),
        }
    }
    fn decide_with(rules: &Rules, res: &str, req: &str, age: u64, lifetime: u64) -> Use {
        let now = Instant::now();
        let rc = ResponseDirectives::from_headers(&h(&[("cache-control", res)]));
        let qc = RequestDirectives::from_headers(&h(&[("cache-control", req)]));
        decide(rules, &fr(age, lifetime, now), &rc, &qc, now)
    }
    const VALIDATE: Use = Use::Validate {
        request: false,
        stale_if_error: None,
    };
    const VALIDATE_REQ: Use = Use::Validate {
        request: true,
        stale_if_error: None,
    };

    // §4.2 / §4.3: fresh served, stale validated, no-cache always validated.
    #[tokio::test(start_paused = true)]
    async fn s4_freshness_decisions() {
        let r = Rules::default();
        assert_eq!(
            decide_with(&r, "max-age=60", "x", 10, 60),
            Use::Serve { stale: false }
        );
        assert_eq!(decide_with(&r, "max-age=60", "x", 60, 60), VALIDATE);
        assert_eq!(decide_with(&r, "no-cache", "x", 0, 60), VALIDATE);
    }

    // §5.2.1: request directives.
    #[tokio::test(start_paused = true)]
    async fn s5_2_1_request_directive_decisions() {
        let r = Rules::default();
        assert_eq!(decide_with(&r, "x", "no-cache", 0, 60), VALIDATE_REQ);
        assert_eq!(decide_with(&r, "x", "max-age=5", 10, 60), VALIDATE_REQ);
        assert_eq!(
            decide_with(&r, "x", "max-age=15", 10, 60),
            Use::Serve { stale: false }
        );
        assert_eq!(decide_with(&r, "x", "min-fresh=55", 10, 60), VALIDATE_REQ);
        assert_eq!(
            decide_with(&r, "x", "min-fresh=50", 10, 60),
            Use::Serve { stale: false }
        );
        assert_eq!(
            decide_with(&r, "x", "max-stale", 100, 60),
            Use::Serve { stale: true }
        );
        assert_eq!(
            decide_with(&r, "x", "max-stale=50", 100, 60),
            Use::Serve { stale: true }
        );
        assert_eq!(decide_with(&r, "x", "max-stale=30", 100, 60), VALIDATE);
    }

    // §5.2.2.2/§5.2.2.8/§5.2.2.10: max-stale never overrides must-revalidate, no-cache,
    // proxy-revalidate or s-maxage (shared).
    #[tokio::test(start_paused = true)]
    async fn s5_2_2_max_stale_does_not_override() {
        let r = Rules::default();
        let s = shared();
        assert_eq!(
            decide_with(&r, "must-revalidate", "max-stale", 100, 60),
            VALIDATE
        );
        assert_eq!(
            decide_with(&s, "proxy-revalidate", "max-stale", 100, 60),
            VALIDATE
        );
        assert_eq!(
            decide_with(&s, "s-maxage=60", "max-stale", 100, 60),
            VALIDATE
        );
        assert_eq!(
            decide_with(&r, "proxy-revalidate", "max-stale", 100, 60),
            Use::Serve { stale: true }
        );
    }

    // RFC 5861: stale-while-revalidate and stale-if-error windows.
    #[tokio::test(start_paused = true)]
    async fn rfc5861_windows() {
        let r = Rules::default();
        assert_eq!(
            decide_with(&r, "stale-while-revalidate=30", "x", 80, 60),
            Use::StaleWhileRevalidate
        );
        assert_eq!(
            decide_with(&r, "stale-while-revalidate=30", "x", 100, 60),
            VALIDATE
        );
        assert_eq!(
            decide_with(
                &r,
                "stale-while-revalidate=30, must-revalidate",
                "x",
                80,
                60
            ),
            VALIDATE
        );
        assert_eq!(
            decide_with(&r, "stale-if-error=60", "x", 100, 60),
            Use::Validate {
                request: false,
                stale_if_error: Some(S(60))
            }
        );
        assert_eq!(decide_with(&r, "stale-if-error=10", "x", 100, 60), VALIDATE);
        assert_eq!(
            decide_with(&r, "stale-if-error=60, must-revalidate", "x", 100, 60),
            VALIDATE
        );
        let grace = Rules {
            default_swr: S(30),
            default_sie: S(100),
            ..Rules::default()
        };
        assert_eq!(
            decide_with(&grace, "x", "x", 80, 60),
            Use::StaleWhileRevalidate
        );
        assert_eq!(
            decide_with(&grace, "x", "x", 100, 60),
            Use::Validate {
                request: false,
                stale_if_error: Some(S(100))
            }
        );
    }

    // §4.3.1/§4.3.2: conditional requests.
    #[test]
    fn s4_3_validation_headers() {
        let now = t0();
        let stored = h(&[("etag", "\"v1\""), ("last-modified", &date(now - S(100)))]);
        let mut out = h(&[("if-none-match", "\"client\"")]);
        conditional_headers(&stored, &mut out);
        assert_eq!(out[IF_NONE_MATCH], "\"v1\"");
        assert!(out.contains_key(IF_MODIFIED_SINCE));
        assert!(not_modified_for(
            &h(&[("if-none-match", "W/\"v1\"")]),
            &stored
        ));
        assert!(not_modified_for(
            &h(&[("if-none-match", "\"x\", \"v1\"")]),
            &stored
        ));
        assert!(!not_modified_for(
            &h(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        assert!(not_modified_for(
            &h(&[("if-modified-since", &date(now))]),
            &stored
        ));
        assert!(!not_modified_for(
            &h(&[("if-modified-since", &date(now - S(200)))]),
            &stored
        ));
        assert!(!not_modified_for(
            &h(&[("if-modified-since", "garbage")]),
            &stored
        ));
    }

    // §3.2/§4.3.4: freshening with a 304.
    #[test]
    fn s4_3_4_freshen() {
        let mut stored = h(&[
            ("cache-control", "max-age=10"),
            ("content-length", "5"),
            ("x-a", "old"),
        ]);
        let nm = h(&[
            ("cache-control", "max-age=99"),
            ("content-length", "0"),
            ("x-b", "new"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ]);
        freshen_headers(&mut stored, &nm);
        assert_eq!(stored[CACHE_CONTROL], "max-age=99");
        assert_eq!(stored[CONTENT_LENGTH], "5");
        assert_eq!(stored["x-a"], "old");
        assert_eq!(stored["x-b"], "new");
        assert!(!stored.contains_key("x-hop"));
    }

    // Requests the cache does not evaluate (ranges, other preconditions) bypass it.
    #[test]
    fn request_flags() {
        for bypass in ["range", "if-match", "if-unmodified-since", "if-range"] {
            assert!(RequestFlags::scan(&h(&[(bypass, "x")])).bypass, "{bypass}");
        }
        let f = RequestFlags::scan(&h(&[("pragma", "no-cache"), ("if-none-match", "\"a\"")]));
        assert!(!f.bypass && f.directives && f.conditionals);
        let f = RequestFlags::scan(&h(&[("accept", "*/*")]));
        assert!(!f.bypass && !f.directives && !f.conditionals);
    }

    // §3.1: Connection-named and hop-by-hop headers are not stored.
    #[test]
    fn s3_1_unstorable_headers() {
        let mut hs = h(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("transfer-encoding", "chunked"),
            ("x-keep", "y"),
        ]);
        strip_unstorable(&mut hs);
        assert_eq!(hs.len(), 1);
        assert_eq!(hs["x-keep"], "y");
    }

    // §4.4: invalidation targets.
    #[test]
    fn s4_4_invalidation_keys() {
        let uri: Uri = "/items".parse().unwrap();
        let origin = "http://a.example";
        let res = h(&[
            ("location", "/items/7"),
            ("content-location", "http://evil.example/items"),
        ]);
        let keys = invalidation_keys(origin, &uri, &res);
        assert_eq!(
            keys,
            vec!["GET http://a.example/items", "GET http://a.example/items/7"]
        );
        let same = h(&[("content-location", "HTTP://A.example:80/x")]);
        assert_eq!(invalidation_keys(origin, &uri, &same).len(), 2);
    }
}
