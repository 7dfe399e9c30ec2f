//! Logs captured in-process: ferroserve's JSON log format written into memory, for tests that
//! assert what a handler, the proxy or the supervisor logged.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// Everything logged in this process, as JSON lines (installed once per test process; call it
/// before the server starts so nothing is missed).
pub fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Sink(&'static Mutex<Vec<u8>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut config = ferroserve::config::LoggingConfig::default();
        config.encoding = ferroserve::config::LogEncoding::Json;
        ferroserve::logging::init_logging_to(&config, move || Sink(logs));
        logs
    })
}

/// Every line logged so far, parsed (a line that is not JSON fails the test).
pub fn log_lines() -> Vec<Value> {
    let logs = captured_logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}
