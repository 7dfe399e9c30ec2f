//! The controller's supervision of running deployments: constructor retries, health checks
//! that replace unhealthy replicas, and autoscaling (up under load, down when idle, to and from
//! zero). Logic with time runs on tokio's paused clock; what an HTTP client sees runs for real.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, start, Fetch};
use ferroserve::autoscaling::AutoscalingOptions;
use ferroserve::config::ServeConfig;
use ferroserve::registry::Registry;
use ferroserve::{BoxError, Deployment, Handles, HealthCheck, Ingress, Request, Serve, Server};
use serde_json::Value;
use tokio::sync::Semaphore;

/// A replica that knows its number, can be made sick, and counts its drops.
struct Replica {
    id: usize,
    sick: AtomicBool,
    hang: AtomicBool,
    drops: Arc<AtomicUsize>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

impl HealthCheck for Replica {
    async fn check_health(&self) -> Result<(), BoxError> {
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.sick.load(Ordering::SeqCst) {
            return Err(format!("replica {} lost its model", self.id).into());
        }
        Ok(())
    }
}

impl Ingress for Replica {
    type Output = String;
    async fn call(&self, _request: Request) -> String {
        format!("replica {}", self.id)
    }
}

struct WhoAreYou;
impl Handles<WhoAreYou> for Replica {
    type Output = usize;
    async fn call(&self, _: WhoAreYou) -> usize {
        self.id
    }
}

enum Break {
    Fail,
    Hang,
}
impl Handles<Break> for Replica {
    type Output = ();
    async fn call(&self, how: Break) {
        match how {
            Break::Fail => self.sick.store(true, Ordering::SeqCst),
            Break::Hang => self.hang.store(true, Ordering::SeqCst),
        }
    }
}

/// Holds the request until the gate lets it through.
struct Work;
impl Handles<Work> for Replica {
    type Output = usize;
    async fn call(&self, _: Work) -> usize {
        GATE.acquire().await.expect("gate open").forget();
        self.id
    }
}

static GATE: Semaphore = Semaphore::const_new(0);

fn replicas(deployment: Deployment) -> (ferroserve::BoundDeployment<Replica>, Arc<AtomicUsize>) {
    let built = Arc::new(AtomicUsize::new(0));
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = built.clone();
    let bound = deployment
        .bind(move || Replica {
            id: counter.fetch_add(1, Ordering::SeqCst),
            sick: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            drops: drops.clone(),
        })
        .health_checked();
    (bound, built)
}

async fn serve(app: ferroserve::BoundDeployment<Replica>) -> Server {
    Serve::new()
        .app(app)
        .port(0)
        .start()
        .await
        .expect("server starts")
}

#[tokio::test(start_paused = true)]
async fn a_replica_failing_three_health_checks_is_replaced() {
    let (app, built) = replicas(
        Deployment::new("Model")
            .health_check_period(Duration::from_secs(10))
            .health_check_timeout(Duration::from_secs(5)),
    );
    let handle = app.handle();
    let server = serve(app).await;
    assert_eq!(handle.remote(WhoAreYou).await.unwrap(), 0);
    handle.remote(Break::Fail).await.unwrap();

    // Checks at 10 s and 20 s fail; the replica still serves.
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(handle.remote(WhoAreYou).await.unwrap(), 0);
    // The third failure, at 30 s, replaces it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.remote(WhoAreYou).await.unwrap(), 1);
    assert_eq!(handle.num_replicas(), 1);
    assert_eq!(built.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_health_check_that_hangs_fails_by_timeout() {
    let (app, built) = replicas(
        Deployment::new("Model")
            .num_replicas(2)
            .health_check_period(Duration::from_secs(1))
            .health_check_timeout(Duration::from_secs(2)),
    );
    let handle = app.handle();
    let server = serve(app).await;
    // Make one of the two replicas hang in its checks.
    handle.remote(Break::Hang).await.unwrap();
    // Each turn: wait 1 s, then a check that times out after 2 s. Three turns: 9 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(built.load(Ordering::SeqCst), 3, "one replacement");
    assert_eq!(handle.num_replicas(), 2);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        seen.insert(handle.remote(WhoAreYou).await.unwrap());
    }
    assert_eq!(seen.len(), 2);
    assert!(seen.contains(&2), "the replacement serves: {seen:?}");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn autoscaling_scales_up_under_load_and_down_when_idle() {
    let (app, built) = replicas(
        Deployment::new("Model")
            .max_ongoing_requests(1)
            .autoscaling(AutoscalingOptions {
                min_replicas: 1,
                max_replicas: 4,
                target_ongoing_requests: 1.0,
                look_back_period: Duration::from_secs(1),
                upscale_delay: Duration::from_secs(2),
                downscale_delay: Duration::from_secs(10),
                ..Default::default()
            }),
    );
    let handle = app.handle();
    let server = serve(app).await;
    assert_eq!(handle.num_replicas(), 1);

    // Six requests held by the gate: one runs, five queue. Load 6, target 1 → 4 (the max).
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.remote(Work).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.num_replicas(), 1, "not before the upscale delay");
    assert_eq!((handle.num_ongoing(), handle.num_queued()), (1, 5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handle.num_replicas(), 4, "scaled up to max_replicas");
    assert_eq!((handle.num_ongoing(), handle.num_queued()), (4, 2));
    assert_eq!(built.load(Ordering::SeqCst), 4);

    GATE.add_permits(6);
    let mut served = Vec::new();
    for call in calls {
        served.push(call.await.unwrap());
    }
    served.sort();
    served.dedup();
    assert_eq!(served.len(), 4, "every replica served: {served:?}");

    // Idle: back to min_replicas after the downscale delay.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(handle.num_replicas(), 4, "not before the downscale delay");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(handle.num_replicas(), 1, "scaled down to min_replicas");
    server.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn scaled_to_zero_a_call_waits_for_a_replica_to_start() {
    let (app, built) = replicas(Deployment::new("Model").autoscaling(AutoscalingOptions {
        min_replicas: 0,
        max_replicas: 2,
        downscale_delay: Duration::from_secs(5),
        ..Default::default()
    }));
    let handle = app.handle();
    let server = serve(app).await;
    assert_eq!(
        (handle.num_replicas(), built.load(Ordering::SeqCst)),
        (0, 0)
    );

    let started = tokio::time::Instant::now();
    assert_eq!(handle.remote(WhoAreYou).await.unwrap(), 0);
    assert!(
        started.elapsed() < Duration::from_millis(1),
        "no upscale delay from zero: {:?}",
        started.elapsed()
    );
    assert_eq!(handle.num_replicas(), 1);

    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(handle.num_replicas(), 0, "idle again: back to zero");
    server.shutdown().await;
}

/// The ingress for the HTTP tests: says which replica answered.
struct Who(usize);
impl Ingress for Who {
    type Output = String;
    async fn call(&self, _request: Request) -> String {
        format!("replica {}", self.0)
    }
}

#[tokio::test]
async fn an_http_request_to_an_app_scaled_to_zero_is_served() {
    let built = Arc::new(AtomicUsize::new(0));
    let counter = built.clone();
    let app = Deployment::new("Who")
        .autoscaling(AutoscalingOptions {
            min_replicas: 0,
            max_replicas: 1,
            look_back_period: Duration::from_millis(100),
            downscale_delay: Duration::from_millis(200),
            ..Default::default()
        })
        .bind(move || Who(counter.fetch_add(1, Ordering::SeqCst)));
    let handle = app.handle();
    let (server, base) = start(Serve::new().app(app)).await;
    assert_eq!(handle.num_replicas(), 0);
    let body = client().get(format!("{base}/")).fetch_text().await;
    assert_eq!(body, "replica 0");
    eventually("scaled back to zero", || handle.num_replicas() == 0).await;
    let body = client().get(format!("{base}/")).fetch_text().await;
    assert_eq!(body, "replica 1", "a fresh replica after scaling to zero");
    let metrics = metrics_text(&base).await;
    for line in [
        r#"serve_autoscaling_decisions_total{deployment="Who",application="default",direction="up"} 2"#,
        r#"serve_autoscaling_decisions_total{deployment="Who",application="default",direction="down"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(
        metrics.contains(
            r#"serve_autoscaling_target_replicas{deployment="Who",application="default"} "#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"deployment="Who",application="""#),
        "no series of the deployment without its application:\n{metrics}"
    );
    server.shutdown().await;
}

async fn metrics_text(base: &str) -> String {
    client().get(format!("{base}/metrics")).fetch_text().await
}

#[tokio::test]
async fn health_check_failures_are_logged_counted_and_the_replica_replaced_over_http() {
    let (app, built) = replicas(
        Deployment::new("Model")
            .health_check_period(Duration::from_millis(20))
            .health_check_timeout(Duration::from_millis(20)),
    );
    let handle = app.handle();
    let (server, base) = start(Serve::new().app(app)).await;
    let get = || async { client().get(format!("{base}/")).fetch_text().await };
    assert_eq!(get().await, "replica 0");
    handle.remote(Break::Fail).await.unwrap();
    eventually("a replacement replica", || {
        built.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(get().await, "replica 1");
    let metrics = metrics_text(&base).await;
    let failures: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"serve_health_check_failures_total{deployment="Model",application="default"} "#,
            )
        })
        .unwrap_or_else(|| panic!("no health-check failures in\n{metrics}"))
        .parse()
        .unwrap();
    assert_eq!(failures, 3, "three failures in a row, then replaced");
    server.shutdown().await;
}

fn flaky_registry(fail_first: usize) -> (Registry, Arc<AtomicUsize>) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let registry = Registry::new().register("flaky:app", move |_args| {
        let attempts = seen.clone();
        Ok(Deployment::new("Flaky")
            .bind_async(move || {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < fail_first {
                        Err(format!("weights not ready (attempt {})", n + 1))
                    } else {
                        Ok(Who(n))
                    }
                }
            })
            .into())
    });
    (registry, attempts)
}

async fn admin_server(registry: Registry) -> (Server, String, String) {
    let config = ServeConfig::parse("applications: []\n", "serve.yaml").unwrap();
    let server = Serve::from_config(config, "serve.yaml", registry)
        .host("127.0.0.1")
        .port(0)
        .admin("127.0.0.1", 0)
        .start()
        .await
        .expect("server starts");
    let base = format!("http://{}", server.local_addr());
    let admin = format!(
        "http://{}/api/serve/applications/",
        server.admin_addr().unwrap()
    );
    (server, base, admin)
}

const FLAKY: &str =
    "applications:\n  - name: flaky\n    route_prefix: /flaky\n    import_path: flaky:app\n";

#[tokio::test]
async fn a_constructor_that_fails_twice_is_retried_and_the_app_runs() {
    let (registry, attempts) = flaky_registry(2);
    let (server, base, admin) = admin_server(registry).await;
    let put = client().put(&admin).body(FLAKY).send().await.unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let status: Value = client().get(&admin).fetch_json().await;
    assert_eq!(status["applications"]["flaky"]["status"], "RUNNING");
    let deployment = &status["applications"]["flaky"]["deployments"]["Flaky"];
    assert_eq!(deployment["status"], "HEALTHY");
    assert_eq!(deployment["target_num_replicas"], 1);
    assert_eq!(deployment["replica_states"]["RUNNING"], 1);
    let body = client().get(format!("{base}/flaky")).fetch_text().await;
    assert_eq!(body, "replica 2");
    server.shutdown().await;
}

#[tokio::test]
async fn a_constructor_that_keeps_failing_is_deploy_failed_with_its_error_in_status() {
    let (registry, attempts) = flaky_registry(usize::MAX);
    let (server, base, admin) = admin_server(registry).await;
    let put = client().put(&admin).body(FLAKY).send().await.unwrap();
    assert_eq!(put.status(), 200);
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "bounded retries");
    let status: Value = client().get(&admin).fetch_json().await;
    let app = &status["applications"]["flaky"];
    assert_eq!(app["status"], "DEPLOY_FAILED");
    assert_eq!(
        app["message"],
        "deployment 'Flaky' failed to start: weights not ready (attempt 3) (gave up after 3 attempts)"
    );
    // Nothing half-started is routed.
    let resp = client().get(format!("{base}/flaky")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    server.shutdown().await;
}
