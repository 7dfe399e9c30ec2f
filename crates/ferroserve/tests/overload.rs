//! Load far beyond capacity: a capacity-bounded deployment admits exactly what it can hold,
//! sheds the rest with a retryable 503, and drops nothing it admitted (Ray Serve's proxy leaked
//! and dropped requests under overload: ray#21425, #42144, #56361, #64181). And 10,000 client
//! connections held open at once against one server process.

use ferroserve_test_support as common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, start, Example, Fetch};
use ferroserve::{Deployment, Ingress, Request, Serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Holds every request until the test adds permits to the gate.
struct Gate {
    permits: Arc<Semaphore>,
    entered: Arc<AtomicUsize>,
}

impl Ingress for Gate {
    type Output = String;
    async fn call(&self, _request: Request) -> String {
        self.entered.fetch_add(1, Ordering::SeqCst);
        self.permits.acquire().await.expect("gate open").forget();
        "done".to_owned()
    }
}

const ONGOING: usize = 4;
const QUEUED: usize = 16;
const CONCURRENT: usize = 2_000;

/// The `serve_deployment_queued_queries` gauge of deployment `Gate` on `/metrics`.
async fn queued_gauge(base: &str) -> String {
    let text = client().get(format!("{base}/metrics")).fetch_text().await;
    text.lines()
        .find(|l| {
            l.starts_with("serve_deployment_queued_queries{") && l.contains(r#"deployment="Gate""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no queued gauge for Gate in\n{text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_requests_admit_exactly_capacity_and_drop_none_admitted() {
    let permits = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let (p, e) = (permits.clone(), entered.clone());
    let gate = Deployment::new("Gate")
        .max_ongoing_requests(ONGOING)
        .max_queued_requests(QUEUED)
        .bind(move || Gate {
            permits: p.clone(),
            entered: e.clone(),
        });
    let handle = gate.handle();
    let (server, base) = start(Serve::new().app(gate)).await;
    let c = client();

    let rejected = Arc::new(AtomicUsize::new(0));
    let requests: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (c, url, rejected) = (c.clone(), format!("{base}/"), rejected.clone());
            tokio::spawn(async move {
                let r = c.get(url).send().await.expect("every request is answered");
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").cloned();
                let body = r.text().await.expect("every body is read");
                if status == 503 {
                    rejected.fetch_add(1, Ordering::SeqCst);
                }
                (status, retry_after, body)
            })
        })
        .collect();

    // Everything beyond capacity is shed while the admitted requests are still held.
    let shed = CONCURRENT - ONGOING - QUEUED;
    let all_shed = || rejected.load(Ordering::SeqCst) == shed;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !all_shed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {shed} requests were shed",
            rejected.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.num_ongoing(), ONGOING);
    assert_eq!(handle.num_queued(), QUEUED);
    assert_eq!(entered.load(Ordering::SeqCst), ONGOING);
    assert_eq!(queued_gauge(&base).await, QUEUED.to_string());

    permits.add_permits(CONCURRENT);
    let (mut ok, mut rejected_seen) = (0, 0);
    for r in requests {
        let (status, retry_after, body) = r.await.unwrap();
        match status {
            200 => {
                assert_eq!(body, "done");
                ok += 1;
            }
            503 => {
                assert_eq!(retry_after.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
                assert_eq!(
                    body,
                    "Request dropped due to backpressure \
                     (num_queued_requests=16, max_queued_requests=16)."
                );
                rejected_seen += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert_eq!(ok, ONGOING + QUEUED, "every admitted request completed");
    assert_eq!(rejected_seen, shed);
    assert_eq!(entered.load(Ordering::SeqCst), ONGOING + QUEUED);

    eventually("the queue and the replica are empty", || {
        handle.num_queued() == 0 && handle.num_ongoing() == 0
    })
    .await;
    assert_eq!(queued_gauge(&base).await, "0");
    let fresh = c.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.text().await.unwrap(), "done");
    server.shutdown().await;
}

/// The number of open file descriptors this process may have (`/proc/self/limits`).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One keep-alive connection: connects, sends `GET /?conn=i`, reads the whole response.
async fn ask(base: &str, i: usize) -> Result<(TcpStream, String), String> {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {i}: {e}"))?;
    let request = format!("GET /?conn={i} HTTP/1.1\r\nhost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write {i}: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    loop {
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read {i}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection {i} closed after {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no content-length in {head:?}"))?;
            if body.len() >= len {
                return Ok((stream, text.into_owned()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_are_all_answered_and_a_fresh_request_still_is() {
    const CONNECTIONS: usize = 10_000;
    // The server runs in its own process (the `counter` example), so each side needs one
    // descriptor per connection, not both in this process.
    let limit = open_files_limit().expect("reads /proc/self/limits");
    assert!(
        limit > CONNECTIONS as u64 + 100,
        "this test holds {CONNECTIONS} sockets; raise `ulimit -n` (now {limit})"
    );
    let server = Example::start("counter");
    let base = server.base.clone();

    // At most 256 connects in flight, so that the listen backlog never overflows; every
    // connection stays open (idle, keep-alive) once answered, until `release`.
    let connecting = Arc::new(Semaphore::new(256));
    let answered = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let held: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (base, connecting, answered, release) = (
                base.clone(),
                connecting.clone(),
                answered.clone(),
                release.clone(),
            );
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await.unwrap();
                let released = release.notified();
                let (stream, response) = ask(&base, i).await?;
                drop(permit);
                if !response.starts_with("HTTP/1.1 200 OK")
                    || !response.ends_with(&format!(r#"{{"conn":"{i}"}}"#))
                {
                    return Err(format!("connection {i} got {response:?}"));
                }
                answered.fetch_add(1, Ordering::SeqCst);
                released.await;
                drop(stream);
                Ok::<_, String>(())
            })
        })
        .collect();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while answered.load(Ordering::SeqCst) < CONNECTIONS {
        if held.iter().any(|t| t.is_finished()) {
            break; // a connection failed: report it below
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {CONNECTIONS} connections answered",
            answered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // With every connection still open, a new client is served.
    let fresh = client()
        .get(format!("{base}/?fresh=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.text().await.unwrap(), r#"{"fresh":"1"}"#);
    release.notify_waiters();
    let mut failures = Vec::new();
    for t in held {
        if let Err(e) = t.await.unwrap() {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CONNECTIONS} connections failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(answered.load(Ordering::SeqCst), CONNECTIONS);
}
