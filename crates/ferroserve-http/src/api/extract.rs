//! Typed request parts with FastAPI's error shapes: [`Json`], [`Query`], [`Path`], [`Headers`],
//! [`Valid`], [`RootPath`], and Ray's two request adapters that need nothing but HTTP,
//! [`StarletteRequest`] and [`JsonRequest`]. Each also describes itself in the OpenAPI document.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::rejection::{
    classify, path_loc, path_segments, rejection_responses, value_at, DetailError, Rejection,
    ValidationError,
};

/// A JSON body (as an extractor) or a JSON response (as a return value).
///
/// As an extractor: requires `Content-Type: application/json` (or `+json`), else `415`; a body
/// that is not JSON, or does not match `T`, is a `422` whose `loc` starts with `"body"` and names
/// the field. As a response: compact JSON, `application/json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

/// Query parameters deserialized into `T`; a missing or malformed one is a `422` at
/// `["query", name]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Query<T>(pub T);

/// Path parameters deserialized into `T` (a value, a tuple, or a struct); a malformed one is a
/// `422` at `["path", name]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Path<T>(pub T);

/// Request headers deserialized into `T`: each field reads the header of the same name with
/// `_` as `-` (`x_token` reads `x-token`), as FastAPI's `Header()`. Values are parsed from text
/// (numbers, booleans); a missing or malformed one is a `422` at `["header", name]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headers<T>(pub T);

/// Runs `garde` validation on an extracted [`Json`], [`Query`] or [`Path`]: every violated
/// constraint becomes an entry of one `422`, located at `[location, field, ...]`.
///
/// ```
/// use ferroserve_http::api::{Json, Valid};
/// use garde::Validate;
///
/// #[derive(serde::Deserialize, schemars::JsonSchema, Validate)]
/// struct User {
///     #[garde(range(min = 1))]
///     user_id: i64,
///     #[garde(length(min = 1, max = 64))]
///     user_name: String,
/// }
///
/// async fn create(Valid(Json(user)): Valid<Json<User>>) -> String {
///     user.user_name
/// }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Valid<E>(pub E);

/// The application's route prefix (`""` at `/`), for building links: FastAPI's `root_path`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootPath(pub String);

/// Ray's `json_request` adapter: the body as any JSON value (`415`/`422` as [`Json`]).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRequest(pub Value);

/// Ray's `starlette_request` adapter: the raw request, unchanged (a DAG's default input).
#[derive(Debug)]
pub struct StarletteRequest(pub axum::extract::Request);

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

fn json_invalid(e: &serde_json::Error) -> ValidationError {
    ValidationError::one(
        "json_invalid",
        vec!["body".into(), Value::from(e.column())],
        format!(
            "JSON decode error: {}",
            crate::limits::json_error_message(e)
        ),
        Value::Object(Default::default()),
    )
}

/// Parses a JSON body into `T`, reporting errors at `["body", ...]` in FastAPI's shape (the
/// body extractors' parser; public for adapters that parse bodies of their own).
pub fn parse_json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationError> {
    // Fast path without path tracking; parse again to locate the error only when there is one.
    if let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut *de);
    let err = match result {
        Ok(value) => match de.end() {
            Ok(()) => return Ok(value),
            Err(trailing) => return Err(json_invalid(&trailing)),
        },
        Err(e) => e,
    };
    let inner = err.inner();
    if inner.is_syntax() || inner.is_eof() {
        return Err(json_invalid(inner));
    }
    let message = inner.to_string();
    let message = message.split(" at line ").next().unwrap_or(&message);
    let (kind, msg, missing) = classify(message);
    let mut loc = path_loc(err.path());
    let parsed: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let input = value_at(&parsed, &loc);
    if let Some(field) = missing {
        loc.push(field.into());
    }
    loc.insert(0, "body".into());
    Err(ValidationError::one(kind, loc, msg, input))
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Rejection;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match &content_type {
            Some(ct) if is_json(ct) => {}
            other => {
                return Err(DetailError {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    detail: format!(
                        "Unsupported Media Type: expected `Content-Type: application/json`, got {}",
                        other
                            .as_deref()
                            .map_or("none".to_owned(), |c| format!("`{c}`"))
                    ),
                }
                .into())
            }
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(DetailError::from_body)?;
        Ok(Json(parse_json_body(&bytes)?))
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonRequest {
    type Rejection = Rejection;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        let Json(v) = Json::<Value>::from_request(req, state).await?;
        Ok(JsonRequest(v))
    }
}

