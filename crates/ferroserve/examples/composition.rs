//! Model composition: an HTTP ingress calls a model deployment (2 replicas) through a handle.
//!
//! ```sh
//! cargo run --example composition
//! curl -X POST http://127.0.0.1:8000/ -d '[1, 2, 3.5]'   # {"sum":6.5,"replica":"Adder#0"}
//! ```

use ferroserve::{Deployment, DeploymentHandle, HandlerError, Handles, Ingress, Json, Request};
use serde_json::{json, Value};

/// The "model": sums a vector. Each replica knows its own name.
struct Adder {
    replica: String,
}

/// The message the ingress sends to the model: `handle.remote(Sum(xs))`.
struct Sum(Vec<f64>);

impl Handles<Sum> for Adder {
    type Output = (f64, String);

    async fn call(&self, Sum(xs): Sum) -> (f64, String) {
        (xs.iter().sum(), self.replica.clone())
    }
}

/// The ingress: parses the body and asks the model.
struct Api {
    adder: DeploymentHandle<Adder>,
}

impl Ingress for Api {
    type Output = Result<Json<Value>, HandlerError>;

    async fn call(&self, mut request: Request) -> Self::Output {
        let xs: Vec<f64> = request.json().await?;
        let (sum, replica) = self.adder.remote(Sum(xs)).await?;
        Ok(Json(json!({ "sum": sum, "replica": replica })))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let adder = Deployment::new("Adder")
        .num_replicas(2)
        .bind(move || Adder {
            replica: format!(
                "Adder#{}",
                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        });
    let api = Deployment::new("Api")
        .with(adder)
        .bind(|adder| Api { adder });
    ferroserve::run(api)
}
