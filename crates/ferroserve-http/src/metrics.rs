#![doc = include_str!("../docs/metrics.md")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferroserve_core::context::RequestId;
use ferroserve_core::deployment::ReplicaInfo;
use ferroserve_core::metrics::{with_global, DeploymentMetrics, Histogram, Sharded};
use ferroserve_core::sync::lock;
use http::{Method, StatusCode, Uri};

use crate::access_log::{AccessRecord, LatencyMs};

/// The default path of the metrics endpoint.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";

/// The tracing target of access-log events.
pub const ACCESS_LOG_TARGET: &str = "ferroserve::access";

/// Checks a metrics path: starts with `/`, is not `/`, has no trailing `/`, no `?`, `#`, `{`,
/// `}` or whitespace, and is not one of the proxy's own paths.
pub fn validate_metrics_path(path: &str) -> Result<(), String> {
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
                *lock(&self.other_statuses)
                    .entry((method, status))
                    .or_default() += 1
            }
        }
        self.latency[method].observe_duration(latency);
    }

    /// Every non-zero (method, status, count), by method then status.
    fn by_status(&self) -> Vec<(usize, u16, u64)> {
        let mut out: Vec<(usize, u16, u64)> = lock(&self.other_statuses)
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
        *lock(&self.len)
    }

    /// The block of (`app`, `route`), added if new; `None` once [`MAX_ROUTES`] are in use.
    fn find_or_push(&self, app: &str, route: &str) -> Option<usize> {
        let mut len = lock(&self.len);
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
        route: Option<(Option<RouteId>, &Arc<str>, &Arc<str>)>,
        method: &Method,
        uri: &Uri,
        request_id: &RequestId,
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
            let (route, application) = match route {
                Some((_, route, app)) => (route.clone(), app.clone()),
                None => (Arc::from(""), Arc::from("")),
            };
            AccessLog {
                method: method.clone(),
                route,
                uri: uri.clone(),
                application,
                request_id: request_id.clone(),
            }
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

/// What the access line needs from the start of a request: shared references, no copies.
struct AccessLog {
    method: Method,
    route: Arc<str>,
    uri: Uri,
    application: Arc<str>,
    request_id: RequestId,
}

/// One HTTP request being observed. See [`ProxyMetrics::observe`].
pub(crate) struct HttpObservation<'a> {
    metrics: Option<&'a RouteMetrics>,
    method: u8,
    start: Option<Instant>,
    log: Option<AccessLog>,
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
                path: log.uri.path(),
                status,
                latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
                request_id: log.request_id.as_str(),
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
pub fn log_access_event(r: &AccessRecord<'_>) {
    tracing::info!(
        target: "ferroserve::access",
        method = %r.method,
        route = %r.route,
        path = %r.path,
        status = r.status,
        latency_ms = r.latency_us as f64 / 1000.0,
        request_id = %r.request_id,
        application = %r.application,
        "{} {} {} {}ms",
        r.method,
        r.route,
        r.status,
        LatencyMs(r.latency_us),
    );
}

impl Drop for HttpObservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record(499);
        }
    }
}

/// What a scrape reads from one deployment of one application.
#[derive(Debug)]
pub struct DeploymentSample {
    /// The application.
    pub app: String,
    /// The deployment's replica-side series.
    pub metrics: Arc<DeploymentMetrics>,
    /// Requests waiting for a replica now.
    pub queued: usize,
    /// Its replicas now.
    pub replicas: Vec<ReplicaInfo>,
    /// Whether it is its application's ingress.
    pub ingress: bool,
}

/// Where a scrape reads the deployments' series and gauges from (the controller).
pub trait MetricsSource: Send + Sync {
    /// Every deployment of every application, now.
    fn deployment_samples(&self) -> Vec<DeploymentSample>;
}

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

/// The metrics text (Prometheus text format 0.0.4) for the proxy's routes and `deployments`.
pub(crate) fn render(proxy: &ProxyMetrics, deployments: &[DeploymentSample]) -> String {
    let mut out = String::with_capacity(8192);
    render_http(&mut out, proxy, deployments);
    render_deployments(&mut out, deployments);
    render_replicas(&mut out, deployments);
    render_process_wide(&mut out);
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One histogram's `_bucket`, `_count` and `_sum` lines.
fn render_histogram(out: &mut String, h: &Histogram, name: &str, labels: &str) {
    let sep = if labels.is_empty() { "" } else { "," };
    let snapshot = h.snapshot();
    for (le, n) in &snapshot.buckets {
        match le {
            Some(le) => {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le:?}\"}} {n}");
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}");
            }
        }
    }
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", snapshot.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {:?}", snapshot.sum);
}

