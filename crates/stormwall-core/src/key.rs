//! Who or what a request counts against.
//!
//! A [`KeyExtractor`] turns a request into a key: the bucket a rate limiter charges, the breaker
//! a call is judged by, the flight a coalesced request joins. Extraction is fallible with a
//! typed [`KeyError`] (a missing header, no peer address), so a layer can decide what to do with
//! a request it cannot key — never a panic.
//!
//! | extractor | key |
//! |---|---|
//! | [`GlobalKey`] | `()` — one bucket for everything |
//! | [`PeerIp`] | the TCP peer's IP (axum `ConnectInfo`, tonic `TcpConnectInfo`, hyper-util `HttpInfo`, or a [`PeerAddr`] extension) |
//! | [`ClientIp`] | the client's IP behind **trusted** proxies only, walking `X-Forwarded-For`/`Forwarded` from the right |
//! | [`HeaderKey`] | a header's value (e.g. `x-api-key`) |
//! | [`MethodPath`] | method + path, or method + axum's route template (`MatchedPath`) |
//! | [`AuthorityKey`] | the target host (URI authority or `Host`) |
//! | [`KeyFn`] / [`key_fn`] | any closure |
//! | `(A, B, ..)` | a composite key of up to six extractors |
//!
//! # Spoofing
//!
//! Headers such as `X-Forwarded-For` are written by whoever sent the request. [`ClientIp`]
//! therefore only believes the entries appended by proxies you trust ([`TrustedProxies`]),
//! reading the list from the right; with no trusted proxies configured it is the peer IP. The
//! leftmost value — the one any client can set — is never taken on trust.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use http::Request;
//! use stormwall_core::key::{ClientIp, KeyExtractor, PeerAddr, TrustedProxies};
//!
//! // Our load balancer lives in 10.0.0.0/8.
//! let extractor = ClientIp::new(TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap());
//!
//! let mut req = Request::get("/")
//!     .header("x-forwarded-for", "6.6.6.6, 203.0.113.9")
//!     .body(())
//!     .unwrap();
//! req.extensions_mut().insert(PeerAddr("10.1.2.3:5000".parse::<SocketAddr>().unwrap()));
//!
//! // 203.0.113.9 is the first untrusted hop from the right: that is the client.
//! // "6.6.6.6" was written by the client itself and is ignored.
//! assert_eq!(extractor.extract(&req).unwrap().to_string(), "203.0.113.9");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use http::header::{FORWARDED, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use ipnet::IpNet;

/// Extracts the key a request counts against.
///
/// Implemented by the extractors of this module, by [`KeyFn`], by tuples of extractors
/// (composite keys) and by `Arc<K>`.
///
/// # Example
///
/// ```
/// use http::Request;
/// use stormwall_core::key::{KeyError, KeyExtractor};
///
/// /// Keys requests by the tenant id in the path: `/t/{tenant}/...`.
/// struct Tenant;
///
/// impl<B> KeyExtractor<Request<B>> for Tenant {
///     type Key = String;
///     fn extract(&self, req: &Request<B>) -> Result<String, KeyError> {
///         let mut parts = req.uri().path().split('/').skip(1);
///         match (parts.next(), parts.next()) {
///             (Some("t"), Some(tenant)) if !tenant.is_empty() => Ok(tenant.to_owned()),
///             _ => Err(KeyError::custom("no tenant in path")),
///         }
///     }
/// }
///
/// let req = Request::get("/t/acme/orders").body(()).unwrap();
/// assert_eq!(Tenant.extract(&req).unwrap(), "acme");
/// ```
pub trait KeyExtractor<Req> {
    /// The key type.
    type Key: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static;

    /// Extracts the key of `req`.
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError>;
}

