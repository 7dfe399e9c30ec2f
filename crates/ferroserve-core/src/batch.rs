//! Batching (Ray's `@serve.batch`): callers pass one item and get one result; the batch
//! function receives a `Vec` of items and returns one output per item.
//!
//! A [`Batch`] lives inside a deployment's instance, so each replica has its own batcher, as in
//! Ray. Build it in the constructor from an async function that takes the whole batch:
//!
//! ```
//! use std::sync::Arc;
//! use ferroserve_core::batch::{Batch, BatchError, BatchOptions};
//! use ferroserve_core::Handles;
//!
//! struct Model {
//!     batch: Batch<String, String>,
//! }
//!
//! struct Generate(String);
//!
//! impl Handles<Generate> for Model {
//!     type Output = Result<String, BatchError>;
//!
//!     async fn call(&self, Generate(text): Generate) -> Self::Output {
//!         self.batch.call(text).await
//!     }
//! }
//!
//! fn build() -> Result<Model, ferroserve_core::Error> {
//!     let suffix: Arc<str> = Arc::from("!");
//!     let batch = BatchOptions::new()
//!         .max_batch_size(8)
//!         .batch_wait_timeout_s(0.05)
//!         .build(move |texts: Vec<String>| {
//!             let suffix = suffix.clone();
//!             async move { texts.into_iter().map(|t| t.to_uppercase() + &suffix).collect::<Vec<_>>() }
//!         })?;
//!     Ok(Model { batch })
//! }
//! # let _ = build().unwrap();
//! ```
//!
//! When a batch runs: as soon as `max_batch_size` items wait, or when the oldest waiting item
//! has waited `batch_wait_timeout_s`, whichever comes first; at most `max_concurrent_batches`
//! batches run at once (items keep queueing meanwhile, and the next batch forms as soon as one
//! finishes). Both `max_batch_size` and `batch_wait_timeout_s` can be changed while serving
//! ([`Batch::set_max_batch_size`], [`Batch::set_batch_wait_timeout_s`]), for example from a
//! [`Reconfigure`](crate::Reconfigure) hook.
//!
//! Beyond Ray:
//! - **Cancellation.** A caller whose future is dropped while its item waits leaves the queue at
//!   once: the item is neither counted towards the batch size nor passed to the function. A
//!   caller dropped after its batch started just does not receive its output; the batch runs
//!   on its own task and is never cancelled by one caller.
//! - **Errors reach only their items.** [`BatchOptions::build_per_item`] takes a function that
//!   returns `Vec<Result<O, E>>`: each caller gets its own `Ok` or [`BatchError::Item`]. If the
//!   function fails as a whole (returns `Err`, panics, or returns the wrong number of outputs),
//!   every caller of that batch gets the error, and the batcher goes on serving later batches.
//! - **Streaming.** [`BatchOptions::build_streaming`] takes a function returning a `Stream` of
//!   `Vec<O>` (one element per item, each time); each caller of [`StreamingBatch::stream`]
//!   receives a stream of its own outputs.
//!
//! The batch function runs outside any request's context ([`crate::current`] is `None` there):
//! it serves several requests at once and belongs to none of them.
//!
//! As in Ray, a replica only batches the requests it is given: keep the deployment's
//! `max_ongoing_requests` (default 100) at least `max_batch_size`, or batches never fill and
//! always wait for the timeout.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::error::{BoxError, Error};

/// Ray's default `max_batch_size`.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 10;
/// Ray's default `batch_wait_timeout_s`.
pub const DEFAULT_BATCH_WAIT_TIMEOUT_S: f64 = 0.01;
/// Ray's default `max_concurrent_batches`.
pub const DEFAULT_MAX_CONCURRENT_BATCHES: usize = 1;

/// Outputs buffered per caller of a [`StreamingBatch`] before the batch function waits for that
/// caller to read.
const STREAM_BUFFER: usize = 16;

/// Why a batched call did not produce its output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The batch function's own error for this item (from a
    /// [`build_per_item`](BatchOptions::build_per_item) function); the other items of the batch
    /// are unaffected. Its text is the function's error's text.
    #[error("{0}")]
    Item(BoxError),
    /// The batch function returned an error for the whole batch; every item of it gets this.
    #[error("batch function failed: {0}")]
    Failed(String),
    /// The batch function panicked; every item of the batch gets this.
    #[error("batch function {0}")]
    Panicked(String),
    /// The batch function returned a number of outputs different from its number of inputs, so
    /// no output can be matched to its caller; every item of the batch gets this.
    #[error("batch function returned {got} outputs for {expected} inputs")]
    WrongLength {
        /// Items in the batch.
        expected: usize,
        /// Outputs the function returned.
        got: usize,
    },
    /// The batcher was dropped (its replica is gone) before this item's output was produced.
    #[error("the batcher was stopped before this item was processed")]
    Stopped,
}

impl BatchError {
    /// The error to answer the request with: an [`BatchError::Item`] error that is a ferroserve
    /// [`Error`] (for example [`Error::bad_request`]) keeps its status and message;
    /// [`BatchError::Stopped`] becomes [`Error::ShuttingDown`] (`503` with `Retry-After`: the
    /// replica is going away); everything else becomes [`Error::Deployment`]
    /// (`500 Internal Server Error`, detail logged, never sent) for the deployment serving the
    /// current request.
    ///
    /// `?` on a `BatchError` inside a handler returning `Result<_, HandlerError>` always gives a
    /// 500; use `.map_err(BatchError::into_error)?` to let per-item client errors through.
    pub fn into_error(self) -> Error {
        let deployment = || {
            crate::context::current()
                .map(|ctx| ctx.deployment().to_owned())
                .unwrap_or_default()
        };
        match self {
            BatchError::Item(e) => match e.downcast::<Error>() {
                Ok(error) => *error,
                Err(other) => Error::Deployment {
                    deployment: deployment(),
                    detail: other.to_string(),
                },
            },
            BatchError::Stopped => Error::ShuttingDown(deployment()),
            other => Error::Deployment {
                deployment: deployment(),
                detail: other.to_string(),
            },
        }
    }

