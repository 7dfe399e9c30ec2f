//! The request context: id, deadline and cancellation, carried by every request and handle call.
//!
//! The proxy creates a [`RequestContext`] for each HTTP request; a handle call made while handling
//! it gets a child context (same id, the remaining deadline, a child cancellation token). Inside a
//! handler, [`current`] returns the context of the request being served.
//!
//! Cancellation is drop-based: when the client goes away or the deadline passes, the request's
//! future is dropped, which interrupts the handler at its next `.await` and drops every handle call
//! it is awaiting. The context's token is cancelled at the same moment, so code that must *observe*
//! cancellation (Ray's `except asyncio.CancelledError:`) or blocking code that polls a flag can
//! do so.
//!
//! The idioms, for Ray Serve's Python on the left:
//!
//! | Ray Serve | ferroserve |
//! |---|---|
//! | `except asyncio.CancelledError: print("cancelled")` | `let _guard = ferroserve::on_cancel(\|\| println!("cancelled"));` before the awaits |
//! | `await asyncio.shield(work())` | `ferroserve::shield(work()).await` (runs to completion on its own task) |
//! | code that never awaits cannot be interrupted | blocking code polls `ctx.is_cancelled()` (one atomic load) and stops early |
//! | async clean-up after cancellation | `tokio::spawn(async move { ctx.cancelled().await; cleanup().await })` |
//!
//! ```
//! use ferroserve_core::Handles;
//!
//! struct Model;
//! struct Infer(u64);
//!
//! impl Handles<Infer> for Model {
//!     type Output = u64;
//!     async fn call(&self, Infer(steps): Infer) -> u64 {
//!         let _guard = ferroserve_core::on_cancel(|| println!("Request got cancelled!"));
//!         let ctx = ferroserve_core::current().expect("runs inside a call");
//!         // CPU-bound work on a blocking thread stops as soon as the request is cancelled.
//!         tokio::task::spawn_blocking(move || {
//!             let mut done = 0;
//!             while done < steps && !ctx.is_cancelled() {
//!                 done += 1; // one unit of inference
//!             }
//!             done
//!         })
//!         .await
//!         .unwrap()
//!     }
//! }
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::tag::ReplicaTag;

thread_local! {
    /// The context of the work being polled on this thread (see [`current`]). A context is
    /// moved in around each poll and back out after, never cloned for it.
    static CURRENT: RefCell<Option<RequestContext>> = const { RefCell::new(None) };
}

/// Runs `f` with the context in `slot` as [`current`]: swaps it with the thread's (so `slot`
/// holds the outer context meanwhile) and swaps back afterwards, also when `f` panics.
fn swap_in<R>(slot: &mut Option<RequestContext>, f: impl FnOnce() -> R) -> R {
    struct Restore<'a>(&'a mut Option<RequestContext>);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            CURRENT.with(|current| std::mem::swap(self.0, &mut current.borrow_mut()));
        }
    }
    CURRENT.with(|current| std::mem::swap(slot, &mut current.borrow_mut()));
    let _restore = Restore(slot);
    f()
}

/// Reads the current context without cloning it.
fn with_current<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    CURRENT
        .try_with(|current| current.borrow().as_ref().map(f))
        .ok()
        .flatten()
}

/// The context of one request or handle call: its id, deadline, model id and cancellation
/// token, and who serves it. Cheap to clone (reference counts only).
///
/// Two parts, kept apart so that a call can cross a process boundary:
/// - **what crosses a wire** ([`WireContext`]): the request id, the time left before the
///   deadline, the end-to-end timeout and the multiplexed model id;
/// - **what stays in this process**: the cancellation token (each side of a wire has its own,
///   linked by the transport: dropping the call cancels the far side), the replica serving the
///   call ([`RequestContext::replica`]), and the state the receiving layer attached
///   ([`RequestContext::local`]; the HTTP proxy keeps its limits and the application's root
///   path there).
#[derive(Clone)]
pub struct RequestContext {
    call: Arc<Call>,
    /// The model this request is for (`serve_multiplexed_model_id`), if any.
    model_id: Option<Arc<str>>,
    /// The deployment called (set for handle calls before a replica is chosen).
    deployment: Option<Arc<str>>,
    /// The replica serving this context (set while it runs on one).
    replica: Option<Arc<ReplicaTag>>,
    /// State of the layer that received the request (in-process only).
    local: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("request_id", &self.call.request_id)
            .field("deadline", &self.call.deadline)
            .field("model_id", &self.model_id)
            .field("deployment", &self.deployment())
            .field("replica", &self.replica.as_ref().map(|r| r.replica_id()))
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// A request's id: the client's `x-request-id`, or a generated UUID (version 4). Cloning it
/// never allocates: a generated id is made once as the header value it is echoed in.
#[derive(Clone)]
pub struct RequestId(IdRepr);

#[derive(Clone)]
enum IdRepr {
    /// From a request header, or generated (always visible ASCII).
    Header(HeaderValue),
    /// Given in code.
    Text(Arc<str>),
}

impl RequestId {
    /// The longest `x-request-id` a client may set; a longer one is replaced by a fresh id.
    pub const MAX_LEN: usize = 256;

