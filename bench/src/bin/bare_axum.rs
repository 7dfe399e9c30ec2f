//! The baseline: a bare axum 0.8 server doing the same work as the ferroserve scenario servers.
//!
//! `bare_axum <SCENARIO> [PORT]` listens on `127.0.0.1:PORT` (default `$FERROSERVE_PORT`, else
//! 8000) with tokio's default multi-threaded runtime and `TCP_NODELAY` on every accepted
//! connection (as ferroserve's proxy does), one route:
//!
//! - `counter`: `GET /?a=b&c=d` → the query parameters as compact JSON (`{"a":"b","c":"d"}`).
//! - `handle_hop`: `POST /` with a JSON array of numbers → `{"sum":6.5}`, summed inline.
//! - `dag_fanout`: `POST /` with a JSON array of numbers → `{"sum":6.5,"sumsq":17.25}`: the two
//!   "models" are async functions awaited concurrently (`tokio::join!`), then combined.
//! - `fastapi_hello`: `GET /hello` → `"Hello, world!"` (JSON), from a handler that takes its
//!   object as state (Ray's `def root(self)`; ferroserve's `State<Arc<Self>>`).
//! - `streaming`: `GET /stream` → 100 chunks `chunk 00\n` … `chunk 99\n`, produced immediately,
//!   as a chunked response (`Body::from_stream`).
//! - `websocket_echo`: `GET /` upgrades to a WebSocket that echoes every text/binary message.
//! - `json_to_ndarray`: `POST /ndarray` with `{"array": [[f64, ...], ...]}` → `{"sum": ...}`,
//!   parsed straight into `Vec<Vec<f64>>` with `serde_json::from_slice` (the floor: no
//!   `serde_json::Value`, no dtype inference); body limit raised to 64 MiB.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

async fn counter(Query(params): Query<HashMap<String, String>>) -> Json<HashMap<String, String>> {
    Json(params)
}

async fn handle_hop(Json(xs): Json<Vec<f64>>) -> Json<Value> {
    Json(json!({ "sum": xs.iter().sum::<f64>() }))
}

/// The first "model" of `dag_fanout`: the sum.
async fn model_sum(xs: Vec<f64>) -> f64 {
    xs.iter().sum()
}

/// The second "model" of `dag_fanout`: the sum of squares.
async fn model_sumsq(xs: Vec<f64>) -> f64 {
    xs.iter().map(|x| x * x).sum()
}

async fn dag_fanout(Json(xs): Json<Vec<f64>>) -> Json<Value> {
    let (sum, sumsq) = tokio::join!(model_sum(xs.clone()), model_sumsq(xs));
    Json(json!({ "sum": sum, "sumsq": sumsq }))
}

/// The object `fastapi_hello`'s handler belongs to.
struct Hello;

/// The handler is a method of the deployment's object in Ray Serve's guide (`def root(self)`):
/// here, as in ferroserve's example, it takes that object as axum state.
async fn fastapi_hello(State(_this): State<Arc<Hello>>) -> Json<&'static str> {
    Json("Hello, world!")
}

async fn streaming() -> Response {
    let chunks = (0..100).map(|i| Ok::<_, Infallible>(Bytes::from(format!("chunk {i:02}\n"))));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("a valid response")
}

async fn websocket_echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(echo)
}

async fn echo(mut ws: WebSocket) {
    while let Some(Ok(message)) = ws.recv().await {
        let reply = match message {
            Message::Text(text) => Message::Text(text),
            Message::Binary(bytes) => Message::Binary(bytes),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue, // answered for us
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

/// The body `json_to_ndarray` receives, typed: 2-D floats.
#[derive(Deserialize)]
struct Nd {
    array: Vec<Vec<f64>>,
}

async fn json_to_ndarray(body: Bytes) -> Result<Json<Value>, (StatusCode, String)> {
    let nd: Nd = serde_json::from_slice(&body)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let sum: f64 = nd.array.iter().flatten().sum();
    Ok(Json(json!({ "sum": sum })))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "counter".to_owned());
    let port: u16 = args
        .next()
        .or_else(|| std::env::var("FERROSERVE_PORT").ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(8000);
    let app = match scenario.as_str() {
        "counter" => Router::new().route("/", get(counter)),
        "handle_hop" => Router::new().route("/", post(handle_hop)),
        "dag_fanout" => Router::new().route("/", post(dag_fanout)),
        "fastapi_hello" => Router::new()
            .route("/hello", get(fastapi_hello))
            .with_state(Arc::new(Hello)),
        "streaming" => Router::new().route("/stream", get(streaming)),
        "websocket_echo" => Router::new().route("/", get(websocket_echo)),
        "json_to_ndarray" => Router::new()
            .route("/ndarray", post(json_to_ndarray))
            .layer(DefaultBodyLimit::max(64 << 20)),
        other => {
            eprintln!(
                "unknown scenario {other:?} (expected counter, handle_hop, dag_fanout, fastapi_hello, \
                 streaming, websocket_echo or json_to_ndarray)"
            );
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("bare axum listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