    /// A copy of a batch-wide error, for each item of the batch.
    fn for_each_item(&self) -> BatchError {
        match self {
            BatchError::Item(e) => BatchError::Failed(e.to_string()),
            BatchError::Failed(m) => BatchError::Failed(m.clone()),
            BatchError::Panicked(m) => BatchError::Panicked(m.clone()),
            BatchError::WrongLength { expected, got } => BatchError::WrongLength {
                expected: *expected,
                got: *got,
            },
            BatchError::Stopped => BatchError::Stopped,
        }
    }
}

impl From<BatchError> for Error {
    /// Same as [`BatchError::into_error`].
    fn from(error: BatchError) -> Self {
        error.into_error()
    }
}

/// What a batch function may return for a whole batch: `Vec<O>` (one output per item, in the
/// items' order), or `Result<Vec<O>, E>` where an `Err` fails every item of the batch with
/// [`BatchError::Failed`].
pub trait BatchOutputs<O>: Send + 'static {
    /// The outputs, or the batch-wide error.
    fn into_outputs(self) -> Result<Vec<O>, BoxError>;
}

impl<O: Send + 'static> BatchOutputs<O> for Vec<O> {
    fn into_outputs(self) -> Result<Vec<O>, BoxError> {
        Ok(self)
    }
}

impl<O: Send + 'static, E: Into<BoxError> + Send + 'static> BatchOutputs<O> for Result<Vec<O>, E> {
    fn into_outputs(self) -> Result<Vec<O>, BoxError> {
        self.map_err(Into::into)
    }
}

/// Options of a batcher (Ray's `@serve.batch(...)` arguments), and the constructors of
/// [`Batch`] and [`StreamingBatch`]. Options are validated when the batcher is built.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOptions {
    name: Option<Arc<str>>,
    max_batch_size: usize,
    batch_wait_timeout_s: f64,
    max_concurrent_batches: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            name: None,
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            batch_wait_timeout_s: DEFAULT_BATCH_WAIT_TIMEOUT_S,
            max_concurrent_batches: DEFAULT_MAX_CONCURRENT_BATCHES,
        }
    }
}

impl BatchOptions {
    /// Ray's defaults: `max_batch_size` 10, `batch_wait_timeout_s` 0.01,
    /// `max_concurrent_batches` 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The batcher's name, as batch-size metrics and error messages show it. Default: the
    /// deployment serving the first call (or `"batch"` outside a deployment).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The most items passed to the function at once (at least 1). A batch runs as soon as this
    /// many items wait.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// How long, in seconds, the oldest waiting item may wait for the batch to fill before the
    /// batch runs anyway (finite, at least 0; 0 runs whatever is waiting at once).
    pub fn batch_wait_timeout_s(mut self, seconds: f64) -> Self {
        self.batch_wait_timeout_s = seconds;
        self
    }

    /// How many batches may run at the same time (at least 1).
    pub fn max_concurrent_batches(mut self, n: usize) -> Self {
        self.max_concurrent_batches = n;
        self
    }

    /// Builds a batcher around `f`, which takes up to `max_batch_size` items and returns one
    /// output per item, in order: `Vec<O>`, or `Result<Vec<O>, E>` to fail the whole batch (see
    /// [`BatchOutputs`]).
    ///
    /// Errors: [`Error::Config`] when an option is out of range. Needs no runtime; the batcher's
    /// task starts on the first call.
    pub fn build<I, O, F, Fut>(self, f: F) -> Result<Batch<I, O>, Error>
    where
        I: Send + 'static,
        O: Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutputs<O>,
    {
        self.build_with(f, Ok)
    }

    /// Builds a batcher around `f`, which returns one `Result` per item (`Vec<Result<O, E>>`, or
    /// `Result<Vec<Result<O, E>>, E2>` to fail the whole batch): each caller gets its own `Ok`
    /// or [`BatchError::Item`], the other callers are unaffected.
    ///
    /// Errors: [`Error::Config`] when an option is out of range.
    pub fn build_per_item<I, O, E, F, Fut>(self, f: F) -> Result<Batch<I, O>, Error>
    where
        I: Send + 'static,
        O: Send + 'static,
        E: Into<BoxError> + Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutputs<Result<O, E>>,
    {
        self.build_with(f, |r: Result<O, E>| {
            r.map_err(|e| BatchError::Item(e.into()))
        })
    }

    fn build_with<I, O, T, F, Fut>(
        self,
        f: F,
        split: fn(T) -> Result<O, BatchError>,
    ) -> Result<Batch<I, O>, Error>
    where
        I: Send + 'static,
        O: Send + 'static,
        T: Send + 'static,
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutputs<T>,
    {
        self.validate()?;
        let f = Arc::new(f);
        let run: Runner<I, OneSink<O>> = Arc::new(move |items, sinks| {
            let f = f.clone();
            Box::pin(run_batch(f, items, sinks, split))
        });
        Ok(Batch {
            core: Core::new(self, run),
        })
    }

    /// Builds a streaming batcher around `f`, which returns a stream whose every element holds
    /// one output per item (`Vec<O>`, or `Result<Vec<O>, E>` to end every caller's stream with
    /// [`BatchError::Failed`]); Ray's generator batching. Each caller of
    /// [`StreamingBatch::stream`] receives its own element of each `Vec`.
    ///
    /// The batch stream advances at the pace of its slowest caller (each caller buffers up to
    /// 16 outputs); a caller that drops its stream stops receiving, and when every caller has
    /// dropped theirs the batch stream is dropped too.
    ///
    /// Errors: [`Error::Config`] when an option is out of range.
    pub fn build_streaming<I, O, F, S>(self, f: F) -> Result<StreamingBatch<I, O>, Error>
    where
        I: Send + 'static,
        O: Send + 'static,
        F: Fn(Vec<I>) -> S + Send + Sync + 'static,
        S: Stream + Send + 'static,
        S::Item: BatchOutputs<O>,
    {
        self.validate()?;
        let f = Arc::new(f);
        let run: Runner<I, StreamSink<O>> = Arc::new(move |items, sinks| {
            let f = f.clone();
            Box::pin(run_streaming_batch(f, items, sinks))
        });
        Ok(StreamingBatch {
            core: Core::new(self, run),
        })
    }

