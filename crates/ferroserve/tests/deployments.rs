//! Deployments, applications and handles: start-up errors, graph validation, typed handle calls
//! with their context, and queue clean-up when callers go away.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, start, Fetch};
use ferroserve::{
    Application, Deployment, DeploymentHandle, Error, HandlerError, Handles, Ingress, Json,
    Request, Serve,
};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

struct Hello;

impl Ingress for Hello {
    type Output = &'static str;
    async fn call(&self, _request: Request) -> &'static str {
        "hello"
    }
}

async fn start_err(serve: Serve) -> Error {
    serve.port(0).start().await.expect_err("start fails")
}

#[tokio::test]
async fn a_failing_constructor_fails_start_up_naming_the_deployment() {
    let model =
        Deployment::new("Model").bind_async(|| async { Err::<Model, _>("weights file missing") });
    let ingress = Deployment::new("Api")
        .with(model)
        .bind(|model| Api { model });
    let err = start_err(Serve::new().app(ingress)).await;
    assert!(matches!(err, Error::Startup { .. }));
    assert_eq!(
        err.to_string(),
        "deployment 'Model' failed to start: weights file missing (gave up after 3 attempts)"
    );
}

#[tokio::test]
async fn a_panicking_constructor_is_a_start_up_error_not_a_crash() {
    let app = Deployment::new("Hello").bind(|| -> Hello { panic!("boom in constructor") });
    let err = start_err(Serve::new().app(app)).await;
    assert_eq!(
        err.to_string(),
        "deployment 'Hello' failed to start: panicked: boom in constructor (gave up after 3 attempts)"
    );
}

#[tokio::test]
async fn invalid_options_and_clashing_apps_are_config_errors() {
    let hello = || Deployment::new("Hello").bind(|| Hello);
    let err =
        start_err(Serve::new().app(Deployment::new("Hello").num_replicas(0).bind(|| Hello))).await;
    assert_eq!(
        err.to_string(),
        "invalid configuration: deployment 'Hello': num_replicas must be at least 1, got 0"
    );
    let err = start_err(Serve::new().app(Application::new(hello()).route_prefix("hello"))).await;
    assert_eq!(
        err.to_string(),
        "invalid configuration: route_prefix 'hello' must start with '/'"
    );
    let err = start_err(
        Serve::new()
            .app(Application::new(hello()).name("a").route_prefix("/x"))
            .app(Application::new(hello()).name("b").route_prefix("/x")),
    )
    .await;
    assert_eq!(
        err.to_string(),
        "invalid configuration: applications 'a' and 'b' both use route_prefix '/x'"
    );
    let err = start_err(
        Serve::new()
            .app(Application::new(hello()).name("a").route_prefix("/x"))
            .app(Application::new(hello()).name("a").route_prefix("/y")),
    )
    .await;
    assert!(
        err.to_string().contains("two applications are named 'a'"),
        "{err}"
    );
}

struct Model {
    replica: usize,
}

struct Describe;

impl Handles<Describe> for Model {
    type Output = Value;
    async fn call(&self, _: Describe) -> Value {
        let ctx = ferroserve::current().expect("handle calls run with a context");
        json!({
            "replica": self.replica,
            "request_id": ctx.request_id(),
            "deployment": ctx.deployment(),
            "has_deadline": ctx.remaining().is_some(),
        })
    }
}

struct Api {
    model: DeploymentHandle<Model>,
}

impl Ingress for Api {
    type Output = Result<Json<Value>, HandlerError>;
    async fn call(&self, _request: Request) -> Self::Output {
        Ok(Json(self.model.remote(Describe).await?))
    }
}

