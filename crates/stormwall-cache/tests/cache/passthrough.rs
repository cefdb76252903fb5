//! Responses the cache will not store are decided from their head and streamed through: never
//! buffered. Storable misses are still coalesced.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use stormwall_cache::CacheLayer;
use stormwall_tests::http::TestServer;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt;

use crate::support::*;

/// A response body fed chunk by chunk by the test.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

/// A loopback origin answering its one request with `headers` and a body whose chunks the
/// test sends through the returned sender.
async fn streaming_origin(
    headers: &'static [(&'static str, &'static str)],
) -> (String, mpsc::Sender<Bytes>) {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/stream", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
            let rx = rx.lock().unwrap().take().expect("one request");
            async move {
                let mut res = Response::builder();
                for (k, v) in headers {
                    res = res.header(*k, *v);
                }
                Ok::<_, Infallible>(res.body(ChannelBody(rx)).unwrap())
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    });
    (url, tx)
}

/// Sends a GET through `layer` to `url` and checks that its head and first chunk arrive while
/// the origin still holds the rest of the body (a cache that buffered would wait for the end
/// and never answer: the guard below turns that into a failure instead of a hang). Returns the
/// `Cache-Status`.
async fn first_chunk_before_the_rest(
    layer: &CacheLayer,
    url: &str,
    tx: mpsc::Sender<Bytes>,
) -> String {
    tx.send(Bytes::from_static(b"first ")).await.unwrap();
    let svc = cached(layer);
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    // A deadlock guard, not a timing assertion: in the streaming case the head arrives as soon
    // as the origin sent it.
    let res = tokio::time::timeout(Duration::from_secs(60), svc.oneshot(req))
        .await
        .expect("the head must arrive before the origin finished the body (not buffered)")
        .expect("request");
    let status = res.headers()["cache-status"].to_str().unwrap().to_owned();
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("the first chunk must arrive before the origin sent the rest")
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().unwrap(), "first ");
    // Only now does the origin produce the rest.
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.expect("body").to_bytes();
    assert_eq!(rest, "second");
    status
}

// A typical API response (no freshness information, no validator) is not stored: it streams
// through from its head, with `detail=no-freshness`.
#[tokio::test]
async fn no_freshness_response_streams_through() {
    let (url, tx) = streaming_origin(&[("content-type", "application/json")]).await;
    let layer = CacheLayer::private();
    let status = first_chunk_before_the_rest(&layer, &url, tx).await;
    assert_eq!(
        status,
        "stormwall; fwd=uri-miss; fwd-status=200; detail=no-freshness"
    );
    let stats = layer.handle().stats();
    assert_eq!((stats.misses, stats.stored, stats.entries), (1, 0, 0));
}

// Uncacheable by its Cache-Control (no-store, private in a shared cache): streamed.
#[tokio::test]
async fn uncacheable_cache_control_streams_through() {
    let (url, tx) = streaming_origin(&[("cache-control", "no-store")]).await;
    let layer = CacheLayer::shared();
    let status = first_chunk_before_the_rest(&layer, &url, tx).await;
    assert!(status.ends_with("detail=no-store"), "{status}");
    let (url, tx) = streaming_origin(&[("cache-control", "private, max-age=60")]).await;
    let status = first_chunk_before_the_rest(&layer, &url, tx).await;
    assert!(status.ends_with("detail=private"), "{status}");
    assert_eq!(layer.handle().stats().stored, 0);
}

// A storable response whose declared Content-Length exceeds the per-entry cap is not read
// ahead: it streams through, `detail=too-large`.
#[tokio::test]
async fn declared_length_over_the_cap_streams_through() {
    let (url, tx) =
        streaming_origin(&[("cache-control", "max-age=60"), ("content-length", "12")]).await;
    let layer = CacheLayer::private().max_entry_bytes(8);
    let status = first_chunk_before_the_rest(&layer, &url, tx).await;
    assert!(status.ends_with("detail=too-large"), "{status}");
    assert_eq!(layer.handle().stats().stored, 0);
}

