//! LLM-style token streaming: an ingress forwards, as server-sent events, the tokens that a
//! downstream "model" deployment streams through a streaming handle.
//!
//! ```sh
//! cargo run --example sse_tokens
//! curl -N "http://127.0.0.1:8000/generate?prompt=the+quick+brown+fox"
//! # id: 0 / data: the  ...  then `event: done`
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_stream::stream;
use axum::extract::State;
use ferroserve::api::routing::get;
use ferroserve::api::{ApiIngress, ApiRouter, Query};
use ferroserve::stream::{Event, HandlesStream, KeepAlive, StreamingResponse};
use ferroserve::{Application, Deployment, DeploymentHandle, HandlerError};
use futures_util::{Stream, StreamExt};
use schemars::JsonSchema;
use serde::Deserialize;

/// The "model": echoes the prompt back one word at a time, as a token generator would.
struct Generator {
    delay: Duration,
}

struct Generate(String);

impl HandlesStream<Generate> for Generator {
    type Item = String;

    fn stream(
        self: Arc<Self>,
        Generate(prompt): Generate,
    ) -> impl Stream<Item = String> + Send + 'static {
        stream! {
            let _cancelled = ferroserve::on_cancel(|| println!("Generation cancelled."));
            for word in prompt.split_whitespace() {
                tokio::time::sleep(self.delay).await;
                yield word.to_owned();
            }
        }
    }
}

#[derive(Deserialize, JsonSchema)]
struct Prompt {
    /// The text to "complete".
    prompt: String,
}

struct Chat {
    model: DeploymentHandle<Generator>,
}

impl Chat {
    async fn generate(
        State(this): State<Arc<Self>>,
        Query(Prompt { prompt }): Query<Prompt>,
    ) -> Result<StreamingResponse, HandlerError> {
        let tokens = this.model.stream(Generate(prompt)).await?;
        let events = tokens
            .enumerate()
            .map(|(i, token)| Ok::<_, Infallible>(Event::default().id(i.to_string()).data(token)))
            .chain(futures_util::stream::once(async {
                Ok(Event::default().event("done").data("[DONE]"))
            }));
        Ok(StreamingResponse::sse(events, KeepAlive::default()))
    }
}

impl ApiIngress for Chat {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new().api_route("/generate", get(Self::generate))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let model = Deployment::new("Generator")
        .num_replicas(2)
        .bind(|| Generator {
            delay: Duration::from_millis(50),
        });
    let chat = Deployment::new("Chat")
        .with(model)
        .bind(|model| Chat { model });
    ferroserve::run(Application::api(chat))
}
