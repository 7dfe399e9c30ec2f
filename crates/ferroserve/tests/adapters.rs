//! HTTP adapters and the DAG driver, through real clients.

use ferroserve_test_support as common;

use std::io::Cursor;

use common::{client, start, Example, Fetch};
use ferroserve::adapters::{JsonRequest, JsonToNdarrayOf, StarletteRequest};
use ferroserve::dag::{DagDriver, InputNode};
use ferroserve::{Deployment, Handles, Serve};
use serde_json::{json, Value};

async fn post_json(url: &str, body: Value) -> (u16, Value) {
    let r = client().post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn ndarray_adapters_convert_and_explain_bad_input() {
    let ex = Example::start("adapters");
    let url = format!("{}/ndarray", ex.base);
    let (s, v) = post_json(&url, json!({"array": [[1, 2], [3, 4]], "dtype": "float32"})).await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"shape": [2, 2], "dtype": "float32", "sum": 10.0})
        )
    );
    let (_, v) = post_json(&url, json!({"array": [1, 2, 3, 4, 5, 6], "shape": [3, 2]})).await;
    assert_eq!(v, json!({"shape": [3, 2], "dtype": "int64", "sum": 21}));
    let (_, v) = post_json(&url, json!({"array": [true, false, true], "dtype": "bool"})).await;
    assert_eq!(v, json!({"shape": [3], "dtype": "bool", "sum": 2}));
    for (body, loc, needle) in [
        (json!({"array": [[1, 2], [3]]}), "array", "ragged array"),
        (
            json!({"array": [1, 2, 3], "shape": [2, 2]}),
            "shape",
            "cannot reshape array of size 3 into shape [2, 2]",
        ),
        (
            json!({"array": [1], "dtype": "complex128"}),
            "dtype",
            "unknown dtype 'complex128'",
        ),
        (
            json!({"array": [256], "dtype": "uint8"}),
            "array",
            "does not fit dtype uint8",
        ),
        (
            json!({"array": [1], "shape": [u64::MAX, 2]}),
            "shape",
            "overflows",
        ),
        (json!({"array": ["a"]}), "array", "is a string"),
    ] {
        let (s, v) = post_json(&url, body.clone()).await;
        assert_eq!(s, 422, "{body}");
        assert_eq!(v["detail"][0]["loc"], json!(["body", loc]), "{body}");
        let msg = v["detail"][0]["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let (s, v) = post_json(&url, json!({"shape": [1]})).await;
    assert_eq!(
        (s, &v["detail"][0]["loc"]),
        (422, &json!(["body", "array"]))
    );

    let multi = format!("{}/multi_ndarray", ex.base);
    let (s, v) = post_json(
        &multi,
        json!({"a": {"array": [1, 2]}, "b": {"array": [[0.5]], "dtype": "float64"}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"a": {"shape": [2], "dtype": "int64", "sum": 3}, "b": {"shape": [1, 1], "dtype": "float64", "sum": 0.5}})
    );
    let (s, v) = post_json(
        &multi,
        json!({"a": {"array": [1]}, "b": {"array": [1], "dtype": "x"}}),
    )
    .await;
    assert_eq!(
        (s, &v["detail"][0]["loc"]),
        (422, &json!(["body", "b", "dtype"]))
    );
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([x as u8, y as u8, 0, 255]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([x as u8, 9, 9]));
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
        .unwrap();
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header claims `w × h` pixels, with no pixel data: a decompression bomb's shape.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    out
}

async fn upload(url: &str, field: &str, bytes: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        field.to_owned(),
        reqwest::multipart::Part::bytes(bytes).file_name("upload"),
    );
    let r = client().post(url).multipart(form).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn image_adapter_decodes_png_and_jpeg_and_refuses_bad_uploads() {
    let ex = Example::start("adapters");
    let url = format!("{}/image", ex.base);
    assert_eq!(
        upload(&url, "img", png(5, 3)).await,
        (200, json!({"shape": [3, 5, 4]}))
    );
    assert_eq!(
        upload(&url, "img", jpeg(8, 2)).await,
        (200, json!({"shape": [2, 8, 3]}))
    );
    let (s, v) = upload(&url, "img", b"plain text".to_vec()).await;
    assert_eq!((s, &v["detail"][0]["loc"]), (422, &json!(["body", "img"])));
    let (s, v) = upload(&url, "picture", png(2, 2)).await;
    assert_eq!((s, &v["detail"][0]["type"]), (422, &json!("missing")));
    let (s, v) = upload(&url, "img", png_header_only(100_000, 100_000)).await;
    assert_eq!(s, 413);
    assert_eq!(
        v["detail"],
        "image is 100000x100000 = 10000000000 pixels, above the limit of 40000000"
    );
    let r = client()
        .post(&url)
        .body("not multipart")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
}

#[tokio::test]
async fn json_raw_and_model_adapters() {
    let ex = Example::start("adapters");
    let (s, v) = post_json(&format!("{}/json", ex.base), json!({"any": [1, "json"]})).await;
    assert_eq!((s, v), (200, json!({"any": [1, "json"]})));
    let v: Value = client()
        .get(format!("{}/raw?x=1&y=a%20b", ex.base))
        .fetch_json()
        .await;
    assert_eq!(
        v,
        json!({"method": "GET", "path": "/raw", "query": {"x": "1", "y": "a b"}})
    );
    let v: Value = client().post(format!("{}/raw", ex.base)).fetch_json().await;
    assert_eq!(v["method"], "POST");
    let user = format!("{}/user", ex.base);
    let (s, v) = post_json(&user, json!({"user_id": 1, "user_name": "ada"})).await;
    assert_eq!((s, v), (200, json!({"user_id": 1, "user_name": "ada"})));
    let (s, v) = post_json(&user, json!({"user_id": "one", "user_name": "ada"})).await;
    assert_eq!(
        (s, &v["detail"][0]["loc"]),
        (422, &json!(["body", "user_id"]))
    );
    let (s, v) = post_json(&user, json!({"user_id": 1})).await;
    assert_eq!(
        (s, &v["detail"][0]["loc"]),
        (422, &json!(["body", "user_name"]))
    );
}

#[tokio::test]
async fn adapters_appear_in_the_openapi_document() {
    let ex = Example::start("adapters");
    let doc: Value = reqwest::get(format!("{}/openapi.json", ex.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let nd =
        &doc["paths"]["/ndarray"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(nd["$ref"], "#/components/schemas/NdArray");
    let schema = &doc["components"]["schemas"]["NdArray"];
    assert_eq!(schema["required"], json!(["array"]));
    assert!(schema["properties"]["shape"].is_object() && schema["properties"]["dtype"].is_object());
    let img =
        &doc["paths"]["/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert_eq!(img["properties"]["img"]["format"], "binary");
    assert!(doc["paths"]["/user"]["post"]["responses"]["422"].is_object());
    // What each adapter refuses with is declared: a body that is not JSON (415), a broken
    // multipart body (400), an image over the pixel limit (413).
    let declared = |path: &str| -> Vec<String> {
        doc["paths"][path]["post"]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(declared("/ndarray"), ["200", "415", "422"]);
    assert_eq!(declared("/json"), ["200", "415", "422"]);
    assert_eq!(declared("/image"), ["200", "400", "413", "415", "422"]);
    assert!(doc["paths"]["/raw"]["get"].is_object() && doc["paths"]["/raw"]["post"].is_object());
}

#[tokio::test]
async fn dag_ndarray_example_answers_get_and_post() {
    let ex = Example::start("dag_ndarray");
    let (s, v) = post_json(&format!("{}/", ex.base), json!({"array": [[1, 2], [2, 3]]})).await;
    assert_eq!((s, v), (200, json!(8)));
    let r = client()
        .get(format!("{}/", ex.base))
        .json(&json!({"array": [1.5, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!(3.5));
    let (s, _) = post_json(&format!("{}/", ex.base), json!({"array": [[1], [2, 3]]})).await;
    assert_eq!(s, 422);
    let r = client()
        .get(format!("{}/nope", ex.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

struct Scale(f64);
struct Apply(ndarray::ArrayD<f64>);
impl Handles<Apply> for Scale {
    type Output = ndarray::ArrayD<f64>;
    async fn call(&self, Apply(a): Apply) -> ndarray::ArrayD<f64> {
        a * self.0
    }
}

struct Total;
struct Sum(ndarray::ArrayD<f64>);
impl Handles<Sum> for Total {
    type Output = f64;
    async fn call(&self, Sum(a): Sum) -> f64 {
        a.sum()
    }
}

struct Combine;
struct Pair(f64, f64);
impl Handles<Pair> for Combine {
    type Output = Value;
    async fn call(&self, Pair(a, b): Pair) -> Value {
        json!({"a": a, "b": b, "mean": (a + b) / 2.0})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dag_driver_serves_a_chain_and_an_ensemble_on_sub_routes() {
    let double = Deployment::new("Double").bind(|| Scale(2.0));
    let triple = Deployment::new("Triple").bind(|| Scale(3.0));
    let total = Deployment::new("Total").num_replicas(2).bind(|| Total);
    let combine = Deployment::new("Combine").bind(|| Combine);

    let input = InputNode::<JsonToNdarrayOf<f64>>::new().map(|JsonToNdarrayOf(a)| a);
    // Chain: double, then sum.
    let chain = input.clone().call(&double, Apply).call(&total, Sum);
    // Ensemble: double and triple on the same input, summed, then combined.
    let a = input.clone().call(&double, Apply).call(&total, Sum);
    let b = input.call(&triple, Apply).call(&total, Sum);
    let ensemble = a.join(b).call(&combine, |(a, b)| Pair(a, b));
    let echo = InputNode::<JsonRequest>::new().map(|JsonRequest(v)| v);
    // The default adapter: the raw request.
    let method = InputNode::request().map(|StarletteRequest(r)| r.method().to_string());

    let app = DagDriver::new()
        .route("/chain", chain)
        .route("/ensemble", ensemble)
        .route("/echo", echo)
        .route("/method", method)
        .bind();
    let (server, base) = start(Serve::new().app(app)).await;
    let body = json!({"array": [1, 2, 3]});
    let (s, v) = post_json(&format!("{base}/chain"), body.clone()).await;
    assert_eq!((s, v), (200, json!(12.0)));
    let r = client()
        .get(format!("{base}/ensemble"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"a": 12.0, "b": 18.0, "mean": 15.0})
    );
    let (_, v) = post_json(&format!("{base}/echo"), json!({"k": [1]})).await;
    assert_eq!(v, json!({"k": [1]}));
    let v: Value = client().get(format!("{base}/method")).fetch_json().await;
    assert_eq!(v, json!("GET"));
    let (s, v) = post_json(
        &format!("{base}/chain"),
        json!({"array": [1], "dtype": "int64"}),
    )
    .await;
    assert_eq!(
        (s, &v["detail"][0]["loc"]),
        (422, &json!(["body", "dtype"]))
    );
    let r = client()
        .post(format!("{base}/other"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.shutdown().await;
}
