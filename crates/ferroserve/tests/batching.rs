//! Batching (`ferroserve::batch`) through real HTTP requests: concurrent callers share batches
//! and get their own results, per-item errors reach only their callers, a client that goes
//! away leaves the batch before it runs, and a broken batch fails only its own callers.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{client, start, Example};
use ferroserve::batch::{Batch, BatchError, BatchOptions, StreamingBatch};
use ferroserve::stream::StreamingResponse;
use ferroserve::{
    BoxError, Deployment, Error, HandlerError, Ingress, Reconfigure, Request, Serve, StatusCode,
};
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

/// The batches a batch function saw, in order.
type Seen = Arc<Mutex<Vec<Vec<String>>>>;

/// Answers `GET /?text=...` through its batcher, reporting each request's arrival and
/// cancellation on `events` when set.
struct Batched {
    batch: Batch<String, String>,
    events: Option<mpsc::UnboundedSender<&'static str>>,
}

impl Ingress for Batched {
    type Output = Result<String, HandlerError>;

    async fn call(&self, request: Request) -> Self::Output {
        let text = request
            .query_params()
            .get("text")
            .unwrap_or_default()
            .to_owned();
        let _watch = self.events.as_ref().map(|events| {
            let _ = events.send("arrived");
            let events = events.clone();
            ferroserve::on_cancel(move || {
                let _ = events.send("cancelled");
            })
        });
        Ok(self
            .batch
            .call(text)
            .await
            .map_err(BatchError::into_error)?)
    }
}

/// Options whose batches run only when full (the timeout is a minute), so that batch sizes do
/// not depend on how fast requests arrive.
fn full_batches_of(n: usize) -> BatchOptions {
    BatchOptions::new()
        .max_batch_size(n)
        .batch_wait_timeout_s(60.0)
}

fn serve(batch: impl Fn() -> Batch<String, String> + Send + Sync + 'static) -> Serve {
    Serve::new().app(Deployment::new("Batched").bind(move || Batched {
        batch: batch(),
        events: None,
    }))
}

