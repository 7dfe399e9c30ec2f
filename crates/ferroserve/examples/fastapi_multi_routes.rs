//! The FastAPI deployment with several routes and methods, from Ray Serve's HTTP guide.
//!
//! ```sh
//! cargo run --example fastapi_multi_routes
//! curl http://127.0.0.1:8000/hello               # "Hello, world!"
//! curl -X POST http://127.0.0.1:8000/hello/Serve # "Hello from Serve!"
//! ```

use std::sync::Arc;

use axum::extract::State;
use ferroserve::api::routing::{get, post};
use ferroserve::api::{ApiIngress, ApiRouter, Path};
use ferroserve::{Application, Deployment, Json};

struct MyFastAPIDeployment;

impl MyFastAPIDeployment {
    async fn root(State(_this): State<Arc<Self>>) -> Json<&'static str> {
        Json("Hello, world!")
    }

    async fn greet(State(_this): State<Arc<Self>>, Path(subpath): Path<String>) -> Json<String> {
        Json(format!("Hello from {subpath}!"))
    }
}

impl ApiIngress for MyFastAPIDeployment {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new()
            .api_route("/", get(Self::root))
            .api_route("/{subpath}", post(Self::greet))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let app = Deployment::new("MyFastAPIDeployment").bind(|| MyFastAPIDeployment);
    ferroserve::run(Application::api(app).route_prefix("/hello"))
}
