//! The admin API and the proxy as the CLI reaches them: one HTTP/1.1 request at a time, with
//! hyper's client.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long a connection may take before the server counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an answer may take: a deploy waits for replicas to start, and model loads are slow.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// Nothing accepted the connection, or what answered did not speak HTTP.
    NoServer(String),
    /// The server took longer than [`ANSWER_TIMEOUT`].
    TimedOut,
}

/// Sends `method path` with `body` (YAML or JSON, for configs) to `address` (`host:port`, an
/// optional `http://` in front) and returns the status and the body as text.
pub(crate) fn request(
    address: &str,
    method: Method,
    path: &str,
    body: String,
) -> Result<(u16, String), NoAnswer> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NoAnswer::NoServer(e.to_string()))?;
    runtime.block_on(send(address, method, path, body))
}

async fn send(
    address: &str,
    method: Method,
    path: &str,
    body: String,
) -> Result<(u16, String), NoAnswer> {
    let host = address.trim_start_matches("http://").trim_end_matches('/');
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        .header(http::header::CONTENT_TYPE, "application/yaml")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| NoAnswer::NoServer(format!("cannot address {host}: {e}")))?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let cause = std::error::Error::source(&e).map_or(e.to_string(), |c| c.to_string());
            NoAnswer::NoServer(cause)
        })?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| NoAnswer::NoServer(format!("the answer broke off: {e}")))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| NoAnswer::TimedOut)?
}
