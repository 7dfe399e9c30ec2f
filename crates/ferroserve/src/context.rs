//! The request context: id, deadline and cancellation, carried by every request and handle call.
//!
//! The proxy creates a [`RequestContext`] for each HTTP request; a handle call made while handling
//! it gets a child context (same id, the remaining deadline, a child cancellation token). Inside a
//! handler, [`current`] returns the context of the request being served.
//!
//! Cancellation is drop-based: when the client goes away or the deadline passes, the request's
//! future is dropped, which interrupts the handler at its next `.await` and drops every handle call
//! it is awaiting. The context's token is cancelled at the same moment, so code that must *observe*
//! cancellation (the seed's `except asyncio.CancelledError:`) or blocking code that polls a flag can
//! do so.
//!
//! The idioms, for the seed's Python on the left:
//!
//! | Ray Serve | ferroserve |
//! |---|---|
//! | `except asyncio.CancelledError: print("cancelled")` | `let _guard = ferroserve::on_cancel(\|\| println!("cancelled"));` before the awaits |
//! | `await asyncio.shield(work())` | `ferroserve::shield(work()).await` (runs to completion on its own task) |
//! | code that never awaits cannot be interrupted | blocking code polls `ctx.is_cancelled()` (one atomic load) and stops early |
//! | async clean-up after cancellation | `tokio::spawn(async move { ctx.cancelled().await; cleanup().await })` |
//!
//! ```
//! # use ferroserve::{Ingress, Request};
//! struct Model;
//!
//! impl Ingress for Model {
//!     type Output = String;
//!     async fn call(&self, request: Request) -> String {
//!         let _guard = ferroserve::on_cancel(|| println!("Request got cancelled!"));
//!         let ctx = request.context().clone();
//!         // CPU-bound work on a blocking thread stops as soon as the request is cancelled.
//!         let steps = tokio::task::spawn_blocking(move || {
//!             let mut steps = 0u64;
//!             while steps < 1_000 && !ctx.is_cancelled() {
//!                 steps += 1; // one unit of inference
//!             }
//!             steps
//!         })
//!         .await
//!         .unwrap();
//!         format!("{steps} steps")
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The context of one request: its id, deadline and cancellation token. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RequestContext {
    inner: Arc<Inner>,
    /// `None` outside a replica: no allocation for a context that never reaches one.
    deployment: Option<Arc<str>>,
    /// `None` until the proxy names the application's route prefix.
    root_path: Option<Arc<str>>,
    /// The model this request is for (`serve_multiplexed_model_id`), if any.
    model_id: Option<Arc<str>>,
    /// The model ids published by the replica serving this context (set on a replica only).
    replica_models: Option<Arc<crate::multiplex::ModelIds>>,
}

#[derive(Debug)]
struct Inner {
    request_id: Arc<str>,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    cancel: CancellationToken,
    limits: crate::limits::Limits,
}

impl RequestContext {
    /// A fresh root context: the request id, and an optional end-to-end timeout from now.
    pub fn new(request_id: impl Into<Arc<str>>, timeout: Option<Duration>) -> Self {
        Self::with_limits(request_id, timeout, crate::limits::Limits::default())
    }

    /// A fresh root context under the server's request limits.
    pub(crate) fn with_limits(
        request_id: impl Into<Arc<str>>,
        timeout: Option<Duration>,
        limits: crate::limits::Limits,
    ) -> Self {
        RequestContext {
            inner: Arc::new(Inner {
                request_id: request_id.into(),
                deadline: timeout.map(|t| Instant::now() + t),
                timeout,
                cancel: CancellationToken::new(),
                limits,
            }),
            deployment: None,
            root_path: None,
            model_id: None,
            replica_models: None,
        }
    }

    /// The same context, for a request to model `model_id` (an empty id means none, as in Ray).
    pub(crate) fn with_model_id(mut self, model_id: Option<Arc<str>>) -> Self {
        self.model_id = model_id.filter(|id| !id.is_empty());
        self
    }

    /// The model this request is for: the `serve_multiplexed_model_id` header of an HTTP request,
    /// or the id a handle call was made with ([`crate::DeploymentHandle::with_model_id`]); `None`
    /// when the request names no model (Ray's `serve.get_multiplexed_model_id()` returning `""`).
    pub fn multiplexed_model_id(&self) -> Option<&str> {
        self.model_id.as_deref()
    }

