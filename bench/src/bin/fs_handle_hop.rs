//! The `handle_hop` scenario on ferroserve, shaped like `crates/ferroserve/examples/composition.rs`:
//! an HTTP ingress parses the body and calls a model deployment (2 replicas) through a
//! [`DeploymentHandle`]; the model sums the vector.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT`; `POST /` with `[1,2,3.5]` → `{"sum":6.5}` (the same
//! body as the bare axum baseline, so the replica name is not echoed).

use ferroserve::{Deployment, DeploymentHandle, HandlerError, Handles, Ingress, Json, Request};
use serde_json::{json, Value};

/// The "model": sums a vector.
struct Adder;

/// The message the ingress sends to the model: `handle.remote(Sum(xs))`.
struct Sum(Vec<f64>);

impl Handles<Sum> for Adder {
    type Output = f64;

    async fn call(&self, Sum(xs): Sum) -> f64 {
        xs.iter().sum()
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
        let sum = self.adder.remote(Sum(xs)).await?;
        Ok(Json(json!({ "sum": sum })))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let adder = Deployment::new("Adder").num_replicas(2).bind(|| Adder);
    let api = Deployment::new("Api")
        .with(adder)
        .bind(|adder| Api { adder });
    ferroserve::run(api)
}