/// Why a request could not be keyed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No peer address in the request extensions.
    #[error(
        "the request carries no peer address (serve it with axum's ConnectInfo, tonic, or insert a PeerAddr extension)"
    )]
    MissingPeerAddr,
    /// The header the extractor reads is absent.
    #[error("the request has no `{0}` header")]
    MissingHeader(HeaderName),
    /// The request has neither a URI authority nor a `Host` header.
    #[error("the request has no authority (no URI authority and no Host header)")]
    MissingAuthority,
    /// A custom extractor's reason.
    #[error("{0}")]
    Custom(Cow<'static, str>),
}

impl KeyError {
    /// A custom error with a message.
    pub fn custom(message: impl Into<Cow<'static, str>>) -> Self {
        Self::Custom(message.into())
    }
}

impl<Req, K: KeyExtractor<Req> + ?Sized> KeyExtractor<Req> for Arc<K> {
    type Key = K::Key;
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError> {
        (**self).extract(req)
    }
}

impl<Req, K: KeyExtractor<Req> + ?Sized> KeyExtractor<Req> for &K {
    type Key = K::Key;
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError> {
        (**self).extract(req)
    }
}

macro_rules! tuple_extractor {
    ($($name:ident),+) => {
        impl<Req, $($name: KeyExtractor<Req>),+> KeyExtractor<Req> for ($($name,)+) {
            type Key = ($($name::Key,)+);
            #[allow(non_snake_case)]
            fn extract(&self, req: &Req) -> Result<Self::Key, KeyError> {
                let ($($name,)+) = self;
                Ok(($($name.extract(req)?,)+))
            }
        }
    };
}
tuple_extractor!(A);
tuple_extractor!(A, B);
tuple_extractor!(A, B, C);
tuple_extractor!(A, B, C, D);
tuple_extractor!(A, B, C, D, E);
tuple_extractor!(A, B, C, D, E, F);

/// One key for every request: a global limit.
///
/// ```
/// use stormwall_core::key::{GlobalKey, KeyExtractor};
/// let req = http::Request::get("/").body(()).unwrap();
/// assert_eq!(GlobalKey.extract(&req), Ok(()));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GlobalKey;

impl<Req> KeyExtractor<Req> for GlobalKey {
    type Key = ();
    fn extract(&self, _req: &Req) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A closure used as a key extractor; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(pub F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn").finish_non_exhaustive()
    }
}

/// Uses a closure `Fn(&Req) -> Result<K, KeyError>` as a key extractor.
///
/// ```
/// use http::Request;
/// use stormwall_core::key::{key_fn, KeyError, KeyExtractor};
///
/// let by_query = key_fn(|req: &Request<()>| {
///     req.uri().query().map(str::to_owned).ok_or(KeyError::custom("no query"))
/// });
/// let req = Request::get("/search?q=rust").body(()).unwrap();
/// assert_eq!(by_query.extract(&req).unwrap(), "q=rust");
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

impl<Req, K, F> KeyExtractor<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Result<K, KeyError>,
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
{
    type Key = K;
    fn extract(&self, req: &Req) -> Result<K, KeyError> {
        (self.0)(req)
    }
}

/// A request extension carrying the TCP peer address.
///
/// axum (`ConnectInfo`), tonic (`TcpConnectInfo`) and hyper-util's client (`HttpInfo`) record
/// the peer in their own extension types, which [`peer_addr`] reads (with the matching crate
/// feature). A plain hyper server has nowhere to put it: insert a `PeerAddr` in the request
/// extensions from your accept loop instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The TCP peer address of a request, from whichever connection info its server recorded:
/// a [`PeerAddr`] or `SocketAddr` extension, axum's `ConnectInfo<SocketAddr>` (feature `axum`),
/// tonic's `TcpConnectInfo` (feature `tonic`) or hyper-util's `HttpInfo` (feature `hyper-util`).
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    if let Some(PeerAddr(addr)) = ext.get::<PeerAddr>() {
        return Some(*addr);
    }
    if let Some(addr) = ext.get::<SocketAddr>() {
        return Some(*addr);
    }
    #[cfg(feature = "axum")]
    if let Some(info) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0);
    }
    #[cfg(feature = "tonic")]
    if let Some(info) = ext.get::<tonic::transport::server::TcpConnectInfo>()
        && let Some(addr) = info.remote_addr()
    {
        return Some(addr);
    }
    #[cfg(feature = "hyper-util")]
    if let Some(info) = ext.get::<hyper_util::client::legacy::connect::HttpInfo>() {
        return Some(info.remote_addr());
    }
    None
}

