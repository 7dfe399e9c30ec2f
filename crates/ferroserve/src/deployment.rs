//! Deployments: a name, options, and a constructor that builds one instance per replica.
//!
//! ```no_run
//! use ferroserve::Deployment;
//!
//! struct Model;
//! struct Ingress { model: ferroserve::DeploymentHandle<Model> }
//!
//! let model = Deployment::new("Model").num_replicas(2).bind(|| Model);
//! let ingress = Deployment::new("Ingress").with(model).bind(|model| Ingress { model });
//! ```
//!
//! Binding builds the application graph: a bound deployment given to [`Deployment::with`] is
//! started before the deployment that depends on it, and arrives in its constructor as a
//! [`DeploymentHandle`].

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::autoscaling::AutoscalingOptions;
use crate::error::{BoxError, Error};
use crate::handle::DeploymentHandle;
use crate::health::HealthCheck;
use crate::router::{Replica, Router};

mod supervisor;

/// The default `max_ongoing_requests`. Ray's is 5, sized for Python replicas that block; an
/// async Rust replica interleaves many requests, so ferroserve allows 100 per replica.
pub const DEFAULT_MAX_ONGOING_REQUESTS: usize = 100;

/// Attempts to construct one replica before its deployment fails (100 ms after the first
/// failure, then 200 ms, doubling). A replica replaced at run time keeps being retried by the
/// controller, up to every 30 s, and the deployment is `UNHEALTHY` meanwhile.
pub const CONSTRUCTOR_ATTEMPTS: u32 = 3;

/// Per-deployment options (Ray's `@serve.deployment(...)` arguments). A config file's
/// `deployments[]` entries override them by name.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeploymentOptions {
    /// Replicas to run (at least 1). Default 1. Ignored when `autoscaling` is set.
    pub num_replicas: usize,
    /// Scale the number of replicas with the load (see [`crate::autoscaling`]). `None` (the
    /// default) runs `num_replicas`.
    pub autoscaling: Option<AutoscalingOptions>,
    /// Requests one replica runs at once, strictly (at least 1). Default
    /// [`DEFAULT_MAX_ONGOING_REQUESTS`].
    pub max_ongoing_requests: usize,
    /// Requests allowed to wait when every replica is full; `None` (the default) is unlimited.
    /// Beyond it requests get `503` with `Retry-After`.
    pub max_queued_requests: Option<usize>,
    /// Passed to each instance's [`Reconfigure::reconfigure`] after construction and again, in
    /// place, whenever it changes. `None` (the default) never calls it.
    pub user_config: Option<Value>,
    /// How long a replica being removed (scale-down, rolling update) may take to finish its
    /// in-flight requests before ferroserve stops waiting for it. Default 20 s. The instance is
    /// dropped when its last request ends either way; nothing in flight is cut.
    pub graceful_shutdown_timeout: Duration,
    /// How often each replica's health is checked (see [`crate::health`]). Default 10 s.
    pub health_check_period: Duration,
    /// How long a health check may take before it counts as failed. Default 30 s.
    pub health_check_timeout: Duration,
}

impl Default for DeploymentOptions {
    fn default() -> Self {
        DeploymentOptions {
            num_replicas: 1,
            autoscaling: None,
            max_ongoing_requests: DEFAULT_MAX_ONGOING_REQUESTS,
            max_queued_requests: None,
            user_config: None,
            graceful_shutdown_timeout: Duration::from_secs(20),
            health_check_period: Duration::from_secs(10),
            health_check_timeout: Duration::from_secs(30),
        }
    }
}

impl DeploymentOptions {
    fn validate(&self, name: &str) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::Config("deployment name must not be empty".into()));
        }
        if let Some(autoscaling) = &self.autoscaling {
            if let Some(problem) = autoscaling.problems().into_iter().next() {
                return Err(Error::Config(format!(
                    "deployment '{name}': autoscaling: {problem}"
                )));
            }
        } else if self.num_replicas == 0 {
            return Err(Error::Config(format!(
                "deployment '{name}': num_replicas must be at least 1, got 0"
            )));
        }
        for (field, value) in [
            ("health_check_period", self.health_check_period),
            ("health_check_timeout", self.health_check_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!(
                    "deployment '{name}': {field} must be greater than 0"
                )));
            }
        }
        if self.max_ongoing_requests == 0 {
            return Err(Error::Config(format!(
                "deployment '{name}': max_ongoing_requests must be at least 1, got 0"
            )));
        }
        Ok(())
    }

    /// The replicas a deployment starts with: `num_replicas`, or the autoscaler's initial size.
    pub fn initial_replicas(&self) -> usize {
        match &self.autoscaling {
            Some(a) => a.initial(),
            None => self.num_replicas,
        }
    }
}

