//! Streaming responses: every chunk flushed as it is produced, and server-sent events.
//! (Streams returned through handles are `ferroserve_core::handle::ResponseStream`; forward one
//! with [`StreamingResponse::new`].)
//!
//! A streamed response keeps its replica slot (it counts as an ongoing request) until the last
//! chunk is written. While it streams, its polls run under the request's [`RequestContext`], so
//! `on_cancel` guards inside a generator work; when the client disconnects the stream is
//! dropped (the context cancelled first), and the request's end-to-end timeout covers the whole
//! stream: at the deadline the stream is cut and the work cancelled. An error in the middle of
//! a stream ends it (the client sees a truncated response) and is logged.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferroserve_core::context::ContextCell;
use ferroserve_core::handle::Guard;
use ferroserve_core::sync::lock;
use ferroserve_core::{BoxError, RequestContext};
use futures_util::{Stream, StreamExt};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

pub use axum::response::sse::{Event, KeepAlive, Sse};

/// A response whose body is a stream of chunks (Starlette's `StreamingResponse`).
///
/// Each chunk is written and flushed as soon as the stream yields it: chunked encoding on
/// HTTP/1.1, one DATA frame on HTTP/2. There is no buffering between the stream and the socket.
///
/// ```
/// use ferroserve_http::stream::StreamingResponse;
///
/// let numbers = futures_util::stream::iter((0..10).map(|i| i.to_string()));
/// let response = StreamingResponse::new(numbers).media_type("text/plain");
/// ```
#[must_use]
pub struct StreamingResponse {
    body: Body,
    status: StatusCode,
    headers: HeaderMap,
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl StreamingResponse {
    /// Streams every item of `stream` as one chunk.
    pub fn new<S>(stream: S) -> Self
    where
        S: Stream + Send + 'static,
        S::Item: Into<Bytes>,
    {
        Self::from_body(Body::from_stream(
            stream.map(|chunk| Ok::<Bytes, std::convert::Infallible>(chunk.into())),
        ))
    }

    /// Streams `Ok` items as chunks; an `Err` ends the stream (the client sees a truncated
    /// response) and is logged with the request id.
    pub fn try_new<S, T, E>(stream: S) -> Self
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
        T: Into<Bytes>,
        E: Into<BoxError>,
    {
        Self::from_body(Body::from_stream(stream.map(|item| {
            item.map(Into::into).map_err(|e| {
                let e: BoxError = e.into();
                e
            })
        })))
    }

    /// Streams the items of a blocking iterator (CPU-bound generation, a model's token loop),
    /// run on a blocking thread one item ahead of the socket. The iterator stops being pulled
    /// once the client goes away.
    pub fn from_blocking_iter<I>(iter: I) -> Self
    where
        I: IntoIterator + Send + 'static,
        I::IntoIter: Send,
        I::Item: Into<Bytes> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::task::spawn_blocking(move || {
            for item in iter {
                if tx.blocking_send(item.into()).is_err() {
                    break; // the response was dropped: stop generating
                }
            }
        });
        Self::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }))
    }

    /// Server-sent events (`text/event-stream`): each `Event` (data, `id`, `event` name, retry)
    /// is flushed as produced, and `keep_alive` comments keep idle connections open through
    /// proxies. An `Err` item ends the stream, logged.
    pub fn sse<S, E>(events: S, keep_alive: KeepAlive) -> Self
    where
        S: Stream<Item = Result<Event, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let (parts, body) = Sse::new(events)
            .keep_alive(keep_alive)
            .into_response()
            .into_parts();
        StreamingResponse {
            body,
            status: parts.status,
            headers: parts.headers,
        }
    }

    fn from_body(body: Body) -> Self {
        StreamingResponse {
            body,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        }
    }

    /// Sets the status (default 200).
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Sets `Content-Type` (none by default, as Starlette's).
    ///
    /// # Panics
    /// If `media_type` is not a valid header value.
    pub fn media_type(mut self, media_type: &str) -> Self {
        self.headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).expect("a valid media type"),
        );
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
}

