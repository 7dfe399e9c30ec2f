//! The baseline: a bare axum 0.8 server doing the same work as the ferroserve scenario servers.
//!
//! `bare_axum <counter|handle_hop> [PORT]` listens on `127.0.0.1:PORT` (default
//! `$FERROSERVE_PORT`, else 8000) with tokio's default multi-threaded runtime, one route:
//!
//! - `counter`: `GET /?a=b&c=d` → the query parameters as compact JSON (`{"a":"b","c":"d"}`).
//! - `handle_hop`: `POST /` with a JSON array of numbers → `{"sum":6.5}`, summed inline.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::Query;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

async fn counter(Query(params): Query<HashMap<String, String>>) -> Json<HashMap<String, String>> {
    Json(params)
}

async fn handle_hop(Json(xs): Json<Vec<f64>>) -> Json<Value> {
    Json(json!({ "sum": xs.iter().sum::<f64>() }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| "counter".to_owned());
    let port: u16 = args
        .next()
        .or_else(|| std::env::var("FERROSERVE_PORT").ok())
        .and_then(|p| p.parse().ok())
        .unwrap_or(8000);
    let app = match scenario.as_str() {
        "counter" => Router::new().route("/", get(counter)),
        "handle_hop" => Router::new().route("/", post(handle_hop)),
        other => {
            eprintln!("unknown scenario {other:?} (expected counter or handle_hop)");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    eprintln!("bare axum listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