/// Marker for a [`Deployment`] without dependencies (its constructor takes no arguments).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeps;

/// A deployment definition, before it is bound to a constructor.
#[derive(Debug, Clone)]
#[must_use = "a deployment does nothing until it is bound"]
pub struct Deployment<D = NoDeps> {
    name: String,
    options: DeploymentOptions,
    deps: D,
}

impl Deployment<NoDeps> {
    /// A deployment named `name` (unique within its application) with default options.
    pub fn new(name: impl Into<String>) -> Self {
        Deployment {
            name: name.into(),
            options: DeploymentOptions::default(),
            deps: NoDeps,
        }
    }

    /// Declares the deployments this one calls: one [`BoundDeployment`] or a tuple of them. Their
    /// handles are passed to the constructor, and they start before this deployment does.
    pub fn with<D: Deps>(self, deps: D) -> Deployment<D> {
        Deployment {
            name: self.name,
            options: self.options,
            deps,
        }
    }

    /// Binds a constructor that builds one instance per replica.
    pub fn bind<T, F>(self, ctor: F) -> BoundDeployment<T>
    where
        T: Send + Sync + 'static,
        F: Fn() -> T + Send + Sync + 'static,
    {
        self.bind_async(move || std::future::ready(Ok::<T, BoxError>(ctor())))
    }

    /// Binds an async, fallible constructor. An error (or panic) is retried, up to
    /// [`CONSTRUCTOR_ATTEMPTS`] attempts with a growing pause, and then fails the deployment with
    /// [`Error::Startup`] naming it and giving the last error. An [`Error::Config`] is not
    /// retried.
    pub fn bind_async<T, F, Fut, E>(self, ctor: F) -> BoundDeployment<T>
    where
        T: Send + Sync + 'static,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        BoundDeployment::new(
            self.name,
            self.options,
            Vec::new(),
            Arc::new(move || ctor().map(|r| r.map_err(Into::into)).boxed()),
        )
    }
}

impl<D: Deps> Deployment<D> {
    /// Binds a constructor that receives the dependencies' handles, once per replica.
    pub fn bind<T, F>(self, ctor: F) -> BoundDeployment<T>
    where
        T: Send + Sync + 'static,
        F: Fn(D::Handles) -> T + Send + Sync + 'static,
    {
        self.bind_async(move |handles| std::future::ready(Ok::<T, BoxError>(ctor(handles))))
    }

    /// Binds an async, fallible constructor that receives the dependencies' handles.
    pub fn bind_async<T, F, Fut, E>(self, ctor: F) -> BoundDeployment<T>
    where
        T: Send + Sync + 'static,
        F: Fn(D::Handles) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let mut nodes = Vec::new();
        self.deps.collect(&mut nodes);
        let deps = self.deps;
        BoundDeployment::new(
            self.name,
            self.options,
            nodes,
            Arc::new(move || ctor(deps.handles()).map(|r| r.map_err(Into::into)).boxed()),
        )
    }
}

impl Deployment<NoDeps> {
    /// Binds a constructor whose dependencies are known only at run time (a DAG's deployments).
    pub(crate) fn bind_with_nodes<T, F>(self, nodes: Vec<NodeRef>, ctor: F) -> BoundDeployment<T>
    where
        T: Send + Sync + 'static,
        F: Fn() -> T + Send + Sync + 'static,
    {
        BoundDeployment::new(
            self.name,
            self.options,
            nodes,
            Arc::new(move || std::future::ready(Ok::<T, BoxError>(ctor())).boxed()),
        )
    }
}

impl<D> Deployment<D> {
    /// Sets the number of replicas (at least 1).
    pub fn num_replicas(mut self, n: usize) -> Self {
        self.options.num_replicas = n;
        self
    }

