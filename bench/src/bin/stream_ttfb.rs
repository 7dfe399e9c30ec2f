//! Time to first byte of a streamed (chunked) response, A against B, one request at a time.
//!
//! `stream_ttfb PORT_A PORT_B PATH N` opens one keep-alive HTTP/1.1 connection (raw TCP,
//! `TCP_NODELAY`) to `127.0.0.1:PORT_A` and one to `127.0.0.1:PORT_B`, then sends `GET PATH`
//! alternately to A and to B, N times each after N/10 unmeasured warm-up requests each, never
//! more than one request in flight. For each request it records:
//!
//! - TTFB: from just before the request is written to the first read that holds at least one
//!   byte of the first body chunk;
//! - total: from the same start to the read that completes the terminating `0` chunk.
//!
//! Every response must be `200`, chunked, and the same body as the first one of A. Prints, per
//! side, `TTFB <A|B> <n> <ttfb p50 µs> <ttfb p99 µs> <ttfb max µs> <total p50 µs> <total p99
//! µs> <body bytes> <chunks>`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Sample {
    ttfb: Duration,
    total: Duration,
    body: Vec<u8>,
    chunks: usize,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request on `conn`; reads exactly one chunked response.
fn one(conn: &mut TcpStream, request: &[u8]) -> Result<Sample, String> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut tmp = [0u8; 16384];
    let t0 = Instant::now();
    conn.write_all(request).map_err(|e| e.to_string())?;
    let mut read_more = |buf: &mut Vec<u8>| -> Result<(), String> {
        let n = conn.read(&mut tmp).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-response".into());
        }
        buf.extend_from_slice(&tmp[..n]);
        Ok(())
    };
    // Head.
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(&mut buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("not a 200: {head:?}"));
    }
    if !head.contains("transfer-encoding: chunked") {
        return Err(format!("not chunked: {head:?}"));
    }
    // Chunks.
    let mut pos = head_end;
    let mut body = Vec::new();
    let mut chunks = 0;
    let mut ttfb = None;
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf[pos..], b"\r\n") {
                break pos + i;
            }
            read_more(&mut buf)?;
        };
        let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size line {size_text:?}"))?;
        let data = line_end + 2;
        if size == 0 {
            // No trailers expected: the response ends with an empty line.
            while buf.len() < data + 2 {
                read_more(&mut buf)?;
            }
            return Ok(Sample {
                ttfb: ttfb.ok_or("empty body")?,
                total: t0.elapsed(),
                body,
                chunks,
            });
        }
        while buf.len() <= data {
            read_more(&mut buf)?;
        }
        ttfb.get_or_insert_with(|| t0.elapsed());
        while buf.len() < data + size + 2 {
            read_more(&mut buf)?;
        }
        body.extend_from_slice(&buf[data..data + size]);
        chunks += 1;
        pos = data + size + 2;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b, path, n] = args.as_slice() else {
        eprintln!("usage: stream_ttfb PORT_A PORT_B PATH N");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let ports: Vec<u16> = [a, b]
        .iter()
        .map(|p| p.parse().expect("a port number"))
        .collect();
    let mut conns: Vec<(TcpStream, Vec<u8>)> = ports
        .iter()
        .map(|&port| {
            let conn = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
                .unwrap_or_else(|e| panic!("connecting to port {port}: {e}"));
            conn.set_nodelay(true).expect("TCP_NODELAY");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
            let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            (conn, request.into_bytes())
        })
        .collect();
    let warmup = n / 10;
    let mut samples: [Vec<Sample>; 2] = [Vec::with_capacity(n), Vec::with_capacity(n)];
    let mut expected: Option<Vec<u8>> = None;
    for i in 0..warmup + n {
        for (side, (conn, request)) in conns.iter_mut().enumerate() {
            let s = one(conn, request).unwrap_or_else(|e| {
                eprintln!("side {}: {e}", ["A", "B"][side]);
                std::process::exit(1);
            });
            let expected = expected.get_or_insert_with(|| s.body.clone());
            if &s.body != expected {
                eprintln!(
                    "side {}: body differs from A's first ({} bytes vs {})",
                    ["A", "B"][side],
                    s.body.len(),
                    expected.len()
                );
                std::process::exit(1);
            }
            if i >= warmup {
                samples[side].push(s);
            }
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (side, s) in samples.iter().enumerate() {
        let mut ttfb: Vec<Duration> = s.iter().map(|x| x.ttfb).collect();
        let mut total: Vec<Duration> = s.iter().map(|x| x.total).collect();
        ttfb.sort_unstable();
        total.sort_unstable();
        println!(
            "TTFB {} {} {:.1} {:.1} {:.1} {:.1} {:.1} {} {}",
            ["A", "B"][side],
            s.len(),
            us(percentile(&ttfb, 0.5)),
            us(percentile(&ttfb, 0.99)),
            us(*ttfb.last().expect("samples")),
            us(percentile(&total, 0.5)),
            us(percentile(&total, 0.99)),
            s[0].body.len(),
            s[0].chunks,
        );
    }
}
