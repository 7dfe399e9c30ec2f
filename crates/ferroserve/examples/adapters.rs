//! One route per built-in HTTP adapter, plus a validated model (the guide's pydantic `User`).
//!
//! ```sh
//! cargo run --example adapters
//! curl -X POST localhost:8000/ndarray -H 'content-type: application/json' -d '{"array": [[1, 2], [3, 4]], "dtype": "float32"}'
//! curl -X POST localhost:8000/multi_ndarray -H 'content-type: application/json' -d '{"a": {"array": [1, 2]}, "b": {"array": [true]}}'
//! curl -X POST localhost:8000/image -F img=@picture.png
//! curl -X POST localhost:8000/json -H 'content-type: application/json' -d '{"any": ["json"]}'
//! curl "localhost:8000/raw?x=1"
//! curl -X POST localhost:8000/user -H 'content-type: application/json' -d '{"user_id": 1, "user_name": "ada"}'
//! # with --features dataframe:
//! curl -X POST "localhost:8000/dataframe?orient=records" -d '[{"a": 1, "b": "x"}]'   # {"columns":["a","b"],"rows":1}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use ferroserve::adapters::{
    DynArray, ImageToNdarray, JsonRequest, JsonToMultiNdarray, JsonToNdarray, StarletteRequest,
};
use ferroserve::api::routing::{get, post};
use ferroserve::api::{ApiIngress, ApiRouter, Json, Valid};
use ferroserve::{Application, Deployment};
use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The pydantic `User` of Ray Serve's HTTP guide, as a validated serde type.
#[derive(Debug, Serialize, Deserialize, JsonSchema, Validate)]
struct User {
    #[garde(skip)]
    user_id: i64,
    #[garde(skip)]
    user_name: String,
}

fn describe(array: &DynArray) -> Value {
    json!({"shape": array.shape(), "dtype": array.dtype(), "sum": array.sum_value()})
}

struct Adapters;

impl Adapters {
    async fn ndarray(JsonToNdarray(array): JsonToNdarray) -> Json<Value> {
        Json(describe(&array))
    }

    async fn multi_ndarray(
        JsonToMultiNdarray(arrays): JsonToMultiNdarray,
    ) -> Json<BTreeMap<String, Value>> {
        Json(
            arrays
                .iter()
                .map(|(k, a)| (k.clone(), describe(a)))
                .collect(),
        )
    }

    async fn image(ImageToNdarray(img): ImageToNdarray) -> Json<Value> {
        Json(json!({"shape": img.shape()}))
    }

    async fn json(JsonRequest(body): JsonRequest) -> Json<Value> {
        Json(body)
    }

    async fn raw(StarletteRequest(request): StarletteRequest) -> Json<Value> {
        let query: BTreeMap<String, String> =
            ferroserve::QueryParams::parse(request.uri().query().unwrap_or(""))
                .to_map()
                .into_iter()
                .collect();
        Json(json!({
            "method": request.method().as_str(),
            "path": request.uri().path(),
            "query": query,
        }))
    }

    async fn user(Valid(Json(user)): Valid<Json<User>>) -> Json<User> {
        Json(user)
    }

    /// Needs the `dataframe` feature (polars): `cargo run --features dataframe --example adapters`.
    #[cfg(feature = "dataframe")]
    async fn dataframe(
        ferroserve::adapters::PandasReadJson(df): ferroserve::adapters::PandasReadJson,
    ) -> Json<Value> {
        let columns: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|c| c.to_string())
            .collect();
        Json(json!({"columns": columns, "rows": df.height()}))
    }
}

impl ApiIngress for Adapters {
    fn routes() -> ApiRouter<Arc<Self>> {
        let routes = ApiRouter::new()
            .api_route("/ndarray", post(Self::ndarray))
            .api_route("/multi_ndarray", post(Self::multi_ndarray))
            .api_route("/image", post(Self::image))
            .api_route("/json", post(Self::json))
            .api_route("/raw", get(Self::raw).post(Self::raw))
            .api_route("/user", post(Self::user));
        #[cfg(feature = "dataframe")]
        let routes = routes.api_route("/dataframe", post(Self::dataframe));
        routes
    }
}

fn main() -> Result<(), ferroserve::Error> {
    ferroserve::run(Application::api(
        Deployment::new("Adapters").bind(|| Adapters),
    ))
}