    /// Scales the number of replicas with the load, within the options' bounds (see
    /// [`crate::autoscaling`]); `num_replicas` is then ignored.
    pub fn autoscaling(mut self, options: AutoscalingOptions) -> Self {
        self.options.autoscaling = Some(options);
        self
    }

    /// Sets how often each replica's health is checked (see [`crate::health`]).
    pub fn health_check_period(mut self, period: Duration) -> Self {
        self.options.health_check_period = period;
        self
    }

    /// Sets how long a health check may take before it counts as failed.
    pub fn health_check_timeout(mut self, timeout: Duration) -> Self {
        self.options.health_check_timeout = timeout;
        self
    }

    /// Sets how many requests one replica runs at once (at least 1).
    pub fn max_ongoing_requests(mut self, n: usize) -> Self {
        self.options.max_ongoing_requests = n;
        self
    }

    /// Sets how many requests may wait when every replica is full; more get `503`.
    pub fn max_queued_requests(mut self, n: usize) -> Self {
        self.options.max_queued_requests = Some(n);
        self
    }

    /// Sets the initial `user_config` (the instance type must implement [`Reconfigure`] and the
    /// deployment be bound with [`BoundDeployment::reconfigurable`]).
    pub fn user_config(mut self, config: Value) -> Self {
        self.options.user_config = Some(config);
        self
    }

    /// Sets how long a removed replica may take to finish its requests.
    pub fn graceful_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.graceful_shutdown_timeout = timeout;
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, options: DeploymentOptions) -> Self {
        self.options = options;
        self
    }
}

type Ctor<T> = Arc<dyn Fn() -> BoxFuture<'static, Result<T, BoxError>> + Send + Sync>;

/// A deployment whose instances take a `user_config` (Ray's `reconfigure(self, config)`): called
/// after construction, before the replica serves, and again on every running replica whenever
/// the config file's `user_config` changes, without restarting it.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use ferroserve::{BoxError, Deployment, Reconfigure};
///
/// struct Model { threshold: AtomicU64 }
///
/// #[derive(serde::Deserialize)]
/// struct Config { threshold: f64 }
///
/// impl Reconfigure for Model {
///     type Config = Config;
///     async fn reconfigure(&self, config: Config) -> Result<(), BoxError> {
///         self.threshold.store(config.threshold.to_bits(), Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// let model = Deployment::new("Model")
///     .user_config(serde_json::json!({"threshold": 0.5}))
///     .bind(|| Model { threshold: AtomicU64::new(0) })
///     .reconfigurable();
/// ```
pub trait Reconfigure: Send + Sync + 'static {
    /// The shape of `user_config`. A config that does not match is rejected with its field
    /// path before anything is applied.
    type Config: DeserializeOwned + Send;

    /// Applies a new config. Runs concurrently with requests (use interior mutability). An
    /// error fails the replica's start-up, or marks the update failed.
    fn reconfigure(
        &self,
        config: Self::Config,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;
}

type ReconfigureFn<T> =
    Arc<dyn Fn(Arc<T>, Value) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Checks a `user_config` against the deployment's `Reconfigure::Config`, with its field path.
type CheckFn = fn(&Value) -> Result<(), String>;

struct Reconfigurer<T> {
    apply: ReconfigureFn<T>,
    check: CheckFn,
}

fn check_config<C: DeserializeOwned>(value: &Value) -> Result<(), String> {
    serde_path_to_error::deserialize::<_, C>(value)
        .map(drop)
        .map_err(|e| match e.path().to_string() {
            p if p == "." => format!("user_config: {}", e.inner()),
            p => format!("user_config.{p}: {}", e.inner()),
        })
}

/// A deployment bound to its constructor: a node of the application graph.
///
/// Serve it with [`crate::run`] (it becomes an [`crate::Application`]), or pass it to another
/// deployment with [`Deployment::with`]. Cloning shares the same deployment.
pub struct BoundDeployment<T: Send + Sync + 'static> {
    node: Arc<Node<T>>,
}

