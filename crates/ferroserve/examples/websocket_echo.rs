//! The WebSocket example of Ray Serve's HTTP guide: `ws://localhost:8000` echoes each text message.
//!
//! ```sh
//! cargo run --example websocket_echo
//! python -c 'from websockets.sync.client import connect
//! with connect("ws://localhost:8000") as ws: ws.send("Eureka!"); print(ws.recv())'
//! ```

use std::sync::Arc;

use axum::extract::State;
use ferroserve::api::routing::get;
use ferroserve::api::{ApiIngress, ApiRouter, Message, WebSocketUpgrade};
use ferroserve::{Application, Deployment, Response};

struct EchoServer;

impl EchoServer {
    async fn echo(State(_this): State<Arc<Self>>, ws: WebSocketUpgrade) -> Response {
        ws.on_upgrade(|mut ws| async move {
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
            println!("Client disconnected.");
        })
    }
}

impl ApiIngress for EchoServer {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new().api_route("/", get(Self::echo))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Application::api(
        Deployment::new("EchoServer").bind(|| EchoServer),
    ))
}
