//! The access log's fast path: one line per request, formatted without tracing's formatter
//! and written in batches off the request path.
//!
//! Every request ends with an `INFO` event of target `ferroserve::access` (see
//! [`crate::metrics`]). Through tracing-subscriber's text formatter that line costs more than
//! the rest of a small request (field visitors, styling with no colours, calendar arithmetic
//! for the timestamp, float formatting), and its own `write` to stderr. When ferroserve's own
//! `TEXT` log output is the current subscriber and writes plain text, the proxy formats the
//! identical line itself (the same filter, `RUST_LOG=ferroserve::access=off` still silences
//! it; the same layout, byte for byte but for the clock) and appends it to a buffer that a
//! writer thread of its own empties every few milliseconds with one `write` for many lines.
//! Any other subscriber (your own, ferroserve's `JSON` output, colours on a terminal) gets the
//! structured tracing event as before.
//!
//! What batching changes: an access line reaches the writer up to [`FLUSH_DELAY`] after its
//! request ended, so it may come after a line logged directly a moment later; a server stops
//! with [`flush`] (ferroserve's `Server::shutdown` calls it); lines not flushed when a process
//! is killed are lost. Memory stays bounded: once [`MAX_PENDING`] bytes wait, the request that
//! adds a line writes the batch itself.

use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferroserve_core::sync::lock;
use http::Method;

/// How long the writer thread lets lines gather before writing them.
pub const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// Bytes of lines that may wait for the writer thread before a request writes them itself.
pub const MAX_PENDING: usize = 1 << 20;

/// A layer that does nothing but mark ferroserve's plain-text subscriber and carry its writer:
/// the proxy finds it with `Dispatch::downcast_ref` and hands access lines to it.
pub struct AccessLines {
    batch: Arc<Batch>,
}

/// Writes bytes, one `write_all` per call (so that batches never interleave).
type WriteLine = Box<dyn Fn(&[u8]) + Send + Sync>;

/// Lines waiting to be written, and the writer.
struct Batch {
    pending: Mutex<Pending>,
    /// Signalled when lines arrive in an empty batch.
    arrived: Condvar,
    /// Held while a batch is written, so that batches reach the writer in order.
    writing: Mutex<()>,
    write: WriteLine,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Whether the writer thread runs.
    writer: bool,
}

impl AccessLines {
    /// Access lines written with `make`'s writers, in batches (see the [module docs](self)).
    pub fn new<W>(make: Arc<W>) -> Self
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        AccessLines {
            batch: Arc::new(Batch {
                pending: Mutex::new(Pending::default()),
                arrived: Condvar::new(),
                writing: Mutex::new(()),
                write: Box::new(move |bytes| {
                    let _ = std::io::Write::write_all(&mut make.make_writer(), bytes);
                }),
            }),
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLines {}

impl Batch {
    /// Appends one line; the writer thread writes it within [`FLUSH_DELAY`] (or this call,
    /// when [`MAX_PENDING`] bytes wait).
    fn push(self: &Arc<Self>, line: &[u8]) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.lines.is_empty();
        pending.lines.extend_from_slice(line);
        if pending.lines.len() >= MAX_PENDING {
            drop(pending);
            self.write_pending();
            return;
        }
        if !pending.writer {
            pending.writer = true;
            let batch = Arc::downgrade(self);
            let started = std::thread::Builder::new()
                .name("ferroserve-access-log".into())
                .spawn(move || write_batches(batch));
            if started.is_err() {
                // No thread to be had: write as lines come.
                pending.writer = false;
                drop(pending);
                self.write_pending();
                return;
            }
        }
        drop(pending);
        if was_empty {
            self.arrived.notify_one();
        }
    }

    /// Writes whatever waits, in order with other batches.
    fn write_pending(&self) {
        let _writing = lock(&self.writing);
        let lines = std::mem::take(&mut lock(&self.pending).lines);
        if !lines.is_empty() {
            (self.write)(&lines);
        }
    }
}

/// The writer thread: waits for lines, lets them gather for [`FLUSH_DELAY`], writes them; ends
/// once its subscriber is gone.
fn write_batches(batch: Weak<Batch>) {
    loop {
        {
            let Some(strong) = batch.upgrade() else {
                return;
            };
            let pending = lock(&strong.pending);
            if pending.lines.is_empty() {
                // Wake now and then to notice a subscriber that is gone.
                let waited = strong.arrived.wait_timeout(pending, Duration::from_secs(1));
                drop(waited);
                continue;
            }
        }
        std::thread::sleep(FLUSH_DELAY);
        let Some(strong) = batch.upgrade() else {
            return;
        };
        strong.write_pending();
    }
}

/// Writes the access lines that wait, if the current subscriber is ferroserve's plain-text
/// one. Call it before a process ends (ferroserve's `Server::shutdown` does).
pub fn flush() {
    tracing::dispatcher::get_default(|dispatch| {
        if let Some(lines) = dispatch.downcast_ref::<AccessLines>() {
            lines.batch.write_pending();
        }
    });
}

/// One writer shared by the formatter and [`AccessLines`].
pub struct Shared<W>(pub Arc<W>);

impl<'a, W: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for Shared<W>
{
    type Writer = W::Writer;
    fn make_writer(&'a self) -> Self::Writer {
        self.0.make_writer()
    }
}

/// One finished request, as the access log shows it.
pub struct AccessRecord<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The application's route prefix (`""` for an unknown path).
    pub route: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The response status (`499` when the client left first).
    pub status: u16,
    /// From the request head to the response head, in µs.
    pub latency_us: u64,
    /// The request id.
    pub request_id: &'a str,
    /// The application's name (`""` for an unknown path).
    pub application: &'a str,
}

