//! Starting and stopping a server: [`run`], the [`Serve`] builder, and the running [`Server`].

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::app::{validate_route_prefix, Application};
use crate::config::ServeConfig;
use crate::controller::Controller;
use crate::error::Error;
use crate::limits::Limits;
use crate::proxy::{self, ConnOptions, ProxyState};
use crate::registry::Registry;

/// Environment variable that overrides the default port (use `0` for an ephemeral port).
pub const PORT_ENV: &str = "FERROSERVE_PORT";
/// Environment variable that overrides the default host.
pub const HOST_ENV: &str = "FERROSERVE_HOST";

/// HTTP settings (Ray's `http_options`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HttpOptions {
    /// Address to listen on. Default `127.0.0.1`, or `$FERROSERVE_HOST`.
    pub host: String,
    /// Port to listen on. Default `8000`, or `$FERROSERVE_PORT`; `0` picks a free port.
    pub port: u16,
    /// End-to-end timeout per request (`request_timeout_s`); `None` (default) waits forever.
    pub request_timeout: Option<Duration>,
    /// How long a connection may wait for its next request head: an idle HTTP/1.1 keep-alive
    /// connection, a client that connects and sends nothing, and a slow (slowloris) request
    /// head are all closed after it. Default 5 s, as uvicorn's. hyper times the request head
    /// from the moment it starts waiting for it, so one timeout covers idle and slow clients.
    /// An HTTP/2 connection is closed once no request has been open on it and nothing has
    /// arrived for between one and two timeouts.
    pub keep_alive_timeout: Duration,
    /// How long a drain waits for in-flight requests before closing connections. Default 20 s.
    pub graceful_shutdown_timeout: Duration,
    /// A path the whole server is mounted under (`""`, the default, or e.g. `/serve`).
    pub root_path: String,
    /// Where the proxy answers with its Prometheus metrics (default `/metrics`; see
    /// [`crate::metrics`]). `None` turns metrics off: no endpoint and no collection.
    pub metrics_path: Option<String>,
    /// Whether each request ends with an access-log line (target `ferroserve::access`, level
    /// `INFO`). Default true (Ray's `logging_config.enable_access_log`).
    pub access_log: bool,
    /// Request size and connection limits (see [`crate::limits`]).
    pub limits: Limits,
    /// How often the running server gives freed heap memory back to the OS (see
    /// [`crate::memory`]). Default 1 s; `None` (or zero) never does.
    pub memory_trim_interval: Option<Duration>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            host: std::env::var(HOST_ENV).unwrap_or_else(|_| "127.0.0.1".to_owned()),
            port: std::env::var(PORT_ENV)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(8000),
            request_timeout: None,
            keep_alive_timeout: Duration::from_secs(5),
            graceful_shutdown_timeout: Duration::from_secs(20),
            root_path: String::new(),
            metrics_path: Some(crate::metrics::DEFAULT_METRICS_PATH.to_owned()),
            access_log: true,
            limits: Limits::default(),
            memory_trim_interval: Some(crate::memory::DEFAULT_TRIM_INTERVAL),
        }
    }
}

/// Builds a server from applications and HTTP options.
///
/// ```no_run
/// # use ferroserve::{Deployment, Ingress, Request, Serve};
/// # struct Hello;
/// # impl Ingress for Hello { type Output = &'static str; async fn call(&self, _: Request) -> &'static str { "hi" } }
/// # async fn f() -> Result<(), ferroserve::Error> {
/// Serve::new()
///     .app(ferroserve::Application::new(Deployment::new("Hello").bind(|| Hello)).route_prefix("/hello"))
///     .port(8000)
///     .run()
///     .await
/// # }
/// ```
#[derive(Debug, Default)]
#[must_use = "a Serve does nothing until started"]
pub struct Serve {
    options: HttpOptions,
    apps: Vec<Application>,
    /// A config, the name of its file, and its text (to point errors at lines).
    config: Option<(ServeConfig, String, String)>,
    registry: Registry,
    admin: Option<(String, u16)>,
}

impl Serve {
    /// A server with default options and no applications.
    pub fn new() -> Self {
        Serve::default()
    }

