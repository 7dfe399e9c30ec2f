//! Load client of the `soak_mix` and `overload` scenarios (server: `fs_mixed`). One thread (a
//! current-thread tokio runtime, like `wrk -t1`), HTTP/1.1 keep-alive connections, closed loop.
//!
//! `soak_mix mix PORT REQUESTS CONNECTIONS`: `CONNECTIONS` workers share `REQUESTS` operations,
//! taken in turn from four kinds: `POST /mix/json` (body checked), `GET /mix/stream` (all 10
//! chunks read and checked), a request cancelled mid-flight (`GET /mix/hold` on a fresh
//! connection, closed once its first chunk arrived), and one WebSocket message echoed on the
//! worker's `/ws` socket. Prints
//! `FSMIX ops=<n> json=<n> stream=<n> cancelled=<n> ws=<n> errors=<n> secs=<s> first_error=<..>`.
//!
//! `soak_mix overload PORT SECONDS CONNECTIONS`: opens `CONNECTIONS` connections (all before the
//! clock starts), then each sends `GET /bounded/` in a closed loop for `SECONDS`. Prints
//! `FSOVER ok=<n> shed=<n> errors=<n> ok_p50_us=.. ok_p99_us=.. shed_p50_us=.. shed_p99_us=..
//! secs=<s>`, where `shed` counts 503s carrying `Retry-After`, and `errors` anything else
//! (other statuses, failed connections).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The kinds of operation to cycle through: all four (0 json, 1 stream, 2 cancelled, 3 ws), or
/// those named in `SOAK_MIX_KINDS` (e.g. `cancelled` or `json,ws`), to find which kind a
/// memory change comes with.
fn kinds() -> Vec<u8> {
    let names = ["json", "stream", "cancelled", "ws"];
    let picked: Vec<u8> = std::env::var("SOAK_MIX_KINDS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|k| names.iter().position(|n| *n == k.trim()))
        .map(|k| k as u8)
        .collect();
    if picked.is_empty() {
        vec![0, 1, 2, 3]
    } else {
        picked
    }
}

/// Sends one request; the status, `Retry-After` presence and the whole body.
async fn send(
    sender: &mut Sender,
    addr: &str,
    method: &str,
    path: &str,
    body: &'static str,
) -> Result<(u16, bool, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, retry_after, body))
}