/// Milliseconds with one decimal, rounded half up (`0.3`), from µs: the access line's message.
#[derive(Debug, Clone, Copy)]
pub struct LatencyMs(pub u64);

impl std::fmt::Display for LatencyMs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = Vec::with_capacity(8);
        push_tenths(&mut out, self.0);
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

/// Hands `record`'s line to ferroserve's plain-text subscriber, if it is the current one; false
/// if the caller must emit the tracing event instead.
pub fn write_fast(record: &AccessRecord<'_>) -> bool {
    tracing::dispatcher::get_default(|dispatch| {
        let Some(lines) = dispatch.downcast_ref::<AccessLines>() else {
            return false;
        };
        LINE.with(|line| {
            // A writer that itself logs a request (and ends up here) finds the buffer in use:
            // it gets a fresh one instead of a borrow panic.
            let mut fresh = Vec::new();
            let mut borrowed = line.try_borrow_mut();
            let line = borrowed.as_deref_mut().unwrap_or(&mut fresh);
            line.clear();
            format_line(line, SystemTime::now(), record);
            lines.batch.push(line);
        });
        true
    })
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The last second formatted on this thread: `(unix seconds, "YYYY-MM-DDTHH:MM:SS")`.
    static SECOND: std::cell::RefCell<(u64, Vec<u8>)> =
        const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
}

/// The line tracing-subscriber's default text format writes for the access event (ANSI off):
/// `<time>  INFO ferroserve::access: GET / 200 0.3ms method=GET route=/ … application=app`.
/// Written as bytes with digit arithmetic: `core::fmt` cost more than the rest of the line.
fn format_line(out: &mut Vec<u8>, now: SystemTime, r: &AccessRecord<'_>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != since.as_secs() {
            second.1.clear();
            write_civil_time(&mut second.1, since.as_secs());
            second.0 = since.as_secs();
        }
        out.extend_from_slice(&second.1);
    });
    out.push(b'.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.extend_from_slice(b"Z  INFO ferroserve::access: ");
    // The message, escaped as tracing-subscriber escapes messages.
    out.extend_from_slice(r.method.as_str().as_bytes());
    out.push(b' ');
    push_escaped(out, r.route);
    out.push(b' ');
    push_u64(out, u64::from(r.status));
    out.push(b' ');
    push_tenths(out, r.latency_us);
    out.extend_from_slice(b"ms method=");
    out.extend_from_slice(r.method.as_str().as_bytes());
    // Field values are written as they are (tracing does not escape them), but for control
    // characters: a client's bytes must not reach a terminal as escape sequences.
    out.extend_from_slice(b" route=");
    push_escaped(out, r.route);
    out.extend_from_slice(b" path=");
    push_escaped(out, r.path);
    out.extend_from_slice(b" status=");
    push_u64(out, u64::from(r.status));
    out.extend_from_slice(b" latency_ms=");
    push_millis(out, r.latency_us);
    out.extend_from_slice(b" request_id=");
    push_escaped(out, r.request_id);
    out.extend_from_slice(b" application=");
    push_escaped(out, r.application);
    out.push(b'\n');
}

