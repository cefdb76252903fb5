//! A private `redis-server` on a free loopback port, for tests that need to kill, pause or
//! restart Redis. `scripts/test` installs Debian's `redis-server` when it is missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port (no persistence) and waits until it accepts
    /// connections. If another process takes the port between its reservation and the
    /// server's bind (tests run in parallel processes), tries another port.
    pub fn start() -> Self {
        for _ in 0..10 {
            if let Some(server) = Self::try_start(crate::free_port(), &[]) {
                return server;
            }
        }
        panic!("redis-server did not start on 10 free ports");
    }

    /// Starts `redis-server` on `port` (used to restart a killed server on the same port).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts `redis-server` on `port` with extra arguments (e.g. `--cluster-enabled yes`).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        Self::try_start(port, extra)
            .unwrap_or_else(|| panic!("redis-server could not start on port {port} (in use?)"))
    }

    fn try_start(port: u16, extra: &[&str]) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("stormwall-redis-{port}"));
        let _ = std::fs::create_dir_all(&dir);
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run scripts/test, which installs it");
        let mut server = Self {
            port,
            child: Some(child),
        };
        server.wait_ready().then_some(server)
    }

    /// Waits until *this* server answers on its port (another process's server on the same
    /// port does not count: its `process_id` differs); `false` if the child exited (could not
    /// bind the port).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let Some(child) = self.child.as_mut() else {
                return false;
            };
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return false;
            }
            if server_pid(self.port) == Some(child.id()) {
                return true;
            }
            std::thread::yield_now();
            std::thread::park_timeout(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The child's process id (for `SIGSTOP`/`SIGCONT`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (e.g. `"STOP"`, `"CONT"`) to the server with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status();
        }
    }
}

/// The `process_id` the server on `port` reports (`INFO server`), if one answers.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(rest) = text.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
    }
    None
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal("CONT");
        self.kill();
    }
}
