//! The test harness of ferroserve's crates: servers on ephemeral ports, real HTTP clients,
//! example processes, captured logs ([`logs`]) and raw HTTP/1.1 ([`raw`]).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferroserve::{Serve, Server};

pub mod logs;
pub mod raw;

/// Starts `serve` on 127.0.0.1 with an ephemeral port.
pub async fn start(serve: Serve) -> (Server, String) {
    let server = serve
        .host("127.0.0.1")
        .port(0)
        .start()
        .await
        .expect("server starts");
    let base = format!("http://{}", server.local_addr());
    (server, base)
}

/// An HTTP/1.1 client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().http1_only().build().unwrap()
}

/// Sends a request expected to succeed at the transport level and reads its body: the chain
/// `.send().await.unwrap().text().await.unwrap()` (or `.json()`) in one call. The status is not
/// checked; tests that care about it keep the `Response`.
pub trait Fetch {
    /// The body as text.
    fn fetch_text(self) -> impl std::future::Future<Output = String> + Send;
    /// The body parsed as JSON.
    fn fetch_json<T: serde::de::DeserializeOwned>(
        self,
    ) -> impl std::future::Future<Output = T> + Send;
}

impl Fetch for reqwest::RequestBuilder {
    async fn fetch_text(self) -> String {
        self.send().await.unwrap().text().await.unwrap()
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(self) -> T {
        self.send().await.unwrap().json().await.unwrap()
    }
}

/// Waits until `cond` holds, checking every millisecond, failing after 10 s. For conditions
/// that no event announces (counters inside the server), not as a fixed delay.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A running example binary (`cargo build --examples` must have built it).
pub struct Example {
    /// The process.
    pub child: Child,
    /// `http://host:port` it listens on.
    pub base: String,
    /// Its standard output, line by line.
    pub stdout: mpsc::Receiver<String>,
    /// Its standard error (the log), line by line, after the listening line.
    pub stderr: mpsc::Receiver<String>,
}

/// The path of example binary `name` (built by `cargo build --examples` into the target
/// directory of the running test).
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let path = debug.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` first",
        path.display()
    );
    path
}

fn lines<R: std::io::Read + Send + 'static>(r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Example {
    /// Starts example `name` on an ephemeral port and waits for its listening line.
    pub fn start(name: &str) -> Example {
        let mut child = Command::new(example_path(name))
            .env("FERROSERVE_PORT", "0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("example starts");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let stdout = lines(stdout);
        let stderr = lines(child.stderr.take().unwrap());
        let base = loop {
            let line = stderr
                .recv_timeout(Duration::from_secs(30))
                .expect("example prints its listening address");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_owned();
            }
        };
        Example {
            child,
            base,
            stdout,
            stderr,
        }
    }

    /// The next line the example prints on stdout (within 10 s).
    pub fn next_stdout(&self) -> String {
        self.stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("example printed a line")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket route that echoes every text and binary message until the client leaves (for
/// tests of the WebSocket limits and protocol errors).
pub async fn echo_websocket(ws: ferroserve::api::WebSocketUpgrade) -> ferroserve::Response {
    ws.on_upgrade(|mut ws| async move {
        while let Some(Ok(m)) = ws.recv().await {
            if let ferroserve::api::Message::Text(_) | ferroserve::api::Message::Binary(_) = m {
                let _ = ws.send(m).await;
            }
        }
    })
}
