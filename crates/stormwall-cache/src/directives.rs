//! `Cache-Control` parsing (RFC 9111 §5.2, RFC 5861), tolerant and conservative.
//!
//! - Unknown directives are ignored.
//! - Malformed input never panics; a directive whose argument cannot be parsed is treated in
//!   the most restrictive way (an unparseable `max-age` means "already stale").
//! - Duplicate directives keep the most restrictive value (the smallest `max-age`, …), as
//!   RFC 9111 §4.2.1 recommends for conflicting directives.
//! - Qualified forms (`no-cache="Set-Cookie"`, `private="x"`) are treated as their unqualified,
//!   stricter, forms.

use std::time::Duration;

use http::HeaderMap;
use http::header::{CACHE_CONTROL, PRAGMA};

/// The largest delta-seconds value we represent (RFC 9111 §1.2.2: 2^31).
pub(crate) const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// Response `Cache-Control` directives (RFC 9111 §5.2.2, RFC 5861).
///
/// ```
/// use http::HeaderMap;
/// use stormwall_cache::ResponseDirectives;
/// let mut h = HeaderMap::new();
/// h.insert("cache-control", "public, max-age=60, stale-while-revalidate=30, foo=bar".parse().unwrap());
/// let cc = ResponseDirectives::from_headers(&h);
/// assert!(cc.public);
/// assert_eq!(cc.max_age, Some(std::time::Duration::from_secs(60)));
/// assert_eq!(cc.stale_while_revalidate, Some(std::time::Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseDirectives {
    /// `max-age`.
    pub max_age: Option<Duration>,
    /// `s-maxage` (shared caches only).
    pub s_maxage: Option<Duration>,
    /// `no-cache` (qualified or not).
    pub no_cache: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `private` (qualified or not).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `immutable` (RFC 8246; informational).
    pub immutable: bool,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<Duration>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<Duration>,
}

