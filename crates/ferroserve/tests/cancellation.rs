//! Request cancellation end to end: client disconnects (HTTP/1.1 and HTTP/2), timeouts, cascades
//! through handle calls, requests cancelled while queued, `shield`, and blocking work.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, start, Example, Fetch};
use ferroserve::{Deployment, DeploymentHandle, HandlerError, Handles, Ingress, Request, Serve};
use tokio::sync::{mpsc, oneshot, Semaphore};

type Events = mpsc::UnboundedSender<&'static str>;

/// Reports `arrived:<name>` when a call starts and `cancelled:<name>` if it is cancelled.
fn watch(events: &Events, arrived: &'static str, cancelled: &'static str) -> impl Drop {
    let _ = events.send(arrived);
    let events = events.clone();
    ferroserve::on_cancel(move || {
        let _ = events.send(cancelled);
    })
}

struct Inner {
    events: Events,
}
struct Forever;

impl Handles<Forever> for Inner {
    type Output = ();
    async fn call(&self, _: Forever) {
        let _w = watch(&self.events, "arrived:inner", "cancelled:inner");
        std::future::pending::<()>().await
    }
}

struct Mid {
    events: Events,
    inner: DeploymentHandle<Inner>,
}

impl Handles<Forever> for Mid {
    type Output = Result<(), ferroserve::Error>;
    async fn call(&self, msg: Forever) -> Self::Output {
        let _w = watch(&self.events, "arrived:mid", "cancelled:mid");
        self.inner.remote(msg).await
    }
}

struct Front {
    events: Events,
    mid: DeploymentHandle<Mid>,
}

impl Ingress for Front {
    type Output = Result<&'static str, HandlerError>;
    async fn call(&self, _request: Request) -> Self::Output {
        let _w = watch(&self.events, "arrived:front", "cancelled:front");
        self.mid.remote(Forever).await??;
        Ok("unreachable")
    }
}

fn two_hops() -> (Serve, mpsc::UnboundedReceiver<&'static str>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (t1, t2, t3) = (tx.clone(), tx.clone(), tx);
    let inner = Deployment::new("Inner").bind(move || Inner { events: t1.clone() });
    let mid = Deployment::new("Mid").with(inner).bind(move |inner| Mid {
        events: t2.clone(),
        inner,
    });
    let front = Deployment::new("Front").with(mid).bind(move |mid| Front {
        events: t3.clone(),
        mid,
    });
    (Serve::new().app(front), rx)
}

/// Each hop of `two_hops` ran and then observed its cancellation.
const EVERY_HOP_CANCELLED: [&str; 6] = [
    "arrived:front",
    "arrived:mid",
    "arrived:inner",
    "cancelled:front",
    "cancelled:mid",
    "cancelled:inner",
];

async fn expect(rx: &mut mpsc::UnboundedReceiver<&'static str>, mut want: Vec<&'static str>) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("waiting for {want:?}, got {got:?}"))
            .unwrap();
        got.push(e);
    }
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

