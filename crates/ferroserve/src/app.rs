//! Applications: a named graph of deployments whose ingress is mounted at a route prefix.

use std::sync::Arc;

use crate::api::{build_api, build_router, ApiEndpoint, ApiIngress, ServeRouter};
use crate::deployment::{BoundDeployment, NodeRef};
use crate::error::Error;
use crate::ingress::{HttpEndpoint, Ingress, IngressEndpoint};

/// An application: an ingress deployment (and, through it, every deployment it depends on),
/// a name (default `"default"`) and a route prefix (default `"/"`).
///
/// ```no_run
/// # use ferroserve::{Application, Deployment, Ingress, Request};
/// # struct Hello;
/// # impl Ingress for Hello { type Output = &'static str; async fn call(&self, _: Request) -> &'static str { "hi" } }
/// let app = Application::new(Deployment::new("Hello").bind(|| Hello))
///     .name("hello")
///     .route_prefix("/hello");
/// ```
pub struct Application {
    pub(crate) name: String,
    pub(crate) route_prefix: String,
    /// Builds the HTTP entry point from the ingress's router in force at start (a rolling
    /// update may have adopted the previous version's).
    pub(crate) endpoint: EndpointFactory,
    pub(crate) root: NodeRef,
}

pub(crate) type EndpointFactory = Arc<dyn Fn() -> Arc<dyn HttpEndpoint> + Send + Sync>;

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
                    router: ingress.router(),
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
                    router: ingress.router(),
                    build: build_api::<T>,
                })
            }),
        )
    }

    /// An application that serves an existing router unchanged, replicated: each replica's
    /// constructor returns an `axum::Router` (or a [`crate::api::DocumentedRouter`]) with its own
    /// state and layers.
    pub fn router<R: ServeRouter>(app: BoundDeployment<R>) -> Self {
        let root = app.node_ref();
        Self::with_endpoint(
            root,
            Arc::new(move || {
                Arc::new(ApiEndpoint {
                    router: app.router(),
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

    /// Sets the route prefix (unique within a server; see [`validate_route_prefix`]).
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

    /// Every deployment of the graph, dependencies first, each once. Fails on two different
    /// deployments with the same name.
    pub(crate) fn deployments(&self) -> Result<Vec<NodeRef>, Error> {
        fn visit(node: &NodeRef, out: &mut Vec<NodeRef>, app: &str) -> Result<(), Error> {
            if out.iter().any(|n| n.same(node)) {
                return Ok(());
            }
            for dep in node.0.deps() {
                visit(dep, out, app)?;
            }
            if out.iter().any(|n| n.0.name() == node.0.name()) {
                return Err(Error::Config(format!(
                    "application '{app}' has two deployments named '{}'",
                    node.0.name()
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

/// Checks a route prefix as Ray Serve does: it starts with `/`, has no trailing `/` unless it is
/// exactly `/`, and contains no `{` or `}`.
pub fn validate_route_prefix(prefix: &str) -> Result<(), Error> {
    let err = |why: &str| Err(Error::Config(format!("route_prefix '{prefix}' {why}")));
    if !prefix.starts_with('/') {
        return err("must start with '/'");
    }
    if prefix.len() > 1 && prefix.ends_with('/') {
        return err("must not end with '/' unless it is exactly '/'");
    }
    if prefix.contains(['{', '}']) {
        return err("must not contain '{' or '}'");
    }
    Ok(())
}

/// A route prefix as a path to prepend: `""` for `/`, the prefix otherwise.
pub(crate) fn root_of(prefix: &str) -> &str {
    if prefix == "/" {
        ""
    } else {
        prefix
    }
}

/// `path` relative to the matched `prefix`, always starting with `/`.
pub(crate) fn relative_path<'a>(prefix: &str, path: &'a str) -> &'a str {
    match path.get(root_of(prefix).len()..) {
        Some("") | None => "/",
        Some(rel) => rel,
    }
}

/// Whether `path` is under `prefix`: `/a` matches `/a` and `/a/...`, not `/ab`.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rules() {
        assert!(validate_route_prefix("/").is_ok());
        assert!(validate_route_prefix("/a/b").is_ok());
        assert!(validate_route_prefix("a").is_err());
        assert!(validate_route_prefix("/a/").is_err());
        assert!(validate_route_prefix("/{id}").is_err());
    }

    #[test]
    fn prefix_matching() {
        assert!(prefix_matches("/a", "/a"));
        assert!(prefix_matches("/a", "/a/b"));
        assert!(!prefix_matches("/a", "/ab"));
        assert!(prefix_matches("/", "/anything"));
        assert_eq!(relative_path("/hello", "/hello"), "/");
        assert_eq!(relative_path("/hello", "/hello/x"), "/x");
        assert_eq!(relative_path("/", "/a/b"), "/a/b");
        assert_eq!((root_of("/"), root_of("/hello")), ("", "/hello"));
    }
}
