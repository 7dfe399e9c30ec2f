//! Cancellation latency: time from the client closing its connection to the handler observing
//! the cancellation, over many requests (goal: ≤ 1 ms median, ≤ 2 ms p99).
//!
//! `cargo run --release -p ferroserve-bench --bin cancel_latency -- [N]` (default N = 1000).
//! Server and client share one process, so both timestamps come from the same clock. The client
//! sends a request over a raw TCP connection, waits until the handler reports it is running,
//! then closes the socket; the handler's `on_cancel` guard stamps the moment it sees the cancel.

use std::time::{Duration, Instant};

use ferroserve::{Deployment, Ingress, Request, Serve};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

struct Sleeper {
    arrived: mpsc::UnboundedSender<()>,
    cancelled: mpsc::UnboundedSender<Instant>,
}

impl Ingress for Sleeper {
    type Output = &'static str;

    async fn call(&self, _request: Request) -> &'static str {
        let cancelled = self.cancelled.clone();
        let _guard = ferroserve::on_cancel(move || {
            let _ = cancelled.send(Instant::now());
        });
        let _ = self.arrived.send(());
        std::future::pending::<()>().await;
        "unreachable"
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), ferroserve::Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let (cancelled_tx, mut cancelled) = mpsc::unbounded_channel();
    let app = Deployment::new("Sleeper").bind(move || Sleeper {
        arrived: arrived_tx.clone(),
        cancelled: cancelled_tx.clone(),
    });
    let server = Serve::new()
        .app(app)
        .host("127.0.0.1")
        .port(0)
        .start()
        .await?;
    let addr = server.local_addr();

    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
            .await?;
        arrived.recv().await.expect("handler reports arrival");
        let closed = Instant::now();
        drop(tcp);
        let seen = cancelled.recv().await.expect("handler reports the cancel");
        // The first tenth is warm-up.
        if i >= n / 10 {
            samples.push(seen.saturating_duration_since(closed));
        }
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("| cancels | median | p99 | max |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {} | {:.0} µs | {:.0} µs | {:.0} µs |",
        samples.len(),
        us(percentile(&samples, 0.5)),
        us(percentile(&samples, 0.99)),
        us(*samples.last().unwrap()),
    );
    server.shutdown().await;
    Ok(())
}
