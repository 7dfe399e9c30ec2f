//! Thin wrappers over crate-private parsers, for the fuzz targets in `fuzz/` (feature
//! `fuzzing`, off by default). Not a public API: nothing here is stable.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use ferroserve_core::RequestContext;

use crate::endpoint::HttpEndpoint;
use crate::proxy::{ProxyOptions, ProxyState, Route};

/// The index in `prefixes` of the route the proxy picks for `path` under `root_path`. The
/// prefixes are mounted as the proxy mounts them (longest first).
pub fn find_route(root_path: &str, prefixes: &[&str], path: &str) -> Option<usize> {
    let state = ProxyState::new(ProxyOptions {
        host: String::new(),
        root_path: root_path.to_owned(),
        request_timeout: None,
        limits: Default::default(),
        metrics_path: None,
        access_log: false,
    });
    let routes: Vec<Route> = prefixes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let endpoint: Arc<dyn HttpEndpoint> = Arc::new(Unreachable);
            state.route(p, i.to_string(), endpoint)
        })
        .collect();
    state.set_routes(routes);
    crate::proxy::find_route_index(&state, path)
}

struct Unreachable;

impl HttpEndpoint for Unreachable {
    fn respond(
        &self,
        _: http::Request<Body>,
        _: RequestContext,
    ) -> futures_util::future::BoxFuture<'static, Response> {
        Box::pin(async { http::StatusCode::NOT_IMPLEMENTED.into_response() })
    }
}
