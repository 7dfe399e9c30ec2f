//! Client connections: the accept loop's connection cap, the requests each connection has
//! open ([`ConnState`]), and the stream wrapper that times idle and silent connections and
//! lingers after a refused body (see [`ClientStream`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use tokio::net::TcpListener;
use tokio::time::Sleep;

/// What the proxy's service tells its connection's [`ClientStream`] about the requests on it.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests open: from the service's call until the response is handed to hyper, or, for
    /// a streamed body, until the body has been sent (or dropped).
    open: AtomicUsize,
    /// A response left the request body unread (`413`): close gently.
    linger: AtomicBool,
    /// The connection was upgraded (`101`): its bytes are the application's, untimed.
    upgraded: AtomicBool,
}

impl ConnState {
    /// Counts one request as open until the returned guard (or the response
    /// [`answered`] attaches it to) is dropped.
    pub(crate) fn open(self: &Arc<Self>) -> OpenRequest {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
    }
}

/// One request counted open on its connection until dropped.
#[derive(Debug)]
pub(crate) struct OpenRequest(Arc<ConnState>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tells the connection what `response` means for it: a `413` makes it linger on close, a
/// `101` ends its timing, and a streamed body keeps the request open (so that a stream silent
/// for longer than the keep-alive timeout is not taken for an idle connection) until sent.
pub(crate) fn answered(response: Response, open: OpenRequest) -> Response {
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => open.0.linger.store(true, Ordering::Relaxed),
        StatusCode::SWITCHING_PROTOCOLS => open.0.upgraded.store(true, Ordering::Relaxed),
        _ => {}
    }
    if hyper::body::Body::size_hint(response.body())
        .exact()
        .is_some()
    {
        return response;
    }
    response.map(|body| {
        axum::body::Body::new(HeldBody {
            body,
            open: Some(open),
        })
    })
}

struct HeldBody {
    body: axum::body::Body,
    open: Option<OpenRequest>,
}

impl hyper::body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        let frame = std::task::ready!(hyper::body::Body::poll_frame(Pin::new(&mut self.body), cx));
        if frame.is_none() {
            self.open = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes said the connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Not known yet: this many bytes of the HTTP/2 preface have matched.
    Unknown(usize),
    Http1,
    Http2,
}

pin_project_lite::pin_project! {
    /// A client connection, timed by one timer that runs in periods of the keep-alive timeout
    /// from the accept, instead of a timer per request head (which costs more than routing).
    ///
    /// At the end of each period the connection is closed (reads fail with `TimedOut`) when:
    /// - its first bytes have not yet told HTTP/1.1 from HTTP/2 (nothing, or part of the
    ///   HTTP/2 preface, arrived): exactly one timeout after the accept;
    /// - HTTP/1.1: no request is open and no response byte was written during the period (nor
    ///   is a write waiting on the client): an idle keep-alive connection, or a request head
    ///   that never completes, is closed after between one and two timeouts;
    /// - HTTP/2: no request is open and no byte arrived during the period (hyper closes
    ///   nothing on its own here).
    ///
    /// A connection is never closed before one whole timeout of idleness. An upgraded
    /// connection (WebSocket) is not timed at all.
    ///
    /// Lingering close: when a response refused a body the client is still sending (`413`),
    /// closing at once would reset the connection under the client's writes, and most clients
    /// then report the reset instead of the `413`. So, as nginx does, the close sends FIN and
    /// reads and discards what the client still sends until it closes too, for at most the
    /// keep-alive timeout.
    pub(crate) struct ClientStream {
        #[pin]
        stream: tokio::net::TcpStream,
        state: Arc<ConnState>,
        timeout: Duration,
        period: Pin<Box<Sleep>>,
        protocol: Protocol,
        read_during_period: bool,
        wrote_during_period: bool,
        // A write is waiting for the client to read.
        write_blocked: bool,
        // Once the write side is shut: discarding the client's bytes until this passes.
        lingering: Option<Pin<Box<Sleep>>>,
    }
}

impl ClientStream {
    /// Wraps an accepted connection: `timeout` is the keep-alive timeout, `state` is what the
    /// service tells the connection about its requests.
    pub(crate) fn new(
        stream: tokio::net::TcpStream,
        timeout: Duration,
        state: Arc<ConnState>,
    ) -> Self {
        ClientStream {
            stream,
            state,
            timeout,
            period: Box::pin(tokio::time::sleep(timeout)),
            protocol: Protocol::Unknown(0),
            read_during_period: false,
            wrote_during_period: false,
            write_blocked: false,
            lingering: None,
        }
    }
}

/// Advances the protocol guess over newly read `bytes`.
fn sniff(protocol: Protocol, bytes: &[u8]) -> Protocol {
    let Protocol::Unknown(mut matched) = protocol else {
        return protocol;
    };
    for &b in bytes {
        if H2_PREFACE.get(matched) != Some(&b) {
            return Protocol::Http1;
        }
        matched += 1;
    }
    if matched == H2_PREFACE.len() {
        Protocol::Http2
    } else {
        Protocol::Unknown(matched)
    }
}