    fn validate(&self) -> Result<(), Error> {
        check_max_batch_size(self.name.as_deref(), self.max_batch_size)?;
        timeout_from_secs(self.name.as_deref(), self.batch_wait_timeout_s)?;
        if self.max_concurrent_batches == 0 {
            return Err(config_error(
                self.name.as_deref(),
                "max_concurrent_batches must be at least 1, got 0".to_owned(),
            ));
        }
        Ok(())
    }
}

fn config_error(name: Option<&str>, message: String) -> Error {
    match name {
        Some(name) => Error::Config(format!("batch '{name}': {message}")),
        None => Error::Config(format!("batch: {message}")),
    }
}

fn check_max_batch_size(name: Option<&str>, n: usize) -> Result<(), Error> {
    if n == 0 {
        return Err(config_error(
            name,
            "max_batch_size must be at least 1, got 0".to_owned(),
        ));
    }
    Ok(())
}

fn timeout_from_secs(name: Option<&str>, seconds: f64) -> Result<Duration, Error> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(config_error(
            name,
            format!("batch_wait_timeout_s must be a finite number >= 0, got {seconds:?}"),
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        config_error(
            name,
            format!("batch_wait_timeout_s is too large, got {seconds:?}"),
        )
    })
}

/// A batcher whose function returns one output per item: [`Batch::call`] passes one item and
/// waits for its output. Build it with [`Batch::new`] (Ray's defaults) or [`BatchOptions`].
///
/// Dropping the `Batch` stops its task and any batch still running; waiting callers get
/// [`BatchError::Stopped`].
pub struct Batch<I: Send + 'static, O: Send + 'static> {
    core: Core<I, OneSink<O>>,
}

impl<I: Send + 'static, O: Send + 'static> std::fmt::Debug for Batch<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.debug("Batch", f)
    }
}

impl<I: Send + 'static, O: Send + 'static> Batch<I, O> {
    /// A batcher with Ray's default options around `f` (see [`BatchOptions::build`]).
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: BatchOutputs<O>,
    {
        BatchOptions::new()
            .build(f)
            .expect("the default options are valid")
    }

    /// Passes `item` to the next batch and waits for its output.
    ///
    /// Errors: [`BatchError::Item`] for this item's own error (per-item functions), a batch-wide
    /// [`BatchError::Failed`], [`BatchError::Panicked`] or [`BatchError::WrongLength`], or
    /// [`BatchError::Stopped`] when the `Batch` was dropped.
    ///
    /// The returned future does not borrow the `Batch`; the item joins the queue when the future
    /// is first polled. Cancel safe: dropping the future before its batch starts removes the
    /// item from the queue (the function never sees it, and it does not count towards the batch
    /// size); dropping it later only discards the output.
    pub fn call(&self, item: I) -> impl Future<Output = Result<O, BatchError>> + Send + 'static {
        let shared = self.core.shared.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            let mut ticket = Shared::enqueue(&shared, item, tx)?;
            let out = rx.await;
            // Resolved: the batcher took the entry (or dropped it when stopping).
            ticket.queued = false;
            out.unwrap_or(Err(BatchError::Stopped))
        }
    }
}

/// A batcher whose function streams: [`StreamingBatch::stream`] passes one item and returns a
/// stream of that item's outputs. Build it with [`StreamingBatch::new`] or
/// [`BatchOptions::build_streaming`].
///
/// Dropping the `StreamingBatch` stops its task and any batch still running; callers' streams
/// yield [`BatchError::Stopped`] (when they have room for it) and end.
pub struct StreamingBatch<I: Send + 'static, O: Send + 'static> {
    core: Core<I, StreamSink<O>>,
}

impl<I: Send + 'static, O: Send + 'static> std::fmt::Debug for StreamingBatch<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.core.debug("StreamingBatch", f)
    }
}

impl<I: Send + 'static, O: Send + 'static> StreamingBatch<I, O> {
    /// A streaming batcher with Ray's default options around `f` (see
    /// [`BatchOptions::build_streaming`]).
    pub fn new<F, S>(f: F) -> Self
    where
        F: Fn(Vec<I>) -> S + Send + Sync + 'static,
        S: Stream + Send + 'static,
        S::Item: BatchOutputs<O>,
    {
        BatchOptions::new()
            .build_streaming(f)
            .expect("the default options are valid")
    }

    /// Passes `item` to the next batch and returns the stream of its outputs: one per element
    /// the batch function yields, ending when the function's stream ends. A batch-wide failure
    /// (an `Err` element, a panic, a `Vec` of the wrong length) is yielded as the stream's last
    /// item.
    ///
    /// The stream does not borrow the `StreamingBatch`; the item joins the queue when the stream
    /// is first polled. Dropping the stream before its batch starts removes the item from the
    /// queue; dropping it later stops its outputs without affecting the batch's other callers.
    pub fn stream(&self, item: I) -> impl Stream<Item = Result<O, BatchError>> + Send + 'static {
        let shared = self.core.shared.clone();
        let mut state = StreamState::Pending(Some(item));
        futures_util::stream::poll_fn(move |cx| loop {
            match &mut state {
                StreamState::Pending(item) => {
                    let item = item.take().expect("a pending stream holds its item");
                    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                    state = match Shared::enqueue(&shared, item, tx) {
                        Ok(ticket) => StreamState::Queued(rx, ticket),
                        Err(e) => StreamState::Failed(Some(e)),
                    };
                }
                StreamState::Queued(rx, ticket) => {
                    let next = std::task::ready!(rx.poll_recv(cx));
                    // Anything received means the batcher took the entry.
                    ticket.queued = false;
                    return std::task::Poll::Ready(next);
                }
                StreamState::Failed(e) => return std::task::Poll::Ready(e.take().map(Err)),
            }
        })
    }
}