    /// A fresh random id, a UUID version 4 (`3f1c5b1e-…`).
    pub fn generate() -> Self {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
            .into_uuid()
            .hyphenated()
            .encode_lower(&mut text);
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-uuid"));
        RequestId(IdRepr::Header(value))
    }

    /// The id a client sent in `x-request-id`, if it is usable: printable ASCII, not empty, at
    /// most [`RequestId::MAX_LEN`] bytes.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let len = value.len();
        (len > 0 && len <= Self::MAX_LEN && value.to_str().is_ok())
            .then(|| RequestId(IdRepr::Header(value.clone())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdRepr::Header(value) => value.to_str().unwrap_or_default(),
            IdRepr::Text(text) => text,
        }
    }

    /// The id as the `X-Request-ID` header value echoed on the response (`None` for an id given
    /// in code that is not a valid header value).
    pub fn to_header_value(&self) -> Option<HeaderValue> {
        match &self.0 {
            IdRepr::Header(value) => Some(value.clone()),
            IdRepr::Text(text) => HeaderValue::from_str(text).ok(),
        }
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for RequestId {
    fn from(text: &str) -> Self {
        RequestId(IdRepr::Text(Arc::from(text)))
    }
}

impl From<String> for RequestId {
    fn from(text: String) -> Self {
        RequestId(IdRepr::Text(Arc::from(text)))
    }
}

impl From<Arc<str>> for RequestId {
    fn from(text: Arc<str>) -> Self {
        RequestId(IdRepr::Text(text))
    }
}

/// What every clone of one call's context shares.
#[derive(Debug)]
struct Call {
    request_id: RequestId,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    cancel: Cancel,
}

/// A call's cancellation: a flag, linked to the caller's, and a token made only when someone
/// asks for one. Most requests are never cancelled and never hand out a token, and a
/// `CancellationToken` costs an allocation and a locked tree update to make and to drop.
#[derive(Debug, Default)]
struct Cancel {
    cancelled: AtomicBool,
    /// The caller's, for a handle call: cancelled whenever it is.
    parent: Option<Arc<Call>>,
    token: OnceLock<CancellationToken>,
}

impl Cancel {
    fn child(parent: &Arc<Call>) -> Self {
        Cancel {
            parent: Some(parent.clone()),
            ..Cancel::default()
        }
    }

    /// Whether this call or one of its callers was cancelled (also through a token handed
    /// out, which its holder may cancel). A few atomic loads.
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self
                .token
                .get()
                .is_some_and(CancellationToken::is_cancelled)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.cancel.is_cancelled())
    }

    /// Marks the call cancelled, and wakes whoever waits on its token (and the tokens of the
    /// calls made under it, which are its children).
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }

    /// The token, made on first use as a child of the caller's: it is cancelled with this
    /// call (whether that happened before or after it was made) and with every caller.
    fn token(&self) -> &CancellationToken {
        let token = self.token.get_or_init(|| match &self.parent {
            Some(parent) => parent.cancel.token().child_token(),
            None => CancellationToken::new(),
        });
        // A `cancel` that ran before the token existed found nothing to wake.
        if self.cancelled.load(Ordering::Acquire) {
            token.cancel();
        }
        token
    }
}

/// The part of a [`RequestContext`] that crosses a process boundary with a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireContext {
    /// The request id (`X-Request-ID`).
    pub request_id: String,
    /// Time left before the deadline when the call was sent; `None` without a deadline.
    pub remaining: Option<Duration>,
    /// The end-to-end timeout the deadline came from (for messages).
    pub timeout: Option<Duration>,
    /// The multiplexed model id, if the call names one.
    pub model_id: Option<String>,
}

impl RequestContext {
    /// A fresh root context: the request id, and an optional end-to-end timeout from now.
    pub fn new(request_id: impl Into<RequestId>, timeout: Option<Duration>) -> Self {
        RequestContext {
            call: Arc::new(Call {
                request_id: request_id.into(),
                deadline: timeout.map(|t| Instant::now() + t),
                timeout,
                cancel: Cancel::default(),
            }),
            model_id: None,
            deployment: None,
            replica: None,
            local: None,
        }
    }

