//! FastAPI-style ingress on axum: typed routes with `self`, validation, dependency injection,
//! middleware, and OpenAPI 3.1 docs.
//!
//! An [`ApiIngress`] deployment declares its routes as an [`ApiRouter`] whose state is the
//! replica's own instance: `State(this): State<Arc<Self>>` is Ray's `self`. Each replica gets
//! its own router (built once, on its first request), and ferroserve balances requests over the
//! replicas exactly as for raw ingress. An existing `axum::Router` (or `ApiRouter<()>`) with its
//! own state and layers is served unchanged with [`crate::Application::router`].
//!
//! | FastAPI | ferroserve |
//! |---|---|
//! | `@app.get("/{id}")` with typed params | `.api_route("/{id}", get(handler))`, `Path<T>`, `Query<T>`, `Headers<T>`, `Json<T>` |
//! | pydantic model + constraints, 422 | `#[derive(Deserialize, JsonSchema, garde::Validate)]` + [`Valid`]`<Json<T>>` |
//! | `Depends(get_db)` | any axum extractor (`FromRequestParts`), or a field of `self` built once per replica |
//! | middleware | tower layers: `.layer(...)` on the router |
//! | `/docs`, `/openapi.json` | `{route_prefix}/docs`, `{route_prefix}/openapi.json` (assets built in) |
//! | `root_path` | [`RootPath`] |
//!
//! Request bodies are limited once, by the server's `max_request_body_bytes` (see
//! [`crate::limits`]), in place of axum's own 2 MiB default; a router that sets its own
//! `DefaultBodyLimit` keeps it (within the server's limit).
//!
//! The request's [`ferroserve_core::RequestContext`] is [`ferroserve_core::current`] inside a
//! handler; [`RootPath`] extracts the application's root path.
//!
//! Unknown paths under the prefix answer `404 {"detail":"Not Found"}`, a known path with another
//! method `405 {"detail":"Method Not Allowed"}` with `Allow`.

mod extract;
mod rejection;
mod ws;

use std::convert::Infallible;
use std::sync::Arc;

use aide::openapi::{Info, OpenApi, Server};
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use ferroserve_core::replica::{LocalReplica, ReplicaSet};
use ferroserve_core::{Error, RequestContext};
use futures_util::future::{BoxFuture, Either, FutureExt};
use http::{header, HeaderValue, Method, StatusCode, Uri};
use tower::ServiceExt;

use crate::endpoint::HttpEndpoint;
use crate::route::relative_path;
use crate::scope;
use crate::stream::{attach, PinnedSlot};

pub use aide::axum::routing;
pub use aide::axum::ApiRouter;
pub use extract::{
    parse_json_body, Headers, Json, JsonRequest, Path, Query, RootPath, StarletteRequest, Valid,
    Validatable,
};
pub use rejection::{rejection_responses, DetailError, ErrorDetail, Rejection, ValidationError};
pub use ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, DEFAULT_MAX_MESSAGE_SIZE};

/// A deployment whose HTTP interface is a set of typed routes (Ray's `@serve.ingress(app)`).
///
/// ```
/// use std::sync::Arc;
/// use axum::extract::State;
/// use ferroserve_http::api::{routing::get, ApiIngress, ApiRouter, Json};
///
/// struct MyFastAPIDeployment;
///
/// impl MyFastAPIDeployment {
///     async fn root(State(_this): State<Arc<Self>>) -> Json<&'static str> {
///         Json("Hello, world!")
///     }
/// }
///
/// impl ApiIngress for MyFastAPIDeployment {
///     fn routes() -> ApiRouter<Arc<Self>> {
///         ApiRouter::new().api_route("/", get(Self::root))
///     }
/// }
/// ```
pub trait ApiIngress: Send + Sync + 'static {
    /// The routes, relative to the application's route prefix. Called once to build the OpenAPI
    /// document and once per replica.
    fn routes() -> ApiRouter<Arc<Self>>;
}

