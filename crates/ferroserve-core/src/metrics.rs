//! Metric series kept by the runtime: striped counters and histograms, each deployment's
//! replica-side series, and the process-wide series fed by the supervisors and batchers.
//!
//! Recording costs a few uncontended relaxed atomic increments (label sets are resolved once);
//! nothing here formats text. The HTTP layer reads these series at scrape time and renders the
//! Prometheus text (`serve_deployment_*`, `serve_actual_batch_size`, `serve_autoscaling_*`,
//! `serve_health_check_failures_total`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::sync::lock;

/// Ray Serve's latency buckets (ms), in µs.
pub const LATENCY_BOUNDS_US: [u64; 17] = [
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
    600_000_000,
];

/// The buckets of `serve_actual_batch_size`.
pub const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Stripes per counter: each thread adds to its own stripe (its own cache lines), so that
/// worker threads counting the same series do not contend; a read sums the stripes.
const SHARDS: usize = 8;

/// This thread's stripe (threads are assigned round-robin on first use).
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// `n` counters, striped over `SHARDS` regions at least one cache line (128 bytes) apart.
/// Adding is one uncontended relaxed atomic increment.
pub struct Sharded {
    cells: Box<[AtomicU64]>,
    stride: usize,
}

impl Sharded {
    /// `n` counters at zero.
    pub fn new(n: usize) -> Self {
        // 16 cells are 128 bytes: the unused tail of each stripe keeps stripes off each
        // other's cache lines whatever the allocation's alignment.
        let stride = n.next_multiple_of(16) + 16;
        Sharded {
            cells: (0..stride * SHARDS).map(|_| AtomicU64::new(0)).collect(),
            stride,
        }
    }

    /// Adds `value` to counter `i`.
    pub fn add(&self, i: usize, value: u64) {
        self.cells[shard() * self.stride + i].fetch_add(value, Relaxed);
    }

    /// Counter `i`, summed over every stripe.
    pub fn get(&self, i: usize) -> u64 {
        (0..SHARDS)
            .map(|s| self.cells[s * self.stride + i].load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// A histogram with fixed bounds, in integer units (µs for latencies), read in `unit`-times
/// larger units (ms). Observing costs two uncontended relaxed increments.
pub struct Histogram {
    bounds: &'static [u64],
    /// Per-bucket counts (not cumulative), then `+Inf`, then the sum.
    cells: Sharded,
    unit: f64,
}

/// A histogram read at one moment, in its reading unit.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`, cumulative, then `(None, count)` for
    /// `+Inf`.
    pub buckets: Vec<(Option<f64>, u64)>,
    /// Every observation.
    pub count: u64,
    /// The sum of the observations.
    pub sum: f64,
}

impl Histogram {
    /// A histogram over `bounds` (integer units), read in units `unit` times larger.
    pub fn new(bounds: &'static [u64], unit: f64) -> Self {
        Histogram {
            bounds,
            cells: Sharded::new(bounds.len() + 2),
            unit,
        }
    }

    /// A latency histogram over Ray's buckets: observed in µs, read in ms.
    pub fn latency() -> Self {
        Histogram::new(&LATENCY_BOUNDS_US, 1000.0)
    }

    /// Records one value (in the histogram's integer units).
    pub fn observe(&self, value: u64) {
        let n = self.bounds.len();
        let i = self.bounds.iter().position(|&b| value <= b).unwrap_or(n);
        self.cells.add(i, 1);
        self.cells.add(n + 1, value);
    }

    /// Records a duration (in µs).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        (0..=self.bounds.len()).map(|i| self.cells.get(i)).sum()
    }

    /// The buckets, count and sum now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for i in 0..=self.bounds.len() {
            cumulative += self.cells.get(i);
            let le = self.bounds.get(i).map(|&b| b as f64 / self.unit);
            buckets.push((le, cumulative));
        }
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum: self.cells.get(self.bounds.len() + 1) as f64 / self.unit,
        }
    }
}

/// The replica-side series of one deployment (shared by every version of it that takes over
/// the same replica set). Bound to its application when routes are published.
pub struct DeploymentMetrics {
    deployment: Arc<str>,
    app: ArcSwap<String>,
    enabled: AtomicBool,
    /// Requests, errors.
    counts: Sharded,
    latency: Histogram,
}

impl std::fmt::Debug for DeploymentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentMetrics")
            .field("deployment", &self.deployment)
            .field("application", &self.app.load())
            .finish_non_exhaustive()
    }
}

impl DeploymentMetrics {
    /// Series for deployment `name`, not yet bound to an application.
    pub fn new(name: &Arc<str>) -> Self {
        DeploymentMetrics {
            deployment: name.clone(),
            app: ArcSwap::from_pointee(String::new()),
            enabled: AtomicBool::new(true),
            counts: Sharded::new(2),
            latency: Histogram::latency(),
        }
    }

    /// Names the application this deployment belongs to (for logs and labels) and turns
    /// collection on or off (as the server's metrics are).
    pub fn bind(&self, app: &str, enabled: bool) {
        if **self.app.load() != app {
            self.app.store(Arc::new(app.to_owned()));
        }
        self.enabled.store(enabled, Relaxed);
    }

    /// The deployment's name.
    pub fn deployment(&self) -> &Arc<str> {
        &self.deployment
    }

