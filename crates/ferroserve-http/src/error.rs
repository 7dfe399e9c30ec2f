//! The error type of user handlers, answered through the one mapping of
//! [`ferroserve_core::Error`].

use std::fmt;

use axum::response::{IntoResponse, Response};
use ferroserve_core::{BoxError, Error};

/// The error type of a user handler: anything that converts into a [`BoxError`], carried to the
/// proxy and answered there.
///
/// Use it as `Result<T, HandlerError>` and `?` any error. A ferroserve [`Error`] (for example a
/// handle call that hit backpressure, or a malformed body from [`crate::Request::json`]) keeps its
/// own status and message; every other error becomes `500 Internal Server Error`, with the
/// detail logged and never sent to the client.
pub struct HandlerError(BoxError);

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError(error.into())
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl HandlerError {
    /// The framework error the proxy answers with: a ferroserve [`Error`] as it is, anything
    /// else as [`Error::Deployment`] of `deployment` (a `500`, detail logged).
    pub fn into_error(self, deployment: &str) -> Error {
        match self.0.downcast::<Error>() {
            Ok(error) => *error,
            Err(other) => Error::Deployment {
                deployment: deployment.to_owned(),
                detail: ferroserve_core::error::chain(&*other),
            },
        }
    }
}

impl IntoResponse for HandlerError {
    fn into_response(self) -> Response {
        let deployment = ferroserve_core::current()
            .map(|ctx| ctx.deployment().to_owned())
            .unwrap_or_default();
        self.into_error(&deployment).into_response()
    }
}

impl aide::OperationOutput for HandlerError {
    type Inner = ();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_become_deployment_errors_with_their_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the model failed")]
        struct Outer(#[source] std::io::Error);
        let err = HandlerError::from(Outer(std::io::Error::other("gone"))).into_error("M");
        assert_eq!(
            err.to_string(),
            "deployment 'M' failed: reading the model failed: gone"
        );
        let kept = HandlerError::from(Error::bad_request(http::StatusCode::IM_A_TEAPOT, "no"))
            .into_error("M");
        assert_eq!(kept.status(), http::StatusCode::IM_A_TEAPOT);
    }
}