#[derive(Default)]
struct Mix {
    json: u64,
    stream: u64,
    cancelled: u64,
    ws: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Mix {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

const STREAM_BODY: &str =
    "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\nchunk 5\nchunk 6\nchunk 7\nchunk 8\nchunk 9\n";

/// A request cancelled mid-flight: sent on its own connection, which is closed as soon as the
/// first chunk of the (endless) response arrived.
async fn cancelled(addr: &str) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.write_all(format!("GET /mix/hold HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(512);
    while !buf.windows(7).any(|w| w == b"started") {
        if tcp.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("hold: closed before its first chunk".into());
        }
    }
    Ok(())
}

async fn mix_worker(
    addr: String,
    next: Rc<RefCell<u64>>,
    total: u64,
    tally: Rc<RefCell<Mix>>,
) -> Result<(), String> {
    let kinds = kinds();
    let mut http = connect(&addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        TcpStream::connect(&addr).await.map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|e| format!("ws connect: {e}"))?;
    loop {
        let i = {
            let mut n = next.borrow_mut();
            if *n >= total {
                break;
            }
            *n += 1;
            *n - 1
        };
        let outcome = match kinds[(i % kinds.len() as u64) as usize] {
            0 => match send(&mut http, &addr, "POST", "/mix/json", r#"{"x":[1,2,3.5]}"#).await {
                Ok((200, _, b)) if &b[..] == br#"{"n":3,"sum":6.5}"# => Ok(0),
                Ok((s, _, b)) => Err(format!("json: {s} {b:?}")),
                Err(e) => Err(format!("json: {e}")),
            },
            1 => match send(&mut http, &addr, "GET", "/mix/stream", "").await {
                Ok((200, _, b)) if &b[..] == STREAM_BODY.as_bytes() => Ok(1),
                Ok((s, _, b)) => Err(format!("stream: {s} {b:?}")),
                Err(e) => Err(format!("stream: {e}")),
            },
            2 => cancelled(&addr).await.map(|()| 2),
            _ => {
                let text = format!("message {i}");
                let sent = ws.send(Message::text(text.as_str())).await;
                match (sent, next_text(&mut ws).await) {
                    (Ok(()), Some(echo)) if echo == text => Ok(3),
                    (sent, echo) => Err(format!("ws: sent {sent:?}, echo {echo:?}")),
                }
            }
        };
        let failed = {
            let mut t = tally.borrow_mut();
            match outcome {
                Ok(kind) => {
                    match kind {
                        0 => t.json += 1,
                        1 => t.stream += 1,
                        2 => t.cancelled += 1,
                        _ => t.ws += 1,
                    }
                    false
                }
                Err(e) => {
                    t.error(e);
                    true
                }
            }
        };
        if failed {
            // Start again on a fresh connection.
            http = connect(&addr).await?;
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn next_text<S>(ws: &mut WebSocketStream<S>) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

async fn mix(addr: String, total: u64, conns: usize) {
    let next = Rc::new(RefCell::new(0));
    let tally = Rc::new(RefCell::new(Mix::default()));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            tokio::task::spawn_local(mix_worker(addr.clone(), next.clone(), total, tally.clone()))
        })
        .collect();
    for w in workers {
        if let Err(e) = w.await.expect("worker") {
            tally.borrow_mut().error(format!("worker gave up: {e}"));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let t = tally.borrow();
    println!(
        "FSMIX ops={} json={} stream={} cancelled={} ws={} errors={} secs={secs:.2} first_error={:?}",
        t.json + t.stream + t.cancelled + t.ws,
        t.json,
        t.stream,
        t.cancelled,
        t.ws,
        t.errors,
        t.first_error.as_deref().unwrap_or("")
    );
}

fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

#[derive(Default)]
struct Over {
    ok: Vec<Duration>,
    shed: Vec<Duration>,
    errors: u64,
}

async fn overload(addr: String, secs: f64, conns: usize) {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        match connect(&addr).await {
            Ok(s) => senders.push(s),
            Err(e) => {
                eprintln!("connecting to {addr}: {e}");
                std::process::exit(1);
            }
        }
    }
    let tally = Rc::new(RefCell::new(Over::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (addr, tally) = (addr.clone(), tally.clone());
            tokio::task::spawn_local(async move {
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let r = send(&mut sender, &addr, "GET", "/bounded/", "").await;
                    let took = t0.elapsed();
                    let mut t = tally.borrow_mut();
                    match r {
                        Ok((200, _, b)) if &b[..] == b"ok" => t.ok.push(took),
                        Ok((503, true, _)) => t.shed.push(took),
                        Ok(_) => t.errors += 1,
                        Err(_) => {
                            t.errors += 1;
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut t = tally.borrow_mut();
    t.ok.sort_unstable();
    t.shed.sort_unstable();
    println!(
        "FSOVER ok={} shed={} errors={} ok_p50_us={:.0} ok_p99_us={:.0} shed_p50_us={:.0} shed_p99_us={:.0} secs={elapsed:.2}",
        t.ok.len(),
        t.shed.len(),
        t.errors,
        percentile_us(&t.ok, 0.5),
        percentile_us(&t.ok, 0.99),
        percentile_us(&t.shed, 0.5),
        percentile_us(&t.shed, 0.99),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!(
            "usage: soak_mix mix PORT REQUESTS CONNECTIONS | soak_mix overload PORT SECONDS CONNECTIONS"
        );
        std::process::exit(2);
    };
    let [mode, port, amount, conns] = &args[..] else {
        usage()
    };
    let addr = format!("127.0.0.1:{port}");
    let conns: usize = conns.parse().unwrap_or_else(|_| usage());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    match mode.as_str() {
        "mix" => {
            let total: u64 = amount.parse().unwrap_or_else(|_| usage());
            local.block_on(&runtime, mix(addr, total, conns));
        }
        "overload" => {
            let secs: f64 = amount.parse().unwrap_or_else(|_| usage());
            local.block_on(&runtime, overload(addr, secs, conns));
        }
        _ => usage(),
    }
}