impl IntoResponse for StreamingResponse {
    fn into_response(self) -> Response {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

impl aide::OperationOutput for StreamingResponse {
    type Inner = ();

    fn operation_response(
        _ctx: &mut aide::generate::GenContext,
        _operation: &mut aide::openapi::Operation,
    ) -> Option<aide::openapi::Response> {
        Some(aide::openapi::Response {
            description: "A streamed response".into(),
            ..Default::default()
        })
    }

    fn inferred_responses(
        ctx: &mut aide::generate::GenContext,
        operation: &mut aide::openapi::Operation,
    ) -> Vec<(Option<u16>, aide::openapi::Response)> {
        Self::operation_response(ctx, operation)
            .map(|r| vec![(Some(200), r)])
            .unwrap_or_default()
    }
}

/// Attaches the replica slot and the request context to a response. A complete body releases
/// the slot now; a streamed one keeps it until the stream ends and runs under the context.
pub(crate) fn attach<S: Send + Sync + 'static>(
    response: Response,
    ctx: RequestContext,
    slot: S,
) -> Response {
    if response.body().size_hint().exact().is_some() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let deadline = ctx
        .deadline()
        .map(|d| Box::pin(tokio::time::sleep_until(d)));
    Response::from_parts(
        parts,
        Body::new(ReplicaBody {
            inner: Some(body),
            ctx: ContextCell::new(ctx),
            slot: Some(Box::new(slot)),
            deadline,
            done: false,
        }),
    )
}

/// A streamed body under its request's context; see the module docs.
struct ReplicaBody {
    inner: Option<Body>,
    ctx: ContextCell,
    slot: Option<Guard>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl ReplicaBody {
    fn finish(&mut self) {
        self.done = true;
        self.slot = None;
        if let Some(inner) = self.inner.take() {
            self.ctx.enter(|| drop(inner));
        }
    }
}

impl HttpBody for ReplicaBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                let ctx = this.ctx.get();
                tracing::warn!(
                    request_id = ctx.request_id(),
                    "request timed out after {:?} while streaming; stream cut, work cancelled",
                    ctx.timeout().unwrap_or_default()
                );
                ctx.cancel();
                this.finish();
                return Poll::Ready(Some(Err("request timed out while streaming".into())));
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = this
            .ctx
            .enter(|| ferroserve_core::panic::catch_sync(|| Pin::new(inner).poll_frame(cx)));
        let frame = match polled {
            Ok(frame) => ready!(frame),
            Err(panic) => Some(Err(axum::Error::new(panic))),
        };
        match frame {
            None => {
                this.finish();
                Poll::Ready(None)
            }
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            Some(Err(e)) => {
                let ctx = this.ctx.get();
                tracing::error!(
                    request_id = ctx.request_id(),
                    deployment = ctx.deployment(),
                    "stream failed mid-way: {e}"
                );
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(HttpBody::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for ReplicaBody {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(
                "Client for request {} disconnected, cancelling request.",
                self.ctx.get().request_id()
            );
            self.ctx.get().cancel();
            self.finish();
        }
    }
}

/// A replica slot kept for an upgraded connection (WebSocket) until its handler ends.
#[derive(Clone, Default)]
pub(crate) struct PinnedSlot(Arc<Mutex<Option<Guard>>>);

impl PinnedSlot {
    pub(crate) fn keep(&self, slot: Guard) {
        *lock(&self.0) = Some(slot);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use http_body_util::BodyExt;

    use super::*;

    /// Stands for a replica slot: says when it is let go.
    struct Slot(Arc<AtomicBool>);

    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn slot() -> (Slot, Arc<AtomicBool>) {
        let released = Arc::new(AtomicBool::new(false));
        (Slot(released.clone()), released)
    }

    /// Chunks that name the request they are produced under.
    fn ids(n: usize) -> Response {
        let chunks = futures_util::stream::iter(0..n).map(|i| {
            let id = ferroserve_core::current().map(|c| c.request_id().to_owned());
            format!("{i}:{}\n", id.unwrap_or_default())
        });
        StreamingResponse::new(chunks).into_response()
    }

    #[tokio::test]
    async fn a_stream_runs_under_its_request_and_keeps_its_slot_to_the_end() {
        let (slot, released) = slot();
        let ctx = RequestContext::new("req-9", None);
        let mut body = attach(ids(2), ctx.clone(), slot).into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"0:req-9\n");
        assert!(!released.load(Ordering::SeqCst), "held while streaming");
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"1:req-9\n");
        assert!(body.frame().await.is_none());
        assert!(released.load(Ordering::SeqCst), "released at the end");
        assert!(!ctx.is_cancelled());
    }

    #[tokio::test]
    async fn a_complete_body_lets_its_slot_go_at_once() {
        let (slot, released) = slot();
        let response = attach("done".into_response(), RequestContext::new("r", None), slot);
        assert!(released.load(Ordering::SeqCst));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"done");
    }

    #[tokio::test]
    async fn a_client_that_leaves_mid_stream_cancels_the_request() {
        let (slot, released) = slot();
        let ctx = RequestContext::new("r", None);
        let mut body = attach(ids(10), ctx.clone(), slot).into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(ctx.is_cancelled());
        assert!(released.load(Ordering::SeqCst));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_a_stream_and_cancels_its_work() {
        let (slot, released) = slot();
        let ctx = RequestContext::new("r", Some(Duration::from_secs(1)));
        let ticks = futures_util::stream::unfold(0u32, |i| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Some((format!("{i}"), i + 1))
        });
        let mut body = attach(
            StreamingResponse::new(ticks).into_response(),
            ctx.clone(),
            slot,
        )
        .into_body();
        let mut chunks = 0;
        let error = loop {
            match body.frame().await {
                Some(Ok(_)) => chunks += 1,
                Some(Err(e)) => break e,
                None => panic!("an endless stream ended"),
            }
        };
        assert_eq!(chunks, 3, "chunks at 0.3, 0.6 and 0.9 s");
        assert_eq!(error.to_string(), "request timed out while streaming");
        assert!(ctx.is_cancelled() && released.load(Ordering::SeqCst));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_with_an_error() {
        let (slot, released) = slot();
        let bad = futures_util::stream::iter(0..3).map(|i| {
            assert!(i < 1, "chunk {i} is corrupt");
            "ok"
        });
        let mut body = attach(
            StreamingResponse::new(bad).into_response(),
            RequestContext::new("r", None),
            slot,
        )
        .into_body();
        assert!(body.frame().await.unwrap().is_ok());
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.to_string().contains("chunk 1 is corrupt"), "{error}");
        assert!(released.load(Ordering::SeqCst));
    }
}