    /// A server for a config file: its `http_options`, its applications (built from
    /// `registry`), and the admin API on its `admin_options` address.
    pub fn from_config_file(
        path: &std::path::Path,
        registry: Registry,
    ) -> Result<Self, crate::config::ConfigError> {
        let (config, text) = ServeConfig::read(path)?;
        let mut serve = Serve::from_config(config, path.display().to_string(), registry);
        if let Some((_, _, source)) = &mut serve.config {
            *source = text;
        }
        Ok(serve)
    }

    /// The `logging_config` of the config this server was made from, if any.
    pub fn logging_config(&self) -> Option<&crate::config::LoggingConfig> {
        self.config.as_ref().map(|(c, _, _)| &c.logging_config)
    }

    /// A server for a parsed config (see [`Serve::from_config_file`]); `file` names it in
    /// errors.
    pub fn from_config(config: ServeConfig, file: impl Into<String>, registry: Registry) -> Self {
        let mut options = config.http_options.to_options();
        options.graceful_shutdown_timeout = HttpOptions::default().graceful_shutdown_timeout;
        options.access_log = config.logging_config.enable_access_log;
        let admin = (config.admin_options.host.clone(), config.admin_options.port);
        Serve {
            options,
            apps: Vec::new(),
            config: Some((config, file.into(), String::new())),
            registry,
            admin: Some(admin),
        }
    }

    /// Adds an application (a bound ingress deployment converts into one).
    pub fn app(mut self, app: impl Into<Application>) -> Self {
        self.apps.push(app.into());
        self
    }

