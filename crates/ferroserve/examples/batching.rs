//! Ray's batching example: each `GET /?text=...` carries one text; a batcher hands the "model"
//! up to 4 texts at once and prints the size of every batch it runs.
//!
//! ```sh
//! cargo run -p ferroserve --example batching
//! for i in 1 2 3 4 5 6 7 8; do curl -s "http://127.0.0.1:8000/?text=hello$i" & done; wait
//! # stdout: "Our input array has length: 4" (twice, or 1 and then larger batches)
//! ```

use std::sync::Arc;
use std::time::Duration;

use ferroserve::batch::{Batch, BatchOptions};
use ferroserve::{Deployment, Error, HandlerError, Ingress, Request, StatusCode};

/// A stand-in for a text-generation pipeline: one call costs the same whatever the batch size,
/// as on a GPU, which is why batching pays.
struct TextModel;

impl TextModel {
    async fn generate(&self, inputs: Vec<String>) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        inputs
            .into_iter()
            .map(|text| format!("{text}, generated"))
            .collect()
    }
}

struct BatchTextGenerator {
    handle_batch: Batch<String, String>,
}

impl BatchTextGenerator {
    fn new() -> Result<Self, Error> {
        let model = Arc::new(TextModel);
        let handle_batch =
            BatchOptions::new()
                .max_batch_size(4)
                .build(move |inputs: Vec<String>| {
                    let model = model.clone();
                    async move {
                        println!("Our input array has length: {}", inputs.len());
                        model.generate(inputs).await
                    }
                })?;
        Ok(BatchTextGenerator { handle_batch })
    }
}

impl Ingress for BatchTextGenerator {
    type Output = Result<String, HandlerError>;

    async fn call(&self, request: Request) -> Self::Output {
        let Some(text) = request.query_params().get("text").map(str::to_owned) else {
            return Err(Error::bad_request(
                StatusCode::BAD_REQUEST,
                "missing query parameter 'text'",
            )
            .into());
        };
        Ok(self.handle_batch.call(text).await?)
    }
}

fn main() -> Result<(), Error> {
    ferroserve::run(
        Deployment::new("BatchTextGenerator").bind_async(|| async { BatchTextGenerator::new() }),
    )
}