/// Request `Cache-Control` directives (RFC 9111 §5.2.1, RFC 5861 `stale-if-error`), plus
/// `Pragma: no-cache` when there is no `Cache-Control` (§5.4).
///
/// ```
/// use http::HeaderMap;
/// use stormwall_cache::RequestDirectives;
/// let mut h = HeaderMap::new();
/// h.insert("cache-control", "max-stale, only-if-cached".parse().unwrap());
/// let cc = RequestDirectives::from_headers(&h);
/// assert_eq!(cc.max_stale, Some(None));
/// assert!(cc.only_if_cached);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestDirectives {
    /// `max-age`.
    pub max_age: Option<Duration>,
    /// `max-stale`: `Some(None)` accepts any staleness, `Some(Some(d))` up to `d`.
    pub max_stale: Option<Option<Duration>>,
    /// `min-fresh`.
    pub min_fresh: Option<Duration>,
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`).
    pub no_cache: bool,
    /// `no-store`.
    pub no_store: bool,
    /// `only-if-cached`.
    pub only_if_cached: bool,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<Duration>,
}

/// One `name[=value]` member of a directive list.
struct Member<'a> {
    name: &'a str,
    value: Option<&'a str>,
}

/// Splits a `Cache-Control` value into members, honouring quoted strings. Never panics.
/// Lazily, without allocating.
fn members(value: &str) -> impl Iterator<Item = Member<'_>> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        loop {
            let s = rest?;
            let bytes = s.as_bytes();
            let mut in_quotes = false;
            let mut escaped = false;
            let mut end = None;
            for (i, &b) in bytes.iter().enumerate() {
                if escaped {
                    escaped = false;
                    continue;
                }
                match b {
                    b'\\' if in_quotes => escaped = true,
                    b'"' => in_quotes = !in_quotes,
                    b',' if !in_quotes => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            // `,` is ASCII: both slices are on character boundaries.
            let part = match end {
                Some(i) => {
                    rest = Some(&s[i + 1..]);
                    &s[..i]
                }
                None => {
                    rest = None;
                    s
                }
            };
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (part, None),
            };
            return Some(Member { name, value });
        }
    })
}

/// Parses delta-seconds: `Ok(None)` when absent, `Err(())` when malformed. Overflow saturates
/// at [`MAX_DELTA_SECONDS`].
fn delta(value: Option<&str>) -> Result<Option<Duration>, ()> {
    let Some(v) = value else { return Ok(None) };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let secs = v
        .parse::<u64>()
        .unwrap_or(MAX_DELTA_SECONDS)
        .min(MAX_DELTA_SECONDS);
    Ok(Some(Duration::from_secs(secs)))
}

/// Keeps the smaller of two optional durations (the more restrictive for lifetimes).
fn min_opt(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn cache_control_values(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
}

impl ResponseDirectives {
    /// Parses every `Cache-Control` line of `headers`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for line in cache_control_values(headers) {
            for m in members(line) {
                let name = m.name;
                if name.eq_ignore_ascii_case("max-age") {
                    // Malformed lifetime: treat as already stale.
                    let d = delta(m.value).unwrap_or(Some(Duration::ZERO));
                    cc.max_age = min_opt(cc.max_age, d.unwrap_or(Duration::ZERO));
                } else if name.eq_ignore_ascii_case("s-maxage") {
                    let d = delta(m.value).unwrap_or(Some(Duration::ZERO));
                    cc.s_maxage = min_opt(cc.s_maxage, d.unwrap_or(Duration::ZERO));
                } else if name.eq_ignore_ascii_case("no-cache") {
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case("private") {
                    cc.private = true;
                } else if name.eq_ignore_ascii_case("public") {
                    cc.public = true;
                } else if name.eq_ignore_ascii_case("must-revalidate") {
                    cc.must_revalidate = true;
                } else if name.eq_ignore_ascii_case("proxy-revalidate") {
                    cc.proxy_revalidate = true;
                } else if name.eq_ignore_ascii_case("immutable") {
                    cc.immutable = true;
                } else if name.eq_ignore_ascii_case("stale-while-revalidate") {
                    // Malformed grace: no grace.
                    if let Ok(Some(d)) = delta(m.value) {
                        cc.stale_while_revalidate = min_opt(cc.stale_while_revalidate, d);
                    }
                } else if name.eq_ignore_ascii_case("stale-if-error")
                    && let Ok(Some(d)) = delta(m.value)
                {
                    cc.stale_if_error = min_opt(cc.stale_if_error, d);
                }
            }
        }
        cc
    }

    /// Whether serving this response stale is forbidden (RFC 9111 §4.2.4): `no-cache`,
    /// `must-revalidate`, and in a shared cache `proxy-revalidate` or `s-maxage`.
    pub fn forbids_stale(&self, shared: bool) -> bool {
        self.no_cache
            || self.must_revalidate
            || (shared && (self.proxy_revalidate || self.s_maxage.is_some()))
    }
}

impl RequestDirectives {
    /// Parses every `Cache-Control` line of `headers` (and `Pragma: no-cache` when there is no
    /// `Cache-Control`).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        let mut any = false;
        for line in cache_control_values(headers) {
            any = true;
            for m in members(line) {
                let name = m.name;
                if name.eq_ignore_ascii_case("max-age") {
                    let d = delta(m.value).unwrap_or(Some(Duration::ZERO));
                    cc.max_age = min_opt(cc.max_age, d.unwrap_or(Duration::ZERO));
                } else if name.eq_ignore_ascii_case("max-stale") {
                    match delta(m.value) {
                        Ok(None) => {
                            if cc.max_stale.is_none() {
                                cc.max_stale = Some(None);
                            }
                        }
                        Ok(Some(d)) => {
                            cc.max_stale = Some(Some(match cc.max_stale {
                                Some(Some(prev)) => prev.min(d),
                                _ => d,
                            }));
                        }
                        // Malformed: accept no staleness.
                        Err(()) => cc.max_stale = Some(Some(Duration::ZERO)),
                    }
                } else if name.eq_ignore_ascii_case("min-fresh") {
                    if let Ok(Some(d)) = delta(m.value) {
                        cc.min_fresh = Some(cc.min_fresh.map_or(d, |p| p.max(d)));
                    }
                } else if name.eq_ignore_ascii_case("no-cache") {
                    cc.no_cache = true;
                } else if name.eq_ignore_ascii_case("no-store") {
                    cc.no_store = true;
                } else if name.eq_ignore_ascii_case("only-if-cached") {
                    cc.only_if_cached = true;
                } else if name.eq_ignore_ascii_case("stale-if-error")
                    && let Ok(Some(d)) = delta(m.value)
                {
                    cc.stale_if_error = min_opt(cc.stale_if_error, d);
                }
            }
        }
        if !any
            && headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| members(v).any(|m| m.name.eq_ignore_ascii_case("no-cache")))
        {
            cc.no_cache = true;
        }
        cc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(v: &str) -> ResponseDirectives {
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, v.parse().unwrap());
        ResponseDirectives::from_headers(&h)
    }
    fn req(v: &str) -> RequestDirectives {
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, v.parse().unwrap());
        RequestDirectives::from_headers(&h)
    }
    const S: fn(u64) -> Duration = Duration::from_secs;

    // RFC 9111 §5.2: directive names are case-insensitive, unknown ones ignored.
    #[test]
    fn s5_2_case_insensitive_and_unknown_ignored() {
        let cc = res("Max-Age=10, FOO, bar=\"x,y\", PUBLIC");
        assert_eq!(cc.max_age, Some(S(10)));
        assert!(cc.public);
        assert!(!cc.private);
    }

    // §5.2: quoted commas do not split members; qualified no-cache/private are unqualified.
    #[test]
    fn s5_2_2_qualified_forms_are_strict() {
        let cc = res("no-cache=\"Set-Cookie, X-Foo\", max-age=5, private=\"a\"");
        assert!(cc.no_cache);
        assert!(cc.private);
        assert_eq!(cc.max_age, Some(S(5)));
    }

    // §4.2.1: duplicates/conflicts handled conservatively.
    #[test]
    fn s4_2_1_duplicates_keep_most_restrictive() {
        let cc = res("max-age=100, max-age=10");
        assert_eq!(cc.max_age, Some(S(10)));
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, "max-age=10".parse().unwrap());
        h.append(CACHE_CONTROL, "max-age=3".parse().unwrap());
        assert_eq!(ResponseDirectives::from_headers(&h).max_age, Some(S(3)));
    }

    // §1.2.2: malformed delta-seconds never panic; overflow saturates.
    #[test]
    fn s1_2_2_malformed_and_huge_values() {
        assert_eq!(res("max-age=abc").max_age, Some(Duration::ZERO));
        assert_eq!(res("max-age=").max_age, Some(Duration::ZERO));
        assert_eq!(res("max-age=-5").max_age, Some(Duration::ZERO));
        assert_eq!(
            res("max-age=99999999999999999999999999").max_age,
            Some(S(MAX_DELTA_SECONDS))
        );
        assert_eq!(res("s-maxage=1x").s_maxage, Some(Duration::ZERO));
        assert_eq!(res("stale-while-revalidate=x").stale_while_revalidate, None);
        for junk in [",,,", "=", "\"", "max-age=\"", "a=\"unterminated, b", "é=1"] {
            let _ = res(junk);
            let _ = req(junk);
        }
    }

    // §5.2.1: request directives.
    #[test]
    fn s5_2_1_request_directives() {
        let cc = req("max-age=5, min-fresh=3, no-cache, no-store, only-if-cached");
        assert_eq!(cc.max_age, Some(S(5)));
        assert_eq!(cc.min_fresh, Some(S(3)));
        assert!(cc.no_cache && cc.no_store && cc.only_if_cached);
        assert_eq!(req("max-stale").max_stale, Some(None));
        assert_eq!(req("max-stale=7").max_stale, Some(Some(S(7))));
        assert_eq!(req("max-stale=x").max_stale, Some(Some(Duration::ZERO)));
        assert_eq!(req("max-stale=9, max-stale=4").max_stale, Some(Some(S(4))));
    }

    // §5.4: Pragma: no-cache only without Cache-Control.
    #[test]
    fn s5_4_pragma() {
        let mut h = HeaderMap::new();
        h.insert(PRAGMA, "no-cache".parse().unwrap());
        assert!(RequestDirectives::from_headers(&h).no_cache);
        h.insert(CACHE_CONTROL, "max-age=10".parse().unwrap());
        assert!(!RequestDirectives::from_headers(&h).no_cache);
    }

    // §4.2.4: which directives forbid serving stale.
    #[test]
    fn s4_2_4_forbids_stale() {
        assert!(res("must-revalidate").forbids_stale(false));
        assert!(res("no-cache").forbids_stale(false));
        assert!(!res("proxy-revalidate").forbids_stale(false));
        assert!(res("proxy-revalidate").forbids_stale(true));
        assert!(res("s-maxage=5").forbids_stale(true));
        assert!(!res("max-age=5").forbids_stale(true));
    }
}