    /// The part of this context that crosses a wire, as of now.
    pub fn to_wire(&self) -> WireContext {
        WireContext {
            request_id: self.call.request_id.as_str().to_owned(),
            remaining: self.remaining(),
            timeout: self.call.timeout,
            model_id: self.model_id.as_deref().map(str::to_owned),
        }
    }

    /// The context of a call that arrived over a wire: the sender's request id, model id and
    /// deadline (the time it had left, from now), with a cancellation token of its own.
    pub fn from_wire(wire: WireContext) -> Self {
        RequestContext {
            call: Arc::new(Call {
                request_id: wire.request_id.into(),
                deadline: wire.remaining.map(|r| Instant::now() + r),
                timeout: wire.timeout,
                cancel: Cancel::default(),
            }),
            model_id: wire.model_id.map(Arc::from),
            deployment: None,
            replica: None,
            local: None,
        }
    }

    /// The same context, for a request to model `model_id` (an empty id means none, as in Ray).
    pub fn with_model_id(mut self, model_id: Option<Arc<str>>) -> Self {
        self.model_id = model_id.filter(|id| !id.is_empty());
        self
    }

    /// The same context with `state` attached by the layer that received the request (for
    /// example the HTTP proxy's limits and the application's root path). Handle calls made
    /// under it inherit it; it never crosses a wire.
    pub fn with_local(mut self, state: Arc<dyn Any + Send + Sync>) -> Self {
        self.local = Some(state);
        self
    }

    /// The state of type `S` the receiving layer attached with [`RequestContext::with_local`],
    /// if any.
    pub fn local<S: Any>(&self) -> Option<&S> {
        self.local.as_deref()?.downcast_ref()
    }

    /// The model this request is for: the `serve_multiplexed_model_id` header of an HTTP request,
    /// or the id a handle call was made with (`DeploymentHandle::with_model_id`); `None`
    /// when the request names no model (Ray's `serve.get_multiplexed_model_id()` returning `""`).
    pub fn multiplexed_model_id(&self) -> Option<&str> {
        self.model_id.as_deref()
    }

    /// The same context, running on the replica `replica`.
    pub fn on_replica(mut self, replica: &Arc<ReplicaTag>) -> Self {
        self.replica = Some(replica.clone());
        self
    }

    /// The replica serving this context, while it runs on one.
    pub fn replica(&self) -> Option<&Arc<ReplicaTag>> {
        self.replica.as_ref()
    }

    /// The context a handle call made under this one gets: same id and deadline, a child token
    /// (cancelled whenever this one is), the same local state, and the callee's deployment name.
    /// The model id is *not* inherited (as in Ray, a handle call names its model with the
    /// handle's own option).
    pub fn child(&self, deployment: &Arc<str>) -> Self {
        RequestContext {
            call: Arc::new(Call {
                request_id: self.call.request_id.clone(),
                deadline: self.call.deadline,
                timeout: self.call.timeout,
                cancel: Cancel::child(&self.call),
            }),
            model_id: None,
            deployment: Some(deployment.clone()),
            replica: None,
            local: self.local.clone(),
        }
    }

    /// The request id: the client's `x-request-id`, or a generated UUID.
    pub fn request_id(&self) -> &str {
        self.call.request_id.as_str()
    }

    /// The request id as it is kept (cheap to clone, ready to echo as a header).
    pub fn id(&self) -> &RequestId {
        &self.call.request_id
    }

    /// The deployment serving (or called with) this context; empty outside one.
    pub fn deployment(&self) -> &str {
        match (&self.replica, &self.deployment) {
            (Some(replica), _) => replica.deployment(),
            (None, Some(name)) => name,
            (None, None) => "",
        }
    }

    /// When the request times out, if it has an end-to-end timeout.
    pub fn deadline(&self) -> Option<Instant> {
        self.call.deadline
    }

