//! Deployment graphs and the DAG driver (Ray's `InputNode`, `.bind()` calls and `DAGDriver`).
//!
//! A graph starts at an [`InputNode`] whose type is the HTTP adapter that parses requests
//! (`InputNode::<JsonToNdarray>::new()` is Ray's `http_adapter=json_to_ndarray`, from the
//! adapters crate; the default in Ray, the raw request, is [`crate::api::StarletteRequest`]). Each
//! [`DagNode::call`] sends the node's output to a bound deployment through a handle;
//! [`DagNode::join`] runs two branches on the same input concurrently (fan-out) and pairs
//! their outputs (fan-in). A [`DagDriver`] serves one graph at `/` or several, one per
//! sub-route, accepting GET and POST; the graph's output is returned as JSON.
//!
//! ```
//! use ferroserve_core::{Deployment, Handles};
//! use ferroserve_http::api::JsonRequest;
//! use ferroserve_http::dag::{DagDriver, InputNode};
//!
//! struct Model;
//! struct Sum(serde_json::Value);
//! impl Handles<Sum> for Model {
//!     type Output = f64;
//!     async fn call(&self, Sum(v): Sum) -> f64 {
//!         v.as_array().into_iter().flatten().filter_map(|x| x.as_f64()).sum()
//!     }
//! }
//!
//! let model = Deployment::new("Model").bind(|| Model);
//! let dag = InputNode::<JsonRequest>::new().call(&model, |JsonRequest(v)| Sum(v));
//! let app = DagDriver::new().route("/", dag).bind();
//! ```

use std::sync::Arc;

use aide::OperationInput;
use axum::extract::FromRequest;
use futures_util::future::{BoxFuture, FutureExt};
use schemars::JsonSchema;
use serde::Serialize;

use ferroserve_core::deployment::{BoundDeployment, Deployment, NodeRef};
use ferroserve_core::{Error, Handles};

use crate::api::{routing, ApiRouter, DocumentedRouter, Json, StarletteRequest};
use crate::app::Application;
use crate::error::HandlerError;

type Run<I, O> = Arc<dyn Fn(I) -> BoxFuture<'static, Result<O, Error>> + Send + Sync>;

/// A node of a graph: computes an `O` from the graph's input `I`.
pub struct DagNode<I, O> {
    run: Run<I, O>,
    deps: Vec<NodeRef>,
}

impl<I, O> Clone for DagNode<I, O> {
    fn clone(&self) -> Self {
        DagNode {
            run: self.run.clone(),
            deps: self.deps.clone(),
        }
    }
}

/// The graph's input: the request as parsed by the HTTP adapter `A`.
pub struct InputNode<A>(std::marker::PhantomData<fn() -> A>);

impl InputNode<StarletteRequest> {
    /// The input node of a graph that takes the raw request (Ray's default `http_adapter`).
    pub fn request() -> DagNode<StarletteRequest, StarletteRequest> {
        InputNode::new()
    }
}

