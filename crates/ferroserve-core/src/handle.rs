//! Handles: typed calls from one deployment to another, through the callee's balancer.
//!
//! A deployment's methods that other deployments may call are messages: `impl Handles<Predict>
//! for Model` declares that `Model` answers a `Predict` with `Self::Output`, and
//! `handle.remote(Predict(x)).await` calls it. A call to a replica in this process is a direct
//! async call on its instance (no serialization, no copy); a replica in another process takes
//! the methods its deployment registered with
//! [`BoundDeployment::remote_method`](crate::BoundDeployment::remote_method), encoded (see
//! [`crate::wire`]). [`DeploymentHandle::call`] (a closure over the instance) and
//! [`DeploymentHandle::stream`] run in process only.
//!
//! Every call carries the caller's [`RequestContext`]: the same request id, the remaining
//! deadline, and a child cancellation token. Dropping the call's future cancels it: it leaves the
//! callee's queue, or interrupts the callee's method at its next `.await`.
//!
//! Unlike Ray's `handle.remote()`, which starts work at once, a Rust future runs when awaited:
//! to fan out, await several calls together (`tokio::join!`, `futures::future::join_all`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;

use crate::context::{self, CancelOnDrop, RequestContext};
use crate::error::Error;
pub use crate::method::{Handles, HandlesStream};
use crate::replica::{Elsewhere, ReplicaMember, ReplicaSet};
use crate::wire;

/// A handle to a deployment: `Clone + Send + Sync`, cheap to clone, routed through the same
/// balancer (power of two choices, `max_ongoing_requests`, queue, backpressure) as HTTP
/// traffic.
pub struct DeploymentHandle<T: Send + Sync + 'static> {
    replicas: Arc<ReplicaSet<T>>,
    /// The model every call names ([`DeploymentHandle::with_model_id`]).
    model_id: Option<Arc<str>>,
}

impl<T: Send + Sync + 'static> Clone for DeploymentHandle<T> {
    fn clone(&self) -> Self {
        DeploymentHandle {
            replicas: self.replicas.clone(),
            model_id: self.model_id.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> std::fmt::Debug for DeploymentHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentHandle")
            .field("deployment", self.replicas.name())
            .field("model_id", &self.model_id)
            .finish()
    }
}

impl<T: Send + Sync + 'static> DeploymentHandle<T> {
    /// A handle whose calls go to `replicas`.
    pub fn new(replicas: Arc<ReplicaSet<T>>) -> Self {
        DeploymentHandle {
            replicas,
            model_id: None,
        }
    }

    /// A clone of this handle whose calls are for model `model_id` (Ray's
    /// `handle.options(multiplexed_model_id="m1")`): the callee sees it in
    /// [`crate::multiplex::model_id`], and the balancer prefers a replica that holds the model.
    /// An empty id means none. Calls made while serving a request do not inherit that request's
    /// model id (as in Ray); use this to pass it on.
    pub fn with_model_id(&self, model_id: impl Into<Arc<str>>) -> Self {
        let model_id: Arc<str> = model_id.into();
        DeploymentHandle {
            replicas: self.replicas.clone(),
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
            Some(parent) => parent.child(self.replicas.name()),
            None => RequestContext::new(context::RequestId::generate(), None),
        };
        match &self.model_id {
            None => ctx,
            Some(id) => ctx.with_model_id(Some(id.clone())),
        }
    }

    /// The deployment this handle calls.
    pub fn deployment_name(&self) -> &str {
        self.replicas.name()
    }

    /// Calls the deployment's `Handles<M>` method with `msg` on one of its replicas.
    ///
    /// Errors: [`Error::Backpressure`] when its queue is full, [`Error::Deployment`] when the
    /// method panics, [`Error::Config`] when the replica picked runs in another process and `M`
    /// is not one of the deployment's remote methods. The caller's deadline travels with the
    /// call (the callee sees it in [`RequestContext::deadline`]) and is enforced where it was
    /// set: when an HTTP request times out, the proxy drops it with every handle call it
    /// awaits. Cancel safe: dropping the future cancels the call, and the callee's context is
    /// cancelled before its future drops.
    pub async fn remote<M>(&self, msg: M) -> Result<T::Output, Error>
    where
        T: Handles<M>,
        M: Send + 'static,
    {
        let ctx = self.call_context();
        let replicas = &self.replicas;
        let call = replicas.dispatch(
            ctx.clone(),
            msg,
            |replica, msg| {
                let instance = replica.instance().clone();
                async move { instance.call(msg).await }
            },
            |slot, msg, ctx| -> Elsewhere<T::Output> {
                Box::pin(send(replicas.clone(), slot.clone_endpoint(), msg, ctx))
            },
            |_| false,
        );
        Ok(CancelOnDrop::new(ctx, |_| {}, call).await?.output)
    }

    /// Runs `f` on one of the deployment's replicas, with the same routing, context and
    /// cancellation as [`DeploymentHandle::remote`]. In process only: a replica elsewhere
    /// answers [`Error::NotInProcess`].
    pub async fn call<F, Fut>(&self, f: F) -> Result<Fut::Output, Error>
    where
        F: FnOnce(Arc<T>) -> Fut + Send,
        Fut: Future + Send,
        Fut::Output: Send + 'static,
    {
        let ctx = self.call_context();
        let call = self.replicas.run_local(
            ctx.clone(),
            "a closure call",
            |local| f(local.instance().clone()),
            |_| false,
        );
        Ok(CancelOnDrop::new(ctx, |_| {}, call).await?.output)
    }

    /// Calls the deployment's streaming method for `msg` (Ray's `handle.options(stream=True)`):
    /// waits for a slot on a replica like [`DeploymentHandle::remote`], then returns the
    /// replica's stream. The stream holds the slot until it ends; dropping it cancels the call,
    /// and cancelling the caller's request drops it. In process only (a replica elsewhere
    /// answers [`Error::NotInProcess`]). Forward it as an HTTP response with the HTTP layer's
    /// `StreamingResponse`.
    pub async fn stream<M>(&self, msg: M) -> Result<ResponseStream<T::Item>, Error>
    where
        T: HandlesStream<M>,
        M: Send + 'static,
    {
        let ctx = self.call_context();
        let acquire = self.replicas.acquire(ctx.multiplexed_model_id());
        let slot = CancelOnDrop::new(ctx.clone(), |_| {}, acquire).await?;
        let local = self.replicas.local(&slot, "a streaming call")?;
        let ctx = ctx.on_replica(local.tag());
        let instance = local.instance().clone();
        let inner = ctx.enter(|| Box::pin(instance.stream(msg)));
        Ok(ResponseStream::new(inner, ctx, Box::new(slot)))
    }

    /// Requests waiting for a replica of this deployment.
    pub fn num_queued(&self) -> usize {
        self.replicas.balancer().num_queued()
    }

    /// Requests running on this deployment's replicas.
    pub fn num_ongoing(&self) -> usize {
        self.replicas.balancer().num_ongoing()
    }

    /// Replicas currently serving.
    pub fn num_replicas(&self) -> usize {
        self.replicas.balancer().len()
    }
}

