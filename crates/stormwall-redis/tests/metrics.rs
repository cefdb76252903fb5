//! The documented `stormwall_redis_*` metrics are recorded under their names: decisions,
//! latency, errors by kind, fallbacks by policy, short circuits, the circuit gauge.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use stormwall_core::time::Instant;
use stormwall_ratelimit::store::{CheckMode, LimitId, LimitKey, Store};
use stormwall_ratelimit::{Algorithm, Quota};
use stormwall_redis::{OnFailure, RedisStore};
use stormwall_tests::redis::RedisServer;
use support::check;

#[test]
fn metrics_are_recorded_under_their_documented_names() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut server = RedisServer::start();
    metrics::with_local_recorder(&recorder, || {
        // A current-thread runtime: every poll happens on this thread, under the recorder.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = RedisStore::builder()
                .timeout(Duration::from_secs(2))
                .on_failure(OnFailure::Local { instances: 2 })
                // A long backoff: no probe during the test, so the counts are exact.
                .circuit(3, Duration::from_secs(30), Duration::from_secs(30))
                .connect(&server.url())
                .unwrap();
            let limit = LimitId::new("m");
            let key = LimitKey::from_string("k");
            let q = Quota::per_second(100).unwrap();
            let c = [check(&limit, &key, q, Algorithm::Gcra)];
            for _ in 0..3 {
                assert!(
                    store
                        .check(Instant::now(), &c, CheckMode::Acquire)
                        .await
                        .unwrap()
                        .allowed
                );
            }
            server.kill();
            for _ in 0..10 {
                assert!(
                    store
                        .check(Instant::now(), &c, CheckMode::Acquire)
                        .await
                        .is_ok()
                );
            }
        });
    });
    let mut seen = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        seen.insert(format!("{name}{{{}}}", labels.join(",")), value);
    }
    let get = |k: &str| {
        seen.get(k)
            .unwrap_or_else(|| panic!("{k} missing from {:?}", seen.keys()))
    };
    assert_eq!(
        *get("stormwall_redis_decisions_total{}"),
        DebugValue::Counter(3)
    );
    assert!(
        matches!(get("stormwall_redis_latency_seconds{}"), DebugValue::Histogram(h) if h.len() == 3)
    );
    assert_eq!(
        *get("stormwall_redis_fallbacks_total{policy=local}"),
        DebugValue::Counter(10)
    );
    let errors = match seen.get("stormwall_redis_errors_total{kind=error}") {
        Some(DebugValue::Counter(n)) => *n,
        _ => 0,
    } + match seen.get("stormwall_redis_errors_total{kind=timeout}") {
        Some(DebugValue::Counter(n)) => *n,
        _ => 0,
    };
    assert_eq!(errors, 3, "three failures open the short circuit");
    assert_eq!(
        *get("stormwall_redis_short_circuits_total{}"),
        DebugValue::Counter(7)
    );
    assert!(
        matches!(get("stormwall_redis_circuit_open{}"), DebugValue::Gauge(v) if v.into_inner() == 1.0)
    );
}
