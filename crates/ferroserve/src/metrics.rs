//! Observability: `/metrics` in Prometheus text format, and one access-log line per request.
//!
//! # Metrics
//!
//! The proxy answers `GET /metrics` itself (before route matching, like `/-/healthz`), so an
//! application mounted at `/` cannot serve that path; move it with
//! [`crate::Serve::metrics_path`] (or `http_options.metrics_path`), or turn metrics off with
//! `metrics_path: null`. The admin API serves the same text at `/metrics` when it is on.
//! Names follow Ray Serve's (without the `ray_` prefix) so that dashboards carry over:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `serve_num_http_requests_total` | counter | `route`, `method`, `application`, `status_code` |
//! | `serve_num_http_error_requests_total` | counter | `route`, `method`, `application`, `error_code` (status ≥ 400) |
//! | `serve_num_deployment_http_error_requests_total` | counter | as above, plus the ingress `deployment` |
//! | `serve_http_request_latency_ms` | histogram | `route`, `method`, `application` |
//! | `serve_num_ongoing_http_requests` | gauge | `route`, `application` |
//! | `serve_deployment_request_counter_total` | counter | `deployment`, `application` |
//! | `serve_deployment_error_counter_total` | counter | `deployment`, `application` (panics and 5xx responses) |
//! | `serve_deployment_processing_latency_ms` | histogram | `deployment`, `application` |
//! | `serve_replica_processing_queries` | gauge | `deployment`, `replica`, `application` |
//! | `serve_deployment_queued_queries` | gauge | `deployment`, `application` |
//! | `serve_deployment_replicas` | gauge | `deployment`, `application`, `state` |
//! | `serve_actual_batch_size` | histogram | `function_name` |
//! | `serve_autoscaling_decisions_total` | counter | `deployment`, `application`, `direction` (`up`/`down`) |
//! | `serve_autoscaling_target_replicas` | gauge | `deployment`, `application` |
//! | `serve_health_check_failures_total` | counter | `deployment`, `application` |
//!
//! A request whose client disconnects before the response is counted with status `499`.
//! Proxy latency runs until the response head is ready: for a streaming response, until it
//! starts (a client leaving mid-stream keeps the `200` it was already sent). Replica processing
//! time runs from taking a slot on a replica to the handler's return.
//! Requests to unknown paths are counted under `route=""`, `application=""`; the proxy's own
//! paths (`/-/healthz`, `/-/routes`, the metrics path) are not counted.
//!
//! Cost: label sets are resolved when routes are published (one series block per route and per
//! deployment), so a request costs a handful of relaxed atomic increments and two clock reads;
//! gauges (ongoing, queued, replicas) are read from the routers at scrape time.
//!
//! # Access log
//!
//! With `logging_config.enable_access_log` (default true) every request ends with one `INFO`
//! event of target `ferroserve::access`: `GET /hello 200 0.3ms` with fields `method`, `route`
//! (the application's route prefix), `path`, `status`, `latency_ms`, `request_id` and
//! `application`. When it is off, or filtered out by the log level, it costs one branch.
//! Under ferroserve's own plain-text log output the proxy writes that same line itself,
//! skipping tracing's formatter (about 6,000 instructions per request instead of 15,000); any
//! other subscriber receives the event with its fields.
//!
//! Lines logged while a handler runs carry `application`, `deployment`, `replica` and
//! `request_id` (added by ferroserve's log format, [`crate::serve::init_logging_with`], from a
//! task-local set around the handler: nothing is formatted unless a line is logged).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Method, StatusCode};

use crate::deployment::ReplicaInfo;

/// The default path of the metrics endpoint.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

use crate::access_log::AccessRecord;

/// The tracing target of access-log events.
pub const ACCESS_LOG_TARGET: &str = "ferroserve::access";