enum StreamState<I: Send + 'static, O: Send + 'static> {
    Pending(Option<I>),
    Queued(
        mpsc::Receiver<Result<O, BatchError>>,
        Ticket<I, StreamSink<O>>,
    ),
    Failed(Option<BatchError>),
}

macro_rules! runtime_settings {
    ($ty:ident) => {
        impl<I: Send + 'static, O: Send + 'static> $ty<I, O> {
            /// Changes `max_batch_size` (Ray's `set_max_batch_size`); the next batch to form uses
            /// it, and a batch that is now full runs at once.
            ///
            /// Errors: [`Error::Config`] when `n` is 0.
            pub fn set_max_batch_size(&self, n: usize) -> Result<(), Error> {
                self.core.set_max_batch_size(n)
            }

            /// Changes `batch_wait_timeout_s` (Ray's `set_batch_wait_timeout_s`); items already
            /// waiting are measured against the new timeout.
            ///
            /// Errors: [`Error::Config`] when `seconds` is negative, not finite or too large.
            pub fn set_batch_wait_timeout_s(&self, seconds: f64) -> Result<(), Error> {
                self.core.set_batch_wait_timeout_s(seconds)
            }

            /// The current `max_batch_size`.
            pub fn max_batch_size(&self) -> usize {
                self.core.shared.lock().max_batch_size
            }

            /// The current `batch_wait_timeout_s`.
            pub fn batch_wait_timeout_s(&self) -> f64 {
                self.core.shared.lock().timeout_s
            }

            /// Items waiting for a batch to start (callers that left are not counted).
            pub fn num_queued(&self) -> usize {
                self.core.shared.lock().queue.len()
            }
        }
    };
}

runtime_settings!(Batch);
runtime_settings!(StreamingBatch);

/// Where a batch sends one caller's result.
trait Sink: Send + 'static {
    /// Tells a caller whose item will never run that the batcher stopped.
    fn stopped(self);
}

type OneSink<O> = oneshot::Sender<Result<O, BatchError>>;
type StreamSink<O> = mpsc::Sender<Result<O, BatchError>>;

impl<O: Send + 'static> Sink for OneSink<O> {
    fn stopped(self) {
        let _ = self.send(Err(BatchError::Stopped));
    }
}

impl<O: Send + 'static> Sink for StreamSink<O> {
    fn stopped(self) {
        let _ = self.try_send(Err(BatchError::Stopped));
    }
}

/// Runs one batch: the items, and where each one's result goes (same order).
type Runner<I, S> = Arc<dyn Fn(Vec<I>, Vec<S>) -> BoxFuture<'static, ()> + Send + Sync>;

struct Entry<I, S> {
    id: u64,
    item: I,
    sink: S,
    arrived: Instant,
}

struct State<I, S> {
    /// Waiting items, oldest first; ids increase along the queue.
    queue: VecDeque<Entry<I, S>>,
    next_id: u64,
    max_batch_size: usize,
    timeout: Duration,
    timeout_s: f64,
    /// Set when the owner was dropped: no new items, the task is gone.
    stopped: bool,
    /// The batcher's task, once the first call started it.
    task: Option<AbortHandle>,
}

/// What the batcher's task should do next.
enum Next<I, S> {
    Run(Vec<I>, Vec<S>),
    /// Nothing to run before this instant (`None`: before something changes).
    WaitUntil(Option<Instant>),
}

impl<I, S> State<I, S> {
    fn next_batch(&mut self, now: Instant) -> Next<I, S> {
        let Some(oldest) = self.queue.front() else {
            return Next::WaitUntil(None);
        };
        let deadline = oldest.arrived.checked_add(self.timeout);
        let due = deadline.is_some_and(|d| d <= now);
        if self.queue.len() < self.max_batch_size && !due {
            return Next::WaitUntil(deadline);
        }
        let n = self.queue.len().min(self.max_batch_size);
        let mut items = Vec::with_capacity(n);
        let mut sinks = Vec::with_capacity(n);
        for entry in self.queue.drain(..n) {
            items.push(entry.item);
            sinks.push(entry.sink);
        }
        Next::Run(items, sinks)
    }
}

struct Shared<I, S> {
    state: Mutex<State<I, S>>,
    /// Wakes the batcher's task: an item arrived or left, an option changed.
    wake: Notify,
    name: Option<Arc<str>>,
    max_concurrent_batches: usize,
    run: Runner<I, S>,
}

impl<I: Send + 'static, S: Sink> Shared<I, S> {
    fn lock(&self) -> MutexGuard<'_, State<I, S>> {
        crate::sync::lock(&self.state)
    }

    /// Queues `item`, starting the batcher's task if this is the first call.
    fn enqueue(this: &Arc<Self>, item: I, sink: S) -> Result<Ticket<I, S>, BatchError> {
        let mut state = this.lock();
        if state.stopped {
            return Err(BatchError::Stopped);
        }
        if state.task.is_none() {
            let name = this.name.clone().unwrap_or_else(|| {
                crate::context::current()
                    .map(|ctx| Arc::from(ctx.deployment()))
                    .unwrap_or_else(|| Arc::from("batch"))
            });
            let task = tokio::spawn(batcher(this.clone(), name));
            state.task = Some(task.abort_handle());
        }
        let id = state.next_id;
        state.next_id += 1;
        state.queue.push_back(Entry {
            id,
            item,
            sink,
            arrived: Instant::now(),
        });
        drop(state);
        this.wake.notify_one();
        Ok(Ticket {
            shared: this.clone(),
            id,
            queued: true,
        })
    }
}

