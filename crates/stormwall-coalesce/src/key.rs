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
        let mut headers = Vec::new();
        for (i, name) in KEY_HEADERS.iter().enumerate() {
            for value in map.get_all(name) {
                headers.push((i as u8, value.clone()));
            }
        }
        let host = if req.uri().authority().is_none() {
            map.get(HOST).cloned()
        } else {
            None
        };
        Ok(RequestKey {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host,
            headers,
        })
    }
}
