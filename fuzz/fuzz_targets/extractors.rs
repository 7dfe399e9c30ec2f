//! The API extractors on arbitrary requests (content type, query string, headers, body), run
//! as a handler runs them: every rejection is a 4xx whose JSON body has a `detail`, a 422's
//! entries each say where (`loc` starts at `body`, `query` or `header`) and what, and a 422 on
//! a named array of `json_to_multi_ndarray` is located at a name the body actually has.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts};
use ferroserve::adapters::{
    ImageToNdarray, JsonRequest, JsonToMultiNdarray, JsonToNdarray, JsonToNdarrayOf,
};
use ferroserve::api::{Headers, Json, Query, Rejection};
use ferroserve::IntoResponse;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct User {
    user_id: i64,
    user_name: String,
    tags: Option<Vec<u8>>,
    scores: Option<BTreeMap<String, f32>>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Params {
    limit: Option<u32>,
    q: Option<String>,
    flag: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct ApiHeaders {
    x_api_key: Option<String>,
    x_count: Option<u16>,
}

/// The input, written like a request so seeds can be written by hand: a byte choosing the
/// extractor, a byte choosing the content type, then `query\n`, `name: value\n` header lines, an
/// empty line, and the body.
#[derive(Debug)]
struct Input<'a> {
    extractor: u8,
    content_type: u8,
    query: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

fn line<'a>(data: &mut &'a [u8]) -> Option<&'a str> {
    let end = data.iter().position(|&b| b == b'\n')?;
    let text = std::str::from_utf8(&data[..end]).ok()?;
    *data = &data[end + 1..];
    Some(text)
}

fn input(mut data: &[u8]) -> Option<Input<'_>> {
    let [extractor, content_type, rest @ ..] = data else {
        return None;
    };
    data = rest;
    let query = line(&mut data)?;
    let mut headers = Vec::new();
    loop {
        let header = line(&mut data)?;
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name, value.trim_start()));
    }
    Some(Input {
        extractor: *extractor,
        content_type: *content_type,
        query,
        headers,
        body: data,
    })
}

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.api+json",
    "multipart/form-data; boundary=X",
    "text/plain",
    "",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn request(input: &Input<'_>) -> Option<axum::extract::Request> {
    let mut builder = http::Request::post(format!("/x?{}", input.query));
    let ct = CONTENT_TYPES[usize::from(input.content_type) % CONTENT_TYPES.len()];
    if !ct.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, ct);
    }
    for &(name, value) in &input.headers {
        builder = builder.header(name, value);
    }
    // What hyper would refuse before any extractor runs (a bad URI or header) is not ours.
    builder.body(Body::from(input.body.to_vec())).ok()
}

/// A rejection is a 4xx with a `detail`; a 422 says where and what for every entry.
fn explains(rejection: Rejection) -> Option<Vec<Vec<Value>>> {
    let locs = match &rejection {
        Rejection::Invalid(e) => {
            assert!(!e.detail.is_empty());
            for d in &e.detail {
                assert!(!d.msg.is_empty(), "{d:?}");
                assert!(!d.kind.is_empty(), "{d:?}");
                let at = d.loc.first().and_then(Value::as_str);
                assert!(matches!(at, Some("body" | "query" | "header")), "{d:?}");
            }
            Some(e.detail.iter().map(|d| d.loc.clone()).collect())
        }
        Rejection::Detail(d) => {
            assert!(d.status.is_client_error(), "{d:?}");
            assert!(!d.detail.is_empty(), "{d:?}");
            None
        }
    };
    let response = rejection.into_response();
    assert!(response.status().is_client_error(), "{}", response.status());
    locs
}

async fn extract<E: FromRequest<(), Rejection = Rejection>>(
    req: axum::extract::Request,
) -> Option<Vec<Vec<Value>>> {
    E::from_request(req, &()).await.err().and_then(explains)
}

async fn extract_parts<E: FromRequestParts<(), Rejection = Rejection>>(
    req: axum::extract::Request,
) -> Option<Vec<Vec<Value>>> {
    let (mut parts, _) = req.into_parts();
    E::from_request_parts(&mut parts, &())
        .await
        .err()
        .and_then(explains)
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = input(data) else { return };
    let Some(req) = request(&input) else { return };
    runtime().block_on(async move {
        match input.extractor % 8 {
            0 => drop(extract::<Json<User>>(req).await),
            1 => drop(extract_parts::<Query<Params>>(req).await),
            2 => drop(extract_parts::<Headers<ApiHeaders>>(req).await),
            3 => drop(extract::<JsonToNdarray>(req).await),
            4 => drop(extract::<JsonToNdarrayOf<f32>>(req).await),
            5 => drop(extract::<JsonRequest>(req).await),
            6 => drop(extract::<ImageToNdarray>(req).await),
            _ => {
                let Some(locs) = extract::<JsonToMultiNdarray>(req).await else {
                    return;
                };
                // Each array is named by its key, whatever characters the key has.
                let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(input.body) else {
                    return;
                };
                for loc in locs {
                    if let Some(name) = loc.get(1).and_then(Value::as_str) {
                        assert!(
                            body.contains_key(name),
                            "loc {loc:?} names no array of {body:?}"
                        );
                    }
                }
            }
        }
    });
});