/// A caller's place in the queue: dropping it while the item still waits removes the item.
struct Ticket<I: Send + 'static, S: Sink> {
    shared: Arc<Shared<I, S>>,
    id: u64,
    /// False once the caller knows the entry has left the queue.
    queued: bool,
}

impl<I: Send + 'static, S: Sink> Drop for Ticket<I, S> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        let mut state = self.shared.lock();
        let Ok(i) = state.queue.binary_search_by_key(&self.id, |e| e.id) else {
            return;
        };
        let entry = state.queue.remove(i);
        drop(state);
        // The item is dropped outside the lock; the batcher recomputes its deadline.
        drop(entry);
        self.shared.wake.notify_one();
    }
}

/// The batcher's task: forms batches and runs each on its own task.
async fn batcher<I: Send + 'static, S: Sink>(shared: Arc<Shared<I, S>>, name: Arc<str>) {
    // `serve_actual_batch_size`, resolved once per batcher.
    let sizes = crate::metrics::batch_size_histogram(&name);
    let mut running = JoinSet::new();
    loop {
        while running.len() >= shared.max_concurrent_batches {
            running.join_next().await;
        }
        let (items, sinks) = loop {
            let next = shared.lock().next_batch(Instant::now());
            let deadline = match next {
                Next::Run(items, sinks) => break (items, sinks),
                Next::WaitUntil(deadline) => deadline,
            };
            let timer = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shared.wake.notified() => {}
                () = timer => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        };
        sizes.observe(items.len() as u64);
        running.spawn((shared.run)(items, sinks));
    }
}

/// Owns the shared state; dropping it stops the batcher.
struct Core<I: Send + 'static, S: Sink> {
    shared: Arc<Shared<I, S>>,
}

impl<I: Send + 'static, S: Sink> Core<I, S> {
    fn new(options: BatchOptions, run: Runner<I, S>) -> Self {
        let timeout =
            timeout_from_secs(None, options.batch_wait_timeout_s).expect("options were validated");
        Core {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    next_id: 0,
                    max_batch_size: options.max_batch_size,
                    timeout,
                    timeout_s: options.batch_wait_timeout_s,
                    stopped: false,
                    task: None,
                }),
                wake: Notify::new(),
                name: options.name,
                max_concurrent_batches: options.max_concurrent_batches,
                run,
            }),
        }
    }

    fn set_max_batch_size(&self, n: usize) -> Result<(), Error> {
        check_max_batch_size(self.shared.name.as_deref(), n)?;
        self.shared.lock().max_batch_size = n;
        self.shared.wake.notify_one();
        Ok(())
    }

    fn set_batch_wait_timeout_s(&self, seconds: f64) -> Result<(), Error> {
        let timeout = timeout_from_secs(self.shared.name.as_deref(), seconds)?;
        let mut state = self.shared.lock();
        state.timeout = timeout;
        state.timeout_s = seconds;
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    fn debug(&self, ty: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.lock();
        f.debug_struct(ty)
            .field("name", &self.shared.name)
            .field("max_batch_size", &state.max_batch_size)
            .field("batch_wait_timeout_s", &state.timeout_s)
            .field(
                "max_concurrent_batches",
                &self.shared.max_concurrent_batches,
            )
            .field("num_queued", &state.queue.len())
            .finish()
    }
}

impl<I: Send + 'static, S: Sink> Drop for Core<I, S> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopped = true;
        let task = state.task.take();
        let waiting = std::mem::take(&mut state.queue);
        drop(state);
        // Aborting the task drops its JoinSet, which aborts the batches still running.
        if let Some(task) = task {
            task.abort();
        }
        for entry in waiting {
            entry.sink.stopped();
        }
    }
}

/// Runs `f` on one batch and sends each caller its result.
async fn run_batch<I, O, T, F, Fut>(
    f: Arc<F>,
    items: Vec<I>,
    sinks: Vec<OneSink<O>>,
    split: fn(T) -> Result<O, BatchError>,
) where
    F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: BatchOutputs<T>,
{
    let expected = items.len();
    let outcome = crate::panic::catch(async move { f(items).await.into_outputs() }).await;
    let error = match outcome {
        Ok(Ok(outputs)) if outputs.len() == expected => {
            for (sink, output) in sinks.into_iter().zip(outputs) {
                // A caller that left after its batch started just misses its output.
                let _ = sink.send(split(output));
            }
            return;
        }
        Ok(Ok(outputs)) => BatchError::WrongLength {
            expected,
            got: outputs.len(),
        },
        Ok(Err(e)) => BatchError::Failed(e.to_string()),
        Err(panic) => BatchError::Panicked(panic),
    };
    for sink in sinks {
        let _ = sink.send(Err(error.for_each_item()));
    }
}

/// The callers of one streaming batch; those still listening.
struct Listeners<O: Send + 'static> {
    sinks: Vec<Option<StreamSink<O>>>,
    finished: bool,
}

impl<O: Send + 'static> Listeners<O> {
    async fn fail_all(&mut self, error: BatchError) {
        for sink in self.sinks.iter_mut().filter_map(Option::take) {
            let _ = sink.send(Err(error.for_each_item())).await;
        }
    }
}

impl<O: Send + 'static> Drop for Listeners<O> {
    /// A batch aborted because the batcher was dropped tells its callers.
    fn drop(&mut self) {
        if !self.finished {
            for sink in self.sinks.iter_mut().filter_map(Option::take) {
                sink.stopped();
            }
        }
    }
}

