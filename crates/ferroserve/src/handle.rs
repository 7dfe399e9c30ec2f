//! Handles: typed calls from one deployment to another, through the callee's router.
//!
//! A deployment's methods that other deployments may call are messages: `impl Handles<Predict>
//! for Model` declares that `Model` answers a `Predict` with `Self::Output`, and
//! `handle.remote(Predict(x)).await` calls it. Today a call is a direct async call on a replica
//! in this process (no serialization, no copy); the message shape is what a remote transport will
//! carry later. For quick in-process calls, [`DeploymentHandle::call`] takes a closure.
//!
//! Every call carries the caller's [`RequestContext`]: the same request id, the remaining
//! deadline, and a child cancellation token. Dropping the call's future cancels it: it leaves the
//! callee's queue, or interrupts the callee's handler at its next `.await`.
//!
//! Unlike Ray's `handle.remote()`, which starts work at once, a Rust future runs when awaited:
//! to fan out, await several calls together (`tokio::join!`, `futures::future::join_all`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::response::Response;
use futures_util::FutureExt;

use crate::context::{self, CancelOnDrop, RequestContext};
use crate::deployment::panic_message;
use crate::error::Error;
use crate::metrics::{in_replica, in_replica_sync, ReplicaLabels};
use crate::router::{Replica, Router, Slot};
use crate::stream::{HandlesStream, ResponseStream};

/// A deployment method callable through a handle: the deployment answers message `M`.
///
/// ```
/// struct Model;
/// struct Sum(Vec<f64>);
///
/// impl ferroserve::Handles<Sum> for Model {
///     type Output = f64;
///     async fn handle(&self, Sum(xs): Sum) -> f64 {
///         xs.iter().sum()
///     }
/// }
/// ```
pub trait Handles<M>: Send + Sync + 'static {
    /// What the method returns.
    type Output: Send + 'static;
    /// Runs the method on this replica. Dropping the future cancels the call.
    fn handle(&self, msg: M) -> impl Future<Output = Self::Output> + Send;
}

/// A handle to a deployment: `Clone + Send + Sync`, cheap to clone, routed through the same
/// router (power of two choices, `max_ongoing_requests`, queue, backpressure) as HTTP traffic.
pub struct DeploymentHandle<T: Send + Sync + 'static> {
    router: Arc<Router<T>>,
    /// The model every call names ([`DeploymentHandle::with_model_id`]).
    model_id: Option<Arc<str>>,
}

impl<T: Send + Sync + 'static> Clone for DeploymentHandle<T> {
    fn clone(&self) -> Self {
        DeploymentHandle {
            router: self.router.clone(),
            model_id: self.model_id.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> std::fmt::Debug for DeploymentHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentHandle")
            .field("deployment", &self.router.name())
            .field("model_id", &self.model_id)
            .finish()
    }
}

impl<T: Send + Sync + 'static> DeploymentHandle<T> {
    pub(crate) fn new(router: Arc<Router<T>>) -> Self {
        DeploymentHandle {
            router,
            model_id: None,
        }
    }

    /// A clone of this handle whose calls are for model `model_id` (Ray's
    /// `handle.options(multiplexed_model_id="m1")`): the callee sees it in
    /// [`crate::multiplex::model_id`], and the router prefers a replica that holds the model. An
    /// empty id means none. Calls made while serving a request do not inherit that request's
    /// model id (as in Ray); use this to pass it on.
    pub fn with_model_id(&self, model_id: impl Into<Arc<str>>) -> Self {
        let model_id: Arc<str> = model_id.into();
        DeploymentHandle {
            router: self.router.clone(),
            model_id: (!model_id.is_empty()).then_some(model_id),
        }
    }

    /// The model this handle's calls name, if any.
    pub fn model_id(&self) -> Option<&str> {
        self.model_id.as_deref()
    }

    /// The context of a call made through this handle: a child of the current request's, or a
    /// fresh one, naming this handle's model id.
    fn call_context(&self) -> RequestContext {
        let ctx = match context::current() {
            Some(parent) => parent.child(self.router.name()),
            None => RequestContext::new(uuid_v4(), None),
        };
        match &self.model_id {
            None => ctx,
            Some(id) => ctx.with_model_id(Some(id.clone())),
        }
    }

    /// The deployment this handle calls.
    pub fn deployment_name(&self) -> &str {
        self.router.name()
    }

    /// Calls the deployment's `Handles<M>` method with `msg` on one of its replicas.
    ///
    /// Errors: [`Error::Backpressure`] when its queue is full, [`Error::Deployment`] when the
    /// method panics. The caller's deadline travels with the call (the callee sees it in
    /// [`RequestContext::deadline`]) and is enforced where it was set: when an HTTP request
    /// times out, the proxy drops it with every handle call it awaits. Cancel safe: dropping the
    /// future cancels the call, and the callee's context is cancelled before its future drops.
    pub async fn remote<M>(&self, msg: M) -> Result<T::Output, Error>
    where
        T: Handles<M>,
        M: Send + 'static,
    {
        self.call(move |instance: Arc<T>| async move { instance.handle(msg).await })
            .await
    }

    /// Runs `f` on one of the deployment's replicas, with the same routing, context and
    /// cancellation as [`DeploymentHandle::remote`]. An in-process convenience.
    pub async fn call<F, Fut>(&self, f: F) -> Result<Fut::Output, Error>
    where
        F: FnOnce(Arc<T>) -> Fut + Send,
        Fut: Future + Send,
    {
        let ctx = self.call_context();
        // The deadline is enforced where it was set (the proxy drops the whole request, handle
        // calls included); the callee sees it as `ctx.deadline()`.
        let call = run_on_replica(&self.router, ctx.clone(), |replica| {
            f(replica.instance.clone())
        });
        CancelOnDrop::new(ctx, |_| {}, call).await
    }

    /// Calls the deployment's streaming method for `msg` (Ray's `handle.options(stream=True)`):
    /// waits for a slot on a replica like [`DeploymentHandle::remote`], then returns the
    /// replica's stream. The stream holds the slot until it ends; dropping it cancels the call,
    /// and cancelling the caller's request drops it. Forward it as an HTTP response with
    /// [`crate::stream::StreamingResponse`].
    pub async fn stream<M>(&self, msg: M) -> Result<ResponseStream<T::Item>, Error>
    where
        T: HandlesStream<M>,
        M: Send + 'static,
    {
        let ctx = self.call_context();
        let acquire = self.router.acquire_for(ctx.multiplexed_model_id());
        let slot = CancelOnDrop::new(ctx.clone(), |_| {}, acquire).await?;
        let ctx = ctx.on_replica(&slot.replica().models);
        let instance = slot.replica().instance.clone();
        let inner = ctx.enter(|| Box::pin(instance.stream(msg)));
        Ok(ResponseStream::new(inner, ctx, Box::new(slot)))
    }

    /// Requests waiting for a replica of this deployment.
    pub fn num_queued(&self) -> usize {
        self.router.num_queued()
    }

    /// Requests running on this deployment's replicas.
    pub fn num_ongoing(&self) -> usize {
        self.router.num_ongoing()
    }

    /// Replicas currently serving.
    pub fn num_replicas(&self) -> usize {
        self.router.num_replicas()
    }
}

