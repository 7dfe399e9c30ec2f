//! ferroserve's log output: `TEXT` or `JSON` lines on stderr (or a writer of yours), filtered by
//! `RUST_LOG` or the config's `log_level`, naming who served each line logged in a handler, with
//! access lines written on a fast path (see [`ferroserve_http::access_log`]).

use std::sync::Arc;

use ferroserve_http::access_log::{AccessLines, Shared};

use crate::config::{LogEncoding, LoggingConfig};

/// Installs ferroserve's log output (stderr, `RUST_LOG` filter, `info` by default) unless a
/// global subscriber is already set.
pub fn init_logging() {
    init_logging_with(&LoggingConfig::default());
}

/// Installs ferroserve's log output as a config's `logging_config` asks: its level (unless
/// `RUST_LOG` is set) and `TEXT` or `JSON` lines on stderr. Does nothing if a global subscriber
/// is already set.
///
/// Every line logged while a handler runs names who serves the request: `TEXT` lines end with
/// `application=.. deployment=.. replica=.. request_id=..`, `JSON` objects carry those four
/// keys. Finding them costs nothing until a line is logged.
pub fn init_logging_with(config: &LoggingConfig) {
    init_logging_to(config, std::io::stderr);
}

/// As [`init_logging_with`], writing to `writer` instead of stderr (e.g. to capture the lines).
pub fn init_logging_to<W>(config: &LoggingConfig, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let _ = tracing::subscriber::set_global_default(log_subscriber(config, writer));
}

/// The subscriber [`init_logging_to`] installs.
pub fn log_subscriber<W>(
    config: &LoggingConfig,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.directive()));
    let writer = Arc::new(writer);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Shared(writer.clone()));
    match config.encoding {
        LogEncoding::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let subscriber = builder
                .with_ansi(ansi)
                .map_event_format(|format| WithReplica {
                    inner: format,
                    json: false,
                })
                .finish();
            if ansi {
                Box::new(subscriber)
            } else {
                // Plain text: access lines take the fast path.
                Box::new(subscriber.with(AccessLines::new(writer)))
            }
        }
        LogEncoding::Json => Box::new(
            builder
                .json()
                .with_ansi(false)
                .map_event_format(|format| WithReplica {
                    inner: format,
                    json: true,
                })
                .finish(),
        ),
    }
}

/// An event format that adds the serving replica's labels to lines logged inside a handler.
struct WithReplica<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithReplica<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let labels = ferroserve_core::context::with_current_replica(|replica, request_id| {
            [
                replica.application().to_string(),
                replica.deployment().to_string(),
                replica.replica_id().to_owned(),
                request_id.to_owned(),
            ]
        });
        let Some([application, deployment, replica, request_id]) = labels else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        if self.json {
            if let Ok(serde_json::Value::Object(mut map)) = serde_json::from_str(body) {
                for (key, value) in [
                    ("application", application),
                    ("deployment", deployment),
                    ("replica", replica),
                    ("request_id", request_id),
                ] {
                    map.insert(key.to_owned(), value.into());
                }
                return writeln!(writer, "{}", serde_json::Value::Object(map));
            }
            return writeln!(writer, "{body}");
        }
        writeln!(
            writer,
            "{body} application={application} deployment={deployment} replica={replica} request_id={request_id}"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ferroserve_core::metrics::DeploymentMetrics;
    use ferroserve_core::tag::ReplicaTag;
    use ferroserve_core::RequestContext;
    use ferroserve_http::access_log::{write_fast, AccessRecord};
    use http::Method;

    use super::*;

    /// Log output kept in memory: what each writer made by the closure writes lands in `.0`.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `config`'s log format writes for one line logged outside and one inside a handler.
    fn two_lines(encoding: LogEncoding) -> Vec<String> {
        let out: Arc<Mutex<Vec<u8>>> = Arc::default();
        let config = LoggingConfig {
            encoding,
            ..LoggingConfig::default()
        };
        let sink = out.clone();
        let subscriber = log_subscriber(&config, move || Sink(sink.clone()));
        let metrics = Arc::new(DeploymentMetrics::new(&Arc::from("Model")));
        metrics.bind("iris", true);
        let replica = Arc::new(ReplicaTag::new("Model#3", metrics));
        let ctx = RequestContext::new("req-7", None).on_replica(&replica);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("outside");
            ctx.enter(|| tracing::warn!("inside"));
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn text_lines_in_a_handler_end_with_the_replica() {
        let lines = two_lines(LogEncoding::Text);
        assert!(lines[0].ends_with("outside"), "{lines:?}");
        assert!(
            lines[1].ends_with(
                "inside application=iris deployment=Model replica=Model#3 request_id=req-7"
            ),
            "{lines:?}"
        );
    }

    #[test]
    fn json_lines_in_a_handler_carry_the_replica() {
        let lines = two_lines(LogEncoding::Json);
        let parse = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap();
        let (outside, inside) = (parse(&lines[0]), parse(&lines[1]));
        assert_eq!(outside["fields"]["message"], "outside");
        assert!(outside.get("replica").is_none(), "{outside}");
        assert_eq!(inside["fields"]["message"], "inside");
        assert_eq!(inside["level"], "WARN");
        for (key, value) in [
            ("application", "iris"),
            ("deployment", "Model"),
            ("replica", "Model#3"),
            ("request_id", "req-7"),
        ] {
            assert_eq!(inside[key], value, "{inside}");
        }
    }

    /// The fast line and tracing-subscriber's line for the same request agree byte for byte
    /// after the timestamp, through ferroserve's own text subscriber.
    #[test]
    fn the_fast_line_is_the_line_tracing_writes() {
        let sink = Sink::default();
        let out = sink.0.clone();
        let make = move || sink.clone();
        let config = LoggingConfig::default();
        let subscriber = log_subscriber(&config, make);
        let method = Method::POST;
        let record = AccessRecord {
            method: &method,
            route: "/api",
            path: "/api/v1/predict?x=1",
            status: 422,
            latency_us: 1250,
            request_id: "0a1b-\u{1b}[31m",
            application: "iris",
        };
        tracing::subscriber::with_default(subscriber, || {
            assert!(
                write_fast(&record),
                "ferroserve's text output takes the fast path"
            );
            // The fast line waits in its batch until flushed; then tracing's own.
            ferroserve_http::access_log::flush();
            ferroserve_http::metrics::log_access_event(&record);
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let after_clock = |l: &str| l.split_once('Z').unwrap().1.to_owned();
        // tracing leaves field values unescaped; the fast line escapes control characters.
        let expected = after_clock(lines[1]).replace('\u{1b}', "\\x1b");
        assert_eq!(after_clock(lines[0]), expected);
        assert!(
            lines[0].ends_with(
                "  INFO ferroserve::access: POST /api 422 1.3ms method=POST route=/api \
                 path=/api/v1/predict?x=1 status=422 latency_ms=1.25 \
                 request_id=0a1b-\\x1b[31m application=iris"
            ),
            "{}",
            lines[0]
        );
        // Same clock format: 2026-11-25T23:16:17.123456Z.
        let clock = lines[0].split_once('Z').unwrap().0;
        assert_eq!(clock.len(), 26, "{clock}");
    }
}
