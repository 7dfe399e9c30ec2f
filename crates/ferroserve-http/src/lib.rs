//! # ferroserve-http
//!
//! ferroserve's HTTP layer: the proxy in front of the deployments of `ferroserve-core`, and
//! the ways a deployment serves HTTP.
//!
//! What it owns, bottom layer first (each module imports only from the ones above it in this
//! list):
//!
//! | module | Ray Serve concept |
//! |---|---|
//! | [`route`], [`limits`], [`scope`] | route prefixes and `root_path`; request size and connection limits; what the proxy attaches to each request's context |
//! | [`error`], [`model_id`] | a handler's errors (`500`, detail logged); the `serve_multiplexed_model_id` header |
//! | [`stream`], [`endpoint`] | `StreamingResponse`, SSE; the seam between the proxy and an application |
//! | [`ingress`] | `__call__(self, request: starlette.Request)` |
//! | [`api`] | `@serve.ingress(FastAPI())`: typed routes, validation (`422`), `/docs`, WebSockets; bring your own app |
//! | [`app`], [`dag`] | `serve.run(app, name, route_prefix)`; `InputNode`, `DAGDriver` |
//! | [`access_log`], [`metrics`] | access logs; `/metrics` (Prometheus) |
//! | `conn`, [`proxy`] | connections (keep-alive, slow clients, connection cap); the proxy: routing, request ids, timeouts, cancellation, `/-/healthz`, `/-/routes`, draining |
//!
//! It may import `ferroserve-core` (never the reverse), hyper, axum, aide and tower. No
//! configuration files, no controller, no command line: those live in the `ferroserve` facade
//! and the CLI.

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;
pub mod access_log;
pub mod api;
pub mod app;
mod conn;
pub mod dag;
pub mod endpoint;
pub mod error;
pub mod ingress;
pub mod limits;
pub mod metrics;
pub mod model_id;
pub mod proxy;
pub mod route;
pub mod scope;
pub mod stream;

pub use api::Json;
pub use app::Application;
pub use error::HandlerError;
pub use ingress::{Ingress, QueryParams, Request};
pub use limits::Limits;
pub use stream::StreamingResponse;
