//! The HTTP layer against a real hyper server on loopback that counts its calls.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use stormwall_coalesce::{CoalesceFailure, CoalesceLayer, StatsHandle};
use stormwall_core::response::ResponseBody;
use stormwall_tests::http::{TestServer, client};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

/// A server whose handler waits until the test opens the gate, so callers overlap without
/// sleeps. The body is `"<path> #<call number>"`, so a shared response is recognisable.
async fn gated_server(
    respond: fn(&str, u64) -> Response<Full<Bytes>>,
) -> (TestServer, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let n = Arc::new(AtomicUsize::new(0));
    let g = gate.clone();
    let server = TestServer::start(move |req: Request<hyper::body::Incoming>| {
        let gate = g.clone();
        let call = n.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        async move {
            let _permit = gate.acquire().await.expect("gate open");
            respond(req.uri().path(), call)
        }
    })
    .await;
    (server, gate)
}

fn plain(path: &str, call: u64) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(format!("{path} #{call}"))))
}

fn open(gate: &Semaphore) {
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn body<B>(res: Response<ResponseBody<B>>) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

type Svc = stormwall_coalesce::Coalesce<stormwall_tests::http::TestClient>;

fn spawn_call(
    svc: &Svc,
    req: Request<Full<Bytes>>,
) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let svc = svc.clone();
    tokio::spawn(async move {
        let res = svc.oneshot(req).await.expect("request");
        let status = res.status();
        (status, body(res).await)
    })
}

