//! The proxy's configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Uri};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Deserializer};
use stormwall::config::{InboundConfig, LimitMode, OutboundConfig, parse_duration};
use stormwall::ratelimit::Limit;
use stormwall::redis::{OnFailure, RedisStore};
use stormwall::{InboundStack, OutboundStack};

/// `proxy.toml`: where to listen, where to forward, and the stacks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyConfig {
    /// The address the proxy listens on.
    pub(crate) listen: SocketAddr,
    /// The upstream base URL (`http://` or `https://host:port`, optionally with a path prefix).
    #[serde(deserialize_with = "de_upstream")]
    pub(crate) upstream: Uri,
    /// The HTTP version spoken to the upstream (default `http1`); kept with its place in the
    /// file for the error naming its line.
    pub(crate) upstream_version: Option<toml::Spanned<UpstreamVersion>>,
    /// The admin address (`/health`, `/metrics`); none when absent.
    pub(crate) admin: Option<SocketAddr>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT (default 10 s).
    #[serde(default, deserialize_with = "de_duration")]
    pub(crate) shutdown_timeout: Option<Duration>,
    /// `[tls]`: serve HTTPS on `listen` with this certificate (plain HTTP when absent).
    pub(crate) tls: Option<ListenTlsConfig>,
    /// `[upstream_tls]`: trust settings for an `https://` upstream.
    pub(crate) upstream_tls: Option<UpstreamTlsConfig>,
    /// `[redis]`: keep the inbound rate limits in Redis, shared by every proxy using it.
    pub(crate) redis: Option<RedisConfig>,
    /// `[inbound]`: the inbound stack (no stack when absent).
    pub(crate) inbound: Option<InboundConfig>,
    /// `[outbound]`: the outbound stack around the upstream client (none when absent).
    pub(crate) outbound: Option<OutboundConfig>,
    /// `[[route]]`: per-route overrides by path prefix and method.
    #[serde(default)]
    pub(crate) route: Vec<RouteConfig>,
}

/// `upstream_version`: the HTTP version the proxy speaks to the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UpstreamVersion {
    /// HTTP/1.1 only (the default); an `https://` upstream is offered only `http/1.1` by ALPN.
    #[default]
    Http1,
    /// `https://` upstreams only: offer `h2` and `http/1.1` by ALPN and speak what the
    /// upstream picks (HTTP/1.1 when it picks nothing).
    Auto,
    /// HTTP/2 only: `h2` by ALPN on `https://`, prior knowledge (h2c) on `http://`.
    Http2,
}

/// `[tls]`: the listener's certificate chain and private key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenTlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub(crate) cert_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub(crate) key_file: PathBuf,
}

/// `[upstream_tls]`: which CAs an `https://` upstream's certificate may chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamTlsConfig {
    /// A PEM bundle of extra trusted CA certificates.
    pub(crate) ca_file: Option<PathBuf>,
    /// Trust the Mozilla root program (webpki-roots); default true.
    pub(crate) system_roots: Option<bool>,
}

/// What the shared limits do while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RedisFailure {
    /// Admit every request (the default: an outage of Redis is not an outage of the API).
    #[default]
    Open,
    /// Reject every request with 429.
    Closed,
    /// Enforce the quota divided by `instances` in each proxy.
    Local,
}

/// `[redis]`: shared inbound limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedisConfig {
    /// `redis://[user:password@]host:port/[db]`.
    pub(crate) url: String,
    /// Policy while Redis is unreachable (default `open`).
    #[serde(default)]
    pub(crate) on_failure: RedisFailure,
    /// With `on_failure = "local"`: how many proxies share the quota (default 1).
    pub(crate) instances: Option<u32>,
    /// Per-call timeout (default 50ms).
    #[serde(default, deserialize_with = "de_duration")]
    pub(crate) timeout: Option<Duration>,
    /// Key prefix in Redis (default `stormwall-proxy`).
    pub(crate) prefix: Option<String>,
}