impl<T: Send + Sync + 'static> Clone for BoundDeployment<T> {
    fn clone(&self) -> Self {
        BoundDeployment {
            node: self.node.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> BoundDeployment<T> {
    fn new(name: String, options: DeploymentOptions, deps: Vec<NodeRef>, ctor: Ctor<T>) -> Self {
        let router = Arc::new(Router::new(
            name.clone(),
            options.max_ongoing_requests,
            options.max_queued_requests,
        ));
        BoundDeployment {
            node: Arc::new(Node {
                name,
                defaults: options.clone(),
                options: Mutex::new(options),
                deps,
                ctor,
                router: ArcSwap::new(router),
                reconfigure: OnceLock::new(),
                health: OnceLock::new(),
                started: tokio::sync::OnceCell::new(),
                supervision: supervisor::Supervision::default(),
            }),
        }
    }

    /// Makes the deployment's instances take `user_config` through [`Reconfigure`].
    pub fn reconfigurable(self) -> Self
    where
        T: Reconfigure,
    {
        let _ = self.node.reconfigure.set(Reconfigurer {
            apply: Arc::new(|instance: Arc<T>, value: Value| {
                async move {
                    let config: T::Config = serde_json::from_value(value)?;
                    instance.reconfigure(config).await
                }
                .boxed()
            }),
            check: check_config::<T::Config>,
        });
        self
    }

    /// Makes the controller check the replicas' health through [`HealthCheck`] (see
    /// [`crate::health`]).
    pub fn health_checked(self) -> Self
    where
        T: HealthCheck,
    {
        let _ = self.node.health.set(Arc::new(|instance: Arc<T>| {
            async move { instance.check_health().await }.boxed()
        }));
        self
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// The deployment's options as written in code (before any config file override).
    pub fn deployment_options(&self) -> &DeploymentOptions {
        &self.node.defaults
    }

    /// A handle to this deployment. Calls wait until its replicas are running.
    pub fn handle(&self) -> DeploymentHandle<T> {
        DeploymentHandle::new(self.router())
    }

    /// The router requests go through now (a rolling update may have adopted the previous
    /// version's).
    pub(crate) fn router(&self) -> Arc<Router<T>> {
        self.node.router.load_full()
    }

    pub(crate) fn node_ref(&self) -> NodeRef {
        NodeRef(self.node.clone())
    }
}

struct Node<T: Send + Sync + 'static> {
    name: String,
    defaults: DeploymentOptions,
    options: Mutex<DeploymentOptions>,
    deps: Vec<NodeRef>,
    ctor: Ctor<T>,
    router: ArcSwap<Router<T>>,
    reconfigure: OnceLock<Reconfigurer<T>>,
    health: OnceLock<HealthFn<T>>,
    started: tokio::sync::OnceCell<()>,
    supervision: supervisor::Supervision,
}

type HealthFn<T> = Arc<dyn Fn(Arc<T>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// The state of one replica, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplicaState {
    /// Being constructed (and reconfigured); not routed to yet.
    Starting,
    /// Routed to.
    Running,
    /// No longer routed to; finishing its in-flight requests.
    Stopping,
}

impl ReplicaState {
    /// The name `status` and `/metrics` give the state (its serialized form).
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "STARTING",
            ReplicaState::Running => "RUNNING",
            ReplicaState::Stopping => "STOPPING",
        }
    }
}

/// One replica in a status report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaInfo {
    /// `Deployment#n`.
    pub replica_id: String,
    /// Its state.
    pub state: ReplicaState,
    /// Requests it runs now.
    pub ongoing_requests: usize,
    /// The model ids its [`crate::multiplex::Multiplexed`] caches hold (loaded or loading),
    /// sorted; omitted from JSON when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub multiplexed_model_ids: Vec<String>,
}

