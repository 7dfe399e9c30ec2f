//! Application builders by `import_path`: what a config file's `applications[].import_path`
//! names.
//!
//! Ray imports `module:attribute` from Python; a Rust binary registers its builders instead. The
//! `ferroserve` binary registers the built-in ones (the ONNX model server, a request echo); a
//! binary of your own passes its registry to `ferroserve_cli::main` (the `ferroserve-cli`
//! crate) and gets the same CLI:
//!
//! ```no_run
//! use ferroserve::registry::{Args, Registry};
//! use ferroserve::{Application, Deployment, Ingress, Request};
//!
//! struct Greeter { greeting: String }
//!
//! impl Ingress for Greeter {
//!     type Output = String;
//!     async fn call(&self, _: Request) -> String { self.greeting.clone() }
//! }
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct GreeterArgs { greeting: String }
//!
//! fn greeter(args: Args) -> Result<Application, ferroserve::Error> {
//!     let GreeterArgs { greeting } = args.parse()?;
//!     Ok(Application::new(Deployment::new("Greeter").bind(move || Greeter { greeting: greeting.clone() })))
//! }
//!
//! let registry = Registry::new().register("my_app:greeter", greeter);
//! // fn main() -> std::process::ExitCode { ferroserve_cli::main(registry) }
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use ferroserve_core::Error;
use ferroserve_http::Application;

/// An application's `args` from the config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args(pub Map<String, Value>);

impl Args {
    /// Deserializes the arguments into `T`. A mismatch is an [`Error::Config`] naming the field
    /// (`args.model_path: invalid type: integer `3`, expected a string`).
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_path_to_error::deserialize(Value::Object(self.0.clone())).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." {
                "args".to_owned()
            } else {
                format!("args.{path}")
            };
            Error::Config(format!("{path}: {}", e.inner()))
        })
    }
}

type Builder = Arc<dyn Fn(Args) -> Result<Application, Error> + Send + Sync>;

/// Application builders by import path. Cloning shares the builders.
#[derive(Clone, Default)]
pub struct Registry {
    builders: BTreeMap<String, Builder>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.builders.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers `builder` under `import_path` (replacing any earlier one). The builder is called
    /// once per deploy of the application, with the config's `args`; it declares the graph
    /// (cheap) — replicas are constructed afterwards.
    pub fn register(
        mut self,
        import_path: impl Into<String>,
        builder: impl Fn(Args) -> Result<Application, Error> + Send + Sync + 'static,
    ) -> Self {
        self.builders.insert(import_path.into(), Arc::new(builder));
        self
    }

    /// The registered import paths, sorted.
    pub fn import_paths(&self) -> impl Iterator<Item = &str> {
        self.builders.keys().map(String::as_str)
    }

    /// Builds the application registered under `import_path`.
    pub fn build(&self, import_path: &str, args: Args) -> Result<Application, Error> {
        let builder = self.builders.get(import_path).ok_or_else(|| {
            let known: Vec<&str> = self.import_paths().collect();
            Error::Config(format!(
                "import_path '{import_path}' is not registered in this binary; registered: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        builder(args)
    }
}
