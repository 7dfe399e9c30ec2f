//! WebSockets in API routes (FastAPI's `@app.websocket`), pinned to one replica.
//!
//! A WebSocket is upgraded through the proxy (HTTP/1.1 `Upgrade`) and served by the replica that
//! accepted it, for the life of the connection, counting as one ongoing request there. Text,
//! binary, ping/pong (answered automatically) and close frames with codes are supported. A
//! message larger than the limit closes the connection with code 1009 ("message too big"). A
//! client that goes away without a close frame surfaces as `None` or an error from `recv`.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::response::Response;
use http::request::Parts;

use ferroserve_core::RequestContext;

use crate::stream::PinnedSlot;

pub use axum::extract::ws::{CloseFrame, Message};

/// The default maximum size of one incoming message (and frame): 16 MiB. The server's
/// `max_websocket_message_bytes` (see [`crate::limits`]) applies; change it per route with
/// [`WebSocketUpgrade::max_message_size`].
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Extracts a WebSocket upgrade request; [`WebSocketUpgrade::on_upgrade`] answers `101` and runs
/// the handler on the upgraded connection.
pub struct WebSocketUpgrade {
    inner: axum::extract::ws::WebSocketUpgrade,
    pin: Option<PinnedSlot>,
    ctx: Option<RequestContext>,
}

impl std::fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketUpgrade").finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = axum::extract::ws::rejection::WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let max = crate::scope::limits().max_websocket_message_bytes;
        let inner = axum::extract::ws::WebSocketUpgrade::from_request_parts(parts, state)
            .await?
            .max_message_size(max)
            .max_frame_size(max);
        Ok(WebSocketUpgrade {
            inner,
            pin: parts.extensions.get::<PinnedSlot>().cloned(),
            ctx: ferroserve_core::current(),
        })
    }
}

impl WebSocketUpgrade {
    /// Sets the largest message (and frame) accepted; a larger one closes the connection with
    /// code 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.inner = self.inner.max_message_size(bytes).max_frame_size(bytes);
        self
    }

    /// Answers `101 Switching Protocols` and runs `handler` on the socket once upgraded. The
    /// handler runs under the request's context; the replica slot is held until it returns.
    pub fn on_upgrade<F, Fut>(self, handler: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let WebSocketUpgrade { inner, pin, ctx } = self;
        inner.on_upgrade(move |socket| async move {
            let _pin = pin; // released when the handler returns
            let socket = WebSocket { inner: socket };
            match ctx {
                Some(ctx) => ctx.scope(handler(socket)).await,
                None => handler(socket).await,
            }
        })
    }
}

impl aide::OperationInput for WebSocketUpgrade {
    fn operation_input(
        ctx: &mut aide::generate::GenContext,
        operation: &mut aide::openapi::Operation,
    ) {
        axum::extract::ws::WebSocketUpgrade::operation_input(ctx, operation);
    }

    /// A request that is not a WebSocket upgrade is refused, in plain text, with `400` (or
    /// `426` when its connection cannot be upgraded).
    fn inferred_early_responses(
        _ctx: &mut aide::generate::GenContext,
        _operation: &mut aide::openapi::Operation,
    ) -> Vec<(Option<u16>, aide::openapi::Response)> {
        let text = |description: &str| aide::openapi::Response {
            description: description.to_owned(),
            content: schemars::Schema::try_from(serde_json::json!({"type": "string"}))
                .ok()
                .map(|json_schema| {
                    let media = aide::openapi::MediaType {
                        schema: Some(aide::openapi::SchemaObject {
                            json_schema,
                            example: None,
                            external_docs: None,
                        }),
                        ..Default::default()
                    };
                    ("text/plain; charset=utf-8".to_owned(), media)
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        vec![
            (Some(400), text("Not a WebSocket upgrade request")),
            (Some(426), text("Upgrade Required")),
        ]
    }
}

/// An upgraded WebSocket connection.
///
/// Pings are answered automatically. When the client sends a message over the size limit,
/// [`WebSocket::recv`] closes the connection with code 1009 and returns the error; on a
/// protocol violation (unmasked frame, reserved opcode) with 1002, on text that is not UTF-8
/// with 1007.
#[derive(Debug)]
pub struct WebSocket {
    inner: axum::extract::ws::WebSocket,
}

impl WebSocket {
    /// The next message; `None` once the connection is closed (including an abrupt client
    /// drop), `Some(Err(..))` on a protocol error. Cancel safe.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        let received = self.inner.recv().await;
        if let Some(Err(e)) = &received {
            if let Some((code, reason)) = close_for(e) {
                let close = Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                }));
                let _ = self.inner.send(close).await;
            }
        }
        received
    }

    /// Sends a message (a `Message::Close` starts the closing handshake).
    pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        self.inner.send(message).await
    }

    /// The subprotocol the server selected, if any.
    pub fn protocol(&self) -> Option<&http::HeaderValue> {
        self.inner.protocol()
    }
}

/// The close frame a receive error calls for: `1009` for a message over the size limit, `1002`
/// for a protocol violation (an unmasked client frame, a reserved opcode or bit, a bad close
/// frame). `None` for I/O errors: the peer is gone.
fn close_for(error: &axum::Error) -> Option<(u16, String)> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        match e.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => return Some((1009, "message too big".into())),
            Some(tungstenite::Error::Protocol(p)) => {
                return Some((1002, format!("protocol error: {p}")))
            }
            Some(tungstenite::Error::Utf8(_)) => return Some((1007, "invalid UTF-8 text".into())),
            _ => {}
        }
        source = e.source();
    }
    None
}
