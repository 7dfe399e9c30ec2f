//! Validation, dependency injection and middleware together, FastAPI-style.
//!
//! * `User` is validated (`user_id >= 1`, `1 <= len(user_name) <= 32`): bad input is a 422 in
//!   FastAPI's shape, located at `["body", field]`, `["query", name]` or `["path", name]`.
//! * `ApiKey` is a dependency (FastAPI's `Depends`): an extractor that checks `x-api-key` against
//!   the replica's configuration, 401 otherwise. The store is a resource built once per replica.
//! * A middleware adds `x-process-time` to every response, as in FastAPI's middleware tutorial.
//!
//! ```sh
//! cargo run --example fastapi_users
//! curl -X POST http://127.0.0.1:8000/api/users -H 'x-api-key: secret' \
//!      -H 'content-type: application/json' -d '{"user_id": 1, "user_name": "ada"}'
//! curl "http://127.0.0.1:8000/api/users?limit=10"
//! open http://127.0.0.1:8000/api/docs
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use ferroserve::api::routing::{get, get_with};
use ferroserve::api::{ApiIngress, ApiRouter, DetailError, Path, Query, Valid};
use ferroserve::{Application, Deployment, Json, StatusCode};
use garde::Validate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A user, as the guide's pydantic `User`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema, Validate)]
struct User {
    /// A positive id.
    #[garde(range(min = 1))]
    user_id: i64,
    /// The display name.
    #[garde(length(min = 1, max = 32))]
    user_name: String,
}

/// Paging for the list route.
#[derive(Debug, Deserialize, JsonSchema, Validate)]
struct ListParams {
    /// How many users to return (1..=100).
    #[garde(range(min = 1, max = 100))]
    limit: u32,
}

/// The deployment: its fields are resources built once per replica.
struct Users {
    api_key: String,
    store: Mutex<BTreeMap<i64, User>>,
}

/// A dependency: the caller presented the right `x-api-key`.
struct ApiKey;

impl FromRequestParts<Arc<Users>> for ApiKey {
    type Rejection = DetailError;

    async fn from_request_parts(parts: &mut Parts, this: &Arc<Users>) -> Result<Self, DetailError> {
        match parts.headers.get("x-api-key") {
            Some(key) if key.as_bytes() == this.api_key.as_bytes() => Ok(ApiKey),
            _ => Err(DetailError {
                status: StatusCode::UNAUTHORIZED,
                detail: "Invalid or missing x-api-key".into(),
            }),
        }
    }
}

impl aide::OperationInput for ApiKey {}

impl Users {
    async fn create(
        State(this): State<Arc<Self>>,
        _key: ApiKey,
        Valid(Json(user)): Valid<Json<User>>,
    ) -> (StatusCode, Json<User>) {
        this.store
            .lock()
            .unwrap()
            .insert(user.user_id, user.clone());
        (StatusCode::CREATED, Json(user))
    }

    async fn list(
        State(this): State<Arc<Self>>,
        Valid(Query(params)): Valid<Query<ListParams>>,
    ) -> Json<Vec<User>> {
        let store = this.store.lock().unwrap();
        Json(
            store
                .values()
                .take(params.limit as usize)
                .cloned()
                .collect(),
        )
    }

    async fn get(
        State(this): State<Arc<Self>>,
        Path(user_id): Path<i64>,
    ) -> Result<Json<User>, DetailError> {
        this.store
            .lock()
            .unwrap()
            .get(&user_id)
            .cloned()
            .map(Json)
            .ok_or(DetailError {
                status: StatusCode::NOT_FOUND,
                detail: format!("User {user_id} not found"),
            })
    }
}

async fn process_time(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let value = format!("{:.6}", started.elapsed().as_secs_f64());
    if let Ok(value) = value.parse() {
        response.headers_mut().insert("x-process-time", value);
    }
    response
}

impl ApiIngress for Users {
    fn routes() -> ApiRouter<Arc<Self>> {
        ApiRouter::new()
            // FastAPI's `status_code=201` and `responses={401: ...}`: statuses chosen at run time
            // are documented on the route.
            .api_route(
                "/users",
                get(Self::list).post_with(Self::create, |op| {
                    op.response::<201, Json<User>>()
                        .response::<401, DetailError>()
                }),
            )
            .api_route(
                "/users/{user_id}",
                get_with(Self::get, |op| op.response::<404, DetailError>()),
            )
            .layer(axum::middleware::from_fn(process_time))
    }
}

fn main() -> Result<(), ferroserve::Error> {
    let users = Deployment::new("Users").bind(|| Users {
        api_key: std::env::var("USERS_API_KEY").unwrap_or_else(|_| "secret".into()),
        store: Mutex::new(BTreeMap::new()),
    });
    ferroserve::run(Application::api(users).name("users").route_prefix("/api"))
}
