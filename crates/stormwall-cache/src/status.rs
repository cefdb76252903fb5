//! RFC 9211 `Cache-Status` values.

use http::HeaderValue;
use http::header::HeaderName;

/// The `Cache-Status` header name.
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went forward (RFC 9211 §2.2 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fwd {
    Bypass,
    Method,
    UriMiss,
    VaryMiss,
    Request,
    Stale,
}

impl Fwd {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Method => "method",
            Self::UriMiss => "uri-miss",
            Self::VaryMiss => "vary-miss",
            Self::Request => "request",
            Self::Stale => "stale",
        }
    }
}

/// One cache's member of `Cache-Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(crate) struct Status {
    pub(crate) hit: bool,
    pub(crate) fwd: Option<Fwd>,
    pub(crate) fwd_status: Option<u16>,
    pub(crate) ttl: Option<i64>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
    pub(crate) detail: Option<&'static str>,
}

impl Status {
    pub(crate) fn hit(ttl: i64) -> Self {
        Self {
            hit: true,
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// A fresh hit and nothing else: the `Cache-Status` an entry memoizes.
    pub(crate) fn is_plain_hit(&self) -> bool {
        self.hit
            && self.fwd.is_none()
            && self.fwd_status.is_none()
            && !self.stored
            && !self.collapsed
            && self.detail.is_none()
    }

    pub(crate) fn fwd(fwd: Fwd) -> Self {
        Self {
            fwd: Some(fwd),
            ..Self::default()
        }
    }

    pub(crate) fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }

    /// Formats the member after `name` (an already formatted sf-token or sf-string).
    pub(crate) fn to_header(self, name: &str) -> HeaderValue {
        let mut s = String::with_capacity(name.len() + 48);
        s.push_str(name);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd.as_str());
        }
        if let Some(code) = self.fwd_status {
            s.push_str("; fwd-status=");
            push_int(&mut s, i64::from(code));
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            push_int(&mut s, ttl);
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static("stormwall"))
    }
}

/// Appends a decimal integer without going through `fmt`.
fn push_int(s: &mut String, n: i64) {
    if n < 0 {
        s.push('-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        s.push(char::from(d));
    }
}

/// Formats a cache name as an sf-token when possible, else as an sf-string.
pub(crate) fn format_name(name: &str) -> String {
    let is_token = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '*')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c));
    if is_token {
        return name.to_owned();
    }
    let mut s = String::from("\"");
    for c in name.chars().filter(|c| (' '..='~').contains(c)) {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 9211 §2: member syntax.
    #[test]
    fn rfc9211_formatting() {
        let st = Status {
            fwd: Some(Fwd::UriMiss),
            fwd_status: Some(200),
            ttl: Some(60),
            stored: true,
            ..Status::default()
        };
        assert_eq!(
            st.to_header("edge"),
            "edge; fwd=uri-miss; fwd-status=200; ttl=60; stored"
        );
        assert_eq!(Status::hit(-3).to_header("c"), "c; hit; ttl=-3");
        assert_eq!(Status::hit(0).to_header("c"), "c; hit; ttl=0");
        assert_eq!(
            Status::hit(i64::MIN).to_header("c"),
            "c; hit; ttl=-9223372036854775808"
        );
        assert_eq!(format_name("My Cache \"1\""), "\"My Cache \\\"1\\\"\"");
        assert_eq!(format_name("cdn.example"), "cdn.example");
        assert_eq!(format_name(""), "\"\"");
    }
}
