//! Scenario 8 — hostile headers: `Retry-After`, `RateLimit`, `RateLimit-Policy`,
//! `X-RateLimit-*`, `grpc-retry-pushback-ms`, `Cache-Control`, `Vary` (and `Expires`, `Age`)
//! with huge, negative, overflowing, non-UTF-8, malformed and repeated values → no panic, no
//! overflow, every delay ≤ `MAX_PUSHBACK`, and the specific sane results listed in
//! [`sane_results`]; in process and off the wire from the fault server (HTTP and gRPC).
//!
//! `Cache-Control`/`Vary` have no parser in the core: here they only prove that the core's
//! classification ignores them. Their parsing under hostile input belongs to the cache layer's
//! scenario (pending the cache layer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use stormwall_core::classify::{
    ClassifiedResponse, ClassifyResponse, Failure, GrpcCode, ResilienceClassifier,
};
use stormwall_core::headers::{
    GRPC_RETRY_PUSHBACK_MS, GrpcPushback, LegacyRateLimit, MAX_PUSHBACK, Pushback, RateLimitPolicy,
    RateLimitStatus, RetryAfter, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
use stormwall_tests::fault::{FaultServer, Reply};
use stormwall_tests::http::client;

const HOSTILE: &[&[u8]] = &[
    b"",
    b" ",
    b"0",
    b"-0",
    b"-1",
    b"-9223372036854775808",
    b"9223372036854775807",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999999999999999",
    b"1e308",
    b"1e309",
    b"NaN",
    b"inf",
    b"-inf",
    b"0x10",
    b"+5",
    b"5,6",
    b"5 6",
    b"1.5",
    b"0.0000000001",
    b"99999999999999999999.5",
    b"340282366920938463463374607431768211456.0",
    b"Fri, 31 Dec 9999 23:59:59 GMT",
    b"Mon, 01 Jan 0001 00:00:00 GMT",
    b"Thu, 01 Jan 1970 00:00:00 GMT",
    b"Sun, 06 Nov 1994 08:49:37 GMT",
    b"\xff\xfe\xfd",
    b"12\x80",
    b"\"default\";r=0;t=999999999999999",
    b"\"d\";r=-1;t=-1",
    b"\"d\";r=0;t=99999999999999999999",
    b"\"a\";q=999999999999999;w=999999999999999",
    b"\"a\";q=-5;w=-5;qu=\"requests\"",
    b"(\"x\" \"y\");r=0;t=5",
    b"\"x\";r=0;t=5, \"y\";r=0;t=999999999999999",
    b"\"x\";r=0;t=1.5",
    b"max-age=99999999999999999999, no-cache=\"set-cookie\", s-maxage=-1",
    b"*",
    b"accept-encoding, *, \xff",
    b"\"unterminated",
    b";;;,,,",
];

fn huge_values() -> Vec<Vec<u8>> {
    vec![
        vec![b'9'; 5000],
        vec![b'1'; 4000],
        "\"a\";r=0;t=1, ".repeat(300).into_bytes(),
        "1, ".repeat(1500).into_bytes(),
    ]
}

fn all_values() -> Vec<Vec<u8>> {
    HOSTILE
        .iter()
        .map(|v| v.to_vec())
        .chain(huge_values())
        .collect()
}

const NAMES: &[&str] = &[
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "grpc-retry-pushback-ms",
    "grpc-status",
    "cache-control",
    "vary",
    "expires",
    "age",
];

fn nows() -> [SystemTime; 3] {
    [
        UNIX_EPOCH,
        SystemTime::now(),
        UNIX_EPOCH + Duration::from_secs(2_000_000_000),
    ]
}

/// The header sets of one value on one header: once, three times, and followed by a valid
/// value.
fn layouts(name: &HeaderName, value: &HeaderValue) -> Vec<HeaderMap> {
    let once = HeaderMap::from_iter([(name.clone(), value.clone())]);
    let mut thrice = HeaderMap::new();
    for _ in 0..3 {
        thrice.append(name.clone(), value.clone());
    }
    let mut then_valid = once.clone();
    then_valid.append(name.clone(), HeaderValue::from_static("3"));
    vec![once, thrice, then_valid]
}

/// Runs every core parser and the classifier over `headers`; returns the longest delay seen.
fn parse_everything(headers: &HeaderMap) -> Duration {
    let mut longest = Duration::ZERO;
    let mut see = |d: Duration| {
        assert!(d <= MAX_PUSHBACK, "{d:?} from {headers:?}");
        longest = longest.max(d);
    };
    for now in nows() {
        if let Some(ra) = RetryAfter::from_headers(headers) {
            see(ra.delay(now));
        }
        let p = Pushback::from_headers(headers, now);
        if let Some(d) = p.delay {
            see(d);
        }
        if let Some((_, Some(reset))) = p.remaining {
            see(reset);
        }
        if let Some(legacy) = LegacyRateLimit::parse(headers, now)
            && let Some(reset) = legacy.reset
        {
            see(reset);
        }
    }
    for s in RateLimitStatus::parse_all(headers) {
        if let Some(reset) = s.reset {
            see(reset);
        }
    }
    for p in RateLimitPolicy::parse_all(headers) {
        assert!(p.window.is_none_or(|w| w <= MAX_PUSHBACK * 366));
    }
    if let Some(GrpcPushback::After(d)) = GrpcPushback::from_headers(headers) {
        see(d);
    }
    let classifier = ResilienceClassifier::new();
    for status in [200, 429, 500, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        match classifier.classify_status(status, headers) {
            Ok(()) => assert!(status.is_success(), "{status} {headers:?}"),
            Err(f) => {
                if let Some(d) = f.pushback() {
                    see(d);
                }
                if status == StatusCode::TOO_MANY_REQUESTS {
                    assert!(f.is_back_off());
                }
            }
        }
    }
    if let Err(f) = classifier.classify_grpc(headers)
        && let Some(d) = f.pushback()
    {
        see(d);
    }
    let mut grpc = headers.clone();
    grpc.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let mut res = Response::new(());
    *res.headers_mut() = grpc;
    if let ClassifiedResponse::Ready(Err(f)) = classifier.classify_response(&res)
        && let Some(d) = f.pushback()
    {
        see(d);
    }
    longest
}

#[test]
fn every_hostile_value_on_every_header() {
    let mut sets = 0usize;
    let mut longest = Duration::ZERO;
    for name in NAMES {
        let name = HeaderName::from_static(name);
        for value in all_values() {
            let value = HeaderValue::from_bytes(&value).unwrap();
            for headers in layouts(&name, &value) {
                longest = longest.max(parse_everything(&headers));
                sets += 1;
            }
        }
    }
    // Everything at once.
    let mut all = HeaderMap::new();
    for name in NAMES {
        for value in all_values() {
            all.append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(&value).unwrap(),
            );
        }
    }
    longest = longest.max(parse_everything(&all));
    sets += 1;
    println!(
        "scenario 8 (in process): {sets} hostile header sets ({} values x {} headers x 3 layouts + all at once), 0 panics, longest delay {longest:?} <= MAX_PUSHBACK {MAX_PUSHBACK:?}",
        all_values().len(),
        NAMES.len()
    );
    assert_eq!(
        longest, MAX_PUSHBACK,
        "some value should saturate at the clamp"
    );
}

