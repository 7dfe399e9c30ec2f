//! The `json_to_ndarray` scenario on ferroserve, shaped like the `/ndarray` route of
//! `crates/ferroserve/examples/adapters.rs`: an `ApiIngress` route taking the
//! [`JsonToNdarray`] adapter (body `{"array": [...], "shape"?, "dtype"?}` → a `DynArray`, dtype
//! inferred) and answering the sum. The body limit is raised to 64 MiB on the `ApiRouter`.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT`; `POST /ndarray` with `{"array": [[1.5, 2.5]]}` →
//! `{"sum":4.0}`.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use ferroserve::adapters::JsonToNdarray;
use ferroserve::api::routing::post;
use ferroserve::api::{ApiIngress, ApiRouter, Json};
use ferroserve::{Application, Deployment};
use serde_json::{json, Value};

struct Adapters;

impl Adapters {
    async fn ndarray(JsonToNdarray(array): JsonToNdarray) -> Json<Value> {
        Json(json!({ "sum": array.sum_value() }))
    }
}

impl ApiIngress for Adapters {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new()
            .api_route("/ndarray", post(Self::ndarray))
            .layer(DefaultBodyLimit::max(64 << 20))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Application::api(
        Deployment::new("Adapters").bind(|| Adapters),
    ))
}
