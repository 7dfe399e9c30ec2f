//! # ferroserve-cli
//!
//! The `ferroserve` command line (Ray's `serve` CLI), for the `ferroserve` binary and for any
//! binary of yours: `fn main() -> ExitCode { ferroserve_cli::main(registry) }` gives it every
//! command below with your own applications (see `examples/reconfigure.rs`).
//!
//! | command | what it does |
//! |---|---|
//! | `run <config>` | starts the applications of a config file and serves until Ctrl-C/SIGTERM (or `shutdown`), then drains |
//! | `deploy <config>` | applies a config to a running server through its admin API; waits until applied |
//! | `status` | applications, deployments and replica states, as YAML |
//! | `config` | the running config, as YAML |
//! | `build [import_path...]` | writes a config with every default filled for registered applications |
//! | `shutdown` | asks a running server to drain and exit |
//! | `routes` | a proxy's `/-/healthz` and `/-/routes` |
//!
//! Exit codes a script can rely on: `0` success; `1` the config or the deploy failed (the
//! reason is printed); `2` bad command-line usage; `3` no server answers at the address.
//!
//! It sits on top of everything: it may import the `ferroserve` facade (and clap, hyper's
//! client); nothing imports it.

mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ferroserve::config::{AppConfig, DeploymentConfig, ServeConfig};
use ferroserve::registry::{Args, Registry};
use ferroserve::Serve;
use http::Method;
use serde_json::{Map, Value};

use crate::client::NoAnswer;

/// Exit code: the config or the deploy failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: no server answers at the given address.
pub const EXIT_NO_SERVER: u8 = 3;

const DEFAULT_ADMIN: &str = "http://127.0.0.1:8265";

/// ferroserve: Ray Serve's model-serving semantics for Rust services.
#[derive(Parser, Debug)]
#[command(name = "ferroserve", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the applications of a config file until Ctrl-C, SIGTERM or `ferroserve shutdown`.
    Run {
        /// The config file (YAML or JSON).
        config: PathBuf,
        /// Overrides `http_options.host`.
        #[arg(long, env = "FERROSERVE_HOST")]
        host: Option<String>,
        /// Overrides `http_options.port` (0 picks a free port).
        #[arg(long, env = "FERROSERVE_PORT")]
        port: Option<u16>,
        /// Overrides `admin_options.port` (0 picks a free port).
        #[arg(long, env = "FERROSERVE_ADMIN_PORT")]
        admin_port: Option<u16>,
    },
    /// Apply a config file to a running server (through its admin API).
    Deploy {
        /// The config file (YAML or JSON).
        config: PathBuf,
        /// The admin API's address.
        #[arg(short, long, default_value = DEFAULT_ADMIN, env = "FERROSERVE_ADMIN_ADDRESS")]
        address: String,
    },
    /// Print the status of applications, deployments and replicas.
    Status {
        /// The admin API's address.
        #[arg(short, long, default_value = DEFAULT_ADMIN, env = "FERROSERVE_ADMIN_ADDRESS")]
        address: String,
    },
    /// Print the running config.
    Config {
        /// The admin API's address.
        #[arg(short, long, default_value = DEFAULT_ADMIN, env = "FERROSERVE_ADMIN_ADDRESS")]
        address: String,
    },
    /// Write a config with every default filled for registered applications.
    Build {
        /// Import paths to include (default: every registered one that builds without args).
        import_paths: Vec<String>,
        /// The builders' `args`, as a JSON object (the same for every import path given).
        #[arg(long)]
        args: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Ask a running server to drain and exit.
    Shutdown {
        /// The admin API's address.
        #[arg(short, long, default_value = DEFAULT_ADMIN, env = "FERROSERVE_ADMIN_ADDRESS")]
        address: String,
    },
    /// Print the applications a running proxy serves (its `/-/routes`) and its health.
    Routes {
        /// The proxy's address.
        #[arg(long, default_value = "127.0.0.1:8000", env = "FERROSERVE_ADDRESS")]
        address: String,
    },
}

/// A failure with its exit code.
struct Failure(u8, String);

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure(EXIT_FAILED, message)
    }
}