fn one(name: &str, value: &[u8]) -> HeaderMap {
    HeaderMap::from_iter([(
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        HeaderValue::from_bytes(value).unwrap(),
    )])
}

/// Specific sane results for hostile values.
#[test]
fn sane_results() {
    let now = SystemTime::now();
    let ra = |v: &[u8]| RetryAfter::from_headers(&one("retry-after", v)).map(|r| r.delay(now));
    assert_eq!(ra(b"99999999999999999999"), Some(MAX_PUSHBACK)); // overflow clamps
    assert_eq!(ra(b"Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_PUSHBACK));
    assert_eq!(ra(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO)); // past: no wait
    for bad in [
        &b"-1"[..],
        b"1e9",
        b"NaN",
        b"inf",
        b"\xff\xfe",
        b"0x10",
        b"5,6",
        b"",
    ] {
        assert_eq!(ra(bad), None, "{bad:?}");
    }
    assert_eq!(ra(&[b'9'; 5000]), None); // over the field length bound: ignored
    let mut repeated = one("retry-after", b"\xff");
    repeated.append(RETRY_AFTER, HeaderValue::from_static("junk"));
    repeated.append(RETRY_AFTER, HeaderValue::from_static("3"));
    assert_eq!(
        RetryAfter::from_headers(&repeated).map(|r| r.delay(now)),
        Some(Duration::from_secs(3))
    );

    let gp = |v: &[u8]| GrpcPushback::from_headers(&one("grpc-retry-pushback-ms", v));
    assert_eq!(gp(b"-1"), Some(GrpcPushback::DoNotRetry));
    assert_eq!(gp(b"\xff"), Some(GrpcPushback::DoNotRetry));
    assert_eq!(
        gp(b"18446744073709551616"),
        Some(GrpcPushback::After(MAX_PUSHBACK))
    );
    let p = Pushback::from_headers(&one("grpc-retry-pushback-ms", b"-1"), now);
    assert!(p.do_not_retry && p.delay.is_none());

    // Structured fields: out-of-range integers make the line malformed (ignored); in-range
    // huge resets clamp.
    assert!(
        RateLimitStatus::parse_all(&one("ratelimit", b"\"d\";r=0;t=99999999999999999999"))
            .is_empty()
    );
    let p = Pushback::from_headers(&one("ratelimit", b"\"d\";r=0;t=999999999999999"), now);
    assert_eq!(p.delay, Some(MAX_PUSHBACK));
    assert!(RateLimitStatus::parse_all(&one("ratelimit", b"\"d\";r=-1;t=-1")).is_empty());
    assert!(RateLimitPolicy::parse_all(&one("ratelimit-policy", b"\"a\";q=-5;w=-5")).is_empty());

    // Legacy: a reset far past the Unix epoch's range does not overflow; a timestamp reset
    // clamps; negative counts are ignored.
    let legacy = |pairs: &[(&HeaderName, &[u8])], now: SystemTime| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append((*n).clone(), HeaderValue::from_bytes(v).unwrap());
        }
        LegacyRateLimit::parse(&h, now)
    };
    let at = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    assert_eq!(
        legacy(&[(&X_RATELIMIT_RESET, b"18446744073709551615")], at),
        None
    );
    assert_eq!(
        legacy(&[(&X_RATELIMIT_RESET, b"4000000000")], at)
            .unwrap()
            .reset,
        Some(MAX_PUSHBACK)
    );
    assert_eq!(
        legacy(
            &[
                (&X_RATELIMIT_REMAINING, b"-3"),
                (&X_RATELIMIT_LIMIT, b"99999999999999999999")
            ],
            at
        )
        .unwrap(),
        LegacyRateLimit {
            limit: Some(u64::MAX),
            remaining: None,
            reset: None
        }
    );

    // Classification: junk pushback on a 503 is a plain failure, not a back-off; a 429 is a
    // back-off whatever its headers; Cache-Control/Vary change nothing.
    let c = ResilienceClassifier::new();
    assert_eq!(
        c.classify_status(
            StatusCode::SERVICE_UNAVAILABLE,
            &one("retry-after", b"soon")
        ),
        Err(Failure::Status(StatusCode::SERVICE_UNAVAILABLE))
    );
    assert!(
        c.classify_status(StatusCode::TOO_MANY_REQUESTS, &one("retry-after", b"\xff"))
            .unwrap_err()
            .is_back_off()
    );
    for name in ["cache-control", "vary"] {
        for v in HOSTILE {
            let h = one(name, v);
            assert_eq!(c.classify_status(StatusCode::OK, &h), Ok(()));
            assert_eq!(
                c.classify_status(StatusCode::BAD_GATEWAY, &h),
                Err(Failure::Status(StatusCode::BAD_GATEWAY))
            );
        }
    }
    // An out-of-range grpc-status is UNKNOWN, a failure. (Finding F2, RELIABILITY.md: a value
    // that does not parse as an i32 at all, e.g. `99999999999`, is read as *no* status and
    // classified as a success; not asserted here until the core decides.)
    for code in [&b"17"[..], b"-1", b"2147483647"] {
        assert!(
            matches!(
                c.classify_grpc(&one("grpc-status", code)),
                Err(Failure::Grpc {
                    code: GrpcCode::Unknown,
                    ..
                })
            ),
            "{code:?}"
        );
    }
}

