//! Model multiplexing through a real server: the LRU cache and its eviction hook, one load per
//! model under concurrency, failed loads, routing to the replica that holds a model, the handle
//! option, and bad `serve_multiplexed_model_id` headers.

use ferroserve_test_support as common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{client, start, Fetch};
use ferroserve::multiplex::{self, Multiplexed};
use ferroserve::{
    BoundDeployment, BoxError, Deployment, DeploymentHandle, Error, HandlerError, Handles, Ingress,
    Json, Request, Serve,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

const HEADER: &str = "serve_multiplexed_model_id";

/// What the test sees of the replicas' models: loads, evictions, and knobs to hold or fail loads.
#[derive(Default)]
struct Probe {
    loads: Mutex<Vec<String>>,
    evictions: Mutex<Vec<String>>,
    /// When set, each load waits for a permit.
    gate: Option<Arc<Semaphore>>,
    /// Ids whose next load fails.
    fail_next: Mutex<BTreeSet<String>>,
    /// Told each time a handler is about to ask for its model.
    asking: Option<mpsc::UnboundedSender<()>>,
    /// When set, requests with `?hold` wait for a permit after getting their model.
    hold: Option<Arc<Semaphore>>,
    replicas: AtomicUsize,
}

impl Probe {
    /// A probe whose loads wait for permits of the returned gate, and which says on the
    /// returned channel when each handler is about to ask for its model.
    fn gated() -> (Arc<Probe>, Arc<Semaphore>, mpsc::UnboundedReceiver<()>) {
        let gate = Arc::new(Semaphore::new(0));
        let (asking_tx, asking) = mpsc::unbounded_channel();
        let probe = Arc::new(Probe {
            gate: Some(gate.clone()),
            asking: Some(asking_tx),
            ..Probe::default()
        });
        (probe, gate, asking)
    }

    fn loads(&self) -> Vec<String> {
        self.loads.lock().unwrap().clone()
    }

    fn evictions(&self) -> Vec<String> {
        self.evictions.lock().unwrap().clone()
    }
}

/// A "model": its id and the replica that loaded it.
struct Model {
    id: String,
}

struct Inferencer {
    replica: String,
    probe: Arc<Probe>,
    models: Multiplexed<Model>,
}

fn cache(probe: &Arc<Probe>, max: usize) -> Result<Multiplexed<Model>, Error> {
    let (loads, evictions) = (probe.clone(), probe.clone());
    Multiplexed::builder(move |id: String| {
        let probe = loads.clone();
        async move {
            probe.loads.lock().unwrap().push(id.clone());
            if let Some(gate) = &probe.gate {
                gate.acquire().await.unwrap().forget();
            }
            if probe.fail_next.lock().unwrap().remove(&id) {
                return Err(BoxError::from(format!(
                    "secret bucket s3://weights/{id} unreachable"
                )));
            }
            Ok(Model { id })
        }
    })
    .max_num_models_per_replica(max)
    .on_evict(move |id, _model| {
        let probe = evictions.clone();
        async move {
            tokio::task::yield_now().await;
            probe.evictions.lock().unwrap().push(id);
        }
    })
    .build()
}

impl Ingress for Inferencer {
    type Output = Result<Json<Value>, HandlerError>;

    async fn call(&self, request: Request) -> Self::Output {
        if let Some(asking) = &self.probe.asking {
            asking.send(()).unwrap();
        }
        let model = self.models.for_request().await?;
        if let (Some(hold), Some(_)) = (&self.probe.hold, request.query_params().get("hold")) {
            hold.acquire().await.unwrap().forget();
        }
        Ok(Json(json!({
            "model": model.id,
            "replica": self.replica,
            "loaded": self.models.loaded_model_ids(),
        })))
    }
}

fn inferencer(probe: &Arc<Probe>, replicas: usize, max_models: usize) -> Serve {
    Serve::new().app(inferencer_with_cap(probe, replicas, 100, max_models))
}

fn inferencer_with_cap(
    probe: &Arc<Probe>,
    replicas: usize,
    max_ongoing: usize,
    max_models: usize,
) -> BoundDeployment<Inferencer> {
    let probe = probe.clone();
    Deployment::new("Inferencer")
        .num_replicas(replicas)
        .max_ongoing_requests(max_ongoing)
        .bind_async(move || {
            let probe = probe.clone();
            async move {
                let n = probe.replicas.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(Inferencer {
                    replica: format!("Inferencer#{n}"),
                    models: cache(&probe, max_models)?,
                    probe,
                })
            }
        })
}

/// `GET base/` for `model`; the status and the JSON (or text) body.
fn ask(base: &str, model: &str) -> impl Future<Output = (u16, Value)> + Send + 'static {
    ask_path(base, "/", model)
}

