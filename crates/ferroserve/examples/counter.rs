//! The `Counter` of Ray Serve's HTTP guide (Starlette request ingress): returns the query
//! parameters as JSON.
//!
//! ```sh
//! cargo run --example counter
//! curl "http://127.0.0.1:8000/?a=b&c=d"   # {"a":"b","c":"d"}
//! ```

use ferroserve::{Application, Deployment, Ingress, Json, QueryParams, Request};

struct Counter;

impl Ingress for Counter {
    type Output = Json<QueryParams>;

    async fn call(&self, request: Request) -> Self::Output {
        Json(request.query_params())
    }
}

/// The application (also the `ferroserve` binary's `ferroserve.examples.counter:app`).
pub fn app() -> Application {
    Application::new(Deployment::new("Counter").bind(|| Counter))
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(app())
}
