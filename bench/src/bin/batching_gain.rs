//! Batching throughput gain (issue 8): a model whose every call costs the same whatever the
//! batch size, called by N concurrent callers through a `DeploymentHandle`, unbatched and
//! batched.
//!
//! `cargo run --release -p ferroserve-bench --bin batching_gain -- [CALLERS] [SECONDS]`
//! (defaults 32 callers, 3 s measured per row after 0.5 s of warm-up). In-process: no HTTP.
//!
//! The model is an accelerator that runs one call at a time and spends 5 ms on each
//! (`tokio::time::sleep` under a lock), so unbatched throughput is bounded near 200 calls/s and
//! batching multiplies it by the batch size actually reached. A second table runs the same
//! model at zero cost, which leaves only the batcher's own cost per item to see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferroserve::batch::{Batch, BatchOptions};
use ferroserve::{Deployment, DeploymentHandle, Handles, Ingress, Request, Serve};

/// What one model call costs, whatever its batch size.
const CALL_COST: Duration = Duration::from_millis(5);

/// The accelerator: one call at a time, `cost` each.
#[derive(Default)]
struct Accelerator {
    cost: Duration,
    busy: tokio::sync::Mutex<()>,
    calls: AtomicU64,
    items: AtomicU64,
}

impl Accelerator {
    async fn infer(&self, xs: Vec<u64>) -> Vec<u64> {
        let _busy = self.busy.lock().await;
        if !self.cost.is_zero() {
            tokio::time::sleep(self.cost).await;
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(xs.len() as u64, Ordering::Relaxed);
        xs.into_iter().map(|x| x * 2).collect()
    }
}

/// The deployment: either calls the accelerator per request, or through a batcher.
struct Model {
    accelerator: Arc<Accelerator>,
    batch: Option<Batch<u64, u64>>,
}

struct Predict(u64);

impl Handles<Predict> for Model {
    type Output = u64;

    async fn call(&self, Predict(x): Predict) -> u64 {
        match &self.batch {
            Some(batch) => batch.call(x).await.expect("batch succeeds"),
            None => self.accelerator.infer(vec![x]).await[0],
        }
    }
}

/// The ingress exists only to hand the model's handle to the load generator.
struct Driver;

impl Ingress for Driver {
    type Output = &'static str;

    async fn call(&self, _request: Request) -> &'static str {
        "driver"
    }
}

struct Row {
    mode: String,
    throughput: f64,
    p50: Duration,
    p99: Duration,
    mean_batch: f64,
}

async fn measure(
    cost: Duration,
    max_batch_size: Option<usize>,
    callers: usize,
    seconds: f64,
) -> Row {
    let accelerator = Arc::new(Accelerator {
        cost,
        ..Accelerator::default()
    });
    let acc = accelerator.clone();
    let model = Deployment::new("Model").bind(move || {
        let batch = max_batch_size.map(|n| {
            let acc = acc.clone();
            BatchOptions::new()
                .max_batch_size(n)
                .build(move |xs: Vec<u64>| {
                    let acc = acc.clone();
                    async move { acc.infer(xs).await }
                })
                .expect("valid options")
        });
        Model {
            accelerator: acc.clone(),
            batch,
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let app = Deployment::new("Driver")
        .with(model)
        .bind(move |model: DeploymentHandle<Model>| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(model);
            }
            Driver
        });
    let server = Serve::new()
        .app(app)
        .host("127.0.0.1")
        .port(0)
        .no_admin()
        .start()
        .await
        .expect("server starts");
    let handle = rx.await.expect("driver hands out the model's handle");

    let run = |duration: Duration| {
        let handle = handle.clone();
        async move {
            let end = Instant::now() + duration;
            let tasks: Vec<_> = (0..callers as u64)
                .map(|i| {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        while Instant::now() < end {
                            let t = Instant::now();
                            let y = handle.remote(Predict(i)).await.expect("call succeeds");
                            assert_eq!(y, i * 2);
                            latencies.push(t.elapsed());
                        }
                        latencies
                    })
                })
                .collect();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.expect("caller task"));
            }
            all
        }
    };
    run(Duration::from_millis(500)).await;
    let (calls0, items0) = (
        accelerator.calls.load(Ordering::Relaxed),
        accelerator.items.load(Ordering::Relaxed),
    );
    let started = Instant::now();
    let mut latencies = run(Duration::from_secs_f64(seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let calls = accelerator.calls.load(Ordering::Relaxed) - calls0;
    let items = accelerator.items.load(Ordering::Relaxed) - items0;
    server.shutdown().await;

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    Row {
        mode: match max_batch_size {
            None => "unbatched (direct call)".to_owned(),
            Some(n) => format!("batched, max_batch_size {n}"),
        },
        throughput: latencies.len() as f64 / elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
        mean_batch: items as f64 / calls.max(1) as f64,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let callers: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(32);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);

    for (cost, modes) in [
        (CALL_COST, &[None, Some(1), Some(8), Some(16), Some(32)][..]),
        (Duration::ZERO, &[None, Some(32)][..]),
    ] {
        let mut rows = Vec::new();
        for &mode in modes {
            rows.push(measure(cost, mode, callers, seconds).await);
            eprintln!("done: {} ({cost:?} per call)", rows.last().unwrap().mode);
        }
        print_table(&rows, cost, callers, seconds);
    }
}

fn print_table(rows: &[Row], cost: Duration, callers: usize, seconds: f64) {
    let base = rows[0].throughput;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\n{callers} closed-loop callers, model call cost {} ms (one call at a time), \
         batch_wait_timeout_s 0.01, {seconds} s per row\n",
        cost.as_millis()
    );
    println!("| mode | calls/s | gain | mean batch | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.0} | {:.2}x | {:.1} | {:.3} ms | {:.3} ms |",
            row.mode,
            row.throughput,
            row.throughput / base,
            row.mean_batch,
            ms(row.p50),
            ms(row.p99),
        );
    }
}
