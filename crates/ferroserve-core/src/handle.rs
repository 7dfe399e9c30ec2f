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

use crate::context::{self, CancelOnDrop, ContextCell, RequestContext};
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
    ctx: ContextCell,
    slot: Option<Guard>,
}

impl<I> std::fmt::Debug for ResponseStream<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("request_id", &self.ctx.get().request_id())
            .field("deployment", &self.ctx.get().deployment())
            .finish_non_exhaustive()
    }
}

impl<I> ResponseStream<I> {
    fn new(inner: Pin<Box<dyn Stream<Item = I> + Send>>, ctx: RequestContext, slot: Guard) -> Self {
        ResponseStream {
            inner: Some(inner),
            ctx: ContextCell::new(ctx),
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
            self.ctx.get().cancel();
            self.finish();
        }
    }
}

impl<I> Unpin for ResponseStream<I> {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::future::BoxFuture;
    use futures_util::{FutureExt, StreamExt};
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::balance::{Endpoint, Member};
    use crate::deployment::Deployment;
    use crate::replica::{LocalReplica, Replica};
    use crate::wire::WireCall;

    /// What a replica saw of the call it ran.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Seen {
        request_id: String,
        deployment: String,
        replica: String,
        model_id: Option<String>,
        remaining_ms: Option<u128>,
    }

    struct Model;

    #[derive(Serialize, Deserialize)]
    struct Look;

    impl Handles<Look> for Model {
        type Output = Seen;
        async fn call(&self, _: Look) -> Seen {
            let ctx = crate::current().expect("a call runs under its context");
            Seen {
                request_id: ctx.request_id().to_owned(),
                deployment: ctx.deployment().to_owned(),
                replica: ctx
                    .replica()
                    .map(|r| r.replica_id().to_owned())
                    .unwrap_or_default(),
                model_id: ctx.multiplexed_model_id().map(str::to_owned),
                remaining_ms: ctx.remaining().map(|d| d.as_millis()),
            }
        }
    }

    /// Waits until told to finish; records whether it was cancelled.
    struct Hold(tokio::sync::watch::Receiver<bool>, Arc<AtomicBool>);

    impl Handles<Hold> for Model {
        type Output = ();
        async fn call(&self, Hold(mut go, cancelled): Hold) {
            let ctx = crate::current().expect("a call runs under its context");
            struct Guard(RequestContext, Arc<AtomicBool>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.1.store(self.0.is_cancelled(), Ordering::SeqCst);
                }
            }
            let _guard = Guard(ctx, cancelled);
            let _ = go.wait_for(|go| *go).await;
        }
    }

    struct Explode;

    impl Handles<Explode> for Model {
        type Output = ();
        async fn call(&self, _: Explode) {
            panic!("the model fell over");
        }
    }

    async fn started(replicas: usize, max_ongoing: usize) -> crate::BoundDeployment<Model> {
        let model = Deployment::new("Model")
            .num_replicas(replicas)
            .max_ongoing_requests(max_ongoing)
            .max_queued_requests(1)
            .bind(|| Model)
            .remote_method::<Look>();
        model.node_ref().start().await.unwrap();
        model
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_carries_its_callers_id_and_deadline_but_not_its_model_id() {
        let model = started(1, 10).await;
        let handle = model.handle();
        let parent = RequestContext::new("req-1", Some(Duration::from_secs(2)))
            .with_model_id(Some(Arc::from("caller's model")));
        tokio::time::advance(Duration::from_millis(500)).await;
        let seen = parent.scope(handle.remote(Look)).await.unwrap();
        assert_eq!(
            seen,
            Seen {
                request_id: "req-1".into(),
                deployment: "Model".into(),
                replica: "Model#0".into(),
                model_id: None,
                remaining_ms: Some(1500),
            }
        );
        let seen = handle.with_model_id("m7").remote(Look).await.unwrap();
        assert_eq!(seen.model_id.as_deref(), Some("m7"));
        assert_eq!(
            seen.request_id.len(),
            36,
            "a call outside a request gets a fresh id"
        );
        model.node_ref().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_call_cancels_the_callee_and_a_queued_call_leaves_the_queue() {
        let model = started(1, 1).await;
        let handle = model.handle();
        let (release, go) = tokio::sync::watch::channel(false);
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut running = Box::pin(handle.remote(Hold(go.clone(), cancelled.clone())));
        assert!((&mut running).now_or_never().is_none());
        assert_eq!(handle.num_ongoing(), 1);
        let mut queued = Box::pin(handle.remote(Look));
        assert!((&mut queued).now_or_never().is_none());
        assert_eq!(handle.num_queued(), 1);
        let err = handle.remote(Look).await.unwrap_err();
        assert!(matches!(err, Error::Backpressure { .. }), "{err}");
        drop(queued);
        assert_eq!(
            handle.num_queued(),
            0,
            "a dropped call leaves the queue at once"
        );
        drop(running);
        assert!(
            cancelled.load(Ordering::SeqCst),
            "cancelled before its future dropped"
        );
        assert_eq!(handle.num_ongoing(), 0, "its slot is free again");
        let finished = Arc::new(AtomicBool::new(false));
        release.send(true).unwrap();
        handle.remote(Hold(go, finished.clone())).await.unwrap();
        assert!(
            !finished.load(Ordering::SeqCst),
            "a call that ends is not cancelled"
        );
        model.node_ref().stop();
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_method_fails_its_call_and_the_replica_serves_on() {
        let model = started(1, 10).await;
        let handle = model.handle();
        let err = handle.remote(Explode).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "deployment 'Model' failed: panicked: the model fell over"
        );
        assert_eq!(handle.remote(Look).await.unwrap().replica, "Model#0");
        assert_eq!(model.replicas().metrics().errors(), 1);
        model.node_ref().stop();
    }

    /// A replica "in another process": it holds no instance and takes only wire calls, which
    /// it answers through a replica in this process after a round trip through the encoding.
    struct Elsewhere(LocalReplica<Model>);

    impl Endpoint for Elsewhere {
        fn holds_model(&self, _: &str) -> bool {
            false
        }
    }

    impl Replica<Model> for Elsewhere {
        fn id(&self) -> &str {
            "Model#far"
        }
        fn as_local(&self) -> Option<&LocalReplica<Model>> {
            None
        }
        fn call_wire(&self, call: WireCall) -> BoxFuture<'static, Result<Bytes, Error>> {
            // What a transport does: bytes out, bytes in.
            let call = WireCall {
                method: call.method.clone(),
                ctx: crate::wire::decode(&crate::wire::encode(&call.ctx).unwrap()).unwrap(),
                payload: Bytes::copy_from_slice(&call.payload),
            };
            self.0.call_wire(call)
        }
        fn model_ids(&self) -> Vec<String> {
            Vec::new()
        }
    }

    fn elsewhere(model: &crate::BoundDeployment<Model>) -> DeploymentHandle<Model> {
        let set = model.replicas();
        let far: Arc<crate::replica::ReplicaMember<Model>> =
            Member::new(Elsewhere(LocalReplica::new(Model, "Model#0".into(), &set)));
        set.balancer().set_members(vec![far]);
        model.handle()
    }

    #[tokio::test(start_paused = true)]
    async fn a_registered_message_reaches_a_replica_elsewhere_with_its_context() {
        let model = Deployment::new("Model")
            .bind(|| Model)
            .remote_method::<Look>();
        let handle = elsewhere(&model);
        let parent = RequestContext::new("req-far", Some(Duration::from_secs(3)));
        let seen = parent
            .scope(handle.with_model_id("m1").remote(Look))
            .await
            .unwrap();
        assert_eq!(
            seen,
            Seen {
                request_id: "req-far".into(),
                deployment: "Model".into(),
                replica: "Model#0".into(),
                model_id: Some("m1".into()),
                remaining_ms: Some(3000),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn what_needs_the_instance_says_so_on_a_replica_elsewhere() {
        let model = Deployment::new("Model")
            .bind(|| Model)
            .remote_method::<Look>();
        let handle = elsewhere(&model);
        let (_release, go) = tokio::sync::watch::channel(false);
        let err = handle.remote(Hold(go, Arc::default())).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("register it with `.remote_method::<"),
            "{err}"
        );
        let err = handle.call(|_model| async {}).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "replica 'Model#far' of deployment 'Model' runs in another process: a closure call \
             needs a replica in this process"
        );
        assert!(matches!(err, Error::NotInProcess { .. }));
        assert_eq!(
            handle.num_ongoing(),
            0,
            "failed calls give their slots back"
        );
    }

    impl HandlesStream<Look> for Model {
        type Item = String;
        fn stream(
            self: Arc<Self>,
            _: Look,
        ) -> impl futures_util::Stream<Item = String> + Send + 'static {
            futures_util::stream::iter(["a", "b"].map(String::from))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_holds_its_slot_until_it_ends() {
        let model = started(1, 10).await;
        let handle = model.handle();
        let mut words = handle.stream(Look).await.unwrap();
        assert_eq!(handle.num_ongoing(), 1);
        assert_eq!(words.next().await.as_deref(), Some("a"));
        assert_eq!(words.next().await.as_deref(), Some("b"));
        assert_eq!(words.next().await, None);
        assert_eq!(handle.num_ongoing(), 0, "released at the end");
        model.node_ref().stop();
    }
}
