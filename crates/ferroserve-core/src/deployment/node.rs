//! A deployment as a node of the application graph, and its control plane: building replicas,
//! scaling, rolling updates, status. The controller drives these through [`NodeRef`].

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{DeploymentOptions, Reconfigurer, ReplicaInfo, ReplicaState, CONSTRUCTOR_ATTEMPTS};
use crate::balance::Member;
use crate::error::{BoxError, Error};
use crate::metrics::DeploymentMetrics;
use crate::replica::{LocalReplica, ReplicaMember, ReplicaSet};
use crate::sync::lock;

pub(super) type Ctor<T> = Arc<dyn Fn() -> BoxFuture<'static, Result<T, BoxError>> + Send + Sync>;
pub(super) type HealthFn<T> =
    Arc<dyn Fn(Arc<T>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// One deployment of the graph: what it is (name, constructor, hooks) and what runs (its
/// replica set, its supervision).
pub(super) struct Node<T: Send + Sync + 'static> {
    pub(super) name: String,
    pub(super) defaults: DeploymentOptions,
    options: Mutex<DeploymentOptions>,
    deps: Vec<NodeRef>,
    ctor: Ctor<T>,
    replicas: ArcSwap<ReplicaSet<T>>,
    pub(super) reconfigure: OnceLock<Reconfigurer<T>>,
    pub(super) health: OnceLock<HealthFn<T>>,
    started: tokio::sync::OnceCell<()>,
    pub(super) supervision: Supervision,
}

/// What makes two nodes versions of one deployment: the same name and the same instance type.
/// A new version whose key matches the running one takes over its replica set
/// ([`NodeRef::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentKey {
    name: String,
    instance_type: TypeId,
}