#[tokio::test]
async fn hostile_headers_off_the_wire() {
    let server = FaultServer::start().await;
    let client = client();
    let mut checked = 0usize;
    for name in NAMES {
        for value in all_values() {
            for status in [
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS,
                StatusCode::SERVICE_UNAVAILABLE,
            ] {
                let reply = Reply::new(status)
                    .header(*name, value.as_slice())
                    .header(*name, value.as_slice());
                let sent = reply.headers.clone();
                server.fail_with(1.0, reply);
                let res = tokio::time::timeout(
                    Duration::from_secs(20),
                    client.get(server.url("/").parse().unwrap()),
                )
                .await
                .expect("bounded")
                .unwrap();
                assert_eq!(res.status(), status);
                let got: Vec<&[u8]> = res
                    .headers()
                    .get_all(*name)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                // HTTP strips optional whitespace around field values; nothing else changes.
                let want: Vec<&[u8]> = sent
                    .get_all(*name)
                    .iter()
                    .map(|v| v.as_bytes().trim_ascii())
                    .collect();
                assert_eq!(got, want, "{name} arrived altered");
                parse_everything(res.headers());
                let classified = ResilienceClassifier::new().classify_response(&res);
                match classified {
                    ClassifiedResponse::Ready(Ok(())) => assert_eq!(status, StatusCode::OK),
                    ClassifiedResponse::Ready(Err(f)) => {
                        assert_ne!(status, StatusCode::OK);
                        assert!(f.pushback().is_none_or(|d| d <= MAX_PUSHBACK));
                    }
                    ClassifiedResponse::RequiresEos(_) => panic!("not a gRPC response"),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(server.stats().errors, checked as u64);
    println!(
        "scenario 8 (off the wire, HTTP/1.1): {checked} hostile responses from the fault server arrived verbatim and classified with pushback <= MAX_PUSHBACK"
    );
}

#[tokio::test]
async fn hostile_grpc_pushback_off_the_wire() {
    let server = FaultServer::builder().grpc().start().await;
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut checked = 0usize;
    for value in all_values() {
        server.fail_with(
            1.0,
            Reply::grpc(tonic::Code::ResourceExhausted)
                .header(GRPC_RETRY_PUSHBACK_MS.clone(), value.as_slice()),
        );
        let req = Request::post(server.url("/stormwall.test.Echo/Unary"))
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(Full::default())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(20), h2.request(req))
            .await
            .expect("bounded")
            .unwrap();
        assert_eq!(
            res.headers()[&GRPC_RETRY_PUSHBACK_MS].as_bytes(),
            value.as_slice()
        );
        let ClassifiedResponse::Ready(Err(failure)) =
            ResilienceClassifier::new().classify_response(&res)
        else {
            panic!("a trailers-only RESOURCE_EXHAUSTED is a failure at once");
        };
        assert!(failure.is_back_off(), "{failure:?}");
        assert!(failure.pushback().is_none_or(|d| d <= MAX_PUSHBACK));
        let expected = GrpcPushback::from_headers(res.headers());
        match expected {
            Some(GrpcPushback::After(d)) => assert_eq!(failure.pushback(), Some(d)),
            _ => assert_eq!(failure.pushback(), None),
        }
        checked += 1;
    }
    println!(
        "scenario 8 (off the wire, gRPC/h2): {checked} hostile grpc-retry-pushback-ms values classified as back-off with pushback <= MAX_PUSHBACK"
    );
    assert_eq!(server.stats().errors, checked as u64);
}