/// Normalizes an IP for keying: IPv4-mapped IPv6 addresses become IPv4, and IPv6 addresses are
/// truncated to `v6_prefix` bits (a client usually owns a whole /64, so keying on the full
/// address lets it rotate through 2^64 buckets).
pub fn normalize_ip(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let prefix = u32::from(v6_prefix.min(128));
            let bits = u128::from(v6);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// Keys by the TCP peer's IP address (see [`peer_addr`] for where it is read from).
///
/// IPv6 peers are keyed by their /64 by default ([`PeerIp::ipv6_prefix`] changes it).
///
/// ```
/// use std::net::SocketAddr;
/// use stormwall_core::key::{KeyExtractor, PeerAddr, PeerIp};
///
/// let mut req = http::Request::get("/").body(()).unwrap();
/// req.extensions_mut().insert(PeerAddr("192.0.2.7:4000".parse::<SocketAddr>().unwrap()));
/// assert_eq!(PeerIp::new().extract(&req).unwrap().to_string(), "192.0.2.7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIp {
    v6_prefix: u8,
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl PeerIp {
    /// Keys by peer IP, IPv6 by /64.
    pub const fn new() -> Self {
        Self { v6_prefix: 64 }
    }

    /// Keys IPv6 peers by their first `bits` bits (128 = the full address).
    pub const fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = if bits > 128 { 128 } else { bits };
        self
    }
}

impl<B> KeyExtractor<Request<B>> for PeerIp {
    type Key = IpAddr;
    fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        peer_addr(req)
            .map(|addr| normalize_ip(addr.ip(), self.v6_prefix))
            .ok_or(KeyError::MissingPeerAddr)
    }
}

/// Which proxies' forwarding headers may be believed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TrustedProxies {
    /// Trust nobody: the client is the TCP peer. The default.
    #[default]
    None,
    /// Trust peers and hops whose address is in one of these networks.
    Cidrs(Vec<IpNet>),
    /// Exactly this many proxies stand in front of the service (the TCP peer is the nearest).
    Hops(usize),
}

/// A CIDR that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid trusted proxy network `{0}` (expected an address or a CIDR such as 10.0.0.0/8)")]
pub struct InvalidCidr(pub String);

impl TrustedProxies {
    /// Trusts the given networks (`"10.0.0.0/8"`, `"fd00::/8"`, or single addresses).
    pub fn cidrs<I, S>(networks: I) -> Result<Self, InvalidCidr>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nets = Vec::new();
        for net in networks {
            let net = net.as_ref().trim();
            let parsed = net
                .parse::<IpNet>()
                .or_else(|_| net.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| InvalidCidr(net.to_owned()))?;
            nets.push(parsed);
        }
        Ok(Self::Cidrs(nets))
    }

    /// Trusts exactly `n` proxy hops in front of the service.
    pub const fn hops(n: usize) -> Self {
        Self::Hops(n)
    }

    /// Trusts loopback and the private ranges (10/8, 172.16/12, 192.168/16, fc00::/7,
    /// 127/8, ::1). Suitable when the only way in is through your own load balancer.
    pub fn private_networks() -> Self {
        Self::cidrs([
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "::1/128",
            "fc00::/7",
        ])
        .unwrap_or_default()
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        match self {
            Self::None | Self::Hops(_) => false,
            Self::Cidrs(nets) => {
                let ip = normalize_ip(ip, 128);
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }
}

/// The header a trusted proxy writes the client address into.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
    /// A single-address header set by the nearest trusted proxy (e.g. `X-Real-IP`,
    /// `CF-Connecting-IP`). Only read when the peer itself is trusted.
    Single(HeaderName),
}

