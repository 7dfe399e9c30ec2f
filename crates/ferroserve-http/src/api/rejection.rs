//! The rejections of API extractors, in FastAPI's shapes.
//!
//! Every parse or validation failure of a body, query or path parameter is
//! `422 {"detail":[{"type":..,"loc":[..],"msg":..,"input":..}]}`, where `loc` starts with
//! `"body"`, `"query"` or `"path"` and continues with the field path. A body with the wrong
//! content type is `415 {"detail": "..."}`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// One entry of a 422 body: what went wrong, and where.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// A machine-readable kind: `missing`, `json_invalid`, `type_error`, `value_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Where: `["body", "user", "age"]`, `["query", "limit"]`, `["path", "id"]`.
    pub loc: Vec<Value>,
    /// A human-readable message.
    pub msg: String,
    /// The offending input (the value at `loc`, or its parent object for a missing field).
    pub input: Value,
}

/// A `422 Unprocessable Entity` in FastAPI's shape.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ValidationError {
    /// Every problem found.
    pub detail: Vec<ErrorDetail>,
}

impl ValidationError {
    /// A `422` with one entry.
    pub fn one(kind: &str, loc: Vec<Value>, msg: impl Into<String>, input: Value) -> Self {
        ValidationError {
            detail: vec![ErrorDetail {
                kind: kind.to_owned(),
                loc,
                msg: msg.into(),
                input,
            }],
        }
    }
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for d in &self.detail {
            write!(
                f,
                "{}: {} ({}); ",
                serde_json::to_string(&d.loc).unwrap_or_default(),
                d.msg,
                d.kind
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

impl IntoResponse for ValidationError {
    fn into_response(self) -> Response {
        (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(self)).into_response()
    }
}

/// A rejection with a plain `{"detail": "<message>"}` body (FastAPI's `HTTPException` shape):
/// wrong content type (415), unreadable or oversized body (400/413).
#[derive(Debug, Clone, PartialEq)]
pub struct DetailError {
    /// The status.
    pub status: StatusCode,
    /// The message.
    pub detail: String,
}

impl DetailError {
    /// The rejection of a body that could not be read: `413` naming the limit for a body over
    /// `max_request_body_bytes`, else axum's status and text.
    pub fn from_body(e: axum::extract::rejection::BytesRejection) -> Self {
        Self::body_status(e.status(), e.body_text())
    }

    /// As [`DetailError::from_body`], from a rejection's status and text.
    pub fn body_status(status: StatusCode, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            let limit = crate::scope::limits().body_too_large(None);
            DetailError {
                status,
                detail: limit.to_string(),
            }
        } else {
            DetailError {
                status,
                detail: text,
            }
        }
    }
}

impl From<ferroserve_core::Error> for DetailError {
    /// A ferroserve error in FastAPI's `{"detail": ...}` shape: its status and, for a client
    /// error, its message (a server error's detail stays in the log, as everywhere).
    fn from(e: ferroserve_core::Error) -> Self {
        let status = e.status();
        let detail = if status.is_server_error() {
            tracing::error!(error = %ferroserve_core::error::chain(&e), "request failed");
            status.canonical_reason().unwrap_or("Error").to_owned()
        } else {
            e.to_string()
        };
        DetailError { status, detail }
    }
}

impl std::fmt::Display for DetailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.detail)
    }
}

impl std::error::Error for DetailError {}

impl IntoResponse for DetailError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "detail": self.detail })),
        )
            .into_response()
    }
}

/// The rejection of [`super::Json`], [`super::Query`], [`super::Path`] and [`super::Valid`].
#[derive(Debug)]
pub enum Rejection {
    /// 422 with per-field details.
    Invalid(ValidationError),
    /// Another 4xx with a message.
    Detail(DetailError),
}

impl From<ValidationError> for Rejection {
    fn from(e: ValidationError) -> Self {
        Rejection::Invalid(e)
    }
}

impl From<DetailError> for Rejection {
    fn from(e: DetailError) -> Self {
        Rejection::Detail(e)
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Invalid(e) => e.into_response(),
            Rejection::Detail(e) => e.into_response(),
        }
    }
}

/// Classifies a serde error message into FastAPI-like `type`/`msg`, and the field a "missing
/// field" error names (which belongs at the end of `loc`).
pub(crate) fn classify(message: &str) -> (&'static str, String, Option<String>) {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default().to_owned();
        return ("missing", "Field required".to_owned(), Some(field));
    }
    let kind = if message.starts_with("invalid type") {
        "type_error"
    } else if message.starts_with("unknown field") {
        "extra_forbidden"
    } else if message.starts_with("unknown variant") {
        "enum"
    } else {
        "value_error"
    };
    // serde_json appends " at line L column C"; keep it, it helps.
    (kind, message.to_owned(), None)
}