impl<S: Send + Sync> FromRequest<S> for StarletteRequest {
    type Rejection = std::convert::Infallible;
    async fn from_request(
        req: axum::extract::Request,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(StarletteRequest(req))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(Query(v)),
            Err(err) => {
                let message = err.inner().to_string();
                let (kind, msg, missing) = classify(&message);
                let pairs: serde_json::Map<String, Value> =
                    form_urlencoded::parse(query.as_bytes())
                        .map(|(k, v)| (k.into_owned(), Value::from(v.into_owned())))
                        .collect();
                let mut loc = path_loc(err.path());
                let input = if loc.is_empty() {
                    Value::Object(pairs)
                } else {
                    value_at(&Value::Object(pairs), &loc)
                };
                if let Some(field) = missing {
                    loc.push(field.into());
                }
                loc.insert(0, "query".into());
                Err(ValidationError::one(kind, loc, msg, input).into())
            }
        }
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Headers<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        // Header names as field names; values as form-encoded text so that serde parses numbers.
        let mut form = form_urlencoded::Serializer::new(String::new());
        let mut pairs = serde_json::Map::new();
        for (name, value) in &parts.headers {
            let Ok(value) = value.to_str() else { continue };
            let field = name.as_str().replace('-', "_");
            form.append_pair(&field, value);
            pairs.insert(name.as_str().to_owned(), Value::from(value));
        }
        let form = form.finish();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(form.as_bytes()));
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(Headers(v)),
            Err(err) => {
                let (kind, msg, missing) = classify(&err.inner().to_string());
                let field = missing.unwrap_or_else(|| err.path().to_string());
                let header = field.replace('_', "-");
                let input = pairs.get(&header).cloned().unwrap_or(Value::Null);
                Err(
                    ValidationError::one(kind, vec!["header".into(), header.into()], msg, input)
                        .into(),
                )
            }
        }
    }
}

impl<T: garde::Validate<Context = ()>> Validatable for Headers<T> {
    type Inner = T;
    const LOCATION: &'static str = "header";
    fn inner(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let (loc, value, msg) = match e.kind() {
                    ErrorKind::ParseErrorAtKey {
                        key,
                        value,
                        expected_type,
                    } => (
                        Value::from(key.as_str()),
                        value.clone(),
                        format!("Input should be a valid {expected_type}"),
                    ),
                    ErrorKind::ParseErrorAtIndex {
                        index,
                        value,
                        expected_type,
                    } => (
                        path_param_name(parts, state, Some(*index))
                            .await
                            .unwrap_or_else(|| Value::from(*index)),
                        value.clone(),
                        format!("Input should be a valid {expected_type}"),
                    ),
                    ErrorKind::ParseError {
                        value,
                        expected_type,
                    } => (
                        // A single value: name it after the route's only parameter.
                        path_param_name(parts, state, None)
                            .await
                            .unwrap_or(Value::Null),
                        value.clone(),
                        format!("Input should be a valid {expected_type}"),
                    ),
                    other => (Value::Null, String::new(), other.to_string()),
                };
                let mut full = vec![Value::from("path")];
                if !loc.is_null() {
                    full.push(loc);
                }
                Err(ValidationError::one("type_error", full, msg, Value::from(value)).into())
            }
            Err(other) => Err(DetailError {
                status: other.status(),
                detail: other.body_text(),
            }
            .into()),
        }
    }
}

/// The route's parameter name at `index` (or its only one), from the raw path parameters.
async fn path_param_name<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    index: Option<usize>,
) -> Option<Value> {
    let raw = axum::extract::RawPathParams::from_request_parts(parts, state)
        .await
        .ok()?;
    let keys: Vec<&str> = raw.iter().map(|(k, _)| k).collect();
    match index {
        Some(i) => keys.get(i).map(|k| Value::from(*k)),
        None if keys.len() == 1 => Some(Value::from(keys[0])),
        None => None,
    }
}