impl RedisConfig {
    /// The Redis server's `host:port`, for the health check (`None` for `unix:` URLs).
    pub(crate) fn socket_address(&self) -> Option<String> {
        let uri: Uri = self.url.parse().ok()?;
        let authority = uri.authority()?;
        Some(format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(6379)
        ))
    }

    /// The store for one route's limits (`scope` keeps routes' keys apart).
    pub(crate) fn connect(&self, scope: &str) -> Result<RedisStore, String> {
        let on_failure = match self.on_failure {
            RedisFailure::Open => OnFailure::Open,
            RedisFailure::Closed => OnFailure::Closed,
            RedisFailure::Local => OnFailure::Local {
                instances: self.instances.unwrap_or(1).max(1),
            },
        };
        let prefix = self.prefix.as_deref().unwrap_or("stormwall-proxy");
        RedisStore::builder()
            .timeout(self.timeout.unwrap_or(Duration::from_millis(50)))
            .on_failure(on_failure)
            .prefix(format!("{prefix}:{scope}"))
            .connect(&self.url)
            .map_err(|e| format!("redis.url: {e}"))
    }
}

/// `[[route]]`: requests whose path starts with `prefix` (on a segment boundary) and whose
/// method is in `methods` get their own stacks: the global `[inbound]`/`[outbound]` sections
/// with this route's sections merged over them, field by field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteConfig {
    /// The route's name (breaker name, `/health`); default: the prefix.
    pub(crate) name: Option<String>,
    /// The path prefix, starting with `/`.
    pub(crate) prefix: String,
    /// The methods this route applies to (all when absent).
    pub(crate) methods: Option<Vec<String>>,
    /// `[route.inbound]`, as written: merged over `[inbound]` in [`ProxyConfig::parse`].
    #[serde(rename = "inbound")]
    pub(crate) inbound_raw: Option<toml::Spanned<toml::Table>>,
    /// `[route.outbound]`, as written: merged over `[outbound]`.
    #[serde(rename = "outbound")]
    pub(crate) outbound_raw: Option<toml::Spanned<toml::Table>>,
    /// The route's inbound section: `[inbound]` with `[route.inbound]` merged over it.
    #[serde(skip)]
    pub(crate) inbound: Option<InboundConfig>,
    /// The route's outbound section: `[outbound]` with `[route.outbound]` merged over it.
    #[serde(skip)]
    pub(crate) outbound: Option<OutboundConfig>,
}

/// The default for `shutdown_timeout`.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// One set of stacks: the global one or a route's.
#[derive(Debug)]
pub(crate) struct Stacks {
    /// The name (`*` for the global stacks, else the route's name).
    pub(crate) name: String,
    /// The inbound stack, its rate limit removed when `shared_limit` replaces it.
    pub(crate) inbound: Option<InboundStack>,
    /// The outbound stack.
    pub(crate) outbound: Option<OutboundStack>,
    /// The inbound limits to enforce through Redis (when `[redis]` is set), and whether
    /// they wait rather than reject.
    pub(crate) shared_limits: Option<(Vec<Limit>, Option<Duration>)>,
}

/// A route after validation: what it matches and its stacks.
#[derive(Debug)]
pub(crate) struct Route {
    /// The path prefix, without a trailing `/` (empty for `/`).
    pub(crate) prefix: String,
    /// The methods (all when `None`).
    pub(crate) methods: Option<Vec<Method>>,
    /// The route's stacks.
    pub(crate) stacks: Stacks,
}

/// `prefix` (no trailing `/`) matches `path` on a segment boundary.
pub(crate) fn path_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// The TLS material, loaded and checked.
#[derive(Debug)]
pub(crate) struct Tls {
    /// The listener's server config (HTTPS on `listen`).
    pub(crate) listen: Option<Arc<rustls::ServerConfig>>,
    /// The client config for an `https://` upstream.
    pub(crate) upstream: Option<rustls::ClientConfig>,
}