/// Keys by the client IP, believing forwarding headers only from trusted proxies.
///
/// The list of hops (`X-Forwarded-For` or `Forwarded`, all field lines in order) is walked
/// from the right, starting at the TCP peer:
///
/// - [`TrustedProxies::None`]: the key is the peer IP; headers are ignored.
/// - [`TrustedProxies::Cidrs`]: if the peer is untrusted, the key is the peer. Otherwise each
///   entry from the right is the address the previous hop saw; the first one not in a trusted
///   network is the client. An unparseable entry (`unknown`, an obfuscated identifier) stops
///   the walk and the key is the last trusted hop — so garbage cannot mint new buckets.
/// - [`TrustedProxies::Hops`]`(n)`: the client is the `n`-th entry from the right; with fewer
///   entries than hops (a request that bypassed the proxies) the key is the peer.
///
/// IPv6 clients are keyed by their /64 by default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientIp {
    trusted: TrustedProxies,
    header: ForwardedHeader,
    v6_prefix: u8,
}

impl ClientIp {
    /// A client-IP extractor trusting `trusted`, reading `X-Forwarded-For`.
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            header: ForwardedHeader::XForwardedFor,
            v6_prefix: 64,
        }
    }

    /// Reads `header` instead of `X-Forwarded-For`.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (default 64; 128 = the full address).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits.min(128);
        self
    }

    /// Resolves the client IP from the peer address and the request headers, without the
    /// IPv6 prefix normalization.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = normalize_ip(peer, 128);
        match &self.trusted {
            TrustedProxies::None => peer,
            TrustedProxies::Hops(0) => peer,
            TrustedProxies::Hops(n) => {
                let hops = self.hops(headers);
                if hops.len() < *n {
                    return peer;
                }
                hops[hops.len() - n].unwrap_or(peer)
            }
            TrustedProxies::Cidrs(_) => {
                if !self.trusted.trusts(peer) {
                    return peer;
                }
                let mut client = peer;
                for hop in self.hops(headers).into_iter().rev() {
                    let Some(ip) = hop else {
                        return client;
                    };
                    client = ip;
                    if !self.trusted.trusts(ip) {
                        return ip;
                    }
                }
                client
            }
        }
    }

    fn hops(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        match &self.header {
            ForwardedHeader::XForwardedFor => headers
                .get_all("x-forwarded-for")
                .iter()
                .flat_map(|v| {
                    let s = v.to_str().unwrap_or("");
                    s.split(',').map(parse_node).collect::<Vec<_>>()
                })
                .collect(),
            ForwardedHeader::Forwarded => headers
                .get_all(FORWARDED)
                .iter()
                .flat_map(|v| forwarded_for(v.to_str().unwrap_or("")))
                .collect(),
            ForwardedHeader::Single(name) => {
                let mut all = headers.get_all(name).iter();
                match (all.next(), all.next()) {
                    // Exactly one value: the nearest proxy set it.
                    (Some(v), None) => vec![parse_node(v.to_str().unwrap_or(""))],
                    // Repeated: the client sent one too; trust nothing from it.
                    (Some(_), Some(_)) => vec![None],
                    _ => Vec::new(),
                }
            }
        }
    }
}

impl<B> KeyExtractor<Request<B>> for ClientIp {
    type Key = IpAddr;
    fn extract(&self, req: &Request<B>) -> Result<IpAddr, KeyError> {
        let peer = peer_addr(req).ok_or(KeyError::MissingPeerAddr)?;
        Ok(normalize_ip(
            self.resolve(peer.ip(), req.headers()),
            self.v6_prefix,
        ))
    }
}

