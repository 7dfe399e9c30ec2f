//! Model multiplexing (Ray's `@serve.multiplexed`): run with `cargo run -p ferroserve --example
//! multiplexing`.
//!
//! Two replicas, each holding up to three models; a request names its model in the
//! `serve_multiplexed_model_id` header, and goes to the replica that already holds it:
//!
//! ```sh
//! curl -H 'serve_multiplexed_model_id: m1' http://127.0.0.1:8000/   # {"model":"m1","replica":"ModelInferencer#0",...}
//! curl -H 'serve_multiplexed_model_id: m1' http://127.0.0.1:8000/   # same replica, no second load
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ferroserve::{BoxError, Deployment, HandlerError, Ingress, Json, Multiplexed, Request};
use serde_json::{json, Value};

/// A "model": weights named after its id.
struct Model {
    id: String,
    weights: Vec<f64>,
}

impl Model {
    /// Downloads and loads the weights (here: makes them up from the id).
    async fn load(id: String) -> Result<Model, BoxError> {
        let seed = id.bytes().map(f64::from).sum::<f64>();
        Ok(Model {
            weights: vec![seed; 4],
            id,
        })
    }

    fn forward(&self, x: &[f64]) -> f64 {
        self.weights.iter().zip(x).map(|(w, x)| w * x).sum()
    }
}

struct ModelInferencer {
    replica: String,
    models: Multiplexed<Model>,
}

impl Ingress for ModelInferencer {
    type Output = Result<Json<Value>, HandlerError>;

    async fn call(&self, _request: Request) -> Self::Output {
        // The model named by the `serve_multiplexed_model_id` header (400 without one).
        let model: Arc<Model> = self.models.for_request().await?;
        Ok(Json(json!({
            "model": model.id,
            "replica": self.replica,
            "output": model.forward(&[1.0, 2.0, 3.0, 4.0]),
        })))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let app = Deployment::new("ModelInferencer")
        .num_replicas(2)
        .bind_async(move || {
            let replica = format!("ModelInferencer#{}", next.fetch_add(1, Ordering::SeqCst));
            async move {
                let (loading, evicting) = (replica.clone(), replica.clone());
                let models = Multiplexed::builder(move |model_id: String| {
                    println!("{loading} loading model {model_id}");
                    Model::load(model_id)
                })
                .max_num_models_per_replica(3)
                .on_evict_sync(move |model_id, _model| {
                    println!("{evicting} evicting model {model_id}");
                })
                .build()?;
                Ok::<_, ferroserve::Error>(ModelInferencer { replica, models })
            }
        });
    ferroserve::run(app)
}
