//! Model multiplexing (Ray's `@serve.multiplexed`): many models served from one pool of
//! replicas, each replica holding a small LRU cache of loaded models.
//!
//! A request names its model with the `serve_multiplexed_model_id` HTTP header (any case) or a
//! handle option ([`crate::DeploymentHandle::with_model_id`]); inside the handler, [`model_id`]
//! (Ray's `serve.get_multiplexed_model_id()`) returns it, and a [`Multiplexed`] field built in the
//! deployment's constructor loads it on first use:
//!
//! ```
//! use std::sync::Arc;
//! use ferroserve_core::multiplex::{self, Multiplexed};
//! use ferroserve_core::{BoxError, Deployment, Error, Handles};
//!
//! struct Model { name: String }
//!
//! struct Inferencer { models: Multiplexed<Model> }
//!
//! struct Infer;
//!
//! impl Handles<Infer> for Inferencer {
//!     type Output = Result<String, Error>;
//!     async fn call(&self, _: Infer) -> Self::Output {
//!         let id = multiplex::model_id().unwrap_or_default();
//!         let model: Arc<Model> = self.models.get(&id).await?;
//!         Ok(format!("served by {}", model.name))
//!     }
//! }
//!
//! let app = Deployment::new("Inferencer").num_replicas(2).bind_async(|| async {
//!     let models = Multiplexed::builder(|id: String| async move {
//!         Ok::<_, BoxError>(Model { name: id })
//!     })
//!     .max_num_models_per_replica(3)
//!     .build()?;
//!     Ok::<_, Error>(Inferencer { models })
//! });
//! # let handle = app.handle().with_model_id("m1");
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! #     app.node_ref().start().await.unwrap();
//! #     assert_eq!(handle.remote(Infer).await.unwrap().unwrap(), "served by m1");
//! # });
//! ```
//!
//! Semantics:
//! - **Load once.** Concurrent [`Multiplexed::get`]s of one id share one load. The load runs on
//!   its own task (like Ray's load task), so a caller that is cancelled does not waste it: the
//!   model is cached for the next request. A failed (or panicking) load is not cached: every
//!   caller waiting for it gets [`Error::Deployment`] (`500`, the detail only in the log), and the
//!   next `get` loads again.
//! - **Bounded.** The cache never holds more than `max_num_models_per_replica` models (default
//!   3), and **loads in progress count**: a new id evicts the least recently used *loaded* model
//!   before its load starts; if every place is taken by a load in progress, the new `get` waits
//!   until one finishes.
//! - **Eviction.** The evicted model leaves the cache at once (requests still using it keep their
//!   `Arc`, and it is dropped after the last one), and the eviction hook (Ray's `__del__`,
//!   [`MultiplexedBuilder::on_evict`]) runs before the new model's loader, so its memory can be
//!   released first.
//! - **Routing.** Each replica publishes the ids it holds (loaded or loading). The balancer sends a
//!   request with a model id to the least loaded replica that holds that model and has a free
//!   slot; otherwise (no replica holds it, or all that do are full) it picks a replica as usual,
//!   so a new model id lands on some replica and load spreads. A request that has to queue is
//!   served by whichever replica frees a slot first, holding the model or not. Requests without a
//!   model id are routed exactly as before. The ids show in `status` per replica
//!   (`multiplexed_model_ids`).
//! - **Handle calls** do not inherit the model id of the request they are made under (as in
//!   Ray): name it with [`crate::DeploymentHandle::with_model_id`].
//!
//! A `Multiplexed` learns which replica it belongs to from the first request that calls it, so
//! build one per instance (in the constructor), not one shared by all replicas.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::StatusCode;
use tokio::sync::Notify;

use crate::context;
use crate::error::{BoxError, Error};
use crate::sync::lock;
use crate::tag::ReplicaTag;

/// The HTTP header that names a request's model (Ray's name; header names are case-insensitive).
pub const MODEL_ID_HEADER: &str = "serve_multiplexed_model_id";

/// The longest model id the `serve_multiplexed_model_id` header may carry, in bytes.
pub const MAX_MODEL_ID_LEN: usize = 256;

/// The default `max_num_models_per_replica` (Ray's).
pub const DEFAULT_MAX_NUM_MODELS_PER_REPLICA: usize = 3;

/// The model id of the request being served (Ray's `serve.get_multiplexed_model_id()`), or `None`
/// when it names no model or when called outside a request. See
/// [`crate::RequestContext::multiplexed_model_id`].
pub fn model_id() -> Option<Arc<str>> {
    context::current_model_id()
}

