//! Errors, and the one place where they become HTTP responses.
//!
//! Every failure a client can see is an [`Error`]. Each error knows whose fault it is
//! ([`Fault`]), whether retrying the same request is safe ([`Error::retry_safe`]), and the exact
//! status and body it turns into ([`Error::into_response`]). No other code in ferroserve decides
//! a status code for a framework error: the HTTP layer answers with this mapping, and a user
//! handler's own errors reach it through `HandlerError` (in the HTTP layer), which keeps a
//! ferroserve `Error` as it is.

use std::fmt;
use std::time::Duration;

use axum_core::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

/// A boxed error, as user constructors and handlers return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whose fault a failure was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong, went away, or asked for something that does not exist.
    Client,
    /// The deployment (user code) failed or is overloaded.
    Deployment,
    /// ferroserve itself is shutting down or misconfigured.
    Server,
}

/// A failure of a request, a handle call, or start-up.
///
/// `Debug` prints the same text as `Display`, so `fn main() -> Result<(), ferroserve::Error>`
/// ends with a readable message.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `max_queued_requests` was reached: the request was rejected before it was queued.
    #[error(
        "Request dropped due to backpressure (num_queued_requests={num_queued}, max_queued_requests={max_queued})."
    )]
    Backpressure {
        /// Requests waiting for this deployment when this one arrived.
        num_queued: usize,
        /// The deployment's `max_queued_requests`.
        max_queued: usize,
    },
    /// The end-to-end deadline passed; the work was cancelled.
    #[error("Request {request_id} timed out after {}s.", PySeconds(*.timeout))]
    Timeout {
        /// The request's id (`X-Request-ID`).
        request_id: String,
        /// The configured `request_timeout_s`.
        timeout: Duration,
    },
    /// No application is mounted at this path.
    #[error("Path '{path}' not found. Ping http://{host}/-/routes for available routes.")]
    NotFound {
        /// The request path.
        path: String,
        /// `host:port` the proxy listens on.
        host: String,
    },
    /// The request itself was malformed (bad body, bad JSON, ...). The message is shown to the client.
    #[error("{message}")]
    BadRequest {
        /// The status to answer with (a 4xx).
        status: StatusCode,
        /// What was wrong, for the client.
        message: String,
    },
    /// User code failed (returned an error or panicked). The detail is logged, never sent.
    #[error("deployment '{deployment}' failed: {detail}")]
    Deployment {
        /// The deployment whose code failed.
        deployment: String,
        /// The error or panic message (for logs only).
        detail: String,
    },
    /// A deployment's constructor failed while the application was starting.
    #[error("deployment '{deployment}' failed to start: {source}")]
    Startup {
        /// The deployment whose constructor failed.
        deployment: String,
        /// The constructor's error.
        #[source]
        source: BoxError,
    },
    /// The application or server configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The deployment is shutting down and takes no new requests.
    #[error("deployment '{0}' is shutting down")]
    ShuttingDown(String),
    /// The call needs the replica's instance (a closure call, a streaming call, an HTTP
    /// request), but the replica it was routed to runs in another process. Such a replica only
    /// takes calls whose message crosses a wire (`BoundDeployment::remote_method`).
    #[error("replica '{replica}' of deployment '{deployment}' runs in another process: {what} needs a replica in this process")]
    NotInProcess {
        /// The deployment called.
        deployment: String,
        /// The replica the call was routed to.
        replica: String,
        /// What needed the instance (`"a closure call"`, ...).
        what: &'static str,
    },
    /// Binding or serving the listening socket failed.
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error {
    /// Whose fault this failure is.
    pub fn fault(&self) -> Fault {
        match self {
            Error::NotFound { .. } | Error::BadRequest { .. } => Fault::Client,
            Error::Backpressure { .. }
            | Error::Timeout { .. }
            | Error::Deployment { .. }
            | Error::Startup { .. } => Fault::Deployment,
            Error::Config(_)
            | Error::ShuttingDown(_)
            | Error::NotInProcess { .. }
            | Error::Io(_) => Fault::Server,
        }
    }

    /// Whether sending the same request again may succeed without side effects being doubled:
    /// true only when the request never reached a replica.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            Error::Backpressure { .. } | Error::ShuttingDown(_) | Error::NotInProcess { .. }
        )
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Backpressure { .. } | Error::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::BadRequest { status, .. } => *status,
            Error::Deployment { .. }
            | Error::Startup { .. }
            | Error::Config(_)
            | Error::NotInProcess { .. }
            | Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A client error with `status` (a 4xx) and a message shown to the client.
    pub fn bad_request(status: StatusCode, message: impl Into<String>) -> Self {
        Error::BadRequest {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for Error {
    /// The one mapping from failures to HTTP. Server-side failures answer
    /// `500 Internal Server Error` and are logged with their detail; client-visible ones carry
    /// their message as `text/plain`. Backpressure adds `Retry-After: 1`.
    fn into_response(self) -> Response {
        let status = self.status();
        let body = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %chain(&self), "request failed");
            "Internal Server Error".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (status, body).into_response();
        if let Error::Backpressure { .. } | Error::ShuttingDown(_) = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `error` and its `source()` chain, `": "`-separated (a cause already at the end of the text,
/// as `#[error("...: {source}")]` puts it, is not repeated). For logs only.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

/// Formats seconds as Python prints a float (`5.0`, `0.5`), so timeout messages match Ray's.
struct PySeconds(Duration);

impl fmt::Display for PySeconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs_f64();
        if secs.fract() == 0.0 {
            write!(f, "{secs:.1}")
        } else {
            write!(f, "{secs}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_text_matches_ray() {
        let e = Error::Timeout {
            request_id: "abc".into(),
            timeout: Duration::from_millis(500),
        };
        assert_eq!(e.to_string(), "Request abc timed out after 0.5s.");
        let e = Error::Timeout {
            request_id: "abc".into(),
            timeout: Duration::from_secs(2),
        };
        assert_eq!(e.to_string(), "Request abc timed out after 2.0s.");
    }

    #[test]
    fn chains_list_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the model failed")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::other("disk on fire");
        assert_eq!(chain(&Outer(io)), "reading the model failed: disk on fire");
        let startup = Error::Startup {
            deployment: "M".into(),
            source: Box::new(Outer(std::io::Error::other("disk on fire"))),
        };
        assert_eq!(
            chain(&startup),
            "deployment 'M' failed to start: reading the model failed: disk on fire"
        );
    }

    #[test]
    fn backpressure_is_retry_safe_and_503() {
        let e = Error::Backpressure {
            num_queued: 3,
            max_queued: 3,
        };
        assert!(e.retry_safe());
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.fault(), Fault::Deployment);
    }
}
