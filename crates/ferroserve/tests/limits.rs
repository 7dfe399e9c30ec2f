//! Request limits (`http_options`): what a client sees when it sends too much, through raw
//! sockets, reqwest and tokio-tungstenite.

use ferroserve_test_support as common;

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use common::raw::{addr, exchange, read_response, read_to_close, PATIENCE};
use common::{client, start};
use ferroserve::adapters::{ImageToNdarray, JsonToNdarray};
use ferroserve::api::routing::{get, post};
use ferroserve::api::{ApiIngress, ApiRouter, Json};
use ferroserve::config::ServeConfig;
use ferroserve::{
    Application, Deployment, HandlerError, Ingress, Limits, Request, Serve, StreamingResponse,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Echoes the body's length (a raw-request ingress reading the whole body).
struct Raw;

impl Ingress for Raw {
    type Output = Result<String, HandlerError>;
    async fn call(&self, mut request: Request) -> Self::Output {
        Ok(request.body().await?.len().to_string())
    }
}

/// Typed routes over every kind of body reader.
struct Api;

impl Api {
    async fn json(Json(v): Json<Value>) -> Json<usize> {
        Json(v.as_str().map_or(0, str::len))
    }
    async fn ndarray(JsonToNdarray(a): JsonToNdarray) -> Json<Vec<usize>> {
        Json(a.shape().to_vec())
    }
    async fn image(ImageToNdarray(img): ImageToNdarray) -> Json<Vec<usize>> {
        Json(img.shape().to_vec())
    }
    /// Answers after 700 ms with nothing on the wire meanwhile.
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_millis(700)).await;
        "done"
    }
    /// Streams `a`, then nothing for 700 ms, then `b`.
    async fn gap() -> StreamingResponse {
        StreamingResponse::new(async_stream::stream! {
            yield "a".to_owned();
            tokio::time::sleep(Duration::from_millis(700)).await;
            yield "b".to_owned();
        })
    }
}

impl ApiIngress for Api {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new()
            .api_route("/json", post(Self::json))
            .api_route("/ndarray", post(Self::ndarray))
            .api_route("/image", post(Self::image))
            .api_route("/ws", get(common::echo_websocket))
            .api_route("/slow", get(Self::slow))
            .api_route("/gap", get(Self::gap))
    }
}

/// A server with both apps under `limits`; `keep_alive` times idle and slow clients.
async fn server(limits: Limits, keep_alive: Duration) -> (ferroserve::Server, String) {
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
            .keep_alive_timeout(keep_alive)
            .limits(limits),
    )
    .await
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

const BODY_LIMIT: u64 = 3 << 20;

