//! The `dag_fanout` scenario on ferroserve: two hops with fan-out (a DAG ensemble). An HTTP
//! ingress parses the body and calls two model deployments concurrently through their
//! [`DeploymentHandle`]s (`tokio::join!` of two `handle.remote(..)`), then combines the answers.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT`; `POST /` with `[1,2,3.5]` →
//! `{"sum":6.5,"sumsq":17.25}` (the same body as the bare axum baseline, `bare_axum dag_fanout`).

use ferroserve::{Deployment, DeploymentHandle, HandlerError, Handles, Ingress, Json, Request};
use serde_json::{json, Value};

/// Model one: sums a vector.
struct Adder;

/// Model two: sums the squares of a vector.
struct Squarer;

/// The message both models take: `handle.remote(Vector(xs))`.
struct Vector(Vec<f64>);

impl Handles<Vector> for Adder {
    type Output = f64;

    async fn call(&self, Vector(xs): Vector) -> f64 {
        xs.iter().sum()
    }
}

impl Handles<Vector> for Squarer {
    type Output = f64;

    async fn call(&self, Vector(xs): Vector) -> f64 {
        xs.iter().map(|x| x * x).sum()
    }
}

/// The ingress: parses the body, fans out to both models, combines.
struct Ensemble {
    adder: DeploymentHandle<Adder>,
    squarer: DeploymentHandle<Squarer>,
}

impl Ingress for Ensemble {
    type Output = Result<Json<Value>, HandlerError>;

    async fn call(&self, mut request: Request) -> Self::Output {
        let xs: Vec<f64> = request.json().await?;
        let (sum, sumsq) = tokio::join!(
            self.adder.remote(Vector(xs.clone())),
            self.squarer.remote(Vector(xs))
        );
        Ok(Json(json!({ "sum": sum?, "sumsq": sumsq? })))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let adder = Deployment::new("Adder").bind(|| Adder);
    let squarer = Deployment::new("Squarer").bind(|| Squarer);
    let ensemble = Deployment::new("Ensemble")
        .with((adder, squarer))
        .bind(|(adder, squarer)| Ensemble { adder, squarer });
    ferroserve::run(ensemble)
}
