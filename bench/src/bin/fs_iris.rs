//! The `iris` scenario: what `ferroserve run apps/iris/serve.yaml` does (the CLI's `run`
//! command), without building the CLI: the same config file, the same registry entry
//! (`ferroserve.onnx:app` → [`ferroserve_onnx::app`]), logging from the config, and
//! `Serve::from_config_file(..).run()` on a multi-threaded runtime.
//!
//! Listens on `127.0.0.1:$FERROSERVE_PORT` (overriding the config's port 8000, as
//! `ferroserve run --port` does; the admin API gets a free port). The config's relative
//! `model_path` is resolved against the repository root, which this binary makes its working
//! directory. `POST /iris/predict` with `{"array": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}`
//! → labels and probabilities.

use std::path::Path;

use ferroserve::registry::{Args, Registry};
use ferroserve::Serve;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::set_current_dir(&root)?;
    let registry = Registry::new().register("ferroserve.onnx:app", |args: Args| {
        ferroserve_onnx::app(args.parse()?)
    });
    let mut serve = Serve::from_config_file(Path::new("apps/iris/serve.yaml"), registry)?;
    ferroserve::logging::init_logging_with(serve.logging_config().unwrap_or(&Default::default()));
    if let Some(port) = std::env::var("FERROSERVE_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
    {
        serve = serve.port(port);
    }
    serve = serve.host("127.0.0.1").admin_port(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve.run())?;
    Ok(())
}
