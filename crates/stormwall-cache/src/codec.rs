//! The binary encoding of stored variants for the Redis tier (versioned, compact, and
//! decoded defensively: garbage, a truncated value or another version decode to `None`).
//!
//! Layout (integers big-endian; `str16` = u16 length + bytes, `bytes32` = u32 length + bytes):
//!
//! ```text
//! "SWC" version:u8(=1) shared:u8 count:u16
//! count × variant:
//!   status:u16
//!   stored-at:u64   (wall clock, ms since the Unix epoch, when this value was written)
//!   age:u64         (the entry's current age in ms at `stored-at`, RFC 9111 §4.2.3)
//!   lifetime:u64    (freshness lifetime in ms, as computed by the writer)
//!   vary: u8 (0 = `*`, 1 = fields) [fields: u16 n, n × (name:str16, has:u8, value:bytes32?)]
//!   headers: u16 n, n × (name:str16, value:bytes32)
//!   body: bytes32
//!   trailers: u8 (0 | 1) [u16 n, n × (name:str16, value:bytes32)]
//! ```
//!
//! Not kept: the HTTP version and the extensions of the stored response (a decoded entry is
//! served as HTTP/1.1, which the connection's own protocol overrides anyway).
//!
//! `Instant`s do not cross processes, so ages travel as "age at a wall-clock time": the
//! reader adds the wall-clock time elapsed since `stored-at` (clamped at zero if its clock is
//! behind the writer's).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use stormwall_core::SharedResponse;
use stormwall_core::time::Instant;

use crate::directives::ResponseDirectives;
use crate::policy::{Freshness, VaryKey};
use crate::store::Entry;

/// The magic prefix of an encoded value.
const MAGIC: &[u8; 3] = b"SWC";
/// The encoding version written; values of any other version are misses.
pub(crate) const VERSION: u8 = 1;
/// Most header (or trailer) fields per response, and secondary-key fields per variant, in
/// a value (`HeaderMap` holds at most 32 768; hyper accepts 100 by default).
const MAX_FIELDS: usize = 4096;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wall_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// Writes a length-prefixed field; `None` if it does not fit its length prefix.
fn put_str16(out: &mut Vec<u8>, s: &[u8]) -> Option<()> {
    out.put_u16(u16::try_from(s.len()).ok()?);
    out.put_slice(s);
    Some(())
}

fn put_bytes32(out: &mut Vec<u8>, s: &[u8]) -> Option<()> {
    out.put_u32(u32::try_from(s.len()).ok()?);
    out.put_slice(s);
    Some(())
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) -> Option<()> {
    if headers.len() > MAX_FIELDS {
        return None;
    }
    out.put_u16(u16::try_from(headers.len()).ok()?);
    for (name, value) in headers {
        put_str16(out, name.as_str().as_bytes())?;
        put_bytes32(out, value.as_bytes())?;
    }
    Some(())
}

/// Encodes `variants` as seen at `now` (monotonic) / `wall` (wall clock). `None` when a
/// field is too large for the format (the caller then does not write).
pub(crate) fn encode(
    variants: &[Arc<Entry>],
    shared: bool,
    now: Instant,
    wall: SystemTime,
) -> Option<Vec<u8>> {
    let size: usize = variants.iter().map(|e| e.weight()).sum();
    let mut out = Vec::with_capacity(size + 16);
    out.put_slice(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(u8::from(shared));
    out.put_u16(u16::try_from(variants.len()).ok()?);
    let stored_at = wall_millis(wall);
    for e in variants {
        let r = &e.response;
        out.put_u16(r.status().as_u16());
        out.put_u64(stored_at);
        out.put_u64(millis(e.freshness.current_age(now)));
        out.put_u64(millis(e.freshness.lifetime));
        match &e.vary {
            VaryKey::Star => out.put_u8(0),
            VaryKey::Fields(fields, forwarding) => {
                if fields.len() > MAX_FIELDS {
                    return None;
                }
                // 1: plain fields; 2: the forwarding headers are keyed too (shared mode).
                out.put_u8(if *forwarding { 2 } else { 1 });
                out.put_u16(u16::try_from(fields.len()).ok()?);
                for (name, value) in fields {
                    put_str16(&mut out, name.as_str().as_bytes())?;
                    match value {
                        None => out.put_u8(0),
                        Some(v) => {
                            out.put_u8(1);
                            put_bytes32(&mut out, v.as_bytes())?;
                        }
                    }
                }
            }
        }
        put_headers(&mut out, r.headers())?;
        put_bytes32(&mut out, r.body())?;
        match r.trailers() {
            None => out.put_u8(0),
            Some(t) => {
                out.put_u8(1);
                put_headers(&mut out, t)?;
            }
        }
    }
    Some(out)
}

/// A bounds-checked reader: every read is `None` past the end.
struct Reader<'a> {
    buf: &'a [u8],
    /// The whole value, to slice the body out of without copying.
    all: &'a Bytes,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.take(n)
    }
    fn name(&mut self) -> Option<HeaderName> {
        HeaderName::from_bytes(self.str16()?).ok()
    }
    fn headers(&mut self) -> Option<HeaderMap> {
        let n = usize::from(self.u16()?);
        if n > MAX_FIELDS {
            return None;
        }
        // Every header takes at least 6 bytes: a hostile count cannot make us reserve much.
        let mut map = HeaderMap::with_capacity(n.min(self.buf.len() / 6));
        for _ in 0..n {
            let name = self.name()?;
            let value = HeaderValue::from_bytes(self.bytes32()?).ok()?;
            map.append(name, value);
        }
        Some(map)
    }
    fn body(&mut self) -> Option<Bytes> {
        let n = usize::try_from(self.u32()?).ok()?;
        let start = self.all.len() - self.buf.len();
        self.take(n)?;
        Some(self.all.slice(start..start + n))
    }
}

