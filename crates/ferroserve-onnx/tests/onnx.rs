//! The ONNX iris classifier (`ferroserve_onnx`), served and called over HTTP.

use ferroserve::{Error, Serve, Server};
use ferroserve_onnx::{self as onnx, OnnxArgs};
use ferroserve_test_support::{client, start, Fetch};
use serde_json::{json, Value};

const IRIS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../apps/iris");

fn expected() -> Value {
    let text = std::fs::read_to_string(format!("{IRIS}/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn iris_args() -> OnnxArgs {
    let labels: Vec<String> = serde_json::from_value(expected()["labels"].clone()).unwrap();
    OnnxArgs::new(format!("{IRIS}/iris.onnx")).labels(labels)
}

async fn serve_iris(args: OnnxArgs) -> (Server, String) {
    let app = onnx::app(args)
        .expect("the app builds")
        .route_prefix("/iris");
    let (server, base) = start(Serve::new().app(app)).await;
    (server, format!("{base}/iris"))
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let response = client().post(url).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn assert_close(got: &Value, want: &Value) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_array().unwrap(), w.as_array().unwrap());
        assert_eq!(g.len(), w.len(), "row {i}");
        for (j, (g, w)) in g.iter().zip(w).enumerate() {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= 1e-4, "[{i}, {j}]: got {g}, expected {w}");
        }
    }
}

#[tokio::test]
async fn predict_matches_scikit_learn() {
    let (server, base) = serve_iris(iris_args()).await;
    let want = expected();
    let (status, got) = post(&format!("{base}/predict"), json!({"array": want["rows"]})).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["labels"], want["predicted"]);
    assert_close(&got["probabilities"], &want["probabilities"]);

    // The two rows of the README, as one request and as single 1-D rows.
    let (status, got) = post(
        &format!("{base}/predict"),
        json!({"array": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}),
    )
    .await;
    assert_eq!(
        (status, &got["labels"]),
        (200, &json!(["setosa", "virginica"]))
    );
    let (status, got) = post(
        &format!("{base}/predict"),
        json!({"array": [5.1, 3.5, 1.4, 0.2]}),
    )
    .await;
    assert_eq!((status, &got["labels"]), (200, &json!(["setosa"])));
    assert_close(&got["probabilities"], &json!([want["probabilities"][0]]));
    server.shutdown().await;
}

#[tokio::test]
async fn requests_larger_than_a_batch_are_split_and_joined() {
    let (server, base) = serve_iris(OnnxArgs {
        max_batch_size: 4,
        ..iris_args()
    })
    .await;
    let want = expected();
    // 3 copies of the 6 rows: 18 rows, 5 model runs of at most 4 rows.
    let rows: Vec<Value> = (0..3)
        .flat_map(|_| want["rows"].as_array().unwrap().clone())
        .collect();
    let probs: Vec<Value> = (0..3)
        .flat_map(|_| want["probabilities"].as_array().unwrap().clone())
        .collect();
    let (status, got) = post(&format!("{base}/predict"), json!({"array": rows})).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["labels"].as_array().unwrap().len(), 18);
    assert_close(&got["probabilities"], &Value::from(probs));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_a_422_that_says_what_was_expected() {
    let (server, base) = serve_iris(OnnxArgs {
        max_rows: 3,
        ..iris_args()
    })
    .await;
    let url = format!("{base}/predict");
    let row = json!([5.1, 3.5, 1.4, 0.2]);
    for (body, needle) in [
        (
            json!({"array": [[1, 2, 3], [4, 5, 6]]}),
            "expected shape [n, 4] (or one row of 4), got [2, 3]",
        ),
        (
            json!({"array": [[[5.1, 3.5, 1.4, 0.2]]]}),
            "expected shape [n, 4] (or one row of 4), got [1, 1, 4]",
        ),
        (
            json!({"array": [[5.1, 3.5, 1.4, 0.2], [1.0]]}),
            "ragged array",
        ),
        (
            json!({"array": []}),
            "expected at least one row of 4 features, got an empty array",
        ),
        (json!({"array": [[5.1, "3.5", 1.4, 0.2]]}), "is a string"),
        (json!({"array": [[5.1, null, 1.4, 0.2]]}), "is null"),
        (
            json!({"array": [[5.1, 3.5, 1e300, 0.2]]}),
            "element [0, 2] (1e+300) is not a finite float32",
        ),
        (
            json!({"array": [row, row, row, row]}),
            "expected at most 3 rows, got 4",
        ),
        (
            json!({"array": [[true, false, true, true]]}),
            "expected numbers",
        ),
    ] {
        let (status, v) = post(&url, body.clone()).await;
        assert_eq!(status, 422, "{body}: {v}");
        assert_eq!(
            v["detail"][0]["loc"],
            json!(["body", "array"]),
            "{body}: {v}"
        );
        let msg = v["detail"][0]["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }

    // NaN is not JSON: the body does not parse.
    let response = client()
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"array": [[5.1, NaN, 1.4, 0.2]]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["detail"][0]["type"], "json_invalid", "{v}");

    // A body without `array`, and one that is not JSON at all.
    let (status, v) = post(&url, json!({"rows": [row]})).await;
    assert_eq!(status, 422, "{v}");
    let response = client().post(&url).body("5.1,3.5").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 415);
    server.shutdown().await;
}

#[tokio::test]
async fn metadata_docs_and_openapi() {
    let (server, base) = serve_iris(iris_args()).await;
    let info: Value = client().get(format!("{base}/")).fetch_json().await;
    assert_eq!(
        info,
        json!({"model": "iris.onnx", "inputs": 4, "labels": expected()["labels"]})
    );

    let docs = client().get(format!("{base}/docs")).send().await.unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(docs.text().await.unwrap().contains("/iris/openapi.json"));

    let api: Value = client()
        .get(format!("{base}/openapi.json"))
        .fetch_json()
        .await;
    let predict = &api["paths"]["/predict"]["post"];
    assert!(predict.is_object(), "{api}");
    assert!(predict["responses"]["422"].is_object(), "{predict}");
    assert!(api["paths"]["/"]["get"].is_object(), "{api}");
    let text = api.to_string();
    assert!(
        text.contains("probabilities"),
        "the response schema: {text}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_model_path_fails_the_build_naming_the_file() {
    let err = onnx::app(OnnxArgs::new("apps/iris/missing.onnx")).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("cannot load ONNX model 'apps/iris/missing.onnx': No such file"),
        "{text}"
    );

    // Wrong labels fail the same way, before anything listens.
    let err = onnx::app(iris_args().labels(["a", "b"])).unwrap_err();
    assert!(
        err.to_string().contains("labels has 2 names but output"),
        "{err}"
    );
}

#[tokio::test]
async fn a_model_that_disappears_before_start_up_fails_it_naming_the_deployment() {
    let dir = std::env::temp_dir().join(format!("ferroserve-onnx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("iris.onnx");
    std::fs::copy(format!("{IRIS}/iris.onnx"), &path).unwrap();
    let app = onnx::app(OnnxArgs {
        model_path: path.clone(),
        ..iris_args()
    })
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    let started = Serve::new()
        .app(app)
        .host("127.0.0.1")
        .port(0)
        .start()
        .await;
    let Err(err) = started else {
        panic!("start-up succeeded without its model file");
    };
    assert!(matches!(err, Error::Startup { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("deployment 'Model'"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
}