/// An existing router served as a deployment (Ray's "bring your own FastAPI app"): an
/// `axum::Router` (no OpenAPI document) or a [`DocumentedRouter`], returned by the
/// deployment's constructor.
pub trait RouterIngress: Send + Sync + 'static {
    /// The router one replica serves, and its OpenAPI document if it has one.
    fn router(&self) -> (axum::Router, Option<OpenApi>);
}

impl RouterIngress for axum::Router {
    fn router(&self) -> (axum::Router, Option<OpenApi>) {
        (self.clone(), None)
    }
}

/// An existing `ApiRouter` with its OpenAPI document, finished where it was built.
///
/// aide collects a router's schemas on the thread that declares its routes, so the document
/// must be finished on that same thread: build it with `DocumentedRouter::new(app())` in one
/// expression.
#[derive(Clone)]
pub struct DocumentedRouter {
    router: axum::Router,
    openapi: OpenApi,
}

impl std::fmt::Debug for DocumentedRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentedRouter").finish_non_exhaustive()
    }
}

impl DocumentedRouter {
    /// Finishes `router`'s OpenAPI document and keeps both.
    pub fn new(router: ApiRouter) -> Self {
        let mut openapi = OpenApi::default();
        let router = router.finish_api(&mut openapi);
        name_path_params(&mut openapi);
        DocumentedRouter { router, openapi }
    }
}

impl RouterIngress for DocumentedRouter {
    fn router(&self) -> (axum::Router, Option<OpenApi>) {
        (self.router.clone(), Some(self.openapi.clone()))
    }
}

/// One replica's HTTP app, kept with the replica.
pub(crate) struct ReplicaApp {
    router: axum::Router,
    /// `router` without axum's 2 MiB default body limit, for bodies that may be larger (the
    /// server's own limit applies to them already). Kept apart so that requests whose body is
    /// known to be small skip the extension axum's switch inserts (an allocation).
    unlimited: axum::Router,
    openapi: Option<Arc<OpenApi>>,
}

/// Where [`Path`] leaves the schemas of unnamed path parameters for [`name_path_params`].
pub(crate) const PATH_PARAMS_EXT: &str = "x-ferroserve-path-params";

/// Names the path parameters of `Path<i64>`/`Path<(String, u32)>` extractors after the route's
/// `{name}` segments, in order, and documents them as required path parameters.
fn name_path_params(api: &mut OpenApi) {
    use aide::openapi::{
        Parameter, ParameterData, ParameterSchemaOrContent, PathStyle, ReferenceOr, SchemaObject,
    };
    let Some(paths) = api.paths.as_mut() else {
        return;
    };
    for (path, item) in paths.paths.iter_mut() {
        let ReferenceOr::Item(item) = item else {
            continue;
        };
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| name.trim_start_matches('*'))
            .collect();
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in ops.into_iter().flatten() {
            let Some(serde_json::Value::Array(schemas)) =
                op.extensions.shift_remove(PATH_PARAMS_EXT)
            else {
                continue;
            };
            for (name, schema) in names.iter().zip(schemas) {
                let Ok(json_schema) = schemars::Schema::try_from(schema) else {
                    continue;
                };
                op.parameters.push(ReferenceOr::Item(Parameter::Path {
                    parameter_data: ParameterData {
                        name: (*name).to_owned(),
                        description: None,
                        required: true,
                        format: ParameterSchemaOrContent::Schema(SchemaObject {
                            json_schema,
                            example: None,
                            external_docs: None,
                        }),
                        extensions: Default::default(),
                        deprecated: None,
                        example: None,
                        examples: Default::default(),
                        explode: None,
                    },
                    style: PathStyle::Simple,
                }));
            }
        }
    }
}

