//! Forwarding: header hygiene, URI rewriting and the upstream client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{Either, Map, Ready, ready};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use stormwall::body::{Body, boxed};
use stormwall::circuit::Breaker;
use stormwall::core::BoxError;
use stormwall::core::key::PeerAddr;
use stormwall::ratelimit::RateLimitLayer;

use crate::config::{Loaded, RedisConfig, Stacks, UpstreamVersion, path_matches};
use tower::util::{BoxCloneSyncService, Oneshot, ServiceExt};
use tower::{Layer, service_fn};

/// The service the listener serves: never fails (upstream errors are 502 responses).
pub(crate) type ProxyService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

pub(crate) type Upstream = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The value this proxy adds to `Via`.
const VIA: &str = "1.1 stormwall";

/// Where requests go: the upstream's scheme, authority and path prefix.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    scheme: Scheme,
    authority: Authority,
    prefix: String,
    /// The upstream speaks only HTTP/2: a client's `TE: trailers` is passed on (the one `TE`
    /// value HTTP/2 allows; gRPC needs it).
    te_trailers: bool,
}

impl Target {
    /// The target for `upstream`, spoken to in `version`.
    pub(crate) fn new(upstream: &Uri, version: UpstreamVersion) -> Self {
        Self {
            te_trailers: version == UpstreamVersion::Http2,
            scheme: upstream.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: upstream
                .authority()
                .cloned()
                .unwrap_or_else(|| Authority::from_static("127.0.0.1")),
            prefix: upstream.path().trim_end_matches('/').to_owned(),
        }
    }

