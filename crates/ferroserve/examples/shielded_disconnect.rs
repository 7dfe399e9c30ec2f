//! The shielded disconnect example of Ray Serve's HTTP guide: a shielded one-second `snore` still
//! prints `ZZZ` after the request that started it is cancelled.
//!
//! ```sh
//! cargo run --example shielded_disconnect
//! curl --max-time 0.5 http://127.0.0.1:8000/
//! # SnoringSleeper received request!
//! # SnoringSleeper's request was cancelled!
//! # ZZZ                                       (about 1 s after the request began)
//! ```

use std::time::Duration;

use ferroserve::{Deployment, Ingress, Request};

struct SnoringSleeper;

impl SnoringSleeper {
    async fn snore() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("ZZZ");
    }
}

impl Ingress for SnoringSleeper {
    type Output = &'static str;

    async fn call(&self, _request: Request) -> &'static str {
        let _cancelled =
            ferroserve::on_cancel(|| println!("SnoringSleeper's request was cancelled!"));
        println!("SnoringSleeper received request!");
        // Prevent snore() from being cancelled (Ray's `asyncio.shield`).
        ferroserve::shield(Self::snore()).await;
        "rested"
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Deployment::new("SnoringSleeper").bind(|| SnoringSleeper))
}
