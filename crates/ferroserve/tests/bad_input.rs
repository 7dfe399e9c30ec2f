//! Bad input, sent as raw bytes where no well-behaved client would send it: every case gets the
//! right 4xx (never a 5xx) with a message that says what is wrong, or a closed connection where
//! HTTP has no answer; and the server answers a good request afterwards.

use ferroserve_test_support as common;

use std::io::Cursor;
use std::sync::Arc;

use common::raw::{addr, exchange, read_to_close, RawResponse};
use common::{client, start};
use ferroserve::adapters::{ImageToNdarray, JsonToNdarray};
use ferroserve::api::routing::get;
use ferroserve::api::routing::post;
use ferroserve::api::{ApiIngress, ApiRouter, Json, Path, Query, Valid};
use ferroserve::{Application, Deployment, HandlerError, Ingress, Request, Serve};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Ray's `__call__`: parses the body as JSON and echoes it.
struct Raw;

impl Ingress for Raw {
    type Output = Result<Json<Value>, HandlerError>;
    async fn call(&self, mut request: Request) -> Self::Output {
        Ok(Json(request.json().await?))
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema, garde::Validate)]
struct User {
    #[garde(range(min = 1))]
    user_id: i64,
    #[garde(length(min = 1))]
    user_name: String,
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Page {
    n: u32,
}

struct Api;

impl Api {
    async fn json(Json(v): Json<Value>) -> Json<Value> {
        Json(v)
    }
    async fn user(Valid(Json(u)): Valid<Json<User>>) -> String {
        u.user_name
    }
    async fn ndarray(JsonToNdarray(a): JsonToNdarray) -> Json<Vec<usize>> {
        Json(a.shape().to_vec())
    }
    async fn image(ImageToNdarray(img): ImageToNdarray) -> Json<Vec<usize>> {
        Json(img.shape().to_vec())
    }
    async fn item(Path(id): Path<u32>) -> String {
        id.to_string()
    }
    async fn page(Query(p): Query<Page>) -> String {
        p.n.to_string()
    }
    #[cfg(feature = "dataframe")]
    async fn dataframe(
        ferroserve::adapters::PandasReadJson(df): ferroserve::adapters::PandasReadJson,
    ) -> String {
        df.height().to_string()
    }
}

impl ApiIngress for Api {
    fn routes() -> ApiRouter<Arc<Self>> {
        let routes = ApiRouter::new()
            .api_route("/json", post(Self::json))
            .api_route("/user", post(Self::user))
            .api_route("/ndarray", post(Self::ndarray))
            .api_route("/image", post(Self::image))
            .api_route("/items/{id}", get(Self::item).delete(Self::item))
            .api_route("/page", get(Self::page))
            .api_route("/ws", get(common::echo_websocket));
        #[cfg(feature = "dataframe")]
        let routes = routes.api_route("/dataframe", post(Self::dataframe));
        routes
    }
}

const BODY_LIMIT: u64 = 256 << 10;

async fn server() -> (ferroserve::Server, String) {
    start(
        Serve::new()
            .app(
                Application::new(Deployment::new("Raw").bind(|| Raw))
                    .route_prefix("/raw")
                    .name("raw"),
            )
            .app(
                Application::api(Deployment::new("Api").bind(|| Api))
                    .route_prefix("/api")
                    .name("api"),
            )
            .max_request_body_bytes(BODY_LIMIT),
    )
    .await
}

/// The server still serves: a good request gets its answer.
async fn assert_alive(base: &str, after: &str) {
    let r = client()
        .post(format!("{base}/raw"))
        .body(r#"{"still":"alive"}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("server gone after {after}: {e}"));
    assert_eq!(r.status(), 200, "after {after}");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"still": "alive"}),
        "after {after}"
    );
}

