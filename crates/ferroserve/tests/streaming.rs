//! Streaming responses, streaming handles and WebSockets through the proxy, with cancellation.

use ferroserve_test_support as common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_stream::stream;
use axum::extract::State;
use common::{client, eventually, start, Example};
use ferroserve::api::routing::get;
use ferroserve::api::{ApiIngress, ApiRouter, CloseFrame, Message, WebSocketUpgrade};
use ferroserve::stream::{HandlesStream, StreamingResponse};
use ferroserve::{Application, Deployment, DeploymentHandle, Ingress, Request, Response, Serve};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite;

type Events = mpsc::UnboundedSender<&'static str>;

/// Streams `n` chunks (forever if `None`), recording when each was produced.
struct Ticker {
    produced: Arc<Mutex<Vec<Instant>>>,
    events: Events,
    n: Option<usize>,
}

impl Ingress for Ticker {
    type Output = StreamingResponse;
    async fn call(&self, _request: Request) -> StreamingResponse {
        let (produced, events, n) = (self.produced.clone(), self.events.clone(), self.n);
        StreamingResponse::new(stream! {
            let _g = ferroserve::on_cancel(move || { let _ = events.send("stream cancelled"); });
            let mut i = 0;
            while n.is_none_or(|n| i < n) {
                produced.lock().unwrap().push(Instant::now());
                yield format!("chunk{i};");
                i += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
        .media_type("text/plain")
    }
}

type Produced = Arc<Mutex<Vec<Instant>>>;

fn ticker(
    n: Option<usize>,
) -> (
    ferroserve::BoundDeployment<Ticker>,
    Produced,
    mpsc::UnboundedReceiver<&'static str>,
) {
    let produced = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::unbounded_channel();
    let p = produced.clone();
    let d = Deployment::new("Ticker").bind(move || Ticker {
        produced: p.clone(),
        events: tx.clone(),
        n,
    });
    (d, produced, rx)
}

async fn chunks_arrive_as_produced(client: reqwest::Client) {
    let (d, produced, _rx) = ticker(Some(10));
    let handle = d.handle();
    let (server, base) = start(Serve::new().app(d)).await;
    let r = client.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    let mut body = r.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        if chunk.is_empty() {
            continue; // HTTP/2 may end the stream with an empty DATA frame
        }
        arrivals.push((Instant::now(), String::from_utf8(chunk.to_vec()).unwrap()));
        text.push_str(&arrivals.last().unwrap().1);
        if arrivals.len() == 3 {
            assert_eq!(handle.num_ongoing(), 1, "a stream holds its replica slot");
        }
    }
    let expected: String = (0..10).map(|i| format!("chunk{i};")).collect();
    assert_eq!(text, expected);
    let produced = produced.lock().unwrap().clone();
    assert_eq!(
        arrivals.len(),
        10,
        "one network chunk per produced chunk: {arrivals:?}"
    );
    for (i, ((at, chunk), made)) in arrivals.iter().zip(&produced).enumerate() {
        assert_eq!(chunk, &format!("chunk{i};"));
        let lag = at.duration_since(*made);
        assert!(
            lag < Duration::from_millis(20),
            "chunk {i} arrived {lag:?} after it was produced"
        );
    }
    eventually("slot released", || handle.num_ongoing() == 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_chunks_arrive_as_produced() {
    chunks_arrive_as_produced(client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_chunks_arrive_as_produced() {
    chunks_arrive_as_produced(
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_a_direct_stream() {
    let (d, _produced, mut rx) = ticker(None);
    let handle = d.handle();
    let (server, base) = start(Serve::new().app(d)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    assert_eq!(rx.recv().await, Some("stream cancelled"));
    eventually("slot released", || handle.num_ongoing() == 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_cuts_the_stream_and_cancels_it() {
    let (d, _produced, mut rx) = ticker(None);
    let (server, base) = start(
        Serve::new()
            .app(d)
            .request_timeout(Duration::from_millis(300)),
    )
    .await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    let mut body = r.bytes_stream();
    let mut chunks = 0;
    let ended_with_error = loop {
        match body.next().await {
            Some(Ok(_)) => chunks += 1,
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    assert!(ended_with_error, "a timed-out stream is cut, not completed");
    assert!(
        chunks >= 2,
        "some chunks arrived before the deadline ({chunks})"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(rx.recv().await, Some("stream cancelled"));
    server.shutdown().await;
}

/// A model that streams tokens forever.
struct Model {
    events: Events,
}
struct Tokens;

impl HandlesStream<Tokens> for Model {
    type Item = String;
    fn stream(self: Arc<Self>, _: Tokens) -> impl Stream<Item = String> + Send + 'static {
        stream! {
            let events = self.events.clone();
            let _g = ferroserve::on_cancel(move || { let _ = events.send("model stream cancelled"); });
            for i in 0.. {
                yield format!("t{i} ");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

struct Front {
    model: DeploymentHandle<Model>,
}

impl Ingress for Front {
    type Output = Result<StreamingResponse, ferroserve::HandlerError>;
    async fn call(&self, _request: Request) -> Self::Output {
        Ok(StreamingResponse::new(self.model.stream(Tokens).await?))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_a_stream_fed_by_a_handle() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let model = Deployment::new("Model").bind(move || Model { events: tx.clone() });
    let model_handle = model.handle();
    let front = Deployment::new("Front")
        .with(model)
        .bind(|model| Front { model });
    let front_handle = front.handle();
    let (server, base) = start(Serve::new().app(front)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"t0 ");
    assert_eq!(
        (model_handle.num_ongoing(), front_handle.num_ongoing()),
        (1, 1)
    );
    drop(body);
    assert_eq!(rx.recv().await, Some("model stream cancelled"));
    eventually("both slots released", || {
        model_handle.num_ongoing() == 0 && front_handle.num_ongoing() == 0
    })
    .await;
    server.shutdown().await;
}

/// Counts lines forever; reports how far it got when dropped.
struct Lines {
    i: usize,
    done: Option<tokio::sync::oneshot::Sender<usize>>,
}

impl Iterator for Lines {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        self.i += 1;
        Some(format!("{}\n", self.i - 1))
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(self.i);
        }
    }
}

struct Blocking {
    done: Mutex<Option<tokio::sync::oneshot::Sender<usize>>>,
}

impl Ingress for Blocking {
    type Output = StreamingResponse;
    async fn call(&self, _request: Request) -> StreamingResponse {
        let done = self.done.lock().unwrap().take();
        StreamingResponse::from_blocking_iter(Lines { i: 0, done })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_iterator_streams_and_stops_when_the_client_leaves() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let app = Deployment::new("Blocking").bind(move || Blocking {
        done: Mutex::new(tx.lock().unwrap().take()),
    });
    let (server, base) = start(Serve::new().app(app)).await;
    let r = client().get(format!("{base}/")).send().await.unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"0\n"));
    drop(body);
    let pulled = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the iterator is dropped once the client leaves")
        .unwrap();
    assert!(pulled >= 1);
    server.shutdown().await;
}

#[tokio::test]
async fn streaming_example_streams_numbers_and_rejects_bad_max() {
    let ex = Example::start("streaming");
    let r = reqwest::get(format!("{}/?max=5", ex.base)).await.unwrap();
    let started = Instant::now();
    let mut body = r.bytes_stream();
    let mut got = Vec::new();
    while let Some(chunk) = body.next().await {
        got.push((
            String::from_utf8(chunk.unwrap().to_vec()).unwrap(),
            started.elapsed(),
        ));
    }
    let texts: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["0", "1", "2", "3", "4"]);
    assert!(
        got[4].1 >= Duration::from_millis(350),
        "paced at 0.1 s: {got:?}"
    );
    let r = reqwest::get(format!("{}/?max=many", ex.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test]
async fn streaming_cancel_example_prints_when_the_client_leaves() {
    let ex = Example::start("streaming_cancel");
    let r = reqwest::get(format!("{}/", ex.base)).await.unwrap();
    let mut body = r.bytes_stream();
    for _ in 0..3 {
        body.next().await.unwrap().unwrap();
    }
    drop(body);
    let line = tokio::task::spawn_blocking(move || ex.next_stdout())
        .await
        .unwrap();
    assert_eq!(line, "Cancelled! Exiting.");
}

#[tokio::test]
async fn sse_example_streams_tokens_from_the_model_as_events() {
    let ex = Example::start("sse_tokens");
    let r = reqwest::get(format!("{}/generate?prompt=the+quick+fox", ex.base))
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert_eq!(
        text,
        "id: 0\ndata: the\n\nid: 1\ndata: quick\n\nid: 2\ndata: fox\n\nevent: done\ndata: [DONE]\n\n"
    );
}

/// Echo, plus: "bye" closes with 4000, and reports when the client went away.
struct Ws {
    events: Events,
}

impl Ws {
    async fn socket(State(this): State<Arc<Self>>, ws: WebSocketUpgrade) -> Response {
        let events = this.events.clone();
        ws.max_message_size(1024)
            .on_upgrade(move |mut ws| async move {
                loop {
                    match ws.recv().await {
                        Some(Ok(Message::Text(t))) if t.as_str() == "bye" => {
                            let _ = ws
                                .send(Message::Close(Some(CloseFrame {
                                    code: 4000,
                                    reason: "bye".into(),
                                })))
                                .await;
                            break;
                        }
                        Some(Ok(Message::Text(t))) => {
                            let _ = ws.send(Message::Text(t)).await;
                        }
                        Some(Ok(Message::Binary(b))) => {
                            let _ = ws.send(Message::Binary(b)).await;
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            let _ = events.send("client went away");
                            break;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) => {
                            let _ = events.send("socket error");
                            break;
                        }
                    }
                }
            })
    }
}

impl ApiIngress for Ws {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new().api_route("/ws", get(Self::socket))
    }
}

async fn ws_server() -> (
    ferroserve::Server,
    String,
    DeploymentHandle<Ws>,
    mpsc::UnboundedReceiver<&'static str>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let d = Deployment::new("Ws").bind(move || Ws { events: tx.clone() });
    let handle = d.handle();
    let (server, base) = start(Serve::new().app(Application::api(d).route_prefix("/chat"))).await;
    let url = format!("{}/chat/ws", base.replace("http://", "ws://"));
    (server, url, handle, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_text_and_binary_answers_pings_and_closes_with_codes() {
    let (server, url, handle, _rx) = ws_server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(
        handle.num_ongoing(),
        1,
        "the connection is pinned to one replica"
    );
    ws.send(tungstenite::Message::text("Eureka!"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::text("Eureka!")
    );
    ws.send(tungstenite::Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::binary(vec![1u8, 2, 3])
    );
    ws.send(tungstenite::Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::Pong(b"p".to_vec().into())
    );
    ws.send(tungstenite::Message::text("bye")).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        tungstenite::Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4000);
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    eventually("slot released", || handle.num_ongoing() == 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_with_1009() {
    let (server, url, _handle, _rx) = ws_server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(tungstenite::Message::text("x".repeat(4096)))
        .await
        .unwrap();
    let code = loop {
        match ws.next().await {
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
                break Some(u16::from(frame.code))
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    assert_eq!(code, Some(1009));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_client_drop_reaches_the_handler_and_frees_the_replica() {
    let (server, url, handle, mut rx) = ws_server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(tungstenite::Message::text("hi")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    drop(ws); // no close frame
    let event = rx.recv().await.unwrap();
    assert!(
        event == "client went away" || event == "socket error",
        "{event}"
    );
    eventually("slot released", || handle.num_ongoing() == 0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn websocket_echo_example_echoes() {
    let ex = Example::start("websocket_echo");
    let (mut ws, _) = tokio_tungstenite::connect_async(ex.base.replace("http://", "ws://"))
        .await
        .unwrap();
    ws.send(tungstenite::Message::text("Eureka!"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        tungstenite::Message::text("Eureka!")
    );
    ws.close(None).await.unwrap();
    let line = tokio::task::spawn_blocking(move || ex.next_stdout())
        .await
        .unwrap();
    assert_eq!(line, "Client disconnected.");
}
