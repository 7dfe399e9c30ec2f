//! The application builders this binary ships, by `import_path`.
//!
//! | import_path | application |
//! |---|---|
//! | `ferroserve.onnx:app` | an ONNX classifier behind a validating ingress (`args`: see `ferroserve::onnx::OnnxArgs`) |
//! | `ferroserve.examples.counter:app` | the seed's `Counter` (no args) |
//! | `ferroserve.examples.reconfigure:app` | a threshold classifier with `user_config` (`args: {version}`) |

use ferroserve::registry::{Args, Registry};
use ferroserve::Error;

#[allow(dead_code, unreachable_pub)]
#[path = "../../ferroserve/examples/counter.rs"]
mod counter;

#[allow(dead_code, unreachable_pub)]
#[path = "../../ferroserve/examples/reconfigure.rs"]
mod reconfigure;

/// Every built-in builder.
pub(crate) fn registry() -> Registry {
    let registry = Registry::new()
        .register("ferroserve.examples.counter:app", |args: Args| {
            no_args(&args)?;
            Ok(counter::app())
        })
        .register("ferroserve.examples.reconfigure:app", reconfigure::app);
    #[cfg(feature = "onnx")]
    let registry = registry.register("ferroserve.onnx:app", |args: Args| {
        ferroserve::onnx::app(args.parse()?)
    });
    registry
}

fn no_args(args: &Args) -> Result<(), Error> {
    args.parse::<NoArgs>().map(drop)
}

/// An application that takes no arguments.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}