/// Ray Serve's latency buckets (ms), in µs.
const LATENCY_BOUNDS_US: [u64; 17] = [
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

const BATCH_BOUNDS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// Checks a metrics path: starts with `/`, is not `/`, has no trailing `/`, no `?`, `#`, `{`,
/// `}` or whitespace, and is not one of the proxy's own paths.
pub(crate) fn validate_metrics_path(path: &str) -> Result<(), String> {
    if matches!(path, "/-/healthz" | "/-/routes") {
        return Err(format!("must not be the proxy's own '{path}'"));
    }
    if !path.starts_with('/')
        || path == "/"
        || path.ends_with('/')
        || path.contains(['?', '#', '{', '}'])
        || path.contains(char::is_whitespace)
    {
        return Err(format!(
            "must start with '/', not be '/', not end with '/' and contain no '?', '#', '{{', '}}' \
             or spaces, got '{path}'"
        ));
    }
    Ok(())
}

/// Stripes per counter: each thread adds to its own stripe (its own cache lines), so that
/// worker threads counting the same series do not contend; a scrape sums the stripes.
const SHARDS: usize = 8;

/// This thread's stripe (threads are assigned round-robin on first use).
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// `n` counters, striped over [`SHARDS`] regions at least one cache line (128 bytes) apart.
/// Adding is one uncontended relaxed atomic increment.
struct Sharded {
    cells: Box<[AtomicU64]>,
    stride: usize,
}

impl Sharded {
    fn new(n: usize) -> Self {
        // 16 cells are 128 bytes: the unused tail of each stripe keeps stripes off each
        // other's cache lines whatever the allocation's alignment.
        let stride = n.next_multiple_of(16) + 16;
        Sharded {
            cells: (0..stride * SHARDS).map(|_| AtomicU64::new(0)).collect(),
            stride,
        }
    }

    fn add(&self, i: usize, value: u64) {
        self.cells[shard() * self.stride + i].fetch_add(value, Relaxed);
    }

    fn get(&self, i: usize) -> u64 {
        (0..SHARDS)
            .map(|s| self.cells[s * self.stride + i].load(Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// A histogram with fixed bounds, in integer units (µs for latencies); rendered in
/// `unit`-times larger units (ms). Observing costs two uncontended relaxed increments.
pub(crate) struct Histogram {
    bounds: &'static [u64],
    /// Per-bucket counts (not cumulative), then `+Inf`, then the sum.
    cells: Sharded,
    unit: f64,
}

impl Histogram {
    fn new(bounds: &'static [u64], unit: f64) -> Self {
        Histogram {
            bounds,
            cells: Sharded::new(bounds.len() + 2),
            unit,
        }
    }

    fn latency() -> Self {
        Histogram::new(&LATENCY_BOUNDS_US, 1000.0)
    }

    /// Records one value (in the histogram's integer units).
    pub(crate) fn observe(&self, value: u64) {
        let n = self.bounds.len();
        let i = self.bounds.iter().position(|&b| value <= b).unwrap_or(n);
        self.cells.add(i, 1);
        self.cells.add(n + 1, value);
    }

    fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    fn count(&self) -> u64 {
        (0..=self.bounds.len()).map(|i| self.cells.get(i)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for i in 0..=self.bounds.len() {
            cumulative += self.cells.get(i);
            match self.bounds.get(i) {
                Some(&b) => {
                    let le = b as f64 / self.unit;
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"{le:?}\"}} {cumulative}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        let sum = self.cells.get(self.bounds.len() + 1) as f64 / self.unit;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum:?}");
    }
}

/// The methods that get their own series; anything else is counted as `OTHER`.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Status codes with a pre-resolved slot (sorted); others go through a locked map.
const STATUSES: [u16; 34] = [
    101, 200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 406, 408,
    409, 410, 411, 413, 414, 415, 422, 429, 431, 499, 500, 501, 502, 503, 504,
];

/// The proxy-side series of one route (or of unknown paths): counts by method and status,
/// latency by method, requests started.
pub(crate) struct RouteMetrics {
    app: String,
    route: String,
    /// Slot 0: requests started; then one slot per (method, status of [`STATUSES`]).
    counts: Sharded,
    /// (method, status) → count, for statuses outside [`STATUSES`] (rare).
    other_statuses: Mutex<BTreeMap<(usize, u16), u64>>,
    latency: Box<[Histogram]>,
}

impl RouteMetrics {
    fn new(app: &str, route: &str) -> Self {
        RouteMetrics {
            app: app.to_owned(),
            route: route.to_owned(),
            counts: Sharded::new(1 + METHODS.len() * STATUSES.len()),
            other_statuses: Mutex::new(BTreeMap::new()),
            latency: METHODS.iter().map(|_| Histogram::latency()).collect(),
        }
    }

    fn start(&self) {
        self.counts.add(0, 1);
    }

    fn record(&self, method: usize, status: u16, latency: Duration) {
        match STATUSES.binary_search(&status) {
            Ok(slot) => self.counts.add(1 + method * STATUSES.len() + slot, 1),
            Err(_) => {
                *self
                    .other_statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((method, status))
                    .or_default() += 1
            }
        }
        self.latency[method].observe_duration(latency);
    }

    /// Every non-zero (method, status, count), by method then status.
    fn by_status(&self) -> Vec<(usize, u16, u64)> {
        let mut out: Vec<(usize, u16, u64)> = self
            .other_statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(&(m, s), &n)| (m, s, n))
            .collect();
        for m in 0..METHODS.len() {
            for (slot, &status) in STATUSES.iter().enumerate() {
                let n = self.counts.get(1 + m * STATUSES.len() + slot);
                if n > 0 {
                    out.push((m, status, n));
                }
            }
        }
        out.sort_unstable();
        out
    }

    fn started(&self) -> u64 {
        self.counts.get(0)
    }
}

/// The proxy's metrics: whether it collects, where it answers, and one series block per route.
pub(crate) struct ProxyMetrics {
    /// `None`: no `/metrics` on the proxy and no collection by this server.
    path: Option<String>,
    access_log: bool,
    /// Every route ever published (a deleted application's counters stay, as counters
    /// should); slot 0 is unknown paths. Requests borrow their block from here, with no
    /// reference count to bounce between cores.
    routes: RouteArena,
}

/// How many distinct (application, route prefix) pairs one server keeps series for.
const MAX_ROUTES: usize = CHUNK * CHUNK;
const CHUNK: usize = 64;

/// [`CHUNK`] route blocks, each set once.
type Chunk = Box<[OnceLock<RouteMetrics>]>;

/// An append-only list of route blocks that hands out plain references: chunks are allocated
/// on demand and never move or shrink while the server lives.
struct RouteArena {
    chunks: Box<[OnceLock<Chunk>]>,
    /// Blocks in use; appends take this lock (when routes are published), reads do not.
    len: Mutex<usize>,
}

impl RouteArena {
    fn new() -> Self {
        RouteArena {
            chunks: (0..CHUNK).map(|_| OnceLock::new()).collect(),
            len: Mutex::new(0),
        }
    }

    fn get(&self, i: usize) -> Option<&RouteMetrics> {
        self.chunks.get(i / CHUNK)?.get()?.get(i % CHUNK)?.get()
    }

    fn len(&self) -> usize {
        *self.len.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The block of (`app`, `route`), added if new; `None` once [`MAX_ROUTES`] are in use.
    fn find_or_push(&self, app: &str, route: &str) -> Option<usize> {
        let mut len = self.len.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = (0..*len).find(|&i| {
            self.get(i)
                .is_some_and(|r| r.app == app && r.route == route)
        }) {
            return Some(i);
        }
        if *len == MAX_ROUTES {
            tracing::warn!(
                app,
                route,
                "more than {MAX_ROUTES} routes: not counted in metrics"
            );
            return None;
        }
        let i = *len;
        let chunk =
            self.chunks[i / CHUNK].get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        let _ = chunk[i % CHUNK].set(RouteMetrics::new(app, route));
        *len += 1;
        Some(i)
    }
}

/// A route's metric block in its server's [`ProxyMetrics`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RouteId(usize);

impl ProxyMetrics {
    /// Metrics served at `path` (`None`: off), access log on or off.
    pub(crate) fn new(path: Option<String>, access_log: bool) -> Self {
        let routes = RouteArena::new();
        routes.find_or_push("", "");
        ProxyMetrics {
            path,
            access_log,
            routes,
        }
    }

    /// Whether this server collects metrics.
    pub(crate) fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The path the proxy answers with the metrics text, if on.
    pub(crate) fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The series block of route `prefix` of application `app`, the same one every time the
    /// routes are published. `None` when metrics are off. Called when routes are published.
    pub(crate) fn route(&self, app: &str, prefix: &str) -> Option<RouteId> {
        if !self.enabled() {
            return None;
        }
        self.routes.find_or_push(app, prefix).map(RouteId)
    }

    /// Starts observing one request: `route` is the matched route's block and name, `None` for
    /// an unknown path. Finish it with [`HttpObservation::finish`]; dropped unfinished, it
    /// records a `499` (the client went away).
    pub(crate) fn observe(
        &self,
        route: Option<(Option<RouteId>, &str, &str)>,
        method: &Method,
        path: &str,
        request_id: &Arc<str>,
    ) -> HttpObservation<'_> {
        let metrics = match route {
            Some((id, _, _)) => id.and_then(|RouteId(i)| self.routes.get(i)),
            None if self.enabled() => self.routes.get(0),
            None => None,
        };
        if let Some(m) = metrics {
            m.start();
        }
        let log = (self.access_log
            && tracing::enabled!(target: "ferroserve::access", tracing::Level::INFO))
        .then(|| {
            let (route, app) = route.map_or(("", ""), |(_, r, a)| (r, a));
            Box::new(AccessLog {
                method: method.clone(),
                route: route.to_owned(),
                path: path.to_owned(),
                application: app.to_owned(),
                request_id: request_id.clone(),
            })
        });
        HttpObservation {
            start: (metrics.is_some() || log.is_some()).then(Instant::now),
            metrics,
            method: method_index(method) as u8,
            log,
            done: false,
        }
    }
}

struct AccessLog {
    method: Method,
    route: String,
    path: String,
    application: String,
    request_id: Arc<str>,
}

/// One HTTP request being observed. See [`ProxyMetrics::observe`].
pub(crate) struct HttpObservation<'a> {
    metrics: Option<&'a RouteMetrics>,
    method: u8,
    start: Option<Instant>,
    log: Option<Box<AccessLog>>,
    done: bool,
}

impl HttpObservation<'_> {
    /// Records the response's status (and logs the access line).
    pub(crate) fn finish(mut self, status: StatusCode) {
        self.done = true;
        self.record(status.as_u16());
    }

    fn record(&mut self, status: u16) {
        let latency = self.start.map_or(Duration::ZERO, |s| s.elapsed());
        if let Some(m) = self.metrics {
            m.record(usize::from(self.method), status, latency);
        }
        if let Some(log) = self.log.take() {
            let record = AccessRecord {
                method: &log.method,
                route: &log.route,
                path: &log.path,
                status,
                latency_ms: latency.as_micros() as f64 / 1000.0,
                request_id: &log.request_id,
                application: &log.application,
            };
            if !crate::access_log::write_fast(&record) {
                log_access_event(&record);
            }
        }
    }
}

/// The access log's tracing event, for subscribers other than ferroserve's plain-text one
/// (see [`crate::access_log`]).
pub(crate) fn log_access_event(r: &AccessRecord<'_>) {
    tracing::info!(
        target: "ferroserve::access",
        method = %r.method,
        route = %r.route,
        path = %r.path,
        status = r.status,
        latency_ms = r.latency_ms,
        request_id = %r.request_id,
        application = %r.application,
        "{} {} {} {:.1}ms",
        r.method,
        r.route,
        r.status,
        r.latency_ms,
    );
}

impl Drop for HttpObservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record(499);
        }
    }
}

/// The replica-side series of one deployment (shared by every version of it that adopts the
/// same router). Bound to its application when routes are published.
pub(crate) struct DeploymentMetrics {
    deployment: Arc<str>,
    app: ArcSwap<String>,
    enabled: AtomicBool,
    /// Requests, errors.
    counts: Sharded,
    latency: Histogram,
}

impl DeploymentMetrics {
    /// Series for deployment `name`, not yet bound to an application.
    pub(crate) fn new(name: &Arc<str>) -> Self {
        DeploymentMetrics {
            deployment: name.clone(),
            app: ArcSwap::from_pointee(String::new()),
            enabled: AtomicBool::new(true),
            counts: Sharded::new(2),
            latency: Histogram::latency(),
        }
    }

    /// Names the application this deployment belongs to (for logs) and turns collection on or
    /// off (as the server's metrics are).
    pub(crate) fn bind(&self, app: &str, enabled: bool) {
        if **self.app.load() != app {
            self.app.store(Arc::new(app.to_owned()));
        }
        self.enabled.store(enabled, Relaxed);
    }

    /// The application's name (`""` until bound).
    pub(crate) fn app(&self) -> Arc<String> {
        self.app.load_full()
    }

    /// When a request starts on a replica: `Some(now)` if collecting.
    pub(crate) fn start(&self) -> Option<Instant> {
        self.enabled.load(Relaxed).then(Instant::now)
    }

    /// Records one request that ran on a replica since `start`.
    pub(crate) fn finish(&self, start: Option<Instant>, failed: bool) {
        let Some(start) = start else { return };
        self.counts.add(0, 1);
        if failed {
            self.counts.add(1, 1);
        }
        self.latency.observe_duration(start.elapsed());
    }
}

tokio::task_local! {
    /// The replica a request runs on, while its handler runs (see [`in_replica`]).
    static REPLICA: Arc<ReplicaLabels>;
}

/// Who serves a request: ferroserve's log format adds these to every line logged while a
/// handler runs.
pub(crate) struct ReplicaLabels {
    application: Arc<String>,
    deployment: Arc<str>,
    replica: String,
}

impl ReplicaLabels {
    /// The labels of replica `replica` of `deployment` (its application from `metrics`).
    pub(crate) fn new(metrics: &DeploymentMetrics, replica: &str) -> Self {
        ReplicaLabels {
            application: metrics.app(),
            deployment: metrics.deployment.clone(),
            replica: replica.to_owned(),
        }
    }
}

/// Runs `fut` as work of the replica `labels` name: lines it logs carry them. Costs a
/// thread-local swap per poll; nothing is formatted unless a line is logged.
pub(crate) fn in_replica<F: std::future::Future>(
    labels: Arc<ReplicaLabels>,
    fut: F,
) -> impl std::future::Future<Output = F::Output> {
    REPLICA.scope(labels, fut)
}

/// Runs the synchronous `f` as work of the replica `labels` name.
pub(crate) fn in_replica_sync<R>(labels: Arc<ReplicaLabels>, f: impl FnOnce() -> R) -> R {
    REPLICA.sync_scope(labels, f)
}

/// The labels of the request being handled on this thread, with its request id, as
/// `(application, deployment, replica, request_id)`.
pub(crate) fn with_current_labels<R>(f: impl FnOnce(&str, &str, &str, &str) -> R) -> Option<R> {
    REPLICA
        .try_with(|l| {
            let ctx = crate::context::current();
            let request_id = ctx.as_ref().map_or("", |c| c.request_id());
            f(&l.application, &l.deployment, &l.replica, request_id)
        })
        .ok()
}

/// What a scrape reads from one deployment of one application.
pub(crate) struct DeploymentSample {
    pub(crate) app: String,
    pub(crate) metrics: Arc<DeploymentMetrics>,
    pub(crate) queued: usize,
    pub(crate) replicas: Vec<ReplicaInfo>,
    /// Whether it is its application's ingress.
    pub(crate) ingress: bool,
}

// ── process-wide series fed by the controller and the batcher ──────────────────────────────

#[derive(Default)]
struct Global {
    /// (application, deployment, direction) → decisions.
    decisions: BTreeMap<(String, String, &'static str), u64>,
    /// (application, deployment) → target replicas.
    targets: BTreeMap<(String, String), usize>,
    /// (application, deployment) → failed health checks.
    health_failures: BTreeMap<(String, String), u64>,
    /// function name → batch sizes.
    batches: BTreeMap<String, Arc<Histogram>>,
}

fn global() -> MutexGuard<'static, Global> {
    static GLOBAL: OnceLock<Mutex<Global>> = OnceLock::new();
    GLOBAL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Counts one autoscaling decision of `deployment` in `app` from `from` to `to` replicas
/// (`serve_autoscaling_decisions_total`, direction `up` or `down`; no-op when equal) and sets
/// `serve_autoscaling_target_replicas` to `to`. Takes a process-wide lock: for the controller's
/// decision loop, not for a request path.
pub(crate) fn autoscaling_decision(app: &str, deployment: &str, from: usize, to: usize) {
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
pub(crate) fn health_check_failed(app: &str, deployment: &str) {
    *global()
        .health_failures
        .entry((app.to_owned(), deployment.to_owned()))
        .or_default() += 1;
}

/// A pre-resolved `serve_actual_batch_size{function_name}` histogram: observing costs two
/// atomic increments. Resolve it once per batch function with [`batch_size_histogram`].
#[derive(Clone)]
pub(crate) struct BatchSizes(Arc<Histogram>);

impl BatchSizes {
    /// Records one batch of `size` items.
    pub(crate) fn observe(&self, size: usize) {
        self.0.observe(size as u64);
    }
}

/// The batch-size histogram of batch function `name` (created on first use; the same one
/// afterwards). Takes a process-wide lock: call it once and keep the handle.
pub(crate) fn batch_size_histogram(name: &str) -> BatchSizes {
    let mut g = global();
    let h = g
        .batches
        .entry(name.to_owned())
        .or_insert_with(|| Arc::new(Histogram::new(&BATCH_BOUNDS, 1.0)))
        .clone();
    BatchSizes(h)
}

/// Records one batch of `size` items run by batch function `name`. Looks the series up under a
/// process-wide lock; a hot loop should keep a [`batch_size_histogram`] handle instead.
pub(crate) fn batch_size(name: &str, size: usize) {
    batch_size_histogram(name).observe(size);
}

// ── rendering ───────────────────────────────────────────────────────────────────────────────

/// `value` escaped for a label value in the text format.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics text (Prometheus text format 0.0.4) for the proxy's routes and `deployments`.
pub(crate) fn render(proxy: &ProxyMetrics, deployments: &[DeploymentSample]) -> String {
    let mut out = String::with_capacity(8192);
    let routes: Vec<&RouteMetrics> = if proxy.enabled() {
        (0..proxy.routes.len())
            .filter_map(|i| proxy.routes.get(i))
            .collect()
    } else {
        Vec::new()
    };
    let ingress_of = |app: &str| {
        deployments
            .iter()
            .find(|d| d.ingress && d.app == app)
            .map(|d| d.metrics.deployment.clone())
    };
    let route_labels = |r: &RouteMetrics, m: usize| {
        format!(
            "route=\"{}\",method=\"{}\",application=\"{}\"",
            escape(&r.route),
            METHODS[m],
            escape(&r.app)
        )
    };

    header(
        &mut out,
        "serve_num_http_requests_total",
        "counter",
        "HTTP requests answered by the proxy (499: the client disconnected first).",
    );
    let statuses: Vec<Vec<(usize, u16, u64)>> = routes.iter().map(|r| r.by_status()).collect();
    let each_status = |f: &mut dyn FnMut(&RouteMetrics, usize, u16, u64)| {
        for (r, statuses) in routes.iter().zip(&statuses) {
            for &(m, status, n) in statuses {
                f(r, m, status, n);
            }
        }
    };
    each_status(&mut |r, m, status, n| {
        let _ = writeln!(
            out,
            "serve_num_http_requests_total{{{},status_code=\"{status}\"}} {n}",
            route_labels(r, m)
        );
    });
    header(
        &mut out,
        "serve_num_http_error_requests_total",
        "counter",
        "HTTP requests answered with a status of 400 or more.",
    );
    each_status(&mut |r, m, status, n| {
        if status >= 400 {
            let _ = writeln!(
                out,
                "serve_num_http_error_requests_total{{{},error_code=\"{status}\"}} {n}",
                route_labels(r, m)
            );
        }
    });
    header(
        &mut out,
        "serve_num_deployment_http_error_requests_total",
        "counter",
        "HTTP requests answered with a status of 400 or more, by ingress deployment.",
    );
    each_status(&mut |r, m, status, n| {
        if status >= 400 {
            if let Some(d) = ingress_of(&r.app) {
                let _ = writeln!(
                    out,
                    "serve_num_deployment_http_error_requests_total{{{},deployment=\"{}\",error_code=\"{status}\"}} {n}",
                    route_labels(r, m),
                    escape(&d)
                );
            }
        }
    });
    header(
        &mut out,
        "serve_http_request_latency_ms",
        "histogram",
        "End-to-end latency of HTTP requests at the proxy, in milliseconds.",
    );
    for r in &routes {
        for (m, h) in r.latency.iter().enumerate() {
            if h.count() > 0 {
                h.render(
                    &mut out,
                    "serve_http_request_latency_ms",
                    &route_labels(r, m),
                );
            }
        }
    }
    header(
        &mut out,
        "serve_num_ongoing_http_requests",
        "gauge",
        "HTTP requests the proxy is serving now.",
    );
    for (r, statuses) in routes.iter().zip(&statuses) {
        let finished: u64 = statuses.iter().map(|&(_, _, n)| n).sum();
        let ongoing = r.started().saturating_sub(finished);
        let _ = writeln!(
            out,
            "serve_num_ongoing_http_requests{{route=\"{}\",application=\"{}\"}} {ongoing}",
            escape(&r.route),
            escape(&r.app)
        );
    }

    let dep_labels = |d: &DeploymentSample| {
        format!(
            "deployment=\"{}\",application=\"{}\"",
            escape(&d.metrics.deployment),
            escape(&d.app)
        )
    };
    header(
        &mut out,
        "serve_deployment_request_counter_total",
        "counter",
        "Requests that ran on a replica of the deployment.",
    );
    for d in deployments {
        let n = d.metrics.counts.get(0);
        let _ = writeln!(
            out,
            "serve_deployment_request_counter_total{{{}}} {n}",
            dep_labels(d)
        );
    }
    header(
        &mut out,
        "serve_deployment_error_counter_total",
        "counter",
        "Requests whose handler panicked or answered a 5xx.",
    );
    for d in deployments {
        let n = d.metrics.counts.get(1);
        let _ = writeln!(
            out,
            "serve_deployment_error_counter_total{{{}}} {n}",
            dep_labels(d)
        );
    }
    header(
        &mut out,
        "serve_deployment_processing_latency_ms",
        "histogram",
        "Time a replica spent on a request (from taking a slot to the handler's return), in milliseconds.",
    );
    for d in deployments {
        d.metrics.latency.render(
            &mut out,
            "serve_deployment_processing_latency_ms",
            &dep_labels(d),
        );
    }
    header(
        &mut out,
        "serve_replica_processing_queries",
        "gauge",
        "Requests running on the replica now.",
    );
    for d in deployments {
        for r in &d.replicas {
            let _ = writeln!(
                out,
                "serve_replica_processing_queries{{{},replica=\"{}\"}} {}",
                dep_labels(d),
                escape(&r.replica_id),
                r.ongoing_requests
            );
        }
    }
    header(
        &mut out,
        "serve_deployment_queued_queries",
        "gauge",
        "Requests waiting for a replica of the deployment.",
    );
    for d in deployments {
        let _ = writeln!(
            out,
            "serve_deployment_queued_queries{{{}}} {}",
            dep_labels(d),
            d.queued
        );
    }
    header(
        &mut out,
        "serve_deployment_replicas",
        "gauge",
        "Replicas of the deployment, by state.",
    );
    for d in deployments {
        // Every state a replica is in, named as `status` names it, and the three basic ones
        // even when empty.
        let mut counts: BTreeMap<&str, usize> = ["RUNNING", "STARTING", "STOPPING"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
        for r in &d.replicas {
            *counts.entry(r.state.as_str()).or_default() += 1;
        }
        for (state, n) in counts {
            let _ = writeln!(
                out,
                "serve_deployment_replicas{{{},state=\"{}\"}} {n}",
                dep_labels(d),
                state
            );
        }
    }

    let g = global();
    header(
        &mut out,
        "serve_actual_batch_size",
        "histogram",
        "Items per batch run by a batch function.",
    );
    for (name, h) in &g.batches {
        h.render(
            &mut out,
            "serve_actual_batch_size",
            &format!("function_name=\"{}\"", escape(name)),
        );
    }
    header(
        &mut out,
        "serve_autoscaling_decisions_total",
        "counter",
        "Autoscaling decisions that changed a deployment's target replicas.",
    );
    for ((app, dep, direction), n) in &g.decisions {
        let _ = writeln!(
            out,
            "serve_autoscaling_decisions_total{{deployment=\"{}\",application=\"{}\",direction=\"{direction}\"}} {n}",
            escape(dep),
            escape(app)
        );
    }
    header(
        &mut out,
        "serve_autoscaling_target_replicas",
        "gauge",
        "The autoscaler's latest target number of replicas.",
    );
    for ((app, dep), n) in &g.targets {
        let _ = writeln!(
            out,
            "serve_autoscaling_target_replicas{{deployment=\"{}\",application=\"{}\"}} {n}",
            escape(dep),
            escape(app)
        );
    }
    header(
        &mut out,
        "serve_health_check_failures_total",
        "counter",
        "Failed replica health checks.",
    );
    for ((app, dep), n) in &g.health_failures {
        let _ = writeln!(
            out,
            "serve_health_check_failures_total{{deployment=\"{}\",application=\"{}\"}} {n}",
            escape(dep),
            escape(app)
        );
    }
    out
}

/// The content type of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_ms() {
        let h = Histogram::latency();
        h.observe_duration(Duration::from_micros(1_500));
        h.observe_duration(Duration::from_millis(7));
        h.observe_duration(Duration::from_secs(1000));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1.0\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"2.0\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10.0\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{a=\"b\",le=\"600000.0\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 1000008.5\n"), "{out}");
    }

    #[test]
    fn statuses_outside_the_common_set_are_counted_too() {
        assert!(
            STATUSES.windows(2).all(|w| w[0] < w[1]),
            "sorted for binary search"
        );
        let r = RouteMetrics::new("a", "/a");
        for status in [200, 200, 418, 999, 404] {
            r.start();
            r.record(0, status, Duration::from_millis(1));
        }
        r.record(1, 418, Duration::ZERO);
        assert_eq!(
            r.by_status(),
            [
                (0, 200, 2),
                (0, 404, 1),
                (0, 418, 1),
                (0, 999, 1),
                (1, 418, 1)
            ]
        );
        assert_eq!(r.started(), 5);
        assert_eq!(r.latency[0].count(), 5);
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
    fn label_values_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn metrics_paths() {
        assert!(validate_metrics_path("/metrics").is_ok());
        assert!(validate_metrics_path("/-/metrics").is_ok());
        for bad in [
            "",
            "/",
            "metrics",
            "/m/",
            "/m?x",
            "/a b",
            "/-/healthz",
            "/-/routes",
        ] {
            assert!(validate_metrics_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn autoscaling_and_health_series() {
        autoscaling_decision("unit-app", "D", 1, 3);
        autoscaling_decision("unit-app", "D", 3, 2);
        autoscaling_decision("unit-app", "D", 2, 2);
        health_check_failed("unit-app", "D");
        batch_size("unit-batch", 3);
        batch_size_histogram("unit-batch").observe(8);
        let out = render(&ProxyMetrics::new(None, false), &[]);
        for line in [
            "serve_autoscaling_decisions_total{deployment=\"D\",application=\"unit-app\",direction=\"up\"} 1",
            "serve_autoscaling_decisions_total{deployment=\"D\",application=\"unit-app\",direction=\"down\"} 1",
            "serve_autoscaling_target_replicas{deployment=\"D\",application=\"unit-app\"} 2",
            "serve_health_check_failures_total{deployment=\"D\",application=\"unit-app\"} 1",
            "serve_actual_batch_size_bucket{function_name=\"unit-batch\",le=\"4.0\"} 1",
            "serve_actual_batch_size_bucket{function_name=\"unit-batch\",le=\"8.0\"} 2",
            "serve_actual_batch_size_sum{function_name=\"unit-batch\"} 11.0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line} in\n{out}");
        }
    }
}