impl<A: Send + 'static> InputNode<A> {
    /// The input node of a graph served with adapter `A`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> DagNode<A, A> {
        DagNode {
            run: Arc::new(|input| std::future::ready(Ok(input)).boxed()),
            deps: Vec::new(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> DagNode<I, O> {
    /// Calls `deployment` with the message `to_msg` makes from this node's output (Ray's
    /// `model.method.bind(node)`).
    pub fn call<T, M>(
        self,
        deployment: &BoundDeployment<T>,
        to_msg: impl Fn(O) -> M + Send + Sync + 'static,
    ) -> DagNode<I, T::Output>
    where
        T: Handles<M>,
        M: Send + 'static,
    {
        // The handle is taken on first use, after start: a rolling update may have given the
        // deployment its previous version's replica set.
        let deployment = deployment.clone();
        let handle = Arc::new(std::sync::OnceLock::new());
        let prev = self.run;
        let to_msg = Arc::new(to_msg);
        let mut deps = self.deps;
        deps.push(deployment.node_ref());
        DagNode {
            run: Arc::new(move |input| {
                let (prev, to_msg) = (prev.clone(), to_msg.clone());
                let handle = handle.get_or_init(|| deployment.handle()).clone();
                async move {
                    let out = prev(input).await?;
                    handle.remote(to_msg(out)).await
                }
                .boxed()
            }),
            deps,
        }
    }

    /// Transforms this node's output locally.
    pub fn map<P: Send + 'static>(
        self,
        f: impl Fn(O) -> P + Send + Sync + 'static,
    ) -> DagNode<I, P> {
        let prev = self.run;
        let f = Arc::new(f);
        DagNode {
            run: Arc::new(move |input| {
                let (prev, f) = (prev.clone(), f.clone());
                async move { Ok(f(prev(input).await?)) }.boxed()
            }),
            deps: self.deps,
        }
    }

    /// Runs `self` and `other` on the same input concurrently and pairs their outputs
    /// (fan-out, fan-in). The first error cancels the other branch.
    pub fn join<P: Send + 'static>(self, other: DagNode<I, P>) -> DagNode<I, (O, P)>
    where
        I: Clone,
    {
        let (a, b) = (self.run, other.run);
        let mut deps = self.deps;
        deps.extend(other.deps);
        DagNode {
            run: Arc::new(move |input: I| {
                let (a, b) = (a.clone(), b.clone());
                async move { tokio::try_join!(a(input.clone()), b(input)) }.boxed()
            }),
            deps,
        }
    }

    /// Runs the graph on one input.
    pub async fn run(&self, input: I) -> Result<O, Error> {
        (self.run)(input).await
    }
}

type AddRoute = Box<dyn FnOnce(ApiRouter) -> ApiRouter + Send>;

/// Serves graphs over HTTP (Ray's `DAGDriver`): one per sub-route, GET and POST.
#[must_use]
pub struct DagDriver {
    name: String,
    routes: Vec<AddRoute>,
    deps: Vec<NodeRef>,
}

impl Default for DagDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for DagDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DagDriver")
            .field("name", &self.name)
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl DagDriver {
    /// A driver deployment named `DAGDriver` with no routes yet.
    pub fn new() -> Self {
        DagDriver {
            name: "DAGDriver".to_owned(),
            routes: Vec::new(),
            deps: Vec::new(),
        }
    }

    /// Renames the driver deployment.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Serves `dag` at `path` (`"/"` for a single graph), parsing requests with the graph's
    /// input adapter `A`. Bad input answers the adapter's 422; graph errors their own status.
    pub fn route<A, O>(mut self, path: &str, dag: DagNode<A, O>) -> Self
    where
        A: FromRequest<()> + OperationInput + Send + 'static,
        O: Serialize + JsonSchema + Send + 'static,
    {
        self.deps.extend(dag.deps.iter().cloned());
        let path = path.to_owned();
        let run = dag.run;
        self.routes.push(Box::new(move |router: ApiRouter| {
            let handler = move |input: A| {
                let run = run.clone();
                // A graph's error keeps its own status (`HandlerError` carries it as it is).
                async move { run(input).await.map(Json).map_err(HandlerError::from) }
            };
            router.api_route(&path, routing::get(handler.clone()).post(handler))
        }));
        self
    }

    /// The application: the driver deployment (which starts every deployment the graphs call).
    pub fn bind(self) -> Application {
        // Declared and finished on this thread: aide collects schemas per thread.
        let router = DocumentedRouter::new(
            self.routes
                .into_iter()
                .fold(ApiRouter::new(), |router, add| add(router)),
        );
        let mut deps: Vec<NodeRef> = Vec::new();
        for dep in self.deps {
            if !deps.iter().any(|d| d.same(&dep)) {
                deps.push(dep);
            }
        }
        Application::router(Deployment::new(self.name).bind_with_deps(deps, move || router.clone()))
    }
}
