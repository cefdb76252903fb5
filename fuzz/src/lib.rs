//! Fuzz checks for the Stormwall core's parsers of untrusted input.
//!
//! Each public function takes arbitrary bytes, feeds them to one parser of
//! `stormwall_core` and panics if an invariant is broken (a panic inside the parser is, of
//! course, also a finding). The `fuzz_targets/` binaries are one-line libFuzzer wrappers
//! around them; `scripts/fuzz` runs them.
//!
//! Input format (so the seed corpus in `corpus/<target>/` stays readable): the bytes are split
//! into lines (`\n`, a trailing `\r` dropped). Depending on the target a line is either a raw
//! header value, or `name: value` (an HTTP header field); lines that are not a valid header
//! name/value are skipped, since `http` itself would refuse them on the wire.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use stormwall_core::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, Failure, ResilienceClassifier, grpc_status,
};
use stormwall_core::headers::{
    GrpcPushback, LegacyRateLimit, MAX_PUSHBACK, Pushback, RATELIMIT, RATELIMIT_POLICY,
    RateLimitPolicy, RateLimitStatus, RetryAfter, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET, format_retry_after,
};
use stormwall_core::key::{
    AuthorityKey, ClientIp, ForwardedHeader, HeaderKey, KeyExtractor, PeerAddr, TrustedProxies,
    normalize_ip, parse_node,
};

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

fn values(data: &[u8]) -> Vec<HeaderValue> {
    lines(data)
        .filter_map(|l| HeaderValue::from_bytes(l).ok())
        .collect()
}

fn field(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = HeaderName::from_bytes(line[..colon].trim_ascii()).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start()).ok()?;
    Some((name, value))
}

fn header_map<'a>(lines: impl Iterator<Item = &'a [u8]>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in lines.filter_map(field) {
        map.append(name, value);
    }
    map
}

fn all_under(name: &HeaderName, values: Vec<HeaderValue>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for v in values {
        map.append(name.clone(), v);
    }
    map
}

/// The clocks every time-dependent parser is checked against: the epoch, now, and a time in
/// 2033 (legacy resets above one billion are Unix timestamps).
fn nows() -> [SystemTime; 3] {
    [
        UNIX_EPOCH,
        SystemTime::now(),
        UNIX_EPOCH + Duration::from_secs(2_000_000_000),
    ]
}

/// `Retry-After`: every line is one field value. A parsed delay is at most `MAX_PUSHBACK`
/// from any clock, and a delay formatted back reads as at least itself, less than 1 s more.
pub fn retry_after(data: &[u8]) {
    let values = values(data);
    for v in &values {
        let Some(parsed) = RetryAfter::parse(v) else {
            continue;
        };
        for now in nows() {
            assert!(parsed.delay(now) <= MAX_PUSHBACK, "{v:?} -> {parsed:?}");
        }
        if let RetryAfter::Delay(d) = parsed {
            let back = RetryAfter::parse(&format_retry_after(d))
                .expect("formatted Retry-After parses")
                .delay(UNIX_EPOCH);
            assert!(
                back >= d && back - d < Duration::from_secs(1),
                "{d:?} -> {back:?}"
            );
        }
    }
    let map = all_under(&http::header::RETRY_AFTER, values);
    if let Some(first) = RetryAfter::from_headers(&map) {
        assert!(first.delay(SystemTime::now()) <= MAX_PUSHBACK);
    }
}

/// `RateLimit` (draft-10): every line is one field line. Resets are clamped, and what is
/// parsed formats back to a field that parses to the same entries.
pub fn ratelimit(data: &[u8]) {
    let map = all_under(&RATELIMIT, values(data));
    let parsed = RateLimitStatus::parse_all(&map);
    for s in &parsed {
        assert!(s.reset.is_none_or(|r| r <= MAX_PUSHBACK), "{s:?}");
    }
    if parsed.is_empty() {
        return;
    }
    let formatted = RateLimitStatus::format_all(&parsed).expect("parsed entries format");
    let again = RateLimitStatus::parse_all(&all_under(&RATELIMIT, vec![formatted.clone()]));
    assert_eq!(again, parsed, "{formatted:?}");
}