pub(crate) fn build_api<T: ApiIngress>(instance: &Arc<T>) -> ReplicaApp {
    let mut api = OpenApi::default();
    let router = T::routes()
        .finish_api(&mut api)
        .with_state(instance.clone());
    name_path_params(&mut api);
    ReplicaApp {
        unlimited: router.clone().layer(DefaultBodyLimit::disable()),
        router,
        openapi: Some(Arc::new(api)),
    }
}

pub(crate) fn build_router<T: RouterIngress>(instance: &Arc<T>) -> ReplicaApp {
    let (router, openapi) = instance.router();
    ReplicaApp {
        unlimited: router.clone().layer(DefaultBodyLimit::disable()),
        router,
        openapi: openapi.map(Arc::new),
    }
}

/// The endpoint of an axum-based ingress.
pub(crate) struct ApiEndpoint<T: Send + Sync + 'static> {
    pub(crate) replicas: Arc<ReplicaSet<T>>,
    pub(crate) build: fn(&Arc<T>) -> ReplicaApp,
}

const DOCS_HTML: &str = include_str!("docs.html");

impl<T: Send + Sync + 'static> HttpEndpoint for ApiEndpoint<T> {
    fn respond(
        &self,
        mut request: http::Request<Body>,
        ctx: RequestContext,
    ) -> BoxFuture<'static, Response> {
        let build = self.build;
        // An upgrade (WebSocket) keeps its replica slot for the life of the connection.
        // hyper attaches `OnUpgrade` only to a request that asks for an upgrade (cheaper to
        // look for than the `Upgrade` header, and without it no upgrade can happen).
        let pin = request
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .map(|_| PinnedSlot::default());
        if let Some(pin) = &pin {
            request.extensions_mut().insert(pin.clone());
        }
        let large = may_exceed_axum_default(request.body());
        let root = scope::of(&ctx).map_or("", |s| s.root_path());
        let doc = DocPage::of(&request, root).map(|page| (page, self.replicas.name().clone()));
        if doc.is_none() {
            if let Err(bad) = to_app_path(root, &mut request) {
                return Box::pin(std::future::ready(bad.into_response()));
            }
        }
        let call = move |replica: &LocalReplica<T>| {
            let app = replica.extension(build).expect("one HTTP app per replica");
            let axum_router = if large { &app.unlimited } else { &app.router };
            call_router(axum_router, app.openapi.as_deref(), doc, request)
        };
        let respond = self
            .replicas
            .run_local(ctx, "an HTTP request", call, |r| {
                r.status().is_server_error()
            })
            .map(move |outcome| match (outcome, pin) {
                (Ok(done), Some(pin))
                    if done.output.status() == StatusCode::SWITCHING_PROTOCOLS =>
                {
                    pin.keep(Box::new(done.slot));
                    done.output
                }
                (Ok(done), _) => attach(done.output, done.ctx, done.slot),
                (Err(e), _) => e.into_response(),
            });
        Box::pin(respond)
    }
}

/// axum's extractors cap bodies at 2 MiB unless told otherwise.
const AXUM_DEFAULT_BODY_LIMIT: u64 = 2 << 20;

/// Whether `body` may be larger than axum's default limit (chunked, or declared larger): such
/// requests go to the router without it, since the proxy enforces the server's limit.
fn may_exceed_axum_default(body: &Body) -> bool {
    use hyper::body::Body as _;
    body.size_hint()
        .upper()
        .is_none_or(|upper| upper > AXUM_DEFAULT_BODY_LIMIT)
}

/// `{root}/openapi.json` and `{root}/docs`, which an app with a document serves itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocPage {
    OpenApi,
    Docs,
}

/// A documentation page: the page, the application's root path and its title.
type DocRequest = ((DocPage, String), Arc<str>);

