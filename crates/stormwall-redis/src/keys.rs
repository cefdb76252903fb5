//! Key naming: every key of one check shares one `{hash tag}`.

use std::fmt::Write as _;
use std::sync::Arc;

use stormwall_ratelimit::Algorithm;
use stormwall_ratelimit::store::{LimitCheck, LimitId, LimitKey};

/// Keys longer than this (after escaping) are replaced by their SHA-1, so a huge header value
/// cannot make a huge Redis key.
const MAX_KEY_TEXT: usize = 128;

/// How the keys of one check are grouped into one Redis Cluster slot.
///
/// A multi-limit check runs as **one** Lua script, and Redis Cluster only runs a script whose
/// keys all live in one slot. So every key of a check carries the same `{hash tag}`:
///
/// - [`KeyTag::Primary`] (the default): the tag is the **first** limit of the check and its
///   key: `{stormwall:per-user:s:alice}`. A check of one limit is tagged by its own key, so
///   single-limit state spreads over the whole cluster. In a multi-limit check, the other
///   limits' state lives under the first limit's tag. This is exact when the first limit's key
///   is a function of every other limit's key: put the **coarsest** limit first (e.g. global,
///   then per user: everything lands in the global key's slot, one node holds it all; or per
///   user, then per user and endpoint: each user's keys share a slot and users spread over the
///   cluster). Putting a finer limit first (per user, then global) would give every user their
///   own copy of the "global" limit.
/// - [`KeyTag::Fixed`]: one tag for every key of the store (`{stormwall}`): always exact, but
///   all rate-limit state lives on one cluster node (no sharding).
///
/// Outside a cluster the tag changes nothing but the key names.
///
/// ```
/// use stormwall_redis::KeyTag;
/// use stormwall_ratelimit::store::{LimitCheck, LimitId, LimitKey};
/// use stormwall_ratelimit::{Algorithm, Quota};
///
/// let (global, user) = (LimitId::new("global"), LimitId::new("per-user"));
/// let (g, alice) = (LimitKey::global(), LimitKey::from_string("alice"));
/// let q = Quota::per_second(10).unwrap();
/// let check = |limit, key| LimitCheck { limit, key, quota: q, algorithm: Algorithm::Gcra, cost: 1 };
///
/// let one = KeyTag::Primary.key_names("stormwall", &[check(&user, &alice)]);
/// assert_eq!(one, ["{stormwall:per-user:s:alice}:g"]);
///
/// let two = KeyTag::Primary.key_names("stormwall", &[check(&global, &g), check(&user, &alice)]);
/// assert_eq!(two, ["{stormwall:global:global}:g", "{stormwall:global:global}:per-user:s:alice:g"]);
///
/// let fixed = KeyTag::Fixed("rl".into()).key_names("stormwall", &[check(&user, &alice)]);
/// assert_eq!(fixed, ["{rl}:per-user:s:alice:g"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeyTag {
    /// Tag by the first limit of the check and its key (see the type docs).
    #[default]
    Primary,
    /// One tag for every key.
    Fixed(Arc<str>),
}

pub(crate) fn algo_code(a: Algorithm) -> &'static str {
    match a {
        Algorithm::SlidingLog => "l",
        Algorithm::SlidingCounter => "c",
        Algorithm::FixedWindow => "f",
        Algorithm::LeakyBucket => "k",
        // Gcra and any future algorithm the store does not know: GCRA.
        _ => "g",
    }
}

/// Escapes `%`, `{`, `}` and (in limit names) `:` so names cannot collide or end a tag early.
fn escape(out: &mut String, s: &str, colon: bool) {
    for ch in s.chars() {
        match ch {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            ':' if colon => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}

/// `<limit>:<key>`, escaped, long keys hashed.
fn limit_key(limit: &LimitId, key: &LimitKey) -> String {
    let mut out = String::with_capacity(limit.name().len() + 24);
    escape(&mut out, limit.name(), true);
    out.push(':');
    let text = key.to_string();
    if text.len() > MAX_KEY_TEXT {
        let _ = write!(out, "h:{}", sha1_smol::Sha1::from(text.as_bytes()).digest());
    } else {
        escape(&mut out, &text, false);
    }
    out
}

impl KeyTag {
    /// The Redis keys of `checks` under `prefix`, one per check (the sliding log also uses a
    /// second key: the first plus `s`).
    pub fn key_names(&self, prefix: &str, checks: &[LimitCheck<'_>]) -> Vec<String> {
        let mut out = Vec::with_capacity(checks.len());
        let mut pre = String::with_capacity(prefix.len() + 32);
        pre.push('{');
        let primary = match self {
            Self::Primary => {
                escape(&mut pre, prefix, false);
                if let Some(c) = checks.first() {
                    pre.push(':');
                    pre.push_str(&limit_key(c.limit, c.key));
                }
                true
            }
            Self::Fixed(tag) => {
                escape(&mut pre, tag, false);
                false
            }
        };
        pre.push_str("}:");
        for (i, c) in checks.iter().enumerate() {
            let mut k = pre.clone();
            if !(primary && i == 0) {
                k.push_str(&limit_key(c.limit, c.key));
                k.push(':');
            }
            k.push_str(algo_code(c.algorithm));
            out.push(k);
        }
        out
    }

    /// Every key a check of `limit` alone (or as the first limit) may use for `key`, for
    /// [`reset`](stormwall_ratelimit::Store::reset).
    pub(crate) fn reset_names(&self, prefix: &str, limit: &LimitId, key: &LimitKey) -> Vec<String> {
        let algos = [
            Algorithm::Gcra,
            Algorithm::LeakyBucket,
            Algorithm::SlidingLog,
            Algorithm::SlidingCounter,
            Algorithm::FixedWindow,
        ];
        let q = stormwall_ratelimit::Quota::per_second(1).expect("valid quota");
        let mut out = Vec::with_capacity(6);
        for algorithm in algos {
            let c = LimitCheck {
                limit,
                key,
                quota: q,
                algorithm,
                cost: 1,
            };
            let name = self.key_names(prefix, &[c]).remove(0);
            if algorithm == Algorithm::SlidingLog {
                out.push(format!("{name}s"));
            }
            out.push(name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stormwall_ratelimit::Quota;

    #[test]
    fn escaping_and_hashing() {
        let l = LimitId::new("a:b{c}");
        let k = LimitKey::from_string("x}y%");
        let q = Quota::per_second(1).unwrap();
        let c = LimitCheck {
            limit: &l,
            key: &k,
            quota: q,
            algorithm: Algorithm::FixedWindow,
            cost: 1,
        };
        let names = KeyTag::Primary.key_names("sw", &[c]);
        assert_eq!(names, ["{sw:a%3Ab%7Bc%7D:s:x%7Dy%25}:f"]);
        let long = LimitKey::from_string("z".repeat(1000));
        let c = LimitCheck { key: &long, ..c };
        let names = KeyTag::Primary.key_names("sw", &[c]);
        assert!(names[0].len() < 80, "{}", names[0]);
        assert!(names[0].contains(":h:"));
    }

    #[test]
    fn reset_names_cover_every_algorithm() {
        let l = LimitId::new("u");
        let k = LimitKey::from_string("a");
        let names = KeyTag::Primary.reset_names("sw", &l, &k);
        assert_eq!(names.len(), 6);
        assert!(names.iter().all(|n| n.starts_with("{sw:u:s:a}:")));
    }
}