fn ask_path(
    base: &str,
    path: &str,
    model: &str,
) -> impl Future<Output = (u16, Value)> + Send + 'static {
    let request = client().get(format!("{base}{path}")).header(HEADER, model);
    async move {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

#[tokio::test]
async fn the_least_recently_used_model_is_evicted_at_three_with_the_hook_in_lru_order() {
    let probe = Arc::new(Probe::default());
    let (_server, base) = start(inferencer(&probe, 1, 3)).await;
    for id in ["m1", "m2", "m3"] {
        let (status, body) = ask(&base, id).await;
        assert_eq!(status, 200);
        assert_eq!(body["model"], id);
    }
    // m1 again: served from the cache, and now the most recently used.
    let (_, body) = ask(&base, "m1").await;
    assert_eq!(body["loaded"], json!(["m2", "m3", "m1"]));
    assert_eq!(probe.loads(), ["m1", "m2", "m3"]);

    let (_, body) = ask(&base, "m4").await;
    assert_eq!(body["loaded"], json!(["m3", "m1", "m4"]));
    let (_, body) = ask(&base, "m5").await;
    assert_eq!(body["loaded"], json!(["m1", "m4", "m5"]));
    assert_eq!(probe.evictions(), ["m2", "m3"], "LRU order, hook done");

    // An evicted model is loaded again when asked for.
    let (_, body) = ask(&base, "m2").await;
    assert_eq!(body["loaded"], json!(["m4", "m5", "m2"]));
    assert_eq!(probe.loads(), ["m1", "m2", "m3", "m4", "m5", "m2"]);
    assert_eq!(probe.evictions(), ["m2", "m3", "m1"]);
}

/// Runs on the test's single-threaded runtime, with the server: once every handler has said it
/// is asking, each one has polled `get` and is waiting on the load.
#[tokio::test]
async fn concurrent_requests_for_one_model_load_it_once() {
    let (probe, gate, mut asking) = Probe::gated();
    let (_server, base) = start(inferencer(&probe, 1, 3)).await;
    let requests: Vec<_> = (0..8).map(|_| tokio::spawn(ask(&base, "m1"))).collect();
    for _ in 0..8 {
        asking.recv().await.unwrap();
    }
    assert_eq!(probe.loads(), ["m1"], "one load, started once");
    gate.add_permits(1);
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["model"], "m1");
    }
    assert_eq!(probe.loads(), ["m1"]);
}

#[tokio::test]
async fn a_failed_load_is_a_500_without_detail_for_every_waiter_and_the_next_request_loads_again() {
    let (probe, gate, mut asking) = Probe::gated();
    probe.fail_next.lock().unwrap().insert("m1".into());
    let (_server, base) = start(inferencer(&probe, 1, 3)).await;
    let requests: Vec<_> = (0..3).map(|_| tokio::spawn(ask(&base, "m1"))).collect();
    for _ in 0..3 {
        asking.recv().await.unwrap();
    }
    gate.add_permits(1);
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 500);
        assert_eq!(body, "Internal Server Error", "no detail leaked");
    }
    assert_eq!(probe.loads(), ["m1"]);

    gate.add_permits(1);
    let (status, body) = ask(&base, "m1").await;
    assert_eq!(status, 200, "the failure was not cached");
    assert_eq!(body["model"], "m1");
    assert_eq!(probe.loads(), ["m1", "m1"]);
}

