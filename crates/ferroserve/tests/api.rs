//! FastAPI-style ingress: typed routes with `self`, validation errors in FastAPI's shape, DI,
//! middleware, bring-your-own routers, OpenAPI and docs, lifecycle hooks.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use common::{client, start, Example, Fetch};
use ferroserve::api::routing::{get, post};
use ferroserve::api::{ApiIngress, ApiRouter, Headers, Json, Path, RootPath};
use ferroserve::{Application, Deployment, Serve};
use serde_json::{json, Value};

#[tokio::test]
async fn fastapi_hello_answers_under_its_prefix() {
    let ex = Example::start("fastapi_hello");
    let r = reqwest::get(format!("{}/hello", ex.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.json::<Value>().await.unwrap(), json!("Hello, world!"));
    let r = reqwest::get(format!("{}/hello/nope", ex.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "Not Found"})
    );
}

#[tokio::test]
async fn fastapi_multi_routes_serves_get_and_post() {
    let ex = Example::start("fastapi_multi_routes");
    let c = reqwest::Client::new();
    let r = c.get(format!("{}/hello", ex.base)).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!("Hello, world!"));
    let r = c
        .post(format!("{}/hello/Serve", ex.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!("Hello from Serve!"));
    let r = c
        .get(format!("{}/hello/Serve", ex.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "Method Not Allowed"})
    );
}

#[tokio::test]
async fn byo_router_is_served_unchanged() {
    let ex = Example::start("byo_router");
    let r = reqwest::get(format!("{}/", ex.base)).await.unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!("Hello from the root!")
    );
    let doc: Value = reqwest::get(format!("{}/openapi.json", ex.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/"]["get"].is_object());
}

#[tokio::test]
async fn fastapi_users_validates_every_location_in_fastapi_shape() {
    let ex = Example::start("fastapi_users");
    let c = reqwest::Client::new();
    let users = format!("{}/api/users", ex.base);
    let post = |body: &str| {
        c.post(&users)
            .header("x-api-key", "secret")
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    // Body: constraint violations, a missing field, a wrong type, broken JSON.
    let r = post(r#"{"user_id": 0, "user_name": ""}"#).await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    let locs: Vec<&Value> = v["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["loc"])
        .collect();
    assert_eq!(
        locs,
        [&json!(["body", "user_id"]), &json!(["body", "user_name"])]
    );
    assert_eq!(v["detail"][0]["msg"], "lower than 1");
    let v: Value = post(r#"{"user_id": 3}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v,
        json!({"detail": [{"type": "missing", "loc": ["body", "user_name"], "msg": "Field required", "input": {"user_id": 3}}]})
    );
    let v: Value = post(r#"{"user_id": "x", "user_name": "a"}"#)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["detail"][0]["loc"], json!(["body", "user_id"]));
    assert_eq!(v["detail"][0]["type"], "type_error");
    assert_eq!(v["detail"][0]["input"], "x");
    let r = post("{broken").await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["detail"][0]["type"],
        "json_invalid"
    );
    // Content type.
    let r = c
        .post(&users)
        .header("x-api-key", "secret")
        .header("content-type", "text/plain")
        .body(r#"{"user_id": 1, "user_name": "a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.json::<Value>().await.unwrap()["detail"],
        "Unsupported Media Type: expected `Content-Type: application/json`, got `text/plain`"
    );
    // The dependency.
    let r = c
        .post(&users)
        .header("content-type", "application/json")
        .body(r#"{"user_id": 1, "user_name": "a"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Success, with the middleware's header.
    let r = post(r#"{"user_id": 7, "user_name": "ada"}"#).await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("x-process-time"));
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"user_id": 7, "user_name": "ada"})
    );
    // Query and path.
    let v: Value = c.get(format!("{users}?limit=0")).fetch_json().await;
    assert_eq!(v["detail"][0]["loc"], json!(["query", "limit"]));
    let v: Value = c.get(format!("{users}?limit=ten")).fetch_json().await;
    assert_eq!(v["detail"][0]["loc"], json!(["query", "limit"]));
    assert_eq!(v["detail"][0]["input"], "ten");
    let v: Value = c.get(&users).fetch_json().await;
    assert_eq!(v["detail"][0]["loc"], json!(["query", "limit"]));
    assert_eq!(v["detail"][0]["type"], "missing");
    let r = c.get(format!("{users}/abc")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"detail": [{"type": "type_error", "loc": ["path", "user_id"], "msg": "Input should be a valid i64", "input": "abc"}]})
    );
    let v: Value = c.get(format!("{users}?limit=5")).fetch_json().await;
    assert_eq!(v, json!([{"user_id": 7, "user_name": "ada"}]));
    let v: Value = c.get(format!("{users}/7")).fetch_json().await;
    assert_eq!(v["user_name"], "ada");
    let r = c.get(format!("{users}/8")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"detail": "User 8 not found"})
    );
}