/// Why a connection ends at the end of a period, if it does.
fn idle_reason(
    protocol: Protocol,
    open: bool,
    read: bool,
    wrote: bool,
    write_blocked: bool,
) -> Option<&'static str> {
    match protocol {
        Protocol::Unknown(_) => Some("the client sent no request in time"),
        Protocol::Http1 if !open && !wrote && !write_blocked => {
            Some("no request on the HTTP/1.1 connection within keep_alive_timeout")
        }
        Protocol::Http2 if !open && !read => {
            Some("idle HTTP/2 connection closed after keep_alive_timeout")
        }
        _ => None,
    }
}

impl tokio::io::AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.stream.poll_read(cx, buf) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => {
                *this.protocol = sniff(*this.protocol, &buf.filled()[before..]);
                *this.read_during_period = true;
                return Poll::Ready(Ok(()));
            }
            error => return error,
        }
        // Time can end the connection only while it waits for the client.
        if this.state.upgraded.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        while this.period.as_mut().poll(cx).is_ready() {
            let reason = idle_reason(
                *this.protocol,
                this.state.open.load(Ordering::Relaxed) > 0,
                std::mem::take(this.read_during_period),
                std::mem::take(this.wrote_during_period),
                *this.write_blocked,
            );
            if let Some(reason) = reason {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    reason,
                )));
            }
            let next = tokio::time::Instant::now() + *this.timeout;
            this.period.as_mut().reset(next);
        }
        Poll::Pending
    }
}

impl tokio::io::AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.stream.poll_write(cx, buf);
        note_write(&written, this.wrote_during_period, this.write_blocked);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let written = this.stream.poll_write_vectored(cx, bufs);
        note_write(&written, this.wrote_during_period, this.write_blocked);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut this = self.project();
        if this.lingering.is_none() {
            std::task::ready!(this.stream.as_mut().poll_shutdown(cx))?;
            if !this.state.linger.load(Ordering::Relaxed) {
                return Poll::Ready(Ok(()));
            }
            *this.lingering = Some(Box::pin(tokio::time::sleep(*this.timeout)));
        }
        let Some(until) = this.lingering.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 8192];
        loop {
            if until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match tokio::io::AsyncRead::poll_read(this.stream.as_mut(), cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // The client closed (or reset): done.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Records a write's progress for the idle timing.
fn note_write(written: &Poll<std::io::Result<usize>>, wrote: &mut bool, blocked: &mut bool) {
    match written {
        Poll::Ready(Ok(n)) => {
            *wrote |= *n > 0;
            *blocked = false;
        }
        Poll::Ready(Err(_)) => *blocked = false,
        Poll::Pending => *blocked = true,
    }
}

/// The next connection once fewer than `max_connections` are open, with the slot it holds.
pub(crate) async fn accept(
    listener: &TcpListener,
    connections: &Arc<tokio::sync::Semaphore>,
) -> (
    std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
    tokio::sync::OwnedSemaphorePermit,
) {
    let permit = match connections.clone().acquire_owned().await {
        Ok(permit) => permit,
        // The semaphore is never closed; should it be, stop accepting.
        Err(_) => std::future::pending().await,
    };
    (listener.accept().await, permit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_the_protocol() {
        let unknown = Protocol::Unknown(0);
        assert_eq!(sniff(unknown, b""), unknown);
        assert_eq!(sniff(unknown, b"GET / HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(sniff(unknown, b"PRI * HTTP/2.0"), Protocol::Unknown(14));
        assert_eq!(
            sniff(Protocol::Unknown(14), b"\r\n\r\nSM\r\n\r\n"),
            Protocol::Http2
        );
        // A preface cut short by something else is HTTP/1.1 (hyper answers it 400).
        assert_eq!(sniff(Protocol::Unknown(3), b"X"), Protocol::Http1);
        // Once known, later bytes change nothing.
        assert_eq!(sniff(Protocol::Http2, b"GET"), Protocol::Http2);
        assert_eq!(sniff(Protocol::Http1, H2_PREFACE), Protocol::Http1);
    }

    #[test]
    fn a_period_ends_the_connection_only_when_idle() {
        // (protocol, request open, read, wrote, write blocked) → closes?
        let cases = [
            (Protocol::Unknown(0), false, false, false, false, true),
            (Protocol::Unknown(5), false, true, false, false, true),
            (Protocol::Http1, false, false, false, false, true),
            // Bytes of a head that never completes do not count.
            (Protocol::Http1, false, true, false, false, true),
            (Protocol::Http1, true, false, false, false, false),
            (Protocol::Http1, false, false, true, false, false),
            (Protocol::Http1, false, false, false, true, false),
            (Protocol::Http2, false, false, false, false, true),
            (Protocol::Http2, false, true, false, false, false),
            (Protocol::Http2, true, false, false, false, false),
            (Protocol::Http2, false, false, true, false, true),
        ];
        for (protocol, open, read, wrote, blocked, closes) in cases {
            let reason = idle_reason(protocol, open, read, wrote, blocked);
            assert_eq!(
                reason.is_some(),
                closes,
                "{protocol:?} open={open} read={read} wrote={wrote} blocked={blocked}: {reason:?}"
            );
        }
    }
}
