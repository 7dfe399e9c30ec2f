//! The seam between the proxy and an application: one [`HttpEndpoint`] per application, and the
//! one way an HTTP handler runs on a replica.

use std::future::Future;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use ferroserve_core::replica::{LocalReplica, ReplicaSet};
use ferroserve_core::RequestContext;
use futures_util::future::{BoxFuture, FutureExt};

use crate::stream::attach;

/// What the proxy calls for an application: one per ingress kind (raw [`crate::Ingress`],
/// [`crate::api::ApiIngress`], an existing router).
pub trait HttpEndpoint: Send + Sync + 'static {
    /// Answers one request of the application mounted at the context's root path. Never fails:
    /// errors are already responses. Cancel safe: dropping the future cancels the request's
    /// work (its replica slot is released, a queued request leaves the queue).
    fn respond(
        &self,
        request: http::Request<Body>,
        ctx: RequestContext,
    ) -> BoxFuture<'static, Response>;
}

/// Takes a slot on a replica in this process and runs the HTTP handler `f` on it, under `ctx`.
/// The response keeps the slot for as long as its body streams (a complete body releases it at
/// once); a 5xx counts as a deployment error in the metrics; a failure to get a replica is
/// answered with its status. Cancel safe.
pub(crate) fn respond_on_replica<T, F, Fut>(
    replicas: &ReplicaSet<T>,
    ctx: RequestContext,
    f: F,
) -> impl Future<Output = Response> + use<T, F, Fut>
where
    T: Send + Sync + 'static,
    F: FnOnce(&LocalReplica<T>) -> Fut,
    Fut: Future<Output = Response>,
{
    replicas
        .run_local(ctx, "an HTTP request", f, |r| r.status().is_server_error())
        .map(|outcome| match outcome {
            Ok(done) => attach(done.output, done.ctx, done.slot),
            Err(e) => e.into_response(),
        })
}
