//! The proxy's HTTP semantics (Ray Serve's, kept), through real HTTP clients on ephemeral ports.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, start, Fetch};
use ferroserve::{
    Application, Deployment, HandlerError, Ingress, IntoResponse, Json, QueryParams, Request,
    Response, Serve, StatusCode,
};
use tokio::sync::{mpsc, Semaphore};

struct Counter;

impl Ingress for Counter {
    type Output = Json<QueryParams>;
    async fn call(&self, request: Request) -> Self::Output {
        Json(request.query_params())
    }
}

fn counter() -> Serve {
    Serve::new().app(Deployment::new("Counter").bind(|| Counter))
}

#[tokio::test]
async fn counter_returns_query_params_as_compact_json() {
    let (server, base) = start(counter()).await;
    let resp = client()
        .get(format!("{base}/?a=b&c=d"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), r#"{"a":"b","c":"d"}"#);
    server.shutdown().await;
}

/// Echoes what the raw request exposes, or returns the kind of value asked for.
struct Echo;

impl Ingress for Echo {
    type Output = Result<Response, HandlerError>;
    async fn call(&self, mut request: Request) -> Self::Output {
        let q = request.query_params();
        Ok(match request.path() {
            "/text" => "plain".into_response(),
            "/bytes" => vec![0u8, 1, 2].into_response(),
            "/custom" => (StatusCode::CREATED, [("x-custom", "yes")], "made").into_response(),
            "/json" => {
                let body: serde_json::Value = request.json().await?;
                Json(body).into_response()
            }
            "/fail" => return Err("database exploded: secret detail".into()),
            "/panic" => panic!("handler panicked on purpose"),
            _ => Json(serde_json::json!({
                "method": request.method().as_str(),
                "path": request.path(),
                "root_path": request.root_path(),
                "tags": q.get_all("tag").collect::<Vec<_>>(),
                "header": request.header("x-hello"),
                "body": request.text().await?,
                "request_id": request.context().request_id(),
            }))
            .into_response(),
        })
    }
}

fn echo_app(prefix: &str) -> Application {
    Application::new(Deployment::new("Echo").bind(|| Echo))
        .name("echo")
        .route_prefix(prefix)
}

#[tokio::test]
async fn raw_request_exposes_method_path_query_headers_body() {
    let (server, base) = start(Serve::new().app(echo_app("/api"))).await;
    let v: serde_json::Value = client()
        .post(format!("{base}/api/items/7?tag=a&tag=b%20c"))
        .header("x-hello", "world")
        .header("x-request-id", "req-123")
        .body("payload")
        .fetch_json()
        .await;
    assert_eq!(
        v,
        serde_json::json!({
            "method": "POST", "path": "/items/7", "root_path": "/api",
            "tags": ["a", "b c"], "header": "world", "body": "payload",
            "request_id": "req-123",
        })
    );
    server.shutdown().await;
}

#[tokio::test]
async fn return_values_map_to_content_types() {
    let (server, base) = start(Serve::new().app(echo_app("/"))).await;
    let c = client();
    let r = c.get(format!("{base}/text")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "plain");
    let r = c.get(format!("{base}/bytes")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &[0, 1, 2]);
    let r = c.get(format!("{base}/custom")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-custom"], "yes");
    let r = c
        .post(format!("{base}/json"))
        .body(r#"{ "x" : [1, 2] }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"x":[1,2]}"#);
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_with_the_parser_message() {
    let (server, base) = start(Serve::new().app(echo_app("/"))).await;
    let r = client()
        .post(format!("{base}/json"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("Invalid JSON body: key must be a string at line 1 column 2"),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn user_errors_and_panics_are_500_without_detail_and_replica_keeps_serving() {
    let (server, base) = start(Serve::new().app(echo_app("/"))).await;
    let c = client();
    for path in ["fail", "panic"] {
        let r = c.get(format!("{base}/{path}")).send().await.unwrap();
        assert_eq!(r.status(), 500, "{path}");
        assert_eq!(r.text().await.unwrap(), "Internal Server Error");
        let r = c.get(format!("{base}/text")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the replica serves after {path}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_path_is_404_with_ray_text_and_routes_lists_apps() {
    let serve = Serve::new().app(echo_app("/api")).app(
        Application::new(Deployment::new("Counter").bind(|| Counter))
            .name("counter")
            .route_prefix("/api/v2"),
    );
    let (server, base) = start(serve).await;
    let c = client();
    let r = c.get(format!("{base}/apix")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    let host = base.trim_start_matches("http://");
    assert_eq!(
        r.text().await.unwrap(),
        format!("Path '/apix' not found. Ping http://{host}/-/routes for available routes.")
    );
    // Longest prefix wins; `/api/v2x` belongs to `/api`.
    let r = c.get(format!("{base}/api/v2?k=v")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), r#"{"k":"v"}"#);
    let v: serde_json::Value = c.get(format!("{base}/api/v2x")).fetch_json().await;
    assert_eq!(v["path"], "/v2x");

    let r = c.get(format!("{base}/-/routes")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let routes: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        routes,
        serde_json::json!({"/api": "echo", "/api/v2": "counter"})
    );
    let r = c.get(format!("{base}/-/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "success");
    server.shutdown().await;
}

#[tokio::test]
async fn request_id_is_honoured_or_generated_on_every_response() {
    let (server, base) = start(counter()).await;
    let c = client();
    for path in ["/", "/-/healthz", "/-/routes", "/-/nope"] {
        let r = c
            .get(format!("{base}{path}"))
            .header("x-request-id", "my-id-1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], "my-id-1", "{path}");
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "{path}: a UUID, got {id}");
        assert_eq!(&id[14..15], "4", "{path}: version 4 UUID, got {id}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let (server, base) = start(counter()).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{base}/?a=b")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), r#"{"a":"b"}"#);
    let r = client().get(format!("{base}/?a=b")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    server.shutdown().await;
}

/// Blocks every request until the test adds permits; reports arrivals and peak concurrency.
struct Gate {
    permits: Arc<Semaphore>,
    arrived: mpsc::UnboundedSender<()>,
    ongoing: AtomicUsize,
    peak: Arc<AtomicUsize>,
    peak_total: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    cancelled: mpsc::UnboundedSender<()>,
}

struct OnDrop<F: FnMut()>(F);
impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

impl Ingress for Gate {
    type Output = &'static str;
    async fn call(&self, request: Request) -> &'static str {
        let now = self.ongoing.fetch_add(1, Ordering::SeqCst) + 1;
        let total = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.peak_total.fetch_max(total, Ordering::SeqCst);
        let _leave = OnDrop(|| {
            self.ongoing.fetch_sub(1, Ordering::SeqCst);
            self.total.fetch_sub(1, Ordering::SeqCst);
        });
        let _ = self.arrived.send(());
        let ctx = request.context().clone();
        let cancelled = self.cancelled.clone();
        let _on_cancel = OnDrop(move || {
            if ctx.is_cancelled() {
                let _ = cancelled.send(());
            }
        });
        self.permits.acquire().await.unwrap().forget();
        "done"
    }
}

struct GateRig {
    permits: Arc<Semaphore>,
    arrived: mpsc::UnboundedReceiver<()>,
    cancelled: mpsc::UnboundedReceiver<()>,
    peaks: Arc<std::sync::Mutex<Vec<Arc<AtomicUsize>>>>,
    peak_total: Arc<AtomicUsize>,
    deployment: ferroserve::BoundDeployment<Gate>,
}

fn gate(deployment: Deployment) -> GateRig {
    let permits = Arc::new(Semaphore::new(0));
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
    let peaks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let peak_total = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let p = permits.clone();
    let (pk, pt) = (peaks.clone(), peak_total.clone());
    let deployment = deployment.bind(move || {
        let peak = Arc::new(AtomicUsize::new(0));
        pk.lock().unwrap().push(peak.clone());
        Gate {
            permits: p.clone(),
            arrived: arrived_tx.clone(),
            ongoing: AtomicUsize::new(0),
            peak,
            peak_total: pt.clone(),
            total: total.clone(),
            cancelled: cancelled_tx.clone(),
        }
    });
    GateRig {
        permits,
        arrived,
        cancelled,
        peaks,
        peak_total,
        deployment,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ongoing_requests_is_strict_under_200_concurrent_requests() {
    let mut rig = gate(
        Deployment::new("Gate")
            .num_replicas(2)
            .max_ongoing_requests(5),
    );
    let handle = rig.deployment.handle();
    let (server, base) = start(Serve::new().app(rig.deployment.clone())).await;
    let c = client();
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let c = c.clone();
            let url = format!("{base}/");
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    for _ in 0..10 {
        rig.arrived.recv().await.unwrap();
    }
    eventually("190 requests queued", || handle.num_queued() == 190).await;
    assert_eq!(handle.num_ongoing(), 10);
    rig.permits.add_permits(200);
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    for peak in rig.peaks.lock().unwrap().iter() {
        assert_eq!(
            peak.load(Ordering::SeqCst),
            5,
            "each replica ran exactly 5 at once"
        );
    }
    assert_eq!(rig.peak_total.load(Ordering::SeqCst), 10);
    assert_eq!((handle.num_queued(), handle.num_ongoing()), (0, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_is_503_with_ray_text_and_retry_after() {
    let mut rig = gate(
        Deployment::new("Gate")
            .max_ongoing_requests(1)
            .max_queued_requests(2),
    );
    let handle = rig.deployment.handle();
    let (server, base) = start(Serve::new().app(rig.deployment.clone())).await;
    let c = client();
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            let url = format!("{base}/");
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    rig.arrived.recv().await.unwrap();
    eventually("2 queued", || handle.num_queued() == 2).await;
    let r = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.text().await.unwrap(),
        "Request dropped due to backpressure (num_queued_requests=2, max_queued_requests=2)."
    );
    rig.permits.add_permits(3);
    for b in busy {
        assert_eq!(b.await.unwrap(), 200);
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_http_requests_leave_the_queue_and_the_replica() {
    let mut rig = gate(Deployment::new("Gate").max_ongoing_requests(1));
    let handle = rig.deployment.handle();
    let (server, base) = start(Serve::new().app(rig.deployment.clone())).await;
    let c = client();
    let requests: Vec<_> = (0..300)
        .map(|_| {
            let c = c.clone();
            let url = format!("{base}/");
            tokio::spawn(async move { c.get(url).send().await })
        })
        .collect();
    rig.arrived.recv().await.unwrap();
    eventually("299 queued", || handle.num_queued() == 299).await;
    for r in &requests {
        r.abort();
    }
    eventually("queue empty", || handle.num_queued() == 0).await;
    rig.cancelled
        .recv()
        .await
        .expect("the running request observed its cancellation");
    eventually("nothing in flight", || handle.num_ongoing() == 0).await;
    // A queued request may have been handed the slot before its own disconnect was seen; every
    // request that reached the replica was cancelled there, and none completed.
    let (mut arrived, mut cancelled) = (1, 1);
    while rig.arrived.try_recv().is_ok() {
        arrived += 1;
    }
    while rig.cancelled.try_recv().is_ok() {
        cancelled += 1;
    }
    assert_eq!(arrived, cancelled);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_408_with_ray_text_and_cancels_the_work() {
    let mut rig = gate(Deployment::new("Gate"));
    let (server, base) = start(
        Serve::new()
            .app(rig.deployment.clone())
            .request_timeout(Duration::from_millis(200)),
    )
    .await;
    let r = client()
        .get(format!("{base}/"))
        .header("x-request-id", "slow-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
    assert_eq!(r.headers()["x-request-id"], "slow-1");
    assert_eq!(
        r.text().await.unwrap(),
        "Request slow-1 timed out after 0.2s."
    );
    rig.cancelled
        .recv()
        .await
        .expect("the handler was cancelled");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new_connections() {
    let mut rig = gate(Deployment::new("Gate"));
    let (server, base) = start(Serve::new().app(rig.deployment.clone())).await;
    let c = client();
    let url = format!("{base}/");
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { c.get(url).fetch_text().await }
    });
    rig.arrived.recv().await.unwrap();
    let addr = server.local_addr();
    let shutdown = tokio::spawn(server.shutdown());
    // The listener closes: new connections are refused while the old request is still running.
    eventually("listener closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(!shutdown.is_finished());
    rig.permits.add_permits(1);
    assert_eq!(in_flight.await.unwrap(), "done");
    shutdown.await.unwrap();
}

#[tokio::test]
async fn keep_alive_connections_close_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, base) = start(counter().keep_alive_timeout(Duration::from_millis(200))).await;
    let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(b"GET /?a=1 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("server closes the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed");
    assert!(started.elapsed() >= Duration::from_millis(150));
    server.shutdown().await;
}
