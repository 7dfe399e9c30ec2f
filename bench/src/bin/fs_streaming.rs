//! The `streaming` scenario on ferroserve, shaped like `crates/ferroserve/examples/streaming.rs`:
//! an `Ingress` deployment answers with a [`StreamingResponse`] over `stream::iter` (100 chunks,
//! produced immediately, no sleeps), mounted under `/stream`.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT`; `GET /stream` → `chunk 00\n` … `chunk 99\n`, chunked.

use ferroserve::stream::StreamingResponse;
use ferroserve::{Application, Deployment, Ingress, Request};

struct StreamingResponder;

impl Ingress for StreamingResponder {
    type Output = StreamingResponse;

    async fn call(&self, _request: Request) -> Self::Output {
        let chunks = (0..100).map(|i| format!("chunk {i:02}\n"));
        StreamingResponse::new(futures_util::stream::iter(chunks)).media_type("text/plain")
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let app = Deployment::new("StreamingResponder").bind(|| StreamingResponder);
    ferroserve::run(Application::new(app).route_prefix("/stream"))
}