    /// Sets the listening host.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.options.host = host.into();
        self
    }

    /// Sets the listening port (`0` for an ephemeral port).
    pub fn port(mut self, port: u16) -> Self {
        self.options.port = port;
        self
    }

    /// Sets the end-to-end request timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = Some(timeout);
        self
    }

    /// Sets the keep-alive (and request head) timeout.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.options.keep_alive_timeout = timeout;
        self
    }

    /// Sets how long a drain waits for in-flight requests.
    pub fn graceful_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.graceful_shutdown_timeout = timeout;
        self
    }

    /// Serves the Prometheus metrics at `path` instead of `/metrics` (the proxy answers it
    /// before route matching, so an application mounted at `/` never sees it), or turns
    /// metrics off with `None`: no endpoint and no collection. An invalid path (not starting
    /// with `/`, `/` itself, a trailing `/`, `?`, `#`, braces or spaces) fails
    /// [`Serve::start`] with [`Error::Config`].
    pub fn metrics_path(mut self, path: Option<&str>) -> Self {
        self.options.metrics_path = path.map(str::to_owned);
        self
    }

    /// Turns the access log (one `INFO` line of target `ferroserve::access` per request) on or
    /// off. On by default.
    pub fn access_log(mut self, enabled: bool) -> Self {
        self.options.access_log = enabled;
        self
    }

    /// Sets the request limits (body, headers, connections, WebSocket messages, images,
    /// arrays; see [`crate::limits`]). A `max_header_bytes` below 8192 fails [`Serve::start`]
    /// with [`Error::Config`], as does a `max_connections` or `max_headers` of 0.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.options.limits = limits;
        self
    }

    /// Sets the largest request body accepted (`413` beyond it); a shorthand for
    /// [`Serve::limits`].
    pub fn max_request_body_bytes(mut self, bytes: u64) -> Self {
        self.options.limits.max_request_body_bytes = bytes;
        self
    }

    /// How often the running server gives freed heap memory back to the OS (default 1 s;
    /// `None` or zero never does, e.g. with a global allocator that returns memory itself). See
    /// [`crate::memory`].
    pub fn memory_trim_interval(mut self, interval: Option<Duration>) -> Self {
        self.options.memory_trim_interval = interval;
        self
    }

    /// Replaces all HTTP options.
    pub fn http_options(mut self, options: HttpOptions) -> Self {
        self.options = options;
        self
    }

    /// Serves the admin REST API (`/api/serve/applications/`) on `host:port` (`0` for an
    /// ephemeral port), with `registry` resolving the `import_path`s of deployed configs.
    pub fn admin(mut self, host: impl Into<String>, port: u16) -> Self {
        self.admin = Some((host.into(), port));
        self
    }

    /// Moves the admin API to `port` on its configured host (127.0.0.1 unless set).
    pub fn admin_port(mut self, port: u16) -> Self {
        let host = self
            .admin
            .take()
            .map_or_else(|| "127.0.0.1".to_owned(), |(h, _)| h);
        self.admin = Some((host, port));
        self
    }

    /// Turns the admin API off.
    pub fn no_admin(mut self) -> Self {
        self.admin = None;
        self
    }

    /// Sets the builders that config `import_path`s name.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Validates the applications, binds the port, starts every deployment (dependencies
    /// first) and starts serving. Returns once the server accepts connections; connections
    /// made earlier wait in the listen queue until the routes are loaded.
    ///
    /// Errors: [`Error::Config`] for invalid or clashing names and prefixes or an invalid config,
    /// [`Error::Startup`] naming the deployment whose constructor failed, [`Error::Io`] if a port
    /// cannot be bound.
    pub async fn start(self) -> Result<Server, Error> {
        let Serve {
            options,
            apps,
            config,
            registry,
            admin,
        } = self;
        if let Some(path) = &options.metrics_path {
            crate::metrics::validate_metrics_path(path)
                .map_err(|e| Error::Config(format!("metrics_path {e}")))?;
        }
        let limits = options.limits;
        if limits.max_header_bytes < crate::limits::MIN_HEADER_BYTES {
            return Err(Error::Config(format!(
                "max_header_bytes must be at least {}, got {}",
                crate::limits::MIN_HEADER_BYTES,
                limits.max_header_bytes
            )));
        }
        if limits.max_connections == 0 || limits.max_headers == 0 || limits.max_multipart_parts == 0
        {
            return Err(Error::Config(
                "max_connections, max_headers and max_multipart_parts must be at least 1".into(),
            ));
        }
        let mut seen: Vec<(&str, &str)> = Vec::with_capacity(apps.len());
        for app in &apps {
            validate_route_prefix(&app.route_prefix)?;
            if app.name.is_empty() {
                return Err(Error::Config("application name must not be empty".into()));
            }
            if let Some((_, prefix)) = seen.iter().find(|(name, _)| *name == app.name) {
                return Err(Error::Config(format!(
                    "two applications are named '{}' (prefixes '{}' and '{}')",
                    app.name, prefix, app.route_prefix
                )));
            }
            if let Some((name, _)) = seen.iter().find(|(_, p)| *p == app.route_prefix) {
                return Err(Error::Config(format!(
                    "applications '{}' and '{}' both use route_prefix '{}'",
                    name, app.name, app.route_prefix
                )));
            }
            seen.push((&app.name, &app.route_prefix));
        }

        let listener = TcpListener::bind((options.host.as_str(), options.port)).await?;
        let local_addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            routes: ArcSwap::from_pointee(Vec::new()),
            root_path: options.root_path.clone(),
            request_timeout: options.request_timeout,
            limits,
            draining: AtomicBool::new(false),
            host: local_addr.to_string(),
            metrics: crate::metrics::ProxyMetrics::new(
                options.metrics_path.clone(),
                options.access_log,
            ),
            controller: std::sync::OnceLock::new(),
        });
        let base = match &config {
            Some((c, _, _)) => ServeConfig {
                applications: Vec::new(),
                ..c.clone()
            },
            None => ServeConfig::default(),
        };
        let controller = Arc::new(Controller::new(state.clone(), registry, base));
        let _ = state.controller.set(Arc::downgrade(&controller));
        controller.start_code_apps(apps).await?;
        if let Some((config, file, text)) = config {
            controller.apply(config, &file).await.map_err(|mut e| {
                ServeConfig::locate(&text, &mut e.issues);
                Error::Config(e.to_string())
            })?;
            if let Some(failed) = controller.failed_app() {
                controller.stop_all();
                return Err(Error::Config(failed));
            }
        }
        let stop_requested = Arc::new(Notify::new());
        let admin = match admin {
            Some((host, port)) => {
                let listener = TcpListener::bind((host.as_str(), port))
                    .await
                    .map_err(|e| {
                        Error::Io(std::io::Error::new(
                            e.kind(),
                            format!("cannot bind the admin API on {host}:{port}: {e}"),
                        ))
                    })?;
                let addr = listener.local_addr()?;
                let task = tokio::spawn(crate::admin::serve(
                    listener,
                    state.clone(),
                    controller.clone(),
                    stop_requested.clone(),
                ));
                tracing::info!("admin API on http://{addr}/api/serve/applications/");
                Some((addr, task))
            }
            None => None,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(interval) = options.memory_trim_interval.filter(|i| !i.is_zero()) {
            tokio::spawn(crate::memory::trim_periodically(interval, stop_rx.clone()));
        }
        let task = tokio::spawn(proxy::serve(
            listener,
            state,
            ConnOptions {
                keep_alive_timeout: options.keep_alive_timeout,
                limits,
                graceful_shutdown_timeout: options.graceful_shutdown_timeout,
            },
            stop_rx,
        ));
        tracing::info!("ferroserve listening on http://{local_addr}");
        Ok(Server {
            local_addr,
            stop: stop_tx,
            task,
            controller,
            admin,
            stop_requested,
        })
    }

    /// Starts the server, serves until Ctrl-C, SIGTERM or an admin `DELETE`, then drains
    /// (`/-/healthz` turns 503, new connections are refused, in-flight requests finish up to the
    /// graceful timeout).
    pub async fn run(self) -> Result<(), Error> {
        let signal = shutdown_signal();
        let server = self.start().await?;
        let requested = server.stop_requested.clone();
        tokio::select! {
            _ = signal => tracing::info!("shutdown signal received"),
            _ = requested.notified() => tracing::info!("shutdown requested through the admin API"),
        }
        server.shutdown().await;
        Ok(())
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    controller: Arc<Controller>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    stop_requested: Arc<Notify>,
}