/// An extracted value that can be validated, and where its errors are located.
pub trait Validatable {
    /// The validated type.
    type Inner: garde::Validate<Context = ()>;
    /// `"body"`, `"query"` or `"path"`.
    const LOCATION: &'static str;
    /// The value to validate.
    fn inner(&self) -> &Self::Inner;
}

impl<T: garde::Validate<Context = ()>> Validatable for Json<T> {
    type Inner = T;
    const LOCATION: &'static str = "body";
    fn inner(&self) -> &T {
        &self.0
    }
}

impl<T: garde::Validate<Context = ()>> Validatable for Query<T> {
    type Inner = T;
    const LOCATION: &'static str = "query";
    fn inner(&self) -> &T {
        &self.0
    }
}

impl<T: garde::Validate<Context = ()>> Validatable for Path<T> {
    type Inner = T;
    const LOCATION: &'static str = "path";
    fn inner(&self) -> &T {
        &self.0
    }
}

fn validate<E: Validatable>(extracted: E) -> Result<Valid<E>, Rejection> {
    match garde::Validate::validate(extracted.inner()) {
        Ok(()) => Ok(Valid(extracted)),
        Err(report) => {
            let detail = report
                .iter()
                .map(|(path, error)| {
                    let mut loc = vec![Value::from(E::LOCATION)];
                    loc.extend(path_segments(&path.to_string()));
                    super::rejection::ErrorDetail {
                        kind: "value_error".to_owned(),
                        loc,
                        msg: error.message().to_owned(),
                        input: Value::Null,
                    }
                })
                .collect();
            Err(ValidationError { detail }.into())
        }
    }
}

impl<S, E> FromRequest<S> for Valid<E>
where
    S: Send + Sync,
    E: FromRequest<S, Rejection = Rejection> + Validatable,
{
    type Rejection = Rejection;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        validate(E::from_request(req, state).await?)
    }
}

impl<S, E> FromRequestParts<S> for Valid<E>
where
    S: Send + Sync,
    E: FromRequestParts<S, Rejection = Rejection> + Validatable,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        validate(E::from_request_parts(parts, state).await?)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RootPath {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(RootPath(crate::scope::root_path()))
    }
}

mod openapi {
    //! How each extractor appears in the OpenAPI document: as axum's own, plus a documented 422.
    use aide::generate::GenContext;
    use aide::openapi::{Operation, Response};
    use aide::{OperationInput, OperationOutput};
    use schemars::JsonSchema;

    use super::*;

    fn unprocessable(ctx: &mut GenContext) -> Vec<(Option<u16>, Response)> {
        rejection_responses(ctx, &[])
    }

