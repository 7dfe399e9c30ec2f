//! The basic FastAPI deployment of Ray Serve's HTTP guide: a typed route whose handler reaches the
//! replica (`self`), mounted under `/hello`, with OpenAPI docs at `/hello/docs`.
//!
//! ```sh
//! cargo run --example fastapi_hello
//! curl http://127.0.0.1:8000/hello        # "Hello, world!"
//! ```

use std::sync::Arc;

use axum::extract::State;
use ferroserve::api::{routing::get, ApiIngress, ApiRouter};
use ferroserve::{Application, Deployment, Json};

struct MyFastAPIDeployment;

impl MyFastAPIDeployment {
    async fn root(State(_this): State<Arc<Self>>) -> Json<&'static str> {
        Json("Hello, world!")
    }
}

impl ApiIngress for MyFastAPIDeployment {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new().api_route("/", get(Self::root))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let app = Deployment::new("MyFastAPIDeployment").bind(|| MyFastAPIDeployment);
    ferroserve::run(Application::api(app).route_prefix("/hello"))
}
