//! The `counter` scenario on ferroserve: the same code as `crates/ferroserve/examples/counter.rs`.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT`; `GET /?a=b&c=d` → `{"a":"b","c":"d"}`.

use ferroserve::{Deployment, Ingress, Json, QueryParams, Request};

struct Counter;

impl Ingress for Counter {
    type Output = Json<QueryParams>;

    async fn call(&self, request: Request) -> Self::Output {
        Json(request.query_params())
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Deployment::new("Counter").bind(|| Counter))
}
