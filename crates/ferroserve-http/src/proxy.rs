//! The HTTP proxy: accepts connections (HTTP/1.1 and h2c on one port), answers `/-/healthz` and
//! `/-/routes`, matches route prefixes (longest wins), attaches the request context, enforces the
//! end-to-end timeout, and hands the request to the application's endpoint.
//!
//! Request life cycle: a request id is taken from `x-request-id` or generated, and echoed as
//! `X-Request-ID` on every response. If the client disconnects, hyper drops the request's future:
//! the work is interrupted at its next `.await`, its cancellation token fires, and the proxy logs
//! `Client for request <id> disconnected, cancelling request.` If `request_timeout_s` passes, the
//! work is dropped the same way and the client gets `408`.

use std::any::Any;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use ferroserve_core::context::{CancelOnDrop, RequestId};
use ferroserve_core::{Error, RequestContext};
use futures_util::future::{BoxFuture, Either};
use futures_util::FutureExt;
use http::{HeaderValue, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::conn::ConnState;
use crate::endpoint::HttpEndpoint;
use crate::limits::Limits;
use crate::metrics::{self, MetricsSource, ProxyMetrics, RouteId};
use crate::model_id;
use crate::route::{mount, prefix_matches, strip_root_path};
use crate::scope::HttpScope;

/// The proxy's settings (Ray's `http_options`, as the proxy reads them).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// `host:port` the proxy listens on, for the `404` message.
    pub host: String,
    /// `""` or a path every route lives under.
    pub root_path: String,
    /// The end-to-end timeout (`request_timeout_s`); `None` waits forever.
    pub request_timeout: Option<Duration>,
    /// The request limits.
    pub limits: Limits,
    /// Where the proxy answers with its Prometheus metrics; `None`: no endpoint and no
    /// collection.
    pub metrics_path: Option<String>,
    /// Whether each request ends with an access-log line.
    pub access_log: bool,
}

/// One mounted application.
pub struct Route {
    prefix: Arc<str>,
    app_name: Arc<str>,
    endpoint: Arc<dyn HttpEndpoint>,
    /// The server's limits and the application's mount, attached to each request's context.
    scope: Arc<dyn Any + Send + Sync>,
    /// The route's metric series, attached by [`ProxyState::set_routes`] (`None`: metrics off).
    metrics: Option<RouteId>,
}

/// What every request handler reads. The route table is replaced as a whole when applications
/// are deployed or deleted; requests in flight keep the table they started with.
pub struct ProxyState {
    /// Sorted by prefix length, longest first.
    routes: ArcSwap<Vec<Route>>,
    /// `http_options.root_path`: `""` or a path every route lives under.
    root_path: String,
    request_timeout: Option<Duration>,
    /// `http_options`' request limits.
    limits: Limits,
    draining: AtomicBool,
    host: String,
    /// Metric series, the metrics path and the access-log switch.
    metrics: ProxyMetrics,
    /// Where `/metrics` reads deployment gauges from (set once the controller exists).
    source: OnceLock<Weak<dyn MetricsSource>>,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState")
            .field("host", &self.host)
            .field("routes", &self.routes.load().len())
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ProxyState {
    /// A proxy with no routes yet (every path answers `404` until [`ProxyState::set_routes`]).
    pub fn new(options: ProxyOptions) -> Arc<Self> {
        Arc::new(ProxyState {
            routes: ArcSwap::from_pointee(Vec::new()),
            root_path: options.root_path,
            request_timeout: options.request_timeout,
            limits: options.limits,
            draining: AtomicBool::new(false),
            host: options.host,
            metrics: ProxyMetrics::new(options.metrics_path, options.access_log),
            source: OnceLock::new(),
        })
    }

    /// A route for application `app_name` at `prefix`, answered by `endpoint`.
    pub fn route(&self, prefix: &str, app_name: String, endpoint: Arc<dyn HttpEndpoint>) -> Route {
        let scope = HttpScope::new(self.limits, mount(&self.root_path, prefix));
        Route {
            prefix: prefix.into(),
            app_name: app_name.into(),
            endpoint,
            scope: Arc::new(scope),
            metrics: None,
        }
    }

    /// Replaces the route table (sorting it longest prefix first), attaching each route's
    /// metric series (the same series across republishes).
    pub fn set_routes(&self, mut routes: Vec<Route>) {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        for r in &mut routes {
            r.metrics = self.metrics.route(&r.app_name, &r.prefix);
        }
        self.routes.store(Arc::new(routes));
    }

    /// Whether this proxy collects metrics.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics.enabled()
    }

    /// Names where `/metrics` reads the deployments' series and gauges from (once).
    pub fn set_metrics_source(&self, source: Weak<dyn MetricsSource>) {
        let _ = self.source.set(source);
    }