    /// The upstream URI for a request's path and query.
    pub(crate) fn rewrite(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if self.prefix.is_empty() && pq.starts_with('/') {
            // The common case: no prefix, reuse the parsed path and query as is.
            match uri.path_and_query() {
                Some(pq) => pq.clone(),
                None => PathAndQuery::from_static("/"),
            }
        } else {
            let mut joined = String::with_capacity(self.prefix.len() + pq.len() + 1);
            joined.push_str(&self.prefix);
            if !pq.starts_with('/') {
                joined.push('/');
            }
            joined.push_str(pq);
            PathAndQuery::try_from(joined)?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// `host:port` of the upstream, for the health check.
    pub(crate) fn socket_authority(&self) -> String {
        let default = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        let port = self.authority.port_u16().unwrap_or(default);
        format!("{}:{port}", self.authority.host())
    }
}

/// Removes hop-by-hop headers: `Connection` and the headers it names, `Keep-Alive`,
/// `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Fast path (almost every request and response): one pass over the names, nothing to
    // remove, no allocation and no hashing.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Whether `name` is a hop-by-hop header by itself (not counting those `Connection` names).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// Appends `value` to a list header (`Forwarded`, `Via`), joining existing lines. Without an
/// existing line (the common case) `value` is inserted as is, without copying.
fn append_list(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let mut existing = headers.get_all(&name).iter().peekable();
    if existing.peek().is_none() {
        headers.insert(name, value);
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in existing.chain(std::iter::once(&value)) {
        if !joined.is_empty() {
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(name, v);
    }
}

/// Appends a `Forwarded` parameter value to `out`: a token as is, anything else quoted
/// (RFC 7239).
fn push_forwarded_value(out: &mut String, text: &str) {
    let token = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// This hop's `for=…;proto=…` `Forwarded` parameters, rendered once per client connection
/// by the listener (the peer address and scheme do not change between its requests).
#[derive(Debug, Clone)]
pub(crate) struct ClientHop(Arc<str>);

impl ClientHop {
    /// `peer` reached the proxy over `proto` (`http` or `https`).
    pub(crate) fn new(peer: SocketAddr, proto: &str) -> Self {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(48);
        // An IPv4 address is a token; an IPv6 one is quoted with its brackets.
        let _ = match peer {
            SocketAddr::V4(v4) => write!(text, "for={}", v4.ip()),
            SocketAddr::V6(v6) => write!(text, "for=\"[{}]\"", v6.ip()),
        };
        text.push_str(";proto=");
        text.push_str(proto);
        Self(text.into())
    }
}

/// The `Forwarded` element this hop adds.
fn forwarded_element(hop: &ClientHop, host: Option<&[u8]>) -> String {
    let mut element = String::with_capacity(hop.0.len() + 32);
    element.push_str(&hop.0);
    if let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) {
        element.push_str(";host=");
        push_forwarded_value(&mut element, host);
    }
    element
}

/// Prepares a client request for the upstream: URI, version, hop-by-hop headers,
/// `Forwarded` and `Via`.
pub(crate) fn prepare_request(req: &mut Request<Body>, target: &Target) -> Result<(), http::Error> {
    // The listener sets `ClientHop`; without it (a request built elsewhere) the peer address
    // alone is enough.
    let hop = req.extensions().get::<ClientHop>().cloned().or_else(|| {
        req.extensions()
            .get::<PeerAddr>()
            .map(|p| ClientHop::new(p.0, "http"))
    });
    // The client sets `Host` from the upstream URI; the client's host travels in `Forwarded`.
    let host = req.headers_mut().remove(header::HOST);
    let authority = req.uri().authority().cloned();
    let host = host
        .as_ref()
        .map(HeaderValue::as_bytes)
        .or_else(|| authority.as_ref().map(|a| a.as_str().as_bytes()));
    let forwarded = hop.map(|hop| forwarded_element(&hop, host));
    *req.uri_mut() = target.rewrite(req.uri())?;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    let te_trailers = target.te_trailers && asks_for_trailers(headers);
    strip_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(element) = forwarded
        && let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(element))
    {
        append_list(headers, header::FORWARDED, value);
    }
    append_list(headers, header::VIA, HeaderValue::from_static(VIA));
    Ok(())
}

/// Whether the client's `TE` lists `trailers`.
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Cleans an upstream response before it goes back to the client.
fn prepare_response(res: &mut Response<Body>) {
    // An HTTP/2 upstream's response goes to the client in the client's version.
    *res.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(res.headers_mut());
    append_list(
        res.headers_mut(),
        header::VIA,
        HeaderValue::from_static(VIA),
    );
}

/// A small text response (502, 400).
pub(crate) fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut res = Response::new(boxed(Full::new(Bytes::from_static(text.as_bytes()))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The future of one forwarded request. Named combinators rather than an `async fn`: the
/// compiler cannot prove an `async` block holding the boxed upstream future `Send`.
type ForwardFuture = Either<
    Ready<Result<Response<Body>, Infallible>>,
    Map<Oneshot<Upstream, Request<Body>>, FinishFn>,
>;

type FinishFn = fn(Result<Response<Body>, BoxError>) -> Result<Response<Body>, Infallible>;

/// Turns the upstream's answer into the client's response: hop-by-hop headers out, `Via`
/// in; errors become 502.
fn finish(result: Result<Response<Body>, BoxError>) -> Result<Response<Body>, Infallible> {
    match result {
        Ok(mut res) => {
            prepare_response(&mut res);
            Ok(res)
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream error");
            metrics::counter!("stormwall_proxy_upstream_errors_total").increment(1);
            Ok(text_response(StatusCode::BAD_GATEWAY, "bad gateway\n"))
        }
    }
}

/// Forwards one request to the upstream.
fn forward_one(upstream: Upstream, target: &Target, mut req: Request<Body>) -> ForwardFuture {
    if let Err(e) = prepare_request(&mut req, target) {
        tracing::debug!(error = %e, "cannot rewrite the request URI");
        return Either::Left(ready(Ok(text_response(
            StatusCode::BAD_REQUEST,
            "bad request target\n",
        ))));
    }
    Either::Right(upstream.oneshot(req).map(finish as FinishFn))
}

/// The upstream HTTP client: plain, or HTTPS through rustls when `tls` is given (the
/// connector then still accepts `http://` URIs), in `version`: HTTP/1.1, HTTP/2 with prior
/// knowledge (h2c) or by ALPN, or (HTTPS) whichever the upstream picks by ALPN.
///
/// A plain `http://` upstream in HTTP/1.1 (the default) gets the lean pool of
/// [`crate::pool::Http1Pool`] instead of the hyper-util client.
pub(crate) fn client(
    target: &Target,
    tls: Option<rustls::ClientConfig>,
    version: UpstreamVersion,
) -> Upstream {
    if tls.is_none() && version == UpstreamVersion::Http1 {
        return BoxCloneSyncService::new(crate::pool::Http1Pool::new(&target.authority));
    }
    let mut builder = Client::builder(TokioExecutor::new());
    if version == UpstreamVersion::Http2 {
        builder.http2_only(true);
    }
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    match tls {
        None => boxed_client(builder.build::<_, Body>(http)),
        Some(config) => {
            http.enforce_http(false);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http();
            let https = match version {
                UpstreamVersion::Http1 => https.enable_http1().wrap_connector(http),
                UpstreamVersion::Http2 => https.enable_http2().wrap_connector(http),
                UpstreamVersion::Auto => https.enable_all_versions().wrap_connector(http),
            };
            boxed_client(builder.build::<_, Body>(https))
        }
    }
}

fn boxed_client<C>(client: Client<C, Body>) -> Upstream
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    BoxCloneSyncService::new(
        client
            .map_response(|res| res.map(boxed))
            .map_err(|e| -> BoxError { Box::new(e) }),
    )
}

/// One chain: (shared limits →) inbound stack → forwarding → outbound stack → `client`.
/// Must run within the Tokio runtime (the Redis store's connection task).
pub(crate) fn chain(
    target: Target,
    client: &Upstream,
    stacks: &Stacks,
    redis: Option<&RedisConfig>,
) -> Result<ProxyService, String> {
    let upstream: Upstream = match &stacks.outbound {
        Some(stack) => BoxCloneSyncService::new(ServiceExt::<Request<Body>>::map_err(
            stack.layer(client.clone()),
            |e: stormwall::Error| -> BoxError { Box::new(e) },
        )),
        None => client.clone(),
    };
    let forward = service_fn(move |req| forward_one(upstream.clone(), &target, req));
    let service: ProxyService = match &stacks.inbound {
        Some(stack) => BoxCloneSyncService::new(stack.layer(forward)),
        None => BoxCloneSyncService::new(forward),
    };
    let (Some(redis), Some((limits, wait))) = (redis, &stacks.shared_limits) else {
        return Ok(service);
    };
    let store = redis.connect(&stacks.name)?;
    let mut limits = limits.iter().cloned();
    let Some(first) = limits.next() else {
        return Ok(service);
    };
    let mut layer = RateLimitLayer::with_store(first, store);
    for limit in limits {
        layer = layer.limit(limit);
    }
    layer = match wait {
        Some(max) => layer.wait(*max),
        None => layer.reject(),
    };
    Ok(BoxCloneSyncService::new(
        layer.layer(service).map_response(|res| res.map(boxed)),
    ))
}

/// The whole service: the route with the longest matching prefix (the first in the file
/// among equals), else the global chain.
pub(crate) fn build(
    target: &Target,
    client: &Upstream,
    loaded: &Loaded,
    redis: Option<&RedisConfig>,
) -> Result<ProxyService, String> {
    let global = chain(target.clone(), client, &loaded.global, redis)?;
    if loaded.routes.is_empty() {
        return Ok(global);
    }
    let mut routes = Vec::with_capacity(loaded.routes.len());
    for route in &loaded.routes {
        routes.push((
            route.prefix.clone(),
            route.methods.clone(),
            chain(target.clone(), client, &route.stacks, redis)?,
        ));
    }
    let routes = Arc::new(routes);
    Ok(BoxCloneSyncService::new(service_fn(
        move |req: Request<Body>| {
            let path = req.uri().path();
            let mut best: Option<(usize, &ProxyService)> = None;
            for (prefix, methods, svc) in routes.iter() {
                let method_ok = methods.as_ref().is_none_or(|ms| ms.contains(req.method()));
                let better = best.is_none_or(|(len, _)| prefix.len() > len);
                if method_ok && better && path_matches(prefix, path) {
                    best = Some((prefix.len(), svc));
                }
            }
            best.map_or(&global, |(_, svc)| svc).clone().oneshot(req)
        },
    )))
}

/// The breakers of every chain, `(chain name, breaker)`, for `/health`.
pub(crate) fn breakers(loaded: &Loaded) -> Vec<(String, Arc<Breaker>)> {
    std::iter::once(&loaded.global)
        .chain(loaded.routes.iter().map(|r| &r.stacks))
        .filter_map(|stacks| {
            let layer = stacks.outbound.as_ref()?.circuit_layer()?;
            Some((stacks.name.clone(), layer.breaker().clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("basic x"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn te_trailers_goes_only_to_an_http2_upstream() {
        let request = || {
            Request::builder()
                .uri("/x")
                .header(header::TE, "gzip, Trailers;q=1")
                .header(header::CONNECTION, "te, upgrade")
                .header(header::UPGRADE, "h2c")
                .body(boxed(Full::new(Bytes::new())))
                .unwrap()
        };
        let upstream: Uri = "http://127.0.0.1:9000".parse().unwrap();
        let mut req = request();
        prepare_request(&mut req, &Target::new(&upstream, UpstreamVersion::Http2)).unwrap();
        assert_eq!(req.headers()[header::TE], "trailers");
        assert!(req.headers().get(header::CONNECTION).is_none());
        assert!(req.headers().get(header::UPGRADE).is_none());
        for version in [UpstreamVersion::Http1, UpstreamVersion::Auto] {
            let mut req = request();
            prepare_request(&mut req, &Target::new(&upstream, version)).unwrap();
            assert!(req.headers().get(header::TE).is_none(), "{version:?}");
        }
        let mut req = request();
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("gzip"));
        prepare_request(&mut req, &Target::new(&upstream, UpstreamVersion::Http2)).unwrap();
        assert!(req.headers().get(header::TE).is_none());
    }

    #[test]
    fn uri_is_rewritten_with_prefix_and_query() {
        let target = Target::new(
            &"http://127.0.0.1:9000/api/".parse().unwrap(),
            UpstreamVersion::Http1,
        );
        let uri = target
            .rewrite(&"/v1/items?x=1&y=2".parse().unwrap())
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:9000/api/v1/items?x=1&y=2"
        );
        let target = Target::new(&"http://10.0.0.1".parse().unwrap(), UpstreamVersion::Http1);
        assert_eq!(target.socket_authority(), "10.0.0.1:80");
        let uri = target
            .rewrite(&"http://client.example/a".parse().unwrap())
            .unwrap();
        assert_eq!(uri.to_string(), "http://10.0.0.1/a");
    }

    #[test]
    fn forwarded_is_appended_and_quoted() {
        let mut req = Request::builder()
            .uri("/x")
            .header(header::HOST, "front.example:8080")
            .header(header::FORWARDED, "for=192.0.2.1")
            .header(header::VIA, "1.0 fred")
            .body(boxed(Full::new(Bytes::new())))
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("[::1]:5000".parse().unwrap()));
        let target = Target::new(
            &"http://127.0.0.1:9000".parse().unwrap(),
            UpstreamVersion::Http1,
        );
        prepare_request(&mut req, &target).unwrap();
        assert_eq!(
            req.headers()[header::FORWARDED],
            "for=192.0.2.1, for=\"[::1]\";proto=http;host=\"front.example:8080\""
        );
        assert_eq!(req.headers()[header::VIA], "1.0 fred, 1.1 stormwall");
        assert!(req.headers().get(header::HOST).is_none());
        assert_eq!(req.version(), Version::HTTP_11);
    }
}
