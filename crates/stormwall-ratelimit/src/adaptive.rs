//! Outbound adaptation: follow the upstream's pushback (`Retry-After`, `RateLimit`,
//! `X-RateLimit-*`) per key.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use stormwall_core::headers::Pushback;
use stormwall_core::time::{Instant, saturating_add, system_now};

use crate::store::LimitKey;

#[derive(Debug, Default)]
struct State {
    /// No request before this instant (429/503 `Retry-After`, or an exhausted quota's reset).
    paused_until: Option<Instant>,
    /// Requests the upstream still accepts until the instant (learned from its headers).
    budget: Option<(u64, Instant)>,
    /// Whether the upstream ever advertised its quota for this key.
    learned: bool,
    inflight: u64,
}

#[derive(Debug)]
pub(crate) struct Adaptive {
    map: DashMap<(u32, LimitKey), Mutex<State>>,
    max_keys: usize,
    probe: bool,
    pub(crate) probe_interval: Duration,
}

/// Keys a request passed through the adaptive gate; dropping it without
/// [`Gated::observe`] just releases the in-flight slots.
#[derive(Debug)]
pub(crate) struct Gated {
    adaptive: Arc<Adaptive>,
    keys: Vec<(u32, LimitKey)>,
}

impl Adaptive {
    pub(crate) fn new(max_keys: usize, probe: bool) -> Self {
        Self {
            map: DashMap::new(),
            max_keys,
            probe,
            probe_interval: Duration::from_millis(20),
        }
    }

    /// Lets a request through every key, or says how long to wait.
    pub(crate) fn gate(
        self: &Arc<Self>,
        keys: impl Iterator<Item = (u32, LimitKey)>,
        now: Instant,
    ) -> Result<Gated, Duration> {
        let mut gated = Gated {
            adaptive: self.clone(),
            keys: Vec::new(),
        };
        for id in keys {
            if !self.map.contains_key(&id) {
                if self.map.len() >= self.max_keys {
                    self.map.retain(|_, s| {
                        let s = s.get_mut();
                        s.inflight > 0
                            || s.paused_until.is_some_and(|p| p > now)
                            || s.budget.is_some_and(|(_, until)| until > now)
                    });
                    if self.map.len() >= self.max_keys {
                        continue; // untracked: not adapted (bounded memory)
                    }
                }
                self.map.entry(id.clone()).or_default();
            }
            let Some(entry) = self.map.get(&id) else {
                continue;
            };
            let mut s = entry.lock();
            if let Some(until) = s.paused_until {
                if until > now {
                    return Err(until - now); // `gated` drops: releases the earlier keys
                }
                s.paused_until = None;
            }
            match s.budget {
                Some((0, until)) if until > now => return Err(until - now),
                Some((ref mut r, until)) if until > now => *r -= 1,
                Some(_) => s.budget = None,
                None => {}
            }
            if s.budget.is_none() && s.inflight > 0 && (self.probe || s.learned) {
                // Quota unknown (never learned, or the last reset passed): one probe at a time.
                return Err(self.probe_interval);
            }
            s.inflight += 1;
            drop(s);
            drop(entry);
            gated.keys.push(id);
        }
        Ok(gated)
    }

    fn release(&self, keys: &[(u32, LimitKey)], restore_budget: bool) {
        for id in keys {
            if let Some(entry) = self.map.get(id) {
                let mut s = entry.lock();
                s.inflight = s.inflight.saturating_sub(1);
                if restore_budget && let Some((r, _)) = &mut s.budget {
                    *r += 1;
                }
            }
        }
    }
}

impl Gated {
    /// The request was not sent after all (another limit rejected it).
    pub(crate) fn cancel(mut self) {
        let keys = std::mem::take(&mut self.keys);
        self.adaptive.release(&keys, true);
    }

    /// Learns from the upstream's response. Returns the pause it imposed, if any.
    pub(crate) fn observe(
        mut self,
        status: StatusCode,
        headers: &HeaderMap,
        now: Instant,
    ) -> Option<Duration> {
        let keys = std::mem::take(&mut self.keys);
        let pushback = Pushback::from_headers(headers, system_now());
        let back_off = matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        let mut paused = None;
        for id in &keys {
            let Some(entry) = self.adaptive.map.get(id) else {
                continue;
            };
            let mut s = entry.lock();
            s.inflight = s.inflight.saturating_sub(1);
            let others = s.inflight;
            if let Some((remaining, reset)) = pushback.remaining {
                s.learned = true;
                if let Some(reset) = reset {
                    let until = saturating_add(now, reset);
                    let left = remaining.saturating_sub(others);
                    s.budget = Some(match s.budget {
                        Some((cur, cur_until)) if cur_until > now => {
                            (cur.min(left), cur_until.max(until))
                        }
                        _ => (left, until),
                    });
                }
            }
            let delay = match pushback.delay {
                Some(d) if back_off || pushback.remaining.is_some_and(|(r, _)| r == 0) => Some(d),
                // A 429/503 without a hint still means "slow down": pause briefly.
                None if back_off => Some(Duration::from_secs(1)),
                _ => None,
            };
            if let Some(d) = delay {
                let until = saturating_add(now, d);
                s.paused_until = Some(s.paused_until.map_or(until, |p| p.max(until)));
                paused = Some(d);
            }
        }
        paused
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            self.adaptive.release(&self.keys, false);
        }
    }
}