/// Replica ids → the model ids each holds, from the admin API's status.
async fn held_models(admin: &str) -> Vec<(String, Value)> {
    let status: Value = client()
        .get(format!("{admin}/api/serve/applications/"))
        .fetch_json()
        .await;
    let replicas = status["applications"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["deployments"]["Inferencer"]["replicas"]
        .as_array()
        .unwrap()
        .clone();
    let mut held: Vec<_> = replicas
        .iter()
        .map(|r| {
            (
                r["replica_id"].as_str().unwrap().to_owned(),
                r.get("multiplexed_model_ids")
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect();
    held.sort_by(|a, b| a.0.cmp(&b.0));
    held
}

#[tokio::test]
async fn repeat_requests_for_a_model_stay_on_the_replica_holding_it() {
    let probe = Arc::new(Probe::default());
    let serve = inferencer(&probe, 2, 3).admin("127.0.0.1", 0);
    let (server, base) = start(serve).await;
    let admin = format!("http://{}", server.admin_addr().unwrap());
    let none = |r: &str| (r.to_owned(), Value::Null);
    assert_eq!(
        held_models(&admin).await,
        [none("Inferencer#0"), none("Inferencer#1")],
        "no models, no field"
    );

    let (_, first) = ask(&base, "m1").await;
    let holder = first["replica"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        let (_, body) = ask(&base, "m1").await;
        assert_eq!(body["replica"], holder, "m1 stays where it is loaded");
    }
    assert_eq!(probe.loads(), ["m1"]);
    for (replica, ids) in held_models(&admin).await {
        let expected = if replica == holder {
            json!(["m1"])
        } else {
            Value::Null
        };
        assert_eq!(ids, expected, "{replica}");
    }
}

/// Single-threaded with the server: when the held request says it is asking for its model, it
/// has started loading m1 (so its replica publishes m1) and keeps its replica's only slot.
#[tokio::test]
async fn a_model_request_goes_elsewhere_when_the_holder_is_full() {
    let hold = Arc::new(Semaphore::new(0));
    let (asking_tx, mut asking) = mpsc::unbounded_channel();
    let probe = Arc::new(Probe {
        hold: Some(hold.clone()),
        asking: Some(asking_tx),
        ..Probe::default()
    });
    let app = inferencer_with_cap(&probe, 2, 1, 3);
    let (_server, base) = start(Serve::new().app(app)).await;

    let held = tokio::spawn(ask_path(&base, "/?hold", "m1"));
    asking.recv().await.unwrap();
    let (status, other) = ask(&base, "m1").await;
    assert_eq!(status, 200);
    assert_eq!(probe.loads(), ["m1", "m1"], "loaded on the other replica");

    hold.add_permits(1);
    let (_, held) = held.await.unwrap();
    assert_eq!(held["model"], "m1");
    assert_ne!(other["replica"], held["replica"], "the holder was full");
}

/// A model deployment called through handles: reports the model id its call named.
struct Echo {
    models: Multiplexed<String>,
}

struct Which;

impl Handles<Which> for Echo {
    type Output = Result<(Option<String>, Option<String>), Error>;

    async fn call(&self, _: Which) -> Self::Output {
        let Some(id) = multiplex::model_id() else {
            return Ok((None, None));
        };
        let model = self.models.get(&id).await?;
        Ok((Some(id.to_string()), Some(model.to_string())))
    }
}

/// The ingress: calls `Echo` once naming `?model=` and once without naming a model.
struct Front {
    echo: DeploymentHandle<Echo>,
}

impl Ingress for Front {
    type Output = Result<Json<Value>, HandlerError>;

    async fn call(&self, request: Request) -> Self::Output {
        let own = request.context().multiplexed_model_id().map(str::to_owned);
        let named = request.query_params().get("model").unwrap_or("").to_owned();
        let echo = self.echo.with_model_id(named.as_str());
        assert_eq!(echo.model_id(), Some(named.as_str()));
        let (via_option, loaded) = echo.remote(Which).await??;
        let (inherited, _) = self.echo.remote(Which).await??;
        Ok(Json(json!({
            "own": own,
            "via_option": via_option,
            "loaded": loaded,
            "inherited": inherited,
        })))
    }
}

#[tokio::test]
async fn a_handle_names_the_model_and_calls_do_not_inherit_the_request_model_id() {
    let evicted = Arc::new(Mutex::new(Vec::new()));
    let on_evict = evicted.clone();
    let echo = Deployment::new("Echo").bind_async(move || {
        let on_evict = on_evict.clone();
        async move {
            let models = Multiplexed::builder(|id: String| async move {
                Ok::<_, BoxError>(format!("model-{id}"))
            })
            .max_num_models_per_replica(1)
            .on_evict_sync(move |id, model: Arc<String>| {
                on_evict.lock().unwrap().push(format!("{id}={model}"));
            })
            .build()?;
            Ok::<_, Error>(Echo { models })
        }
    });
    let front = Deployment::new("Front")
        .with(echo)
        .bind(|echo| Front { echo });
    let (_server, base) = start(Serve::new().app(front)).await;

    let (status, body) = ask_path(&base, "/?model=a", "m9").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"own": "m9", "via_option": "a", "loaded": "model-a", "inherited": null})
    );
    let (_, body) = ask_path(&base, "/?model=b", "m9").await;
    assert_eq!(body["loaded"], "model-b");
    assert_eq!(
        *evicted.lock().unwrap(),
        ["a=model-a"],
        "sync hook, LRU of one"
    );
}

#[tokio::test]
async fn bad_model_id_headers_and_missing_ids_are_400_with_a_reason() {
    let probe = Arc::new(Probe::default());
    let (_server, base) = start(inferencer(&probe, 1, 3)).await;
    let send = |value: Option<reqwest::header::HeaderValue>| {
        let mut request = client().get(format!("{base}/"));
        if let Some(value) = value {
            request = request.header(HEADER, value);
        }
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let value = |bytes: &[u8]| Some(reqwest::header::HeaderValue::from_bytes(bytes).unwrap());

    assert_eq!(
        send(value(&[b'm'; 257])).await,
        (
            400,
            "Invalid serve_multiplexed_model_id header: 257 bytes long, the limit is 256.".into()
        )
    );
    assert_eq!(
        send(value(b"m\xff1")).await,
        (
            400,
            "Invalid serve_multiplexed_model_id header: not UTF-8 text.".into()
        )
    );
    let no_model = (
        400,
        "This request names no model: set the serve_multiplexed_model_id header.".to_owned(),
    );
    assert_eq!(send(None).await, no_model);
    assert_eq!(
        send(value(b"")).await,
        no_model,
        "empty means none, as in Ray"
    );
    assert!(probe.loads().is_empty(), "nothing was loaded");

    let (status, body) = send(value(&[b'm'; 256])).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(value("mod\u{e8}le".as_bytes())).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["model"], "mod\u{e8}le", "UTF-8 ids are fine");
    assert_eq!(probe.loads(), ["m".repeat(256), "mod\u{e8}le".to_owned()]);
}

#[tokio::test]
async fn zero_models_per_replica_fails_start_up_naming_the_deployment() {
    let probe = Arc::new(Probe::default());
    let err = inferencer(&probe, 1, 0)
        .port(0)
        .start()
        .await
        .expect_err("start fails");
    assert_eq!(
        err.to_string(),
        "deployment 'Inferencer' failed to start: invalid configuration: \
         max_num_models_per_replica must be at least 1, got 0"
    );
}

/// The example (examples are the contract), as its own process. Seven models on two
/// replicas of three places each: a replica given more than three evicts, printing it.
#[tokio::test]
async fn the_example_loads_models_where_routed_and_evicts_beyond_three() {
    let ex = common::Example::start("multiplexing");
    let mut per_replica = std::collections::BTreeMap::<String, Vec<String>>::new();
    for i in 1..=7 {
        let id = format!("m{i}");
        let (status, body) = ask(&ex.base, &id).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], id);
        let replica = body["replica"].as_str().unwrap().to_owned();
        per_replica.entry(replica).or_default().push(id);
    }
    // Each replica printed its loads, and an eviction (of its oldest model) before each load
    // beyond the third.
    let mut expected = Vec::new();
    for (replica, ids) in &per_replica {
        for (n, id) in ids.iter().enumerate() {
            if n >= 3 {
                expected.push(format!("{replica} evicting model {}", ids[n - 3]));
            }
            expected.push(format!("{replica} loading model {id}"));
        }
    }
    let count = expected.len();
    let (ex, mut printed) = tokio::task::spawn_blocking(move || {
        let lines: Vec<String> = (0..count).map(|_| ex.next_stdout()).collect();
        (ex, lines)
    })
    .await
    .unwrap();
    printed.sort();
    expected.sort();
    assert_eq!(printed, expected);

    // The most recent model stays where it was loaded; no model named is a 400.
    let last = per_replica
        .iter()
        .find(|(_, ids)| ids.contains(&"m7".to_owned()));
    let (_, body) = ask(&ex.base, "m7").await;
    assert_eq!(body["replica"], *last.unwrap().0);
    let (status, body) = ask(&ex.base, "").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "This request names no model: set the serve_multiplexed_model_id header."
    );
}
