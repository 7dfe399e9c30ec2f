//! The streaming example of Ray Serve's HTTP guide: `GET /?max=10` streams `0` … `9`, one chunk
//! every 0.1 s, each arriving as it is produced.
//!
//! ```sh
//! cargo run --example streaming
//! curl -N "http://127.0.0.1:8000/?max=10"
//! ```

use std::time::Duration;

use async_stream::stream;
use ferroserve::stream::StreamingResponse;
use ferroserve::{Deployment, Error, HandlerError, Ingress, Request, StatusCode};
use futures_util::Stream;

struct StreamingResponder;

impl StreamingResponder {
    fn generate_numbers(max: u32) -> impl Stream<Item = String> {
        stream! {
            for i in 0..max {
                yield i.to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Ingress for StreamingResponder {
    type Output = Result<StreamingResponse, HandlerError>;

    async fn call(&self, request: Request) -> Self::Output {
        let max = request.query_params().get("max").unwrap_or("25").to_owned();
        let max: u32 = max.parse().map_err(|_| {
            Error::bad_request(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("max must be a non-negative integer, got {max:?}"),
            )
        })?;
        Ok(StreamingResponse::new(Self::generate_numbers(max))
            .status(StatusCode::OK)
            .media_type("text/plain"))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Deployment::new("StreamingResponder").bind(|| StreamingResponder))
}