impl Server {
    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the admin API listens on, if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(addr, _)| *addr)
    }

    /// Resolves when an admin `DELETE /api/serve/applications/` asked the server to stop.
    /// Cancel safe.
    pub async fn stop_requested(&self) {
        self.stop_requested.notified().await
    }

    /// Drains and stops: refuses new connections, fails `/-/healthz`, waits for in-flight
    /// requests (up to the graceful timeout), then releases every replica, so that each
    /// instance's `Drop` (the deployment's shutdown hook) runs once its last request is done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Some((_, admin)) = self.admin {
            admin.abort();
        }
        self.controller.stop_all();
    }
}

/// Waits for Ctrl-C or SIGTERM. The handlers are installed when this is called, not when it is
/// first polled, so call it before the server announces itself.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut i), Ok(mut t)) => {
                    tokio::select! {
                        _ = i.recv() => {},
                        _ = t.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Installs ferroserve's log output (stderr, `RUST_LOG` filter, `info` by default) unless a
/// global subscriber is already set.
pub fn init_logging() {
    init_logging_with(&crate::config::LoggingConfig::default());
}

/// Installs ferroserve's log output as a config's `logging_config` asks: its level (unless
/// `RUST_LOG` is set) and `TEXT` or `JSON` lines on stderr. Does nothing if a global subscriber
/// is already set.
///
/// Every line logged while a handler runs names who serves the request: `TEXT` lines end with
/// `application=.. deployment=.. replica=.. request_id=..`, `JSON` objects carry those four
/// keys. Finding them costs nothing until a line is logged.
pub fn init_logging_with(config: &crate::config::LoggingConfig) {
    init_logging_to(config, std::io::stderr);
}

/// As [`init_logging_with`], writing to `writer` instead of stderr (e.g. to capture the lines).
pub fn init_logging_to<W>(config: &crate::config::LoggingConfig, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let _ = tracing::subscriber::set_global_default(log_subscriber(config, writer));
}

/// The subscriber [`init_logging_to`] installs.
pub(crate) fn log_subscriber<W>(
    config: &crate::config::LoggingConfig,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.directive()));
    let writer = Arc::new(writer);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::access_log::Shared(writer.clone()));
    match config.encoding {
        crate::config::LogEncoding::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let subscriber = builder
                .with_ansi(ansi)
                .map_event_format(|format| WithReplica {
                    inner: format,
                    json: false,
                })
                .finish();
            if ansi {
                Box::new(subscriber)
            } else {
                // Plain text: access lines take the fast path (see `crate::access_log`).
                Box::new(subscriber.with(crate::access_log::AccessLines::new(writer)))
            }
        }
        crate::config::LogEncoding::Json => Box::new(
            builder
                .json()
                .with_ansi(false)
                .map_event_format(|format| WithReplica {
                    inner: format,
                    json: true,
                })
                .finish(),
        ),
    }
}

