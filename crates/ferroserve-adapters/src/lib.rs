//! HTTP adapters (Ray's `ray.serve.http_adapters`): turn a request into the input a model wants.
//!
//! Each adapter is an axum extractor, so it works in any API route (FastAPI's `Depends`) and as
//! the `http_adapter` of a [`ferroserve_http::dag::DagDriver`], and each describes its input in
//! the OpenAPI document. Bad input is a `422` in FastAPI's shape that says what is wrong and
//! where. Limits (array elements, image pixels, multipart parts) are the server's
//! ([`ferroserve_http::limits`]).
//!
//! This crate uses only the public API of `ferroserve-http`; it owns the heavy dependencies
//! (ndarray, image, and polars behind the `dataframe` feature) so that nothing below it needs
//! them.
//!
//! | Ray | ferroserve | yields |
//! |---|---|---|
//! | `json_to_ndarray` | [`JsonToNdarray`] / [`JsonToNdarrayOf<T>`] | [`DynArray`] / `ArrayD<T>` |
//! | `json_to_multi_ndarray` | [`JsonToMultiNdarray`] | `BTreeMap<String, DynArray>` |
//! | `image_to_ndarray` | [`ImageToNdarray`] (multipart field `img`, PNG/JPEG) | `Array3<u8>` (height, width, channels) |
//! | `starlette_request` | [`StarletteRequest`] | the raw request |
//! | `json_request` | [`JsonRequest`] | `serde_json::Value` |
//! | `pandas_read_json` | `PandasReadJson` (feature `dataframe`) | a polars `DataFrame` (`orient`, `lines` from the query) |
//! | pydantic model | [`ferroserve_http::api::Valid`]`<`[`ferroserve_http::api::Json`]`<T>>` | `T` |

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;
#[cfg(feature = "dataframe")]
mod dataframe;
mod image;
mod ndarray;
#[cfg(any(test, feature = "fuzzing"))]
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub(crate) mod ndarray_oracle;

use std::collections::BTreeMap;

use ::ndarray::{Array3, ArrayD};
use aide::generate::GenContext;
use aide::openapi::{MediaType, Operation, RequestBody, SchemaObject};
use aide::OperationInput;
use axum::extract::{FromRequest, Multipart};
use http::StatusCode;
use serde_json::{json, Value};

use ferroserve_http::api::{DetailError, Json, Rejection, ValidationError};

/// Runs `f` as a request to a server whose `max_array_elements` limit is `max` (for tests of
/// the array decoders).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn with_max_array_elements<R>(max: u64, f: impl FnOnce() -> R) -> R {
    let mut limits = ferroserve_http::Limits::default();
    limits.max_array_elements = max;
    let scope = std::sync::Arc::new(ferroserve_http::scope::HttpScope::new(limits, "/"));
    ferroserve_core::RequestContext::new("test", None)
        .with_local(scope)
        .enter(f)
}

#[cfg(feature = "dataframe")]
pub use self::dataframe::PandasReadJson;
pub use self::image::ImageLimits;
pub use self::ndarray::{DynArray, Element, NdArray};

pub use ferroserve_http::api::{JsonRequest, StarletteRequest};

/// `json_to_ndarray`: a body `{"array": [...], "shape": [...]?, "dtype": "..."?}` as an array
/// of the requested (or inferred) dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonToNdarray(pub DynArray);

/// `json_to_ndarray` with the element type fixed by the endpoint (a `dtype` in the body must
/// match it).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonToNdarrayOf<T>(pub ArrayD<T>);

/// `json_to_multi_ndarray`: a body `{"name": NdArray, ...}` as named arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonToMultiNdarray(pub BTreeMap<String, DynArray>);

/// `image_to_ndarray`: the PNG or JPEG in multipart field `img` as `(height, width, channels)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageToNdarray(pub Array3<u8>);

impl<S: Send + Sync> FromRequest<S> for JsonToNdarray {
    type Rejection = Rejection;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        let Json(nd) = Json::<NdArray>::from_request(req, state).await?;
        Ok(JsonToNdarray(nd.into_dyn()?))
    }
}