    /// The application's name (`""` until bound).
    pub fn app(&self) -> Arc<String> {
        self.app.load_full()
    }

    /// When a request starts on a replica: `Some(now)` if collecting.
    pub fn start(&self) -> Option<Instant> {
        self.enabled.load(Relaxed).then(Instant::now)
    }

    /// Records one request that ran on a replica since `start`.
    pub fn finish(&self, start: Option<Instant>, failed: bool) {
        let Some(start) = start else { return };
        self.counts.add(0, 1);
        if failed {
            self.counts.add(1, 1);
        }
        self.latency.observe_duration(start.elapsed());
    }

    /// Requests that ran on a replica.
    pub fn requests(&self) -> u64 {
        self.counts.get(0)
    }

    /// Requests whose handler panicked or answered a server error.
    pub fn errors(&self) -> u64 {
        self.counts.get(1)
    }

    /// Replica processing time, from taking a slot to the handler's return.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }
}

// ── process-wide series fed by the supervisors and the batchers ────────────────────────────

/// The process-wide series, as read at one moment.
#[derive(Default)]
pub struct GlobalSeries {
    /// (application, deployment, direction `up`/`down`) → autoscaling decisions.
    pub decisions: BTreeMap<(String, String, &'static str), u64>,
    /// (application, deployment) → the autoscaler's target replicas.
    pub targets: BTreeMap<(String, String), usize>,
    /// (application, deployment) → failed health checks.
    pub health_failures: BTreeMap<(String, String), u64>,
    /// batch function name → batch sizes.
    pub batches: BTreeMap<String, Arc<Histogram>>,
}

fn global() -> MutexGuard<'static, GlobalSeries> {
    static GLOBAL: OnceLock<Mutex<GlobalSeries>> = OnceLock::new();
    lock(GLOBAL.get_or_init(Default::default))
}

/// Runs `f` on the process-wide series (for a scrape). Takes a process-wide lock.
pub fn with_global<R>(f: impl FnOnce(&GlobalSeries) -> R) -> R {
    f(&global())
}

/// Counts one autoscaling decision of `deployment` in `app` from `from` to `to` replicas
/// (`serve_autoscaling_decisions_total`, direction `up` or `down`; no-op when equal) and sets
/// `serve_autoscaling_target_replicas` to `to`. Takes a process-wide lock: for a supervisor's
/// loop, not for a request path.
pub fn autoscaling_decision(app: &str, deployment: &str, from: usize, to: usize) {
    let mut g = global();
    let key = (app.to_owned(), deployment.to_owned());
    g.targets.insert(key.clone(), to);
    if from != to {
        let direction = if to > from { "up" } else { "down" };
        *g.decisions.entry((key.0, key.1, direction)).or_default() += 1;
    }
}

/// Counts one failed health check of a replica of `deployment` in `app`
/// (`serve_health_check_failures_total`). Takes a process-wide lock.
pub fn health_check_failed(app: &str, deployment: &str) {
    *global()
        .health_failures
        .entry((app.to_owned(), deployment.to_owned()))
        .or_default() += 1;
}

/// The batch-size histogram of batch function `name` (created on first use; the same one
/// afterwards). Takes a process-wide lock: call it once per batcher and keep the handle.
pub fn batch_size_histogram(name: &str) -> Arc<Histogram> {
    global()
        .batches
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(Histogram::new(&BATCH_BOUNDS, 1.0)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_ms() {
        let h = Histogram::latency();
        h.observe_duration(Duration::from_micros(1_500));
        h.observe_duration(Duration::from_millis(7));
        h.observe_duration(Duration::from_secs(1000));
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (Some(1.0), 0));
        assert_eq!(s.buckets[1], (Some(2.0), 1));
        assert_eq!(s.buckets[3], (Some(10.0), 2));
        assert_eq!(s.buckets[16], (Some(600000.0), 2));
        assert_eq!(s.buckets[17], (None, 3));
        assert_eq!((s.count, s.sum), (3, 1000008.5));
    }

    #[test]
    fn stripes_sum_across_threads() {
        let c = Arc::new(Sharded::new(3));
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(2, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((c.get(0), c.get(2)), (0, (SHARDS as u64 + 3) * 1000));
    }

    #[test]
    fn autoscaling_and_health_series() {
        autoscaling_decision("unit-app", "D", 1, 3);
        autoscaling_decision("unit-app", "D", 3, 2);
        autoscaling_decision("unit-app", "D", 2, 2);
        health_check_failed("unit-app", "D");
        batch_size_histogram("unit-batch").observe(3);
        batch_size_histogram("unit-batch").observe(8);
        with_global(|g| {
            let key = || ("unit-app".to_owned(), "D".to_owned());
            assert_eq!(g.decisions[&(key().0, key().1, "up")], 1);
            assert_eq!(g.decisions[&(key().0, key().1, "down")], 1);
            assert_eq!(g.targets[&key()], 2);
            assert_eq!(g.health_failures[&key()], 1);
            let sizes = g.batches["unit-batch"].snapshot();
            assert_eq!((sizes.count, sizes.sum), (2, 11.0));
            assert_eq!(sizes.buckets[2], (Some(4.0), 1));
        });
    }
}
