//! The applications the `ferroserve` binary ships, by `import_path`.
//!
//! | import_path | application |
//! |---|---|
//! | `ferroserve.onnx:app` | an ONNX classifier behind a validating ingress (`args`: see `ferroserve_onnx::OnnxArgs`; feature `onnx`, on by default) |
//! | `ferroserve.echo:app` | answers every request with what it received, as JSON (no `args`): a smoke test for a deployment's routing, prefix, headers and limits |

use ferroserve::registry::{Args, Registry};
use ferroserve::{Application, Deployment, HandlerError, Ingress, Json, Request};
use serde_json::{json, Value};

/// Every built-in builder.
pub(crate) fn registry() -> Registry {
    let registry = Registry::new().register("ferroserve.echo:app", echo);
    #[cfg(feature = "onnx")]
    let registry = registry.register("ferroserve.onnx:app", |args: Args| {
        ferroserve_onnx::app(args.parse()?)
    });
    registry
}

/// `ferroserve.echo:app`: one `Echo` deployment at `/`.
fn echo(args: Args) -> Result<Application, ferroserve::Error> {
    args.parse::<NoArgs>()?;
    Ok(Application::new(Deployment::new("Echo").bind(|| Echo)))
}

/// An application that takes no arguments.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// Answers with the request it received.
struct Echo;

impl Ingress for Echo {
    type Output = Result<Json<Value>, HandlerError>;

    async fn call(&self, mut request: Request) -> Self::Output {
        let headers: serde_json::Map<String, Value> = request
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value.into())
            })
            .collect();
        let body = request.text().await?;
        Ok(Json(json!({
            "method": request.method().as_str(),
            "path": request.path(),
            "root_path": request.root_path(),
            "query_params": request.query_params(),
            "headers": headers,
            "body": body,
        })))
    }
}