impl<T: Send + Sync + 'static> Node<T> {
    pub(super) fn new(
        name: String,
        options: DeploymentOptions,
        deps: Vec<NodeRef>,
        ctor: Ctor<T>,
    ) -> Self {
        let replicas = ReplicaSet::new(
            &name,
            options.max_ongoing_requests,
            options.max_queued_requests,
        );
        Node {
            name,
            defaults: options.clone(),
            options: Mutex::new(options),
            deps,
            ctor,
            replicas: ArcSwap::from_pointee(replicas),
            reconfigure: OnceLock::new(),
            health: OnceLock::new(),
            started: tokio::sync::OnceCell::new(),
            supervision: Supervision::default(),
        }
    }

    /// The replica set requests go through now.
    pub(super) fn replicas(&self) -> Arc<ReplicaSet<T>> {
        self.replicas.load_full()
    }

    /// The options in force.
    pub(super) fn current(&self) -> DeploymentOptions {
        lock(&self.options).clone()
    }

    fn startup_error(&self, source: BoxError) -> Error {
        Error::Startup {
            deployment: self.name.clone(),
            source,
        }
    }

    /// Builds one replica: constructor, then `user_config`. Not routed to yet. One attempt.
    async fn build_replica(&self, set: &ReplicaSet<T>) -> Result<Arc<ReplicaMember<T>>, Error> {
        let id = set.next_replica_id();
        let _starting = set.starting();
        let built = crate::panic::catch(async { (self.ctor)().await })
            .await
            .unwrap_or_else(|panic| Err(panic.into()));
        let replica = LocalReplica::new(built.map_err(|e| self.startup_error(e))?, id, set);
        if let Some(config) = self.current().user_config {
            self.reconfigure_one(&replica, config).await?;
        }
        let member: Arc<ReplicaMember<T>> = Member::new(replica);
        Ok(member)
    }

    /// [`Node::build_replica`], tried up to `attempts` times with a pause that doubles from
    /// 100 ms. The error names the attempts when there were several.
    async fn build_replica_retrying(
        &self,
        set: &ReplicaSet<T>,
        attempts: u32,
    ) -> Result<Arc<ReplicaMember<T>>, Error> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.build_replica(set).await {
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

    async fn reconfigure_one(&self, replica: &LocalReplica<T>, config: Value) -> Result<(), Error> {
        let Some(hook) = self.reconfigure.get() else {
            return Err(self.no_reconfigure());
        };
        crate::panic::catch((hook.apply)(replica.instance().clone(), config))
            .await
            .unwrap_or_else(|panic| Err(panic.into()))
            .map_err(|e| {
                let id = replica.tag().replica_id();
                self.startup_error(format!("reconfigure failed on {id}: {e}").into())
            })
    }

    fn no_reconfigure(&self) -> Error {
        Error::Config(format!(
            "deployment '{}' got a user_config, but it was not bound with .reconfigurable() \
             (its type must implement Reconfigure)",
            self.name
        ))
    }

    /// Builds `n` replicas at once (each tried up to `attempts` times) and routes to each as
    /// soon as it is ready. On failure the others still join; the first error is returned.
    async fn add_replicas(&self, n: usize, attempts: u32) -> Result<(), Error> {
        let set = self.replicas();
        let mut builds: FuturesUnordered<_> = (0..n)
            .map(|_| self.build_replica_retrying(&set, attempts))
            .collect();
        let mut failure = None;
        while let Some(built) = builds.next().await {
            match built {
                Ok(replica) => set.balancer().add(replica),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Brings the routed replicas to the target: adds missing ones (built at once, each tried
    /// up to `attempts` times), or retires the idlest extra ones and lets them drain in the
    /// background. The caller holds the supervision's operation lock.
    pub(super) async fn reconcile(&self, attempts: u32) -> Result<(), Error> {
        let set = self.replicas();
        loop {
            let target = self.supervision.target();
            let running = set.balancer().len();
            if running < target {
                self.add_replicas(target - running, attempts).await?;
                continue;
            }
            if running > target {
                let mut members = set.balancer().members().to_vec();
                // Idle replicas go first.
                members.sort_by_key(|m| m.load());
                members.truncate(running - target);
                self.retire_in_background(&set, members);
            }
            return Ok(());
        }
    }

    /// Stops routing to `members` now and lets them finish their requests in the background
    /// (up to the graceful shutdown timeout).
    pub(super) fn retire_in_background(
        &self,
        set: &Arc<ReplicaSet<T>>,
        members: Vec<Arc<ReplicaMember<T>>>,
    ) {
        set.retire(&members);
        let timeout = self.current().graceful_shutdown_timeout;
        let set = set.clone();
        tokio::spawn(async move { set.wait_retired(&members, timeout).await });
    }

    /// The replicas a version that takes over the running ones should have: the autoscaler's
    /// size within the new bounds, or `num_replicas`.
    fn target_after_update(options: &DeploymentOptions, running: usize) -> usize {
        match &options.autoscaling {
            Some(a) => a.clamp(running),
            None => options.num_replicas,
        }
    }

    /// The rolling update proper: new replicas in steps of at most 20% of `target`, each step
    /// running before as many old ones drain. On a failure the new replicas drain again and
    /// the old ones keep serving.
    async fn replace_replicas(
        &self,
        set: &ReplicaSet<T>,
        mut old: Vec<Arc<ReplicaMember<T>>>,
        target: usize,
        timeout: Duration,
    ) -> Result<(), Error> {
        let step = target.div_ceil(5).max(1);
        let mut added = 0;
        while added < target || !old.is_empty() {
            let add = step.min(target - added);
            if let Err(e) = self.add_replicas(add, CONSTRUCTOR_ATTEMPTS).await {
                let new: Vec<_> = set
                    .balancer()
                    .members()
                    .iter()
                    .filter(|m| !old.iter().any(|o| Arc::ptr_eq(o, m)))
                    .cloned()
                    .collect();
                set.drain(&new, timeout).await;
                return Err(e);
            }
            added += add;
            let retire: Vec<_> = old.drain(..step.min(old.len())).collect();
            set.drain(&retire, timeout).await;
        }
        Ok(())
    }
}

/// A deployment's supervision state, shared by its supervisor task and the controller.
#[derive(Default)]
pub(super) struct Supervision {
    /// Replicas the deployment should run.
    target: AtomicUsize,
    /// Serializes scaling operations (config updates, the supervisor's turns).
    ops: tokio::sync::Mutex<()>,
    /// Cancels the running supervisor task, if any.
    pub(super) task: Mutex<Option<CancellationToken>>,
    /// The last problem, while the deployment is short of its target.
    message: Mutex<String>,
}

impl Supervision {
    pub(super) fn target(&self) -> usize {
        self.target.load(SeqCst)
    }

    pub(super) fn set_target(&self, n: usize) {
        self.target.store(n, SeqCst);
    }

    pub(super) async fn lock_ops(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ops.lock().await
    }

    /// The operation lock if nobody holds it (a config update reconciles by itself).
    pub(super) fn try_lock_ops(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.ops.try_lock().ok()
    }

    pub(super) fn halt(&self) {
        if let Some(token) = lock(&self.task).take() {
            token.cancel();
        }
    }

    pub(super) fn message(&self) -> String {
        lock(&self.message).clone()
    }

    pub(super) fn set_message(&self, message: String) {
        *lock(&self.message) = message;
    }
}

/// The type-erased control plane of a node; see [`NodeRef`] for what each does.
trait AnyNode: Send + Sync {
    fn name(&self) -> &str;
    fn key(&self) -> DeploymentKey;
    fn deps(&self) -> &[NodeRef];
    fn defaults(&self) -> DeploymentOptions;
    fn options(&self) -> DeploymentOptions;
    fn check(&self, options: &DeploymentOptions) -> Result<(), Error>;
    fn configure(&self, options: DeploymentOptions) -> Result<(), Error>;
    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// The replica set, for a newer version of the same deployment to take over.
    fn replica_set(&self) -> Arc<dyn Any + Send + Sync>;
    /// Where the replica set lives: equal for nodes that share one.
    fn replica_set_id(&self) -> usize;
    fn adopt(&self, old: &NodeRef) -> bool;
    fn roll(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>>;
    fn update(self: Arc<Self>, options: DeploymentOptions)
        -> BoxFuture<'static, Result<(), Error>>;
    fn supervise(self: Arc<Self>);
    fn halt(&self);
    fn stop(&self);
    fn replica_infos(&self) -> Vec<ReplicaInfo>;
    fn target(&self) -> usize;
    fn message(&self) -> String;
    fn metrics(&self) -> Arc<DeploymentMetrics>;
    fn num_queued(&self) -> usize;
}

/// A deployment as a node of the application graph: what the controller starts, updates and
/// reports on, whatever the deployment's instance type. Cloning shares the node.
#[derive(Clone)]
pub struct NodeRef(Arc<dyn AnyNode>);

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NodeRef").field(&self.0.name()).finish()
    }
}

impl NodeRef {
    pub(super) fn new<T: Send + Sync + 'static>(node: Arc<Node<T>>) -> Self {
        NodeRef(node)
    }

    /// Whether both refer to the same node.
    pub fn same(&self, other: &NodeRef) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// What makes two nodes versions of one deployment.
    pub fn key(&self) -> DeploymentKey {
        self.0.key()
    }

    /// The deployments this one calls (started before it).
    pub fn deps(&self) -> &[NodeRef] {
        self.0.deps()
    }

    /// The options the code declared.
    pub fn defaults(&self) -> DeploymentOptions {
        self.0.defaults()
    }

    /// The options in force.
    pub fn options(&self) -> DeploymentOptions {
        self.0.options()
    }

    /// Checks options without applying them: ranges, and a `user_config` against the instance
    /// type's config.
    pub fn check(&self, options: &DeploymentOptions) -> Result<(), Error> {
        self.0.check(options)
    }

    /// Sets the options before start (config overrides). Fails for a `user_config` the
    /// instance type cannot take.
    pub fn configure(&self, options: DeploymentOptions) -> Result<(), Error> {
        self.0.configure(options)
    }

    /// Starts the dependencies, then this deployment's replicas, then its supervisor (health
    /// checks, autoscaling, replacing lost replicas). Idempotent.
    pub async fn start(&self) -> Result<(), Error> {
        self.0.clone().start().await
    }

    /// Takes over `old`'s replica set if `old` is a version of this deployment (same
    /// [`DeploymentKey`]), so that handles and traffic of both versions meet in one place.
    /// Call it before [`NodeRef::roll`].
    pub fn adopt(&self, old: &NodeRef) -> bool {
        self.0.adopt(old)
    }

    /// After [`NodeRef::adopt`]: replaces the old version's replicas by new ones, at most 20%
    /// of the target at a time, each step running before the matching old replicas drain.
    pub async fn roll(&self) -> Result<(), Error> {
        self.0.clone().roll().await
    }

    /// Applies new options to a running deployment without restarting it: limits at once,
    /// `user_config` to every replica, replicas added or drained to reach the target.
    pub async fn update(&self, options: DeploymentOptions) -> Result<(), Error> {
        self.0.clone().update(options).await
    }

    /// Starts the supervisor if it is not running.
    pub fn supervise(&self) {
        self.0.clone().supervise()
    }

    /// Stops the supervisor (the replicas keep serving).
    pub fn halt(&self) {
        self.0.halt()
    }

    /// Stops the supervisor, stops routing to the replicas and lets them go (each instance is
    /// dropped when its last request finishes).
    pub fn stop(&self) {
        self.0.stop()
    }

    /// Whether both nodes route through the same replica set.
    pub fn shares_replicas(&self, other: &NodeRef) -> bool {
        self.0.replica_set_id() == other.0.replica_set_id()
    }

    /// Every replica with its state: running, stopping (draining), starting.
    pub fn replica_infos(&self) -> Vec<ReplicaInfo> {
        self.0.replica_infos()
    }

    /// The replicas the deployment should run now (the autoscaler moves it).
    pub fn target(&self) -> usize {
        self.0.target()
    }

    /// What went wrong last, while the deployment is short of its target.
    pub fn message(&self) -> String {
        self.0.message()
    }

    /// The deployment's replica-side metric series.
    pub fn metrics(&self) -> Arc<DeploymentMetrics> {
        self.0.metrics()
    }

    /// Requests waiting for a replica now.
    pub fn num_queued(&self) -> usize {
        self.0.num_queued()
    }
}

impl<T: Send + Sync + 'static> AnyNode for Node<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn key(&self) -> DeploymentKey {
        DeploymentKey {
            name: self.name.clone(),
            instance_type: TypeId::of::<T>(),
        }
    }

    fn deps(&self) -> &[NodeRef] {
        &self.deps
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
        self.replicas()
            .balancer()
            .set_limits(options.max_ongoing_requests, options.max_queued_requests);
        *lock(&self.options) = options;
        Ok(())
    }

    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>> {
        async move {
            self.started
                .get_or_try_init(|| async {
                    let options = self.current();
                    self.configure(options.clone())?;
                    for dep in &self.deps {
                        dep.start().await?;
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

    fn replica_set(&self) -> Arc<dyn Any + Send + Sync> {
        self.replicas()
    }

    fn replica_set_id(&self) -> usize {
        Arc::as_ptr(&self.replicas.load()) as *const () as usize
    }

    fn adopt(&self, old: &NodeRef) -> bool {
        if old.key() != self.key() {
            return false;
        }
        // Same key, same instance type: the set is a `ReplicaSet<T>`.
        let Ok(set) = old.0.replica_set().downcast::<ReplicaSet<T>>() else {
            return false;
        };
        set.methods().extend(self.replicas().methods());
        self.replicas.store(set);
        true
    }

    fn roll(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>> {
        async move {
            self.started
                .get_or_try_init(|| async {
                    let options = self.current();
                    self.configure(options.clone())?;
                    let set = self.replicas();
                    let old = set.balancer().members().to_vec();
                    let target = Self::target_after_update(&options, old.len());
                    self.supervision.set_target(target);
                    let timeout = options.graceful_shutdown_timeout;
                    self.replace_replicas(&set, old, target, timeout).await?;
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
            if options.user_config != before.user_config {
                if let Some(config) = &options.user_config {
                    for member in self.replicas().balancer().members().iter() {
                        // Replicas elsewhere take their config from their own process.
                        if let Some(local) = member.endpoint().as_local() {
                            self.reconfigure_one(local, config.clone()).await?;
                        }
                    }
                }
            }
            let target = Self::target_after_update(&options, self.supervision.target());
            self.supervision.set_target(target);
            self.reconcile(CONSTRUCTOR_ATTEMPTS).await?;
            tracing::info!(deployment = %self.name, replicas = target, "deployment reconfigured");
            Ok(())
        }
        .boxed()
    }

    fn supervise(self: Arc<Self>) {
        self.spawn_supervisor();
    }

    fn halt(&self) {
        self.supervision.halt();
    }

    fn stop(&self) {
        self.halt();
        self.replicas().balancer().set_members(Vec::new());
        tracing::info!(deployment = %self.name, "deployment stopped");
    }

    fn replica_infos(&self) -> Vec<ReplicaInfo> {
        let set = self.replicas();
        let info = |m: &Arc<ReplicaMember<T>>, state| ReplicaInfo {
            replica_id: m.endpoint().id().to_owned(),
            state,
            ongoing_requests: m.load(),
            multiplexed_model_ids: m.endpoint().model_ids(),
        };
        let mut out: Vec<_> = set
            .balancer()
            .members()
            .iter()
            .map(|m| info(m, ReplicaState::Running))
            .collect();
        out.extend(
            set.stopping()
                .iter()
                .map(|m| info(m, ReplicaState::Stopping)),
        );
        for _ in 0..set.num_starting() {
            out.push(ReplicaInfo {
                replica_id: format!("{}#?", self.name),
                state: ReplicaState::Starting,
                ongoing_requests: 0,
                multiplexed_model_ids: Vec::new(),
            });
        }
        out
    }

    fn target(&self) -> usize {
        self.supervision.target()
    }

    fn message(&self) -> String {
        self.supervision.message()
    }

    fn metrics(&self) -> Arc<DeploymentMetrics> {
        self.replicas().metrics().clone()
    }

    fn num_queued(&self) -> usize {
        self.replicas().balancer().num_queued()
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
