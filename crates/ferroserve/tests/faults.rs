//! Panics in user code stay where they happen: a stream that panics mid-way, a deployment method
//! called through a handle, a health check. Each is logged with its message, the client gets a
//! proper answer (or a terminated body), and the process keeps serving.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_stream::stream;
use common::logs::{captured_logs, log_lines};
use common::{client, eventually, start, Fetch};
use ferroserve::stream::StreamingResponse;
use ferroserve::{
    BoxError, Deployment, DeploymentHandle, HandlerError, Handles, HealthCheck, Ingress,
    IntoResponse, Request, Response, Serve,
};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::Semaphore;

/// The first log line whose message contains `needle`.
fn logged(needle: &str) -> Option<Value> {
    log_lines().into_iter().find(|l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(needle))
    })
}

/// A model whose method panics on demand and whose health check panics once it is told to.
struct Model {
    id: usize,
    sick: AtomicBool,
}

struct Explode;
impl Handles<Explode> for Model {
    type Output = usize;
    async fn call(&self, _: Explode) -> usize {
        panic!("model {} exploded", self.id)
    }
}

struct WhoAreYou;
impl Handles<WhoAreYou> for Model {
    type Output = usize;
    async fn call(&self, _: WhoAreYou) -> usize {
        self.id
    }
}

struct FallSick;
impl Handles<FallSick> for Model {
    type Output = ();
    async fn call(&self, _: FallSick) {
        self.sick.store(true, Ordering::SeqCst);
    }
}

impl HealthCheck for Model {
    async fn check_health(&self) -> Result<(), BoxError> {
        if self.sick.load(Ordering::SeqCst) {
            panic!("health check of model {} blew up", self.id);
        }
        Ok(())
    }
}

struct Front {
    model: DeploymentHandle<Model>,
    /// `/stream` panics once this has a permit.
    panic_now: Arc<Semaphore>,
}

impl Ingress for Front {
    type Output = Result<Response, HandlerError>;
    async fn call(&self, request: Request) -> Self::Output {
        Ok(match request.path() {
            "/stream" => {
                let panic_now = self.panic_now.clone();
                StreamingResponse::new(stream! {
                    for i in 0..3 {
                        yield format!("c{i};");
                    }
                    panic_now.acquire().await.expect("open").forget();
                    panic!("stream broke after 3 chunks");
                })
                .media_type("text/plain")
                .into_response()
            }
            "/explode" => format!("{}", self.model.remote(Explode).await?).into_response(),
            "/sick" => {
                self.model.remote(FallSick).await?;
                "sick".into_response()
            }
            _ => format!("model {}", self.model.remote(WhoAreYou).await?).into_response(),
        })
    }
}

fn app() -> (
    ferroserve::BoundDeployment<Front>,
    Arc<AtomicUsize>,
    Arc<Semaphore>,
) {
    let panic_now = Arc::new(Semaphore::new(0));
    let p = panic_now.clone();
    let built = Arc::new(AtomicUsize::new(0));
    let counter = built.clone();
    let model = Deployment::new("Model")
        .health_check_period(Duration::from_millis(20))
        .health_check_timeout(Duration::from_millis(500))
        .bind(move || Model {
            id: counter.fetch_add(1, Ordering::SeqCst),
            sick: AtomicBool::new(false),
        })
        .health_checked();
    let front = Deployment::new("Front")
        .with(model)
        .bind(move |model| Front {
            model,
            panic_now: p.clone(),
        });
    (front, built, panic_now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_panicking_after_three_chunks_ends_the_body_and_the_server_goes_on() {
    captured_logs();
    let (front, _, panic_now) = app();
    let (server, base) = start(Serve::new().app(front).no_admin()).await;
    let c = client();
    let r = c
        .get(format!("{base}/stream"))
        .header("x-request-id", "broken-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = Vec::new();
    let mut ended_with_error = false;
    let mut chunks = r.bytes_stream();
    while body.len() < "c0;c1;c2;".len() {
        body.extend_from_slice(&chunks.next().await.unwrap().unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&body), "c0;c1;c2;");
    panic_now.add_permits(1);
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(_) => {
                ended_with_error = true;
                break;
            }
        }
    }
    assert_eq!(String::from_utf8_lossy(&body), "c0;c1;c2;");
    assert!(
        ended_with_error,
        "the body is cut (no final chunk), not ended as if complete"
    );

    eventually("the panic is logged", || {
        logged("stream broke after 3 chunks").is_some()
    })
    .await;
    let line = logged("stream broke after 3 chunks").unwrap();
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(
        line["fields"]["message"],
        "stream failed mid-way: panicked: stream broke after 3 chunks"
    );
    assert_eq!(line["fields"]["request_id"], "broken-stream", "{line}");

    assert_eq!(c.get(format!("{base}/")).fetch_text().await, "model 0");
    let again = c.get(format!("{base}/stream")).send().await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "the same route serves the next request"
    );
    panic_now.add_permits(1);
    assert!(
        again.bytes().await.is_err(),
        "and cuts its body the same way"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_panicking_behind_a_handle_is_a_500_and_its_replica_keeps_serving() {
    captured_logs();
    let (front, built, _) = app();
    let (server, base) = start(Serve::new().app(front).no_admin()).await;
    let c = client();
    for _ in 0..3 {
        let r = c.get(format!("{base}/explode")).send().await.unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.text().await.unwrap(), "Internal Server Error");
        assert_eq!(c.get(format!("{base}/")).fetch_text().await, "model 0");
    }
    assert_eq!(built.load(Ordering::SeqCst), 1, "no replica was rebuilt");
    let line = logged("model 0 exploded").expect("the panic is logged");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["deployment"], "Model", "{line}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_health_check_is_a_failure_that_replaces_the_replica() {
    captured_logs();
    let (front, built, _) = app();
    let (server, base) = start(Serve::new().app(front).no_admin()).await;
    let c = client();
    assert_eq!(c.get(format!("{base}/")).fetch_text().await, "model 0");
    assert_eq!(c.get(format!("{base}/sick")).fetch_text().await, "sick");
    eventually("a new replica is built", || {
        built.load(Ordering::SeqCst) == 2
    })
    .await;
    let line = logged("health check of model 0 blew up").expect("the failure is logged");
    assert_eq!(
        line["fields"]["message"],
        "health check failed: health check panicked: health check of model 0 blew up"
    );
    // The sick replica leaves the route once its replacement is up; requests go on meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut served_by = String::new();
    while served_by != "model 1" && tokio::time::Instant::now() < deadline {
        let r = c.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "requests are served while the replica is replaced"
        );
        served_by = r.text().await.unwrap();
    }
    assert_eq!(served_by, "model 1");
    server.shutdown().await;
}