/// A type-erased node of the application graph.
pub(crate) trait AnyNode: Send + Sync {
    fn name(&self) -> &str;
    fn deps(&self) -> &[NodeRef];
    fn as_any(&self) -> &dyn Any;
    /// The options the code declared.
    fn defaults(&self) -> DeploymentOptions;
    /// The options in force.
    fn options(&self) -> DeploymentOptions;
    /// Checks options: ranges, and a `user_config` against the instance type's config.
    fn check(&self, options: &DeploymentOptions) -> Result<(), Error>;
    /// Sets the options before start (config overrides). Fails for a `user_config` the instance
    /// type cannot take.
    fn configure(&self, options: DeploymentOptions) -> Result<(), Error>;
    /// Starts the dependencies, then this deployment's replicas, then its supervisor (health
    /// checks, autoscaling, replacing lost replicas). Idempotent.
    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Takes over `old`'s router if it is the same deployment type, so that handles and traffic
    /// of both versions meet in one place. Must be called before [`AnyNode::start`].
    fn adopt(&self, old: &NodeRef) -> bool;
    /// After [`AnyNode::adopt`]: replaces the old version's replicas by new ones, at most 20% of
    /// the target at a time, each batch running before the matching old replicas drain.
    fn roll(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Applies new options to a running deployment without restarting it: limits at once,
    /// `user_config` to every replica, replicas added or drained to reach the target.
    fn update(self: Arc<Self>, options: DeploymentOptions)
        -> BoxFuture<'static, Result<(), Error>>;
    /// Starts the supervisor if it is not running.
    fn supervise(self: Arc<Self>);
    /// Stops the supervisor (the replicas keep serving).
    fn halt(&self);
    /// Stops the supervisor, stops routing to the replicas and drops them (each instance drops
    /// when its last request finishes).
    fn stop(&self);
    /// Whether both nodes route through the same router.
    fn shares_router(&self, other: &NodeRef) -> bool;
    fn replicas(&self) -> Vec<ReplicaInfo>;
    /// The replicas the deployment should run now (the autoscaler moves it).
    fn target(&self) -> usize;
    /// What went wrong last, while the deployment is short of its target.
    fn message(&self) -> String;
    /// The router's metric series and its queue length now (for `/metrics`).
    fn metrics(&self) -> (Arc<crate::metrics::DeploymentMetrics>, usize);
}

/// A reference to a node of the application graph (opaque).
#[derive(Clone)]
pub struct NodeRef(pub(crate) Arc<dyn AnyNode>);

impl NodeRef {
    pub(crate) fn same(&self, other: &NodeRef) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeRef").field(&self.0.name()).finish()
    }
}

