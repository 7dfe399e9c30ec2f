//! Replicas: what a handle call or an HTTP request runs on, behind one trait.
//!
//! [`Replica`] is the boundary between "a handle and its balancer" and "where the work runs".
//! A [`LocalReplica`] (an instance in this process) implements it today; a replica in another
//! process implements it with a connection instead of an instance. The balancer picks among
//! replicas by load alone ([`crate::balance`]); what the caller does with the one it got
//! depends on what it needs:
//!
//! | call | a replica in this process | a replica elsewhere |
//! |---|---|---|
//! | `handle.remote(msg)` | the method runs on the instance, nothing copied | the message is encoded and sent ([`Replica::call_wire`]), if the deployment registered `M` with `remote_method` |
//! | `handle.call(\|instance\| ..)`, `handle.stream(msg)`, an HTTP request | runs on the instance | [`Error::NotInProcess`] |
//!
//! A [`ReplicaSet`] is what callers hold: the balancer over one deployment's replicas, the
//! methods they take over a wire, and the deployment's metric series. Every version of a
//! deployment shares one (a rolling update takes its predecessor's), so that traffic and
//! handles of both versions meet in one place.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};

use crate::balance::{Acquire, Balancer, Endpoint, Member, Slot};
use crate::context::{RequestContext, Scoped};
use crate::error::Error;
use crate::metrics::DeploymentMetrics;
use crate::panic::Catch;
use crate::sync::lock;
use crate::tag::ReplicaTag;
use crate::wire::{Methods, WireCall};

/// A replica of a deployment whose instances are `T`, as callers reach it. See the
/// [module docs](self).
pub trait Replica<T: Send + Sync + 'static>: Endpoint {
    /// `Deployment#n`.
    fn id(&self) -> &str;

    /// This replica as an instance in this process, if it is one.
    fn as_local(&self) -> Option<&LocalReplica<T>>;

    /// Runs one call whose message crossed (or could have crossed) a process boundary, and
    /// returns its encoded output. The caller holds the replica's slot meanwhile. Cancel safe:
    /// dropping the future cancels the call on the replica.
    fn call_wire(&self, call: WireCall) -> BoxFuture<'static, Result<Bytes, Error>>;

    /// The multiplexed model ids the replica holds, sorted (for status reports).
    fn model_ids(&self) -> Vec<String>;
}

/// The balancer of a deployment whose instances are `T`.
pub type ReplicaBalancer<T> = Balancer<dyn Replica<T>>;
/// A slot on a replica of a deployment whose instances are `T`.
pub type ReplicaSlot<T> = Slot<dyn Replica<T>>;
/// A replica in its balancer, with its load.
pub type ReplicaMember<T> = Member<dyn Replica<T>>;