/// `RateLimit-Policy` (draft-10): like [`ratelimit`]. The `qu` (quota unit) parameter is not
/// written back by `format_all`, so it is left out of the round-trip comparison.
pub fn ratelimit_policy(data: &[u8]) {
    let map = all_under(&RATELIMIT_POLICY, values(data));
    let parsed = RateLimitPolicy::parse_all(&map);
    if parsed.is_empty() {
        return;
    }
    let formatted = RateLimitPolicy::format_all(&parsed).expect("parsed policies format");
    let again = RateLimitPolicy::parse_all(&all_under(&RATELIMIT_POLICY, vec![formatted.clone()]));
    let without_unit = |ps: &[RateLimitPolicy]| {
        ps.iter()
            .cloned()
            .map(|mut p| {
                p.quota_unit = None;
                p
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(without_unit(&again), without_unit(&parsed), "{formatted:?}");
}

/// Legacy `X-RateLimit-*`: lines are `name: value` header fields. The reset is clamped, and
/// writing what was parsed and parsing it again keeps limit and remaining, and the reset
/// rounded up to whole seconds.
pub fn legacy_ratelimit(data: &[u8]) {
    let map = header_map(lines(data));
    for now in nows() {
        let Some(parsed) = LegacyRateLimit::parse(&map, now) else {
            continue;
        };
        assert!(parsed.reset.is_none_or(|r| r <= MAX_PUSHBACK), "{parsed:?}");
        let mut written = HeaderMap::new();
        parsed.write(&mut written);
        for name in [
            &X_RATELIMIT_LIMIT,
            &X_RATELIMIT_REMAINING,
            &X_RATELIMIT_RESET,
        ] {
            assert!(written.get_all(name).iter().count() <= 1);
        }
        let again = LegacyRateLimit::parse(&written, now).expect("written headers parse");
        assert_eq!(
            (again.limit, again.remaining),
            (parsed.limit, parsed.remaining)
        );
        if let (Some(a), Some(b)) = (parsed.reset, again.reset) {
            assert!(b >= a && b - a < Duration::from_secs(1), "{a:?} -> {b:?}");
        } else {
            assert_eq!(parsed.reset.is_some(), again.reset.is_some());
        }
    }
}

/// `grpc-retry-pushback-ms`: every line is one value. A pushback is clamped and round-trips
/// through its header value.
pub fn grpc_pushback(data: &[u8]) {
    for v in values(data) {
        let map = all_under(
            &stormwall_core::headers::GRPC_RETRY_PUSHBACK_MS,
            vec![v.clone()],
        );
        let parsed = GrpcPushback::from_headers(&map).expect("present header parses to something");
        if let Ok(s) = v.to_str() {
            assert_eq!(GrpcPushback::parse_str(s), parsed);
        }
        if let GrpcPushback::After(d) = parsed {
            assert!(d <= MAX_PUSHBACK);
        }
        let back = parsed.to_header_value();
        assert_eq!(
            GrpcPushback::parse_str(back.to_str().expect("ascii")),
            parsed
        );
    }
}

/// `Pushback::from_headers`: lines are `name: value` header fields. The delay is clamped; an
/// exhausted quota's reset is waited for.
pub fn pushback(data: &[u8]) {
    let map = header_map(lines(data));
    for now in nows() {
        let p = Pushback::from_headers(&map, now);
        assert!(p.delay.is_none_or(|d| d <= MAX_PUSHBACK), "{p:?}");
        if let Some((r, reset)) = p.remaining {
            assert!(reset.is_none_or(|d| d <= MAX_PUSHBACK), "{p:?}");
            if let (0, Some(reset)) = (r, reset) {
                assert!(p.delay >= Some(reset), "{p:?}");
            }
        }
    }
}

fn trust(spec: &str) -> TrustedProxies {
    if let Some(n) = spec.strip_prefix("hops=") {
        return TrustedProxies::hops(n.parse::<usize>().unwrap_or(1).min(64));
    }
    match spec {
        "none" => TrustedProxies::None,
        _ => TrustedProxies::cidrs(["10.0.0.0/8", "192.168.0.0/16", "fd00::/8"])
            .expect("valid networks"),
    }
}

/// `ClientIp` (and the other header-reading key extractors). The first line configures the
/// extractor: `<peer-ip> <none|cidrs|hops=N> <xff|forwarded|single>` (missing or bad parts get
/// defaults); the remaining lines are `name: value` header fields.
///
/// Invariants: an untrusted peer (trust `none`, or `cidrs` when the peer is outside
/// 10/8, 192.168/16, fd00::/8) is always the key, whatever the headers say; the extracted key
/// equals the resolved address normalized; nothing panics.
pub fn client_ip(data: &[u8]) {
    let mut lines = lines(data);
    let config = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let mut parts = config.split_ascii_whitespace();
    let peer: IpAddr = parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(IpAddr::from([203, 0, 113, 9]));
    let trusted = trust(parts.next().unwrap_or("cidrs"));
    let header = match parts.next().unwrap_or("xff") {
        "forwarded" => ForwardedHeader::Forwarded,
        "single" => ForwardedHeader::Single(HeaderName::from_static("x-real-ip")),
        _ => ForwardedHeader::XForwardedFor,
    };
    let map = header_map(lines);

    let peer_is_trusted = match &trusted {
        TrustedProxies::None => false,
        TrustedProxies::Hops(_) => true,
        TrustedProxies::Cidrs(nets) => {
            let p = normalize_ip(peer, 128);
            nets.iter().any(|n| n.contains(&p))
        }
    };
    let extractor = ClientIp::new(trusted).header(header);
    let resolved = extractor.resolve(peer, &map);
    if !peer_is_trusted {
        assert_eq!(resolved, normalize_ip(peer, 128), "{config:?} {map:?}");
    }

    let mut req = Request::new(());
    *req.headers_mut() = map;
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(peer, 4000)));
    let key = extractor.extract(&req).expect("peer address present");
    assert_eq!(key, normalize_ip(resolved, 64));
    for hop in req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
    {
        let _ = parse_node(hop);
    }
    let _ = HeaderKey::new("x-api-key").extract(&req);
    let _ = AuthorityKey.extract(&req);
}

fn check_failure(failure: &Failure) {
    assert!(
        failure.pushback().is_none_or(|d| d <= MAX_PUSHBACK),
        "{failure:?}"
    );
}

/// Classification of an arbitrary response: the first line is the status code (digits; `200`
/// when invalid), the remaining lines are `name: value` header fields (also used as trailers).
///
/// Invariants: pushback clamped; 2xx/3xx without gRPC content are successes; a 429 is a
/// back-off; nothing panics, including end-of-stream classification with and without
/// trailers.
pub fn classify(data: &[u8]) {
    let mut lines = lines(data);
    let status = std::str::from_utf8(lines.next().unwrap_or_default())
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let map = header_map(lines);
    let _ = grpc_status(&map);

    for classifier in [
        ResilienceClassifier::new(),
        ResilienceClassifier::new()
            .too_many_requests_is_failure(false)
            .failure_range(400, 599),
    ] {
        match classifier.classify_status(status, &map) {
            Ok(()) => {}
            Err(f) => check_failure(&f),
        }
        if let Err(f) = classifier.classify_grpc(&map) {
            check_failure(&f);
        }
        let mut res = Response::new(());
        *res.status_mut() = status;
        *res.headers_mut() = map.clone();
        match classifier.clone().classify_response(&res) {
            ClassifiedResponse::Ready(Ok(())) => {}
            ClassifiedResponse::Ready(Err(f)) => check_failure(&f),
            ClassifiedResponse::RequiresEos(eos) => {
                if let Err(f) = eos.clone().classify_eos(Some(&map)) {
                    check_failure(&f);
                }
                assert!(eos.classify_eos(None).is_err());
            }
        }
    }

    let is_grpc = map
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if !is_grpc {
        let classified = ResilienceClassifier::new().classify_response(&{
            let mut res = Response::new(());
            *res.status_mut() = status;
            *res.headers_mut() = map.clone();
            res
        });
        let ClassifiedResponse::Ready(result) = classified else {
            panic!("a plain HTTP response is classified at once");
        };
        if status.is_success() || status.is_redirection() {
            assert!(result.is_ok(), "{status} {result:?}");
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(result.is_err_and(|f| f.is_back_off()));
        }
    }
}

/// The signature of every check.
pub type Check = fn(&[u8]);

/// Every target, by name, as `fuzz_targets/<name>.rs` and `corpus/<name>/` are named.
pub const TARGETS: &[(&str, Check)] = &[
    ("retry_after", retry_after),
    ("ratelimit", ratelimit),
    ("ratelimit_policy", ratelimit_policy),
    ("legacy_ratelimit", legacy_ratelimit),
    ("grpc_pushback", grpc_pushback),
    ("pushback", pushback),
    ("client_ip", client_ip),
    ("classify", classify),
];

#[cfg(test)]
mod tests {
    /// Replays the checked-in seed corpus through every check (`cargo test` in `fuzz/`, no
    /// libFuzzer involved).
    #[test]
    fn seed_corpus_passes_every_check() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, check) in super::TARGETS {
            let mut n = 0;
            for entry in std::fs::read_dir(root.join(name)).expect("corpus dir") {
                let data = std::fs::read(entry.expect("entry").path()).expect("read");
                check(&data);
                n += 1;
            }
            assert!(n > 0, "{name} has no seed corpus");
        }
    }
}