impl<T: Send + Sync + 'static> Node<T> {
    fn current(&self) -> DeploymentOptions {
        self.options
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn startup_error(&self, source: BoxError) -> Error {
        Error::Startup {
            deployment: self.name.clone(),
            source,
        }
    }

    /// Builds one replica: constructor, then `user_config`. Not routed to yet. One attempt.
    async fn build_replica(&self, router: &Router<T>) -> Result<Arc<Replica<T>>, Error> {
        let id = format!("{}#{}", self.name, router.next_replica_id());
        let _starting = router.starting();
        let built = AssertUnwindSafe(async { (self.ctor)().await })
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panic_message(&*panic).into()));
        let replica = Arc::new(Replica::new(built.map_err(|e| self.startup_error(e))?, id));
        if let Some(config) = self.current().user_config {
            self.reconfigure_one(&replica, config).await?;
        }
        Ok(replica)
    }

    /// [`Node::build_replica`], tried up to `attempts` times with a pause that doubles from
    /// 100 ms. The error names the attempts when there were several.
    async fn build_replica_retrying(
        &self,
        router: &Router<T>,
        attempts: u32,
    ) -> Result<Arc<Replica<T>>, Error> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.build_replica(router).await {
                Ok(replica) => return Ok(replica),
                // A configuration error does not go away by trying again.
                Err(e) if is_config_error(&e) => return Err(e),
                Err(e) if attempt < attempts => {
                    tracing::warn!(
                        deployment = %self.name,
                        attempt,
                        "replica failed to start, retrying in {pause:?}: {e}"
                    );
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                Err(Error::Startup { deployment, source }) if attempts > 1 => {
                    return Err(Error::Startup {
                        deployment,
                        source: format!("{source} (gave up after {attempt} attempts)").into(),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn reconfigure_one(&self, replica: &Replica<T>, config: Value) -> Result<(), Error> {
        let Some(hook) = self.reconfigure.get() else {
            return Err(self.no_reconfigure());
        };
        AssertUnwindSafe((hook.apply)(replica.instance.clone(), config))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panic_message(&*panic).into()))
            .map_err(|e| {
                self.startup_error(format!("reconfigure failed on {}: {e}", replica.id).into())
            })
    }

    fn no_reconfigure(&self) -> Error {
        Error::Config(format!(
            "deployment '{}' got a user_config, but it was not bound with .reconfigurable() \
             (its type must implement ferroserve::Reconfigure)",
            self.name
        ))
    }

    /// Builds `n` replicas at once (each tried up to `attempts` times) and routes to each as
    /// soon as it is ready. On failure the others still join; the first error is returned.
    async fn add_replicas(&self, n: usize, attempts: u32) -> Result<(), Error> {
        let router = self.router.load_full();
        let mut builds: FuturesUnordered<_> = (0..n)
            .map(|_| self.build_replica_retrying(&router, attempts))
            .collect();
        let mut failure = None;
        while let Some(built) = builds.next().await {
            match built {
                Ok(replica) => router.add_replica(replica),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Brings the routed replicas to the target: adds missing ones (built at once, each tried up
    /// to `attempts` times), or retires
    /// the idlest extra ones and lets them drain in the background. The caller holds the
    /// supervision's operation lock.
    async fn reconcile(&self, attempts: u32) -> Result<(), Error> {
        let router = self.router.load_full();
        loop {
            let target = self.supervision.target();
            let running = router.num_replicas();
            if running < target {
                self.add_replicas(target - running, attempts).await?;
            } else {
                if running > target {
                    let mut replicas = router.replicas().to_vec();
                    // Idle replicas go first.
                    replicas.sort_by_key(|r| r.in_flight());
                    replicas.truncate(running - target);
                    router.retire(&replicas);
                    let timeout = self.current().graceful_shutdown_timeout;
                    let router = router.clone();
                    tokio::spawn(async move { router.wait_retired(&replicas, timeout).await });
                }
                return Ok(());
            }
        }
    }
}

impl<T: Send + Sync + 'static> AnyNode for Node<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn deps(&self) -> &[NodeRef] {
        &self.deps
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn defaults(&self) -> DeploymentOptions {
        self.defaults.clone()
    }

    fn options(&self) -> DeploymentOptions {
        self.current()
    }

    fn check(&self, options: &DeploymentOptions) -> Result<(), Error> {
        options.validate(&self.name)?;
        if let Some(config) = &options.user_config {
            let hook = self
                .reconfigure
                .get()
                .ok_or_else(|| self.no_reconfigure())?;
            (hook.check)(config)
                .map_err(|e| Error::Config(format!("deployment '{}': {e}", self.name)))?;
        }
        Ok(())
    }

    fn configure(&self, options: DeploymentOptions) -> Result<(), Error> {
        self.check(&options)?;
        self.router
            .load()
            .set_limits(options.max_ongoing_requests, options.max_queued_requests);
        *self.options.lock().unwrap_or_else(|p| p.into_inner()) = options;
        Ok(())
    }

    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>> {
        async move {
            self.started
                .get_or_try_init(|| async {
                    let options = self.current();
                    self.configure(options.clone())?;
                    for dep in &self.deps {
                        dep.0.clone().start().await?;
                    }
                    let initial = options.initial_replicas();
                    self.supervision.set_target(initial);
                    if let Err(e) = self.add_replicas(initial, CONSTRUCTOR_ATTEMPTS).await {
                        self.stop();
                        return Err(e);
                    }
                    self.clone().supervise();
                    tracing::info!(
                        deployment = %self.name,
                        replicas = initial,
                        "deployment running"
                    );
                    Ok(())
                })
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn adopt(&self, old: &NodeRef) -> bool {
        let Some(old) = old.0.as_any().downcast_ref::<Node<T>>() else {
            return false;
        };
        self.router.store(old.router.load_full());
        true
    }

    fn roll(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>> {
        async move {
            self.started
                .get_or_try_init(|| async {
                    let options = self.current();
                    self.configure(options.clone())?;
                    let router = self.router.load_full();
                    let mut old: Vec<_> = router.replicas().to_vec();
                    let target = match &options.autoscaling {
                        // Keep the size the autoscaler reached, within the new bounds.
                        Some(a) => a.clamp(old.len()),
                        None => options.num_replicas,
                    };
                    self.supervision.set_target(target);
                    let step = target.div_ceil(5).max(1);
                    let mut added = 0;
                    while added < target || !old.is_empty() {
                        let add = step.min(target - added);
                        if let Err(e) = self.add_replicas(add, CONSTRUCTOR_ATTEMPTS).await {
                            // Keep the old version serving: drain the new replicas again.
                            let new: Vec<_> = router
                                .replicas()
                                .iter()
                                .filter(|r| !old.iter().any(|o| Arc::ptr_eq(o, r)))
                                .cloned()
                                .collect();
                            router.drain(&new, options.graceful_shutdown_timeout).await;
                            return Err(e);
                        }
                        added += add;
                        let retire: Vec<_> = old.drain(..step.min(old.len())).collect();
                        router.drain(&retire, options.graceful_shutdown_timeout).await;
                    }
                    self.clone().supervise();
                    tracing::info!(deployment = %self.name, replicas = target, "deployment updated");
                    Ok(())
                })
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn update(
        self: Arc<Self>,
        options: DeploymentOptions,
    ) -> BoxFuture<'static, Result<(), Error>> {
        async move {
            let _ops = self.supervision.lock_ops().await;
            let before = self.current();
            self.configure(options.clone())?;
            let router = self.router.load_full();
            if options.user_config != before.user_config {
                if let Some(config) = &options.user_config {
                    for replica in router.replicas().iter() {
                        self.reconfigure_one(replica, config.clone()).await?;
                    }
                }
            }
            let target = match &options.autoscaling {
                // Keep the size the autoscaler reached, within the new bounds.
                Some(a) => a.clamp(self.supervision.target()),
                None => options.num_replicas,
            };
            self.supervision.set_target(target);
            self.reconcile(CONSTRUCTOR_ATTEMPTS).await?;
            tracing::info!(deployment = %self.name, replicas = target, "deployment reconfigured");
            Ok(())
        }
        .boxed()
    }

    fn supervise(self: Arc<Self>) {
        supervisor::spawn(&self);
    }

    fn halt(&self) {
        self.supervision.halt();
    }

    fn stop(&self) {
        self.halt();
        self.router.load().set_replicas(Vec::new());
        tracing::info!(deployment = %self.name, "deployment stopped");
    }

    fn shares_router(&self, other: &NodeRef) -> bool {
        other
            .0
            .as_any()
            .downcast_ref::<Node<T>>()
            .is_some_and(|o| Arc::ptr_eq(&o.router.load(), &self.router.load()))
    }

    fn replicas(&self) -> Vec<ReplicaInfo> {
        self.router.load().replica_infos()
    }

    fn target(&self) -> usize {
        self.supervision.target()
    }

    fn message(&self) -> String {
        self.supervision.message()
    }

    fn metrics(&self) -> (Arc<crate::metrics::DeploymentMetrics>, usize) {
        let router = self.router.load();
        (router.metrics().clone(), router.num_queued())
    }
}

/// Whether a start-up failure is an invalid configuration (from the constructor or its
/// `user_config`), which retrying cannot fix.
fn is_config_error(e: &Error) -> bool {
    match e {
        Error::Config(_) => true,
        Error::Startup { source, .. } => {
            matches!(source.downcast_ref::<Error>(), Some(Error::Config(_)))
        }
        _ => false,
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

/// Dependencies that can be passed to [`Deployment::with`]: a [`BoundDeployment`], or a tuple of
/// up to four of them. The constructor receives the matching [`DeploymentHandle`]s.
pub trait Deps: Send + Sync + 'static {
    /// What the constructor receives: a handle, or a tuple of handles.
    type Handles: Send + 'static;
    /// The handles, one clone per constructor call.
    fn handles(&self) -> Self::Handles;
    #[doc(hidden)]
    fn collect(&self, out: &mut Vec<NodeRef>);
}

impl<T: Send + Sync + 'static> Deps for BoundDeployment<T> {
    type Handles = DeploymentHandle<T>;
    fn handles(&self) -> Self::Handles {
        self.handle()
    }
    fn collect(&self, out: &mut Vec<NodeRef>) {
        out.push(self.node_ref());
    }
}

macro_rules! tuple_deps {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Deps),+> Deps for ($($t,)+) {
            type Handles = ($($t::Handles,)+);
            fn handles(&self) -> Self::Handles {
                ($(self.$i.handles(),)+)
            }
            fn collect(&self, out: &mut Vec<NodeRef>) {
                $(self.$i.collect(out);)+
            }
        }
    };
}
tuple_deps!(A 0, B 1);
tuple_deps!(A 0, B 1, C 2);
tuple_deps!(A 0, B 1, C 2, D 3);

#[cfg(test)]
mod tests {
    use super::ReplicaState;

    #[test]
    fn replica_state_names_match_their_serialized_form() {
        for state in [
            ReplicaState::Starting,
            ReplicaState::Running,
            ReplicaState::Stopping,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }
}
