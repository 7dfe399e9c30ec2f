//! The access log's fast path: one line per request, written without tracing's formatter.
//!
//! Every request ends with an `INFO` event of target `ferroserve::access` (see
//! [`crate::metrics`]). Through tracing-subscriber's text formatter that line cost about 13,500
//! instructions (field visitors, styling with no colours, calendar arithmetic for the
//! timestamp), more than the rest of a small request. When ferroserve's own `TEXT` log output
//! is the current subscriber and writes plain text, the proxy writes the identical line itself
//! through the same writer: the same filter (`RUST_LOG=ferroserve::access=off` still silences
//! it), the same layout, byte for byte but for the clock. Any other subscriber (your own,
//! ferroserve's `JSON` output, colours on a terminal) gets the structured tracing event as
//! before.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;

/// A layer that does nothing but mark ferroserve's plain-text subscriber and carry its writer:
/// the proxy finds it with `Dispatch::downcast_ref` and writes access lines through it.
pub struct AccessLines {
    write: WriteLine,
}

/// Writes one whole line.
type WriteLine = Box<dyn Fn(&[u8]) + Send + Sync>;

impl AccessLines {
    /// Access lines written with `make`'s writers, one `write_all` per line (as the formatter
    /// does, so lines never interleave).
    pub fn new<W>(make: std::sync::Arc<W>) -> Self
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        AccessLines {
            write: Box::new(move |line| {
                let _ = std::io::Write::write_all(&mut make.make_writer(), line);
            }),
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLines {}

/// One writer shared by the formatter and [`AccessLines`].
pub struct Shared<W>(pub std::sync::Arc<W>);

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
    /// From the request head to the response head, in ms.
    pub latency_ms: f64,
    /// The request id.
    pub request_id: &'a str,
    /// The application's name (`""` for an unknown path).
    pub application: &'a str,
}

/// Writes `record`'s line if the current subscriber is ferroserve's plain-text one; false if
/// the caller must emit the tracing event instead.
pub fn write_fast(record: &AccessRecord<'_>) -> bool {
    tracing::dispatcher::get_default(|dispatch| {
        let Some(lines) = dispatch.downcast_ref::<AccessLines>() else {
            return false;
        };
        // The buffer is taken out while the writer runs, so a writer that itself ends up here
        // (it logs a request of its own) gets a fresh one instead of a borrow panic.
        let mut line = LINE.with(|line| std::mem::take(&mut *line.borrow_mut()));
        line.clear();
        format_line(&mut line, SystemTime::now(), record);
        (lines.write)(line.as_bytes());
        LINE.with(|slot| *slot.borrow_mut() = line);
        true
    })
}

thread_local! {
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The last second formatted on this thread: `(unix seconds, "YYYY-MM-DDTHH:MM:SS")`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// The line tracing-subscriber's default text format writes for the access event (ANSI off):
/// `<time>  INFO ferroserve::access: GET / 200 0.3ms method=GET route=/ … application=app`.
fn format_line(out: &mut String, now: SystemTime, r: &AccessRecord<'_>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|second| {
        let mut second = second.borrow_mut();
        if second.0 != since.as_secs() {
            second.1.clear();
            write_civil_time(&mut second.1, since.as_secs());
            second.0 = since.as_secs();
        }
        out.push_str(&second.1);
    });
    let _ = write!(
        out,
        ".{:06}Z  INFO ferroserve::access: ",
        since.subsec_micros()
    );
    // The message, escaped as tracing-subscriber escapes messages.
    let _ = write!(out, "{} ", r.method);
    push_escaped(out, r.route);
    let _ = write!(
        out,
        " {} {:.1}ms method={}",
        r.status, r.latency_ms, r.method
    );
    // Field values are written as they are (tracing does not escape them), but for control
    // characters: a client's bytes must not reach a terminal as escape sequences.
    for (name, value) in [("route", r.route), ("path", r.path)] {
        let _ = write!(out, " {name}=");
        push_escaped(out, value);
    }
    let _ = write!(
        out,
        " status={} latency_ms={:?} request_id=",
        r.status, r.latency_ms
    );
    push_escaped(out, r.request_id);
    out.push_str(" application=");
    push_escaped(out, r.application);
    out.push('\n');
}

/// `s`, with the control characters tracing-subscriber escapes in messages written as escapes.
fn push_escaped(out: &mut String, s: &str) {
    // C1 controls are U+0080..U+009F, in UTF-8 `C2 80`..`C2 9F`: a byte scan rules out most
    // strings at once.
    if !s
        .bytes()
        .any(|b| matches!(b, 0x07 | 0x08 | 0x0c | 0x1b | 0x7f | 0xc2))
    {
        out.push_str(s);
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
            ch => out.push(ch),
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
fn write_civil_time(out: &mut String, secs: u64) {
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
            let mut out = String::new();
            write_civil_time(&mut out, secs);
            assert_eq!(out, text, "{secs}");
        }
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
            latency_ms: 0.0,
            request_id: "x",
            application: "a",
        };
        tracing::subscriber::with_default(subscriber, || assert!(!write_fast(&record)));
    }
}