/// What a case expects.
enum Expect {
    /// This status, with this fragment in the body.
    Status(u16, &'static str),
    /// This status (hyper answers with no body), or the connection closed without an answer.
    StatusOrClosed(u16),
}

/// A request with `Content-Length`, closing the connection after the answer.
fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn post_json(path: &str, body: &[u8]) -> Vec<u8> {
    request("POST", path, &[("Content-Type", "application/json")], body)
}

fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    // A valid PNG signature and IHDR claiming a huge image, and no pixel data at all.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(&width.to_be_bytes());
    png.extend_from_slice(&height.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    png
}

fn multipart(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in parts {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

fn cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use Expect::*;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes();
    let ct_multipart = "multipart/form-data; boundary=XyZ";
    let huge_head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n"
        )
        .into_bytes()
    };
    let many_headers: Vec<(String, String)> =
        (0..150).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many_headers: Vec<(&str, &str)> = many_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let big_header = "z".repeat(100 << 10);
    let mut v = vec![
        // --- JSON bodies ---
        ("malformed JSON, raw request", post_json("/raw", b"{\"a\": 1,"), Status(400, "Invalid JSON body: EOF while parsing")),
        ("malformed JSON, typed route", post_json("/api/json", b"{\"a\" 1}"), Status(422, "JSON decode error: expected `:`")),
        ("trailing garbage after JSON", post_json("/api/json", b"{} {}"), Status(422, "trailing characters")),
        ("JSON with invalid UTF-8, raw request", post_json("/raw", b"{\"a\": \"\xff\xfe\"}"), Status(400, "invalid unicode code point")),
        ("JSON with invalid UTF-8, typed route", post_json("/api/json", b"[\"\xc3\x28\"]"), Status(422, "invalid unicode code point")),
        ("lone surrogate escape", post_json("/api/json", b"[\"\\ud800\"]"), Status(422, "hex escape")),
        ("100k-deep JSON, raw request", post_json("/raw", &deep(100_000)), Status(400, "nested more than 128 levels deep")),
        ("100k-deep JSON, typed route", post_json("/api/json", &deep(100_000)), Status(422, "nested more than 128 levels deep")),
        ("deep JSON objects", post_json("/api/json", "{\"a\":".repeat(5000).as_bytes()), Status(422, "nested more than 128 levels deep")),
        ("empty JSON body", post_json("/api/json", b""), Status(422, "EOF while parsing")),
        ("validation failure", post_json("/api/user", br#"{"user_id": 0, "user_name": ""}"#), Status(422, "user_id")),
        ("wrong JSON type", post_json("/api/user", br#"{"user_id": "one", "user_name": "a"}"#), Status(422, "invalid type: string")),
        // --- content types ---
        ("wrong content type", request("POST", "/api/json", &[("Content-Type", "text/plain")], b"{}"), Status(415, "got `text/plain`")),
        ("missing content type", request("POST", "/api/json", &[], b"{}"), Status(415, "got none")),
        ("non-UTF-8 content type", request("POST", "/api/json", &[("Content-Type", "application/\u{e9}json")], b"{}"), Status(415, "Unsupported Media Type")),
        ("JSON where an image is expected", post_json("/api/image", b"{}"), Status(415, "multipart/form-data")),
        // --- sizes ---
        ("huge Content-Length, raw request", huge_head("/raw"), Status(413, "larger than the limit of 262144 bytes")),
        ("huge Content-Length, typed route", huge_head("/api/json"), Status(413, "larger than the limit of 262144 bytes")),
        ("huge chunked body", {
            let mut r = b"POST /api/json HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for _ in 0..40 { r.extend_from_slice(format!("2000\r\n{}\r\n", " ".repeat(0x2000)).as_bytes()); }
            r
        }, Status(413, "max_request_body_bytes")),
        ("huge header", request("GET", "/api/page?n=1", &[("X-Big", &big_header)], b""), StatusOrClosed(431)),
        ("too many headers", request("GET", "/api/page?n=1", &many_headers, b""), StatusOrClosed(431)),
        // --- not HTTP ---
        ("garbage bytes", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), StatusOrClosed(400)),
        ("binary zeros", vec![0u8; 4096], StatusOrClosed(400)),
        ("bad request line", b"GET\r\n\r\n".to_vec(), StatusOrClosed(400)),
        ("unknown HTTP version", b"GET / HTTP/7.3\r\nHost: t\r\n\r\n".to_vec(), StatusOrClosed(400)),
        ("header without colon", b"GET /-/healthz HTTP/1.1\r\nHost: t\r\nNoColonHere\r\n\r\n".to_vec(), StatusOrClosed(400)),
        ("control byte in a header value", b"GET /-/healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n".to_vec(), StatusOrClosed(400)),
        ("non-numeric Content-Length", b"POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n".to_vec(), StatusOrClosed(400)),
        ("two different Content-Lengths", b"POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), StatusOrClosed(400)),
        ("Content-Length and chunked (smuggling)", b"POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), StatusOrClosed(400)),
        ("bad chunk size", b"POST /raw HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(), Status(400, "Failed to read request body")),
        ("unknown transfer coding", b"POST /raw HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n{}".to_vec(), StatusOrClosed(400)),
        // --- paths and queries ---
        ("bad percent-encoding in a path parameter", request("GET", "/api/items/%ZZ", &[], b""), Status(422, "path")),
        ("percent-encoded invalid UTF-8 in a path", request("GET", "/api/items/%FF%FE", &[], b""), Status(422, "Invalid UTF-8 in `id`")),
        ("percent-encoded invalid UTF-8 in a query", request("GET", "/api/page?n=%FF", &[], b""), Status(422, "query")),
        ("bad percent-encoding in a query", request("GET", "/api/page?n=%G1", &[], b""), Status(422, "query")),
        ("missing query parameter", request("GET", "/api/page", &[], b""), Status(422, "Field required")),
        ("query value out of range", request("GET", "/api/page?n=-1", &[], b""), Status(422, "n")),
        ("path parameter out of range", request("GET", "/api/items/99999999999", &[], b""), Status(422, "path")),
        ("percent-encoded slash in a route prefix", request("GET", "/ap%69/items/1", &[], b""), Status(404, "not found")),
        ("unknown route on the proxy", request("GET", "/nowhere", &[], b""), Status(404, "Path '/nowhere' not found")),
        ("unknown route in an app", request("GET", "/api/nowhere", &[], b""), Status(404, "Not Found")),
        ("unknown internal route", request("GET", "/-/nothing", &[], b""), Status(404, "not found")),
        ("absolute-form request target", b"GET http://test/api/items/7 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_vec(), Status(200, "7")),
        ("asterisk request target", b"OPTIONS * HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".to_vec(), Status(404, "not found")),
        // --- adapters ---
        ("broken multipart", request("POST", "/api/image", &[("Content-Type", ct_multipart)], b"--XyZ\r\nContent-Disposition: form-data; name=\"img\"\r\n\r\nabc"), Status(400, "broken multipart body")),
        ("multipart without a boundary", request("POST", "/api/image", &[("Content-Type", "multipart/form-data")], b"--x--"), Status(415, "multipart/form-data")),
        ("multipart without the img field", request("POST", "/api/image", &[("Content-Type", ct_multipart)], &multipart("XyZ", &[("other", b"x")])), Status(422, "Field required")),
        ("an upload that is not an image", request("POST", "/api/image", &[("Content-Type", ct_multipart)], &multipart("XyZ", &[("img", b"GIF89a not a png")])), Status(422, "unsupported image format")),
        ("decompression-bomb PNG header", request("POST", "/api/image", &[("Content-Type", ct_multipart)], &multipart("XyZ", &[("img", &png_header_only(100_000, 100_000))])), Status(413, "100000x100000 = 10000000000 pixels")),
        ("multipart with more than 1000 parts", request("POST", "/api/image", &[("Content-Type", ct_multipart)], &multipart("XyZ", &vec![("other", &b"x"[..]); 1001])), Status(413, "Multipart body has more than 1000 parts (max_multipart_parts)")),
        ("truncated PNG", request("POST", "/api/image", &[("Content-Type", ct_multipart)], &multipart("XyZ", &[("img", &png_header_only(4, 4))])), Status(422, "could not decode the image")),
        ("ragged ndarray", post_json("/api/ndarray", br#"{"array": [[1, 2], [3]]}"#), Status(422, "ragged array")),
        ("ndarray shape overflowing usize", post_json("/api/ndarray", br#"{"array": [1], "shape": [18446744073709551615, 2]}"#), Status(422, "overflows")),
        ("ndarray shape over the element limit", post_json("/api/ndarray", br#"{"array": [1], "shape": [100000, 100000, 100000]}"#), Status(422, "shape [100000, 100000, 100000] has 1000000000000000 elements")),
        ("ndarray of strings", post_json("/api/ndarray", br#"{"array": ["a"]}"#), Status(422, "is a string")),
        ("ndarray negative shape", post_json("/api/ndarray", br#"{"array": [1], "shape": [-1]}"#), Status(422, "shape")),
        // --- methods ---
        ("unknown method on a route", request("PUT", "/api/items/1", &[], b""), Status(405, "Method Not Allowed")),
        ("made-up method", request("BREW", "/api/items/1", &[], b""), Status(405, "Method Not Allowed")),
    ];
    #[cfg(feature = "dataframe")]
    v.extend([
        (
            "dataframe with an unknown orient",
            post_json("/api/dataframe?orient=sideways", b"[]"),
            Status(422, "orient"),
        ),
        (
            "dataframe with a bad lines flag",
            post_json("/api/dataframe?lines=maybe", b"[]"),
            Status(422, "lines"),
        ),
        (
            "dataframe lines with a bad line",
            post_json(
                "/api/dataframe?orient=records&lines=true",
                b"{\"a\":1}\n{oops\n",
            ),
            Status(422, "line 2"),
        ),
        (
            "dataframe split without columns",
            post_json("/api/dataframe?orient=split", b"{\"data\": [[1]]}"),
            Status(422, "columns"),
        ),
    ]);
    #[cfg(not(feature = "dataframe"))]
    let _ = &mut v;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_clear_4xx_and_the_server_lives_on() {
    let (server, base) = server().await;
    let cases = cases();
    let mut failures = Vec::new();
    for (name, bytes, expect) in &cases {
        let response = exchange(&base, bytes).await;
        let ok = match (expect, &response) {
            (Expect::Status(status, fragment), Some(r)) => {
                r.status == *status && r.body.to_lowercase().contains(&fragment.to_lowercase())
            }
            (Expect::StatusOrClosed(status), Some(r)) => r.status == *status,
            (Expect::StatusOrClosed(_), None) => true,
            (Expect::Status(..), None) => false,
        };
        if let Some(RawResponse { status, .. }) = &response {
            assert!(*status < 500, "{name}: a server error: {response:?}");
        }
        if !ok {
            failures.push(format!("{name}: {response:?}"));
        }
        assert_alive(&base, name).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_lists_the_allowed_methods() {
    let (server, base) = server().await;
    let r = exchange(&base, &request("PUT", "/api/items/1", &[], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    let allow = r.header("allow").expect("an Allow header");
    let mut methods: Vec<&str> = allow.split(',').map(str::trim).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["DELETE", "GET", "HEAD"], "{allow}");
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"detail": "Method Not Allowed"})
    );
    server.shutdown().await;
}

/// The types of the HTTP/2 frames in `bytes`, in order.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_http2_frames_end_the_connection_not_the_server() {
    let (server, base) = server().await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // A frame header: 24-bit length, type, flags, 31-bit stream id.
    let frame = |len: u32, kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let settings = frame(0, 4, 0, 0, &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage after the preface",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        ),
        (
            "DATA on stream 0",
            [settings.clone(), frame(2, 0, 0, 0, b"hi")].concat(),
        ),
        (
            "SETTINGS with a bad length",
            frame(5, 4, 0, 0, &[0, 1, 0, 0, 0]),
        ),
        (
            "HEADERS with an undecodable block",
            [settings.clone(), frame(3, 1, 5, 1, &[0xff, 0xff, 0xff])].concat(),
        ),
        (
            "a frame larger than the maximum",
            [settings.clone(), frame(1 << 20, 0, 0, 1, &[0; 64])].concat(),
        ),
        (
            "WINDOW_UPDATE of zero on the connection",
            [settings, frame(4, 8, 0, 0, &[0, 0, 0, 0])].concat(),
        ),
    ];
    for (name, bytes) in cases {
        let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
        stream.write_all(preface).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        // The server answers with its SETTINGS and a GOAWAY, then closes; read_to_close fails
        // the test if the connection stays open.
        let answer = read_to_close(&mut stream).await;
        assert!(
            frame_types(&answer).contains(&7),
            "{name}: no GOAWAY in {answer:?}"
        );
        assert_alive(&base, name).await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_websocket_frames_close_with_1002_or_1007_and_the_server_lives_on() {
    let (server, base) = server().await;
    // Masked frames are what a client must send; each case breaks one rule.
    let cases: [(&str, &[u8], u16); 5] = [
        ("an unmasked client frame", b"\x81\x02hi", 1002),
        ("text that is not UTF-8", b"\x81\x82\0\0\0\0\xff\xfe", 1007),
        ("a reserved opcode", b"\x83\x80\0\0\0\0", 1002),
        ("a reserved bit set", b"\xc1\x80\0\0\0\0", 1002),
        ("a fragmented control frame", b"\x09\x80\0\0\0\0", 1002),
    ];
    for (name, frame, code) in cases {
        let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
        stream
            .write_all(
                b"GET /api/ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .await
            .unwrap();
        let r = common::raw::read_response(&mut stream).await.unwrap();
        assert_eq!(r.status, 101, "{name}");
        stream.write_all(frame).await.unwrap();
        let answer = read_to_close(&mut stream).await;
        // The server's close frame: 0x88, a length, then the code.
        assert!(answer.len() >= 4 && answer[0] == 0x88, "{name}: {answer:?}");
        assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), code, "{name}");
        assert_alive(&base, name).await;
    }
    // A well-behaved client is still served.
    let url = format!("{}/api/ws", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    use futures_util::SinkExt;
    ws.send(tungstenite::Message::text("ok")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::text("ok")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_image_still_decodes_after_the_bombs() {
    let (server, base) = server().await;
    let img = image::RgbImage::new(3, 2);
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let form = reqwest::multipart::Form::new().part(
        "img",
        reqwest::multipart::Part::bytes(png).file_name("a.png"),
    );
    let r = client()
        .post(format!("{base}/api/image"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!([2, 3, 3]));
    server.shutdown().await;
}
