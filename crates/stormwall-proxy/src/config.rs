//! The proxy's configuration file.

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Deserializer};
use stormwall::config::{InboundConfig, OutboundConfig, parse_duration};
use stormwall::{InboundStack, OutboundStack};

/// `proxy.toml`: where to listen, where to forward, and the stacks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyConfig {
    /// The address the proxy listens on.
    pub(crate) listen: SocketAddr,
    /// The upstream base URL (`http://host:port`, optionally with a path prefix).
    #[serde(deserialize_with = "de_upstream")]
    pub(crate) upstream: Uri,
    /// The admin address (`/health`, `/metrics`); none when absent.
    pub(crate) admin: Option<SocketAddr>,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT (default 10 s).
    #[serde(default, deserialize_with = "de_duration")]
    pub(crate) shutdown_timeout: Option<Duration>,
    /// `[inbound]`: the inbound stack (no stack when absent).
    pub(crate) inbound: Option<InboundConfig>,
    /// `[outbound]`: the outbound stack around the upstream client (none when absent).
    pub(crate) outbound: Option<OutboundConfig>,
}

/// The default for `shutdown_timeout`.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed configuration with its stacks built.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) config: ProxyConfig,
    pub(crate) inbound: Option<InboundStack>,
    pub(crate) outbound: Option<OutboundStack>,
}

impl ProxyConfig {
    /// Parses the TOML text; errors name the field and the line.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())
    }

    /// Builds the stacks (their own validation: quotas, rates, header names...).
    pub(crate) fn build(self) -> Result<Loaded, String> {
        let inbound = self
            .inbound
            .as_ref()
            .map(InboundConfig::build)
            .transpose()
            .map_err(|e| e.to_string())?;
        let outbound = self
            .outbound
            .as_ref()
            .map(OutboundConfig::build)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Loaded {
            config: self,
            inbound,
            outbound,
        })
    }

    /// The configured shutdown timeout or the default.
    pub(crate) fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Parses and checks an upstream URL: `http://` with a host, no query.
pub(crate) fn parse_upstream(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid upstream URL `{text}`: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "upstream `{text}`: https upstreams are not supported yet (use http://)"
            ));
        }
        _ => return Err(format!("upstream `{text}` must start with http://")),
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
        assert!(loaded.inbound.is_none() && loaded.outbound.is_none());
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
        assert!(loaded.inbound.unwrap().rate_limit_layer().is_some());
        assert!(loaded.outbound.is_some());
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
        assert!(parse_upstream("https://example.com").is_err());
        assert!(parse_upstream("http://example.com/api").is_ok());
    }

    #[test]
    fn invalid_stack_values_fail_at_build() {
        let text = format!("{MINIMAL}[inbound.rate_limit]\nper_second = -1\n");
        let err = ProxyConfig::parse(&text).unwrap().build().unwrap_err();
        assert!(err.contains("inbound.rate_limit"), "{err}");
    }
}