/// A call to a replica elsewhere: `msg` encoded as its deployment's remote method, sent, and
/// the output decoded.
async fn send<T, M>(
    replicas: Arc<ReplicaSet<T>>,
    replica: Arc<ReplicaMember<T>>,
    msg: M,
    ctx: RequestContext,
) -> Result<T::Output, Error>
where
    T: Handles<M>,
    M: Send + 'static,
{
    let methods = replicas.methods();
    let name = replicas.name();
    let encoding_failed = |detail: String| Error::Deployment {
        deployment: name.to_string(),
        detail,
    };
    let call = methods
        .encode_call(&msg, ctx.to_wire())
        .ok_or_else(|| wire::unregistered::<M>(name))?
        .map_err(encoding_failed)?;
    let output = replica.endpoint().call_wire(call).await?;
    methods
        .decode_output::<M, T::Output>(&output)
        .map_err(encoding_failed)
}

/// Something that must live as long as a response or a stream: a replica slot.
pub type Guard = Box<dyn Send + Sync>;

/// The stream a handle returns: items from one replica, polled under the call's context.
///
/// Dropping it before the end cancels the call (the callee's context first, then its stream).
/// A panic inside the callee's stream ends it, logged.
pub struct ResponseStream<I> {
    inner: Option<Pin<Box<dyn Stream<Item = I> + Send>>>,
    ctx: RequestContext,
    slot: Option<Guard>,
}

impl<I> std::fmt::Debug for ResponseStream<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("request_id", &self.ctx.request_id())
            .field("deployment", &self.ctx.deployment())
            .finish_non_exhaustive()
    }
}

impl<I> ResponseStream<I> {
    fn new(inner: Pin<Box<dyn Stream<Item = I> + Send>>, ctx: RequestContext, slot: Guard) -> Self {
        ResponseStream {
            inner: Some(inner),
            ctx,
            slot: Some(slot),
        }
    }

    fn finish(&mut self) {
        self.slot = None;
        if let Some(inner) = self.inner.take() {
            self.ctx.enter(|| drop(inner));
        }
    }
}

impl<I> Stream for ResponseStream<I> {
    type Item = I;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<I>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = this
            .ctx
            .enter(|| crate::panic::catch_sync(|| inner.as_mut().poll_next(cx)));
        match polled {
            Ok(Poll::Ready(None)) => {
                this.finish();
                Poll::Ready(None)
            }
            Ok(other) => other,
            Err(detail) => {
                this.ctx.enter(|| tracing::error!("stream {detail}"));
                this.finish();
                Poll::Ready(None)
            }
        }
    }
}

impl<I> Drop for ResponseStream<I> {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.ctx.cancel();
            self.finish();
        }
    }
}

impl<I> Unpin for ResponseStream<I> {}
