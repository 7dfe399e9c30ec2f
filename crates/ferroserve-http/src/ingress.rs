//! Raw-request ingress: Ray's `__call__(self, request: starlette.requests.Request)`.
//!
//! A deployment type that implements [`Ingress`] receives every HTTP request under its
//! application's route prefix as a [`Request`] and returns anything that converts into a
//! response:
//!
//! | returned | response |
//! |---|---|
//! | [`Json`]`(value)` | compact JSON, `application/json` |
//! | `String`, `&'static str` | `text/plain; charset=utf-8` |
//! | `Vec<u8>`, `Bytes` | `application/octet-stream` |
//! | `(StatusCode, headers.., body)`, [`Response`] | as given |
//! | `Result<T, HandlerError>` | `T`, or the error's status (`500 Internal Server Error` for user errors, detail logged) |

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferroserve_core::replica::ReplicaSet;
use ferroserve_core::{Error, RequestContext};
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[allow(unused_imports)] // for docs
use crate::api::Json;
use crate::endpoint::{respond_on_replica, HttpEndpoint};
#[allow(unused_imports)] // for docs
use crate::error::HandlerError;
use crate::route::relative_path;
use crate::scope;

/// A deployment that serves HTTP requests directly (Ray's `__call__`).
///
/// ```
/// use ferroserve_http::{Ingress, Json, Request};
///
/// struct Counter;
///
/// impl Ingress for Counter {
///     type Output = Json<ferroserve_http::QueryParams>;
///
///     async fn call(&self, request: Request) -> Self::Output {
///         Json(request.query_params())
///     }
/// }
/// ```
///
/// Cancellation: the returned future is dropped when the client disconnects or the request times
/// out; the handler stops at its next `.await`.
pub trait Ingress: Send + Sync + 'static {
    /// What the handler returns: anything that converts into a response (see the module docs).
    type Output: IntoResponse;
    /// Handles one request on this replica.
    fn call(&self, request: Request) -> impl Future<Output = Self::Output> + Send;
}

/// An HTTP request as a raw-ingress deployment sees it (Starlette's `Request`).
pub struct Request {
    parts: http::request::Parts,
    body: Option<Body>,
    cached: Option<Bytes>,
    path: String,
    ctx: RequestContext,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.parts.method)
            .field("uri", &self.parts.uri)
            .field("root_path", &self.root_path())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The request as its application sees it: the path relative to the application's root
    /// path (the context's HTTP scope; `/` without one).
    pub fn new(request: http::Request<Body>, ctx: RequestContext) -> Self {
        let (parts, body) = request.into_parts();
        let root = scope::of(&ctx).map_or("", |s| s.root_path());
        let path = relative_path(root, parts.uri.path()).to_owned();
        Request {
            parts,
            body: Some(body),
            cached: None,
            path,
            ctx,
        }
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.parts.method
    }

    /// The full request URI, as the client sent it.
    pub fn uri(&self) -> &Uri {
        &self.parts.uri
    }

    /// The path relative to the application's route prefix (always starts with `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The application's route prefix (`""` for an application mounted at `/`).
    pub fn root_path(&self) -> &str {
        scope::of(&self.ctx).map_or("", |s| s.root_path())
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.parts.headers
    }

    /// One header's value as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query string, percent-decoded. Repeated keys keep every value.
    pub fn query_params(&self) -> QueryParams {
        QueryParams::parse(self.parts.uri.query().unwrap_or(""))
    }

    /// The request's context: id, deadline, cancellation.
    pub fn context(&self) -> &RequestContext {
        &self.ctx
    }

    /// The whole body. Reads it on first call; later calls return the same bytes.
    ///
    /// Errors with `400` if the client stops sending half-way, `413` if the body is larger than
    /// `max_request_body_bytes` (see [`crate::limits`]).
    pub async fn body(&mut self) -> Result<Bytes, Error> {
        if let Some(bytes) = &self.cached {
            return Ok(bytes.clone());
        }
        let body = self.body.take().unwrap_or_else(Body::empty);
        let bytes = body
            .collect()
            .await
            .map_err(|e| {
                if crate::limits::is_length_limit(&e) {
                    let limits = scope::of(&self.ctx)
                        .map(|s| *s.limits())
                        .unwrap_or_default();
                    limits.body_too_large(None)
                } else {
                    Error::bad_request(
                        StatusCode::BAD_REQUEST,
                        format!("Failed to read request body: {e}"),
                    )
                }
            })?
            .to_bytes();
        self.cached = Some(bytes.clone());
        Ok(bytes)
    }

    /// The body as UTF-8 text; `400` if it is not valid UTF-8.
    pub async fn text(&mut self) -> Result<String, Error> {
        let bytes = self.body().await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            Error::bad_request(
                StatusCode::BAD_REQUEST,
                format!("Request body is not valid UTF-8: {e}"),
            )
        })
    }

    /// The body parsed as JSON into `T` (use `serde_json::Value` for any JSON); `400` with the
    /// parser's message (line and column) if it is not, naming the limit for JSON nested more
    /// than 128 levels deep.
    pub async fn json<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        let bytes = self.body().await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::bad_request(
                StatusCode::BAD_REQUEST,
                format!(
                    "Invalid JSON body: {}",
                    crate::limits::json_error_message(&e)
                ),
            )
        })
    }
}