type Loader<M> = Box<dyn Fn(String) -> BoxFuture<'static, Result<M, BoxError>> + Send + Sync>;
type EvictHook<M> = Box<dyn Fn(String, Arc<M>) -> BoxFuture<'static, ()> + Send + Sync>;
/// A load in progress, awaited by every caller of its id; the error is the logged detail.
type Load<M> = Shared<BoxFuture<'static, Result<Arc<M>, Arc<str>>>>;

/// A per-replica LRU cache of models loaded on demand by id (Ray's `@serve.multiplexed`). See the
/// [module docs](self) for loading, eviction and routing.
///
/// Build it in the deployment's constructor with [`Multiplexed::new`] or
/// [`Multiplexed::builder`], keep it in a field, and call [`Multiplexed::get`] in handlers.
pub struct Multiplexed<M: Send + Sync + 'static> {
    inner: Arc<Inner<M>>,
}

struct Inner<M> {
    loader: Loader<M>,
    on_evict: Option<EvictHook<M>>,
    max: usize,
    state: Mutex<Vec<Entry<M>>>,
    /// Signalled whenever a load ends, for `get`s waiting for a place in a full cache.
    load_ended: Notify,
    /// The replica this cache lives on, learnt from the first request that uses it.
    replica: OnceLock<Arc<ReplicaTag>>,
    owner: u64,
}

/// A cached model; the vector of entries is ordered least recently used first.
struct Entry<M> {
    id: Arc<str>,
    model: Cached<M>,
}

enum Cached<M> {
    Loading(Load<M>),
    Ready(Arc<M>),
}

/// Options of a [`Multiplexed`] cache, before it is built.
#[must_use = "call .build() to get the cache"]
pub struct MultiplexedBuilder<M: Send + Sync + 'static> {
    loader: Loader<M>,
    on_evict: Option<EvictHook<M>>,
    max: usize,
}

impl<M: Send + Sync + 'static> MultiplexedBuilder<M> {
    /// How many models the cache holds at most, loads in progress included (Ray's
    /// `max_num_models_per_replica`). At least 1; default 3.
    pub fn max_num_models_per_replica(mut self, n: usize) -> Self {
        self.max = n;
        self
    }

    /// An async hook run when a model is evicted (Ray's `__del__`), with its id and the model.
    /// It runs on the load task of the model that replaces it, before that model's loader. A
    /// panic in the hook is logged and the load goes on.
    pub fn on_evict<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(String, Arc<M>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_evict = Some(Box::new(move |id, model| hook(id, model).boxed()));
        self
    }

    /// As [`MultiplexedBuilder::on_evict`], for a synchronous hook.
    pub fn on_evict_sync<F>(mut self, hook: F) -> Self
    where
        F: Fn(String, Arc<M>) + Send + Sync + 'static,
    {
        self.on_evict = Some(Box::new(move |id, model| {
            hook(id, model);
            futures_util::future::ready(()).boxed()
        }));
        self
    }

    /// The cache. Fails with [`Error::Config`] when `max_num_models_per_replica` is 0 (inside a
    /// constructor, `?` turns that into a start-up error naming the deployment).
    pub fn build(self) -> Result<Multiplexed<M>, Error> {
        if self.max == 0 {
            return Err(Error::Config(
                "max_num_models_per_replica must be at least 1, got 0".into(),
            ));
        }
        static NEXT_OWNER: AtomicU64 = AtomicU64::new(0);
        Ok(Multiplexed {
            inner: Arc::new(Inner {
                loader: self.loader,
                on_evict: self.on_evict,
                max: self.max,
                state: Mutex::new(Vec::new()),
                load_ended: Notify::new(),
                replica: OnceLock::new(),
                owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            }),
        })
    }
}

enum Next<M> {
    Ready(Arc<M>),
    Await(Load<M>),
}