/// A replica in this process: one instance of the deployment's type.
pub struct LocalReplica<T> {
    instance: Arc<T>,
    tag: Arc<ReplicaTag>,
    methods: Arc<Methods<T>>,
    /// One slot of per-replica state for an upper layer (the HTTP layer keeps the replica's
    /// router here, built on its first request).
    extension: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl<T> std::fmt::Debug for LocalReplica<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalReplica")
            .field("id", &self.tag.replica_id())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> LocalReplica<T> {
    /// Replica `id` of the deployment of `set`, holding `instance`.
    pub fn new(instance: T, id: String, set: &ReplicaSet<T>) -> Self {
        LocalReplica {
            instance: Arc::new(instance),
            tag: Arc::new(ReplicaTag::new(id, set.metrics.clone())),
            methods: set.methods.clone(),
            extension: OnceLock::new(),
        }
    }

    /// The instance.
    pub fn instance(&self) -> &Arc<T> {
        &self.instance
    }

    /// The replica's tag (its id, deployment, application and published model ids).
    pub fn tag(&self) -> &Arc<ReplicaTag> {
        &self.tag
    }

    /// The per-replica state of type `X`, built by `init` on first use. The slot holds one
    /// value; an upper layer that asks for a type other than the one stored gets `None`.
    pub fn extension<X: Any + Send + Sync>(&self, init: impl FnOnce(&Arc<T>) -> X) -> Option<&X> {
        self.extension
            .get_or_init(|| Box::new(init(&self.instance)))
            .downcast_ref()
    }

    /// Runs `fut` as this replica's work: under `ctx` (so that [`crate::current`] names this
    /// replica and every line the handler logs carries its labels), counted in the deployment's
    /// metrics (one request, its processing time, an error if it panicked or `failed` says
    /// so). A panic becomes [`Error::Deployment`], logged, and the replica keeps serving.
    /// Cancel safe: dropping it drops `fut` (a dropped request is not counted here; the proxy
    /// counts it as 499).
    pub fn run<Fut: Future>(
        &self,
        ctx: RequestContext,
        fut: Fut,
        failed: fn(&Fut::Output) -> bool,
    ) -> RunOnReplica<Fut> {
        RunOnReplica {
            start: self.tag.metrics().start(),
            work: ctx.on_replica(&self.tag).scope(crate::panic::catch(fut)),
            failed,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`LocalReplica::run`]: the work, in its context, counted when it ends.
    #[must_use = "futures do nothing unless polled"]
    pub struct RunOnReplica<Fut: Future> {
        #[pin]
        work: Scoped<Catch<Fut>>,
        start: Option<Instant>,
        failed: fn(&Fut::Output) -> bool,
    }
}

impl<Fut: Future> Future for RunOnReplica<Fut> {
    /// The output, with the call's context (naming the replica) for what comes after.
    type Output = Result<(Fut::Output, RequestContext), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let outcome = ready!(this.work.as_mut().poll(cx));
        // The context stays with the finished future.
        let Some(ctx) = this.work.as_mut().take_context() else {
            unreachable!("the context is handed back once");
        };
        let Some(replica) = ctx.replica() else {
            unreachable!("run on a replica's context");
        };
        let failed = outcome.as_ref().map_or(true, *this.failed);
        replica.metrics().finish(*this.start, failed);
        Poll::Ready(match outcome {
            Ok(output) => Ok((output, ctx)),
            Err(detail) => {
                ctx.enter(|| tracing::error!("handler {detail}"));
                Err(Error::Deployment {
                    deployment: replica.deployment().to_string(),
                    detail,
                })
            }
        })
    }
}

impl<T: Send + Sync + 'static> Endpoint for LocalReplica<T> {
    fn holds_model(&self, model_id: &str) -> bool {
        self.tag.models().holds(model_id)
    }
}

impl<T: Send + Sync + 'static> Replica<T> for LocalReplica<T> {
    fn id(&self) -> &str {
        self.tag.replica_id()
    }

    fn as_local(&self) -> Option<&LocalReplica<T>> {
        Some(self)
    }

    fn call_wire(&self, call: WireCall) -> BoxFuture<'static, Result<Bytes, Error>> {
        let WireCall {
            method,
            ctx,
            payload,
        } = call;
        let deployment = self.tag.deployment().to_string();
        let Some(call) = self.methods.run(&method, self.instance.clone(), payload) else {
            return std::future::ready(Err(Error::Config(format!(
                "deployment '{deployment}' has no remote method {method}"
            ))))
            .boxed();
        };
        let run = self.run(RequestContext::from_wire(ctx), call, Result::is_err);
        async move {
            run.await?
                .0
                .map_err(|detail| Error::Deployment { deployment, detail })
        }
        .boxed()
    }

    fn model_ids(&self) -> Vec<String> {
        self.tag.models().list()
    }
}

/// The error for `what` routed to a replica elsewhere that needs one in this process.
fn not_in_process<T: Send + Sync + 'static>(slot: &ReplicaSlot<T>, what: &'static str) -> Error {
    Error::NotInProcess {
        deployment: slot.balancer().name().to_string(),
        replica: slot.endpoint().id().to_owned(),
        what,
    }
}

/// What a dispatched call ends with: its output, the slot it holds on its replica (for a
/// response that goes on streaming), and its context.
#[derive(Debug)]
pub struct Dispatched<O, T: Send + Sync + 'static> {
    /// What the call returned.
    pub output: O,
    /// The slot; the replica counts the call until it is dropped.
    pub slot: ReplicaSlot<T>,
    /// The call's context (naming the replica, for a call in this process).
    pub ctx: RequestContext,
}

