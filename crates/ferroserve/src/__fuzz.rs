//! Thin wrappers over crate-private parsers, for the fuzz targets in `fuzz/` (feature
//! `fuzzing`, off by default). Not a public API: nothing here is stable.

use serde::de::DeserializeOwned;

pub use ferroserve_adapters::__fuzz::*;
pub use ferroserve_adapters::ImageLimits;
pub use ferroserve_http::__fuzz::*;
use ferroserve_http::api::ValidationError;

use crate::config::{ConfigIssue, ServeConfig};

/// A JSON request body parsed as the `Json<T>` extractor parses it.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationError> {
    ferroserve_http::api::parse_json_body(bytes)
}

/// What a route mounted at `root_path` + `prefix` sees as its root.
pub fn mount(root_path: &str, prefix: &str) -> String {
    ferroserve_http::route::mount(root_path, prefix)
}

/// `path` relative to the application mounted at `mount`, as the ingress passes it on.
pub fn relative_path<'a>(mount: &str, path: &'a str) -> &'a str {
    ferroserve_http::route::relative_path(mount, path)
}

/// Whether `path` is under `prefix` (path segments).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    ferroserve_http::route::prefix_matches(prefix, path)
}

/// Fills in the lines and columns of issues found after parsing, as the controller does.
pub fn locate(text: &str, issues: &mut [ConfigIssue]) {
    ServeConfig::locate(text, issues)
}
