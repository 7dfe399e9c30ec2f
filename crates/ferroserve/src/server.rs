//! Starting and stopping a server: [`run`], the [`Serve`] builder, and the running [`Server`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferroserve_core::Error;
use ferroserve_http::app::{check_apps, AppClash, Application};
use ferroserve_http::limits::Limits;
use ferroserve_http::metrics::{validate_metrics_path, MetricsSource};
use ferroserve_http::proxy::{self, ConnOptions, ProxyOptions, ProxyState};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::ServeConfig;
use crate::controller::Controller;
pub use crate::options::{HttpOptions, HOST_ENV, PORT_ENV};
use crate::registry::Registry;

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

    /// Sets the keep-alive (idle connection and request head) timeout; see
    /// [`HttpOptions::keep_alive_timeout`](crate::HttpOptions::keep_alive_timeout).
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
    /// arrays; see [`ferroserve_http::limits`]). A `max_header_bytes` below 8192 fails [`Serve::start`]
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
        check_options(&options)?;
        check_code_apps(&apps)?;
        let listener = TcpListener::bind((options.host.as_str(), options.port)).await?;
        let local_addr = listener.local_addr()?;
        let proxy = ProxyState::new(ProxyOptions {
            host: local_addr.to_string(),
            root_path: options.root_path.clone(),
            request_timeout: options.request_timeout,
            limits: options.limits,
            metrics_path: options.metrics_path.clone(),
            access_log: options.access_log,
        });
        let controller = start_apps(&proxy, registry, apps, config).await?;
        let stop_requested = Arc::new(Notify::new());
        let admin = match admin {
            Some((host, port)) => {
                let admin = start_admin(&host, port, &proxy, &controller, &stop_requested);
                Some(admin.await?)
            }
            None => None,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        if let Some(interval) = options.memory_trim_interval.filter(|i| !i.is_zero()) {
            tokio::spawn(crate::memory::trim_periodically(interval, stop_rx.clone()));
        }
        let connections = ConnOptions {
            keep_alive_timeout: options.keep_alive_timeout,
            limits: options.limits,
            graceful_shutdown_timeout: options.graceful_shutdown_timeout,
        };
        let task = tokio::spawn(proxy::run(listener, proxy, connections, stop_rx));
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
        // Access lines are written in batches: the last ones go out now.
        ferroserve_http::access_log::flush();
    }
}

/// Checks the options the server cannot start with: the metrics path and the limits.
fn check_options(options: &HttpOptions) -> Result<(), Error> {
    if let Some(path) = &options.metrics_path {
        validate_metrics_path(path).map_err(|e| Error::Config(format!("metrics_path {e}")))?;
    }
    if let Some((field, problem)) = options.limits.problems().into_iter().next() {
        return Err(Error::Config(format!("{field} {problem}")));
    }
    Ok(())
}

/// Checks the names and route prefixes of the applications given in code.
fn check_code_apps(apps: &[Application]) -> Result<(), Error> {
    let names: Vec<(&str, Option<&str>)> = apps
        .iter()
        .map(|a| (a.app_name(), Some(a.app_route_prefix())))
        .collect();
    let Some(clash) = check_apps(&names).into_iter().next() else {
        return Ok(());
    };
    let name = |i: usize| apps[i].app_name();
    let prefix = |i: usize| apps[i].app_route_prefix();
    Err(Error::Config(match clash {
        AppClash::EmptyName { .. } => "application name must not be empty".to_owned(),
        AppClash::BadPrefix { message, .. } => message,
        AppClash::DuplicateName { index, first } => format!(
            "two applications are named '{}' (prefixes '{}' and '{}')",
            name(index),
            prefix(first),
            prefix(index)
        ),
        AppClash::DuplicatePrefix { index, first } => format!(
            "applications '{}' and '{}' both use route_prefix '{}'",
            name(first),
            name(index),
            prefix(index)
        ),
    }))
}

/// Makes the controller, starts the applications in code, then those of the config (whose
/// failures are located in its text), and routes to them.
async fn start_apps(
    proxy: &Arc<ProxyState>,
    registry: Registry,
    apps: Vec<Application>,
    config: Option<(ServeConfig, String, String)>,
) -> Result<Arc<Controller>, Error> {
    let base = match &config {
        Some((c, _, _)) => ServeConfig {
            applications: Vec::new(),
            ..c.clone()
        },
        None => ServeConfig::default(),
    };
    let controller = Arc::new(Controller::new(proxy.clone(), registry, base));
    let source: Arc<dyn MetricsSource> = controller.clone();
    proxy.set_metrics_source(Arc::downgrade(&source));
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
    Ok(controller)
}

/// Binds the admin API and serves it on its own task.
async fn start_admin(
    host: &str,
    port: u16,
    proxy: &Arc<ProxyState>,
    controller: &Arc<Controller>,
    stop_requested: &Arc<Notify>,
) -> Result<(SocketAddr, JoinHandle<()>), Error> {
    let listener = TcpListener::bind((host, port)).await.map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot bind the admin API on {host}:{port}: {e}"),
        ))
    })?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(crate::admin::listen(
        listener,
        proxy.clone(),
        controller.clone(),
        stop_requested.clone(),
    ));
    tracing::info!("admin API on http://{addr}/api/serve/applications/");
    Ok((addr, task))
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

/// Serves one application on `127.0.0.1:8000` (or `$FERROSERVE_HOST`/`$FERROSERVE_PORT`) until
/// Ctrl-C or SIGTERM, then drains and returns: Ray's `serve.run(app)`.
///
/// Builds its own multi-threaded tokio runtime and installs logging; call it from a plain
/// `fn main`. Inside an async context use [`Serve::run`].
pub fn run(app: impl Into<Application>) -> Result<(), Error> {
    crate::logging::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(Serve::new().app(app).run());
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    result
}