impl<M: Send + Sync + 'static> Multiplexed<M> {
    /// A cache of at most [`DEFAULT_MAX_NUM_MODELS_PER_REPLICA`] models, loaded by `loader`
    /// (called with the model id), without an eviction hook.
    pub fn new<F, Fut, E>(loader: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        match Self::builder(loader).build() {
            Ok(cache) => cache,
            Err(_) => unreachable!("the default size is valid"),
        }
    }

    /// Options for a cache whose models `loader` loads (called with the model id; an error fails
    /// the requests waiting for that load).
    pub fn builder<F, Fut, E>(loader: F) -> MultiplexedBuilder<M>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        MultiplexedBuilder {
            loader: Box::new(move |id| loader(id).map(|r| r.map_err(Into::into)).boxed()),
            on_evict: None,
            max: DEFAULT_MAX_NUM_MODELS_PER_REPLICA,
        }
    }

    /// The model `model_id`, loaded if the cache does not hold it (evicting the least recently
    /// used model when full), and marked most recently used.
    ///
    /// Concurrent calls for one id share one load. A failed load returns
    /// [`Error::Deployment`] (answered as `500`, detail logged) to every caller waiting for it,
    /// and is not cached. Cancel safe: dropping the future leaves the load running on its own
    /// task, and its model is cached for the next call.
    pub async fn get(&self, model_id: &str) -> Result<Arc<M>, Error> {
        let load = loop {
            let load_ended = self.inner.load_ended.notified();
            tokio::pin!(load_ended);
            {
                let mut state = self.inner.lock();
                match self.inner.next(&mut state, model_id) {
                    Some(Next::Ready(model)) => return Ok(model),
                    Some(Next::Await(load)) => break load,
                    None => {
                        // Every place is a load in progress: wait for one to end. Registered
                        // before the lock is released, so the signal cannot be missed.
                        load_ended.as_mut().enable();
                    }
                }
            }
            load_ended.await;
        };
        load.await.map_err(|detail| Error::Deployment {
            deployment: context::current()
                .map(|ctx| ctx.deployment().to_owned())
                .unwrap_or_default(),
            detail: format!("loading model '{model_id}' failed: {detail}"),
        })
    }

    /// The model the current request names ([`model_id`]), as [`Multiplexed::get`] loads it. A
    /// request that names no model gets a `400` saying to set the `serve_multiplexed_model_id`
    /// header.
    pub async fn for_request(&self) -> Result<Arc<M>, Error> {
        let Some(id) = model_id() else {
            return Err(Error::bad_request(
                StatusCode::BAD_REQUEST,
                format!("This request names no model: set the {MODEL_ID_HEADER} header."),
            ));
        };
        self.get(&id).await
    }

    /// The ids of the loaded models (loads in progress excluded), least recently used first.
    pub fn loaded_model_ids(&self) -> Vec<String> {
        self.inner
            .lock()
            .iter()
            .filter(|e| matches!(e.model, Cached::Ready(_)))
            .map(|e| e.id.to_string())
            .collect()
    }

    /// The most models this cache holds (`max_num_models_per_replica`).
    pub fn max_num_models_per_replica(&self) -> usize {
        self.inner.max
    }
}

impl<M: Send + Sync + 'static> Inner<M> {
    fn lock(&self) -> MutexGuard<'_, Vec<Entry<M>>> {
        lock(&self.state)
    }

    /// Under the lock: the cached model, a load to await (joined or started), or `None` when
    /// every place is taken by a load in progress.
    fn next(self: &Arc<Self>, state: &mut Vec<Entry<M>>, id: &str) -> Option<Next<M>> {
        self.bind_replica(state);
        if let Some(pos) = state.iter().position(|e| *e.id == *id) {
            let entry = state.remove(pos);
            let next = match &entry.model {
                Cached::Ready(model) => Next::Ready(model.clone()),
                Cached::Loading(load) => Next::Await(load.clone()),
            };
            state.push(entry);
            return Some(next);
        }
        let evicted = if state.len() < self.max {
            None
        } else {
            let pos = state
                .iter()
                .position(|e| matches!(e.model, Cached::Ready(_)))?;
            match state.remove(pos) {
                Entry {
                    id,
                    model: Cached::Ready(model),
                } => Some((id, model)),
                Entry { .. } => unreachable!("position found a loaded model"),
            }
        };
        let id: Arc<str> = Arc::from(id);
        let load = self.start_load(id.clone(), evicted);
        state.push(Entry {
            id,
            model: Cached::Loading(load.clone()),
        });
        self.publish(state);
        Some(Next::Await(load))
    }

    /// Spawns the load of `id`, after the eviction hook of the model it replaces.
    fn start_load(self: &Arc<Self>, id: Arc<str>, evicted: Option<(Arc<str>, Arc<M>)>) -> Load<M> {
        let inner = self.clone();
        let task = tokio::spawn(async move {
            if let Some((old_id, old_model)) = evicted {
                tracing::info!(model_id = %old_id, "evicting model");
                if let Some(hook) = &inner.on_evict {
                    // The call itself inside the future: a hook that panics before returning
                    // its future is caught too.
                    let call = async { hook(old_id.to_string(), old_model).await };
                    if let Err(detail) = crate::panic::catch(call).await {
                        tracing::error!(model_id = %old_id, "eviction hook {detail}");
                    }
                }
            }
            tracing::info!(model_id = %id, "loading model");
            let loaded = crate::panic::catch(async { (inner.loader)(id.to_string()).await }).await;
            let result = match loaded {
                Ok(Ok(model)) => Ok(Arc::new(model)),
                Ok(Err(e)) => Err(Arc::from(crate::error::chain(&*e))),
                Err(panic) => Err(Arc::from(panic)),
            };
            inner.finish_load(&id, &result);
            result
        });
        async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::from(format!("load task ended: {e}"))))
        }
        .boxed()
        .shared()
    }

    /// Records the outcome of `id`'s load and wakes the `get`s waiting for a place.
    fn finish_load(&self, id: &str, result: &Result<Arc<M>, Arc<str>>) {
        let mut state = self.lock();
        if let Some(pos) = state.iter().position(|e| *e.id == *id) {
            match result {
                Ok(model) => state[pos].model = Cached::Ready(model.clone()),
                Err(detail) => {
                    tracing::warn!(model_id = %id, "loading model failed: {detail}");
                    state.remove(pos);
                    self.publish(&state);
                }
            }
        }
        drop(state);
        self.load_ended.notify_waiters();
    }

    /// Learns the replica from the current request, the first time one is seen.
    fn bind_replica(&self, state: &[Entry<M>]) {
        if self.replica.get().is_none() {
            if let Some(replica) = context::current_replica() {
                if self.replica.set(replica).is_ok() {
                    self.publish(state);
                }
            }
        }
    }

    /// Tells the balancer which ids this cache holds. Called with the state locked, so that
    /// publications happen in the order of the changes.
    fn publish(&self, state: &[Entry<M>]) {
        if let Some(replica) = self.replica.get() {
            let ids = state.iter().map(|e| e.id.clone()).collect();
            replica.models().set(self.owner, ids);
        }
    }
}