/// A call on a replica elsewhere, as [`ReplicaSet::dispatch`] makes it.
pub type Elsewhere<O> = BoxFuture<'static, Result<O, Error>>;

pin_project_lite::pin_project! {
    /// A call on one of a deployment's replicas: the future of [`ReplicaSet::dispatch`]. It
    /// waits for a slot, then runs on the replica it got; the caller's future is moved once,
    /// into place.
    #[must_use = "futures do nothing unless polled"]
    pub struct Dispatch<T, M, L, R, Fut>
    where
        T: Send,
        T: Sync,
        T: 'static,
        Fut: Future,
    {
        #[pin]
        stage: Stage<T, M, L, R, Fut>,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    #[project_replace = StageOwn]
    enum Stage<T, M, L, R, Fut>
    where
        T: Send,
        T: Sync,
        T: 'static,
        Fut: Future,
    {
        // Waiting for a slot.
        Waiting {
            acquire: Acquire<dyn Replica<T>>,
            ctx: RequestContext,
            msg: M,
            local: L,
            elsewhere: R,
            failed: fn(&Fut::Output) -> bool,
        },
        // Running on a replica in this process.
        Local {
            slot: ReplicaSlot<T>,
            #[pin]
            run: RunOnReplica<Fut>,
        },
        // Running on a replica elsewhere.
        Remote {
            slot: ReplicaSlot<T>,
            ctx: RequestContext,
            call: Elsewhere<Fut::Output>,
        },
        // Finished.
        Done,
    }
}

impl<T, M, L, R, Fut> Stage<T, M, L, R, Fut>
where
    T: Send + Sync + 'static,
    L: FnOnce(&LocalReplica<T>, M) -> Fut,
    R: FnOnce(&ReplicaSlot<T>, M, RequestContext) -> Elsewhere<Fut::Output>,
    Fut: Future,
{
    /// The call started on the replica `slot` is on.
    fn running(
        slot: ReplicaSlot<T>,
        ctx: RequestContext,
        msg: M,
        local: L,
        elsewhere: R,
        failed: fn(&Fut::Output) -> bool,
    ) -> Self {
        match slot.endpoint().as_local() {
            Some(replica) => Stage::Local {
                run: replica.run(ctx, local(replica, msg), failed),
                slot,
            },
            None => Stage::Remote {
                call: elsewhere(&slot, msg, ctx.clone()),
                slot,
                ctx,
            },
        }
    }
}

impl<T, M, L, R, Fut> Future for Dispatch<T, M, L, R, Fut>
where
    T: Send + Sync + 'static,
    L: FnOnce(&LocalReplica<T>, M) -> Fut,
    R: FnOnce(&ReplicaSlot<T>, M, RequestContext) -> Elsewhere<Fut::Output>,
    Fut: Future,
{
    type Output = Result<Dispatched<Fut::Output, T>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut stage = self.project().stage;
        loop {
            match stage.as_mut().project() {
                StageProj::Waiting { acquire, .. } => {
                    let acquired = ready!(Pin::new(acquire).poll(cx));
                    let StageOwn::Waiting {
                        ctx,
                        msg,
                        local,
                        elsewhere,
                        failed,
                        ..
                    } = stage.as_mut().project_replace(Stage::Done)
                    else {
                        unreachable!("in the waiting stage");
                    };
                    stage.set(Stage::running(
                        acquired?, ctx, msg, local, elsewhere, failed,
                    ));
                }
                StageProj::Local { run, .. } => {
                    let outcome = ready!(run.poll(cx));
                    let StageOwn::Local { slot, .. } = stage.as_mut().project_replace(Stage::Done)
                    else {
                        unreachable!("in the local stage");
                    };
                    return Poll::Ready(outcome.map(|(output, ctx)| Dispatched {
                        output,
                        slot,
                        ctx,
                    }));
                }
                StageProj::Remote { call, .. } => {
                    let outcome = ready!(call.as_mut().poll(cx));
                    let StageOwn::Remote { slot, ctx, .. } =
                        stage.as_mut().project_replace(Stage::Done)
                    else {
                        unreachable!("in the remote stage");
                    };
                    return Poll::Ready(outcome.map(|output| Dispatched { output, slot, ctx }));
                }
                StageProj::Done => panic!("Dispatch polled after completion"),
            }
        }
    }
}