    /// The same context, running on the replica that publishes its models in `models`.
    pub(crate) fn on_replica(mut self, models: &Arc<crate::multiplex::ModelIds>) -> Self {
        self.replica_models = Some(models.clone());
        self
    }

    /// The same context, for a request to the application mounted at `route_prefix`.
    pub(crate) fn in_app(mut self, route_prefix: &Arc<str>) -> Self {
        self.root_path = Some(route_prefix.clone());
        self
    }

    /// The route prefix of the application serving the request (`""` at `/`; FastAPI's
    /// `root_path`).
    pub fn root_path(&self) -> &str {
        self.root_path.as_deref().map_or("", crate::app::root_of)
    }

    /// The context a handle call made under this one gets: same id and deadline, a child token
    /// (cancelled whenever this one is), and the callee's deployment name. The model id is *not*
    /// inherited (as in Ray, a handle call names its model with the handle's own option).
    pub(crate) fn child(&self, deployment: &Arc<str>) -> Self {
        RequestContext {
            inner: Arc::new(Inner {
                request_id: self.inner.request_id.clone(),
                deadline: self.inner.deadline,
                timeout: self.inner.timeout,
                cancel: self.inner.cancel.child_token(),
                limits: self.inner.limits,
            }),
            deployment: Some(deployment.clone()),
            root_path: self.root_path.clone(),
            model_id: None,
            replica_models: None,
        }
    }

    /// The same context, naming the deployment that serves it (for logs and error messages).
    pub(crate) fn for_deployment(&self, deployment: &Arc<str>) -> Self {
        RequestContext {
            inner: self.inner.clone(),
            deployment: Some(deployment.clone()),
            root_path: self.root_path.clone(),
            model_id: self.model_id.clone(),
            replica_models: self.replica_models.clone(),
        }
    }

    /// The request id: the client's `x-request-id`, or a generated UUID.
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// The deployment serving this context (empty outside a replica).
    pub fn deployment(&self) -> &str {
        self.deployment.as_deref().unwrap_or("")
    }

    /// When the request times out, if it has an end-to-end timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// The configured end-to-end timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.inner.timeout
    }

    /// The request limits of the server that received the request (the defaults for a context
    /// made with [`RequestContext::new`]).
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.inner.limits
    }

    /// Time left before the deadline (`Duration::ZERO` once passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the request has been cancelled (client gone, deadline passed, caller dropped).
    /// A cheap atomic load: poll it from blocking or CPU-bound code to stop early.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when the request is cancelled. Cancel safe.
    ///
    /// Use it in `tokio::select!` to run code on cancellation, the seed's
    /// `except asyncio.CancelledError:`.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.cancel.clone().cancelled_owned()
    }

    /// The cancellation token itself, to hand to blocking code or spawned work.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// Marks the request cancelled (the proxy does this on disconnect or timeout).
    pub(crate) fn cancel(&self) {
        self.inner.cancel.cancel();
    }

    /// Runs the synchronous `f` with this context as [`current`] (for polls of response bodies
    /// and handle streams, which run outside the handler's task-local scope).
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self.clone(), f)
    }

    /// Runs `fut` with this context as [`current`].
    pub(crate) fn scope<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, fut)
    }
}

pin_project_lite::pin_project! {
    /// Wraps a request's work so that dropping it unfinished cancels the context *before* the
    /// work itself is dropped: the handler's own drop guards then see
    /// [`RequestContext::is_cancelled`] as true.
    pub(crate) struct CancelOnDrop<F> {
        ctx: Option<RequestContext>,
        on_cancel: fn(&RequestContext),
        #[pin]
        fut: F,
    }

    impl<F> PinnedDrop for CancelOnDrop<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(ctx) = this.ctx.take() {
                (this.on_cancel)(&ctx);
                ctx.cancel();
            }
        }
    }
}

impl<F> CancelOnDrop<F> {
    /// `on_cancel` runs (for logging) just before the context is cancelled.
    pub(crate) fn new(ctx: RequestContext, on_cancel: fn(&RequestContext), fut: F) -> Self {
        CancelOnDrop {
            ctx: Some(ctx),
            on_cancel,
            fut,
        }
    }
}

impl<F: Future> Future for CancelOnDrop<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.fut.poll(cx));
        *this.ctx = None;
        Poll::Ready(out)
    }
}