    /// The configured end-to-end timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.call.timeout
    }

    /// Time left before the deadline (`Duration::ZERO` once passed); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.call
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the request has been cancelled (client gone, deadline passed, caller dropped).
    /// A cheap atomic load: poll it from blocking or CPU-bound code to stop early.
    pub fn is_cancelled(&self) -> bool {
        self.call.cancel.is_cancelled()
    }

    /// Completes when the request is cancelled. Cancel safe.
    ///
    /// Use it in `tokio::select!` to run code on cancellation, Ray's
    /// `except asyncio.CancelledError:`.
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        self.call.cancel.token().clone().cancelled_owned()
    }

    /// The cancellation token itself, to hand to blocking code or spawned work.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.call.cancel.token().clone()
    }

    /// Marks the request cancelled, with every handle call made under it (the proxy does this
    /// on a disconnect or a timeout).
    pub fn cancel(&self) {
        self.call.cancel.cancel();
    }

    /// Runs the synchronous `f` with this context as [`current`] (for code outside a handler's
    /// scope, such as a log line about it). Something that enters the same context on every
    /// poll holds a [`ContextCell`] instead, which saves the clone.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        swap_in(&mut Some(self.clone()), f)
    }

    /// Runs `fut` with this context as [`current`] around each of its polls (and its drop).
    /// The context comes back from the finished future with [`Scoped::take_context`].
    pub fn scope<F: Future>(self, fut: F) -> Scoped<F> {
        Scoped {
            cell: ContextCell::new(self),
            fut: Some(fut),
        }
    }
}

/// A context held by something polled many times (a streamed response body, a handle stream)
/// and made [`current`] around each poll by moving it into the thread's slot and back: no
/// reference count changes per poll.
#[derive(Debug)]
pub struct ContextCell(Option<RequestContext>);

impl ContextCell {
    /// Holds `ctx`.
    pub fn new(ctx: RequestContext) -> Self {
        ContextCell(Some(ctx))
    }

    /// The context.
    pub fn get(&self) -> &RequestContext {
        self.0
            .as_ref()
            .expect("a context cell holds its context outside `enter`")
    }

    /// Runs `f` with the context as [`current`].
    pub fn enter<R>(&mut self, f: impl FnOnce() -> R) -> R {
        swap_in(&mut self.0, f)
    }
}

pin_project_lite::pin_project! {
    /// A future run with a context as [`current`]: [`RequestContext::scope`]. Dropping it
    /// drops the inner future inside the context too, so drop guards (such as
    /// [`on_cancel`]'s) see it.
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        cell: ContextCell,
        #[pin]
        fut: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.fut.is_some() {
                let fut = &mut this.fut;
                this.cell.enter(|| fut.set(None));
            }
        }
    }
}

impl<F> Scoped<F> {
    /// The context, taken once the future has finished (`None` before, or when taken already).
    pub fn take_context(self: Pin<&mut Self>) -> Option<RequestContext> {
        let this = self.project();
        if this.fut.is_some() {
            return None;
        }
        this.cell.0.take()
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mut slot = this.fut;
        // The finished future is dropped inside the context too.
        this.cell.enter(|| {
            let Some(fut) = slot.as_mut().as_pin_mut() else {
                panic!("Scoped polled after completion");
            };
            let out = std::task::ready!(fut.poll(cx));
            slot.set(None);
            Poll::Ready(out)
        })
    }
}

