//! Client connections: the accept loop's connection cap, and the stream wrapper that closes
//! silent and idle connections and lingers after a refused body (see [`ClientStream`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::response::Response;
use tokio::net::TcpListener;

pin_project_lite::pin_project! {
    /// A client connection, with two defences hyper lacks.
    ///
    /// First bytes in time: hyper times an HTTP/1.1 request head only once it knows the
    /// connection speaks HTTP/1.1, and learns that from the first bytes, so a client that
    /// connects and sends nothing (or part of the HTTP/2 preface) would hold its connection
    /// forever. Reads fail with `TimedOut` until the bytes read tell HTTP/1.1 from HTTP/2 (they
    /// differ from the preface, or the whole preface arrived).
    ///
    /// Idle HTTP/2 connections: hyper closes an idle HTTP/1.1 connection itself, but an
    /// HTTP/2 connection with no open stream would stay open for as long as the client likes.
    /// Once the preface has arrived, a timer runs in periods of the keep-alive timeout; when a
    /// period ends with no stream open (`streams`, kept by the proxy's service) and no byte read
    /// during it, reads fail with `TimedOut` and the connection closes: after between one and
    /// two timeouts of idleness.
    ///
    /// Lingering close: when a response refused a body the client is still sending (`413`),
    /// closing at once would reset the connection under the client's writes, and most clients
    /// then report the reset instead of the `413`. So, as nginx does, the close sends FIN and
    /// reads and discards what the client still sends until it closes too, for at most the
    /// keep-alive timeout.
    pub(crate) struct ClientStream {
        #[pin]
        stream: tokio::net::TcpStream,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        // Bytes of the HTTP/2 preface matched so far.
        matched: usize,
        // Set by the service when a response left the request body unread.
        linger: Arc<AtomicBool>,
        // HTTP/2 requests open on this connection (counted by the service).
        streams: Arc<AtomicUsize>,
        // After the HTTP/2 preface: the idle period running, and whether a byte came during it.
        idle: Option<Pin<Box<tokio::time::Sleep>>>,
        read_during_period: bool,
        timeout: Duration,
        // Once the write side is shut: discarding the client's bytes until this passes.
        lingering: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl ClientStream {
    /// Wraps an accepted connection: `timeout` is the keep-alive timeout, `linger` is set by
    /// the service when a response leaves the body unread, `streams` counts the HTTP/2
    /// requests the service has open.
    pub(crate) fn new(
        stream: tokio::net::TcpStream,
        timeout: Duration,
        linger: Arc<AtomicBool>,
        streams: Arc<AtomicUsize>,
    ) -> Self {
        ClientStream {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
            linger,
            timeout,
            lingering: None,
            streams,
            idle: None,
            read_during_period: false,
        }
    }
}

/// Counts one HTTP/2 request as open on its connection until dropped (with the response body,
/// or with the handler's future if the client resets the stream first).
#[derive(Debug)]
pub(crate) struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    pub(crate) fn new(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(streams.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `response` with `open` held until its body has been sent (or dropped).
pub(crate) fn hold_until_sent(response: Response, open: OpenStream) -> Response {
    response.map(|body| {
        axum::body::Body::new(HeldBody {
            body,
            open: Some(open),
        })
    })
}

struct HeldBody {
    body: axum::body::Body,
    open: Option<OpenStream>,
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

impl tokio::io::AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.stream.poll_read(cx, buf);
        if let Some(idle) = this.idle {
            if !matches!(read, Poll::Pending) {
                *this.read_during_period = true;
                return read;
            }
            while idle.as_mut().poll(cx).is_ready() {
                if !*this.read_during_period && this.streams.load(Ordering::Relaxed) == 0 {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle HTTP/2 connection closed after keep_alive_timeout",
                    )));
                }
                *this.read_during_period = false;
                let next = tokio::time::Instant::now() + *this.timeout;
                idle.as_mut().reset(next);
            }
            return Poll::Pending;
        }
        let Some(deadline) = this.deadline else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                for &b in &buf.filled()[before..] {
                    if H2_PREFACE.get(*this.matched) != Some(&b) {
                        *this.deadline = None;
                        break;
                    }
                    *this.matched += 1;
                }
                if *this.matched == H2_PREFACE.len() {
                    *this.deadline = None;
                    *this.idle = Some(Box::pin(tokio::time::sleep(*this.timeout)));
                    *this.read_during_period = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client sent no request in time",
                ))),
                Poll::Pending => Poll::Pending,
            },
            error => error,
        }
    }
}

impl tokio::io::AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
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
            if !this.linger.load(Ordering::Relaxed) {
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