/// Takes a slot on a replica, then runs `f` on its instance under `ctx`, holding the slot until
/// the future completes. A panic becomes [`Error::Deployment`] and the replica keeps serving.
pub(crate) async fn run_on_replica<T, F, Fut>(
    router: &Arc<Router<T>>,
    ctx: RequestContext,
    f: F,
) -> Result<Fut::Output, Error>
where
    T: Send + Sync + 'static,
    F: FnOnce(&Replica<T>) -> Fut,
    Fut: Future,
{
    run_observed(router, ctx, f, |_| false)
        .await
        .map(|(out, _slot)| out)
}

/// As [`run_on_replica`] for an HTTP handler, but hands the slot back with the response, for a
/// response that goes on streaming after the handler returns. A 5xx response counts as a
/// deployment error in the metrics.
pub(crate) async fn run_keeping_slot<T, F, Fut>(
    router: &Arc<Router<T>>,
    ctx: RequestContext,
    f: F,
) -> Result<(Response, Slot<T>), Error>
where
    T: Send + Sync + 'static,
    F: FnOnce(&Replica<T>) -> Fut,
    Fut: Future<Output = Response>,
{
    run_observed(router, ctx, f, |r| r.status().is_server_error()).await
}

/// Takes a slot, runs `f` on its replica as that replica's work (every line the handler logs
/// carries application, deployment, replica and request id), and records the deployment's
/// metrics: one request, its processing time, and an error if it panicked or `failed` says so.
/// Cancel safe: dropping it leaves the queue or drops the handler (a dropped request is not
/// counted here; the proxy counts it as 499).
async fn run_observed<T, F, Fut>(
    router: &Arc<Router<T>>,
    ctx: RequestContext,
    f: F,
    failed: fn(&Fut::Output) -> bool,
) -> Result<(Fut::Output, Slot<T>), Error>
where
    T: Send + Sync + 'static,
    F: FnOnce(&Replica<T>) -> Fut,
    Fut: Future,
{
    let slot = router.acquire_for(ctx.multiplexed_model_id()).await?;
    let ctx = ctx
        .for_deployment(router.name())
        .on_replica(&slot.replica().models);
    let metrics = router.metrics();
    let replica = slot.replica();
    let labels = replica
        .labels
        .get_or_init(|| Arc::new(ReplicaLabels::new(metrics, &replica.id)))
        .clone();
    let start = metrics.start();
    let fut = f(replica);
    let outcome = ctx
        .clone()
        .scope(in_replica(
            labels.clone(),
            AssertUnwindSafe(fut).catch_unwind(),
        ))
        .await;
    match outcome {
        Ok(out) => {
            metrics.finish(start, failed(&out));
            Ok((out, slot))
        }
        Err(panic) => {
            metrics.finish(start, true);
            let detail = panic_message(&*panic);
            ctx.enter(|| in_replica_sync(labels, || tracing::error!("handler {detail}")));
            Err(Error::Deployment {
                deployment: router.name().to_string(),
                detail,
            })
        }
    }
}

/// A random (version 4) UUID, for requests that come without `x-request-id`.
pub(crate) fn uuid_v4() -> Arc<str> {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut buf);
    Arc::from(&*text)
}