fn model(replicas: usize) -> ferroserve::BoundDeployment<Model> {
    let next = AtomicUsize::new(0);
    Deployment::new("Model")
        .num_replicas(replicas)
        .bind(move || Model {
            replica: next.fetch_add(1, Ordering::SeqCst),
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_calls_carry_the_request_context_and_spread_over_replicas() {
    let api = Deployment::new("Api")
        .with(model(2))
        .bind(|model| Api { model });
    let (server, base) = start(
        Serve::new()
            .app(api)
            .request_timeout(Duration::from_secs(30)),
    )
    .await;
    let c = client();
    let v: Value = c
        .get(format!("{base}/"))
        .header("x-request-id", "trace-7")
        .fetch_json()
        .await;
    assert_eq!(v["request_id"], "trace-7");
    assert_eq!(v["deployment"], "Model");
    assert_eq!(v["has_deadline"], true);
    let mut seen = [false; 2];
    for _ in 0..200 {
        let v: Value = c.get(format!("{base}/")).fetch_json().await;
        seen[v["replica"].as_u64().unwrap() as usize] = true;
    }
    assert_eq!(seen, [true, true], "both replicas served");
    server.shutdown().await;
}

#[tokio::test]
async fn a_handle_call_outside_a_request_gets_its_own_id() {
    let m = model(1);
    let handle = m.handle();
    let api = Deployment::new("Api").with(m).bind(|model| Api { model });
    let (server, _) = start(Serve::new().app(api)).await;
    let v = handle.remote(Describe).await.unwrap();
    assert_eq!(v["request_id"].as_str().unwrap().len(), 36);
    assert_eq!(v["has_deadline"], false);
    server.shutdown().await;
}

/// Holds every call until the test adds permits.
struct Blocker {
    permits: Arc<Semaphore>,
}

struct Wait;

impl Handles<Wait> for Blocker {
    type Output = ();
    async fn call(&self, _: Wait) {
        self.permits.acquire().await.unwrap().forget();
    }
}

struct Front {
    blocker: DeploymentHandle<Blocker>,
}

impl Ingress for Front {
    type Output = Result<&'static str, HandlerError>;
    async fn call(&self, _request: Request) -> Self::Output {
        self.blocker.remote(Wait).await?;
        Ok("ok")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_handle_calls_leave_nothing_queued_or_in_flight() {
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    let blocker = Deployment::new("Blocker")
        .max_ongoing_requests(1)
        .bind(move || Blocker { permits: p.clone() });
    let handle = blocker.handle();
    let front = Deployment::new("Front")
        .with(blocker)
        .bind(|blocker| Front { blocker });
    let (server, _) = start(Serve::new().app(front)).await;
    let calls: Vec<_> = (0..10_000)
        .map(|_| {
            let h = handle.clone();
            tokio::spawn(async move { h.remote(Wait).await })
        })
        .collect();
    eventually("9,999 queued behind one running", || {
        handle.num_queued() == 9_999 && handle.num_ongoing() == 1
    })
    .await;
    for c in &calls {
        c.abort();
    }
    for c in calls {
        assert!(c.await.unwrap_err().is_cancelled());
    }
    assert_eq!((handle.num_queued(), handle.num_ongoing()), (0, 0));
    // The deployment still serves.
    permits.add_permits(1);
    handle.remote(Wait).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn handle_errors_keep_their_status_through_the_ingress() {
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    let blocker = Deployment::new("Blocker")
        .max_ongoing_requests(1)
        .max_queued_requests(0)
        .bind(move || Blocker { permits: p.clone() });
    let handle = blocker.handle();
    let front = Deployment::new("Front")
        .with(blocker)
        .bind(|blocker| Front { blocker });
    let (server, base) = start(Serve::new().app(front)).await;
    let busy = tokio::spawn({
        let h = handle.clone();
        async move { h.remote(Wait).await }
    });
    eventually("blocker busy", || handle.num_ongoing() == 1).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(
        r.text().await.unwrap(),
        "Request dropped due to backpressure (num_queued_requests=0, max_queued_requests=0)."
    );
    permits.add_permits(1);
    busy.await.unwrap().unwrap();
    server.shutdown().await;
}