/// Query parameters in order, percent-decoded, keys possibly repeated.
///
/// Serializes as a JSON object in which a repeated key keeps its last value, exactly as
/// Starlette's `request.query_params` does; [`QueryParams::get_all`] returns every value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    /// Parses a raw query string (`a=b&c=d`).
    pub fn parse(query: &str) -> Self {
        QueryParams(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// All pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The parameters as a map, last value per key.
    pub fn to_map(&self) -> HashMap<String, String> {
        self.0.iter().cloned().collect()
    }
}

impl Serialize for QueryParams {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // First occurrence fixes the key's position, the last value wins.
        let mut keys: Vec<&str> = Vec::new();
        for (k, _) in &self.0 {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
        let mut map = serializer.serialize_map(Some(keys.len()))?;
        for k in keys {
            map.serialize_entry(k, self.get(k).unwrap_or_default())?;
        }
        map.end()
    }
}

/// The endpoint of a raw-request [`Ingress`] deployment.
pub(crate) struct IngressEndpoint<T: Ingress> {
    pub(crate) replicas: Arc<ReplicaSet<T>>,
}

impl<T: Ingress> HttpEndpoint for IngressEndpoint<T> {
    fn respond(
        &self,
        request: http::Request<Body>,
        ctx: RequestContext,
    ) -> BoxFuture<'static, Response> {
        let request = Request::new(request, ctx.clone());
        let respond = respond_on_replica(&self.replicas, ctx, move |replica| {
            let instance = replica.instance().clone();
            async move { instance.call(request).await.into_response() }
        });
        Box::pin(respond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode_and_keep_last_in_json() {
        let q = QueryParams::parse("a=b&c=d%20e&a=z&plus=1+2");
        assert_eq!(q.get("a"), Some("z"));
        assert_eq!(q.get_all("a").collect::<Vec<_>>(), ["b", "z"]);
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"a":"z","c":"d e","plus":"1 2"}"#
        );
    }

    #[test]
    fn paths_are_relative_to_the_prefix() {
        let req = |uri: &str, root: &str| {
            let scope = Arc::new(scope::HttpScope::new(Default::default(), root));
            Request::new(
                http::Request::get(uri).body(Body::empty()).unwrap(),
                RequestContext::new("id", None).with_local(scope),
            )
        };
        let r = req("/hello/Serve?x=1", "/hello");
        assert_eq!((r.path(), r.root_path()), ("/Serve", "/hello"));
        let r = req("/hello", "/hello");
        assert_eq!(r.path(), "/");
        let r = req("/a/b", "/");
        assert_eq!((r.path(), r.root_path()), ("/a/b", ""));
    }
}