/// Runs a streaming `f` on one batch and sends each caller its element of every yielded `Vec`.
async fn run_streaming_batch<I, O, F, S>(f: Arc<F>, items: Vec<I>, sinks: Vec<StreamSink<O>>)
where
    O: Send + 'static,
    F: Fn(Vec<I>) -> S + Send + Sync + 'static,
    S: Stream + Send + 'static,
    S::Item: BatchOutputs<O>,
{
    let expected = items.len();
    let mut listeners = Listeners {
        sinks: sinks.into_iter().map(Some).collect(),
        finished: false,
    };
    let stream = match crate::panic::catch_sync(|| f(items)) {
        Ok(stream) => crate::panic::catch_stream(stream),
        Err(panic) => {
            listeners.fail_all(BatchError::Panicked(panic)).await;
            listeners.finished = true;
            return;
        }
    };
    let mut stream = std::pin::pin!(stream);
    while let Some(next) = stream.next().await {
        let outputs = match next {
            Ok(element) => element.into_outputs(),
            Err(panic) => {
                listeners.fail_all(BatchError::Panicked(panic)).await;
                break;
            }
        };
        let outputs = match outputs {
            Ok(outputs) if outputs.len() == expected => outputs,
            Ok(outputs) => {
                listeners
                    .fail_all(BatchError::WrongLength {
                        expected,
                        got: outputs.len(),
                    })
                    .await;
                break;
            }
            Err(e) => {
                listeners.fail_all(BatchError::Failed(e.to_string())).await;
                break;
            }
        };
        for (slot, output) in listeners.sinks.iter_mut().zip(outputs) {
            if let Some(sink) = slot {
                if sink.send(Ok(output)).await.is_err() {
                    // That caller dropped its stream.
                    *slot = None;
                }
            }
        }
        if listeners.sinks.iter().all(Option::is_none) {
            break;
        }
    }
    listeners.finished = true;
}

#[cfg(test)]
mod tests {
    use std::future::{ready, Ready};
    use std::pin::pin;

    use futures_util::future::{join_all, poll_immediate};
    use http::StatusCode;

    use super::*;

    /// Batches the function saw: when each started (since `t0`) and its items.
    type Log = Arc<Mutex<Vec<(Duration, Vec<u32>)>>>;

    /// A batch function that doubles its items and records each batch.
    fn doubler(t0: Instant) -> (Log, impl Fn(Vec<u32>) -> Ready<Vec<u32>> + Send + Sync) {
        let log = Log::default();
        let seen = log.clone();
        let f = move |xs: Vec<u32>| {
            seen.lock().unwrap().push((t0.elapsed(), xs.clone()));
            ready(xs.into_iter().map(|x| x * 2).collect())
        };
        (log, f)
    }

