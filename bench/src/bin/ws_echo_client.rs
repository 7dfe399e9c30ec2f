//! WebSocket echo load client (the `websocket_echo` scenario's `wrk`).
//!
//! `ws_echo_client URL CONNECTIONS SECONDS` opens `CONNECTIONS` WebSockets to `URL` (all before
//! the clock starts), then each connection, in a closed loop for `SECONDS`, sends a short text
//! message (`message <conn> <seq>`) and waits for its echo before sending the next. One thread
//! (a current-thread tokio runtime, like `wrk -t1`), `TCP_NODELAY` on.
//!
//! Prints one line in the orchestrator's format:
//! `FSBENCH <messages echoed> <duration µs> <p50 round trip µs> <p99 round trip µs> <errors>`,
//! where an error is a failed send, a closed connection, or an echo that differs from the
//! message (the connection is then abandoned).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Round trips of one connection, and whether it ended in an error.
async fn drive(conn: usize, mut ws: Ws, deadline: Instant) -> (Vec<Duration>, u64) {
    let mut rtts = Vec::with_capacity(1 << 16);
    let mut errors = 0;
    let mut seq = 0u64;
    'outer: while Instant::now() < deadline {
        let text = format!("message {conn} {seq}");
        let t0 = Instant::now();
        if ws.send(Message::text(text.as_str())).await.is_err() {
            errors += 1;
            break;
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(echo))) if echo.as_str() == text => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => {
                    errors += 1;
                    break 'outer;
                }
            }
        }
        rtts.push(t0.elapsed());
        seq += 1;
    }
    let _ = ws.close(None).await;
    (rtts, errors)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(conns), Some(secs)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: ws_echo_client URL CONNECTIONS SECONDS");
        std::process::exit(2);
    };
    let conns: usize = conns.parse().expect("CONNECTIONS is a number");
    let secs: f64 = secs.parse().expect("SECONDS is a number");

    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        match tokio_tungstenite::connect_async_with_config(url.as_str(), None, true).await {
            Ok((ws, _)) => sockets.push(ws),
            Err(e) => {
                eprintln!("connecting to {url}: {e}");
                std::process::exit(1);
            }
        }
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(conn, ws)| tokio::spawn(drive(conn, ws, deadline)))
        .collect();
    let mut rtts = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (r, e) = task.await.expect("connection task");
        rtts.extend(r);
        errors += e;
    }
    let elapsed = start.elapsed();
    rtts.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "FSBENCH {} {} {:.1} {:.1} {errors}",
        rtts.len(),
        elapsed.as_micros(),
        us(percentile(&rtts, 0.5)),
        us(percentile(&rtts, 0.99)),
    );
}
