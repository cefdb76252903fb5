//! Shared helpers: checks, a cluster of real `redis-server`s on loopback.
#![allow(dead_code, unreachable_pub)]

use std::process::Command;
use std::time::{Duration, Instant};

use stormwall_ratelimit::store::{LimitCheck, LimitId, LimitKey};
use stormwall_ratelimit::{Algorithm, Quota};
use stormwall_tests::redis::RedisServer;

pub fn check<'a>(
    limit: &'a LimitId,
    key: &'a LimitKey,
    quota: Quota,
    algorithm: Algorithm,
) -> LimitCheck<'a> {
    LimitCheck {
        limit,
        key,
        quota,
        algorithm,
        cost: 1,
    }
}

/// Runs `redis-cli -p port args...` and returns stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 3-master Redis Cluster on loopback (killed on drop).
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
    confs: Vec<std::path::PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for c in &self.confs {
            let _ = std::fs::remove_file(c);
        }
    }
}

impl Cluster {
    pub fn start() -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut confs = Vec::new();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let port = stormwall_tests::free_port();
                let conf = std::env::temp_dir()
                    .join(format!("stormwall-redis-nodes-{port}-{stamp}-{i}.conf"));
                confs.push(conf.clone());
                RedisServer::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .arg("--cluster-yes")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes
                .iter()
                .all(|n| cli(n.port(), &["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok"
            );
            std::thread::park_timeout(Duration::from_millis(100));
        }
        Self { nodes, confs }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The port of the master serving `key`.
    pub fn node_of(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.nodes[0].port(), &["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        // Ask each node which slot ranges it owns itself.
        for n in &self.nodes {
            let nodes = cli(n.port(), &["cluster", "nodes"]);
            for line in nodes.lines().filter(|l| l.contains("myself")) {
                for range in line.split_whitespace().skip(8) {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>())
                        && (a..=b).contains(&slot)
                    {
                        return n.port();
                    }
                }
            }
        }
        panic!("no node owns slot {slot}");
    }
}

/// A store for functional tests: a generous timeout, so a loaded box (first connection,
/// script load) cannot turn a decision into a timeout. Latency bounds are the fault tests'.
pub fn store(url: &str) -> stormwall_redis::RedisStore {
    stormwall_redis::RedisStore::builder()
        .timeout(Duration::from_secs(2))
        .connect(url)
        .unwrap()
}
