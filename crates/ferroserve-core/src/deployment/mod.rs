//! Deployments: a name, options, and a constructor that builds one instance per replica.
//!
//! ```
//! use ferroserve_core::Deployment;
//!
//! struct Model;
//! struct Ingress { model: ferroserve_core::DeploymentHandle<Model> }
//!
//! let model = Deployment::new("Model").num_replicas(2).bind(|| Model);
//! let ingress = Deployment::new("Ingress").with(model).bind(|model| Ingress { model });
//! ```
//!
//! Binding builds the application graph: a bound deployment given to [`Deployment::with`] is
//! started before the deployment that depends on it, and arrives in its constructor as a
//! [`DeploymentHandle`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::autoscaling::AutoscalingOptions;
use crate::error::{BoxError, Error};
use crate::handle::{DeploymentHandle, Handles};
use crate::health::HealthCheck;
use crate::replica::ReplicaSet;

mod node;
mod supervisor;

use self::node::{Ctor, Node};
pub use self::node::{DeploymentKey, NodeRef};

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
    pub fn bind_with_deps<T, F>(self, nodes: Vec<NodeRef>, ctor: F) -> BoundDeployment<T>
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

/// A deployment whose instances take a `user_config` (Ray's `reconfigure(self, config)`): called
/// after construction, before the replica serves, and again on every running replica whenever
/// the config file's `user_config` changes, without restarting it.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use ferroserve_core::{BoxError, Deployment, Reconfigure};
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
/// Serve it with `ferroserve::run` (it becomes a `ferroserve::Application`), or pass it to another
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
        BoundDeployment {
            node: Arc::new(Node::new(name, options, deps, ctor)),
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

    /// Declares `M` a method that can reach a replica in another process: its message and
    /// output cross the wire encoded (see [`crate::wire`]). Calls to replicas in this process
    /// never encode anything, registered or not.
    pub fn remote_method<M>(self) -> Self
    where
        T: Handles<M>,
        M: Serialize + DeserializeOwned + Send + 'static,
        T::Output: Serialize + DeserializeOwned,
    {
        self.node.replicas().methods().register::<M>();
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
        DeploymentHandle::new(self.replicas())
    }

    /// The replicas requests go through now (after a rolling update, the set this version took
    /// over from the previous one).
    pub fn replicas(&self) -> Arc<ReplicaSet<T>> {
        self.node.replicas()
    }

    /// This deployment as a node of the application graph.
    pub fn node_ref(&self) -> NodeRef {
        NodeRef::new(self.node.clone())
    }
}

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
    /// `Deployment#n` (`Deployment#?` while it is being constructed).
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