/// The proxy's series: requests by route, method and status, errors (also by ingress
/// deployment), latency, ongoing requests.
fn render_http(out: &mut String, proxy: &ProxyMetrics, deployments: &[DeploymentSample]) {
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
            .map(|d| d.metrics.deployment().clone())
    };
    let route_labels = |r: &RouteMetrics, m: usize| {
        format!(
            "route=\"{}\",method=\"{}\",application=\"{}\"",
            escape(&r.route),
            METHODS[m],
            escape(&r.app)
        )
    };
    let statuses: Vec<Vec<(usize, u16, u64)>> = routes.iter().map(|r| r.by_status()).collect();
    let each_status = |f: &mut dyn FnMut(&RouteMetrics, usize, u16, u64)| {
        for (r, statuses) in routes.iter().zip(&statuses) {
            for &(m, status, n) in statuses {
                f(r, m, status, n);
            }
        }
    };

    header(
        out,
        "serve_num_http_requests_total",
        "counter",
        "HTTP requests answered by the proxy (499: the client disconnected first).",
    );
    each_status(&mut |r, m, status, n| {
        let _ = writeln!(
            out,
            "serve_num_http_requests_total{{{},status_code=\"{status}\"}} {n}",
            route_labels(r, m)
        );
    });
    header(
        out,
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
        out,
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
        out,
        "serve_http_request_latency_ms",
        "histogram",
        "End-to-end latency of HTTP requests at the proxy, in milliseconds.",
    );
    for r in &routes {
        for (m, h) in r.latency.iter().enumerate() {
            if h.count() > 0 {
                render_histogram(out, h, "serve_http_request_latency_ms", &route_labels(r, m));
            }
        }
    }
    header(
        out,
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
}

fn deployment_labels(d: &DeploymentSample) -> String {
    format!(
        "deployment=\"{}\",application=\"{}\"",
        escape(d.metrics.deployment()),
        escape(&d.app)
    )
}

/// The replica side of each deployment: requests, errors, processing latency, queue.
fn render_deployments(out: &mut String, deployments: &[DeploymentSample]) {
    header(
        out,
        "serve_deployment_request_counter_total",
        "counter",
        "Requests that ran on a replica of the deployment.",
    );
    for d in deployments {
        let _ = writeln!(
            out,
            "serve_deployment_request_counter_total{{{}}} {}",
            deployment_labels(d),
            d.metrics.requests()
        );
    }
    header(
        out,
        "serve_deployment_error_counter_total",
        "counter",
        "Requests whose handler panicked or answered a 5xx.",
    );
    for d in deployments {
        let _ = writeln!(
            out,
            "serve_deployment_error_counter_total{{{}}} {}",
            deployment_labels(d),
            d.metrics.errors()
        );
    }
    header(
        out,
        "serve_deployment_processing_latency_ms",
        "histogram",
        "Time a replica spent on a request (from taking a slot to the handler's return), in milliseconds.",
    );
    for d in deployments {
        render_histogram(
            out,
            d.metrics.latency(),
            "serve_deployment_processing_latency_ms",
            &deployment_labels(d),
        );
    }
    header(
        out,
        "serve_deployment_queued_queries",
        "gauge",
        "Requests waiting for a replica of the deployment.",
    );
    for d in deployments {
        let _ = writeln!(
            out,
            "serve_deployment_queued_queries{{{}}} {}",
            deployment_labels(d),
            d.queued
        );
    }
}

/// Each deployment's replicas: ongoing requests per replica, replicas by state.
fn render_replicas(out: &mut String, deployments: &[DeploymentSample]) {
    header(
        out,
        "serve_replica_processing_queries",
        "gauge",
        "Requests running on the replica now.",
    );
    for d in deployments {
        for r in &d.replicas {
            let _ = writeln!(
                out,
                "serve_replica_processing_queries{{{},replica=\"{}\"}} {}",
                deployment_labels(d),
                escape(&r.replica_id),
                r.ongoing_requests
            );
        }
    }
    header(
        out,
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
                deployment_labels(d),
                state
            );
        }
    }
}

/// The series the supervisors and batchers feed: batch sizes, autoscaling, health checks.
fn render_process_wide(out: &mut String) {
    with_global(|g| {
        header(
            out,
            "serve_actual_batch_size",
            "histogram",
            "Items per batch run by a batch function.",
        );
        for (name, h) in &g.batches {
            let labels = format!("function_name=\"{}\"", escape(name));
            render_histogram(out, h, "serve_actual_batch_size", &labels);
        }
        header(
            out,
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
            out,
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
            out,
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
    });
}

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_in_ms() {
        let h = Histogram::latency();
        h.observe_duration(Duration::from_micros(1_500));
        h.observe_duration(Duration::from_millis(7));
        h.observe_duration(Duration::from_secs(1000));
        let mut out = String::new();
        render_histogram(&mut out, &h, "x", "a=\"b\"");
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
    fn process_wide_series_are_rendered() {
        ferroserve_core::metrics::autoscaling_decision("unit-app", "D", 1, 3);
        ferroserve_core::metrics::health_check_failed("unit-app", "D");
        ferroserve_core::metrics::batch_size_histogram("unit-batch").observe(3);
        let out = render(&ProxyMetrics::new(None, false), &[]);
        for line in [
            "serve_autoscaling_decisions_total{deployment=\"D\",application=\"unit-app\",direction=\"up\"} 1",
            "serve_autoscaling_target_replicas{deployment=\"D\",application=\"unit-app\"} 3",
            "serve_health_check_failures_total{deployment=\"D\",application=\"unit-app\"} 1",
            "serve_actual_batch_size_bucket{function_name=\"unit-batch\",le=\"4.0\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line} in\n{out}");
        }
    }
}