/// A JSON string body of exactly `len` bytes.
fn json_of_len(len: usize) -> String {
    format!("\"{}\"", "x".repeat(len - 2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let (server, base) = server(
        limits(|l| l.max_request_body_bytes = BODY_LIMIT),
        Duration::from_secs(5),
    )
    .await;
    for (path, expect) in [
        ("/raw", ""),
        ("/api/json", ""),
        // A client that asks first gets the 413 instead of `100 Continue`.
        ("/raw", "Expect: 100-continue\r\n"),
    ] {
        // Only the head is sent: the answer cannot depend on reading the 1 GiB body.
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{expect}Content-Length: 1073741824\r\n\r\n"
        );
        let r = exchange(&base, head.as_bytes()).await.expect("an answer");
        assert_eq!(r.status, 413, "{path}: {r:?}");
        assert!(
            r.body
                .contains("1073741824 bytes, larger than the limit of 3145728 bytes"),
            "{path}: {}",
            r.body
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_refused_once_it_crosses_the_limit() {
    let (server, base) = server(
        limits(|l| l.max_request_body_bytes = 64 << 10),
        Duration::from_secs(5),
    )
    .await;
    for (path, detail_json) in [("/raw", false), ("/api/json", true)] {
        let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // 80 KiB in 8 KiB chunks, then stop sending (no terminating chunk): the server must
        // answer from the running total alone.
        let chunk = format!("2000\r\n{}\r\n", "7".repeat(0x2000));
        for _ in 0..10 {
            stream.write_all(chunk.as_bytes()).await.unwrap();
        }
        let r = read_response(&mut stream).await.expect("an answer");
        assert_eq!(r.status, 413, "{path}: {r:?}");
        assert!(
            r.body.contains("larger than the limit of 65536 bytes"),
            "{path}: {}",
            r.body
        );
        if detail_json {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            assert!(v["detail"]
                .as_str()
                .unwrap()
                .contains("max_request_body_bytes"));
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_up_to_the_limit_pass_every_reader_past_axums_own_default() {
    let (server, base) = server(
        limits(|l| l.max_request_body_bytes = BODY_LIMIT),
        Duration::from_secs(5),
    )
    .await;
    // 3 MiB: above axum's 2 MiB default, exactly at the configured limit.
    let body = json_of_len(BODY_LIMIT as usize);
    let r = client()
        .post(format!("{base}/api/json"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<usize>().await.unwrap(), BODY_LIMIT as usize - 2);
    let r = client()
        .post(format!("{base}/raw"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), BODY_LIMIT.to_string());
    // A streamed (chunked) body of the same size passes too; one byte more does not.
    for (extra, status) in [(0, 200), (1, 413)] {
        let mut bytes = body.clone().into_bytes();
        bytes.extend(std::iter::repeat_n(b' ', extra));
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            bytes.chunks(1 << 16).map(|c| Ok(c.to_vec())).collect();
        let r = client()
            .post(format!("{base}/raw"))
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{extra} bytes over");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_too_many_headers_get_431() {
    let (server, base) = server(
        limits(|l| {
            l.max_header_bytes = 16 << 10;
            l.max_headers = 20;
        }),
        Duration::from_secs(5),
    )
    .await;
    let request = |headers: &str| {
        format!("GET /-/healthz HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
    };
    let big = format!("X-Big: {}\r\n", "a".repeat(20 << 10));
    let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (name, headers) in [("one 20 KiB header", big), ("25 headers", many)] {
        let r = exchange(&base, request(&headers).as_bytes())
            .await
            .expect("an answer, not a reset");
        assert_eq!(r.status, 431, "{name}");
    }
    // Within the limits the same request passes.
    let fine: String = (0..15)
        .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(900)))
        .collect();
    let r = exchange(&base, request(&fine).as_bytes()).await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_and_idle_connections_are_closed_after_the_keep_alive_timeout() {
    let (server, base) = server(Limits::default(), Duration::from_millis(200)).await;
    let cases: [(&str, &[u8]); 4] = [
        ("sends nothing", b""),
        (
            "half a request head",
            b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n",
        ),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        ("one byte", b"G"),
    ];
    for (name, bytes) in cases {
        let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        // read_to_close fails the test if the server keeps the connection for 10 s.
        let answer = read_to_close(&mut stream).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{name}: {answer}"
        );
    }
    // An idle keep-alive connection: one request answered, then closed for idleness.
    let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
    stream
        .write_all(b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.unwrap().status, 200);
    assert!(read_to_close(&mut stream).await.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_a_byte_at_a_time_is_closed() {
    let keep_alive = Duration::from_millis(200);
    let (server, base) = server(Limits::default(), keep_alive).await;
    let stream = TcpStream::connect(addr(&base)).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // One byte every 20 ms: the 2,000-byte head would take 40 s; bytes arriving do not keep
    // an HTTP/1.1 connection that never completes a head alive.
    let head = format!("GET /-/healthz HTTP/1.1\r\nX-Pad: {}", "p".repeat(2_000));
    let trickle = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(20));
        for b in head.into_bytes() {
            interval.tick().await;
            if write.write_all(&[b]).await.is_err() {
                return;
            }
        }
    });
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut read, &mut answer),
    )
    .await;
    assert!(closed.is_ok(), "the trickling connection is still open");
    assert!(started.elapsed() >= keep_alive, "{:?}", started.elapsed());
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    trickle.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_http1_connections_outlive_the_keep_alive_timeout() {
    // Each exchange below is silent on the wire for more than three keep-alive timeouts.
    let (server, base) = server(Limits::default(), Duration::from_millis(200)).await;
    let h1 = reqwest::Client::builder().http1_only().build().unwrap();
    // A slow handler.
    let r = h1.get(format!("{base}/api/slow")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.text().await.unwrap(), "done");
    // A streamed body with a long pause between its chunks.
    let r = h1.get(format!("{base}/api/gap")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ab");
    // A WebSocket that nobody speaks on for a while.
    let url = format!("{}/api/ws", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    ws.send(tungstenite::Message::text("still here"))
        .await
        .unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "still here");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_are_closed_but_not_while_a_request_is_open() {
    let keep_alive = Duration::from_millis(200);
    let (server, base) = server(Limits::default(), keep_alive).await;
    // A request open for more than three keep-alive timeouts, with no byte on the wire
    // meanwhile, is answered on its HTTP/2 connection.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{base}/api/slow")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "done");

    // A client that sends the preface and its settings, then nothing, is closed once idle.
    let mut stream = TcpStream::connect(addr(&base)).await.unwrap();
    let started = std::time::Instant::now();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let answer = read_to_close(&mut stream).await;
    assert!(started.elapsed() >= keep_alive, "{:?}", started.elapsed());
    assert_eq!(answer.get(3), Some(&4), "the server's SETTINGS came first");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let (server, base) = server(limits(|l| l.max_connections = 2), Duration::from_secs(30)).await;
    let ping = b"GET /-/healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr(&base)).await.unwrap();
        s.write_all(ping).await.unwrap();
        assert_eq!(read_response(&mut s).await.unwrap().status, 200);
        held.push(s);
    }
    // The third connection is made (the kernel queues it) but not served while two are open.
    let mut third = TcpStream::connect(addr(&base)).await.unwrap();
    third.write_all(ping).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), read_response(&mut third)).await;
    assert!(early.is_err(), "served beyond max_connections: {early:?}");
    // Closing one makes room: the waiting request is answered.
    drop(held.pop());
    let r = tokio::time::timeout(PATIENCE, read_response(&mut third))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_over_the_limit_close_with_1009() {
    let (server, base) = server(
        limits(|l| l.max_websocket_message_bytes = 1024),
        Duration::from_secs(5),
    )
    .await;
    let url = format!("{}/api/ws", base.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(tungstenite::Message::text("y".repeat(1024)))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::text("y".repeat(1024))
    );
    ws.send(tungstenite::Message::text("y".repeat(1025)))
        .await
        .unwrap();
    let code = loop {
        match ws.next().await {
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1009);
    server.shutdown().await;
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::new(w, h);
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_and_array_limits_come_from_the_server_options() {
    let (server, base) = server(
        limits(|l| {
            l.max_image_pixels = 10_000;
            l.max_array_elements = 12;
        }),
        Duration::from_secs(5),
    )
    .await;
    let upload = |bytes: Vec<u8>| {
        let form = reqwest::multipart::Form::new().part(
            "img",
            reqwest::multipart::Part::bytes(bytes).file_name("a.png"),
        );
        client().post(format!("{base}/api/image")).multipart(form)
    };
    let r = upload(png(100, 100)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = upload(png(101, 100)).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("101x100 = 10100 pixels, above the limit of 10000"),
        "{v}"
    );

    let post = |body: Value| client().post(format!("{base}/api/ndarray")).json(&body);
    let r = post(json!({"array": [[1, 2, 3], [4, 5, 6], [7, 8, 9], [1, 2, 3]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (body, loc, msg) in [
        (
            json!({"array": [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [1, 2, 3, 4, 5]]}),
            "array",
            "shape [3, 5] has 15 elements, more than the limit of 12 (max_array_elements)",
        ),
        (
            json!({"array": [1], "shape": [1000, 1000]}),
            "shape",
            "shape [1000, 1000] has 1000000 elements, more than the limit of 12",
        ),
    ] {
        let r = post(body).send().await.unwrap();
        assert_eq!(r.status(), 422);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["detail"][0]["loc"], json!(["body", loc]), "{v}");
        assert!(v["detail"][0]["msg"].as_str().unwrap().contains(msg), "{v}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_parts_are_counted_and_each_is_bounded() {
    let (server, base) = server(
        limits(|l| {
            l.max_multipart_parts = 3;
            l.max_multipart_part_bytes = 1000;
        }),
        Duration::from_secs(5),
    )
    .await;
    let upload = |parts: Vec<(&'static str, Vec<u8>)>| {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in parts {
            form = form.part(name, reqwest::multipart::Part::bytes(bytes).file_name("f"));
        }
        client().post(format!("{base}/api/image")).multipart(form)
    };
    let small = png(10, 10);
    assert!(small.len() < 1000);
    let detail = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        (status, v["detail"].as_str().unwrap_or_default().to_owned())
    };

    // Two parts skipped, then the image: within both limits.
    let r = upload(vec![
        ("a", vec![1; 999]),
        ("b", vec![]),
        ("img", small.clone()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    // A fourth part is refused before the image is reached.
    let r = upload(vec![
        ("a", vec![]),
        ("b", vec![]),
        ("c", vec![]),
        ("img", small.clone()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(
        detail(r).await,
        (
            413,
            "Multipart body has more than 3 parts (max_multipart_parts).".to_owned()
        )
    );

    // A part that is skipped still counts against the part size, and so does the image.
    for (name, parts) in [
        (
            "junk",
            vec![("junk", vec![0; 1001]), ("img", small.clone())],
        ),
        ("img", vec![("img", vec![0; 5000])]),
    ] {
        let r = upload(parts).send().await.unwrap();
        assert_eq!(
            detail(r).await,
            (
                413,
                format!(
                    "Multipart part '{name}' is larger than the limit of 1000 bytes (max_multipart_part_bytes)."
                )
            )
        );
    }

    // The server is unharmed.
    let r = upload(vec![("img", small)]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn impossible_limits_are_refused_at_start() {
    for (l, needle) in [
        (
            limits(|l| l.max_header_bytes = 100),
            "max_header_bytes must be at least 8192",
        ),
        (limits(|l| l.max_connections = 0), "max_connections"),
        (limits(|l| l.max_multipart_parts = 0), "max_multipart_parts"),
    ] {
        let e = Serve::new()
            .port(0)
            .no_admin()
            .limits(l)
            .start()
            .await
            .unwrap_err();
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn config_files_set_every_limit() {
    let yaml = "http_options:\n  max_request_body_bytes: 1024\n  max_header_bytes: 10000\n  max_headers: 7\n  max_connections: 3\n  max_websocket_message_bytes: 99\n  max_image_pixels: 5\n  max_array_elements: 6\n  max_multipart_parts: 8\n  max_multipart_part_bytes: 9\n";
    let config = ServeConfig::parse(yaml, "serve.yaml").unwrap();
    let l = config.http_options.to_options().limits;
    assert_eq!(
        (
            l.max_request_body_bytes,
            l.max_header_bytes,
            l.max_headers,
            l.max_connections,
            l.max_websocket_message_bytes,
            l.max_image_pixels,
            l.max_array_elements,
            l.max_multipart_parts,
            l.max_multipart_part_bytes
        ),
        (1024, 10000, 7, 3, 99, 5, 6, 8, 9)
    );
    let defaults = ServeConfig::parse("{}", "serve.yaml").unwrap();
    assert_eq!(defaults.http_options.to_options().limits, Limits::default());
    let e = ServeConfig::parse("http_options:\n  max_header_bytes: 100\n", "serve.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("http_options.max_header_bytes: must be at least 8192, got 100"),
        "{e}"
    );
}

/// A client that sends the whole body before reading (reqwest) must read the `413`, not a
/// connection reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_sending_too_much_reads_the_413() {
    let (server, base) = server(
        limits(|l| l.max_request_body_bytes = 64 << 10),
        Duration::from_secs(5),
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for size in [65 << 10, 1 << 20, 8 << 20] {
        for (path, client) in [
            ("/raw", client()),
            ("/api/json", client()),
            ("/raw", h2.clone()),
            ("/api/json", h2.clone()),
        ] {
            let r = client
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body(json_of_len(size))
                .send()
                .await;
            // Not a reset: the server discards the rest of the body, then closes.
            let r = r.unwrap_or_else(|e| panic!("{path} {size}: {e:?}"));
            assert_eq!(r.status(), 413, "{path} {size}");
            assert!(
                r.text().await.unwrap().contains("(max_request_body_bytes)"),
                "{path} {size}"
            );
        }
    }
    server.shutdown().await;
}