async fn get(client: &reqwest::Client, base: &str, text: &str) -> (StatusCode, String) {
    let response = client
        .get(format!("{base}/"))
        .query(&[("text", text)])
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_batches_and_get_their_own_results() {
    let seen = Seen::default();
    let s = seen.clone();
    let (server, base) = start(serve(move || {
        let s = s.clone();
        full_batches_of(8)
            .build(move |texts: Vec<String>| {
                s.lock().unwrap().push(texts.clone());
                async move {
                    texts
                        .into_iter()
                        .map(|t| t.to_uppercase())
                        .collect::<Vec<_>>()
                }
            })
            .unwrap()
    }))
    .await;
    let c = client();
    let texts: Vec<String> = (0..16).map(|i| format!("text{i}")).collect();
    let answers = join_all(texts.iter().map(|t| get(&c, &base, t))).await;
    for (text, (status, body)) in texts.iter().zip(answers) {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, text.to_uppercase());
    }
    let sizes: Vec<usize> = seen.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [8, 8]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_item_errors_reach_only_their_callers() {
    let (server, base) = start(serve(|| {
        full_batches_of(4)
            .build_per_item(|texts: Vec<String>| async move {
                texts
                    .into_iter()
                    .map(|t| match t.as_str() {
                        "bad" => Err(Error::bad_request(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "'bad' cannot be generated",
                        )
                        .into()),
                        "crash" => Err(ferroserve::BoxError::from("tokenizer failed on 'crash'")),
                        _ => Ok(format!("{t}!")),
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap()
    }))
    .await;
    let c = client();
    let texts = ["ok1", "bad", "ok2", "crash"];
    let answers = join_all(texts.iter().map(|t| get(&c, &base, t))).await;
    assert_eq!(
        answers,
        [
            (StatusCode::OK, "ok1!".to_owned()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "'bad' cannot be generated".to_owned()
            ),
            (StatusCode::OK, "ok2!".to_owned()),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error".to_owned()
            ),
        ]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_clients_item_never_reaches_the_batch_function() {
    let seen = Seen::default();
    let s = seen.clone();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let app = Deployment::new("Batched").bind(move || {
        let s = s.clone();
        Batched {
            batch: full_batches_of(2)
                .build(move |texts: Vec<String>| {
                    s.lock().unwrap().push(texts.clone());
                    std::future::ready(texts)
                })
                .unwrap(),
            events: Some(events_tx.clone()),
        }
    });
    let (server, base) = start(Serve::new().app(app)).await;
    let c = client();

    // A client sends "gone", waits until its item is queued, then goes away.
    let gone = tokio::spawn({
        let (c, base) = (c.clone(), base.clone());
        async move { get(&c, &base, "gone").await }
    });
    assert_eq!(events.recv().await, Some("arrived"));
    gone.abort();
    assert_eq!(events.recv().await, Some("cancelled"));

    // Had "gone" stayed, it would have filled a batch with "first".
    let answers = join_all(["first", "second"].map(|t| get(&c, &base, t))).await;
    assert_eq!(
        answers,
        [
            (StatusCode::OK, "first".to_owned()),
            (StatusCode::OK, "second".to_owned())
        ]
    );
    let mut batches = seen.lock().unwrap().clone();
    batches.iter_mut().for_each(|batch| batch.sort());
    assert_eq!(batches, [vec!["first", "second"]]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_length_output_fails_that_batch_and_the_next_batch_works() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let (server, base) = start(serve(move || {
        let n = n.clone();
        full_batches_of(3)
            .build(move |mut texts: Vec<String>| {
                // The first batch loses an output.
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    texts.pop();
                }
                std::future::ready(texts)
            })
            .unwrap()
    }))
    .await;
    let c = client();
    let answers = join_all(["a", "b", "c"].map(|t| get(&c, &base, t))).await;
    for (status, body) in answers {
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, "Internal Server Error");
    }
    let answers = join_all(["d", "e", "f"].map(|t| get(&c, &base, t))).await;
    let bodies: Vec<String> = answers
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, StatusCode::OK);
            body
        })
        .collect();
    assert_eq!(bodies, ["d", "e", "f"]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    server.shutdown().await;
}

/// The batching options a config file's `user_config` sets.
#[derive(Deserialize)]
struct BatchConfig {
    max_batch_size: usize,
    batch_wait_timeout_s: f64,
}

impl Reconfigure for Batched {
    type Config = BatchConfig;

    async fn reconfigure(&self, config: BatchConfig) -> Result<(), BoxError> {
        self.batch.set_max_batch_size(config.max_batch_size)?;
        self.batch
            .set_batch_wait_timeout_s(config.batch_wait_timeout_s)?;
        Ok(())
    }
}

fn reconfigurable(user_config: serde_json::Value, seen: Seen) -> Serve {
    let app = Deployment::new("Batched")
        .user_config(user_config)
        .bind(move || {
            let s = seen.clone();
            Batched {
                batch: Batch::new(move |texts: Vec<String>| {
                    s.lock().unwrap().push(texts.clone());
                    std::future::ready(texts)
                }),
                events: None,
            }
        })
        .reconfigurable();
    Serve::new().app(app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_config_sets_the_batch_options_through_reconfigure() {
    let seen = Seen::default();
    let config = json!({"max_batch_size": 4, "batch_wait_timeout_s": 60.0});
    let (server, base) = start(reconfigurable(config, seen.clone())).await;
    let c = client();
    let texts: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    let answers = join_all(texts.iter().map(|t| get(&c, &base, t))).await;
    for (text, (status, body)) in texts.iter().zip(answers) {
        assert_eq!((status, &body), (StatusCode::OK, text));
    }
    let sizes: Vec<usize> = seen.lock().unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [4, 4]);
    server.shutdown().await;

    let config = json!({"max_batch_size": 0, "batch_wait_timeout_s": 0.01});
    let err = reconfigurable(config, Seen::default())
        .port(0)
        .start()
        .await
        .expect_err("a batch size of 0 fails start-up");
    assert!(
        err.to_string()
            .contains("batch: max_batch_size must be at least 1, got 0"),
        "{err}"
    );
}

/// Streams `GET /?text=...` through a streaming batcher.
struct StreamingBatched {
    batch: StreamingBatch<String, String>,
}

impl Ingress for StreamingBatched {
    type Output = StreamingResponse;

    async fn call(&self, request: Request) -> StreamingResponse {
        let text = request
            .query_params()
            .get("text")
            .unwrap_or_default()
            .to_owned();
        StreamingResponse::try_new(self.batch.stream(text))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_streaming_request_receives_its_own_outputs_of_a_shared_batch() {
    let seen = Seen::default();
    let s = seen.clone();
    let app = Deployment::new("StreamingBatched").bind(move || {
        let s = s.clone();
        StreamingBatched {
            batch: full_batches_of(3)
                .build_streaming(move |texts: Vec<String>| {
                    s.lock().unwrap().push(texts.clone());
                    futures_util::stream::iter(1..=3).map(move |step| {
                        texts
                            .iter()
                            .map(|t| format!("{t}-{step}\n"))
                            .collect::<Vec<_>>()
                    })
                })
                .unwrap(),
        }
    });
    let (server, base) = start(Serve::new().app(app)).await;
    let c = client();
    let answers = join_all(["a", "b", "c"].map(|t| get(&c, &base, t))).await;
    for (t, (status, body)) in ["a", "b", "c"].into_iter().zip(answers) {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("{t}-1\n{t}-2\n{t}-3\n"));
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batching_example_answers_each_text_and_runs_batches_larger_than_one() {
    let ex = Example::start("batching");
    let c = client();
    let texts: Vec<String> = (0..8).map(|i| format!("hello{i}")).collect();
    let answers = join_all(texts.iter().map(|t| get(&c, &ex.base, t))).await;
    for (text, (status, body)) in texts.iter().zip(answers) {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("{text}, generated"));
    }
    let (status, body) = {
        let r = c.get(format!("{}/", ex.base)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(
        (status, body.as_str()),
        (400, "missing query parameter 'text'")
    );
    let mut sizes = Vec::new();
    while sizes.iter().sum::<usize>() < texts.len() {
        let line = tokio::task::block_in_place(|| ex.next_stdout());
        let size = line
            .strip_prefix("Our input array has length: ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        sizes.push(size.parse().unwrap());
    }
    assert_eq!(sizes.iter().sum::<usize>(), 8, "batch sizes {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 4), "batch sizes {sizes:?}");
    assert!(sizes.iter().any(|&n| n > 1), "batch sizes {sizes:?}");
}
