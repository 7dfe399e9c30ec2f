//! The `ferroserve` binary as a script would use it: every verb against a real running server
//! (the binary itself, on ephemeral ports), and live updates under load.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ferroserve_test_support::Fetch;
use serde_json::Value;

fn ferroserve() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferroserve"))
}

/// The `reconfigure` example: a binary of its own (a threshold classifier with `user_config`)
/// with the whole CLI through `ferroserve_cli::main`, as a user's binary has it.
fn reconfigure() -> Command {
    Command::new(ferroserve_test_support::example_path("reconfigure"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `run` process on ephemeral ports, and the binary that started it.
struct Running {
    binary: fn() -> Command,
    child: Child,
    base: String,
    admin: String,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "ferroserve-cli-{tag}-{}-{}",
            std::process::id(),
            fastrand_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

impl Running {
    /// The `reconfigure` example running `config`.
    fn start(config: &str) -> Running {
        let dir = TempDir::new("run");
        let path = dir.write("serve.yaml", config);
        Running::start_file(reconfigure, &path, dir)
    }

    fn start_file(binary: fn() -> Command, path: &Path, dir: TempDir) -> Running {
        let mut child = binary()
            .arg("run")
            .arg(path)
            .args(["--port", "0", "--admin-port", "0"])
            .current_dir(repo())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[server] {line}");
                let _ = tx.send(line);
            }
        });
        let (mut base, mut admin) = (None, None);
        while base.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the server announces its addresses");
            if let Some(rest) = line.split("admin API on http://").nth(1) {
                admin = Some(rest.split('/').next().unwrap().to_owned());
            }
            if let Some(rest) = line.split("ferroserve listening on ").nth(1) {
                base = Some(rest.trim().to_owned());
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Running {
            binary,
            child,
            base: base.unwrap(),
            admin: admin.unwrap(),
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = (self.binary)();
        cmd.args(args).args(["--address", &self.admin]);
        cmd.current_dir(repo()).output().unwrap()
    }

    fn deploy(&self, config: &str) -> Output {
        let dir = TempDir::new("deploy");
        let path = dir.write("update.yaml", config);
        self.cli(&["deploy", path.to_str().unwrap()])
    }

    async fn status(&self) -> Value {
        reqwest::get(format!("http://{}/api/serve/applications/", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn threshold_config(version: &str, replicas: usize, threshold: f64) -> String {
    format!(
        "applications:\n  - name: threshold\n    route_prefix: /t\n    import_path: reconfigure:app\n    args: {{version: {version}}}\n    deployments:\n      - name: Threshold\n        num_replicas: {replicas}\n        user_config: {{threshold: {threshold}}}\n"
    )
}

fn replica_ids(status: &Value) -> Vec<String> {
    let mut ids: Vec<String> = status["applications"]["threshold"]["deployments"]["Threshold"]
        ["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "RUNNING")
        .map(|r| r["replica_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn classify(base: &str, x: f64) -> Value {
    reqwest::get(format!("{base}/t/?x={x}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[test]
fn help_lists_the_commands() {
    let out = ferroserve().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for verb in [
        "run", "deploy", "status", "config", "build", "shutdown", "routes",
    ] {
        assert!(help.contains(verb), "{help}");
    }
}

fn free_port() -> u16 {
    // Bind then drop a listener to get a port where nothing listens.
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn verbs_without_a_server_fail_clearly_with_exit_code_3() {
    let address = format!("127.0.0.1:{}", free_port());
    for verb in ["status", "config", "shutdown"] {
        let out = ferroserve()
            .args([verb, "--address", &address])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{verb}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!("error: no ferroserve server at {address}")),
            "{verb}: {err}"
        );
    }
    let out = ferroserve()
        .args(["routes", "--address", &address])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn run_rejects_an_invalid_config_with_file_line_and_path() {
    let dir = TempDir::new("bad");
    let path = dir.write(
        "serve.yaml",
        "applications:\n  - name: t\n    import_path: ferroserve.echo:app\n    deployments:\n      - name: Echo\n        num_replicas: 0\n",
    );
    let out = ferroserve().arg("run").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}:6:9: applications[0].deployments[0].num_replicas: must be at least 1, got 0\n",
            path.display()
        )
    );
    let path = dir.write(
        "serve.yaml",
        "applications:\n  - name: t\n    import_path: nowhere:app\n",
    );
    let out = ferroserve()
        .arg("run")
        .arg(&path)
        .args(["--port", "0", "--admin-port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("applications[0].import_path: import_path 'nowhere:app' is not registered in this binary; registered: ferroserve.echo:app, ferroserve.onnx:app"),
        "{err}"
    );
}

#[test]
fn build_writes_a_config_with_every_default_that_runs() {
    let out = reconfigure()
        .args(["build", "reconfigure:app", "--args", r#"{"version": "v1"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    let config = ferroserve::config::ServeConfig::parse(&yaml, "built.yaml").unwrap();
    assert_eq!(config.http_options.port, 8000);
    let app = &config.applications[0];
    assert_eq!(app.import_path, "reconfigure:app");
    assert_eq!(app.args["version"], "v1");
    let d = &app.deployments[0];
    assert_eq!(d.name, "Threshold");
    assert_eq!(d.num_replicas, Some(1));
    assert_eq!(d.max_ongoing_requests, Some(100));
    assert_eq!(d.max_queued_requests, Some(-1));
    assert_eq!(d.user_config, Some(serde_json::json!({"threshold": 0.5})));
    // Without arguments, every registered app that builds without args.
    let out = ferroserve().arg("build").output().unwrap();
    assert!(out.status.success());
    let config = ferroserve::config::ServeConfig::parse(&text(&out.stdout), "all.yaml").unwrap();
    assert_eq!(config.applications[0].import_path, "ferroserve.echo:app");
    assert_eq!(config.applications.len(), 1, "the others need args");
    assert_eq!(config.applications[0].route_prefix.as_deref(), Some("/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_config_routes_and_shutdown_against_a_running_server() {
    let mut server = Running::start(&threshold_config("v1", 2, 0.5));
    assert_eq!(classify(&server.base, 0.7).await["above"], true);

    let out = server.cli(&["status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(status.contains("threshold:"), "{status}");
    assert!(status.contains("status: RUNNING"), "{status}");
    assert!(status.contains("Threshold:"), "{status}");
    assert!(status.contains("RUNNING: 2"), "{status}");

    let out = server.cli(&["config"]);
    assert!(out.status.success());
    let config = ferroserve::config::ServeConfig::parse(&text(&out.stdout), "running").unwrap();
    assert_eq!(config.applications[0].import_path, "reconfigure:app");
    assert_eq!(config.applications[0].deployments[0].num_replicas, Some(2));

    let out = ferroserve()
        .args([
            "routes",
            "--address",
            server.base.trim_start_matches("http://"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        "health: success\nroutes: {\"/t\":\"threshold\"}\n"
    );

    let out = server.cli(&["shutdown"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "Sent shutdown request; the server is draining.\n"
    );
    let code = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "{code:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_user_config_and_replica_counts_in_place() {
    let server = Running::start(&threshold_config("v1", 2, 0.5));
    let before = replica_ids(&server.status().await);
    assert_eq!(before.len(), 2);
    assert_eq!(classify(&server.base, 0.7).await["above"], true);

    let out = server.deploy(&threshold_config("v1", 2, 0.9));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = classify(&server.base, 0.7).await;
    assert_eq!(
        (answer["above"].clone(), answer["threshold"].clone()),
        (false.into(), 0.9.into())
    );
    assert_eq!(
        replica_ids(&server.status().await),
        before,
        "no replica restarted"
    );

    let out = server.deploy(&threshold_config("v1", 4, 0.9));
    assert!(out.status.success());
    let after = replica_ids(&server.status().await);
    assert_eq!(after.len(), 4);
    assert!(
        before.iter().all(|id| after.contains(id)),
        "{before:?} {after:?}"
    );
    // New replicas got the current user_config too.
    for _ in 0..20 {
        assert_eq!(classify(&server.base, 0.7).await["threshold"], 0.9);
    }

    let out = server.deploy(&threshold_config("v1", 1, 0.9));
    assert!(out.status.success());
    assert_eq!(replica_ids(&server.status().await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rejects_bad_configs_and_changes_nothing() {
    let server = Running::start(&threshold_config("v1", 2, 0.5));
    let out = server.deploy(
        "applications:\n  - name: threshold\n    route_prefix: /t\n    import_path: reconfigure:app\n    args: {version: v1}\n    deployments:\n      - name: Threshold\n        user_config: {thresh: 1}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("update.yaml"), "{err}");
    assert!(
        err.contains("update.yaml:7:9: applications[0].deployments[0]: deployment 'Threshold': user_config.thresh: unknown field `thresh`, expected `threshold`"),
        "{err}"
    );
    let out = server.deploy(
        "applications:\n  - name: threshold\n    import_path: reconfigure:app\n    args: {version: 3}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "applications[0].args: args.version: invalid type: integer `3`, expected a string"
        ),
        "{err}"
    );
    let out = server.deploy(
        "applications:\n  - name: threshold\n    import_path: reconfigure:app\n    args: {version: v1}\n    deployments:\n      - name: Model\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(
        "application 'threshold' has no deployment named 'Model'; its deployments are: Threshold"
    ));
    let out = server.deploy("http_options:\n  port: 1234\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("http_options: cannot change on a running server"));
    // The admin API itself: a JSON body, and the error's structure.
    let answer = reqwest::Client::new()
        .put(format!("http://{}/api/serve/applications/", server.admin))
        .body(r#"{"applications": [{"name": "threshold", "import_path": "reconfigure:app", "args": {"version": "v1"}, "deployments": [{"name": "Threshold", "max_ongoing_requests": 0}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        body["issues"][0]["path"],
        "applications[0].deployments[0].max_ongoing_requests"
    );
    assert_eq!(body["issues"][0]["message"], "must be at least 1, got 0");
    assert_eq!(body["issues"][0]["line"], 1);
    // Still serving the original.
    assert_eq!(replica_ids(&server.status().await).len(), 2);
    assert_eq!(classify(&server.base, 0.7).await["threshold"], 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_args_rolls_replicas_over_under_load_with_zero_failures() {
    let server = Running::start(&threshold_config("v1", 5, 0.5));
    let before = replica_ids(&server.status().await);
    assert_eq!(before.len(), 5);
    let base = server.base.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let versions = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let client = reqwest::Client::new();
    let mut load = Vec::new();
    for _ in 0..8 {
        let (base, stop, ok, failed, versions, client) = (
            base.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            versions.clone(),
            client.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = client.get(format!("{base}/t/?x=0.7")).send().await;
                match answer {
                    Ok(r) if r.status() == 200 => {
                        let body: Value = r.json().await.unwrap();
                        let v = body["version"].as_str().unwrap().to_owned();
                        let mut seen = versions.lock().unwrap();
                        if seen.last() != Some(&v) {
                            seen.push(v);
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Load is flowing before the update starts.
    while ok.load(Ordering::Relaxed) < 200 {
        tokio::task::yield_now().await;
    }
    let config = threshold_config("v2", 5, 0.5);
    let out = {
        let admin = server.admin.clone();
        tokio::task::spawn_blocking(move || {
            let dir = TempDir::new("roll");
            let path = dir.write("v2.yaml", &config);
            ferroserve()
                .args(["deploy", path.to_str().unwrap(), "--address", &admin])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after_deploy = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < after_deploy + 200 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    let seen = versions.lock().unwrap().clone();
    assert_eq!(seen.first().map(String::as_str), Some("v1"));
    assert_eq!(seen.last().map(String::as_str), Some("v2"), "{seen:?}");
    let after = replica_ids(&server.status().await);
    assert_eq!(after.len(), 5);
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "all replaced: {before:?} → {after:?}"
    );
    assert_eq!(classify(&server.base, 0.1).await["version"], "v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iris_app_serves_predictions_from_its_config() {
    let dir = TempDir::new("iris");
    let server = Running::start_file(ferroserve, &repo().join("apps/iris/serve.yaml"), dir);
    let client = reqwest::Client::new();
    let answer: Value = client
        .post(format!("{}/iris/predict", server.base))
        .json(&serde_json::json!({"array": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}))
        .fetch_json()
        .await;
    assert_eq!(answer["labels"], serde_json::json!(["setosa", "virginica"]));
    let probabilities = answer["probabilities"].as_array().unwrap();
    assert_eq!(probabilities.len(), 2);
    for row in probabilities {
        let sum: f64 = row
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-4, "{row}");
    }
    let bad = client
        .post(format!("{}/iris/predict", server.base))
        .json(&serde_json::json!({"array": [[5.1, 3.5, 1.4]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let docs = client
        .get(format!("{}/iris/docs", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    let status = server.status().await;
    let model = &status["applications"]["iris"]["deployments"]["Model"];
    assert_eq!(model["replica_states"]["RUNNING"], 2, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_app_answers_with_the_request_it_received() {
    let dir = TempDir::new("echo");
    let path = dir.write(
        "serve.yaml",
        "applications:\n  - name: echo\n    route_prefix: /e\n    import_path: ferroserve.echo:app\n",
    );
    let server = Running::start_file(ferroserve, &path, TempDir::new("echo-run"));
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/e/a/b?x=1&y=2", server.base))
        .header("x-token", "t")
        .body("hello")
        .fetch_json()
        .await;
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["path"], "/a/b");
    assert_eq!(answer["root_path"], "/e");
    assert_eq!(
        answer["query_params"],
        serde_json::json!({"x": "1", "y": "2"})
    );
    assert_eq!(answer["headers"]["x-token"], "t");
    assert_eq!(answer["body"], "hello");
}
