//! Raw HTTP/1.1 over a `TcpStream`: for requests no well-behaved client would send.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw exchange may take before the test fails (an upper bound, not a delay).
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A response read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (chunked bodies decoded).
    pub body: String,
}

impl RawResponse {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `host:port` of a `http://host:port` base URL.
pub fn addr(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the peer closes the connection (or resets it); fails after [`PATIENCE`].
pub async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server closed the connection");
    out
}

/// Reads exactly one response (its head, then a `Content-Length` or chunked body).
pub async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    tokio::time::timeout(PATIENCE, read_one(stream))
        .await
        .expect("the server answered in time")
}

async fn read_one(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = find("content-length") {
        let len: usize = len.parse().ok()?;
        fill(stream, &mut rest, len).await;
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let want = rest.len() + 1;
                if !fill(stream, &mut rest, want).await {
                    return None;
                }
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..line_end])
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            rest.drain(..line_end + 2);
            if size == 0 {
                break;
            }
            fill(stream, &mut rest, size + 2).await;
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        body
    } else {
        Vec::new()
    };
    Some(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Reads from `stream` until `rest` holds `want` bytes; false if the stream ended first.
async fn fill(stream: &mut TcpStream, rest: &mut Vec<u8>, want: usize) -> bool {
    let mut chunk = [0u8; 8192];
    while rest.len() < want {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Connects, writes `bytes` (ignoring a write the server cut short), and reads one response;
/// `None` if the server closed the connection without answering.
pub async fn exchange(base: &str, bytes: &[u8]) -> Option<RawResponse> {
    let mut stream = TcpStream::connect(addr(base)).await.unwrap();
    let _ = stream.write_all(bytes).await;
    read_response(&mut stream).await
}
