//! Starting and stopping a server: [`run`], the [`Serve`] builder, and the running [`Server`].

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::{validate_route_prefix, Application};
use crate::deployment::NodeRef;
use crate::error::Error;
use crate::proxy::{self, ConnOptions, ProxyState, Route};

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
    /// How long an idle HTTP/1.1 keep-alive connection (or a slow request head) may take before
    /// the connection is closed. Default 5 s, as uvicorn's.
    pub keep_alive_timeout: Duration,
    /// How long a drain waits for in-flight requests before closing connections. Default 20 s.
    pub graceful_shutdown_timeout: Duration,
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
}

impl Serve {
    /// A server with default options and no applications.
    pub fn new() -> Self {
        Serve::default()
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

    /// Replaces all HTTP options.
    pub fn http_options(mut self, options: HttpOptions) -> Self {
        self.options = options;
        self
    }

    /// Validates the applications, starts every deployment (dependencies first), binds the port
    /// and starts serving. Returns once the server accepts connections.
    ///
    /// Errors: [`Error::Config`] for invalid or clashing names and prefixes, [`Error::Startup`]
    /// naming the deployment whose constructor failed, [`Error::Io`] if the port cannot be bound.
    pub async fn start(self) -> Result<Server, Error> {
        let Serve { options, apps } = self;
        let mut routes: Vec<Route> = Vec::with_capacity(apps.len());
        for app in &apps {
            validate_route_prefix(&app.route_prefix)?;
            if app.name.is_empty() {
                return Err(Error::Config("application name must not be empty".into()));
            }
            if let Some(other) = routes.iter().find(|r| r.app_name == app.name) {
                return Err(Error::Config(format!(
                    "two applications are named '{}' (prefixes '{}' and '{}')",
                    app.name, other.prefix, app.route_prefix
                )));
            }
            if let Some(other) = routes.iter().find(|r| *r.prefix == app.route_prefix) {
                return Err(Error::Config(format!(
                    "applications '{}' and '{}' both use route_prefix '{}'",
                    other.app_name, app.name, app.route_prefix
                )));
            }
            routes.push(Route {
                prefix: app.route_prefix.as_str().into(),
                app_name: app.name.clone(),
                endpoint: app.endpoint.clone(),
            });
        }
        let mut nodes: Vec<NodeRef> = Vec::new();
        for app in &apps {
            for node in app.deployments()? {
                node.0.clone().start().await?;
                if !nodes.iter().any(|n| n.same(&node)) {
                    nodes.push(node);
                }
            }
            tracing::info!(app = %app.name, route_prefix = %app.route_prefix, "application running");
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

        let listener = TcpListener::bind((options.host.as_str(), options.port)).await?;
        let local_addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            routes,
            request_timeout: options.request_timeout,
            draining: AtomicBool::new(false),
            host: local_addr.to_string(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(proxy::serve(
            listener,
            state,
            ConnOptions {
                keep_alive_timeout: options.keep_alive_timeout,
                graceful_shutdown_timeout: options.graceful_shutdown_timeout,
            },
            stop_rx,
        ));
        tracing::info!("ferroserve listening on http://{local_addr}");
        Ok(Server {
            local_addr,
            stop: stop_tx,
            task,
            nodes,
        })
    }

    /// Starts the server, serves until Ctrl-C or SIGTERM, then drains (`/-/healthz` turns 503,
    /// new connections are refused, in-flight requests finish up to the graceful timeout).
    pub async fn run(self) -> Result<(), Error> {
        let signal = shutdown_signal();
        let server = self.start().await?;
        signal.await;
        tracing::info!("shutdown signal received");
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
    nodes: Vec<NodeRef>,
}

impl Server {
    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Drains and stops: refuses new connections, fails `/-/healthz`, waits for in-flight
    /// requests (up to the graceful timeout), then releases every replica, so that each
    /// instance's `Drop` (the deployment's shutdown hook) runs once its last request is done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        for node in self.nodes.iter().rev() {
            node.0.stop();
        }
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
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
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