    /// The `/metrics` response: the text format, gauges read from the balancers now.
    pub fn metrics_response(&self) -> Response {
        let samples = self
            .source
            .get()
            .and_then(Weak::upgrade)
            .map(|s| s.deployment_samples())
            .unwrap_or_default();
        (
            [(http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            metrics::render(&self.metrics, &samples),
        )
            .into_response()
    }
}

/// The application name of the route `path` goes to, parsed as a number (for the fuzz
/// targets, which name routes by index).
#[cfg(feature = "fuzzing")]
pub(crate) fn find_route_index(state: &ProxyState, path: &str) -> Option<usize> {
    let routes = state.routes.load();
    find_route(&routes, &state.root_path, path)?
        .app_name
        .parse()
        .ok()
}

/// The route for `path` in `routes`, after the server's `root_path`.
pub(crate) fn find_route<'a>(
    routes: &'a [Route],
    root_path: &str,
    path: &str,
) -> Option<&'a Route> {
    let rest = strip_root_path(root_path, path)?;
    routes.iter().find(|r| prefix_matches(&r.prefix, rest))
}

static REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The two headers the proxy reads: `x-request-id` and `serve_multiplexed_model_id` (the first
/// value of each). A request with a handful of headers is scanned once, which costs less than
/// two hashed lookups; a larger one is looked up.
fn proxy_headers(headers: &http::HeaderMap) -> (Option<&HeaderValue>, Option<&HeaderValue>) {
    const SCAN_UP_TO: usize = 8;
    if headers.len() > SCAN_UP_TO {
        return (headers.get(&REQUEST_ID), headers.get(&model_id::HEADER));
    }
    let (mut id, mut model) = (None, None);
    for (name, value) in headers {
        if *name == REQUEST_ID {
            id = id.or(Some(value));
        } else if *name == model_id::HEADER {
            model = model.or(Some(value));
        }
    }
    (id, model)
}

/// The client's `x-request-id` (printable, at most 256 bytes), else a fresh UUID.
fn request_id(header: Option<&HeaderValue>) -> RequestId {
    header
        .and_then(RequestId::from_header)
        .unwrap_or_else(RequestId::generate)
}

/// Answers one request. Cancel safe: dropping it (client gone) cancels the request's work.
///
/// Every request but the proxy's own paths is observed: counted in the metrics with its status
/// (`499` when dropped unfinished) and logged on the access log.
async fn respond(state: Arc<ProxyState>, req: http::Request<Incoming>) -> Response {
    let (id_header, model_header) = proxy_headers(req.headers());
    let request_id = request_id(id_header);
    let model_id = model_id::parse(model_header);
    let http1 = req.version() < http::Version::HTTP_2;
    let path = req.uri().path();
    let mut response = if state.metrics.path() == Some(path) {
        state.metrics_response()
    } else if let Some(internal) = path.strip_prefix("/-/") {
        internal_route(&state, internal)
    } else {
        let routes = state.routes.load();
        let route = find_route(&routes, &state.root_path, path);
        let observation = state.metrics.observe(
            route.map(|r| (r.metrics, &r.prefix, &r.app_name)),
            req.method(),
            req.uri(),
            &request_id,
        );
        let response = match (route, model_id) {
            (Some(_), Err(bad_header)) => bad_header.into_response(),
            (Some(route), Ok(model_id)) => {
                match route_request(&state, route, &request_id, model_id, req) {
                    Ok(work) => {
                        drop(routes);
                        work.await
                    }
                    Err(length) => state.limits.body_too_large(Some(length)).into_response(),
                }
            }
            (None, _) => Error::NotFound {
                path: path.to_owned(),
                host: state.host.clone(),
            }
            .into_response(),
        };
        observation.finish(response.status());
        response
    };
    if let Some(value) = request_id.to_header_value() {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    if http1
        && response.status() != StatusCode::SWITCHING_PROTOCOLS
        && state.draining.load(Ordering::SeqCst)
    {
        // Tell the client not to reuse the connection: hyper closes it after this response
        // but would not say so, and a client reusing it would send into a closed socket.
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The request with its body held to `max_request_body_bytes`, or its declared length when that
/// is over the limit (to answer `413` without reading the body). A body of unknown length
/// (chunked) is counted as it arrives: reading past the limit fails with
/// [`http_body_util::LengthLimitError`], which every body reader answers with `413`.
fn limit_body(limits: &Limits, req: http::Request<Incoming>) -> Result<http::Request<Body>, u64> {
    use hyper::body::Body as _;
    let max = limits.max_request_body_bytes;
    let hint = req.body().size_hint();
    if hint.lower() > max {
        return Err(hint.lower());
    }
    Ok(match hint.upper() {
        // hyper itself stops a body at its declared length.
        Some(upper) if upper <= max => req.map(Body::new),
        _ => {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            req.map(|body| Body::new(http_body_util::Limited::new(body, max)))
        }
    })
}

/// The work of a request to `route`: its endpoint under the request's context, cancelled when
/// dropped, cut off at the request timeout; or, for a body declared larger than the limit, its
/// length.
fn route_request(
    state: &ProxyState,
    route: &Route,
    request_id: &RequestId,
    model_id: Option<Arc<str>>,
    req: http::Request<Incoming>,
) -> Result<RouteWork, u64> {
    let req = limit_body(&state.limits, req)?;
    let ctx = RequestContext::new(request_id.clone(), state.request_timeout)
        .with_local(route.scope.clone())
        .with_model_id(model_id);
    let work = CancelOnDrop::new(
        ctx.clone(),
        log_disconnect,
        route.endpoint.respond(req, ctx),
    );
    Ok(match state.request_timeout {
        None => Either::Left(work),
        // Boxed: a request without a timeout (the default) carries no timer.
        Some(timeout) => Either::Right(Box::pin(timed(work, timeout, request_id.clone()))),
    })
}

/// A request's work as [`route_request`] makes it.
type RouteWork = Either<CancelOnDrop<BoxFuture<'static, Response>>, BoxFuture<'static, Response>>;

/// `work` cut off after `timeout`, answered `408`.
async fn timed(
    work: CancelOnDrop<BoxFuture<'static, Response>>,
    timeout: Duration,
    request_id: RequestId,
) -> Response {
    match tokio::time::timeout(timeout, work).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(request_id = %request_id, "request timed out after {timeout:?}, cancelled");
            Error::Timeout {
                request_id: request_id.as_str().to_owned(),
                timeout,
            }
            .into_response()
        }
    }
}

fn internal_route(state: &ProxyState, route: &str) -> Response {
    match route {
        "healthz" => {
            if state.draining.load(Ordering::SeqCst) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "This node is being drained.",
                )
                    .into_response()
            } else {
                "success".into_response()
            }
        }
        "routes" => {
            let mut map = serde_json::Map::new();
            for r in state.routes.load().iter() {
                map.insert(r.prefix.to_string(), r.app_name.to_string().into());
            }
            axum::Json(map).into_response()
        }
        _ => Error::NotFound {
            path: format!("/-/{route}"),
            host: state.host.clone(),
        }
        .into_response(),
    }
}