/// Parses one node of `X-Forwarded-For` or a `for=` value of `Forwarded`: an IP, optionally
/// with a port, IPv6 optionally in brackets. Anything else (`unknown`, `_hidden`) is `None`.
pub fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"').trim();
    if node.is_empty() || node.len() > 64 {
        return None;
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let inner = node.strip_prefix('[')?;
    let end = inner.find(']')?;
    inner[..end].parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// The `for=` nodes of one `Forwarded` field line (RFC 7239), in order. Elements without a
/// `for` parameter yield `None` (they cannot be attributed). Quoted strings may contain `,`
/// and `;`.
fn forwarded_for(line: &str) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for element in split_quoted(line, ',') {
        let mut found = None;
        let mut well_formed = true;
        for pair in split_quoted(element, ';') {
            if pair.trim().is_empty() {
                continue;
            }
            let Some((k, v)) = pair.split_once('=') else {
                well_formed = false;
                continue;
            };
            if !is_forwarded_value(v) {
                well_formed = false;
            }
            if k.trim().eq_ignore_ascii_case("for") {
                found = Some(parse_node(v));
            }
        }
        if !element.trim().is_empty() {
            // A malformed element (an unclosed quote, or a quoted string followed by more
            // text) may have swallowed the entries a proxy appended after it: it cannot be
            // attributed, so the walk stops at the last trusted hop.
            out.push(if well_formed { found.flatten() } else { None });
        }
    }
    out
}

/// Whether `value` is a token or one complete quoted-string (RFC 7239 §4), surrounding
/// whitespace allowed.
fn is_forwarded_value(value: &str) -> bool {
    let value = value.trim();
    let Some(inner) = value.strip_prefix('"') else {
        return !value.contains('"');
    };
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => return i + 1 == inner.len(),
            _ => {}
        }
    }
    false
}

fn split_quoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Keys by the value of a request header (e.g. `x-api-key`). A missing header is a
/// [`KeyError::MissingHeader`]; repeated headers are keyed by their first value.
///
/// Header values are client-controlled: key by a header only when the header identifies the
/// client by a secret (an API key) or your own proxy sets it.
///
/// ```
/// use stormwall_core::key::{HeaderKey, KeyExtractor};
/// let req = http::Request::get("/").header("x-api-key", "abc").body(()).unwrap();
/// assert_eq!(HeaderKey::new("x-api-key").extract(&req).unwrap(), "abc");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by header `name`.
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name; use [`HeaderKey::from_name`] with a parsed
    /// [`HeaderName`] to avoid that.
    pub fn new(name: &'static str) -> Self {
        Self {
            name: HeaderName::from_static(name),
        }
    }

    /// Keys by header `name`.
    pub fn from_name(name: HeaderName) -> Self {
        Self { name }
    }
}

impl<B> KeyExtractor<Request<B>> for HeaderKey {
    type Key = HeaderValue;
    fn extract(&self, req: &Request<B>) -> Result<HeaderValue, KeyError> {
        req.headers()
            .get(&self.name)
            .cloned()
            .ok_or_else(|| KeyError::MissingHeader(self.name.clone()))
    }
}

/// The key produced by [`MethodPath`]: a method and a path or route template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteKey {
    method: Method,
    path: Arc<str>,
}

impl RouteKey {
    /// A route key.
    pub fn new(method: Method, path: impl Into<Arc<str>>) -> Self {
        Self {
            method,
            path: path.into(),
        }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path, or the route template (`/users/{id}`) when axum matched one.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Keys by method and path (query excluded). With the `axum` feature and a request routed by
/// axum, the route template (`MatchedPath`, e.g. `/users/{id}`) is used instead of the
/// concrete path, so that one limit covers all users of an endpoint.
///
/// ```
/// use stormwall_core::key::{KeyExtractor, MethodPath};
/// let req = http::Request::post("/orders?x=1").body(()).unwrap();
/// assert_eq!(MethodPath::new().extract(&req).unwrap().to_string(), "POST /orders");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodPath {
    use_template: bool,
}

impl Default for MethodPath {
    fn default() -> Self {
        Self::new()
    }
}

impl MethodPath {
    /// Method + route template when available, else method + path.
    pub const fn new() -> Self {
        Self { use_template: true }
    }

