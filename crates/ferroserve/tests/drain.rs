//! Graceful drain under steady load: a closed-loop client keeps many keep-alive connections
//! busy while the server is told to stop. Every request the server took in is answered, new
//! connections are refused, and slow requests held by the handler finish.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, start};
use ferroserve::{Deployment, Ingress, Request, Serve};
use tokio::sync::Semaphore;

/// `/slow` waits for the gate; anything else answers at once. Counts what it took in.
struct Work {
    gate: Arc<Semaphore>,
    fast_seen: Arc<AtomicUsize>,
    slow_seen: Arc<AtomicUsize>,
}

impl Ingress for Work {
    type Output = String;
    async fn call(&self, request: Request) -> String {
        if request.path() == "/slow" {
            self.slow_seen.fetch_add(1, Ordering::SeqCst);
            self.gate.acquire().await.expect("gate open").forget();
            "slow done".to_owned()
        } else {
            self.fast_seen.fetch_add(1, Ordering::SeqCst);
            "ok".to_owned()
        }
    }
}

/// How each request of the load ended, as its client saw it.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicUsize,
    completed: AtomicUsize,
    /// Refused at connect: the listener was closed (clean; the request never left).
    refused: AtomicUsize,
    /// 503 while draining.
    unavailable: AtomicUsize,
    /// Reset or closed after the request was written, other statuses, anything else.
    broken: AtomicUsize,
}

const LOAD_CONNECTIONS: usize = 64;
const SLOW: usize = 4;

/// One closed-loop client on its own keep-alive connection: sends `GET url`, expecting
/// `expected` back, until a request fails. Returns the errors it saw that were not a clean
/// refusal.
async fn load(url: String, expected: &'static str, tally: Arc<Tally>) -> Vec<String> {
    let c = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let mut broken = Vec::new();
    loop {
        tally.sent.fetch_add(1, Ordering::SeqCst);
        match c.get(&url).send().await {
            Ok(r) if r.status() == 200 => match r.text().await {
                Ok(body) if body == expected => {
                    tally.completed.fetch_add(1, Ordering::SeqCst);
                }
                other => {
                    tally.broken.fetch_add(1, Ordering::SeqCst);
                    broken.push(format!("body: {other:?}"));
                    return broken;
                }
            },
            Ok(r) if r.status() == 503 => {
                tally.unavailable.fetch_add(1, Ordering::SeqCst);
                return broken;
            }
            Ok(r) => {
                tally.broken.fetch_add(1, Ordering::SeqCst);
                broken.push(format!("status {}", r.status()));
                return broken;
            }
            Err(e) if e.is_connect() => {
                tally.refused.fetch_add(1, Ordering::SeqCst);
                return broken;
            }
            Err(e) => {
                tally.broken.fetch_add(1, Ordering::SeqCst);
                let mut chain = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    chain.push_str(&format!(": {s}"));
                    source = s.source();
                }
                broken.push(chain);
                return broken;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_under_steady_load_answers_every_request_it_took_in() {
    let gate = Arc::new(Semaphore::new(0));
    let fast_seen = Arc::new(AtomicUsize::new(0));
    let slow_seen = Arc::new(AtomicUsize::new(0));
    let (g, f, s) = (gate.clone(), fast_seen.clone(), slow_seen.clone());
    let work = Deployment::new("Work")
        .max_ongoing_requests(1_000)
        .bind(move || Work {
            gate: g.clone(),
            fast_seen: f.clone(),
            slow_seen: s.clone(),
        });
    let (server, base) = start(
        Serve::new()
            .app(work)
            .graceful_shutdown_timeout(Duration::from_secs(30)),
    )
    .await;
    let addr = server.local_addr();

    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|_| tokio::spawn(load(format!("{base}/"), "ok", tally.clone())))
        .collect();
    let slow_client = common::client();
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let req = slow_client.get(format!("{base}/slow"));
            tokio::spawn(async move {
                let r = req.send().await.expect("a slow request is answered");
                let connection = r.headers().get("connection").cloned();
                (
                    r.status(),
                    connection,
                    r.text().await.expect("its body arrives"),
                )
            })
        })
        .collect();
    eventually("the slow requests are held", || {
        slow_seen.load(Ordering::SeqCst) == SLOW
    })
    .await;
    eventually("the load is steady", || {
        tally.completed.load(Ordering::SeqCst) >= 2_000
    })
    .await;

    // Stop mid-run.
    let stopping = tokio::spawn(server.shutdown());
    // Until the listener closes, a probe may still be accepted (or reset, if it raced the
    // close in the kernel's accept queue); after it, every connect is refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("unexpected connect error: {e}"),
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "still accepting"),
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..3 {
        let e = tokio::net::TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    }
    let mut broken = Vec::new();
    for c in clients {
        broken.extend(c.await.unwrap());
    }
    assert!(!stopping.is_finished(), "the slow requests hold the drain");

    // The held requests finish while draining.
    gate.add_permits(SLOW);
    for r in slow {
        let (status, connection, body) = r.await.unwrap();
        assert_eq!((status.as_u16(), body.as_str()), (200, "slow done"));
        assert_eq!(
            connection.as_ref().map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "a response sent while draining tells the client not to reuse its connection"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the drain ends once the held requests are done")
        .unwrap();

    let count = |n: &AtomicUsize| n.load(Ordering::SeqCst);
    eprintln!(
        "drain under load: sent {}, completed {}, refused at connect {}, 503 {}, broken {} (server took in {})",
        count(&tally.sent),
        count(&tally.completed),
        count(&tally.refused),
        count(&tally.unavailable),
        count(&tally.broken),
        count(&fast_seen),
    );
    assert!(broken.is_empty(), "requests failed mid-flight: {broken:#?}");
    assert_eq!(
        count(&tally.completed),
        count(&fast_seen),
        "every request the handler took in was answered with 200"
    );
    assert_eq!(
        count(&tally.sent),
        count(&tally.completed)
            + count(&tally.refused)
            + count(&tally.unavailable)
            + count(&tally.broken)
    );
    assert_eq!(
        count(&tally.refused),
        LOAD_CONNECTIONS,
        "each client ends refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_steady_load_breaks_no_request_and_exits_0() {
    let server = common::Example::start("counter");
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|_| {
            let url = format!("{}/?load=1", server.base);
            tokio::spawn(load(url, r#"{"load":"1"}"#, tally.clone()))
        })
        .collect();
    eventually("the load is steady", || {
        tally.completed.load(Ordering::SeqCst) >= 2_000
    })
    .await;
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let mut broken = Vec::new();
    for c in clients {
        broken.extend(c.await.unwrap());
    }
    let count = |n: &AtomicUsize| n.load(Ordering::SeqCst);
    eprintln!(
        "SIGTERM under load: sent {}, completed {}, refused at connect {}, 503 {}, broken {}",
        count(&tally.sent),
        count(&tally.completed),
        count(&tally.refused),
        count(&tally.unavailable),
        count(&tally.broken),
    );
    assert!(broken.is_empty(), "requests failed mid-flight: {broken:#?}");
    assert_eq!(
        count(&tally.refused),
        LOAD_CONNECTIONS,
        "each client ends refused"
    );
    assert_eq!(
        count(&tally.sent),
        count(&tally.completed) + LOAD_CONNECTIONS
    );
}