impl<S: Send + Sync, T: Element> FromRequest<S> for JsonToNdarrayOf<T> {
    type Rejection = Rejection;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        let Json(nd) = Json::<NdArray>::from_request(req, state).await?;
        Ok(JsonToNdarrayOf(nd.into_array()?))
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonToMultiNdarray {
    type Rejection = Rejection;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        let Json(map) = Json::<BTreeMap<String, NdArray>>::from_request(req, state).await?;
        Ok(JsonToMultiNdarray(self::ndarray::multi(map)?))
    }
}

impl<S: Send + Sync> FromRequest<S> for ImageToNdarray {
    type Rejection = Rejection;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Rejection> {
        let server = ferroserve_http::scope::limits();
        let limits = req
            .extensions()
            .get::<ImageLimits>()
            .copied()
            .unwrap_or(ImageLimits {
                max_pixels: server.max_image_pixels,
            });
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|e| DetailError {
                status: if e.status() == StatusCode::BAD_REQUEST {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                } else {
                    e.status()
                },
                detail: format!(
                    "expected a multipart/form-data body with an `img` file field: {}",
                    e.body_text()
                ),
            })?;
        let broken = |e: axum::extract::multipart::MultipartError| -> Rejection {
            let text = format!("broken multipart body: {}", e.body_text());
            DetailError::body_status(e.status(), text).into()
        };
        let mut parts = 0;
        while let Some(mut field) = form.next_field().await.map_err(broken)? {
            parts += 1;
            if parts > server.max_multipart_parts {
                return Err(DetailError::from(server.too_many_parts()).into());
            }
            // Every part is read chunk by chunk and counted, the ones skipped too; only `img`
            // is kept.
            let keep = field.name() == Some("img");
            let mut bytes = Vec::new();
            let mut size = 0u64;
            while let Some(chunk) = field.chunk().await.map_err(broken)? {
                size += chunk.len() as u64;
                if size > server.max_multipart_part_bytes {
                    let name = field.name().unwrap_or_default().to_owned();
                    return Err(DetailError::from(server.part_too_large(&name)).into());
                }
                if keep {
                    bytes.extend_from_slice(&chunk);
                }
            }
            if keep {
                return Ok(ImageToNdarray(self::image::decode(&bytes, limits)?));
            }
        }
        Err(ValidationError::one(
            "missing",
            vec!["body".into(), "img".into()],
            "Field required",
            Value::Null,
        )
        .into())
    }
}

impl OperationInput for JsonToNdarray {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<NdArray>::operation_input(ctx, operation);
    }
    fn inferred_early_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, aide::openapi::Response)> {
        Json::<NdArray>::inferred_early_responses(ctx, operation)
    }
}

impl<T> OperationInput for JsonToNdarrayOf<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<NdArray>::operation_input(ctx, operation);
    }
    fn inferred_early_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, aide::openapi::Response)> {
        Json::<NdArray>::inferred_early_responses(ctx, operation)
    }
}

impl OperationInput for JsonToMultiNdarray {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<BTreeMap<String, NdArray>>::operation_input(ctx, operation);
    }
    fn inferred_early_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, aide::openapi::Response)> {
        Json::<NdArray>::inferred_early_responses(ctx, operation)
    }
}

impl OperationInput for ImageToNdarray {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        let schema = json!({
            "type": "object",
            "properties": {"img": {"type": "string", "format": "binary", "description": "A PNG or JPEG image"}},
            "required": ["img"],
        });
        let Ok(json_schema) = schemars::Schema::try_from(schema) else {
            return;
        };
        operation.request_body = Some(aide::openapi::ReferenceOr::Item(RequestBody {
            description: Some("An image upload".into()),
            content: [(
                "multipart/form-data".to_owned(),
                MediaType {
                    schema: Some(SchemaObject {
                        json_schema,
                        example: None,
                        external_docs: None,
                    }),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            required: true,
            extensions: Default::default(),
        }));
    }
    fn inferred_early_responses(
        ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Vec<(Option<u16>, aide::openapi::Response)> {
        // A broken multipart body, an image above the pixel limit, not a multipart body.
        ferroserve_http::api::rejection_responses(
            ctx,
            &[
                StatusCode::BAD_REQUEST,
                StatusCode::PAYLOAD_TOO_LARGE,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ],
        )
    }
}
