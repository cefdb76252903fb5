//! Black-box tests: the built `stormwall-proxy` binary against a loopback origin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use stormwall_tests::free_addr;
use stormwall_tests::http::{TestServer, client};
use stormwall_tests::redis::RedisServer;

const BIN: &str = env!("CARGO_BIN_EXE_stormwall-proxy");

/// Writes `text` to a fresh file in the temp dir.
fn write_config(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "stormwall-proxy-{}-{name}-{}.toml",
        std::process::id(),
        free_addr().port()
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

/// The proxy process; killed on drop.
struct Proxy {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Proxy {
    /// Starts the binary in front of `upstream` with extra config `extra`, and waits until
    /// both listeners accept connections.
    async fn start(upstream: SocketAddr, extra: &str) -> Self {
        Self::launch(&format!("upstream = \"http://{upstream}\"\n{extra}")).await
    }

    /// Starts the binary with `body` (everything but `listen`, `admin` and
    /// `shutdown_timeout`), and waits until both listeners accept connections.
    async fn launch(body: &str) -> Self {
        let listen = free_addr();
        let admin = free_addr();
        let text = format!(
            "listen = \"{listen}\"\nadmin = \"{admin}\"\nshutdown_timeout = \"20s\"\n{body}"
        );
        let config = write_config("run", &text);
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the proxy");
        let mut proxy = Self {
            child,
            listen,
            admin,
            config,
        };
        for _ in 0..200 {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("proxy exited early: {status}");
            }
            let up = tokio::net::TcpStream::connect(listen).await.is_ok()
                && tokio::net::TcpStream::connect(admin).await.is_ok();
            if up {
                return proxy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("proxy did not start listening within 10 s");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }
}

/// Echoes method, URI, headers (one per line) and then the body.
async fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut text = format!("{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        text.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
    }
    text.push('\n');
    let mut out = text.into_bytes();
    out.extend_from_slice(&body);
    let mut res = Response::new(Full::new(Bytes::from(out)));
    res.headers_mut()
        .insert("x-origin", http::HeaderValue::from_static("echo"));
    // The version the origin was spoken to in (`HTTP/1.1`, `HTTP/2.0`).
    let version = http::HeaderValue::from_str(&format!("{:?}", parts.version)).unwrap();
    res.headers_mut().insert("x-origin-version", version);
    if parts.version < http::Version::HTTP_2 {
        res.headers_mut()
            .insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    }
    res
}

/// An origin that echoes method, URI, headers (one per line) and then the body.
async fn echo_origin() -> TestServer {
    TestServer::start(echo).await
}

async fn send(req: Request<Full<Bytes>>) -> (Response<()>, Bytes) {
    let res = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("response within 20 s")
        .expect("response");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (Response::from_parts(parts, ()), body)
}

async fn get(url: &str) -> (Response<()>, Bytes) {
    send(Request::get(url).body(Full::default()).unwrap()).await
}

fn run_check(name: &str, text: &str) -> Output {
    let path = write_config(name, text);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run the proxy");
    let _ = std::fs::remove_file(&path);
    out
}

#[tokio::test]
async fn forwards_method_query_headers_and_body() {
    let origin = echo_origin().await;
    let proxy = Proxy::start(origin.addr(), "").await;
    let req = Request::post(proxy.url("/items/42?x=1&y=two"))
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("forwarded", "for=192.0.2.7")
        .body(Full::new(Bytes::from_static(b"hello body")))
        .unwrap();
    let (res, body) = send(req).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-origin"], "echo");
    assert!(
        res.headers().get("keep-alive").is_none(),
        "{:?}",
        res.headers()
    );
    assert_eq!(res.headers()["via"], "1.1 stormwall");
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, echoed) = text.split_once("\n\n").expect("echo format");
    assert_eq!(echoed, "hello body");
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("POST /items/42?x=1&y=two"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("x-custom"), Some("kept"));
    for gone in ["x-drop-me", "proxy-authorization", "te"] {
        assert_eq!(header(gone), None, "{gone} must be stripped: {headers:?}");
    }
    assert_ne!(header("connection"), Some("keep-alive, x-drop-me"));
    assert_eq!(header("host"), Some(origin.addr().to_string().as_str()));
    assert_eq!(header("via"), Some("1.1 stormwall"));
    assert_eq!(
        header("forwarded"),
        Some(
            format!(
                "for=192.0.2.7, for=127.0.0.1;proto=http;host=\"{}\"",
                proxy.listen
            )
            .as_str()
        )
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let dead = free_addr();
    let proxy = Proxy::start(dead, "").await;
    let (res, _) = get(&proxy.url("/x")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let (res, body) = get(&proxy.admin_url("/health")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"reachable\":false"), "{body}");
}

#[tokio::test]
async fn inbound_limit_answers_429_with_headers_and_metrics_show_it() {
    let origin = echo_origin().await;
    let proxy = Proxy::start(
        origin.addr(),
        // The TSC clock, as a production proxy would run it (the binary's real clock).
        "[inbound]\nstandard = false\n[inbound.rate_limit]\nper_second = 0.1\nburst = 2\nkey = \"peer_ip\"\nclock = \"tsc\"\n",
    )
    .await;
    let mut statuses = Vec::new();
    let mut rejected = None;
    for _ in 0..4 {
        let (res, _) = get(&proxy.url("/limited")).await;
        statuses.push(res.status());
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            rejected.get_or_insert(res);
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        origin.calls(),
        2,
        "rejected requests never reach the origin"
    );
    let rejected = rejected.expect("a 429");
    assert!(
        rejected.headers().contains_key("retry-after"),
        "{:?}",
        rejected.headers()
    );
    assert!(
        rejected.headers().contains_key("ratelimit"),
        "{:?}",
        rejected.headers()
    );

    let (res, body) = get(&proxy.admin_url("/health")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("\"reachable\":true"));
    let (res, body) = get(&proxy.admin_url("/metrics")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics.contains("stormwall_proxy_requests_total"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"429\""), "{metrics}");
    assert!(
        metrics.contains("stormwall_ratelimit_decisions_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_zero() {
    let origin = TestServer::start(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stormwall_tests::http::ok("slow but complete")
    })
    .await;
    let mut proxy = Proxy::start(origin.addr(), "").await;
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    for _ in 0..200 {
        if origin.calls() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(origin.calls(), 1, "the slow request reached the origin");
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(proxy.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let (res, body) = in_flight.await.expect("request task");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(&body[..], b"slow but complete");
    let mut exit = None;
    for _ in 0..200 {
        if let Some(status) = proxy.child.try_wait().expect("wait") {
            exit = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit = exit.expect("proxy exited within 10 s of draining");
    assert_eq!(exit.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(proxy.listen).await.is_err(),
        "no longer accepting"
    );
}

#[test]
fn check_accepts_a_valid_config() {
    let out = run_check(
        "ok",
        "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\nadmin = \"127.0.0.1:9090\"\n\
         shutdown_timeout = \"10s\"\n[inbound]\nconcurrency_limit = 64\n[inbound.rate_limit]\nper_second = 5\n\
         [outbound]\npreset = \"fast_fail\"\n",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn config_errors_exit_2_naming_the_field_and_line() {
    let cases = [
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\nlisen = 1\n",
            "lisen",
            Some("line 3"),
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\n[inbound.rate_limit]\nper_secnd = 5\n",
            "per_secnd",
            Some("line 4"),
        ),
        (
            "listen = \"not an address\"\nupstream = \"http://127.0.0.1:9000\"\n",
            "listen",
            Some("line 1"),
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"ftp://127.0.0.1:9000\"\n",
            "upstream",
            Some("line 2"),
        ),
        ("listen = \"127.0.0.1:8080\"\n", "upstream", None),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\n[inbound.rate_limit]\nper_second = -3\n",
            "inbound.rate_limit",
            None,
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\n[[route]]\nprefix = \"/a\"\n[route.inbound]\nbogus = 1\n",
            "bogus",
            Some("line 5"),
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\n[[route]]\nprefix = \"api\"\n",
            "route[0].prefix",
            None,
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\n[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
            "tls.cert_file",
            None,
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"https://127.0.0.1:9000\"\n[upstream_tls]\nca_file = \"/nonexistent/ca.pem\"\n",
            "upstream_tls.ca_file",
            None,
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\n[redis]\nurl = \"http://127.0.0.1:6379\"\n",
            "redis.url",
            None,
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\nupstream_version = \"h3\"\n",
            "upstream_version",
            Some("line 3"),
        ),
        (
            "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\nupstream_version = \"auto\"\n",
            "upstream_version",
            Some("line 3"),
        ),
    ];
    for (i, (text, field, line)) in cases.into_iter().enumerate() {
        let out = run_check(&format!("bad{i}"), text);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {stderr}");
        assert!(
            stderr.contains(field),
            "case {i}: `{field}` not named in {stderr}"
        );
        if let Some(line) = line {
            assert!(stderr.contains(line), "case {i}: `{line}` not in {stderr}");
        }
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg("/nonexistent/proxy.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The proxy's peak resident memory (`VmHWM`) in KiB, from `/proc`.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn large_request_body_is_streamed_not_buffered() {
    // The origin counts the bytes frame by frame without keeping them.
    let origin = TestServer::start(|req: Request<Incoming>| async move {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => total += frame.data_ref().map_or(0, Bytes::len),
                Err(_) => break,
            }
        }
        stormwall_tests::http::ok(total.to_string())
    })
    .await;
    let proxy = Proxy::start(origin.addr(), "").await;
    // 100 MiB: the proxy's peak memory must not grow by half of it.
    let size: usize = 100 << 20;
    let before = peak_rss_kib(proxy.child.id()).expect("VmHWM");
    let body = Bytes::from(vec![b'x'; size]);
    let (res, echoed) = send(
        Request::put(proxy.url("/upload"))
            .body(Full::new(body))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(echoed, size.to_string());
    let after = peak_rss_kib(proxy.child.id()).expect("VmHWM");
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < (size >> 20) as u64 / 2,
        "the proxy's peak memory grew by {grown_mib} MiB for a {} MiB body",
        size >> 20
    );
}

#[tokio::test]
async fn http2_clients_are_served() {
    let origin = echo_origin().await;
    let proxy = Proxy::start(origin.addr(), "").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        h2.request(
            Request::get(proxy.url("/h2?q=1"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("in time")
    .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("GET /h2?q=1\n"), "{text}");
    assert!(
        text.contains(&format!("host=\"{}\"", proxy.listen)),
        "Forwarded host from the :authority: {text}"
    );
}

#[tokio::test]
async fn inbound_cache_serves_repeats_with_cache_status() {
    let origin = TestServer::start(|_req: Request<Incoming>| async {
        let mut res = stormwall_tests::http::ok("cacheable");
        res.headers_mut().insert(
            "cache-control",
            http::HeaderValue::from_static("public, max-age=60"),
        );
        res
    })
    .await;
    let proxy = Proxy::start(
        origin.addr(),
        "[inbound]\nstandard = false\n[inbound.cache]\nmax_bytes = 1048576\n",
    )
    .await;
    let (first, body) = get(&proxy.url("/doc")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(&body[..], b"cacheable");
    let (second, body) = get(&proxy.url("/doc")).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(&body[..], b"cacheable");
    assert_eq!(origin.calls(), 1, "the repeat was served from the cache");
    let status = second
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(status.contains("hit"), "Cache-Status: {status:?}");
}

#[tokio::test]
async fn outbound_breaker_opens_on_a_failing_origin() {
    let origin = TestServer::start(|_req: Request<Incoming>| async {
        let mut res = stormwall_tests::http::ok("broken");
        *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        res
    })
    .await;
    let proxy = Proxy::start(
        origin.addr(),
        "[outbound]\npreset = \"none\"\n[outbound.circuit]\nwindow_calls = 4\nminimum_calls = 2\n\
         failure_rate = 0.5\nwait = \"60s\"\n",
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (res, _) = get(&proxy.url("/fail")).await;
        statuses.push(res.status());
    }
    assert_eq!(
        statuses[0],
        StatusCode::INTERNAL_SERVER_ERROR,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::BAD_GATEWAY),
        "the open breaker fails fast: {statuses:?}"
    );
    assert!(
        origin.calls() < 8,
        "the open breaker spared the origin: {}",
        origin.calls()
    );
}

#[tokio::test]
async fn large_response_body_is_streamed_not_buffered() {
    let size: usize = 100 << 20;
    let payload = Bytes::from(vec![b'y'; size]);
    let origin = TestServer::start(move |_req: Request<Incoming>| {
        let payload = payload.clone();
        async move { stormwall_tests::http::ok(payload) }
    })
    .await;
    let proxy = Proxy::start(origin.addr(), "").await;
    let before = peak_rss_kib(proxy.child.id()).expect("VmHWM");
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        client().request(
            Request::get(proxy.url("/download"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("in time")
    .expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    // Count frame by frame: the test itself does not keep the body either.
    let mut body = res.into_body();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        total += frame.expect("frame").data_ref().map_or(0, Bytes::len);
    }
    assert_eq!(total, size);
    let after = peak_rss_kib(proxy.child.id()).expect("VmHWM");
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < (size >> 20) as u64 / 2,
        "the proxy's peak memory grew by {grown_mib} MiB for a {} MiB body",
        size >> 20
    );
}

// ---------------------------------------------------------------------------------------------
// TLS: an HTTPS upstream trusted through `upstream_tls.ca_file`, and the HTTPS listener.

/// A test CA and a `localhost`/`127.0.0.1` certificate it signed, written as PEM files.
struct Pki {
    ca_file: PathBuf,
    cert_file: PathBuf,
    key_file: PathBuf,
    ca: rustls::pki_types::CertificateDer<'static>,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        for path in [&self.ca_file, &self.cert_file, &self.key_file] {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Pki {
    fn generate(name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Stormwall test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let file = |kind: &str, text: &str| {
            let path = std::env::temp_dir().join(format!(
                "stormwall-proxy-{}-{name}-{}-{kind}.pem",
                std::process::id(),
                free_addr().port()
            ));
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        Self {
            ca_file: file("ca", &ca.pem()),
            cert_file: file("cert", &leaf.pem()),
            key_file: file("key", &leaf_key.serialize_pem()),
            ca: ca.der().clone(),
            cert: leaf.der().clone(),
            key: leaf_key.serialize_der(),
        }
    }

    fn server_config(&self) -> rustls::ServerConfig {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.clone().into());
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], key)
        .unwrap()
    }

    /// A client trusting only the test CA.
    fn client(
        &self,
    ) -> hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    > {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https)
    }
}

/// An HTTPS echo origin with the test PKI's certificate; counts its requests.
async fn tls_origin(pki: &Pki) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, std::convert::Infallible>(echo(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, calls, task)
}

#[tokio::test]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let pki = Pki::generate("upstream");
    let (origin, calls, task) = tls_origin(&pki).await;
    let port = origin.port();
    // Trusting the test CA: the request goes through over TLS.
    let proxy = Proxy::launch(&format!(
        "upstream = \"https://localhost:{port}/base\"\n[upstream_tls]\nca_file = \"{}\"\n",
        pki.ca_file.display()
    ))
    .await;
    let (res, body) = send(
        Request::post(proxy.url("/v1/x?q=1"))
            .body(Full::new(Bytes::from_static(b"over tls")))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("POST /base/v1/x?q=1\n"), "{text}");
    assert!(
        text.contains(&format!("host: localhost:{port}\n")),
        "{text}"
    );
    assert!(text.ends_with("\n\nover tls"), "{text}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Trusting only the public roots: the origin's certificate is refused, 502, and the
    // origin never sees a request.
    let untrusting = Proxy::launch(&format!("upstream = \"https://localhost:{port}\"\n")).await;
    let (res, _) = get(&untrusting.url("/v1/x")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    task.abort();
}

// ---------------------------------------------------------------------------------------------
// Upstream HTTP/1.1 connections: reuse, and the origin closing them.

/// An HTTP/1.1 echo origin (`/empty` answers 204 without a body) that counts its connections;
/// with `keep_alive` false it closes each connection after one response.
async fn h1_origin(keep_alive: bool) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let conns = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/empty" {
                        let mut res = Response::new(Full::default());
                        *res.status_mut() = StatusCode::NO_CONTENT;
                        return Ok::<_, std::convert::Infallible>(res);
                    }
                    Ok(echo(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(keep_alive)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, connections, task)
}

#[tokio::test]
async fn upstream_connections_are_reused_and_replaced_when_the_origin_closes_them() {
    let (origin, connections, task) = h1_origin(true).await;
    let proxy = Proxy::start(origin, "").await;
    // Sequential requests, with and without response bodies, share one connection.
    for path in ["/a?x=1", "/empty", "/b", "/empty", "/c"] {
        let (res, body) = send(
            Request::put(proxy.url(path))
                .body(Full::new(Bytes::from_static(b"payload")))
                .unwrap(),
        )
        .await;
        if path == "/empty" {
            assert_eq!(res.status(), StatusCode::NO_CONTENT);
            assert!(body.is_empty());
        } else {
            assert_eq!(res.status(), StatusCode::OK);
            let text = String::from_utf8_lossy(&body);
            assert!(text.starts_with(&format!("PUT {path}\n")), "{text}");
            assert!(text.contains(&format!("host: {origin}\n")), "{text}");
            assert!(text.ends_with("\n\npayload"), "{text}");
        }
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    task.abort();

    // An origin closing every connection after its response: each request gets a new one.
    let (origin, connections, task) = h1_origin(false).await;
    let proxy = Proxy::start(origin, "").await;
    for i in 0..4 {
        let (res, body) = get(&proxy.url(&format!("/n/{i}"))).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(String::from_utf8_lossy(&body).starts_with(&format!("GET /n/{i}\n")));
    }
    assert_eq!(connections.load(Ordering::SeqCst), 4);
    task.abort();
}

/// Reads from `stream` until the end of a request head; false on EOF or error.
async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

#[tokio::test]
async fn a_connection_still_sending_a_request_body_is_not_waited_for() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw origin: on its first connection it answers `early` as soon as the head has
    // arrived and then keeps reading the (never finished) request body; on the others it
    // answers `ok` to every request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut first = true;
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let early = std::mem::take(&mut first);
            tokio::spawn(async move {
                if early {
                    if read_head(&mut stream).await {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                            .await;
                        let mut sink = [0u8; 4096];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                    return;
                }
                while read_head(&mut stream).await {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(origin, "").await;
    // A client starting a large upload and then stalling: the origin's early answer comes
    // back while the proxy's upstream connection is still waiting for the rest of the body.
    let mut uploader = tokio::net::TcpStream::connect(proxy.listen).await.unwrap();
    uploader
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\npartial")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"early") {
        let n = tokio::time::timeout(Duration::from_secs(20), uploader.read(&mut buf))
            .await
            .expect("early answer within 20 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200 OK"));
    // The next requests do not wait for that upload to finish.
    for _ in 0..3 {
        let (res, body) = get(&proxy.url("/next")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&body[..], b"ok");
    }
    drop(uploader);
    task.abort();
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 upstreams: by TLS ALPN and with prior knowledge (h2c).

/// An HTTP/2-only echo origin, over TLS with ALPN `h2` when `tls` is given, else h2c. Counts
/// its connections and its requests.
async fn h2_origin(
    tls: Option<rustls::ServerConfig>,
) -> (
    SocketAddr,
    Arc<AtomicU64>,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let acceptor = tls.map(|mut config| {
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connections, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (conns, reqs) = (connections.clone(), requests.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            conns.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    async move { Ok::<_, std::convert::Infallible>(echo(req).await) }
                });
                let h2 =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        if tls.get_ref().1.alpn_protocol() != Some(&b"h2"[..]) {
                            return;
                        }
                        let _ = h2
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    }
                    None => {
                        let _ = h2
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    }
                }
            });
        }
    });
    (addr, connections, requests, task)
}

/// A request with a body, a query, an end-to-end header and every kind of hop-by-hop one.
fn h2_probe(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-drop-me, te")
        .header("x-drop-me", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers, deflate")
        .header("upgrade", "websocket")
        .body(Full::new(Bytes::from_static(b"hello h2")))
        .unwrap()
}

/// The echoed request line (method and URI) and headers, and the echoed body.
fn parse_echo(body: &Bytes) -> (String, Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(body).into_owned();
    let (head, echoed) = text.split_once("\n\n").expect("echo format");
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    (first, headers, echoed.to_owned())
}

/// What the h2 origin must have seen of [`h2_probe`]: the end-to-end header, no hop-by-hop
/// header except `te: trailers`, the proxy's `Via`.
fn assert_h2_headers(headers: &[(String, String)], te: Option<&str>) {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("x-custom"), Some("kept"), "{headers:?}");
    assert_eq!(header("via"), Some("1.1 stormwall"), "{headers:?}");
    for gone in [
        "connection",
        "x-drop-me",
        "keep-alive",
        "proxy-authorization",
        "upgrade",
        "transfer-encoding",
        "host",
    ] {
        assert_eq!(header(gone), None, "{gone} must not reach h2: {headers:?}");
    }
    assert_eq!(header("te"), te, "{headers:?}");
    assert!(
        header("forwarded").is_some_and(|f| f.starts_with("for=127.0.0.1;proto=http;host=")),
        "{headers:?}"
    );
}

#[tokio::test]
async fn https_upstream_speaks_http2_when_alpn_picks_h2() {
    let pki = Pki::generate("h2-alpn");
    let (origin, connections, requests, task) = h2_origin(Some(pki.server_config())).await;
    let port = origin.port();
    for version in ["auto", "http2"] {
        let proxy = Proxy::launch(&format!(
            "upstream = \"https://localhost:{port}/base\"\nupstream_version = \"{version}\"\n\
             [upstream_tls]\nca_file = \"{}\"\nsystem_roots = false\n",
            pki.ca_file.display()
        ))
        .await;
        let (res, body) = send(h2_probe(&proxy.url("/v1/x?q=1&r=two"))).await;
        assert_eq!(res.status(), StatusCode::OK, "{version}");
        assert_eq!(res.headers()["x-origin-version"], "HTTP/2.0", "{version}");
        assert_eq!(res.headers()["x-origin"], "echo");
        assert_eq!(res.headers()["via"], "1.1 stormwall");
        let (line, headers, echoed) = parse_echo(&body);
        assert_eq!(
            line,
            format!("POST https://localhost:{port}/base/v1/x?q=1&r=two"),
            "{version}"
        );
        assert_eq!(echoed, "hello h2");
        // Only `http2` (HTTP/2 known in advance) passes `te: trailers` on.
        let te = (version == "http2").then_some("trailers");
        assert_h2_headers(&headers, te);
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(connections.load(Ordering::SeqCst), 2, "one per proxy");
    task.abort();
}

#[tokio::test]
async fn https_upstream_without_h2_is_spoken_to_in_http1_by_auto() {
    let pki = Pki::generate("h1-alpn");
    let (origin, calls, task) = tls_origin(&pki).await;
    let port = origin.port();
    let upstream = format!(
        "upstream = \"https://localhost:{port}\"\n[upstream_tls]\nca_file = \"{}\"\n",
        pki.ca_file.display()
    );
    // `auto`: the origin picks no ALPN protocol, the proxy falls back to HTTP/1.1.
    let proxy = Proxy::launch(&format!("upstream_version = \"auto\"\n{upstream}")).await;
    let (res, body) = send(h2_probe(&proxy.url("/a?b=c"))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-origin-version"], "HTTP/1.1");
    assert!(String::from_utf8_lossy(&body).starts_with("POST /a?b=c\n"));
    // `http2`: the proxy offers only h2, the origin cannot speak it: 502.
    let proxy = Proxy::launch(&format!("upstream_version = \"http2\"\n{upstream}")).await;
    let (res, _) = get(&proxy.url("/a")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test]
async fn http_upstream_speaks_h2c_with_prior_knowledge() {
    let (origin, connections, requests, task) = h2_origin(None).await;
    let proxy = Proxy::launch(&format!(
        "upstream = \"http://{origin}\"\nupstream_version = \"http2\"\n"
    ))
    .await;
    for i in 0..3 {
        let (res, body) = send(h2_probe(&proxy.url(&format!("/items/{i}?x=1&y=two")))).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-origin-version"], "HTTP/2.0");
        let (line, headers, echoed) = parse_echo(&body);
        assert_eq!(line, format!("POST http://{origin}/items/{i}?x=1&y=two"));
        assert_eq!(echoed, "hello h2");
        assert_h2_headers(&headers, Some("trailers"));
    }
    // A large streamed body goes through intact.
    let big = Bytes::from(vec![b'z'; 3 * 1024 * 1024]);
    let (res, body) = send(
        Request::put(proxy.url("/big"))
            .body(Full::new(big.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let (line, _, echoed) = parse_echo(&body);
    assert_eq!(line, format!("PUT http://{origin}/big"));
    assert_eq!(echoed.len(), big.len());
    assert_eq!(requests.load(Ordering::SeqCst), 4);
    // Every request went over one multiplexed connection.
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // The default (HTTP/1.1) cannot talk to an h2c-only origin: 502.
    let h1 = Proxy::start(origin, "").await;
    let (res, _) = get(&h1.url("/x")).await;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(requests.load(Ordering::SeqCst), 4);
    task.abort();
}

#[tokio::test]
async fn tls_listener_serves_https_clients_trusting_its_ca() {
    let pki = Pki::generate("listener");
    let origin = echo_origin().await;
    let proxy = Proxy::launch(&format!(
        "upstream = \"http://{}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        origin.addr(),
        pki.cert_file.display(),
        pki.key_file.display()
    ))
    .await;
    let url = format!("https://localhost:{}/secure?x=1", proxy.listen.port());
    let res = tokio::time::timeout(
        Duration::from_secs(20),
        pki.client()
            .request(Request::get(url.as_str()).body(Full::default()).unwrap()),
    )
    .await
    .expect("in time")
    .expect("HTTPS response");
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("GET /secure?x=1\n"), "{text}");
    assert!(
        text.contains(";proto=https;host="),
        "Forwarded carries proto=https: {text}"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = tokio::time::timeout(
        Duration::from_secs(20),
        client().request(
            Request::get(proxy.url("/secure"))
                .body(Full::default())
                .unwrap(),
        ),
    )
    .await
    .expect("in time");
    assert!(plain.is_err(), "plain HTTP must fail: {plain:?}");
    assert_eq!(origin.calls(), 1);
}

// ---------------------------------------------------------------------------------------------
// Per-route overrides, breaker states in /health.

/// An origin that answers 500 under `/fragile` and a cacheable 200 elsewhere; counts calls
/// per path.
async fn route_origin() -> (TestServer, Arc<Mutex<HashMap<String, u64>>>) {
    let per_path = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let counts = per_path.clone();
    let server = TestServer::start(move |req: Request<Incoming>| {
        let path = req.uri().path().to_owned();
        *counts.lock().unwrap().entry(path.clone()).or_default() += 1;
        async move {
            let mut res = stormwall_tests::http::ok(format!("{} {path}", req.method()));
            if path.starts_with("/fragile") {
                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            } else {
                res.headers_mut().insert(
                    "cache-control",
                    http::HeaderValue::from_static("public, max-age=60"),
                );
            }
            res
        }
    })
    .await;
    (server, per_path)
}

const ROUTES: &str = "[inbound]\nstandard = false\n[inbound.rate_limit]\nper_second = 0.001\nburst = 1\n\
[outbound]\npreset = \"none\"\n\
[[route]]\nname = \"open\"\nprefix = \"/open\"\n[route.inbound.rate_limit]\nenabled = false\n\
[[route]]\nname = \"docs\"\nprefix = \"/docs/\"\nmethods = [\"GET\"]\n\
[route.inbound.rate_limit]\nenabled = false\n[route.inbound.cache]\nmax_bytes = 1048576\n\
[[route]]\nname = \"fragile\"\nprefix = \"/fragile\"\n[route.inbound.rate_limit]\nburst = 100\n\
[route.outbound.circuit]\nwindow_calls = 4\nminimum_calls = 2\nfailure_rate = 50.0\nwait = \"600s\"\n";

#[tokio::test]
async fn routes_override_layers_by_prefix_and_method() {
    let (origin, per_path) = route_origin().await;
    let proxy = Proxy::start(origin.addr(), ROUTES).await;
    let calls = |path: &str| per_path.lock().unwrap().get(path).copied().unwrap_or(0);

    // The global chain: one request per 1000 s.
    assert_eq!(get(&proxy.url("/other")).await.0.status(), StatusCode::OK);
    assert_eq!(
        get(&proxy.url("/other")).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // `/open` disables the limit; no cache there (the global chain has none).
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/open/a")).await.0.status(), StatusCode::OK);
    }
    assert_eq!(calls("/open/a"), 3);
    // A segment boundary: `/openx` is not under `/open`, so the global limit applies.
    assert_eq!(
        get(&proxy.url("/openx")).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // `/docs/` (GET only) adds a cache and no limit.
    let (first, _) = get(&proxy.url("/docs/a")).await;
    let (second, body) = get(&proxy.url("/docs/a")).await;
    assert_eq!(
        (first.status(), second.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    assert_eq!(&body[..], b"GET /docs/a");
    assert_eq!(
        calls("/docs/a"),
        1,
        "the repeat came from the route's cache"
    );
    let cache_status = second
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(cache_status.contains("hit"), "{cache_status:?}");
    // POST is not a method of `/docs/`: the global chain (and its spent limit) answers.
    let (res, _) = send(
        Request::post(proxy.url("/docs/a"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(calls("/docs/a"), 1);

    // `/fragile` has its own breaker: it opens after failures, the others stay closed.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&proxy.url("/fragile")).await.0.status());
    }
    assert_eq!(
        statuses[0],
        StatusCode::INTERNAL_SERVER_ERROR,
        "{statuses:?}"
    );
    assert_eq!(statuses[5], StatusCode::BAD_GATEWAY, "{statuses:?}");
    assert!(calls("/fragile") < 6, "the open breaker spared the origin");
    assert_eq!(get(&proxy.url("/open/b")).await.0.status(), StatusCode::OK);

    let (res, body) = get(&proxy.admin_url("/health")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let health = String::from_utf8_lossy(&body);
    assert!(health.contains("\"status\":\"degraded\""), "{health}");
    assert!(
        health.contains("{\"route\":\"fragile\",\"name\":\"fragile\",\"state\":\"open\"}"),
        "{health}"
    );
    assert!(
        !health.contains("\"redis\""),
        "no [redis] section: {health}"
    );
}

#[tokio::test]
async fn health_lists_closed_breakers_per_route_when_all_is_well() {
    let origin = echo_origin().await;
    let proxy = Proxy::start(
        origin.addr(),
        "[outbound]\npreset = \"fast_fail\"\nname = \"api\"\n\
         [[route]]\nname = \"search\"\nprefix = \"/search\"\n",
    )
    .await;
    assert_eq!(
        get(&proxy.url("/search?q=x")).await.0.status(),
        StatusCode::OK
    );
    let (_, body) = get(&proxy.admin_url("/health")).await;
    let health = String::from_utf8_lossy(&body);
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(
        health.contains("{\"route\":\"*\",\"name\":\"api\",\"state\":\"closed\"}"),
        "{health}"
    );
    // The route inherits the global outbound section but has its own breaker, named after
    // the global `name` it inherited.
    assert!(
        health.contains("{\"route\":\"search\",\"name\":\"api\",\"state\":\"closed\"}"),
        "{health}"
    );
}

// ---------------------------------------------------------------------------------------------
// Shared limits through Redis.

#[tokio::test]
async fn two_proxies_share_one_quota_through_redis() {
    let mut redis = RedisServer::start();
    let origin = echo_origin().await;
    // 7 requests, then one per 1000 s; long Redis timeouts so that a loaded machine does not
    // turn slow answers into fail-open admissions.
    let config = format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"5s\"\non_failure = \"closed\"\n\
         [inbound]\nstandard = false\n[inbound.rate_limit]\nper_second = 0.001\nburst = 7\nkey = \"global\"\n",
        redis.url()
    );
    let a = Proxy::start(origin.addr(), &config).await;
    let b = Proxy::start(origin.addr(), &config).await;
    let mut admitted = 0;
    let mut rejected = 0;
    for i in 0..20 {
        let proxy = if i % 2 == 0 { &a } else { &b };
        let (res, _) = get(&proxy.url("/shared")).await;
        match res.status() {
            StatusCode::OK => admitted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                rejected += 1;
                assert!(res.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(admitted, 7, "one quota for both proxies");
    assert_eq!(rejected, 13);
    assert_eq!(origin.calls(), 7);

    let (_, body) = get(&a.admin_url("/health")).await;
    let health = String::from_utf8_lossy(&body);
    assert!(
        health.contains(&format!(
            "\"redis\":{{\"address\":\"127.0.0.1:{}\",\"reachable\":true}}",
            redis.port()
        )),
        "{health}"
    );
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    redis.kill();
    let (_, body) = get(&b.admin_url("/health")).await;
    let health = String::from_utf8_lossy(&body);
    assert!(health.contains("\"reachable\":false"), "{health}");
    assert!(health.contains("\"status\":\"degraded\""), "{health}");
    // `on_failure = "closed"`: with Redis gone, requests are rejected.
    assert_eq!(
        get(&a.url("/shared")).await.0.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

// ---------------------------------------------------------------------------------------------
// Coalescing.

/// The sum of a counter's samples in a Prometheus text page.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn concurrent_identical_requests_are_coalesced_into_one() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let release = gate.clone();
    let origin = TestServer::start(move |_req: Request<Incoming>| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            stormwall_tests::http::ok("shared answer")
        }
    })
    .await;
    let proxy = Proxy::start(
        origin.addr(),
        "[inbound]\nstandard = false\n[inbound.coalesce]\nmax_waiters = 64\n",
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = proxy.url("/expensive?id=7");
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    // Hold the origin until the four followers have joined the leader (metrics say so).
    let mut joined = 0.0;
    for _ in 0..400 {
        let (_, page) = get(&proxy.admin_url("/metrics")).await;
        joined = metric_sum(
            &String::from_utf8_lossy(&page),
            "stormwall_coalesce_hits_total",
        );
        if joined >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(joined, 4.0, "four requests joined the first");
    release.notify_one();
    for task in tasks {
        let (res, body) = task.await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(&body[..], b"shared answer");
    }
    assert_eq!(origin.calls(), 1, "one origin call for five requests");
}