impl<M> Drop for Inner<M> {
    fn drop(&mut self) {
        if let Some(replica) = self.replica.get() {
            replica.models().set(self.owner, Vec::new());
        }
    }
}

impl<M: Send + Sync + 'static> fmt::Debug for Multiplexed<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Multiplexed")
            .field("max_num_models_per_replica", &self.inner.max)
            .field("loaded", &self.loaded_model_ids())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_models_is_a_config_error() {
        let err = Multiplexed::builder(|_| async { Ok::<(), BoxError>(()) })
            .max_num_models_per_replica(0)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: max_num_models_per_replica must be at least 1, got 0"
        );
    }

    /// A loader that panics (even before returning its future) fails that load only: the cache
    /// keeps no entry for it, and the next `get` tries again.
    #[tokio::test]
    async fn a_panicking_loader_fails_the_load_and_is_not_cached() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let models = Multiplexed::builder(move |id: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            assert_ne!(id, "boom", "corrupt weights");
            async move { Ok::<_, BoxError>(id) }
        })
        .build()
        .unwrap();
        for _ in 0..2 {
            let err = models.get("boom").await.unwrap_err();
            assert!(matches!(err, Error::Deployment { .. }));
            assert!(err.to_string().contains("corrupt weights"), "{err}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(models.inner.lock().is_empty());
        assert_eq!(*models.get("ok").await.unwrap(), "ok");
    }

    /// Dropping `get` (its request was cancelled) leaves the load running; the model is cached.
    #[tokio::test]
    async fn a_cancelled_caller_does_not_cancel_the_load() {
        let (release, released) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let models = Multiplexed::builder(move |id: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|go| *go).await;
                Ok::<_, BoxError>(id)
            }
        })
        .build()
        .unwrap();
        let mut cancelled = Box::pin(models.get("m1"));
        assert!((&mut cancelled).now_or_never().is_none());
        drop(cancelled);
        release.send(true).unwrap();
        assert_eq!(*models.get("m1").await.unwrap(), "m1");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the first load was kept");
    }

    /// Loads of distinct ids beyond the cap wait for a place instead of growing the cache.
    #[tokio::test]
    async fn loads_in_progress_count_toward_the_cap() {
        let (release, released) = tokio::sync::watch::channel(false);
        let models = Multiplexed::builder(move |id: String| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|go| *go).await;
                Ok::<_, BoxError>(id)
            }
        })
        .max_num_models_per_replica(1)
        .build()
        .unwrap();
        let mut first = Box::pin(models.get("m1"));
        assert!((&mut first).now_or_never().is_none());
        let mut second = Box::pin(models.get("m2"));
        assert!((&mut second).now_or_never().is_none());
        assert_eq!(
            models.inner.lock().len(),
            1,
            "m2 waits for m1's load to end"
        );
        release.send(true).unwrap();
        assert_eq!(*first.await.unwrap(), "m1");
        assert_eq!(*second.await.unwrap(), "m2");
        assert_eq!(models.loaded_model_ids(), ["m2"]);
    }
}
