//! `/metrics` (Prometheus text) and access logs, through real clients against real servers.

use ferroserve_test_support as common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::logs::{captured_logs, log_lines};
use common::{client, start};
use ferroserve::{
    Application, Deployment, Error, HandlerError, Ingress, Request, Response, Serve, StatusCode,
};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

/// `/ok` answers 200, `/fail` a 500 (with a cause chain in the log), `/block` announces itself
/// and waits for a permit of the gate.
struct Obs {
    entered: mpsc::UnboundedSender<()>,
    gate: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
#[error("model file unreadable")]
struct ModelError(#[source] std::io::Error);

impl Ingress for Obs {
    type Output = Result<Response, HandlerError>;

    async fn call(&self, request: Request) -> Self::Output {
        tracing::info!("handling {}", request.path());
        match request.path() {
            "/fail" => Err(ModelError(std::io::Error::other("disk on fire")).into()),
            "/block" => {
                let _ = self.entered.send(());
                self.gate.acquire().await.unwrap().forget();
                Ok("unblocked".into_response())
            }
            _ => Ok("ok".into_response()),
        }
    }
}

use ferroserve::IntoResponse;

fn obs_app(name: &str, prefix: &str) -> (Application, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let app = Application::new(
        Deployment::new("Obs")
            .max_ongoing_requests(1)
            .bind(move || Obs {
                entered: tx.clone(),
                gate: g.clone(),
            }),
    )
    .name(name)
    .route_prefix(prefix);
    (app, rx, gate)
}

async fn scrape(url: &str) -> String {
    let r = client().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    r.text().await.unwrap()
}

/// The value of the sample whose line starts with `series ` (exact labels), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// Scrapes until `series` has `value` (a gauge or counter the server updates on its own).
async fn scrape_until(url: &str, series: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(url).await;
        if sample(&text, series) == Some(value) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn metrics_count_statuses_cancellations_queues_and_errors() {
    let (app, mut entered, gate) = obs_app("obs", "/obs");
    let (server, base) = start(Serve::new().app(app).no_admin()).await;
    let metrics = format!("{base}/metrics");
    let c = client();
    for _ in 0..2 {
        let r = c.get(format!("{base}/obs/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        c.post(format!("{base}/obs/ok"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(format!("{base}/nope")).send().await.unwrap().status(),
        404
    );
    let r = c.get(format!("{base}/obs/fail")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "Internal Server Error");

    // A client that gives up while its request runs: counted as 499.
    let gone = tokio::spawn(client().get(format!("{base}/obs/block")).send());
    entered.recv().await.unwrap();
    gone.abort();
    let route = r#"route="/obs",method="GET",application="obs""#;
    scrape_until(
        &metrics,
        &format!("serve_num_http_requests_total{{{route},status_code=\"499\"}}"),
        1.0,
    )
    .await;

    // One request runs, a second waits in the queue (max_ongoing_requests = 1).
    let first = tokio::spawn(client().get(format!("{base}/obs/block")).send());
    entered.recv().await.unwrap();
    let second = tokio::spawn(client().get(format!("{base}/obs/block")).send());
    let dep = r#"deployment="Obs",application="obs""#;
    let text = scrape_until(
        &metrics,
        &format!("serve_deployment_queued_queries{{{dep}}}"),
        1.0,
    )
    .await;
    assert_eq!(
        sample(
            &text,
            &format!("serve_replica_processing_queries{{{dep},replica=\"Obs#0\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"serve_num_ongoing_http_requests{route="/obs",application="obs"}"#
        ),
        Some(2.0),
        "{text}"
    );
    gate.add_permits(2);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);

    let text = scrape(&metrics).await;
    let expect = [
        (format!("serve_num_http_requests_total{{{route},status_code=\"200\"}}"), 4.0),
        (
            r#"serve_num_http_requests_total{route="/obs",method="POST",application="obs",status_code="200"}"#.to_owned(),
            1.0,
        ),
        (format!("serve_num_http_requests_total{{{route},status_code=\"500\"}}"), 1.0),
        (format!("serve_num_http_requests_total{{{route},status_code=\"499\"}}"), 1.0),
        (
            r#"serve_num_http_requests_total{route="",method="GET",application="",status_code="404"}"#.to_owned(),
            1.0,
        ),
        (format!("serve_num_http_error_requests_total{{{route},error_code=\"500\"}}"), 1.0),
        (format!("serve_num_http_error_requests_total{{{route},error_code=\"499\"}}"), 1.0),
        (
            format!("serve_num_deployment_http_error_requests_total{{{route},deployment=\"Obs\",error_code=\"500\"}}"),
            1.0,
        ),
        (format!("serve_http_request_latency_ms_count{{{route}}}"), 6.0),
        (format!("serve_http_request_latency_ms_bucket{{{route},le=\"+Inf\"}}"), 6.0),
        (r#"serve_num_ongoing_http_requests{route="/obs",application="obs"}"#.to_owned(), 0.0),
        // 2 GET /ok, 1 POST /ok, /fail, two /block that finished (the dropped one is the
        // proxy's 499, not a replica-side request).
        (format!("serve_deployment_request_counter_total{{{dep}}}"), 6.0),
        (format!("serve_deployment_error_counter_total{{{dep}}}"), 1.0),
        (format!("serve_deployment_processing_latency_ms_count{{{dep}}}"), 6.0),
        (format!("serve_deployment_queued_queries{{{dep}}}"), 0.0),
        (format!("serve_replica_processing_queries{{{dep},replica=\"Obs#0\"}}"), 0.0),
        (format!("serve_deployment_replicas{{{dep},state=\"RUNNING\"}}"), 1.0),
        (format!("serve_deployment_replicas{{{dep},state=\"STARTING\"}}"), 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
    }
    // Scrapes are not requests of any application.
    assert_eq!(
        sample(
            &text,
            r#"serve_num_http_requests_total{route="",method="GET",application="",status_code="200"}"#
        ),
        None,
        "{text}"
    );
    assert!(text.contains("# TYPE serve_http_request_latency_ms histogram"));
    server.shutdown().await;
}

/// Answers every path with "app: <path>".
struct Echo;

impl Ingress for Echo {
    type Output = String;
    async fn call(&self, request: Request) -> String {
        format!("app: {}", request.path())
    }
}

fn echo() -> Application {
    Application::new(Deployment::new("Echo").bind(|| Echo)).name("echo")
}

#[tokio::test]
async fn the_metrics_path_can_move_or_be_turned_off() {
    let get = |url: String| async move {
        let r = client().get(url).send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    };
    // Default: the proxy answers /metrics before an application mounted at `/`.
    let (server, base) = start(Serve::new().app(echo()).no_admin()).await;
    let (status, text) = get(format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE serve_num_http_requests_total counter"),
        "{text}"
    );
    server.shutdown().await;

    // Moved: the application gets /metrics back.
    let serve = Serve::new()
        .app(echo())
        .no_admin()
        .metrics_path(Some("/-/metrics"));
    let (server, base) = start(serve).await;
    assert_eq!(
        get(format!("{base}/metrics")).await,
        (StatusCode::OK, "app: /metrics".into())
    );
    let (status, text) = get(format!("{base}/-/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.contains(
        r#"serve_num_http_requests_total{route="/",method="GET",application="echo",status_code="200"} 1"#
    ), "{text}");
    server.shutdown().await;

    // Off: no endpoint, nothing collected.
    let (server, base) = start(Serve::new().app(echo()).no_admin().metrics_path(None)).await;
    assert_eq!(
        get(format!("{base}/metrics")).await,
        (StatusCode::OK, "app: /metrics".into())
    );
    assert_eq!(
        get(format!("{base}/-/metrics")).await.0,
        StatusCode::NOT_FOUND
    );
    server.shutdown().await;

    let bad = Serve::new()
        .app(echo())
        .metrics_path(Some("metrics"))
        .port(0)
        .start()
        .await;
    match bad {
        Err(Error::Config(m)) => assert!(m.contains("metrics_path must start with '/'"), "{m}"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_admin_port_serves_the_same_metrics() {
    let (server, base) = start(Serve::new().app(echo()).admin_port(0)).await;
    assert_eq!(
        client()
            .get(format!("{base}/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let admin = format!("http://{}/metrics", server.admin_addr().unwrap());
    let text = scrape(&admin).await;
    for line in [
        r#"serve_num_http_requests_total{route="/",method="GET",application="echo",status_code="200"} 1"#,
        r#"serve_deployment_request_counter_total{deployment="Echo",application="echo"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn log_lines_carry_the_replica_and_errors_their_cause_chain() {
    captured_logs();
    let (app, _entered, _gate) = obs_app("logs", "/logs");
    let (server, base) = start(Serve::new().app(app).no_admin()).await;
    let c = client();
    let r = c
        .get(format!("{base}/logs/fail?q=1"))
        .header("x-request-id", "req-fail")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(r.text().await.unwrap(), "Internal Server Error");
    server.shutdown().await;

    let lines = log_lines();
    let with_message = |m: &str| {
        lines
            .iter()
            .find(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(m))
            })
            .unwrap_or_else(|| panic!("no line {m:?} in {lines:#?}"))
            .clone()
    };
    // The handler's own line and the error line name who served the request.
    for line in [
        with_message("handling /fail"),
        with_message("request failed"),
    ] {
        assert_eq!(line["application"], "logs", "{line}");
        assert_eq!(line["deployment"], "Obs", "{line}");
        assert_eq!(line["replica"], "Obs#0", "{line}");
        assert_eq!(line["request_id"], "req-fail", "{line}");
    }
    // Lines logged outside a handler do not.
    let startup = with_message("ferroserve listening on");
    assert!(startup.get("replica").is_none(), "{startup}");
    let error = with_message("request failed");
    assert_eq!(error["level"], "ERROR");
    assert_eq!(
        error["fields"]["error"],
        "deployment 'Obs' failed: model file unreadable: disk on fire"
    );
    // The access line.
    let access = with_message("GET /logs 500 ");
    assert_eq!(access["target"], "ferroserve::access");
    let f = &access["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "/logs");
    assert_eq!(f["path"], "/logs/fail");
    assert_eq!(f["status"], 500);
    assert_eq!(f["request_id"], "req-fail");
    assert_eq!(f["application"], "logs");
    assert!(f["latency_ms"].as_f64().unwrap() >= 0.0, "{access}");
}

#[tokio::test]
async fn the_access_log_can_be_turned_off() {
    captured_logs();
    let serve = Serve::new()
        .app(echo().name("quiet").route_prefix("/quiet"))
        .no_admin()
        .access_log(false);
    let (server, base) = start(serve).await;
    let r = client()
        .get(format!("{base}/quiet/x"))
        .header("x-request-id", "req-quiet")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "app: /x");
    server.shutdown().await;
    let lines = log_lines();
    assert!(
        !lines.iter().any(
            |l| l["target"] == "ferroserve::access" && l["fields"]["request_id"] == "req-quiet"
        ),
        "{lines:#?}"
    );
}

/// Runs the `reconfigure` example's CLI with `config`, makes one request per path, then stops
/// it with SIGTERM and returns every stderr line.
async fn run_cli_example(config: &str, paths: &[&str]) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!("ferroserve-obs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.yaml", paths.len()));
    std::fs::write(&file, config).unwrap();
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/reconfigure");
    assert!(binary.exists(), "run `cargo build --examples` first");
    let mut child = Command::new(binary)
        .arg("run")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut lines = Vec::new();
    let base = loop {
        let line = stderr.next().expect("listening line").unwrap();
        lines.push(line.clone());
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split('"').next().unwrap().trim().to_owned();
        }
    };
    for path in paths {
        let r = client().get(format!("{base}{path}")).send().await.unwrap();
        assert!(r.status().as_u16() < 500, "{path}: {}", r.status());
    }
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    lines.extend(stderr.map(Result::unwrap));
    assert!(child.wait().unwrap().success());
    lines
}

const CONFIG: &str = "http_options:\n  port: 0\nadmin_options:\n  port: 0\nlogging_config:\n  encoding: JSON\n  enable_access_log: ACCESS\napplications:\n  - name: threshold\n    import_path: reconfigure:app\n    args: {version: v1}\n";

#[tokio::test]
async fn json_logs_of_an_example_parse_and_the_access_log_follows_the_config() {
    let lines = run_cli_example(
        &CONFIG.replace("ACCESS", "true"),
        &["/?x=0.7", "/-/healthz"],
    )
    .await;
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&Value> = parsed
        .iter()
        .filter(|l| l["target"] == "ferroserve::access")
        .collect();
    assert_eq!(
        access.len(),
        1,
        "one access line (not for /-/healthz): {parsed:#?}"
    );
    let f = &access[0]["fields"];
    assert_eq!(
        f["message"]
            .as_str()
            .unwrap()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>(),
        ["GET", "/", "200"]
    );
    assert_eq!(
        (f["method"].as_str(), f["status"].as_u64()),
        (Some("GET"), Some(200))
    );
    assert_eq!(
        (f["route"].as_str(), f["path"].as_str()),
        (Some("/"), Some("/"))
    );
    assert_eq!(f["application"], "threshold");
    assert_eq!(
        f["request_id"].as_str().unwrap().len(),
        36,
        "a generated UUID"
    );
    assert!(f["latency_ms"].as_f64().is_some());

    let lines = run_cli_example(&CONFIG.replace("ACCESS", "false"), &["/?x=0.7"]).await;
    assert!(
        !lines.iter().any(|l| l.contains("ferroserve::access")),
        "{lines:#?}"
    );
}
