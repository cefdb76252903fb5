//! The default HTTP key.

use http::header::{ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, AUTHORIZATION, COOKIE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use stormwall_core::key::{KeyError, KeyExtractor};

/// The request headers that select a different response, in the default key.
///
/// `Authorization` and `Cookie` are the identity headers: with them in the key, two users are
/// never merged. The forwarding headers (`X-Forwarded-Host`, `X-Original-URL`, `Forwarded`, …)
/// are in the key too: origins often reflect them into the page, so a request carrying a
/// forged value must never share its response with anyone else (cache-poisoning defence).
pub const KEY_HEADERS: [HeaderName; 14] = [
    ACCEPT,
    ACCEPT_ENCODING,
    ACCEPT_LANGUAGE,
    AUTHORIZATION,
    COOKIE,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("forwarded"),
];

/// The default key of [`CoalesceLayer`](crate::CoalesceLayer): method, full URI (scheme,
/// authority, path, query; the `Host` header when the URI has no authority, as on servers) and
/// the values of the [`KEY_HEADERS`].
///
/// ```
/// use http::Request;
/// use stormwall_coalesce::DefaultKey;
/// use stormwall_core::key::KeyExtractor;
///
/// let alice = Request::get("http://api/users/1").header("authorization", "Bearer a").body(()).unwrap();
/// let bob = Request::get("http://api/users/1").header("authorization", "Bearer b").body(()).unwrap();
/// let alice2 = Request::get("http://api/users/1").header("authorization", "Bearer a").body(()).unwrap();
/// assert_ne!(DefaultKey.extract(&alice).unwrap(), DefaultKey.extract(&bob).unwrap());
/// assert_eq!(DefaultKey.extract(&alice).unwrap(), DefaultKey.extract(&alice2).unwrap());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultKey;

/// The key built by [`DefaultKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    /// `(index in KEY_HEADERS, value)`, in request order per header.
    headers: Vec<(u8, HeaderValue)>,
}

impl RequestKey {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }
}

impl<B> KeyExtractor<Request<B>> for DefaultKey {
    type Key = RequestKey;

    fn extract(&self, req: &Request<B>) -> Result<RequestKey, KeyError> {
        let map = req.headers();
        let want_host = req.uri().authority().is_none();
        let mut host = None;
        let mut headers = Vec::new();
        // One pass over the request's headers (usually a handful) instead of one lookup per
        // key header: `HeaderMap::iter` yields every value of a name together, in order.
        for (name, value) in map {
            if let Some(i) = key_header_index(name) {
                headers.push((i, value.clone()));
            } else if want_host && host.is_none() && name == HOST {
                host = Some(value.clone());
            }
        }
        // Header order in the request must not split two otherwise identical keys; the sort
        // is stable, so the values of one header stay in request order.
        if headers.len() > 1 {
            headers.sort_by_key(|(i, _)| *i);
        }
        Ok(RequestKey {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host,
            headers,
        })
    }
}

/// The index of `name` in [`KEY_HEADERS`], if it is one of them.
fn key_header_index(name: &HeaderName) -> Option<u8> {
    // Standard names compare as enum tags; the forwarding headers are custom names, matched
    // by their (lower-case) text only when the length fits.
    if name == ACCEPT {
        return Some(0);
    }
    if name == ACCEPT_ENCODING {
        return Some(1);
    }
    if name == ACCEPT_LANGUAGE {
        return Some(2);
    }
    if name == AUTHORIZATION {
        return Some(3);
    }
    if name == COOKIE {
        return Some(4);
    }
    let i = match name.as_str() {
        "x-forwarded-host" => 5,
        "x-forwarded-scheme" => 6,
        "x-forwarded-proto" => 7,
        "x-forwarded-server" => 8,
        "x-forwarded-prefix" => 9,
        "x-host" => 10,
        "x-original-url" => 11,
        "x-rewrite-url" => 12,
        "forwarded" => 13,
        _ => return None,
    };
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_header_has_its_index() {
        for (i, name) in KEY_HEADERS.iter().enumerate() {
            assert_eq!(key_header_index(name), Some(i as u8), "{name}");
        }
        assert_eq!(key_header_index(&HOST), None);
        assert_eq!(key_header_index(&http::header::USER_AGENT), None);
    }

    #[test]
    fn header_order_does_not_change_the_key_but_values_do() {
        let a = Request::get("/x")
            .header("host", "api")
            .header("x-forwarded-host", "evil")
            .header("authorization", "Bearer a")
            .header("accept", "text/html")
            .header("accept", "application/json")
            .body(())
            .unwrap();
        let b = Request::get("/x")
            .header("accept", "text/html")
            .header("authorization", "Bearer a")
            .header("accept", "application/json")
            .header("x-forwarded-host", "evil")
            .header("host", "api")
            .body(())
            .unwrap();
        let ka = DefaultKey.extract(&a).unwrap();
        assert_eq!(ka, DefaultKey.extract(&b).unwrap());
        assert_eq!(ka.host, Some(HeaderValue::from_static("api")));
        assert_eq!(ka.headers.len(), 4);
        // The order of the values of one header is part of the key.
        let c = Request::get("/x")
            .header("host", "api")
            .header("x-forwarded-host", "evil")
            .header("authorization", "Bearer a")
            .header("accept", "application/json")
            .header("accept", "text/html")
            .body(())
            .unwrap();
        assert_ne!(ka, DefaultKey.extract(&c).unwrap());
        // Each key header (identity, forwarding) selects a different key.
        for name in &KEY_HEADERS {
            let plain = Request::get("/x").header("host", "api").body(()).unwrap();
            let forged = Request::get("/x")
                .header("host", "api")
                .header(name, "forged")
                .body(())
                .unwrap();
            assert_ne!(
                DefaultKey.extract(&plain).unwrap(),
                DefaultKey.extract(&forged).unwrap(),
                "{name}"
            );
        }
        // With an absolute URI the Host header is not read (the URI's authority is).
        let abs = Request::get("http://api/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(DefaultKey.extract(&abs).unwrap().host, None);
    }
}
