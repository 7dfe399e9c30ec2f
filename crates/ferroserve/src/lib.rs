//! # ferroserve
//!
//! Ray Serve's model-serving semantics for Rust services: an application is a graph of
//! **deployments** (replicated types that call each other through **handles**), exposed over HTTP
//! by a **proxy** that routes, balances, queues, times out and cancels requests.
//!
//! The seed's `Counter`, in Rust:
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
//! Where each concept lives:
//!
//! | concept | module |
//! |---|---|
//! | `@serve.deployment`, `.bind()` | [`deployment`] |
//! | `serve.run`, route prefix, app name | [`app`], [`serve`] |
//! | `DeploymentHandle`, `.remote()` | [`handle`] |
//! | routing over replicas, `max_ongoing_requests`, `max_queued_requests` | `router` (internal) |
//! | `__call__(self, request)` | [`ingress`] |
//! | `@serve.batch` | [`batch`] |
//! | `@serve.ingress(FastAPI())`, validation, `/docs` | [`api`] |
//! | request id, timeout, cancellation, `asyncio.shield` | [`context`] |
//! | `StreamingResponse`, SSE, `handle.options(stream=True)` | [`stream`] |
//! | `@app.websocket` | [`api::WebSocketUpgrade`] |
//! | `InputNode`, `DAGDriver` | [`dag`] |
//! | `@serve.multiplexed`, `serve.get_multiplexed_model_id()` | [`multiplex`] |
//! | HTTP adapters (`json_to_ndarray`, `image_to_ndarray`, ...) | [`adapters`] |
//! | status codes and messages | [`error`] |
//! | request size and connection limits | [`limits`] |
//! | giving freed memory back to the OS while serving | [`memory`] |
//! | serve config YAML | [`config`] |
//! | `import_path` | [`registry`] |
//! | `serve run/deploy/status/config/build/shutdown` | [`cli`] |
//! | applying configs, rolling updates, status | `controller` (internal) |
//! | `autoscaling_config` | [`autoscaling`] |
//! | `check_health(self)`, replica replacement | [`health`], `deployment::supervisor` (internal) |
//! | the REST API (`/api/serve/applications/`) | `admin` (internal) |
//! | `/metrics` (Prometheus), access logs | [`metrics`], `access_log` (internal: the line writer) |

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;
mod access_log;
pub mod adapters;
mod admin;
pub mod api;
pub mod app;
pub mod autoscaling;
pub mod batch;
pub mod cli;
pub mod config;
mod conn;
pub mod context;
mod controller;
pub mod dag;
pub mod deployment;
pub mod error;
pub mod handle;
pub mod health;
pub mod ingress;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod multiplex;
#[cfg(feature = "onnx")]
pub mod onnx;
mod proxy;
pub mod registry;
mod router;
pub mod serve;
pub mod stream;

pub use api::Json;
pub use app::Application;
pub use batch::{Batch, BatchError, BatchOptions, StreamingBatch};
pub use context::{current, on_cancel, shield, OnCancel, RequestContext};
pub use controller::AppStatus;
pub use deployment::{BoundDeployment, Deployment, DeploymentOptions, Reconfigure};
pub use error::{BoxError, Error, Fault, HandlerError};
pub use handle::{DeploymentHandle, Handles};
pub use health::HealthCheck;
pub use ingress::{Ingress, QueryParams, Request};
pub use limits::Limits;
pub use multiplex::Multiplexed;
pub use serve::{init_logging, run, HttpOptions, Serve, Server};
pub use stream::{HandlesStream, StreamingResponse};

pub use axum::response::{IntoResponse, Response};
pub use http::StatusCode;