pin_project_lite::pin_project! {
    /// Wraps a request's work so that dropping it unfinished cancels the context *before* the
    /// work itself is dropped: the handler's own drop guards then see
    /// [`RequestContext::is_cancelled`] as true.
    pub struct CancelOnDrop<F> {
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
    pub fn new(ctx: RequestContext, on_cancel: fn(&RequestContext), fut: F) -> Self {
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

/// Runs `f` if the current request is cancelled while the returned guard is alive: Ray's
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

/// The replica serving the current request, if running on one.
pub(crate) fn current_replica() -> Option<Arc<ReplicaTag>> {
    with_current(|ctx| ctx.replica.clone()).flatten()
}

/// The model id of the current request (see [`RequestContext::multiplexed_model_id`]).
pub(crate) fn current_model_id() -> Option<Arc<str>> {
    with_current(|ctx| ctx.model_id.clone()).flatten()
}

/// Runs `f` with the replica serving the current request and its request id, if a handler is
/// running on this task: for log formats that name who served a line. Nothing is copied.
pub fn with_current_replica<R>(f: impl FnOnce(&ReplicaTag, &str) -> R) -> Option<R> {
    with_current(|ctx| ctx.replica.as_deref().map(|r| f(r, ctx.request_id()))).flatten()
}

/// The context of the request being served on this task, if any.
///
/// Inside a deployment's handler (HTTP or handle call) this is `Some`; elsewhere `None`.
pub fn current() -> Option<RequestContext> {
    with_current(Clone::clone)
}

/// Runs `fut` to completion even if the request that started it is cancelled (Ray's
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

    /// Tokens made before or after a cancellation, of the call or of its caller, all end up
    /// cancelled; a call cancelled alone leaves its caller running.
    #[tokio::test]
    async fn tokens_follow_the_calls_they_belong_to_whenever_they_are_made() {
        let root = RequestContext::new("id", None);
        let early = root.child(&Arc::from("A"));
        let early_token = early.cancellation_token();
        let late = root.child(&Arc::from("B"));
        let only = root.child(&Arc::from("C"));
        only.cancel();
        assert!(only.is_cancelled() && only.cancellation_token().is_cancelled());
        assert!(!root.is_cancelled() && !early.is_cancelled());
        root.cancel();
        assert!(early_token.is_cancelled(), "made before: woken");
        assert!(late.is_cancelled());
        assert!(
            late.cancellation_token().is_cancelled(),
            "made after: born cancelled"
        );
        let grandchild = late.child(&Arc::from("D"));
        assert!(grandchild.is_cancelled());
        tokio::time::timeout(Duration::from_secs(1), grandchild.cancelled())
            .await
            .expect("cancelled() resolves for a call whose caller was cancelled");
    }

    fn current_id() -> Option<String> {
        current().map(|c| c.request_id().to_owned())
    }

    #[tokio::test]
    async fn scopes_nest_and_give_their_context_back() {
        let outer = RequestContext::new("outer", None);
        let inner = RequestContext::new("inner", None);
        assert_eq!(current_id(), None);
        let seen = outer
            .clone()
            .scope(async move {
                let before = current_id();
                let mid = inner.scope(async { current_id() }).await;
                tokio::task::yield_now().await;
                (before, mid, current_id())
            })
            .await;
        assert_eq!(
            seen,
            (
                Some("outer".into()),
                Some("inner".into()),
                Some("outer".into())
            )
        );
        assert_eq!(current_id(), None, "nothing left behind");

        let mut scoped = Box::pin(outer.scope(async { 7 }));
        assert_eq!(
            scoped.as_mut().take_context().map(|_| ()),
            None,
            "not before it ends"
        );
        assert_eq!(scoped.as_mut().await, 7);
        let back = scoped
            .as_mut()
            .take_context()
            .expect("the context comes back");
        assert_eq!(back.request_id(), "outer");
    }

    #[test]
    fn a_cell_enters_without_cloning_and_restores_after_a_panic() {
        let ctx = RequestContext::new("cell", None);
        let mut cell = ContextCell::new(ctx.clone());
        let count = Arc::strong_count(&ctx.call);
        assert_eq!(cell.enter(current_id), Some("cell".into()));
        cell.enter(|| assert_eq!(Arc::strong_count(&ctx.call), count, "moved, not cloned"));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cell.enter(|| panic!("inside"));
        }));
        assert!(panicked.is_err());
        assert_eq!(current_id(), None, "the thread's slot is restored");
        assert_eq!(
            cell.get().request_id(),
            "cell",
            "and the cell keeps its context"
        );
    }

    #[tokio::test]
    async fn a_dropped_scope_drops_its_work_inside_the_context() {
        let ctx = RequestContext::new("dropped", None);
        let seen = Arc::new(std::sync::Mutex::new(None));
        struct Probe(Arc<std::sync::Mutex<Option<String>>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = current_id();
            }
        }
        let probe = Probe(seen.clone());
        let mut work = Box::pin(ctx.scope(async move {
            let _probe = probe;
            std::future::pending::<()>().await
        }));
        assert!(futures_util::FutureExt::now_or_never(&mut work).is_none());
        drop(work);
        assert_eq!(seen.lock().unwrap().as_deref(), Some("dropped"));
        assert_eq!(current_id(), None);

        // A future that finishes is dropped inside the context as well.
        struct Ready {
            _probe: Probe,
        }
        impl Future for Ready {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                Poll::Ready(())
            }
        }
        *seen.lock().unwrap() = None;
        let finished = RequestContext::new("finished", None);
        finished
            .scope(Ready {
                _probe: Probe(seen.clone()),
            })
            .await;
        assert_eq!(seen.lock().unwrap().as_deref(), Some("finished"));
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

    #[test]
    fn request_ids_are_generated_or_taken_from_a_usable_header() {
        let generated = RequestId::generate();
        let text = generated.as_str();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "version 4: {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "RFC variant: {text}"
        );
        assert_ne!(text, RequestId::generate().as_str());
        let header = generated.to_header_value().unwrap();
        assert_eq!(header.to_str().unwrap(), text);
        let given = RequestId::from_header(&HeaderValue::from_static("abc-1")).unwrap();
        assert_eq!(given.to_string(), "abc-1");
        for bad in [
            HeaderValue::from_static(""),
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        ] {
            assert!(RequestId::from_header(&bad).is_none(), "{bad:?}");
        }
        let long = HeaderValue::from_str(&"x".repeat(257)).unwrap();
        assert!(RequestId::from_header(&long).is_none());
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