async fn cascade_on_client_give_up(client: reqwest::Client) {
    let (serve, mut rx) = two_hops();
    let (server, base) = start(serve).await;
    let err = client
        .get(format!("{base}/"))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    expect(&mut rx, EVERY_HOP_CANCELLED.to_vec()).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_disconnect_cancels_through_two_handle_hops() {
    cascade_on_client_give_up(common::client()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_reset_cancels_through_two_handle_hops() {
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    cascade_on_client_give_up(h2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_answers_408_and_cancels_every_hop() {
    let (serve, mut rx) = two_hops();
    let (server, base) = start(serve.request_timeout(Duration::from_millis(200))).await;
    let r = common::client()
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);
    expect(&mut rx, EVERY_HOP_CANCELLED.to_vec()).await;
    server.shutdown().await;
}

/// One slot; counts arrivals; the first request holds the slot until released.
struct Single {
    arrivals: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
}

impl Ingress for Single {
    type Output = &'static str;
    async fn call(&self, _request: Request) -> &'static str {
        self.arrivals.fetch_add(1, Ordering::SeqCst);
        self.release.acquire().await.unwrap().forget();
        "ok"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_queued_never_reaches_a_replica() {
    let arrivals = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Semaphore::new(0));
    let (a, r) = (arrivals.clone(), release.clone());
    let single = Deployment::new("Single")
        .max_ongoing_requests(1)
        .bind(move || Single {
            arrivals: a.clone(),
            release: r.clone(),
        });
    let handle = single.handle();
    let (server, base) = start(Serve::new().app(single)).await;
    let c = common::client();
    let first = tokio::spawn({
        let (c, url) = (c.clone(), format!("{base}/"));
        async move { c.get(url).fetch_text().await }
    });
    eventually("first running", || arrivals.load(Ordering::SeqCst) == 1).await;
    let queued = tokio::spawn({
        let (c, url) = (c.clone(), format!("{base}/"));
        async move { c.get(url).send().await }
    });
    eventually("second queued", || handle.num_queued() == 1).await;
    queued.abort();
    eventually("queue empty", || handle.num_queued() == 0).await;
    release.add_permits(1);
    assert_eq!(first.await.unwrap(), "ok");
    eventually("idle", || handle.num_ongoing() == 0).await;
    assert_eq!(
        arrivals.load(Ordering::SeqCst),
        1,
        "the cancelled request never ran"
    );
    server.shutdown().await;
}

/// Shields work that finishes only when the test says so, after the request is cancelled.
struct Shielded {
    events: Events,
    gate: Arc<tokio::sync::Mutex<Option<oneshot::Receiver<()>>>>,
}

impl Ingress for Shielded {
    type Output = &'static str;
    async fn call(&self, _request: Request) -> &'static str {
        let _w = watch(&self.events, "arrived", "cancelled");
        let gate = self.gate.lock().await.take().unwrap();
        let events = self.events.clone();
        ferroserve::shield(async move {
            let _ = gate.await;
            let _ = events.send("shielded work finished");
        })
        .await;
        "done"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shielded_work_finishes_after_its_request_is_cancelled() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (open, gate) = oneshot::channel();
    let gate = Arc::new(tokio::sync::Mutex::new(Some(gate)));
    let app = Deployment::new("Shielded").bind(move || Shielded {
        events: tx.clone(),
        gate: gate.clone(),
    });
    let (server, base) = start(Serve::new().app(app)).await;
    let err = common::client()
        .get(format!("{base}/"))
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    expect(&mut rx, vec!["arrived", "cancelled"]).await;
    open.send(()).unwrap();
    expect(&mut rx, vec!["shielded work finished"]).await;
    server.shutdown().await;
}

/// CPU-bound work on a blocking thread that polls the cancellation flag.
struct Blocking {
    started: mpsc::UnboundedSender<()>,
    stopped: mpsc::UnboundedSender<u64>,
}

impl Ingress for Blocking {
    type Output = String;
    async fn call(&self, request: Request) -> String {
        let ctx = request.context().clone();
        let (started, stopped) = (self.started.clone(), self.stopped.clone());
        let steps = tokio::task::spawn_blocking(move || {
            let _ = started.send(());
            let mut steps = 0u64;
            while !ctx.is_cancelled() {
                steps = steps.wrapping_add(1);
                std::hint::black_box(steps);
            }
            let _ = stopped.send(steps);
            steps
        })
        .await
        .unwrap();
        steps.to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_work_stops_when_the_request_is_cancelled() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (stopped_tx, mut stopped) = mpsc::unbounded_channel();
    let app = Deployment::new("Blocking").bind(move || Blocking {
        started: started_tx.clone(),
        stopped: stopped_tx.clone(),
    });
    let (server, base) = start(Serve::new().app(app)).await;
    let request = tokio::spawn({
        let url = format!("{base}/");
        async move { common::client().get(url).send().await }
    });
    started.recv().await.unwrap();
    request.abort();
    let steps = tokio::time::timeout(Duration::from_secs(10), stopped.recv())
        .await
        .expect("the blocking loop saw the flag and stopped")
        .unwrap();
    assert!(steps > 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cancelled_requests_leave_no_residue_and_no_task() {
    let arrivals = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Semaphore::new(0));
    let (a, r) = (arrivals.clone(), release.clone());
    let single = Deployment::new("Single")
        .max_ongoing_requests(1)
        .bind(move || Single {
            arrivals: a.clone(),
            release: r.clone(),
        });
    let handle = single.handle();
    let (server, base) = start(Serve::new().app(single)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    const BATCH: usize = 500;
    for _ in 0..10_000 / BATCH {
        let c = common::client();
        let requests: Vec<_> = (0..BATCH)
            .map(|_| {
                let (c, url) = (c.clone(), format!("{base}/"));
                tokio::spawn(async move { c.get(url).send().await })
            })
            .collect();
        eventually("the batch is running or queued", || {
            handle.num_ongoing() + handle.num_queued() == BATCH
        })
        .await;
        for r in &requests {
            r.abort();
        }
        for r in requests {
            let _ = r.await;
        }
        drop(c);
        eventually("no residue", || {
            handle.num_ongoing() == 0 && handle.num_queued() == 0
        })
        .await;
    }
    eventually("every connection and request task ended", || {
        metrics.num_alive_tasks() <= baseline
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn disconnect_example_prints_both_lines_when_the_client_gives_up() {
    let ex = Example::start("disconnect");
    let err = reqwest::Client::new()
        .get(&ex.base)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let ex = tokio::task::spawn_blocking(move || {
        assert_eq!(ex.next_stdout(), "Replica received request!");
        assert_eq!(ex.next_stdout(), "Request got cancelled!");
        // The proxy logs the disconnect with the request id.
        let logged = std::iter::from_fn(|| ex.stderr.recv_timeout(Duration::from_secs(10)).ok())
            .find(|line| {
                line.contains("Client for request ")
                    && line.ends_with(" disconnected, cancelling request.")
            });
        assert!(logged.is_some(), "disconnect logged");
        ex
    })
    .await
    .unwrap();
    drop(ex);
}

#[tokio::test]
async fn shielded_disconnect_example_still_snores_after_the_cancel() {
    let ex = Example::start("shielded_disconnect");
    let began = std::time::Instant::now();
    let err = reqwest::Client::new()
        .get(&ex.base)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let elapsed = tokio::task::spawn_blocking(move || {
        assert_eq!(ex.next_stdout(), "SnoringSleeper received request!");
        assert_eq!(ex.next_stdout(), "SnoringSleeper's request was cancelled!");
        assert_eq!(ex.next_stdout(), "ZZZ");
        began.elapsed()
    })
    .await
    .unwrap();
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
}
