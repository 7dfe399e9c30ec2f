//! The basic disconnect example of Ray Serve's HTTP guide: the handler sleeps "forever"; when the
//! client gives up, the request is cancelled and the handler says so.
//!
//! ```sh
//! cargo run --example disconnect
//! curl --max-time 0.5 http://127.0.0.1:8000/   # prints "Replica received request!", then "Request got cancelled!"
//! ```

use std::time::Duration;

use ferroserve::{Deployment, Ingress, Request};

struct Startled;

impl Ingress for Startled {
    type Output = &'static str;

    async fn call(&self, _request: Request) -> &'static str {
        // Ray's `except asyncio.CancelledError:` — runs only if the request is cancelled.
        let _cancelled = ferroserve::on_cancel(|| println!("Request got cancelled!"));
        println!("Replica received request!");
        tokio::time::sleep(Duration::from_secs(10_000)).await;
        "done"
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Deployment::new("startled").bind(|| Startled))
}
