//! The server's HTTP options in code (Ray's `http_options`): what [`crate::Serve`] takes and
//! a config file's `http_options` turns into.

use std::time::Duration;

use ferroserve_http::limits::Limits;
use ferroserve_http::metrics::DEFAULT_METRICS_PATH;

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
    /// How long a connection may idle. Default 5 s, as uvicorn's. A client that connects and
    /// sends nothing (or half the HTTP/2 preface) is closed after exactly one timeout; an
    /// HTTP/1.1 connection with no request open and no response byte written, which covers
    /// idle keep-alive and slow (slowloris) request heads, after between one and two; an
    /// HTTP/2 connection with no request open and nothing arriving, after between one and
    /// two. A connection is never closed before one whole timeout of idleness, so a load
    /// balancer in front with a shorter idle timeout never meets a closed connection.
    pub keep_alive_timeout: Duration,
    /// How long a drain waits for in-flight requests before closing connections. Default 20 s.
    pub graceful_shutdown_timeout: Duration,
    /// A path the whole server is mounted under (`""`, the default, or e.g. `/serve`).
    pub root_path: String,
    /// Where the proxy answers with its Prometheus metrics (default `/metrics`; see
    /// [`ferroserve_http::metrics`]). `None` turns metrics off: no endpoint and no collection.
    pub metrics_path: Option<String>,
    /// Whether each request ends with an access-log line (target `ferroserve::access`, level
    /// `INFO`). Default true (Ray's `logging_config.enable_access_log`).
    pub access_log: bool,
    /// Request size and connection limits (see [`ferroserve_http::limits`]).
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
            metrics_path: Some(DEFAULT_METRICS_PATH.to_owned()),
            access_log: true,
            limits: Limits::default(),
            memory_trim_interval: Some(crate::memory::DEFAULT_TRIM_INTERVAL),
        }
    }
}