/// `n` in decimal, left-padded with zeros to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut n = n;
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[i.min(digits.len() - width)..]);
}

/// `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    push_padded(out, n, 1);
}

/// `us` µs as ms with one decimal, rounded half up: `1249` → `1.2`, `1250` → `1.3`.
fn push_tenths(out: &mut Vec<u8>, us: u64) {
    let tenths = us.saturating_add(50) / 100;
    push_u64(out, tenths / 10);
    out.push(b'.');
    push_u64(out, tenths % 10);
}

/// `us` µs as ms, as Rust prints the `f64` `us as f64 / 1000.0` with `{:?}` (the shortest
/// decimal that reads back as it: the exact decimal for any latency under 10^15 µs): `1250` →
/// `1.25`, `1000` → `1.0`, `7` → `0.007`.
fn push_millis(out: &mut Vec<u8>, us: u64) {
    push_u64(out, us / 1000);
    out.push(b'.');
    let frac = us % 1000;
    let (digits, width) = match (frac % 100, frac % 10) {
        (0, _) => (frac / 100, 1),
        (_, 0) => (frac / 10, 2),
        _ => (frac, 3),
    };
    push_padded(out, digits, width);
}

/// `s`, with the control characters tracing-subscriber escapes in messages written as escapes.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    // C1 controls are U+0080..U+009F, in UTF-8 `C2 80`..`C2 9F`: a byte scan rules out most
    // strings at once.
    if !s
        .bytes()
        .any(|b| matches!(b, 0x07 | 0x08 | 0x0c | 0x1b | 0x7f | 0xc2))
    {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for ch in s.chars() {
        match ch {
            '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                let _ = write!(out, "\\x{:02x}", ch as u32);
            }
            ch if needs_escape(ch) => {
                let _ = write!(out, "\\u{{{:x}}}", ch as u32);
            }
            ch => out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

fn needs_escape(ch: char) -> bool {
    matches!(
        ch,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) for `secs` since the Unix epoch.
fn write_civil_time(out: &mut Vec<u8>, secs: u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`), for days ≥ 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_matches_known_dates() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_709_251_199, "2024-02-29T23:59:59"),
            (1_795_648_577, "2026-11-25T23:16:17"),
            (4_107_542_400, "2100-03-01T00:00:00"),
        ] {
            let mut out = Vec::new();
            write_civil_time(&mut out, secs);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{secs}");
        }
    }

    #[test]
    fn millis_read_as_rust_prints_the_float() {
        for us in (0..200_000).chain([999_999, 1_000_001, 86_400_000_123, 12_345_678_901]) {
            let mut out = Vec::new();
            push_millis(&mut out, us);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{:?}", us as f64 / 1000.0),
                "{us} µs"
            );
        }
    }

    #[test]
    fn tenths_round_half_up_and_integers_read_back() {
        let tenths = |us| LatencyMs(us).to_string();
        assert_eq!(tenths(0), "0.0");
        assert_eq!(tenths(1249), "1.2");
        assert_eq!(tenths(1250), "1.3");
        assert_eq!(tenths(99_960), "100.0");
        let mut out = Vec::new();
        push_u64(&mut out, u64::MAX);
        push_padded(&mut out, 42, 6);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("{}000042", u64::MAX)
        );
    }

    #[test]
    fn other_subscribers_get_the_tracing_event() {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .finish();
        let method = Method::GET;
        let record = AccessRecord {
            method: &method,
            route: "/",
            path: "/",
            status: 200,
            latency_us: 0,
            request_id: "x",
            application: "a",
        };
        tracing::subscriber::with_default(subscriber, || assert!(!write_fast(&record)));
    }
}
