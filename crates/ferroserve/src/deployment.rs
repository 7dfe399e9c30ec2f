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

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};

use crate::error::{BoxError, Error};
use crate::handle::DeploymentHandle;
use crate::router::{Replica, Router};

/// The default `max_ongoing_requests`. Ray's is 5, sized for Python replicas that block; an
/// async Rust replica interleaves many requests, so ferroserve allows 100 per replica.
pub const DEFAULT_MAX_ONGOING_REQUESTS: usize = 100;

/// Per-deployment options (Ray's `@serve.deployment(...)` arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeploymentOptions {
    /// Replicas to run (at least 1). Default 1.
    pub num_replicas: usize,
    /// Requests one replica runs at once, strictly (at least 1). Default
    /// [`DEFAULT_MAX_ONGOING_REQUESTS`].
    pub max_ongoing_requests: usize,
    /// Requests allowed to wait when every replica is full; `None` (the default) is unlimited.
    /// Beyond it requests get `503` with `Retry-After`.
    pub max_queued_requests: Option<usize>,
}

impl Default for DeploymentOptions {
    fn default() -> Self {
        DeploymentOptions {
            num_replicas: 1,
            max_ongoing_requests: DEFAULT_MAX_ONGOING_REQUESTS,
            max_queued_requests: None,
        }
    }
}

impl DeploymentOptions {
    fn validate(&self, name: &str) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::Config("deployment name must not be empty".into()));
        }
        if self.num_replicas == 0 {
            return Err(Error::Config(format!(
                "deployment '{name}': num_replicas must be at least 1, got 0"
            )));
        }
        if self.max_ongoing_requests == 0 {
            return Err(Error::Config(format!(
                "deployment '{name}': max_ongoing_requests must be at least 1, got 0"
            )));
        }
        Ok(())
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

    /// Binds an async, fallible constructor. An error (or panic) fails the application's start-up
    /// with [`Error::Startup`] naming this deployment.
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

    /// Replaces all options at once.
    pub fn options(mut self, options: DeploymentOptions) -> Self {
        self.options = options;
        self
    }
}

type Ctor<T> = Arc<dyn Fn() -> BoxFuture<'static, Result<T, BoxError>> + Send + Sync>;

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
                options,
                deps,
                ctor,
                router,
                started: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.node.name
    }

    /// The deployment's options.
    pub fn deployment_options(&self) -> &DeploymentOptions {
        &self.node.options
    }

    /// A handle to this deployment. Calls wait until its replicas are running.
    pub fn handle(&self) -> DeploymentHandle<T> {
        DeploymentHandle::new(self.node.router.clone())
    }

    pub(crate) fn router(&self) -> &Arc<Router<T>> {
        &self.node.router
    }

    pub(crate) fn node_ref(&self) -> NodeRef {
        NodeRef(self.node.clone())
    }
}

struct Node<T: Send + Sync + 'static> {
    name: String,
    options: DeploymentOptions,
    deps: Vec<NodeRef>,
    ctor: Ctor<T>,
    router: Arc<Router<T>>,
    started: tokio::sync::OnceCell<()>,
}

/// A type-erased node of the application graph.
pub(crate) trait AnyNode: Send + Sync {
    fn name(&self) -> &str;
    fn deps(&self) -> &[NodeRef];
    /// Starts the dependencies, then this deployment's replicas. Idempotent.
    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>>;
    /// Stops routing to the replicas and drops them (each instance drops when its last request
    /// finishes).
    fn stop(&self);
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

impl<T: Send + Sync + 'static> AnyNode for Node<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn deps(&self) -> &[NodeRef] {
        &self.deps
    }

    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), Error>> {
        async move {
            self.started
                .get_or_try_init(|| async {
                    self.options.validate(&self.name)?;
                    for dep in &self.deps {
                        dep.0.clone().start().await?;
                    }
                    let mut replicas = Vec::with_capacity(self.options.num_replicas);
                    for i in 0..self.options.num_replicas {
                        let built = AssertUnwindSafe(async { (self.ctor)().await })
                            .catch_unwind()
                            .await
                            .unwrap_or_else(|panic| Err(panic_message(&*panic).into()));
                        let instance = built.map_err(|source| Error::Startup {
                            deployment: self.name.clone(),
                            source,
                        })?;
                        replicas.push(Arc::new(Replica::new(
                            instance,
                            format!("{}#{}", self.name, i),
                        )));
                    }
                    self.router.set_replicas(replicas);
                    tracing::info!(
                        deployment = %self.name,
                        replicas = self.options.num_replicas,
                        "deployment running"
                    );
                    Ok(())
                })
                .await
                .map(|_| ())
        }
        .boxed()
    }

    fn stop(&self) {
        self.router.set_replicas(Vec::new());
        tracing::info!(deployment = %self.name, "deployment stopped");
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
