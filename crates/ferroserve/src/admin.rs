//! The admin REST API (Ray's `/api/serve/applications/`), on 127.0.0.1:8265 by default.
//!
//! | request | effect |
//! |---|---|
//! | `GET /api/serve/applications/` | `200` JSON: `http_options`, `applications` (status, message, deployments, replicas, deployed config) and `config` (the running config) |
//! | `PUT /api/serve/applications/` with a config (YAML or JSON) | applies it and answers `200` with the new status once applied; `400` `{"error", "issues": [{line, column, path, message}]}` when the config is invalid, with nothing changed |
//! | `DELETE /api/serve/applications/` | `200`, then the server drains and exits as on SIGTERM |
//! | `GET /metrics` | `200`: the proxy's Prometheus metrics (see [`ferroserve_http::metrics`]), wherever the proxy serves them |
//!
//! Config bodies are limited to 1 MiB (`413` beyond).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use ferroserve_http::proxy::ProxyState;

use crate::config::ServeConfig;
use crate::controller::Controller;

const MAX_CONFIG_BYTES: usize = 1 << 20;

#[derive(Clone)]
struct Admin {
    proxy: Arc<ProxyState>,
    controller: Arc<Controller>,
    stop: Arc<Notify>,
}

/// Serves the admin API on `listener` until the task is aborted.
pub(crate) async fn listen(
    listener: TcpListener,
    proxy: Arc<ProxyState>,
    controller: Arc<Controller>,
    stop: Arc<Notify>,
) {
    let state = Admin {
        proxy,
        controller,
        stop,
    };
    let applications = get(status).put(deploy).delete(shutdown);
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/api/serve/applications/", applications.clone())
        .route("/api/serve/applications", applications)
        .layer(DefaultBodyLimit::max(MAX_CONFIG_BYTES))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("admin API stopped: {e}");
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    admin.proxy.metrics_response()
}

async fn status(State(admin): State<Admin>) -> Response {
    status_body(&admin.controller)
}

fn status_body(controller: &Controller) -> Response {
    let status = controller.status();
    Json(json!({
        "http_options": status.http_options,
        "applications": status.applications,
        "config": controller.config(),
    }))
    .into_response()
}

async fn deploy(State(admin): State<Admin>, body: Bytes) -> Response {
    const FILE: &str = "<request body>";
    let Ok(text) = std::str::from_utf8(&body) else {
        return bad_request("the config is not valid UTF-8", json!([]));
    };
    let config = match ServeConfig::parse(text, FILE) {
        Ok(config) => config,
        Err(e) => return bad_request(&e.to_string(), json!(e.issues)),
    };
    tracing::info!("deploying a new config through the admin API");
    if let Err(mut e) = admin.controller.apply(config, FILE).await {
        ServeConfig::locate(text, &mut e.issues);
        return bad_request(&e.to_string(), json!(e.issues));
    }
    status_body(&admin.controller)
}

fn bad_request(error: &str, issues: serde_json::Value) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": error, "issues": issues })),
    )
        .into_response()
}

async fn shutdown(State(admin): State<Admin>) -> Response {
    admin.stop.notify_one();
    Json(json!({ "message": "shutting down: draining in-flight requests" })).into_response()
}