fn waiters(stats: &StatsHandle) -> u64 {
    stats.snapshot().waiters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_gets_make_one_upstream_call() {
    let (server, gate) = gated_server(plain).await;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(client());
    let tasks: Vec<_> = (0..50)
        .map(|_| spawn_call(&svc, get(server.url("/users/1"))))
        .collect();
    wait_for("50 callers attached", || waiters(&stats) == 50).await;
    open(&gate);
    let results = join_all(tasks).await;
    assert_eq!(server.calls(), 1, "exactly one upstream call");
    for r in results {
        assert_eq!(r.unwrap(), (StatusCode::OK, "/users/1 #1".to_owned()));
    }
    let s = stats.snapshot();
    assert_eq!(
        (s.misses, s.hits, s.waiters, s.in_flight_keys),
        (1, 49, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_45_requests_7_resources() {
    let (server, gate) = gated_server(plain).await;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(client());
    // 45 requests over 7 resources.
    let per_resource = [10, 8, 7, 6, 5, 5, 4];
    assert_eq!(per_resource.iter().sum::<usize>(), 45);
    let mut tasks = Vec::new();
    for (r, &n) in per_resource.iter().enumerate() {
        for _ in 0..n {
            let path = format!("/items/{r}");
            tasks.push((path.clone(), spawn_call(&svc, get(server.url(&path)))));
        }
    }
    wait_for("45 callers attached", || waiters(&stats) == 45).await;
    assert_eq!(stats.snapshot().in_flight_keys, 7);
    open(&gate);
    for (path, task) in tasks {
        let (status, text) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(text.starts_with(&format!("{path} #")), "{text}");
    }
    assert_eq!(server.calls(), 7, "one upstream call per resource");
    let s = stats.snapshot();
    assert_eq!((s.hits, s.misses), (38, 7));
    assert_eq!(format!("{:.1}%", s.hit_rate() * 100.0), "84.4%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_authorization_makes_two_calls() {
    let (server, gate) = gated_server(plain).await;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(client());
    let req = |token: &str| {
        Request::get(server.url("/me"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .unwrap()
    };
    let tasks: Vec<_> = ["alice", "bob", "alice", "bob", "alice"]
        .into_iter()
        .map(|t| spawn_call(&svc, req(t)))
        .collect();
    wait_for("5 callers attached", || waiters(&stats) == 5).await;
    open(&gate);
    let bodies: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().1)
        .collect();
    assert_eq!(server.calls(), 2);
    // Alice's callers share one response, Bob's the other.
    assert_eq!(bodies[0], bodies[2]);
    assert_eq!(bodies[0], bodies[4]);
    assert_eq!(bodies[1], bodies[3]);
    assert_ne!(bodies[0], bodies[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_never_coalesced() {
    let (server, gate) = gated_server(plain).await;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(client());
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let req = Request::post(server.url("/orders"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            spawn_call(&svc, req)
        })
        .collect();
    wait_for("5 POSTs upstream", || server.calls() == 5).await;
    open(&gate);
    let mut bodies: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().1)
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 5, "every POST got its own response");
    let s = stats.snapshot();
    assert_eq!(
        (s.hits, s.misses),
        (0, 0),
        "POSTs bypass the layer entirely"
    );
}

fn big(path: &str, call: u64) -> Response<Full<Bytes>> {
    let mut body = format!("{path} #{call} ").into_bytes();
    body.resize(10_000, b'x');
    Response::new(Full::new(Bytes::from(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_cap_body_goes_to_the_leader_and_waiters_reissue() {
    let (server, gate) = gated_server(big).await;
    let layer = CoalesceLayer::new().max_body_bytes(1024);
    let stats = layer.stats();
    let svc = layer.layer(client());
    let tasks: Vec<_> = (0..5)
        .map(|_| spawn_call(&svc, get(server.url("/big"))))
        .collect();
    wait_for("5 callers attached", || waiters(&stats) == 5).await;
    open(&gate);
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for (status, text) in &results {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(text.len(), 10_000, "every body intact");
    }
    // The shared call plus one re-issued call per waiter.
    assert_eq!(server.calls(), 5);
    let leader_bodies = results
        .iter()
        .filter(|(_, t)| t.starts_with("/big #1 "))
        .count();
    assert_eq!(leader_bodies, 1);
    assert_eq!(stats.snapshot().reissued, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_a_large_resource_is_still_coalesced() {
    let (server, gate) = gated_server(big).await;
    let layer = CoalesceLayer::new().max_body_bytes(1024);
    let stats = layer.stats();
    let svc = layer.layer(client());
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let req = Request::head(server.url("/big"))
                .body(Full::default())
                .unwrap();
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(req).await.unwrap() })
        })
        .collect();
    wait_for("5 callers attached", || waiters(&stats) == 5).await;
    open(&gate);
    for t in join_all(tasks).await {
        let res = t.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-length"], "10000");
    }
    assert_eq!(
        server.calls(),
        1,
        "the declared length of a HEAD response is not a body"
    );
    assert_eq!(stats.snapshot().reissued, 0);
}

fn with_cookie(path: &str, call: u64) -> Response<Full<Bytes>> {
    let mut res = plain(path, call);
    res.headers_mut()
        .insert("set-cookie", format!("session={call}").parse().unwrap());
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_responses_are_never_shared() {
    let (server, gate) = gated_server(with_cookie).await;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(client());
    let tasks: Vec<_> = (0..3)
        .map(|_| spawn_call(&svc, get(server.url("/login"))))
        .collect();
    wait_for("3 callers attached", || waiters(&stats) == 3).await;
    open(&gate);
    let mut bodies: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().1)
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 3, "each caller got its own cookie");
    assert_eq!(server.calls(), 3);
    assert_eq!(stats.snapshot().reissued, 2);
}

fn private(path: &str, call: u64) -> Response<Full<Bytes>> {
    let mut res = plain(path, call);
    res.headers_mut()
        .insert("cache-control", "private, max-age=10".parse().unwrap());
    res
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_shared_only_when_the_key_has_identity() {
    // Default key (identity headers included): shared.
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(client());
    let (server2, gate2) = gated_server(private).await;
    let tasks: Vec<_> = (0..3)
        .map(|_| spawn_call(&svc, get(server2.url("/p"))))
        .collect();
    wait_for("3 callers attached", || waiters(&stats) == 3).await;
    open(&gate2);
    for r in join_all(tasks).await {
        assert_eq!(r.unwrap().1, "/p #1");
    }
    assert_eq!(server2.calls(), 1);

    // A custom key without identity: not shared, waiters re-issue.
    let (server3, gate3) = gated_server(private).await;
    let layer = CoalesceLayer::new().key_fn(|req: &Request<Full<Bytes>>| {
        Ok::<_, stormwall_core::key::KeyError>(req.uri().path().to_owned())
    });
    let stats = layer.stats();
    let svc = layer.layer(client());
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let svc = svc.clone();
            let req = get(server3.url("/p"));
            tokio::spawn(async move { body(svc.oneshot(req).await.unwrap()).await })
        })
        .collect();
    wait_for("3 callers attached", || stats.snapshot().waiters == 3).await;
    open(&gate3);
    let mut bodies: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), 3);
    assert_eq!(server3.calls(), 3);
    assert_eq!(stats.snapshot().reissued, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_dropped_waiters_still_get_the_response() {
    let (server, gate) = gated_server(plain).await;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(client());
    let leader = spawn_call(&svc, get(server.url("/users/1")));
    wait_for("leader attached", || waiters(&stats) == 1).await;
    wait_for("leader's request upstream", || server.calls() == 1).await;
    let waiters_tasks: Vec<_> = (0..4)
        .map(|_| spawn_call(&svc, get(server.url("/users/1"))))
        .collect();
    wait_for("5 callers attached", || waiters(&stats) == 5).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    wait_for("leader detached", || waiters(&stats) == 4).await;
    open(&gate);
    for r in join_all(waiters_tasks).await {
        assert_eq!(r.unwrap(), (StatusCode::OK, "/users/1 #1".to_owned()));
    }
    assert_eq!(server.calls(), 1, "the one upstream call was not cancelled");
    assert_eq!(stats.snapshot().cancelled, 0);
}

/// An inner service whose calls wait for a gate and flag their drop.
#[derive(Clone)]
struct Probe {
    calls: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    panic: bool,
    fail: bool,
}

struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Probe {
    fn new() -> Self {
        Self {
            calls: Arc::default(),
            drops: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            panic: false,
            fail: false,
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = std::io::Error,
        Future = impl Future<Output = Result<Response<Full<Bytes>>, std::io::Error>> + Send + 'static,
    > + Clone
    + Send
    + 'static {
        let probe = self.clone();
        tower::service_fn(move |_req: Request<()>| {
            let probe = probe.clone();
            probe.calls.fetch_add(1, Ordering::SeqCst);
            let flag = DropFlag(probe.drops.clone());
            async move {
                let _flag = flag;
                let _permit = probe.gate.acquire().await.expect("gate");
                if probe.panic {
                    panic!("handler exploded");
                }
                if probe.fail {
                    return Err(std::io::Error::other("connection reset"));
                }
                Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        })
    }
}

fn req() -> Request<()> {
    Request::get("http://upstream/x").body(()).unwrap()
}

#[tokio::test]
async fn all_callers_dropped_drops_the_upstream_future() {
    let probe = Probe::new();
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let mut svc = layer.layer(probe.service());
    let mut a = Box::pin(svc.ready().await.unwrap().call(req()));
    let mut b = Box::pin(svc.ready().await.unwrap().call(req()));
    assert!(futures_util::poll!(a.as_mut()).is_pending());
    assert!(futures_util::poll!(b.as_mut()).is_pending());
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
    drop(a);
    assert_eq!(probe.drops.load(Ordering::SeqCst), 0, "b still waits");
    drop(b);
    assert_eq!(
        probe.drops.load(Ordering::SeqCst),
        1,
        "upstream future dropped"
    );
    let s = stats.snapshot();
    assert_eq!((s.cancelled, s.in_flight_keys, s.waiters), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn per_caller_timeout_gives_504_and_cancels_when_nobody_is_left() {
    let probe = Probe::new();
    let layer = CoalesceLayer::new().timeout(Duration::from_secs(1));
    let stats = layer.stats();
    let svc = layer.layer(probe.service());
    let leader = svc.clone().oneshot(req());
    let waiter = svc.clone().oneshot(req());
    let opener = async {
        // Both time out at 1 s; the call itself finishes at 5 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        probe.gate.add_permits(10);
    };
    let (l, w, ()) = tokio::join!(leader, waiter, opener);
    let (l, w) = (l.unwrap(), w.unwrap());
    assert_eq!(l.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(w.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(l.extensions().get::<CoalesceFailure>().is_some());
    assert_eq!(stats.snapshot().timeouts, 2);
    // Both gone: the call was cancelled.
    assert_eq!(probe.drops.load(Ordering::SeqCst), 1);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_leader_does_not_cancel_the_call_for_a_later_waiter() {
    let probe = Probe::new();
    let layer = CoalesceLayer::new().timeout(Duration::from_secs(1));
    let svc = layer.layer(probe.service());
    let leader = svc.clone().oneshot(req());
    let waiter = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        svc.clone().oneshot(req()).await
    };
    let opener = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        probe.gate.add_permits(10);
    };
    let (l, w, ()) = tokio::join!(leader, waiter, opener);
    assert_eq!(l.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
    let w = w.unwrap();
    assert_eq!(w.status(), StatusCode::OK);
    assert_eq!(body(w).await, "ok");
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.stats().snapshot().cancelled, 0);
}

#[tokio::test]
async fn upstream_panic_gives_every_caller_a_500() {
    let mut probe = Probe::new();
    probe.panic = true;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(probe.service());
    let calls: Vec<_> = (0..4).map(|_| svc.clone().oneshot(req())).collect();
    let opener = async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        probe.gate.add_permits(10);
    };
    let (results, ()) = tokio::join!(join_all(calls), opener);
    for r in results {
        let res = r.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let failure = res.extensions().get::<CoalesceFailure>().unwrap();
        assert!(failure.message().contains("handler exploded"));
    }
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.snapshot().panics, 1);
}

#[tokio::test]
async fn upstream_error_goes_to_the_leader_and_502_to_waiters() {
    let mut probe = Probe::new();
    probe.fail = true;
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(probe.service());
    let calls: Vec<_> = (0..3).map(|_| svc.clone().oneshot(req())).collect();
    let opener = async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        probe.gate.add_permits(10);
    };
    let (results, ()) = tokio::join!(join_all(calls), opener);
    let mut errors = 0;
    let mut bad_gateways = 0;
    for r in results {
        match r {
            Err(e) => {
                assert_eq!(e.to_string(), "connection reset");
                errors += 1;
            }
            Ok(res) => {
                assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
                let f = res.extensions().get::<CoalesceFailure>().unwrap();
                assert_eq!(f.message(), "connection reset");
                bad_gateways += 1;
            }
        }
    }
    assert_eq!((errors, bad_gateways), (1, 2));
    assert_eq!(probe.calls.load(Ordering::SeqCst), 1);
    assert_eq!(stats.snapshot().errors, 1);
}

#[tokio::test]
async fn infallible_services_stay_infallible() {
    let svc = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
    });
    let svc = CoalesceLayer::new().layer(svc);
    let res: Result<_, Infallible> = svc.oneshot(req()).await;
    assert_eq!(body(res.unwrap()).await, "hi");
}

/// A response body fed by the test, one chunk at a time.
struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

/// A flight nobody joined hands its response through as it streams (no buffering): the caller
/// has the head and the first chunk while the upstream is still sending, and the flight has
/// left the map, so a later identical request makes a call of its own.
#[tokio::test]
async fn a_lone_caller_gets_the_response_streamed_unbuffered() {
    let calls = Arc::new(AtomicUsize::new(0));
    let senders = Arc::new(std::sync::Mutex::new(Vec::new()));
    let upstream = {
        let (calls, senders) = (Arc::clone(&calls), Arc::clone(&senders));
        tower::service_fn(move |_req: Request<()>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tx.send(Bytes::from_static(b"first ")).unwrap();
            senders.lock().unwrap().push(tx);
            async move { Ok::<_, Infallible>(Response::new(ChannelBody(rx))) }
        })
    };
    let layer = CoalesceLayer::new();
    let stats = layer.stats();
    let svc = layer.layer(upstream);
    let res = svc.clone().oneshot(req()).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first ");
    let s = stats.snapshot();
    assert_eq!((s.in_flight_keys, s.waiters), (0, 0), "{s:?}");
    // The same request again while the first body is still open: a new call.
    let second = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(stats.snapshot().misses, 2);
    // The first body goes on streaming, then ends when the upstream does.
    let tx = senders.lock().unwrap().remove(0);
    tx.send(Bytes::from_static(b"second")).unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
    senders.lock().unwrap().clear();
    assert_eq!(
        second.into_body().collect().await.unwrap().to_bytes(),
        "first "
    );
}