impl DocPage {
    /// The page `request` asks for, with the root path it is under.
    fn of(request: &http::Request<Body>, root: &str) -> Option<(DocPage, String)> {
        if request.method() != Method::GET {
            return None;
        }
        let page = match relative_path(root, request.uri().path()) {
            "/openapi.json" => DocPage::OpenApi,
            "/docs" => DocPage::Docs,
            _ => return None,
        };
        Some((page, root.to_owned()))
    }
}

/// Rewrites the request's URI to the path relative to the application's `root`, as its router
/// expects; a path that cannot be a URI any more is a `400`.
fn to_app_path(root: &str, request: &mut http::Request<Body>) -> Result<(), Error> {
    if root.is_empty() {
        return Ok(());
    }
    let uri = request.uri();
    let rewritten = match (relative_path(root, uri.path()), uri.query()) {
        // The application's root, the most common request of all: no allocation.
        ("/", None) => Ok(Uri::from_static("/")),
        // One allocation, handed to `Uri` without a copy.
        (rel, Some(q)) => Uri::try_from(format!("{rel}?{q}")),
        (rel, None) => Uri::try_from(rel.to_owned()),
    };
    match rewritten {
        Ok(uri) => {
            *request.uri_mut() = uri;
            Ok(())
        }
        Err(_) => Err(Error::bad_request(
            StatusCode::BAD_REQUEST,
            "Invalid request path",
        )),
    }
}

/// The future of one replica's answer: a documentation page made at once, or its router's.
/// A plain enum of both (not an `async fn`), so that the work a replica runs stays small to move.
type RouterCall = Either<
    std::future::Ready<Response>,
    futures_util::future::Map<
        tower::util::Oneshot<axum::Router, http::Request<Body>>,
        fn(Result<Response, Infallible>) -> Response,
    >,
>;

/// Answers `request` with one replica's router (its URI already relative to the application's
/// root), or with a documentation page when the app has a document.
fn call_router(
    router: &axum::Router,
    openapi: Option<&OpenApi>,
    doc: Option<DocRequest>,
    mut request: http::Request<Body>,
) -> RouterCall {
    if let Some(((page, root), title)) = doc {
        let page = match (openapi, page) {
            (Some(doc), DocPage::OpenApi) => Some(openapi_json(doc, &title, &root)),
            (Some(_), DocPage::Docs) => Some(docs_page(&root)),
            (None, _) => to_app_path(&root, &mut request)
                .err()
                .map(IntoResponse::into_response),
        };
        if let Some(page) = page {
            return Either::Left(std::future::ready(page));
        }
    }
    let answered: fn(Result<Response, Infallible>) -> Response = |r| match r {
        Ok(response) => fastapi_defaults(response),
        Err(never) => match never {},
    };
    Either::Right(router.clone().oneshot(request).map(answered))
}

/// axum answers unknown routes and methods with empty bodies; FastAPI with `{"detail": ...}`.
fn fastapi_defaults(response: Response) -> Response {
    let status = response.status();
    if !(status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED)
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let (parts, _) = response.into_parts();
    let detail = if status == StatusCode::NOT_FOUND {
        "Not Found"
    } else {
        "Method Not Allowed"
    };
    let mut fresh = (status, axum::Json(serde_json::json!({ "detail": detail }))).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        fresh.headers_mut().insert(header::ALLOW, allow.clone());
    }
    fresh
}

fn openapi_json(doc: &OpenApi, title: &str, root: &str) -> Response {
    let mut doc = doc.clone();
    if doc.info.title.is_empty() {
        doc.info = Info {
            title: title.to_owned(),
            version: "0.1.0".to_owned(),
            ..Info::default()
        };
    }
    doc.servers = vec![Server {
        url: if root.is_empty() {
            "/".to_owned()
        } else {
            root.to_owned()
        },
        ..Server::default()
    }];
    axum::Json(doc).into_response()
}

fn docs_page(root: &str) -> Response {
    let html = DOCS_HTML.replace("__OPENAPI_URL__", &format!("{root}/openapi.json"));
    let mut response = html.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}