/// An event format that adds the serving replica's labels to lines logged inside a handler.
struct WithReplica<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithReplica<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let labels = crate::metrics::with_current_labels(|app, dep, replica, id| {
            [app, dep, replica, id].map(str::to_owned)
        });
        let Some([application, deployment, replica, request_id]) = labels else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        if self.json {
            if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(body) {
                for (key, value) in [
                    ("application", application),
                    ("deployment", deployment),
                    ("replica", replica),
                    ("request_id", request_id),
                ] {
                    map.insert(key.to_owned(), value.into());
                }
                return writeln!(writer, "{}", serde_json::Value::Object(map));
            }
            return writeln!(writer, "{body}");
        }
        writeln!(
            writer,
            "{body} application={application} deployment={deployment} replica={replica} request_id={request_id}"
        )
    }
}

/// Serves one application on `127.0.0.1:8000` (or `$FERROSERVE_HOST`/`$FERROSERVE_PORT`) until
/// Ctrl-C or SIGTERM, then drains and returns: the seed's `serve.run(app)`.
///
/// Builds its own multi-threaded tokio runtime and installs logging; call it from a plain
/// `fn main`. Inside an async context use [`Serve::run`].
pub fn run(app: impl Into<Application>) -> Result<(), Error> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(Serve::new().app(app).run());
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    result
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{LogEncoding, LoggingConfig};
    use crate::metrics::{in_replica_sync, DeploymentMetrics, ReplicaLabels};
    use std::sync::Mutex;

    /// Log output kept in memory: what each writer made by the closure writes lands in `.0`.
    #[derive(Clone, Default)]
    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `config`'s log format writes for one line logged outside and one inside a handler.
    fn two_lines(encoding: LogEncoding) -> Vec<String> {
        let out: Arc<Mutex<Vec<u8>>> = Arc::default();
        let config = LoggingConfig {
            encoding,
            ..LoggingConfig::default()
        };
        let sink = out.clone();
        let subscriber = log_subscriber(&config, move || Sink(sink.clone()));
        let metrics = DeploymentMetrics::new(&Arc::from("Model"));
        metrics.bind("iris", true);
        let labels = Arc::new(ReplicaLabels::new(&metrics, "Model#3"));
        let ctx = crate::context::RequestContext::new("req-7", None);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("outside");
            ctx.enter(|| in_replica_sync(labels, || tracing::warn!("inside")));
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn text_lines_in_a_handler_end_with_the_replica() {
        let lines = two_lines(LogEncoding::Text);
        assert!(lines[0].ends_with("outside"), "{lines:?}");
        assert!(
            lines[1].ends_with(
                "inside application=iris deployment=Model replica=Model#3 request_id=req-7"
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn json_lines_in_a_handler_carry_the_replica() {
        let lines = two_lines(LogEncoding::Json);
        let parse = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap();
        let (outside, inside) = (parse(&lines[0]), parse(&lines[1]));
        assert_eq!(outside["fields"]["message"], "outside");
        assert!(outside.get("replica").is_none(), "{outside}");
        assert_eq!(inside["fields"]["message"], "inside");
        assert_eq!(inside["level"], "WARN");
        for (key, value) in [
            ("application", "iris"),
            ("deployment", "Model"),
            ("replica", "Model#3"),
            ("request_id", "req-7"),
        ] {
            assert_eq!(inside[key], value, "{inside}");
        }
    }
}
