//! The `counter` scenario on ferroserve: the same code as `crates/ferroserve/examples/counter.rs`.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT`; `GET /?a=b&c=d` → `{"a":"b","c":"d"}`.
//! Arguments `no-metrics` and `no-access-log` turn those off, and `log-warn` logs at `WARNING`
//! instead of `INFO` (the observability-cost scenario); other arguments (the orchestrator
//! appends the port) are ignored.

use ferroserve::{Deployment, Ingress, Json, QueryParams, Request, Serve};

struct Counter;

impl Ingress for Counter {
    type Output = Json<QueryParams>;

    async fn call(&self, request: Request) -> Self::Output {
        Json(request.query_params())
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let app = Deployment::new("Counter").bind(|| Counter);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let (no_metrics, no_access_log) = (has("no-metrics"), has("no-access-log"));
    if !no_metrics && !no_access_log && !has("log-warn") {
        return ferroserve::run(app);
    }
    let mut logging = ferroserve::config::LoggingConfig::default();
    if has("log-warn") {
        logging.log_level = ferroserve::config::LogLevel::Warning;
    }
    ferroserve::logging::init_logging_with(&logging);
    let mut serve = Serve::new().app(app).access_log(!no_access_log);
    if no_metrics {
        serve = serve.metrics_path(None);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve.run())
}