/// An origin answering every request with these headers and a body counting calls.
async fn counting_origin(headers: &'static [(&'static str, &'static str)]) -> TestServer {
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    TestServer::start(move |req: Request<Incoming>| {
        let n = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let not_modified = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        async move {
            if not_modified {
                return respond(304, &[("etag", "\"v1\"".to_owned())], "");
            }
            let hs: Vec<(&str, String)> =
                headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            respond(200, &hs, &format!("response {n}"))
        }
    })
    .await
}

// No freshness and no validator: each request goes to the origin, nothing is stored.
#[tokio::test]
async fn no_freshness_no_validator_is_not_stored() {
    let server = counting_origin(&[("content-type", "text/plain")]).await;
    let layer = CacheLayer::private();
    let svc = cached(&layer);
    for i in 1..=2 {
        let got = get(&svc, &server.url("/api"), &[]).await;
        assert_eq!(got.body, format!("response {i}"));
        assert!(got.cache_status().ends_with("detail=no-freshness"));
    }
    assert_eq!(server.calls(), 2);
    assert_eq!(layer.handle().stats().stored, 0);
}

// No freshness but an ETag: still stored, so that the next request revalidates it (304) and
// is answered with the stored body.
#[tokio::test]
async fn no_freshness_with_validator_is_stored_and_revalidated() {
    let server = counting_origin(&[("etag", "\"v1\"")]).await;
    let layer = CacheLayer::private();
    let svc = cached(&layer);
    let first = get(&svc, &server.url("/api"), &[]).await;
    assert!(
        first.cache_status().ends_with("stored"),
        "{}",
        first.cache_status()
    );
    let second = get(&svc, &server.url("/api"), &[]).await;
    assert_eq!(second.body, "response 1");
    assert!(
        second.cache_status().contains("fwd=stale; fwd-status=304"),
        "{}",
        second.cache_status()
    );
    assert_eq!(server.calls(), 2);
    assert_eq!(layer.handle().stats().revalidated_not_modified, 1);
}

// No freshness, but a configured stale-if-error grace makes the response worth keeping.
#[tokio::test]
async fn no_freshness_with_default_grace_is_stored() {
    let server = counting_origin(&[("content-type", "text/plain")]).await;
    let layer = CacheLayer::private().stale_if_error(Duration::from_secs(60));
    let svc = cached(&layer);
    let first = get(&svc, &server.url("/api"), &[]).await;
    assert!(
        first.cache_status().ends_with("stored"),
        "{}",
        first.cache_status()
    );
    assert_eq!(layer.handle().stats().stored, 1);
}

// Concurrent misses of a response that turns out not storable: the waiters are not handed
// the leader's response; each gets its own from the origin.
#[tokio::test]
async fn concurrent_uncacheable_misses_each_get_their_own_response() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let server = TestServer::start(move |req: Request<Incoming>| {
        let g = g.clone();
        async move {
            let _permit = g.acquire().await.expect("gate");
            let who = req.headers()["x-user"].to_str().unwrap().to_owned();
            respond(200, &[], &format!("for {who}"))
        }
    })
    .await;
    let layer = CacheLayer::shared();
    let svc = cached(&layer);
    let url = server.url("/me");
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let svc = svc.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let who = format!("user{i}");
                let got = get(&svc, &url, &[("x-user", &who)]).await;
                (who, got)
            })
        })
        .collect();
    for _ in 0..1_000_000 {
        if server.calls() >= 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    gate.add_permits(10_000);
    for t in tasks {
        let (who, got) = t.await.unwrap();
        assert_eq!(got.body, format!("for {who}"));
        assert!(!got.cache_status().contains("collapsed"));
    }
    assert_eq!(server.calls(), 10);
    assert_eq!(layer.handle().stats().stored, 0);
}