/// Runs `f` if the current request is cancelled while the returned guard is alive: the seed's
/// `except asyncio.CancelledError:`.
///
/// Create the guard at the top of a handler; when the request is cancelled (client disconnect,
/// timeout, or the caller dropping a handle call), the handler's future is dropped, the guard with
/// it, and `f` runs on the spot (the context is already marked cancelled by then). When the
/// handler finishes normally, `f` does not run. Outside a request the guard never fires.
pub fn on_cancel<F: FnOnce()>(f: F) -> OnCancel<F> {
    OnCancel {
        ctx: current(),
        f: Some(f),
    }
}

/// The guard returned by [`on_cancel`].
#[must_use = "the callback runs when this guard is dropped during cancellation; bind it to a variable"]
pub struct OnCancel<F: FnOnce()> {
    ctx: Option<RequestContext>,
    f: Option<F>,
}

impl<F: FnOnce()> OnCancel<F> {
    /// Drops the guard without ever running the callback.
    pub fn disarm(mut self) {
        self.f = None;
    }
}

impl<F: FnOnce()> Drop for OnCancel<F> {
    fn drop(&mut self) {
        if let (Some(ctx), Some(f)) = (&self.ctx, self.f.take()) {
            if ctx.is_cancelled() {
                f();
            }
        }
    }
}

/// The model ids of the replica serving the current request, if running on a replica.
pub(crate) fn current_replica_models() -> Option<Arc<crate::multiplex::ModelIds>> {
    CURRENT
        .try_with(|ctx| ctx.replica_models.clone())
        .ok()
        .flatten()
}

/// The model id of the current request (see [`RequestContext::multiplexed_model_id`]).
pub(crate) fn current_model_id() -> Option<Arc<str>> {
    CURRENT.try_with(|ctx| ctx.model_id.clone()).ok().flatten()
}

/// The request limits of the current request (the defaults outside a request).
pub(crate) fn current_limits() -> crate::limits::Limits {
    CURRENT.try_with(|ctx| ctx.inner.limits).unwrap_or_default()
}

/// The context of the request being served on this task, if any.
///
/// Inside a deployment's handler (HTTP or handle call) this is `Some`; elsewhere `None`.
pub fn current() -> Option<RequestContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` to completion even if the request that started it is cancelled (the seed's
/// `asyncio.shield`).
///
/// The future is spawned as its own task; awaiting the returned future waits for its output, and
/// dropping it (because the request was cancelled) leaves the task running. Like Ray's
/// `asyncio.shield`, this protects only *local* work: a handle call inside `fut` is still an
/// independent request to another deployment and is not protected from that deployment's own
/// cancellation. A panic inside `fut` resumes on the awaiting task.
pub fn shield<F>(fut: F) -> impl Future<Output = F::Output> + Send + 'static
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = tokio::spawn(fut);
    async move {
        match task.await {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dropping_unfinished_work_cancels_parent_and_child_first() {
        let root = RequestContext::new("id", None);
        let child = root.child(&Arc::from("Model"));
        assert_eq!(child.request_id(), "id");
        assert_eq!(child.deployment(), "Model");
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Probe(RequestContext, Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Probe {
            fn drop(&mut self) {
                self.1
                    .store(self.0.is_cancelled(), std::sync::atomic::Ordering::SeqCst);
            }
        }
        let probe = Probe(child.clone(), seen.clone());
        let work = CancelOnDrop::new(root.clone(), |_| {}, async move {
            let _probe = probe;
            std::future::pending::<()>().await
        });
        let mut work = Box::pin(work);
        assert!(futures_util::FutureExt::now_or_never(&mut work).is_none());
        assert!(!child.is_cancelled());
        drop(work);
        assert!(root.is_cancelled() && child.is_cancelled());
        assert!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            "cancelled before the work dropped"
        );
    }

    #[tokio::test]
    async fn finished_work_is_not_cancelled() {
        let root = RequestContext::new("id", None);
        assert_eq!(
            CancelOnDrop::new(root.clone(), |_| {}, async { 7 }).await,
            7
        );
        assert!(!root.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_counts_down() {
        let ctx = RequestContext::new("id", Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(ctx.remaining(), Some(Duration::from_millis(1500)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(ctx.remaining(), Some(Duration::ZERO));
    }

    #[tokio::test]
    async fn current_is_scoped() {
        assert!(current().is_none());
        let id = RequestContext::new("abc", None)
            .scope(async { current().map(|c| c.request_id().to_owned()) })
            .await;
        assert_eq!(id.as_deref(), Some("abc"));
    }
}