    /// Always the concrete path, even when a route template is known.
    pub const fn concrete_path(mut self) -> Self {
        self.use_template = false;
        self
    }
}

impl<B> KeyExtractor<Request<B>> for MethodPath {
    type Key = RouteKey;
    fn extract(&self, req: &Request<B>) -> Result<RouteKey, KeyError> {
        #[cfg(feature = "axum")]
        if self.use_template
            && let Some(matched) = req.extensions().get::<axum::extract::MatchedPath>()
        {
            return Ok(RouteKey::new(req.method().clone(), matched.as_str()));
        }
        let _ = self.use_template;
        Ok(RouteKey::new(req.method().clone(), req.uri().path()))
    }
}

/// Keys by the request's target host: the URI authority (outbound requests) or the `Host`
/// header (inbound), lowercased, port included.
///
/// ```
/// use stormwall_core::key::{AuthorityKey, KeyExtractor};
/// let req = http::Request::get("https://API.example.com/v1").body(()).unwrap();
/// assert_eq!(&*AuthorityKey.extract(&req).unwrap(), "api.example.com");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthorityKey;

impl<B> KeyExtractor<Request<B>> for AuthorityKey {
    type Key = Arc<str>;
    fn extract(&self, req: &Request<B>) -> Result<Arc<str>, KeyError> {
        if let Some(authority) = req.uri().authority() {
            return Ok(authority.as_str().to_ascii_lowercase().into());
        }
        req.headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty())
            .map(|h| h.to_ascii_lowercase().into())
            .ok_or(KeyError::MissingAuthority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req_from(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut()
            .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
        req
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn global_key_is_unit() {
        let req = Request::get("/a").body(()).unwrap();
        assert_eq!(GlobalKey.extract(&req), Ok(()));
    }

    #[test]
    fn peer_ip_reads_peer_addr_and_socket_addr() {
        let req = req_from("192.0.2.1:1000", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(PeerIp::new().extract(&req).unwrap(), ip("192.0.2.1"));

        let mut req = Request::get("/").body(()).unwrap();
        assert_eq!(PeerIp::new().extract(&req), Err(KeyError::MissingPeerAddr));
        req.extensions_mut()
            .insert("10.0.0.9:5".parse::<SocketAddr>().unwrap());
        assert_eq!(PeerIp::new().extract(&req).unwrap(), ip("10.0.0.9"));
    }

    #[test]
    fn peer_ip_masks_ipv6_and_unmaps_v4() {
        let req = req_from("[2001:db8:1:2:3:4:5:6]:80", &[]);
        assert_eq!(PeerIp::new().extract(&req).unwrap(), ip("2001:db8:1:2::"));
        assert_eq!(
            PeerIp::new().ipv6_prefix(128).extract(&req).unwrap(),
            ip("2001:db8:1:2:3:4:5:6")
        );
        let req = req_from("[::ffff:192.0.2.5]:80", &[]);
        assert_eq!(PeerIp::new().extract(&req).unwrap(), ip("192.0.2.5"));
    }

    #[test]
    fn spoofed_xff_from_untrusted_peer_is_ignored() {
        let req = req_from("198.51.100.7:1234", &[("x-forwarded-for", "1.2.3.4")]);
        for trusted in [
            TrustedProxies::None,
            TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap(),
        ] {
            let key = ClientIp::new(trusted).extract(&req).unwrap();
            assert_eq!(key, ip("198.51.100.7"));
        }
    }

    #[test]
    fn trusted_cidrs_walk_from_the_right() {
        let x = ClientIp::new(TrustedProxies::cidrs(["10.0.0.0/8", "192.168.0.0/16"]).unwrap());
        // client-set garbage, real client, then two trusted proxies.
        let req = req_from(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 192.168.1.1")],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("203.0.113.5"));
        // Multiple field lines are concatenated in order.
        let req = req_from(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.5, 192.168.1.1"),
            ],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("203.0.113.5"));
        // All trusted: leftmost is the client (nothing untrusted touched the list).
        let req = req_from("10.0.0.1:1", &[("x-forwarded-for", "10.9.9.9")]);
        assert_eq!(x.extract(&req).unwrap(), ip("10.9.9.9"));
        // No header: the peer.
        let req = req_from("10.0.0.1:1", &[]);
        assert_eq!(x.extract(&req).unwrap(), ip("10.0.0.1"));
        // Garbage right of the client stops the walk at the last trusted hop.
        let req = req_from("10.0.0.1:1", &[("x-forwarded-for", "1.2.3.4, unknown")]);
        assert_eq!(x.extract(&req).unwrap(), ip("10.0.0.1"));
        // Ports and brackets.
        let req = req_from(
            "10.0.0.1:1",
            &[("x-forwarded-for", "[2001:db8::1]:443, 203.0.113.5:999")],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("203.0.113.5"));
    }

    #[test]
    fn trusted_hops_take_nth_from_right() {
        let x = ClientIp::new(TrustedProxies::hops(2));
        let req = req_from(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.0.0.2")],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("203.0.113.5"));
        // Fewer entries than hops: a request that bypassed the proxies → the peer.
        let req = req_from("198.51.100.1:1", &[]);
        assert_eq!(x.extract(&req).unwrap(), ip("198.51.100.1"));
        let x1 = ClientIp::new(TrustedProxies::hops(1));
        let req = req_from("10.0.0.1:1", &[("x-forwarded-for", "6.6.6.6, 203.0.113.5")]);
        assert_eq!(x1.extract(&req).unwrap(), ip("203.0.113.5"));
    }

    #[test]
    fn forwarded_header_is_parsed_per_rfc7239() {
        let x = ClientIp::new(TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap())
            .header(ForwardedHeader::Forwarded)
            .ipv6_prefix(128);
        let req = req_from(
            "10.0.0.1:1",
            &[(
                "forwarded",
                r#"for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=https, For=10.1.1.1;by=10.0.0.1"#,
            )],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("2001:db8:cafe::17"));
        let req = req_from(
            "10.0.0.1:1",
            &[("forwarded", r#"for="_gazonk", for=10.1.1.1"#)],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("10.1.1.1"));
        // An attacker's unclosed quote must not swallow the entry a trusted proxy appended on
        // the same line: the element is unattributable, the key is the last trusted hop.
        let req = req_from(
            "10.0.0.1:1",
            &[("forwarded", r#"for=1.2.3.4;x=", for="[2001:db8::1]:443""#)],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("10.0.0.1"));
        let req = req_from("10.0.0.1:1", &[("forwarded", r#"for="1.2.3.4"#)]);
        assert_eq!(x.extract(&req).unwrap(), ip("10.0.0.1"));
        // Quoted separators do not split elements.
        let req = req_from(
            "10.0.0.1:1",
            &[("forwarded", r#"for=203.0.113.1;host="a,b;c""#)],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("203.0.113.1"));
    }

    #[test]
    fn single_header_needs_trusted_peer_and_one_value() {
        let x = ClientIp::new(TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap()).header(
            ForwardedHeader::Single(HeaderName::from_static("x-real-ip")),
        );
        let req = req_from("10.0.0.1:1", &[("x-real-ip", "203.0.113.8")]);
        assert_eq!(x.extract(&req).unwrap(), ip("203.0.113.8"));
        let req = req_from("198.51.100.2:1", &[("x-real-ip", "203.0.113.8")]);
        assert_eq!(x.extract(&req).unwrap(), ip("198.51.100.2"));
        let req = req_from(
            "10.0.0.1:1",
            &[("x-real-ip", "1.1.1.1"), ("x-real-ip", "203.0.113.8")],
        );
        assert_eq!(x.extract(&req).unwrap(), ip("10.0.0.1"));
    }

    #[test]
    fn invalid_cidr_is_a_typed_error() {
        assert_eq!(
            TrustedProxies::cidrs(["10.0.0.0/33"]),
            Err(InvalidCidr("10.0.0.0/33".into()))
        );
        assert!(TrustedProxies::cidrs(["10.1.2.3"]).is_ok());
    }

    #[test]
    fn header_key() {
        let req = req_from("1.1.1.1:1", &[("x-api-key", "k1")]);
        assert_eq!(HeaderKey::new("x-api-key").extract(&req).unwrap(), "k1");
        assert_eq!(
            HeaderKey::new("x-other").extract(&req),
            Err(KeyError::MissingHeader(HeaderName::from_static("x-other")))
        );
    }

    #[test]
    fn method_path_and_authority() {
        let req = Request::get("http://Example.COM:8080/a/b?c=d")
            .body(())
            .unwrap();
        let key = MethodPath::new().extract(&req).unwrap();
        assert_eq!((key.method(), key.path()), (&Method::GET, "/a/b"));
        assert_eq!(
            AuthorityKey.extract(&req).unwrap().as_ref(),
            "example.com:8080"
        );
        let req = Request::get("/x")
            .header("host", "Svc.Local")
            .body(())
            .unwrap();
        assert_eq!(AuthorityKey.extract(&req).unwrap().as_ref(), "svc.local");
        let req = Request::get("/x").body(()).unwrap();
        assert_eq!(AuthorityKey.extract(&req), Err(KeyError::MissingAuthority));
    }

    #[test]
    fn closures_tuples_and_arcs() {
        let req = req_from("192.0.2.1:1", &[("x-api-key", "k")]);
        let x = (
            PeerIp::new(),
            HeaderKey::new("x-api-key"),
            key_fn(|r: &Request<()>| Ok::<_, KeyError>(r.uri().path().len())),
        );
        let (a, b, c) = x.extract(&req).unwrap();
        assert_eq!((a, b.as_bytes(), c), (ip("192.0.2.1"), &b"k"[..], 1));
        // A failing member fails the tuple.
        let x = (PeerIp::new(), HeaderKey::new("x-missing"));
        assert!(matches!(x.extract(&req), Err(KeyError::MissingHeader(_))));
        let shared = Arc::new(GlobalKey);
        assert_eq!(shared.extract(&req), Ok(()));
    }

    #[test]
    fn parse_node_rejects_garbage() {
        for bad in [
            "",
            "unknown",
            "_hidden",
            "1.2.3",
            "[::1",
            "x".repeat(100).as_str(),
        ] {
            assert_eq!(parse_node(bad), None, "{bad}");
        }
        assert_eq!(parse_node(" \"[::1]:80\" "), Some(ip("::1")));
    }

    proptest::proptest! {
        #[test]
        fn client_ip_never_panics_and_untrusted_peer_wins(xff in ".{0,200}", fwd in ".{0,200}") {
            let mut req = Request::get("/").body(()).unwrap();
            if let Ok(v) = HeaderValue::from_str(&xff) { req.headers_mut().insert("x-forwarded-for", v); }
            if let Ok(v) = HeaderValue::from_str(&fwd) { req.headers_mut().insert("forwarded", v); }
            req.extensions_mut().insert(PeerAddr("198.51.100.9:1".parse().unwrap()));
            for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
                let x = ClientIp::new(TrustedProxies::cidrs(["10.0.0.0/8"]).unwrap()).header(header.clone());
                proptest::prop_assert_eq!(x.extract(&req).unwrap(), ip("198.51.100.9"));
                let _ = ClientIp::new(TrustedProxies::hops(3)).header(header).extract(&req);
            }
        }
    }
}