/// Logged when a request's future is dropped unfinished: the client went away (a timeout is
/// logged where it is answered).
fn log_disconnect(ctx: &RequestContext) {
    if ctx.remaining() == Some(Duration::ZERO) {
        return;
    }
    tracing::info!(
        "Client for request {} disconnected, cancelling request.",
        ctx.request_id()
    );
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// How long a connection may wait for its next request head (and an HTTP/2 connection may
    /// idle).
    pub keep_alive_timeout: Duration,
    /// Header size and count, and the connection cap.
    pub limits: Limits,
    /// How long a drain waits for in-flight requests.
    pub graceful_shutdown_timeout: Duration,
}

/// How long a drain lets open connections end on their own (each busy HTTP/1 connection closes
/// after its next response, which says `Connection: close`) before closing the idle ones. A
/// client between two requests on a keep-alive connection would otherwise race the close: its
/// next request would meet a closed socket, unanswered.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Accepts connections until `shutdown` flips, then drains: marks the proxy draining (so that
/// `/-/healthz` fails and HTTP/1 responses say `Connection: close`), takes in the connections
/// the kernel already completed, closes the listener (new connections are refused), lets the
/// open connections end on their own for up to `DRAIN_GRACE`, then closes idle connections
/// and lets every in-flight request finish, up to the graceful timeout in all.
///
/// Limits: at most `max_connections` connections are open at once (the loop stops accepting
/// until one closes, so further clients wait in the kernel's listen queue); connections that
/// send nothing, never finish a request head, or idle are closed after `keep_alive_timeout`;
/// a request head over `max_header_bytes` or `max_headers` is answered `431` by hyper; a
/// connection whose body was refused with `413` closes gently so the client reads the `413`
/// (see `conn::ClientStream` for the exact rules).
pub async fn run(
    listener: TcpListener,
    state: Arc<ProxyState>,
    options: ConnOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer for HTTP/1.1: hyper's per-request head timer costs more than routing a request;
    // `conn::ClientStream` times heads and idleness with one timer per connection instead.
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(options.limits.max_header_bytes)
        .keep_alive(true);
    // hyper's own cap is 100 headers, kept in arrays on the stack; naming a cap (even 100)
    // makes it fill a vector of that size for every request (about 1,000 instructions).
    if options.limits.max_headers != crate::limits::HYPER_MAX_HEADERS {
        builder.http1().max_headers(options.limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let keep_alive_timeout = options.keep_alive_timeout;
    let connections = Arc::new(tokio::sync::Semaphore::new(options.limits.max_connections));
    let spawn_connection = |stream: tokio::net::TcpStream,
                            permit: tokio::sync::OwnedSemaphorePermit| {
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let conn_state = Arc::new(ConnState::default());
        let requests = conn_state.clone();
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            // Open until answered (or its streamed body is sent): the connection is not idle.
            let open = requests.open();
            let respond = respond(state.clone(), req);
            async move { Ok::<_, Infallible>(crate::conn::answered(respond.await, open)) }
        });
        let stream = crate::conn::ClientStream::new(stream, keep_alive_timeout, conn_state);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!("connection ended with error: {e}");
            }
        });
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = crate::conn::accept(&listener, &connections) => accepted,
        };
        let (accepted, permit) = accepted;
        let (stream, _peer): (_, SocketAddr) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        spawn_connection(stream, permit);
    }
    let started = tokio::time::Instant::now();
    state.draining.store(true, Ordering::SeqCst);
    // Connections in the accept queue would be reset when the listener closes: serve them, as
    // far as the connection cap allows (beyond it they are refused like any new connection).
    while let Ok(permit) = connections.clone().try_acquire_owned() {
        match listener.accept().now_or_never() {
            Some(Ok((stream, _))) => spawn_connection(stream, permit),
            _ => break,
        }
    }
    drop(listener);
    tracing::info!("draining: waiting for in-flight requests");
    let grace = started + DRAIN_GRACE.min(options.graceful_shutdown_timeout);
    while graceful.count() > 0 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep_until(started + options.graceful_shutdown_timeout) => {
            tracing::warn!(
                "graceful shutdown timed out after {:?}; closing remaining connections",
                options.graceful_shutdown_timeout
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_request_id_and_model_id_are_found_with_few_or_many_headers() {
        for padding in [0, 20] {
            let mut headers = http::HeaderMap::new();
            for i in 0..padding {
                headers.insert(
                    http::HeaderName::try_from(format!("x-pad-{i}")).unwrap(),
                    HeaderValue::from_static("p"),
                );
            }
            assert_eq!(proxy_headers(&headers), (None, None), "{padding}");
            headers.append("X-Request-ID", HeaderValue::from_static("first"));
            headers.append("x-request-id", HeaderValue::from_static("second"));
            headers.append("Serve_Multiplexed_Model_Id", HeaderValue::from_static("m1"));
            headers.append("serve_multiplexed_model_id", HeaderValue::from_static("m2"));
            let (id, model) = proxy_headers(&headers);
            assert_eq!(
                id.map(HeaderValue::as_bytes),
                Some(&b"first"[..]),
                "{padding}"
            );
            assert_eq!(
                model.map(HeaderValue::as_bytes),
                Some(&b"m1"[..]),
                "{padding}"
            );
        }
    }

    fn state(root_path: &str) -> Arc<ProxyState> {
        ProxyState::new(ProxyOptions {
            host: "127.0.0.1:8000".into(),
            root_path: root_path.into(),
            request_timeout: None,
            limits: Limits::default(),
            metrics_path: None,
            access_log: false,
        })
    }

    #[test]
    fn root_path_mounts_every_route() {
        let endpoint = || -> Arc<dyn HttpEndpoint> { Arc::new(NoEndpoint) };
        let state = state("/serve");
        state.set_routes(vec![
            state.route("/", "root".into(), endpoint()),
            state.route("/iris", "iris".into(), endpoint()),
        ]);
        let routes = state.routes.load();
        let name = |path| find_route(&routes, "/serve", path).map(|r| &*r.app_name);
        assert_eq!(name("/serve/iris/predict"), Some("iris"));
        assert_eq!(name("/serve"), Some("root"));
        assert_eq!(name("/serve/other"), Some("root"));
        assert_eq!(name("/iris"), None);
        assert_eq!(name("/server"), None);
        let mount = |r: &Route| {
            r.scope
                .downcast_ref::<HttpScope>()
                .unwrap()
                .mount()
                .to_owned()
        };
        assert_eq!(mount(&routes[0]), "/serve/iris");
        assert_eq!(mount(&routes[1]), "/serve");
    }

    struct NoEndpoint;
    impl HttpEndpoint for NoEndpoint {
        fn respond(
            &self,
            _: http::Request<Body>,
            _: RequestContext,
        ) -> BoxFuture<'static, Response> {
            Box::pin(async { StatusCode::OK.into_response() })
        }
    }

    #[tokio::test]
    async fn healthz_fails_with_a_reason_while_draining() {
        let state = state("");
        assert_eq!(internal_route(&state, "healthz").status(), StatusCode::OK);
        state.draining.store(true, Ordering::SeqCst);
        let r = internal_route(&state, "healthz");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"This node is being drained.");
    }
}
