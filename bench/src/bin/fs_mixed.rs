//! The server of the `soak_mix` and `overload` scenarios: one ferroserve process serving four
//! kinds of traffic and a capacity-bounded deployment.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT`:
//! - `POST /mix/json` with `{"x":[numbers]}` → `{"n":len,"sum":sum}` (JSON in, JSON out);
//! - `GET /mix/stream` → `chunk 0\n` … `chunk 9\n`, streamed;
//! - `GET /mix/hold` → streams `started\n`, then holds until the client goes away (the
//!   request is cancelled mid-flight);
//! - `ws://…/ws/` echoes every text and binary message;
//! - `GET /bounded/` → `ok` after 2 ms of (async) work, on one replica with
//!   `max_ongoing_requests` 4 and `max_queued_requests` 16: everything beyond 20 in flight gets
//!   the backpressure 503.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use ferroserve::api::routing::get;
use ferroserve::api::{ApiIngress, ApiRouter, Message, WebSocketUpgrade};
use ferroserve::stream::StreamingResponse;
use ferroserve::{
    Application, Deployment, HandlerError, Ingress, IntoResponse, Json, Request, Response, Serve,
};
use futures_util::StreamExt as _;

/// JSON, streaming and held (cancelled) requests.
struct Mixed;

#[derive(serde::Deserialize)]
struct Numbers {
    x: Vec<f64>,
}

impl Ingress for Mixed {
    type Output = Result<Response, HandlerError>;

    async fn call(&self, mut request: Request) -> Self::Output {
        Ok(match request.path() {
            "/json" => {
                let Numbers { x } = request.json().await?;
                Json(serde_json::json!({"n": x.len(), "sum": x.iter().sum::<f64>()}))
                    .into_response()
            }
            "/stream" => {
                let chunks = (0..10).map(|i| format!("chunk {i}\n"));
                StreamingResponse::new(futures_util::stream::iter(chunks))
                    .media_type("text/plain")
                    .into_response()
            }
            "/hold" => {
                let held = futures_util::stream::iter(["started\n".to_owned()])
                    .chain(futures_util::stream::pending());
                StreamingResponse::new(held)
                    .media_type("text/plain")
                    .into_response()
            }
            _ => (ferroserve::StatusCode::NOT_FOUND, "no such path").into_response(),
        })
    }
}

struct EchoServer;

impl EchoServer {
    async fn echo(State(_this): State<Arc<Self>>, ws: WebSocketUpgrade) -> Response {
        ws.on_upgrade(|mut ws| async move {
            while let Some(Ok(message)) = ws.recv().await {
                let reply = match message {
                    Message::Text(text) => Message::Text(text),
                    Message::Binary(bytes) => Message::Binary(bytes),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if ws.send(reply).await.is_err() {
                    break;
                }
            }
        })
    }
}

impl ApiIngress for EchoServer {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new().api_route("/", get(Self::echo))
    }
}

/// A model with a fixed 2 ms of work per request.
struct Bounded;

impl Ingress for Bounded {
    type Output = &'static str;

    async fn call(&self, _request: Request) -> &'static str {
        tokio::time::sleep(Duration::from_millis(2)).await;
        "ok"
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::logging::init_logging();
    let port = std::env::var(ferroserve::server::PORT_ENV)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8000);
    let serve = Serve::new()
        .host("127.0.0.1")
        .port(port)
        .app(
            Application::new(Deployment::new("Mixed").bind(|| Mixed))
                .name("mixed")
                .route_prefix("/mix"),
        )
        .app(
            Application::api(Deployment::new("EchoServer").bind(|| EchoServer))
                .name("ws")
                .route_prefix("/ws"),
        )
        .app(
            Application::new(
                Deployment::new("Bounded")
                    .max_ongoing_requests(4)
                    .max_queued_requests(16)
                    .bind(|| Bounded),
            )
            .name("bounded")
            .route_prefix("/bounded"),
        );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve.run())
}