#[tokio::test]
async fn openapi_document_has_every_route_with_types_and_constraints() {
    let ex = Example::start("fastapi_users");
    let doc: Value = reqwest::get(format!("{}/api/openapi.json", ex.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["servers"], json!([{"url": "/api"}]));
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths.keys().collect::<Vec<_>>(),
        ["/users", "/users/{user_id}"]
    );
    let post = &doc["paths"]["/users"]["post"];
    assert!(post["requestBody"]["content"]["application/json"]["schema"].is_object());
    // Every status a client can get is declared (schemathesis checks that in
    // tests/python/test_schemathesis.py), with the body it comes with.
    let statuses: Vec<&String> = post["responses"].as_object().unwrap().keys().collect();
    assert_eq!(statuses, ["201", "401", "415", "422"]);
    let detail = json!({"$ref": "#/components/schemas/DetailError"});
    assert_eq!(
        post["responses"]["415"]["content"]["application/json"]["schema"],
        detail
    );
    let get = &doc["paths"]["/users/{user_id}"]["get"];
    assert_eq!(
        get["responses"]["404"]["content"]["application/json"]["schema"],
        detail
    );
    assert_eq!(
        doc["components"]["schemas"]["DetailError"]["required"],
        json!(["detail"])
    );
    let limit = &doc["paths"]["/users"]["get"]["parameters"][0];
    assert_eq!(limit["name"], "limit");
    assert_eq!(limit["in"], "query");
    let user_id = &doc["paths"]["/users/{user_id}"]["get"]["parameters"][0];
    assert_eq!(
        (user_id["name"].as_str(), user_id["in"].as_str()),
        (Some("user_id"), Some("path"))
    );
    let user = &doc["components"]["schemas"]["User"];
    assert_eq!(user["properties"]["user_id"]["minimum"], 1);
    assert_eq!(user["properties"]["user_name"]["maxLength"], 32);
    assert_eq!(user["required"], json!(["user_id", "user_name"]));
    let docs = reqwest::get(format!("{}/api/docs", ex.base)).await.unwrap();
    assert_eq!(docs.headers()["content-type"], "text/html; charset=utf-8");
    let html = docs.text().await.unwrap();
    assert!(html.contains(r#"const SPEC_URL = "/api/openapi.json";"#));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
}

/// A deployment whose routes use `self`: a per-replica counter and name.
struct Stateful {
    replica: usize,
    hits: AtomicUsize,
}

impl Stateful {
    async fn hit(State(this): State<Arc<Self>>, root: RootPath) -> Json<Value> {
        let hits = this.hits.fetch_add(1, Ordering::SeqCst) + 1;
        Json(json!({"replica": this.replica, "hits": hits, "root_path": root.0}))
    }

    async fn item(Path((a, b)): Path<(String, u32)>) -> Json<String> {
        Json(format!("{a}:{b}"))
    }

    async fn whoami(Headers(who): Headers<Who>) -> Json<Value> {
        Json(json!({"user": who.x_user_id, "agent": who.x_agent}))
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Who {
    x_user_id: u32,
    x_agent: Option<String>,
}

impl ApiIngress for Stateful {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new()
            .api_route("/hit", post(Self::hit))
            .api_route("/items/{a}/{b}", get(Self::item))
            .api_route("/whoami", get(Self::whoami))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reach_their_own_replica_instance_and_root_path() {
    let next = AtomicUsize::new(0);
    let app = Deployment::new("Stateful")
        .num_replicas(2)
        .bind(move || Stateful {
            replica: next.fetch_add(1, Ordering::SeqCst),
            hits: AtomicUsize::new(0),
        });
    let (server, base) = start(Serve::new().app(Application::api(app).route_prefix("/s"))).await;
    let c = client();
    let mut hits = [0u64; 2];
    for _ in 0..100 {
        let v: Value = c.post(format!("{base}/s/hit")).fetch_json().await;
        assert_eq!(v["root_path"], "/s");
        let r = v["replica"].as_u64().unwrap() as usize;
        hits[r] += 1;
        assert_eq!(
            v["hits"].as_u64().unwrap(),
            hits[r],
            "each replica has its own self"
        );
    }
    assert!(hits[0] > 0 && hits[1] > 0);
    let v: Value = c.get(format!("{base}/s/items/x/5")).fetch_json().await;
    assert_eq!(v, json!("x:5"));
    let v: Value = c.get(format!("{base}/s/items/x/-5")).fetch_json().await;
    assert_eq!(v["detail"][0]["loc"], json!(["path", "b"]));
    server.shutdown().await;
}

/// Reports its own drop: the deployment's shutdown hook.
struct Hooked(tokio::sync::mpsc::UnboundedSender<&'static str>);

impl Drop for Hooked {
    fn drop(&mut self) {
        let _ = self.0.send("shutdown hook ran");
    }
}

#[tokio::test]
async fn plain_axum_router_with_state_and_layers_and_shutdown_hook() {
    use axum::routing::get as axum_get;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Deployment::new("Plain").bind(move || {
        let hooked = Arc::new(Hooked(tx.clone()));
        axum::Router::new()
            .route(
                "/",
                axum_get(|State(h): State<Arc<Hooked>>| async move {
                    format!("plain {}", Arc::strong_count(&h) > 0)
                }),
            )
            .with_state(hooked)
            .layer(axum::middleware::map_response(
                |mut r: axum::response::Response| async move {
                    r.headers_mut().insert("x-layer", "on".parse().unwrap());
                    r
                },
            ))
    });
    let (server, base) = start(Serve::new().app(Application::router(app).route_prefix("/p"))).await;
    let r = client().get(format!("{base}/p")).send().await.unwrap();
    assert_eq!(r.headers()["x-layer"], "on");
    assert_eq!(r.text().await.unwrap(), "plain true");
    let r = client()
        .get(format!("{base}/p/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a plain axum router has no document");
    assert!(rx.try_recv().is_err());
    server.shutdown().await;
    assert_eq!(rx.recv().await, Some("shutdown hook ran"));
}
