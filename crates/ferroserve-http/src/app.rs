//! Applications: a named graph of deployments whose ingress is mounted at a route prefix.

use std::sync::Arc;

use ferroserve_core::deployment::{BoundDeployment, NodeRef};
use ferroserve_core::Error;

use crate::api::{build_api, build_router, ApiEndpoint, ApiIngress, RouterIngress};
use crate::endpoint::HttpEndpoint;
use crate::ingress::{Ingress, IngressEndpoint};
use crate::route::validate_route_prefix;

/// An application: an ingress deployment (and, through it, every deployment it depends on),
/// a name (default `"default"`) and a route prefix (default `"/"`).
///
/// ```
/// # use ferroserve_http::{Application, Ingress, Request};
/// # use ferroserve_core::Deployment;
/// # struct Hello;
/// # impl Ingress for Hello { type Output = &'static str; async fn call(&self, _: Request) -> &'static str { "hi" } }
/// let app = Application::new(Deployment::new("Hello").bind(|| Hello))
///     .name("hello")
///     .route_prefix("/hello");
/// ```
pub struct Application {
    name: String,
    route_prefix: String,
    /// Builds the HTTP entry point from the ingress's replica set in force at start (a rolling
    /// update may have taken over the previous version's).
    endpoint: EndpointFactory,
    root: NodeRef,
}

type EndpointFactory = Arc<dyn Fn() -> Arc<dyn HttpEndpoint> + Send + Sync>;

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("name", &self.name)
            .field("route_prefix", &self.route_prefix)
            .field("ingress", &self.root)
            .finish()
    }
}

impl Application {
    /// An application whose ingress is the raw-request deployment `ingress`.
    pub fn new<T: Ingress>(ingress: BoundDeployment<T>) -> Self {
        let root = ingress.node_ref();
        Self::with_endpoint(
            root,
            Arc::new(move || {
                Arc::new(IngressEndpoint {
                    replicas: ingress.replicas(),
                })
            }),
        )
    }

    /// An application whose ingress is a FastAPI-style [`ApiIngress`] deployment: typed routes,
    /// validation, `{route_prefix}/openapi.json` and `{route_prefix}/docs`.
    pub fn api<T: ApiIngress>(ingress: BoundDeployment<T>) -> Self {
        let root = ingress.node_ref();
        Self::with_endpoint(
            root,
            Arc::new(move || {
                Arc::new(ApiEndpoint {
                    replicas: ingress.replicas(),
                    build: build_api::<T>,
                })
            }),
        )
    }

    /// An application that serves an existing router unchanged, replicated: each replica's
    /// constructor returns an `axum::Router` (or a [`crate::api::DocumentedRouter`]) with its own
    /// state and layers.
    pub fn router<R: RouterIngress>(app: BoundDeployment<R>) -> Self {
        let root = app.node_ref();
        Self::with_endpoint(
            root,
            Arc::new(move || {
                Arc::new(ApiEndpoint {
                    replicas: app.replicas(),
                    build: build_router::<R>,
                })
            }),
        )
    }

    fn with_endpoint(root: NodeRef, endpoint: EndpointFactory) -> Self {
        Application {
            name: "default".to_owned(),
            route_prefix: "/".to_owned(),
            endpoint,
            root,
        }
    }

    /// Sets the application's name (unique within a server).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the route prefix (unique within a server; see [`crate::route`]).
    pub fn route_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.route_prefix = prefix.into();
        self
    }

    /// The application's name.
    pub fn app_name(&self) -> &str {
        &self.name
    }

    /// The application's route prefix.
    pub fn app_route_prefix(&self) -> &str {
        &self.route_prefix
    }

    /// The HTTP entry point, for the ingress's replica set in force now: call it once the
    /// deployments have started.
    pub fn endpoint(&self) -> Arc<dyn HttpEndpoint> {
        (self.endpoint)()
    }

    /// The ingress deployment.
    pub fn ingress(&self) -> &NodeRef {
        &self.root
    }

    /// Every deployment of the graph, dependencies first, each once. Fails on two different
    /// deployments with the same name.
    pub fn deployments(&self) -> Result<Vec<NodeRef>, Error> {
        fn visit(node: &NodeRef, out: &mut Vec<NodeRef>, app: &str) -> Result<(), Error> {
            if out.iter().any(|n| n.same(node)) {
                return Ok(());
            }
            for dep in node.deps() {
                visit(dep, out, app)?;
            }
            if out.iter().any(|n| n.name() == node.name()) {
                return Err(Error::Config(format!(
                    "application '{app}' has two deployments named '{}'",
                    node.name()
                )));
            }
            out.push(node.clone());
            Ok(())
        }
        let mut out = Vec::new();
        visit(&self.root, &mut out, &self.name)?;
        Ok(out)
    }
}

impl<T: Ingress> From<BoundDeployment<T>> for Application {
    fn from(ingress: BoundDeployment<T>) -> Self {
        Application::new(ingress)
    }
}

/// A problem with the names and route prefixes of the applications of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppClash {
    /// Application `index` has an empty name.
    EmptyName {
        /// Its position.
        index: usize,
    },
    /// Application `index`'s route prefix breaks the rules (see [`crate::route`]).
    BadPrefix {
        /// Its position.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// Applications `first` and `index` have the same name.
    DuplicateName {
        /// The later one.
        index: usize,
        /// The earlier one.
        first: usize,
    },
    /// Applications `first` and `index` have the same route prefix.
    DuplicatePrefix {
        /// The later one.
        index: usize,
        /// The earlier one.
        first: usize,
    },
}

/// Checks the names and route prefixes (`None`: not routed) of a server's applications, in
/// order: every name non-empty and unique, every prefix valid and unique. Both applications
/// in code and a config's `applications` go through it.
pub fn check_apps(apps: &[(&str, Option<&str>)]) -> Vec<AppClash> {
    let mut clashes = Vec::new();
    for (index, (name, prefix)) in apps.iter().enumerate() {
        if name.is_empty() {
            clashes.push(AppClash::EmptyName { index });
        }
        if let Some(first) = apps[..index].iter().position(|(n, _)| n == name) {
            clashes.push(AppClash::DuplicateName { index, first });
        }
        let Some(prefix) = prefix else { continue };
        if let Err(message) = validate_route_prefix(prefix) {
            clashes.push(AppClash::BadPrefix { index, message });
        } else if let Some(first) = apps[..index].iter().position(|(_, p)| *p == Some(prefix)) {
            clashes.push(AppClash::DuplicatePrefix { index, first });
        }
    }
    clashes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_and_prefixes_are_checked_together() {
        let clashes = check_apps(&[
            ("a", Some("/a")),
            ("", Some("x")),
            ("a", Some("/a")),
            ("b", None),
        ]);
        assert_eq!(
            clashes,
            [
                AppClash::EmptyName { index: 1 },
                AppClash::BadPrefix {
                    index: 1,
                    message: "route_prefix 'x' must start with '/'".into()
                },
                AppClash::DuplicateName { index: 2, first: 0 },
                AppClash::DuplicatePrefix { index: 2, first: 0 },
            ]
        );
    }
}