/// A parsed configuration with its stacks built.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) config: ProxyConfig,
    /// The stacks for requests no route matches.
    pub(crate) global: Stacks,
    /// The routes, in file order (the longest matching prefix wins).
    pub(crate) routes: Vec<Route>,
    pub(crate) tls: Tls,
}

impl ProxyConfig {
    /// Parses the TOML text; errors name the field and the line. Each route's sections are
    /// merged over the global ones here (the merged sections replace the route's).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut config: Self = toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())?;
        if let Some(version) = &config.upstream_version
            && *version.get_ref() == UpstreamVersion::Auto
            && config.upstream.scheme_str() != Some("https")
        {
            let line = text[..version.span().start.min(text.len())]
                .matches('\n')
                .count()
                + 1;
            return Err(format!(
                "upstream_version (line {line}): `auto` negotiates the version by TLS ALPN and \
                 needs an https:// upstream; use `http2` for HTTP/2 with prior knowledge (h2c) \
                 or `http1`"
            ));
        }
        if config.route.is_empty() {
            return Ok(config);
        }
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let global_in = table.get("inbound").cloned();
        let global_out = table.get("outbound").cloned();
        for (i, route) in config.route.iter_mut().enumerate() {
            let path = format!("route[{i}]");
            if !route.prefix.starts_with('/') {
                return Err(format!(
                    "{path}.prefix: must start with `/`: `{}`",
                    route.prefix
                ));
            }
            route.inbound = merged(
                &global_in,
                route.inbound_raw.as_ref(),
                text,
                &format!("{path}.inbound"),
            )?;
            route.outbound = merged(
                &global_out,
                route.outbound_raw.as_ref(),
                text,
                &format!("{path}.outbound"),
            )?;
            if let Some(methods) = &route.methods {
                for m in methods {
                    Method::from_bytes(m.as_bytes())
                        .map_err(|_| format!("{path}.methods: invalid method `{m}`"))?;
                }
            }
        }
        Ok(config)
    }

    /// Builds the stacks (their own validation: quotas, rates, header names...) and loads
    /// the TLS material.
    pub(crate) fn build(self) -> Result<Loaded, String> {
        let global = self.stacks("*", self.inbound.as_ref(), self.outbound.as_ref(), "")?;
        let mut routes = Vec::new();
        for (i, route) in self.route.iter().enumerate() {
            let name = route.name.clone().unwrap_or_else(|| route.prefix.clone());
            let mut outbound = route.outbound.clone();
            if let Some(out) = &mut outbound
                && out.name.is_none()
            {
                out.name = Some(name.clone());
            }
            let stacks = self.stacks(
                &name,
                route.inbound.as_ref(),
                outbound.as_ref(),
                &format!("route[{i}]."),
            )?;
            routes.push(Route {
                prefix: route.prefix.trim_end_matches('/').to_owned(),
                methods: route.methods.as_ref().map(|ms| {
                    ms.iter()
                        .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                        .collect()
                }),
                stacks,
            });
        }
        if let Some(redis) = &self.redis {
            let ok = redis.url.starts_with("redis://")
                || redis.url.starts_with("rediss://")
                || redis.url.starts_with("unix:")
                || redis.url.starts_with("redis+unix:");
            if !ok {
                return Err(format!(
                    "redis.url: `{}` must start with redis://, rediss:// or unix:",
                    redis.url
                ));
            }
        }
        let tls = Tls {
            listen: self.tls.as_ref().map(load_server_tls).transpose()?,
            upstream: if self.upstream.scheme_str() == Some("https") {
                Some(load_client_tls(self.upstream_tls.as_ref())?)
            } else {
                None
            },
        };
        Ok(Loaded {
            global,
            routes,
            tls,
            config: self,
        })
    }

    fn stacks(
        &self,
        name: &str,
        inbound: Option<&InboundConfig>,
        outbound: Option<&OutboundConfig>,
        path: &str,
    ) -> Result<Stacks, String> {
        let inbound_config = inbound;
        let mut inbound = inbound
            .map(InboundConfig::build)
            .transpose()
            .map_err(|e| format!("{path}{e}"))?;
        let outbound = outbound
            .map(OutboundConfig::build)
            .transpose()
            .map_err(|e| format!("{path}{e}"))?;
        let mut shared_limits = None;
        if self.redis.is_some()
            && let Some(stack) = inbound.take()
        {
            let wait = inbound_config
                .and_then(|i| i.rate_limit.as_ref())
                .filter(|r| r.mode == Some(LimitMode::Wait))
                .map(|r| r.max_wait.unwrap_or(Duration::from_secs(30)));
            if let Some(layer) = stack.rate_limit_layer() {
                shared_limits = Some((layer.limits().to_vec(), wait));
            }
            inbound = Some(stack.without_rate_limit());
        }
        Ok(Stacks {
            name: name.to_owned(),
            inbound,
            outbound,
            shared_limits,
        })
    }

    /// The configured upstream HTTP version or the default (`http1`).
    pub(crate) fn upstream_version(&self) -> UpstreamVersion {
        self.upstream_version
            .as_ref()
            .map_or(UpstreamVersion::default(), |v| *v.get_ref())
    }

    /// The configured shutdown timeout or the default.
    pub(crate) fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT)
    }
}