    fn batches(log: &Log) -> Vec<(Duration, Vec<u32>)> {
        log.lock().unwrap().clone()
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_runs_when_its_first_item_has_waited_the_timeout() {
        let t0 = Instant::now();
        let (log, f) = doubler(t0);
        let batch = Batch::new(f);
        let out = join_all((1..=3).map(|x| batch.call(x))).await;
        let out: Vec<u32> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(out, [2, 4, 6]);
        assert_eq!(batches(&log), [(MS(10), vec![1, 2, 3])]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_runs_at_once_and_the_rest_waits_for_the_timeout() {
        let t0 = Instant::now();
        let (log, f) = doubler(t0);
        let batch = Batch::new(f);
        let out = join_all((0..12).map(|x| batch.call(x))).await;
        let out: Vec<u32> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(out, (0..12).map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(
            batches(&log),
            [(MS(0), (0..10).collect()), (MS(10), vec![10, 11])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn size_and_timeout_changed_at_runtime_take_effect_for_waiting_items() {
        let t0 = Instant::now();
        let (log, f) = doubler(t0);
        let batch = BatchOptions::new()
            .batch_wait_timeout_s(60.0)
            .build(f)
            .unwrap();
        // Two items wait for a batch of 10 or a minute; lowering the size to 2 runs them now.
        let mut a = pin!(batch.call(1));
        let mut b = pin!(batch.call(2));
        assert!(poll_immediate(&mut a).await.is_none());
        assert!(poll_immediate(&mut b).await.is_none());
        assert_eq!(batch.num_queued(), 2);
        batch.set_max_batch_size(2).unwrap();
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (2, 4));
        assert_eq!(batches(&log), [(MS(0), vec![1, 2])]);

        // One item waits a minute; a timeout of 20 ms counts from when it arrived.
        let mut c = pin!(batch.call(3));
        assert!(poll_immediate(&mut c).await.is_none());
        tokio::time::advance(MS(5)).await;
        batch.set_batch_wait_timeout_s(0.02).unwrap();
        assert_eq!(c.await.unwrap(), 6);
        assert_eq!(batches(&log)[1], (MS(20), vec![3]));
        assert_eq!(batch.max_batch_size(), 2);
        assert_eq!(batch.batch_wait_timeout_s(), 0.02);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_of_zero_runs_whatever_waits() {
        let t0 = Instant::now();
        let (log, f) = doubler(t0);
        let batch = BatchOptions::new()
            .batch_wait_timeout_s(0.0)
            .build(f)
            .unwrap();
        assert_eq!(batch.call(7).await.unwrap(), 14);
        assert_eq!(batches(&log), [(MS(0), vec![7])]);
    }

    #[test]
    fn invalid_options_are_config_errors_and_leave_the_batcher_unchanged() {
        let f = |xs: Vec<u32>| ready(xs);
        let err = |o: BatchOptions| o.build(f).unwrap_err().to_string();
        assert_eq!(
            err(BatchOptions::new().max_batch_size(0)),
            "invalid configuration: batch: max_batch_size must be at least 1, got 0"
        );
        assert_eq!(
            err(BatchOptions::new().name("embed").batch_wait_timeout_s(-0.5)),
            "invalid configuration: batch 'embed': batch_wait_timeout_s must be a finite number >= 0, got -0.5"
        );
        for bad in [f64::NAN, f64::INFINITY] {
            assert!(err(BatchOptions::new().batch_wait_timeout_s(bad))
                .contains("batch_wait_timeout_s must be a finite number >= 0"));
        }
        assert_eq!(
            err(BatchOptions::new().batch_wait_timeout_s(1e300)),
            "invalid configuration: batch: batch_wait_timeout_s is too large, got 1e300"
        );
        assert_eq!(
            err(BatchOptions::new().max_concurrent_batches(0)),
            "invalid configuration: batch: max_concurrent_batches must be at least 1, got 0"
        );
        let batch = Batch::new(f);
        assert!(batch.set_max_batch_size(0).is_err());
        assert!(batch.set_batch_wait_timeout_s(f64::NAN).is_err());
        assert_eq!(batch.max_batch_size(), 10);
        assert_eq!(batch.batch_wait_timeout_s(), 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_cancelled_while_waiting_leaves_the_batch_before_it_runs() {
        let t0 = Instant::now();
        let (log, f) = doubler(t0);
        let batch = BatchOptions::new()
            .max_batch_size(3)
            .batch_wait_timeout_s(60.0)
            .build(f)
            .unwrap();
        let mut a = pin!(batch.call(1));
        assert!(poll_immediate(&mut a).await.is_none());
        {
            let mut b = pin!(batch.call(2));
            assert!(poll_immediate(&mut b).await.is_none());
            assert_eq!(batch.num_queued(), 2);
        }
        // `2` left: a third item does not fill the batch...
        let mut c = pin!(batch.call(3));
        assert!(poll_immediate(&mut c).await.is_none());
        assert_eq!(batch.num_queued(), 2);
        assert!(batches(&log).is_empty());
        // ...a fourth does, and `2` never reaches the function.
        let d = batch.call(4);
        let (a, c, d) = tokio::join!(a, c, d);
        assert_eq!((a.unwrap(), c.unwrap(), d.unwrap()), (2, 6, 8));
        assert_eq!(batches(&log), [(MS(0), vec![1, 3, 4])]);
    }

    #[tokio::test]
    async fn a_caller_cancelled_after_its_batch_started_does_not_cancel_it() {
        let (started_tx, started) = tokio::sync::mpsc::unbounded_channel::<()>();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (g, fin) = (gate.clone(), finished.clone());
        let batch = BatchOptions::new()
            .max_batch_size(2)
            .build(move |xs: Vec<u32>| {
                let (g, fin, started) = (g.clone(), fin.clone(), started_tx.clone());
                async move {
                    let _ = started.send(());
                    let _permit = g.acquire().await.unwrap();
                    fin.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    xs
                }
            })
            .unwrap();
        let mut started = started;
        let kept = tokio::spawn(batch.call(1));
        let dropped = tokio::spawn(batch.call(2));
        started.recv().await.unwrap();
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        gate.add_permits(1);
        assert_eq!(kept.await.unwrap().unwrap(), 1);
        assert_eq!(finished.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn per_item_errors_reach_only_their_callers() {
        let batch = BatchOptions::new()
            .max_batch_size(4)
            .build_per_item(|xs: Vec<u32>| {
                ready(
                    xs.into_iter()
                        .map(|x| {
                            if x % 2 == 0 {
                                Ok(x * 10)
                            } else {
                                Err(Error::bad_request(
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    format!("{x} is odd"),
                                ))
                            }
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .unwrap();
        let out = join_all((1..=4).map(|x| batch.call(x))).await;
        assert_eq!(out[1].as_ref().unwrap(), &20);
        assert_eq!(out[3].as_ref().unwrap(), &40);
        let mut errors = out.into_iter().filter_map(Result::err);
        let e = errors.next().unwrap();
        assert!(matches!(e, BatchError::Item(_)));
        assert_eq!(e.to_string(), "1 is odd");
        let e = errors.next().unwrap().into_error();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.to_string(), "3 is odd");
        assert!(errors.next().is_none());
    }

    #[tokio::test]
    async fn a_failing_batch_fails_all_its_items_and_the_next_batch_works() {
        // Batches of two: the first returns an error, the second panics, the third returns one
        // output for two items, the fourth works.
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = calls.clone();
        let batch = BatchOptions::new()
            .max_batch_size(2)
            .build(move |xs: Vec<u32>| {
                let call = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    match call {
                        0 => Err("model exploded"),
                        1 => panic!("boom"),
                        2 => Ok(vec![0]),
                        _ => Ok(xs),
                    }
                }
            })
            .unwrap();
        let pair = || join_all([batch.call(1), batch.call(2)]);
        let texts = |out: Vec<Result<u32, BatchError>>| -> Vec<String> {
            out.into_iter()
                .map(|r| r.unwrap_err().to_string())
                .collect()
        };
        assert_eq!(
            texts(pair().await),
            ["batch function failed: model exploded"; 2]
        );
        assert_eq!(texts(pair().await), ["batch function panicked: boom"; 2]);
        assert_eq!(
            texts(pair().await),
            ["batch function returned 1 outputs for 2 inputs"; 2]
        );
        let out: Vec<u32> = pair().await.into_iter().map(Result::unwrap).collect();
        assert_eq!(out, [1, 2]);
        let e = BatchError::Failed("x".into()).into_error();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let e = BatchError::Stopped.into_error();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn max_concurrent_batches_lets_batches_overlap() {
        // Each batch waits until two batches run at the same time.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let b = barrier.clone();
        let batch = BatchOptions::new()
            .max_batch_size(1)
            .max_concurrent_batches(2)
            .build(move |xs: Vec<u32>| {
                let b = b.clone();
                async move {
                    b.wait().await;
                    xs
                }
            })
            .unwrap();
        let (x, y) = tokio::join!(batch.call(1), batch.call(2));
        assert_eq!((x.unwrap(), y.unwrap()), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn one_batch_at_a_time_by_default_while_items_keep_queueing() {
        let t0 = Instant::now();
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<Vec<u32>>();
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let batch = BatchOptions::new()
            .max_batch_size(2)
            .build(move |xs: Vec<u32>| {
                let (g, started) = (g.clone(), started_tx.clone());
                async move {
                    let _ = started.send(xs.clone());
                    g.acquire().await.unwrap().forget();
                    xs
                }
            })
            .unwrap();
        let all = tokio::spawn(join_all((1..=5).map(|x| batch.call(x))));
        assert_eq!(started.recv().await.unwrap(), [1, 2]);
        // Long past the timeout, the second batch still waits for the first.
        tokio::time::advance(MS(100)).await;
        assert!(started.try_recv().is_err());
        assert_eq!(batch.num_queued(), 3);
        gate.add_permits(3);
        assert_eq!(started.recv().await.unwrap(), [3, 4]);
        assert_eq!(started.recv().await.unwrap(), [5]);
        let out: Vec<u32> = all.await.unwrap().into_iter().map(Result::unwrap).collect();
        assert_eq!(out, [1, 2, 3, 4, 5]);
        assert_eq!(t0.elapsed(), MS(100));
    }

    #[tokio::test]
    async fn dropping_the_batch_stops_its_task_and_fails_waiting_callers() {
        /// Reports when the running batch's future is dropped.
        struct Dropped(Option<oneshot::Sender<()>>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.take().unwrap().send(());
            }
        }
        let (running_tx, mut running) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (dropped_tx, dropped) = oneshot::channel();
        let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
        let batch = BatchOptions::new()
            .max_batch_size(1)
            .build(move |xs: Vec<u32>| {
                let guard = Dropped(dropped_tx.lock().unwrap().take());
                let running = running_tx.clone();
                async move {
                    let _guard = guard;
                    let _ = running.send(());
                    std::future::pending::<()>().await;
                    xs
                }
            })
            .unwrap();
        let first = tokio::spawn(batch.call(1));
        running.recv().await.unwrap();
        let mut second = Box::pin(batch.call(2));
        assert!(poll_immediate(&mut second).await.is_none());
        assert_eq!(batch.num_queued(), 1);
        drop(batch);
        assert!(matches!(second.await, Err(BatchError::Stopped)));
        dropped.await.unwrap();
        assert!(matches!(first.await.unwrap(), Err(BatchError::Stopped)));
    }

    /// A streaming function: for items `xs`, yields `x*1`, `x*2`, `x*3` for each item, in
    /// three steps; reports on `done` when its stream is dropped.
    fn multiples(
        done: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> impl Fn(Vec<u32>) -> futures_util::stream::BoxStream<'static, Vec<u32>> + Send + Sync {
        move |xs: Vec<u32>| {
            struct Done(tokio::sync::mpsc::UnboundedSender<()>);
            impl Drop for Done {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            let done = Done(done.clone());
            futures_util::stream::iter(1..=3)
                .map(move |k| {
                    let _ = &done;
                    xs.iter().map(|x| x * k).collect::<Vec<_>>()
                })
                .boxed()
        }
    }

    #[tokio::test]
    async fn each_streaming_caller_gets_its_own_outputs() {
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let batch = BatchOptions::new()
            .max_batch_size(3)
            .build_streaming(multiples(done_tx))
            .unwrap();
        let outs = join_all((1..=3).map(|x| batch.stream(x).collect::<Vec<_>>())).await;
        for (x, out) in (1..=3).zip(outs) {
            let out: Vec<u32> = out.into_iter().map(Result::unwrap).collect();
            assert_eq!(out, [x, x * 2, x * 3]);
        }
        done.recv().await.unwrap();
    }

    #[tokio::test]
    async fn a_dropped_stream_stops_only_its_own_outputs() {
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let batch = BatchOptions::new()
            .max_batch_size(2)
            .build_streaming(multiples(done_tx))
            .unwrap();
        let mut first = batch.stream(10);
        let second = batch.stream(20);
        let (one, all) = tokio::join!(first.next(), second.collect::<Vec<_>>());
        assert_eq!(one.unwrap().unwrap(), 10);
        drop(first);
        let all: Vec<u32> = all.into_iter().map(Result::unwrap).collect();
        assert_eq!(all, [20, 40, 60]);
        done.recv().await.unwrap();

        // When every caller has dropped its stream, the batch's stream is dropped.
        let mut only = batch.stream(1);
        let mut other = batch.stream(2);
        let (a, b) = tokio::join!(only.next(), other.next());
        assert_eq!((a.unwrap().unwrap(), b.unwrap().unwrap()), (1, 2));
        drop((only, other));
        done.recv().await.unwrap();
    }

    #[tokio::test]
    async fn a_failing_streaming_batch_ends_every_callers_stream_with_the_error() {
        let batch = BatchOptions::new()
            .max_batch_size(2)
            .build_streaming(|xs: Vec<u32>| {
                futures_util::stream::iter([
                    Ok(xs.clone()),
                    if xs.len() == 2 {
                        Ok(vec![0])
                    } else {
                        Err("overheated")
                    },
                    Ok(xs),
                ])
            })
            .unwrap();
        let pair =
            join_all([batch.stream(1), batch.stream(2)].map(|s| s.collect::<Vec<_>>())).await;
        for (x, out) in (1..=2).zip(pair) {
            assert_eq!(out.len(), 2);
            assert_eq!(out[0].as_ref().unwrap(), &x);
            assert_eq!(
                out[1].as_ref().unwrap_err().to_string(),
                "batch function returned 1 outputs for 2 inputs"
            );
        }
        // The batcher goes on: a batch of one fails with the function's error.
        let out: Vec<_> = batch.stream(5).collect().await;
        assert_eq!(out[0].as_ref().unwrap(), &5);
        assert_eq!(
            out[1].as_ref().unwrap_err().to_string(),
            "batch function failed: overheated"
        );
        assert_eq!(out.len(), 2);
    }
}
