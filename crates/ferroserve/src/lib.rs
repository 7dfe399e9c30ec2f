//! # ferroserve
//!
//! Ray Serve's model-serving semantics for Rust services: an application is a graph of
//! **deployments** (replicated types that call each other through **handles**), exposed over HTTP
//! by a **proxy** that routes, balances, queues, times out and cancels requests.
//!
//! Ray Serve's `Counter`, from its HTTP guide, in Rust:
//!
//! ```no_run
//! use ferroserve::{Deployment, Ingress, Json, QueryParams, Request};
//!
//! struct Counter;
//!
//! impl Ingress for Counter {
//!     type Output = Json<QueryParams>;
//!
//!     async fn call(&self, request: Request) -> Self::Output {
//!         Json(request.query_params())
//!     }
//! }
//!
//! fn main() -> Result<(), ferroserve::Error> {
//!     ferroserve::run(Deployment::new("Counter").bind(|| Counter))
//! }
//! ```
//!
//! This crate is the facade: it owns what ties a server together (config files, the registry
//! of applications, the controller, [`Serve`], logging, memory trimming, the admin API) and
//! re-exports the crates below it, so that `use ferroserve::..` is all a user writes. It may
//! import `ferroserve-core`, `ferroserve-http` and `ferroserve-adapters`; the built-in
//! applications (`ferroserve-onnx`) and the command line (`ferroserve-cli`) build on it.
//!
//! Where each concept lives:
//!
//! | concept | module |
//! |---|---|
//! | `@serve.deployment`, `.bind()` | [`deployment`] |
//! | `serve.run`, route prefix, app name | [`app`], [`server`] |
//! | `DeploymentHandle`, `.remote()` | [`handle`] (and [`replica`], [`wire`]: where a call runs) |
//! | routing over replicas, `max_ongoing_requests`, `max_queued_requests` | [`balance`] |
//! | `__call__(self, request)` | [`ingress`] |
//! | `@serve.batch` | [`batch`] |
//! | `@serve.ingress(FastAPI())`, validation, `/docs` | [`api`] |
//! | request id, timeout, cancellation, `asyncio.shield` | [`context`] |
//! | `StreamingResponse`, SSE, `handle.options(stream=True)` | [`stream`] |
//! | `@app.websocket` | [`api::WebSocketUpgrade`] |
//! | `InputNode`, `DAGDriver` | [`dag`] |
//! | `@serve.multiplexed`, `serve.get_multiplexed_model_id()` | [`multiplex`] |
//! | HTTP adapters (`json_to_ndarray`, `image_to_ndarray`, ...) | [`adapters`] (feature `adapters`, on by default) |
//! | status codes and messages | [`error`] |
//! | request size and connection limits | [`limits`] |
//! | giving freed memory back to the OS while serving | [`memory`] |
//! | serve config YAML | [`config`] |
//! | `import_path` | [`registry`] |
//! | applying configs, rolling updates, status | `controller` (internal) |
//! | `autoscaling_config` | [`autoscaling`] |
//! | `check_health(self)`, replica replacement | [`health`], [`deployment`] |
//! | the REST API (`/api/serve/applications/`) | `admin` (internal) |
//! | `/metrics` (Prometheus), access logs | [`metrics`], [`logging`] |
//! | `serve run/deploy/status/config/build/shutdown` | the `ferroserve-cli` crate |

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;
mod admin;
pub mod config;
mod controller;
pub mod logging;
pub mod memory;
pub mod options;
pub mod registry;
pub mod server;

pub use ferroserve_core::{
    autoscaling, balance, batch, context, deployment, handle, health, multiplex, replica, wire,
};
pub use ferroserve_http::{access_log, api, app, dag, ingress, limits, metrics, proxy, route};

/// Ray's HTTP adapters: see the `ferroserve-adapters` crate.
#[cfg(feature = "adapters")]
pub use ferroserve_adapters as adapters;

/// Errors, and the one place where they become HTTP responses.
pub mod error {
    pub use ferroserve_core::error::*;
    pub use ferroserve_http::error::HandlerError;
}

/// Streaming: responses that flush every chunk as produced, server-sent events, and streams
/// returned through handles.
pub mod stream {
    pub use ferroserve_core::handle::{HandlesStream, ResponseStream};
    pub use ferroserve_http::stream::*;
}

pub use batch::{Batch, BatchError, BatchOptions, StreamingBatch};
pub use context::{current, on_cancel, shield, OnCancel, RequestContext};
pub use controller::AppStatus;
pub use deployment::{BoundDeployment, Deployment, DeploymentOptions, Reconfigure};
pub use error::{BoxError, Error, Fault, HandlerError};
pub use ferroserve_http::{Application, Ingress, Json, QueryParams, Request};
pub use handle::{DeploymentHandle, Handles};
pub use health::HealthCheck;
pub use limits::Limits;
pub use logging::init_logging;
pub use multiplex::Multiplexed;
pub use options::HttpOptions;
pub use server::{run, Serve, Server};
pub use stream::{HandlesStream, StreamingResponse};

pub use axum::response::{IntoResponse, Response};
pub use http::StatusCode;
