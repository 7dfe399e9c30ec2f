//! Panics in user code, caught where ferroserve calls it and turned into a message.
//!
//! A constructor, handler, health check, model loader, eviction hook, batch function or stream
//! that panics fails only its own work: the replica keeps serving, and the message reaches the
//! log (never the client). Every such call site goes through [`catch`], [`catch_sync`] or
//! [`catch_stream`].

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::future::CatchUnwind;
use futures_util::{FutureExt, Stream, StreamExt};

/// The text of a panic payload: `panicked: <message>`, or `panicked` for a payload that is not
/// a string.
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

pin_project_lite::pin_project! {
    /// The future of [`catch`].
    #[must_use = "futures do nothing unless polled"]
    pub struct Catch<F> {
        #[pin]
        inner: CatchUnwind<AssertUnwindSafe<F>>,
    }
}

impl<F: Future> Future for Catch<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let outcome = ready!(self.project().inner.poll(cx));
        Poll::Ready(outcome.map_err(|payload| message(&*payload)))
    }
}

/// Runs `fut`, turning a panic into `Err(message)`. Cancel safe: dropping it drops `fut`.
///
/// User state a panic leaves half-updated is the user's; ferroserve's own state is never
/// updated inside `fut`, which is why unwinding through it is sound here.
pub fn catch<F: Future>(fut: F) -> Catch<F> {
    Catch {
        inner: AssertUnwindSafe(fut).catch_unwind(),
    }
}

/// Runs `f`, turning a panic into `Err(message)`.
#[inline]
pub fn catch_sync<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| message(&*payload))
}

/// Runs `stream`, turning a panic while polling it into a last `Err(message)` item, after
/// which the stream ends.
pub fn catch_stream<S: Stream>(stream: S) -> impl Stream<Item = Result<S::Item, String>> {
    AssertUnwindSafe(stream)
        .catch_unwind()
        .map(|item| item.map_err(|payload| message(&*payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_become_messages() {
        assert_eq!(catch(async { 7 }).await, Ok(7));
        let failed = catch(async { panic!("weights missing") }).await;
        assert_eq!(failed, Err::<(), _>("panicked: weights missing".to_owned()));
        let n = 3;
        assert_eq!(
            catch_sync(|| -> u8 { panic!("{n} bad rows") }),
            Err("panicked: 3 bad rows".to_owned())
        );
        assert_eq!(
            catch_sync(|| std::panic::panic_any(42)),
            Err::<(), _>("panicked".to_owned())
        );
    }
}
