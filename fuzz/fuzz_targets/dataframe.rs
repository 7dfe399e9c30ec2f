//! `pandas_read_json` on arbitrary query strings and bodies: it never panics, every rejection
//! is a 4xx that says what is wrong, and a frame read from records keeps every record as a row
//! and every non-null value in its column.
#![no_main]

use axum::body::Body;
use axum::extract::FromRequest;
use ferroserve::adapters::PandasReadJson;
use ferroserve::api::Rejection;
use ferroserve::IntoResponse;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Rows and per-column non-null counts the body's records should give, when the body is a
/// list of objects read with `orient=records`.
fn records(query: &str, body: &[u8]) -> Option<(usize, BTreeMap<String, usize>)> {
    if query != "orient=records" {
        return None;
    }
    let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let mut counts = BTreeMap::new();
    for row in &rows {
        for (k, v) in row.as_object()? {
            *counts.entry(k.clone()).or_default() += usize::from(!v.is_null());
        }
    }
    Some((rows.len(), counts))
}

fuzz_target!(|data: &[u8]| {
    // The first line is the query string, the rest the body.
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(query) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or_default();
    let Ok(req) = http::Request::post(format!("/x?{query}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
    else {
        return;
    };
    let result = runtime().block_on(PandasReadJson::from_request(req, &()));
    match result {
        Ok(PandasReadJson(df)) => {
            if let Some((rows, counts)) = records(query, body) {
                assert_eq!(df.height(), rows, "every record is a row");
                for (name, non_null) in counts {
                    let col = df.column(&name).expect("every key is a column");
                    assert_eq!(col.len() - col.null_count(), non_null, "column {name}");
                }
            }
        }
        Err(rejection) => {
            match &rejection {
                Rejection::Invalid(e) => {
                    assert!(e.detail.iter().all(|d| !d.msg.is_empty()), "{e:?}")
                }
                Rejection::Detail(d) => assert!(!d.detail.is_empty(), "{d:?}"),
            }
            assert!(rejection.into_response().status().is_client_error());
        }
    }
});
