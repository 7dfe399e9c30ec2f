//! HTTP/2 load client over h2c with prior knowledge (the `counter_h2c` scenario's `wrk`, which
//! has no HTTP/2).
//!
//! `h2_load URL CONNECTIONS STREAMS SECONDS [EXPECTED_BODY]` opens `CONNECTIONS` TCP connections
//! to `URL` (`http://host:port/path?query`; all connected and HTTP/2-handshaken, with
//! `TCP_NODELAY`, before the clock starts) and runs `STREAMS` concurrent streams on each
//! (`hyper::client::conn::http2`, multiplexed on the one connection). Each stream, in a closed
//! loop for `SECONDS`, sends `GET URL`, reads the whole response, and sends the next. One thread
//! (a current-thread tokio runtime, like `wrk -t1`); the orchestrator runs a separate warm-up
//! invocation before each measured one, as for `wrk`.
//!
//! Prints one line in the orchestrator's format:
//! `FSBENCH <responses> <duration µs> <p50 µs> <p99 µs> <errors>`, where an error is a failed
//! request, a status other than 200, or a body different from `EXPECTED_BODY` when given
//! (compared as JSON values when both parse as JSON, else byte for byte). Latencies are of
//! the good responses only.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Whether `got` is the expected body (JSON compared as values).
fn body_ok(expected: Option<&[u8]>, got: &[u8]) -> bool {
    let Some(want) = expected else {
        return true;
    };
    match (
        serde_json::from_slice::<serde_json::Value>(want),
        serde_json::from_slice::<serde_json::Value>(got),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => want == got,
    }
}

/// One stream's closed loop: latencies of the good responses, and the error count.
async fn drive(
    mut sender: SendRequest<Empty<Bytes>>,
    uri: Uri,
    expected: Option<Bytes>,
    deadline: Instant,
) -> (Vec<Duration>, u64) {
    let mut lat = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    while Instant::now() < deadline {
        let req = Request::get(uri.clone())
            .body(Empty::new())
            .expect("a valid request");
        let t0 = Instant::now();
        if sender.ready().await.is_err() {
            errors += 1;
            break;
        }
        let resp = match sender.send_request(req).await {
            Ok(resp) => resp,
            Err(_) => {
                errors += 1;
                break;
            }
        };
        let ok_status = resp.status() == hyper::StatusCode::OK;
        let body = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                errors += 1;
                break;
            }
        };
        if ok_status && body_ok(expected.as_deref(), &body) {
            lat.push(t0.elapsed());
        } else {
            errors += 1;
        }
    }
    (lat, errors)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: h2_load URL CONNECTIONS STREAMS SECONDS [EXPECTED_BODY]");
        std::process::exit(2);
    }
    let uri: Uri = args[0].parse().expect("URL is a valid URI");
    let conns: usize = args[1].parse().expect("CONNECTIONS is a number");
    let streams: usize = args[2].parse().expect("STREAMS is a number");
    let secs: f64 = args[3].parse().expect("SECONDS is a number");
    let expected = args.get(4).map(|b| Bytes::from(b.clone()));
    let authority = uri
        .authority()
        .expect("URL has host:port")
        .as_str()
        .to_owned();

    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        let tcp = match TcpStream::connect(&authority).await {
            Ok(tcp) => tcp,
            Err(e) => {
                eprintln!("connecting to {authority}: {e}");
                std::process::exit(1);
            }
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) =
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
            {
                Ok(pair) => pair,
                Err(e) => {
                    eprintln!("HTTP/2 handshake with {authority}: {e}");
                    std::process::exit(1);
                }
            };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("connection error: {e}");
            }
        });
        senders.push(sender);
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(conns * streams);
    for sender in &senders {
        for _ in 0..streams {
            tasks.push(tokio::spawn(drive(
                sender.clone(),
                uri.clone(),
                expected.clone(),
                deadline,
            )));
        }
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("stream task");
        lat.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    drop(senders);
    lat.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "FSBENCH {} {} {:.1} {:.1} {errors}",
        lat.len(),
        elapsed.as_micros(),
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99)),
    );
}