/// Splits a garde/serde path like `a.b[0].c` into JSON `loc` segments.
pub(crate) fn path_segments(path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            if i > 0 {
                out.push(Value::from(&rest[..i]));
            }
            rest = &rest[i..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let end = stripped.find(']').unwrap_or(stripped.len());
                let idx = &stripped[..end];
                out.push(
                    idx.parse::<u64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| Value::from(idx)),
                );
                rest = stripped.get(end + 1..).unwrap_or("");
            }
        } else {
            out.push(Value::from(rest));
        }
    }
    out
}

/// A serde path as JSON `loc` segments: field and map key names as strings, whatever
/// characters they hold (`"a.b"` stays one segment), indices as numbers.
pub(crate) fn path_loc(path: &serde_path_to_error::Path) -> Vec<Value> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(Value::from(*index)),
            Segment::Map { key } => Some(Value::from(key.as_str())),
            Segment::Enum { variant } => Some(Value::from(variant.as_str())),
            Segment::Unknown => None,
        })
        .collect()
}

/// The value at `loc` (after its first element) inside `root`, or `Null`.
pub(crate) fn value_at(root: &Value, loc: &[Value]) -> Value {
    let mut cur = root;
    for seg in loc {
        cur = match (seg, cur) {
            (Value::String(k), Value::Object(m)) => match m.get(k) {
                Some(v) => v,
                None => return Value::Null,
            },
            (Value::Number(n), Value::Array(a)) => {
                match n.as_u64().and_then(|i| a.get(i as usize)) {
                    Some(v) => v,
                    None => return Value::Null,
                }
            }
            _ => return Value::Null,
        };
    }
    cur.clone()
}

/// Its status is chosen at run time: document it at each status a route returns it with, e.g.
/// `op.response::<404, DetailError>()`; the body is described as `{"detail": string}`.
impl aide::OperationOutput for DetailError {
    type Inner = ();
    fn operation_response(
        ctx: &mut aide::generate::GenContext,
        _operation: &mut aide::openapi::Operation,
    ) -> Option<aide::openapi::Response> {
        rejection_responses(ctx, &[StatusCode::NOT_FOUND])
            .pop()
            .map(|(_, mut response)| {
                response.description = "Error".to_owned();
                response
            })
    }
}

/// A [`DetailError`]'s body, as the OpenAPI document describes it.
#[derive(JsonSchema)]
#[schemars(rename = "DetailError")]
#[allow(dead_code)]
struct DetailBody {
    /// What is wrong.
    detail: String,
}

/// The responses an extractor's rejection documents: `422` with a [`ValidationError`] body,
/// and each of `statuses` with a [`DetailError`] body.
pub fn rejection_responses(
    ctx: &mut aide::generate::GenContext,
    statuses: &[StatusCode],
) -> Vec<(Option<u16>, aide::openapi::Response)> {
    let response = |description: &str, json_schema| aide::openapi::Response {
        description: description.to_owned(),
        content: [(
            "application/json".to_owned(),
            aide::openapi::MediaType {
                schema: Some(aide::openapi::SchemaObject {
                    json_schema,
                    example: None,
                    external_docs: None,
                }),
                ..Default::default()
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let mut out = vec![(
        Some(422),
        response(
            "Validation Error",
            ctx.schema.subschema_for::<ValidationError>(),
        ),
    )];
    for status in statuses {
        out.push((
            Some(status.as_u16()),
            response(
                status.canonical_reason().unwrap_or("Error"),
                ctx.schema.subschema_for::<DetailBody>(),
            ),
        ));
    }
    out
}

impl aide::OperationOutput for ValidationError {
    type Inner = ValidationError;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_loc_segments() {
        assert_eq!(
            path_segments("a.b[0].c"),
            vec![Value::from("a"), "b".into(), 0.into(), "c".into()]
        );
        assert_eq!(path_segments("[2]"), vec![Value::from(2)]);
        assert!(path_segments("").is_empty());
    }

    #[test]
    fn missing_fields_name_the_field() {
        let (kind, msg, field) = classify("missing field `user_name` at line 1 column 14");
        assert_eq!(
            (kind, msg.as_str(), field.as_deref()),
            ("missing", "Field required", Some("user_name"))
        );
    }
}