/// Decodes a value written by [`encode`] into entries usable at `now` / `wall`. `None` for
/// anything else: garbage, truncation, trailing bytes, another version, or a value written
/// by a private cache when `shared` (a shared cache never serves what a private one kept).
pub(crate) fn decode(
    value: &Bytes,
    shared: bool,
    now: Instant,
    wall: SystemTime,
) -> Option<Vec<Arc<Entry>>> {
    let mut r = Reader {
        buf: value,
        all: value,
    };
    if r.take(3)? != MAGIC || r.u8()? != VERSION {
        return None;
    }
    let written_shared = r.u8()? == 1;
    if shared && !written_shared {
        return None;
    }
    let count = usize::from(r.u16()?);
    let mut out = Vec::with_capacity(count.min(64));
    let wall_ms = wall_millis(wall);
    for _ in 0..count {
        let status = StatusCode::from_u16(r.u16()?).ok()?;
        let stored_at = r.u64()?;
        let age = r.u64()?;
        let lifetime = r.u64()?;
        let vary = match r.u8()? {
            0 => VaryKey::Star,
            tag @ (1 | 2) => {
                let n = usize::from(r.u16()?);
                if n > MAX_FIELDS {
                    return None;
                }
                let mut fields = Vec::with_capacity(n.min(r.buf.len() / 3));
                for _ in 0..n {
                    let name = r.name()?;
                    let value = match r.u8()? {
                        0 => None,
                        1 => Some(String::from_utf8(r.bytes32()?.to_vec()).ok()?),
                        _ => return None,
                    };
                    fields.push((name, value));
                }
                VaryKey::Fields(fields, tag == 2)
            }
            _ => return None,
        };
        let headers = r.headers()?;
        let body = r.body()?;
        let trailers = match r.u8()? {
            0 => None,
            1 => Some(r.headers()?),
            _ => return None,
        };
        let elapsed = wall_ms.saturating_sub(stored_at);
        let response = SharedResponse::from_parts(status, headers, body, trailers);
        let directives = ResponseDirectives::from_headers(response.headers());
        out.push(Arc::new(Entry::from_parts(
            response,
            vary,
            directives,
            Freshness {
                response_time: now,
                corrected_initial_age: Duration::from_millis(age.saturating_add(elapsed)),
                lifetime: Duration::from_millis(lifetime),
            },
        )));
    }
    if !r.buf.is_empty() {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rules;
    use http::header::{ACCEPT_LANGUAGE, CACHE_CONTROL, VARY};

    fn entry(rules: &Rules, req: &HeaderMap, age: &str, trailers: bool) -> Arc<Entry> {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        headers.insert(VARY, HeaderValue::from_static("accept-language"));
        headers.insert("age", HeaderValue::from_str(age).unwrap());
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        let trailers = trailers.then(|| {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            t
        });
        let response = SharedResponse::from_parts(
            StatusCode::NON_AUTHORITATIVE_INFORMATION,
            headers,
            Bytes::from_static(b"body \x00\xff bytes"),
            trailers,
        );
        let now = Instant::now();
        Arc::new(Entry::new(
            rules,
            response,
            req,
            now,
            now,
            SystemTime::now(),
        ))
    }

    fn sample() -> (Vec<Arc<Entry>>, Rules) {
        let rules = Rules {
            shared: true,
            ..Rules::default()
        };
        let mut en = HeaderMap::new();
        en.insert(ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
        let fr = {
            let mut h = HeaderMap::new();
            h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
            h
        };
        let star = {
            let e = entry(&rules, &HeaderMap::new(), "0", false);
            Arc::new(Entry::from_parts(
                e.response.clone(),
                VaryKey::Star,
                e.directives.clone(),
                e.freshness.clone(),
            ))
        };
        (
            vec![
                entry(&rules, &en, "5", true),
                entry(&rules, &fr, "20", false),
                star,
            ],
            rules,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn round_trip_keeps_everything_and_ages_by_the_wall_clock() {
        let (variants, _) = sample();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let value = Bytes::from(encode(&variants, true, Instant::now(), wall).unwrap());
        let later = wall + Duration::from_secs(7);
        let back = decode(&value, true, Instant::now(), later).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in variants.iter().zip(&back) {
            assert_eq!(a.response.status(), b.response.status());
            assert_eq!(a.response.headers(), b.response.headers());
            assert_eq!(a.response.body(), b.response.body());
            assert_eq!(a.response.trailers(), b.response.trailers());
            assert_eq!(a.vary, b.vary);
            assert_eq!(a.directives, b.directives);
            assert_eq!(a.freshness.lifetime, b.freshness.lifetime);
            assert_eq!(
                b.current_age(Instant::now()),
                a.current_age(Instant::now()) + Duration::from_secs(7)
            );
        }
        // A reader whose clock is behind the writer's counts no negative time.
        let earlier = wall - Duration::from_secs(100);
        let back = decode(&value, true, Instant::now(), earlier).unwrap();
        assert_eq!(back[1].current_age(Instant::now()), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_truncation_and_other_versions_are_none() {
        let (variants, _) = sample();
        let wall = SystemTime::now();
        let good = encode(&variants, true, Instant::now(), wall).unwrap();
        let now = Instant::now();
        // Every strict prefix, and every single-byte corruption of the header, decodes to
        // None or to a well-formed value: never a panic.
        for n in 0..good.len() {
            assert!(decode(&Bytes::copy_from_slice(&good[..n]), true, now, wall).is_none());
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xff;
            let _ = decode(&Bytes::from(bad), true, now, wall);
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode(&Bytes::from(extra), true, now, wall).is_none());
        let mut v2 = good.clone();
        v2[3] = VERSION + 1;
        assert!(decode(&Bytes::from(v2), true, now, wall).is_none());
        // Pseudo-random garbage (xorshift), including the magic prefix.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let mut buf = b"SWC\x01\x01".to_vec();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = decode(&Bytes::from(buf), true, now, wall);
        }
    }

    // A hostile field count (more than a HeaderMap can hold) is refused, not a panic.
    #[tokio::test(start_paused = true)]
    async fn huge_field_counts_are_none() {
        let mut buf = b"SWC\x01\x01\x00\x01".to_vec();
        buf.extend_from_slice(&200u16.to_be_bytes());
        buf.extend_from_slice(&[0; 24]);
        buf.push(1);
        buf.extend_from_slice(&0u16.to_be_bytes());
        buf.extend_from_slice(&u16::MAX.to_be_bytes());
        for _ in 0..u16::MAX {
            buf.extend_from_slice(&[0, 1, b'a', 0, 0, 0, 0]);
        }
        buf.extend_from_slice(&[0, 0, 0, 0, 0]);
        let value = Bytes::from(buf);
        assert!(decode(&value, true, Instant::now(), SystemTime::now()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn shared_readers_refuse_private_writers() {
        let (variants, _) = sample();
        let wall = SystemTime::now();
        let now = Instant::now();
        let private = Bytes::from(encode(&variants, false, now, wall).unwrap());
        assert!(decode(&private, true, now, wall).is_none());
        assert!(decode(&private, false, now, wall).is_some());
        let shared = Bytes::from(encode(&variants, true, now, wall).unwrap());
        assert!(decode(&shared, false, now, wall).is_some());
    }
}
