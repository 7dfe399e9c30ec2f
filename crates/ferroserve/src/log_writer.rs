//! Log output to stderr without a write system call per line on the request path.
//!
//! A log line (an access line for every request, by default) is appended to a shared buffer;
//! a writer thread writes what has gathered to stderr in one call. When the thread is idle a
//! new line wakes it at once, so lines appear as they are logged; while it is busy, lines
//! gather for up to [`LINGER`] and go out together. The buffer is bounded: beyond
//! [`MAX_BUFFER`] a logging thread waits for the writer, as it would on a slow stderr. Nothing
//! is dropped; [`flush`] (called when a server shuts down) writes what is left.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// How long the writer lets lines gather after a write before it writes again.
const LINGER: Duration = Duration::from_millis(1);
/// Bytes of log lines that may wait; beyond it, logging threads wait for the writer.
const MAX_BUFFER: usize = 1 << 20;

struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Signalled when the writer has taken the buffer.
    drained: Condvar,
    /// Held while writing to stderr, so that lines keep their order.
    io: Mutex<()>,
    parked: AtomicBool,
    writer: OnceLock<Thread>,
}

static SHARED: Shared = Shared {
    buffer: Mutex::new(Vec::new()),
    drained: Condvar::new(),
    io: Mutex::new(()),
    parked: AtomicBool::new(false),
    writer: OnceLock::new(),
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer thread, started on first use. `None` if it could not be started (then lines are
/// written directly).
fn writer() -> Option<&'static Thread> {
    if let Some(t) = SHARED.writer.get() {
        return Some(t);
    }
    let spawned = std::thread::Builder::new()
        .name("ferroserve-log".into())
        .spawn(write_loop)
        .ok()?;
    Some(SHARED.writer.get_or_init(|| spawned.thread().clone()))
}

fn write_loop() {
    let mut spare = Vec::new();
    loop {
        SHARED.parked.store(true, SeqCst);
        if lock(&SHARED.buffer).is_empty() {
            std::thread::park();
        }
        SHARED.parked.store(false, SeqCst);
        write_out(&mut spare);
        std::thread::sleep(LINGER);
    }
}

/// Writes what the buffer holds, keeping the order of lines.
fn write_out(spare: &mut Vec<u8>) {
    let _io = lock(&SHARED.io);
    {
        let mut buffer = lock(&SHARED.buffer);
        std::mem::swap(&mut *buffer, spare);
    }
    SHARED.drained.notify_all();
    if !spare.is_empty() {
        // As tracing's own stderr writer: a failing stderr is not the request's problem.
        let _ = std::io::stderr().lock().write_all(spare);
        spare.clear();
    }
}

/// Writes every line logged so far to stderr before returning.
pub(crate) fn flush() {
    write_out(&mut Vec::new());
}

/// A `MakeWriter` for tracing-subscriber: lines go to stderr through the writer thread.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BufferedStderr;

/// One line being formatted (tracing-subscriber writes each event with one `write_all`).
#[derive(Debug)]
pub(crate) struct LineWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let Some(writer) = writer() else {
            return std::io::stderr().write(bytes);
        };
        let mut buffer = lock(&SHARED.buffer);
        while buffer.len() >= MAX_BUFFER {
            writer.unpark();
            buffer = SHARED
                .drained
                .wait(buffer)
                .unwrap_or_else(|p| p.into_inner());
        }
        buffer.extend_from_slice(bytes);
        drop(buffer);
        if SHARED.parked.load(SeqCst) {
            writer.unpark();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_buffered_then_flushed_in_order_and_bounded() {
        let mut w = LineWriter;
        for i in 0..10_000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
            assert!(lock(&SHARED.buffer).len() <= MAX_BUFFER + 16);
        }
        flush();
        assert!(lock(&SHARED.buffer).is_empty());
    }
}