    impl<T: JsonSchema> OperationInput for Json<T> {
        fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
            axum::Json::<T>::operation_input(ctx, operation);
        }
        fn inferred_early_responses(
            ctx: &mut GenContext,
            _operation: &mut Operation,
        ) -> Vec<(Option<u16>, Response)> {
            // A body of another content type is refused with 415.
            rejection_responses(ctx, &[StatusCode::UNSUPPORTED_MEDIA_TYPE])
        }
    }

    impl<T: JsonSchema> OperationInput for Query<T> {
        fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
            axum::extract::Query::<T>::operation_input(ctx, operation);
        }
        fn inferred_early_responses(
            ctx: &mut GenContext,
            _operation: &mut Operation,
        ) -> Vec<(Option<u16>, Response)> {
            unprocessable(ctx)
        }
    }

    impl<T: JsonSchema> OperationInput for Path<T> {
        fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
            let schema = ctx.schema.subschema_for::<T>();
            let resolved = ctx.resolve_schema(&schema).as_value().clone();
            if resolved.get("properties").is_some() {
                // A struct: its fields name the parameters.
                axum::extract::Path::<T>::operation_input(ctx, operation);
                return;
            }
            // A value or a tuple: the route's `{names}` name them, in order; see
            // `super::super::name_path_params`, which runs once the route's path is known.
            let schemas = match resolved.get("prefixItems") {
                Some(Value::Array(items)) => items.clone(),
                _ => vec![schema.as_value().clone()],
            };
            operation.extensions.insert(
                super::super::PATH_PARAMS_EXT.to_owned(),
                Value::Array(schemas),
            );
        }
        fn inferred_early_responses(
            ctx: &mut GenContext,
            _operation: &mut Operation,
        ) -> Vec<(Option<u16>, Response)> {
            unprocessable(ctx)
        }
    }

    impl<T: JsonSchema> OperationInput for Headers<T> {
        fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
            use aide::operation::{add_parameters, parameters_from_schema, ParamLocation};
            let schema = ctx.schema.subschema_for::<T>();
            let mut params = parameters_from_schema(ctx, schema, ParamLocation::Header);
            for p in &mut params {
                let data = p.parameter_data_mut();
                data.name = data.name.replace('_', "-");
            }
            add_parameters(ctx, operation, params);
        }
        fn inferred_early_responses(
            ctx: &mut GenContext,
            _operation: &mut Operation,
        ) -> Vec<(Option<u16>, Response)> {
            unprocessable(ctx)
        }
    }

    impl<E: OperationInput> OperationInput for Valid<E> {
        fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
            E::operation_input(ctx, operation);
        }
        fn inferred_early_responses(
            ctx: &mut GenContext,
            operation: &mut Operation,
        ) -> Vec<(Option<u16>, Response)> {
            E::inferred_early_responses(ctx, operation)
        }
    }

    impl OperationInput for RootPath {}

    impl OperationInput for JsonRequest {
        fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
            Json::<Value>::operation_input(ctx, operation);
        }
        fn inferred_early_responses(
            ctx: &mut GenContext,
            operation: &mut Operation,
        ) -> Vec<(Option<u16>, Response)> {
            Json::<Value>::inferred_early_responses(ctx, operation)
        }
    }

    impl OperationInput for StarletteRequest {}

    impl<T: JsonSchema> OperationOutput for Json<T> {
        type Inner = T;
        fn operation_response(ctx: &mut GenContext, operation: &mut Operation) -> Option<Response> {
            axum::Json::<T>::operation_response(ctx, operation)
        }
        fn inferred_responses(
            ctx: &mut GenContext,
            operation: &mut Operation,
        ) -> Vec<(Option<u16>, Response)> {
            axum::Json::<T>::inferred_responses(ctx, operation)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct User {
        user_id: i64,
        user_name: String,
        tags: Option<Vec<u8>>,
    }

    fn err<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> serde_json::Value {
        serde_json::to_value(parse_json_body::<T>(body.as_bytes()).unwrap_err()).unwrap()
    }

    #[test]
    fn body_errors_are_located() {
        let e = err::<User>(r#"{"user_id": 1}"#);
        assert_eq!(
            e["detail"][0],
            serde_json::json!({"type":"missing","loc":["body","user_name"],"msg":"Field required","input":{"user_id":1}})
        );
        let e = err::<User>(r#"{"user_id": "x", "user_name": "a"}"#);
        assert_eq!(
            e["detail"][0]["loc"],
            serde_json::json!(["body", "user_id"])
        );
        assert_eq!(e["detail"][0]["type"], "type_error");
        assert_eq!(e["detail"][0]["input"], "x");
        let e = err::<User>(r#"{"user_id": 1, "user_name": "a", "tags": [1, 300]}"#);
        assert_eq!(
            e["detail"][0]["loc"],
            serde_json::json!(["body", "tags", 1])
        );
        // Found by `fuzz/` (extractors): a map key holding `.` or `[` is one segment of `loc`,
        // not split as if it were a path.
        let e = err::<BTreeMap<String, User>>(r#"{"a.b[0]": {"user_id": "x", "user_name": "a"}}"#);
        assert_eq!(
            e["detail"][0]["loc"],
            serde_json::json!(["body", "a.b[0]", "user_id"])
        );
        assert_eq!(e["detail"][0]["input"], "x");
        let e = err::<User>("{oops");
        assert_eq!(e["detail"][0]["type"], "json_invalid");
        let e = err::<User>(r#"{"user_id": 1, "user_name": "a"} trailing"#);
        assert_eq!(e["detail"][0]["type"], "json_invalid");
    }
}
