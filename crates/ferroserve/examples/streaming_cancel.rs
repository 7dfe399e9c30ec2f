//! The stream-cancellation example of Ray Serve's HTTP guide: streams numbers forever; when the
//! client disconnects, the generator is cancelled and prints `Cancelled! Exiting.`
//!
//! ```sh
//! cargo run --example streaming_cancel
//! curl -N --max-time 1 http://127.0.0.1:8000/   # the server prints "Cancelled! Exiting."
//! ```

use std::time::Duration;

use async_stream::stream;
use ferroserve::stream::StreamingResponse;
use ferroserve::{Deployment, Ingress, Request, StatusCode};
use futures_util::Stream;

struct StreamingResponder;

impl StreamingResponder {
    fn generate_forever() -> impl Stream<Item = String> {
        stream! {
            // Ray's `except asyncio.CancelledError:`.
            let _cancelled = ferroserve::on_cancel(|| println!("Cancelled! Exiting."));
            let mut i: u64 = 0;
            loop {
                yield i.to_string();
                i += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Ingress for StreamingResponder {
    type Output = StreamingResponse;

    async fn call(&self, _request: Request) -> StreamingResponse {
        StreamingResponse::new(Self::generate_forever())
            .status(StatusCode::OK)
            .media_type("text/plain")
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Deployment::new("StreamingResponder").bind(|| StreamingResponder))
}
