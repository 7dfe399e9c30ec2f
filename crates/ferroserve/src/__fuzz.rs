//! Thin wrappers over crate-private parsers, for the fuzz targets in `fuzz/` (feature
//! `fuzzing`, off by default). Not a public API: nothing here is stable.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use ndarray::Array3;
use serde::de::DeserializeOwned;

use crate::adapters::ImageLimits;
use crate::api::{Rejection, ValidationError};
use crate::config::{ConfigIssue, ServeConfig};
use crate::context::RequestContext;
use crate::ingress::HttpEndpoint;
use crate::proxy::Route;

/// A JSON request body parsed as the `Json<T>` extractor parses it.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationError> {
    crate::api::parse_json_body(bytes)
}

/// `json_to_ndarray`'s decoder as it was before it streamed (a `serde_json::Value` tree):
/// the oracle `NdArray` must agree with, result for result and error for error.
pub use crate::adapters::ndarray_oracle::NdArray as NdArrayOracle;

/// Panics unless the streaming decoder and [`NdArrayOracle`] agree on `body` exactly (under the
/// current limits; see [`with_max_array_elements`]).
pub use crate::adapters::ndarray_oracle::assert_agrees as assert_ndarray_agrees_with_oracle;

/// Runs `f` as a request whose `max_array_elements` limit is `max`.
pub fn with_max_array_elements<R>(max: u64, f: impl FnOnce() -> R) -> R {
    let limits = crate::limits::Limits {
        max_array_elements: max,
        ..crate::limits::Limits::default()
    };
    RequestContext::with_limits("fuzz", None, limits).enter(f)
}

/// An uploaded image decoded as `ImageToNdarray` decodes it.
pub fn decode_image(bytes: &[u8], limits: ImageLimits) -> Result<Array3<u8>, Rejection> {
    crate::adapters::decode_image(bytes, limits)
}

/// `(width, height)` read from a PNG or JPEG header, as the pixel limit reads it.
pub fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    crate::adapters::image_dimensions(bytes)
}

/// The index in `prefixes` of the route the proxy picks for `path` under `root_path`. The
/// prefixes are mounted as the proxy mounts them (longest first).
pub fn find_route(root_path: &str, prefixes: &[&str], path: &str) -> Option<usize> {
    let mut routes: Vec<(usize, Route)> = prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let endpoint: Arc<dyn HttpEndpoint> = Arc::new(Unreachable);
            (i, Route::new(root_path, p, i.to_string(), endpoint))
        })
        .collect();
    routes.sort_by_key(|(_, r)| std::cmp::Reverse(r.prefix.len()));
    let (order, routes): (Vec<usize>, Vec<Route>) = routes.into_iter().unzip();
    let found = crate::proxy::find_route(&routes, root_path, path)?;
    let at = routes.iter().position(|r| std::ptr::eq(r, found))?;
    Some(order[at])
}

/// What a route mounted at `root_path` + `prefix` sees as its root (the request context's
/// `root_path`).
pub fn mount(root_path: &str, prefix: &str) -> String {
    let endpoint: Arc<dyn HttpEndpoint> = Arc::new(Unreachable);
    Route::new(root_path, prefix, String::new(), endpoint)
        .mount
        .to_string()
}

/// `path` relative to the application mounted at `mount`, as the ingress passes it on.
pub fn relative_path<'a>(mount: &str, path: &'a str) -> &'a str {
    crate::app::relative_path(mount, path)
}

/// Whether `path` is under `prefix` (path segments).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    crate::app::prefix_matches(prefix, path)
}

/// Fills in the lines and columns of issues found after parsing, as the controller does.
pub fn locate(text: &str, issues: &mut [ConfigIssue]) {
    ServeConfig::locate(text, issues)
}

struct Unreachable;

impl HttpEndpoint for Unreachable {
    fn serve(
        &self,
        _: http::Request<Body>,
        _: RequestContext,
    ) -> futures_util::future::BoxFuture<'static, Response> {
        Box::pin(async { http::StatusCode::NOT_IMPLEMENTED.into_response() })
    }
}