/// One deployment's replicas as callers reach them. See the [module docs](self).
pub struct ReplicaSet<T: Send + Sync + 'static> {
    balancer: Arc<ReplicaBalancer<T>>,
    methods: Arc<Methods<T>>,
    metrics: Arc<DeploymentMetrics>,
    /// The next replica number (`Deployment#n`), unique across versions of the deployment.
    next_id: AtomicUsize,
    /// Replicas being constructed.
    starting: AtomicUsize,
    /// Replicas no longer routed to, finishing their requests.
    stopping: Mutex<Vec<Arc<ReplicaMember<T>>>>,
}

impl<T: Send + Sync + 'static> std::fmt::Debug for ReplicaSet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("balancer", &self.balancer)
            .field("remote_methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> ReplicaSet<T> {
    /// An empty set for deployment `name` with these limits.
    pub fn new(name: &str, max_ongoing: usize, max_queued: Option<usize>) -> Self {
        let name: Arc<str> = name.into();
        ReplicaSet {
            metrics: Arc::new(DeploymentMetrics::new(&name)),
            balancer: Arc::new(Balancer::new(name, max_ongoing, max_queued)),
            methods: Arc::default(),
            next_id: AtomicUsize::new(0),
            starting: AtomicUsize::new(0),
            stopping: Mutex::new(Vec::new()),
        }
    }

    /// The deployment's name.
    pub fn name(&self) -> &Arc<str> {
        self.balancer.name()
    }

    /// The balancer over the replicas.
    pub fn balancer(&self) -> &Arc<ReplicaBalancer<T>> {
        &self.balancer
    }

    /// The methods the replicas take over a wire.
    pub fn methods(&self) -> &Arc<Methods<T>> {
        &self.methods
    }

    /// The deployment's replica-side metric series.
    pub fn metrics(&self) -> &Arc<DeploymentMetrics> {
        &self.metrics
    }

    /// Waits for a slot on a replica, preferring one that holds model `model_id`. Cancel safe.
    pub fn acquire(&self, model_id: Option<&str>) -> Acquire<dyn Replica<T>> {
        self.balancer.acquire_for(model_id)
    }

    /// Takes a slot on a replica (for `ctx`'s model, if it names one) and runs the call on it:
    /// `local(replica, msg)` on a replica in this process (as [`LocalReplica::run`] does), or
    /// `elsewhere(slot, msg, ctx)` on one elsewhere. Resolves to the output with its slot and
    /// context ([`Dispatched`], for a response that goes on streaming after the handler
    /// returns). Cancel safe: dropping it leaves the queue or drops the work.
    pub fn dispatch<M, L, R, Fut>(
        &self,
        ctx: RequestContext,
        msg: M,
        local: L,
        elsewhere: R,
        failed: fn(&Fut::Output) -> bool,
    ) -> Dispatch<T, M, L, R, Fut>
    where
        L: FnOnce(&LocalReplica<T>, M) -> Fut,
        R: FnOnce(&ReplicaSlot<T>, M, RequestContext) -> Elsewhere<Fut::Output>,
        Fut: Future,
    {
        let stage = match self.acquire(ctx.multiplexed_model_id()) {
            // A slot free now (the common case): running at once, with no waiting stage to
            // build and move out of.
            Acquire::Ready(Some(slot)) => Stage::running(slot, ctx, msg, local, elsewhere, failed),
            acquire => Stage::Waiting {
                acquire,
                ctx,
                msg,
                local,
                elsewhere,
                failed,
            },
        };
        Dispatch { stage }
    }

    /// As [`ReplicaSet::dispatch`] for work that needs the instance: `f` runs on a replica in
    /// this process; one elsewhere fails the call with [`Error::NotInProcess`] (`what` names
    /// the call in it).
    #[allow(clippy::type_complexity)]
    pub fn run_local<F, Fut>(
        &self,
        ctx: RequestContext,
        what: &'static str,
        f: F,
        failed: fn(&Fut::Output) -> bool,
    ) -> Dispatch<
        T,
        F,
        fn(&LocalReplica<T>, F) -> Fut,
        impl FnOnce(&ReplicaSlot<T>, F, RequestContext) -> Elsewhere<Fut::Output>,
        Fut,
    >
    where
        F: FnOnce(&LocalReplica<T>) -> Fut,
        Fut: Future,
        Fut::Output: Send + 'static,
    {
        fn call<T: Send + Sync + 'static, F: FnOnce(&LocalReplica<T>) -> Fut, Fut>(
            replica: &LocalReplica<T>,
            f: F,
        ) -> Fut {
            f(replica)
        }
        let elsewhere = move |slot: &ReplicaSlot<T>, _: F, _: RequestContext| -> Elsewhere<_> {
            Box::pin(std::future::ready(Err(not_in_process(slot, what))))
        };
        self.dispatch(ctx, f, call::<T, F, Fut>, elsewhere, failed)
    }

    /// The replica a slot is on, if it is in this process; else [`Error::NotInProcess`].
    pub fn local<'s>(
        &self,
        slot: &'s ReplicaSlot<T>,
        what: &'static str,
    ) -> Result<&'s LocalReplica<T>, Error> {
        slot.endpoint()
            .as_local()
            .ok_or_else(|| not_in_process(slot, what))
    }

    /// The next replica id, `Deployment#n`.
    pub(crate) fn next_replica_id(&self) -> String {
        format!("{}#{}", self.name(), self.next_id.fetch_add(1, SeqCst))
    }

    /// Counts a replica under construction until the guard drops.
    pub(crate) fn starting(&self) -> impl Drop + '_ {
        struct Starting<'a>(&'a AtomicUsize);
        impl Drop for Starting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        self.starting.fetch_add(1, SeqCst);
        Starting(&self.starting)
    }

    /// Replicas under construction.
    pub(crate) fn num_starting(&self) -> usize {
        self.starting.load(SeqCst)
    }

    /// Stops routing to `retire` at once; they show as stopping until
    /// [`ReplicaSet::wait_retired`] is done with them.
    pub(crate) fn retire(&self, retire: &[Arc<ReplicaMember<T>>]) {
        if retire.is_empty() {
            return;
        }
        self.balancer.remove(retire);
        lock(&self.stopping).extend(retire.iter().cloned());
    }

    /// The replicas retired and still finishing their requests.
    pub(crate) fn stopping(&self) -> Vec<Arc<ReplicaMember<T>>> {
        lock(&self.stopping).clone()
    }

    /// Waits (up to `timeout`) until retired replicas have finished their in-flight requests.
    /// Each instance is dropped when its last request ends, whether or not the wait timed out.
    pub(crate) async fn wait_retired(
        &self,
        retire: &[Arc<ReplicaMember<T>>],
        timeout: std::time::Duration,
    ) {
        if retire.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // A supervisor-side poll, off the request path: the replica count is small and a 10 ms
        // granularity is far below any drain timeout.
        while retire.iter().any(|r| r.load() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Some(busy) = retire.iter().find(|r| r.load() > 0) {
            tracing::warn!(replica = %busy.endpoint().id(), "replica still busy after {timeout:?}; it stops when its last request ends");
        }
        lock(&self.stopping).retain(|r| !retire.iter().any(|x| Arc::ptr_eq(x, r)));
        for r in retire {
            tracing::info!(replica = %r.endpoint().id(), "replica stopped");
        }
    }

    /// Stops routing to `retire`, then waits as [`ReplicaSet::wait_retired`] does.
    pub(crate) async fn drain(
        &self,
        retire: &[Arc<ReplicaMember<T>>],
        timeout: std::time::Duration,
    ) {
        self.retire(retire);
        self.wait_retired(retire, timeout).await;
    }
}
