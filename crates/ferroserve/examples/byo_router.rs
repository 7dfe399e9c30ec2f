//! "Bring your own FastAPI app" from Ray Serve's HTTP guide: an existing router, written without
//! ferroserve in mind, served unchanged and replicated.
//!
//! ```sh
//! cargo run --example byo_router
//! curl http://127.0.0.1:8000/             # "Hello from the root!"
//! ```

use ferroserve::api::{routing::get, ApiRouter, DocumentedRouter};
use ferroserve::{Application, Deployment, Json};

/// An existing app: plain aide/axum, nothing ferroserve-specific.
fn existing_app() -> ApiRouter {
    async fn f() -> Json<&'static str> {
        Json("Hello from the root!")
    }
    ApiRouter::new().api_route("/", get(f))
}

fn main() -> Result<(), ferroserve::Error> {
    // Served unchanged; `DocumentedRouter` only finishes its OpenAPI document.
    let app = Deployment::new("App")
        .num_replicas(2)
        .bind(|| DocumentedRouter::new(existing_app()));
    ferroserve::run(Application::router(app).route_prefix("/"))
}