/// Runs the CLI with the process's arguments, building applications from `registry`. Call it
/// from `main`: `fn main() -> ExitCode { ferroserve::cli::main(registry) }`.
pub fn main(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command, registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

fn execute(command: Command, registry: Registry) -> Result<(), Failure> {
    match command {
        Command::Run {
            config,
            host,
            port,
            admin_port,
        } => run(config, host, port, admin_port, registry),
        Command::Deploy { config, address } => deploy(&config, &address),
        Command::Status { address } => {
            let status = get_json(&address, "/api/serve/applications/")?;
            let view = serde_json::json!({ "applications": summarize(&status["applications"]) });
            print!("{}", to_yaml(&view));
            Ok(())
        }
        Command::Config { address } => {
            let status = get_json(&address, "/api/serve/applications/")?;
            let config: ServeConfig = serde_json::from_value(status["config"].clone())
                .map_err(|e| format!("{address} answered an unexpected config: {e}"))?;
            print!("{}", config.to_yaml());
            Ok(())
        }
        Command::Build {
            import_paths,
            args,
            output,
        } => build(&registry, import_paths, args.as_deref(), output),
        Command::Shutdown { address } => {
            let (status, body) = request(&address, Method::DELETE, "/api/serve/applications/", "")?;
            if status != 200 {
                return Err(format!("{address} refused to shut down ({status}): {body}").into());
            }
            println!("Sent shutdown request; the server is draining.");
            Ok(())
        }
        Command::Routes { address } => {
            let (_, health) = request(&address, Method::GET, "/-/healthz", "")?;
            let (_, routes) = request(&address, Method::GET, "/-/routes", "")?;
            println!("health: {health}\nroutes: {routes}");
            Ok(())
        }
    }
}

fn run(
    path: PathBuf,
    host: Option<String>,
    port: Option<u16>,
    admin_port: Option<u16>,
    registry: Registry,
) -> Result<(), Failure> {
    let mut serve = Serve::from_config_file(&path, registry).map_err(|e| e.to_string())?;
    ferroserve::logging::init_logging_with(serve.logging_config().unwrap_or(&Default::default()));
    if let Some(host) = host {
        serve = serve.host(host);
    }
    if let Some(port) = port {
        serve = serve.port(port);
    }
    if let Some(port) = admin_port {
        serve = serve.admin_port(port);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(serve.run())
        .map_err(|e| e.to_string().into())
}

fn deploy(path: &std::path::Path, address: &str) -> Result<(), Failure> {
    // Check locally first, then send the file as written, so that the server's errors point at
    // its lines.
    ServeConfig::from_file(path).map_err(|e| e.to_string())?;
    let body = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let (status, answer) = request(address, Method::PUT, "/api/serve/applications/", &body)?;
    let answer: Value = serde_json::from_str(&answer).unwrap_or(Value::String(answer));
    if status == 400 {
        let error = answer["error"].as_str().unwrap_or("invalid config");
        let error = error.replace("<request body>", &path.display().to_string());
        return Err(error.into());
    }
    if status != 200 {
        return Err(format!("{address} answered {status}: {answer}").into());
    }
    let mut failed = Vec::new();
    if let Some(apps) = answer["applications"].as_object() {
        for (name, app) in apps {
            if app["status"] == "DEPLOY_FAILED" {
                failed.push(format!(
                    "application '{name}' failed to deploy: {}",
                    app["message"].as_str().unwrap_or("")
                ));
            }
        }
    }
    if !failed.is_empty() {
        return Err(failed.join("\n").into());
    }
    println!("Deployed {} to {address}.", path.display());
    Ok(())
}

fn build(
    registry: &Registry,
    import_paths: Vec<String>,
    args: Option<&str>,
    output: Option<PathBuf>,
) -> Result<(), Failure> {
    let args: Map<String, Value> = match args {
        Some(text) => serde_json::from_str(text).map_err(|e| format!("--args: {e}"))?,
        None => Map::new(),
    };
    let explicit = !import_paths.is_empty();
    let paths: Vec<String> = if explicit {
        import_paths
    } else {
        registry.import_paths().map(str::to_owned).collect()
    };
    let mut built = Vec::new();
    for path in &paths {
        match registry.build(path, Args(args.clone())) {
            Ok(app) => built.push((path, app)),
            Err(e) if explicit => return Err(format!("{path}: {e}").into()),
            Err(e) => eprintln!("skipping {path}: {e}"),
        }
    }
    let single = built.len() == 1;
    let mut config = ServeConfig::default();
    for (path, app) in built {
        let nodes = app.deployments().map_err(|e| format!("{path}: {e}"))?;
        let (name, route_prefix) = if single {
            (app.app_name().to_owned(), app.app_route_prefix().to_owned())
        } else {
            // `pkg.module:app` → `module`, served at `/module`.
            let module = path.split(':').next().unwrap_or(path);
            let name = module.rsplit('.').next().unwrap_or(module).to_owned();
            let prefix = format!("/{name}");
            (name, prefix)
        };
        config.applications.push(AppConfig {
            name,
            route_prefix: Some(route_prefix),
            import_path: path.clone(),
            args: args.clone(),
            deployments: nodes
                .iter()
                .map(|n| {
                    let o = n.defaults();
                    DeploymentConfig {
                        name: n.name().to_owned(),
                        num_replicas: Some(o.num_replicas),
                        max_ongoing_requests: Some(o.max_ongoing_requests),
                        max_queued_requests: Some(
                            o.max_queued_requests
                                .map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX)),
                        ),
                        user_config: o.user_config.clone(),
                        graceful_shutdown_timeout_s: Some(
                            o.graceful_shutdown_timeout.as_secs_f64(),
                        ),
                        ..Default::default()
                    }
                })
                .collect(),
        });
    }
    let issues = config.validate();
    if let Some((path, message)) = issues.first() {
        return Err(format!("the built config is invalid: {path}: {message}").into());
    }
    let yaml = config.to_yaml();
    match output {
        Some(file) => {
            std::fs::write(&file, yaml)
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            println!("Wrote config to {}.", file.display());
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

/// The status reduced to what `serve status` prints.
fn summarize(applications: &Value) -> Value {
    let mut out = Map::new();
    for (name, app) in applications.as_object().into_iter().flatten() {
        let mut deployments = Map::new();
        for (dname, d) in app["deployments"].as_object().into_iter().flatten() {
            deployments.insert(
                dname.clone(),
                serde_json::json!({
                    "status": d["status"],
                    "target_num_replicas": d["target_num_replicas"],
                    "replica_states": d["replica_states"],
                    "message": d["message"],
                }),
            );
        }
        out.insert(
            name.clone(),
            serde_json::json!({
                "status": app["status"],
                "message": app["message"],
                "route_prefix": app["route_prefix"],
                "last_deployed_time_s": app["last_deployed_time_s"],
                "deployments": deployments,
            }),
        );
    }
    Value::Object(out)
}

fn to_yaml(value: &Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|_| format!("{value:#}\n"))
}

fn get_json(address: &str, path: &str) -> Result<Value, Failure> {
    let (status, body) = request(address, Method::GET, path, "")?;
    if status != 200 {
        return Err(format!("{address} answered {status}: {body}").into());
    }
    serde_json::from_str(&body)
        .map_err(|e| Failure(EXIT_FAILED, format!("{address} answered invalid JSON: {e}")))
}

/// One request to `address`; the status and body, or the failure to print (exit code 3 when
/// no server answers).
fn request(
    address: &str,
    method: Method,
    path: &str,
    body: &str,
) -> Result<(u16, String), Failure> {
    let host = address.trim_start_matches("http://").trim_end_matches('/');
    client::request(address, method, path, body.to_owned()).map_err(|e| match e {
        NoAnswer::NoServer(why) => Failure(
            EXIT_NO_SERVER,
            format!("no ferroserve server at {host}: {why}"),
        ),
        NoAnswer::TimedOut => Failure(EXIT_FAILED, format!("{host} did not answer in time")),
    })
}
