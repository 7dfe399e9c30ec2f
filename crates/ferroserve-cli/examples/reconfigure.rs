//! Config-driven deployment: `args` build the application, `user_config` reaches the replicas'
//! `reconfigure` in place, and this binary gets the whole `ferroserve` CLI by passing its own
//! registry to `ferroserve_cli::main`.
//!
//! ```sh
//! cat > /tmp/threshold.yaml <<'YAML'
//! applications:
//!   - name: threshold
//!     import_path: reconfigure:app
//!     args: {version: v1}
//!     deployments:
//!       - name: Threshold
//!         num_replicas: 2
//!         user_config: {threshold: 0.5}
//! YAML
//! cargo run --example reconfigure -- run /tmp/threshold.yaml
//! curl "http://127.0.0.1:8000/?x=0.7"  # {"above":true,"threshold":0.5,"version":"v1"}
//! # edit threshold to 0.9, then, without a restart:
//! cargo run --example reconfigure -- deploy /tmp/threshold.yaml
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use ferroserve::registry::{Args, Registry};
use ferroserve::{
    Application, BoxError, Deployment, HandlerError, Ingress, Json, Reconfigure, Request,
    StatusCode,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// Classifies `?x=` against a threshold that `user_config` sets.
struct Threshold {
    version: String,
    threshold: AtomicU64,
}

/// The deployment's `user_config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdConfig {
    threshold: f64,
}

impl Reconfigure for Threshold {
    type Config = ThresholdConfig;

    async fn reconfigure(&self, config: ThresholdConfig) -> Result<(), BoxError> {
        self.threshold
            .store(config.threshold.to_bits(), Ordering::Relaxed);
        Ok(())
    }
}

impl Ingress for Threshold {
    type Output = Result<Json<Value>, HandlerError>;

    async fn call(&self, request: Request) -> Self::Output {
        let x: f64 = request
            .query_params()
            .get("x")
            .unwrap_or("0")
            .parse()
            .map_err(|_| {
                ferroserve::Error::bad_request(StatusCode::BAD_REQUEST, "x must be a number")
            })?;
        let threshold = f64::from_bits(self.threshold.load(Ordering::Relaxed));
        Ok(Json(json!({
            "above": x > threshold,
            "threshold": threshold,
            "version": self.version,
        })))
    }
}

/// The builder's `args`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdArgs {
    version: String,
}

/// Builds the application from its config `args`.
fn app(args: Args) -> Result<Application, ferroserve::Error> {
    let ThresholdArgs { version } = args.parse()?;
    let threshold = Deployment::new("Threshold")
        .user_config(json!({"threshold": 0.5}))
        .bind(move || Threshold {
            version: version.clone(),
            threshold: AtomicU64::new(0),
        })
        .reconfigurable();
    Ok(Application::new(threshold))
}

fn main() -> ExitCode {
    ferroserve_cli::main(Registry::new().register("reconfigure:app", app))
}