/// `route` merged over `global` (tables merged key by key, recursively), as a section.
/// Errors name the section and the line where the route's section starts.
fn merged<T: serde::de::DeserializeOwned>(
    global: &Option<toml::Value>,
    route: Option<&toml::Spanned<toml::Table>>,
    text: &str,
    path: &str,
) -> Result<Option<T>, String> {
    let value = match (global, route) {
        (None, None) => return Ok(None),
        (Some(g), None) => g.clone(),
        (global, Some(r)) => {
            let mut base = global
                .clone()
                .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
            merge_into(&mut base, &toml::Value::Table(r.get_ref().clone()));
            base
        }
    };
    T::deserialize(value).map(Some).map_err(|e| {
        let at = route.map_or(String::new(), |r| {
            let start = r.span().start.min(text.len());
            format!(
                " (section at line {})",
                text[..start].matches('\n').count() + 1
            )
        });
        format!("{path}{at}: {}", e.to_string().trim())
    })
}

fn merge_into(base: &mut toml::Value, over: &toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge_into(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_server_tls(tls: &ListenTlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls.cert_file: {}: {e}", tls.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls.cert_file: {}: no certificate found",
            tls.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| format!("tls.key_file: {}: {e}", tls.key_file.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.key_file: does not match tls.cert_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_client_tls(tls: Option<&UpstreamTlsConfig>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if tls.and_then(|t| t.system_roots).unwrap_or(true) {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = tls.and_then(|t| t.ca_file.as_ref()) {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("upstream_tls.ca_file: {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "upstream_tls.ca_file: {}: no certificate found",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("upstream_tls.ca_file: {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "upstream_tls: no trusted roots (system_roots = false and no ca_file)".to_owned(),
        );
    }
    Ok(rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream_tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Parses and checks an upstream URL: `http://` or `https://` with a host, no query.
pub(crate) fn parse_upstream(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid upstream URL `{text}`: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "upstream `{text}` must start with http:// or https://"
            ));
        }
    }
    if uri.authority().is_none() {
        return Err(format!("upstream `{text}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("upstream `{text}` must not have a query"));
    }
    Ok(uri)
}

fn de_upstream<'de, D: Deserializer<'de>>(d: D) -> Result<Uri, D::Error> {
    let text = String::deserialize(d)?;
    parse_upstream(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listen = \"127.0.0.1:8080\"\nupstream = \"http://127.0.0.1:9000\"\n";

    #[test]
    fn minimal_config_parses_with_defaults() {
        let config = ProxyConfig::parse(MINIMAL).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            config.upstream.authority().unwrap().as_str(),
            "127.0.0.1:9000"
        );
        assert_eq!(config.shutdown_timeout(), DEFAULT_SHUTDOWN_TIMEOUT);
        let loaded = config.build().unwrap();
        assert!(loaded.global.inbound.is_none() && loaded.global.outbound.is_none());
        assert!(loaded.routes.is_empty() && loaded.tls.upstream.is_none());
    }

    #[test]
    fn full_config_builds_both_stacks() {
        let text = format!(
            "{MINIMAL}admin = \"127.0.0.1:9090\"\nshutdown_timeout = \"3s\"\n\
             [inbound]\nstandard = false\n[inbound.rate_limit]\nper_second = 5\nburst = 10\n\
             [outbound]\npreset = \"fast_fail\"\nattempt_timeout = \"2s\"\n"
        );
        let loaded = ProxyConfig::parse(&text).unwrap().build().unwrap();
        assert_eq!(loaded.config.shutdown_timeout(), Duration::from_secs(3));
        assert!(loaded.global.inbound.unwrap().rate_limit_layer().is_some());
        assert!(loaded.global.outbound.is_some());
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let err = ProxyConfig::parse(&format!("{MINIMAL}listn = \"x\"\n")).unwrap_err();
        assert!(err.contains("listn"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn nested_unknown_field_is_named() {
        let err = ProxyConfig::parse(&format!("{MINIMAL}[inbound.rate_limit]\nper_secnd = 1\n"))
            .unwrap_err();
        assert!(err.contains("per_secnd"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn bad_upstream_and_duration_are_rejected() {
        let err =
            ProxyConfig::parse("listen = \"127.0.0.1:1\"\nupstream = \"ftp://x\"\n").unwrap_err();
        assert!(err.contains("upstream") && err.contains("line 2"), "{err}");
        let err = ProxyConfig::parse(&format!("{MINIMAL}shutdown_timeout = \"10 parsecs\"\n"))
            .unwrap_err();
        assert!(
            err.contains("shutdown_timeout") || err.contains("parsecs"),
            "{err}"
        );
        assert!(parse_upstream("https://example.com").is_ok());
        assert!(parse_upstream("ws://example.com").is_err());
        assert!(parse_upstream("http://example.com/api").is_ok());
    }

    #[test]
    fn upstream_version_is_parsed_and_checked() {
        assert_eq!(
            ProxyConfig::parse(MINIMAL).unwrap().upstream_version(),
            UpstreamVersion::Http1
        );
        let config =
            ProxyConfig::parse(&format!("{MINIMAL}upstream_version = \"http2\"\n")).unwrap();
        assert_eq!(config.upstream_version(), UpstreamVersion::Http2);
        let text = "listen = \"127.0.0.1:8080\"\nupstream = \"https://127.0.0.1:9000\"\n\
                    upstream_version = \"auto\"\n";
        let config = ProxyConfig::parse(text).unwrap();
        assert_eq!(config.upstream_version(), UpstreamVersion::Auto);
        let err = ProxyConfig::parse(&format!("{MINIMAL}upstream_version = \"h3\"\n")).unwrap_err();
        assert!(
            err.contains("upstream_version") && err.contains("line 3"),
            "{err}"
        );
        let err =
            ProxyConfig::parse(&format!("{MINIMAL}upstream_version = \"auto\"\n")).unwrap_err();
        assert!(err.contains("upstream_version (line 3)"), "{err}");
    }

    #[test]
    fn invalid_stack_values_fail_at_build() {
        let text = format!("{MINIMAL}[inbound.rate_limit]\nper_second = -1\n");
        let err = ProxyConfig::parse(&text).unwrap().build().unwrap_err();
        assert!(err.contains("inbound.rate_limit"), "{err}");
    }
}
