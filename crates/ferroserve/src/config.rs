//! The serve config file (Ray Serve's shape), its parsing and its validation.
//!
//! ```yaml
//! http_options:
//!   host: 127.0.0.1
//!   port: 8000
//!   request_timeout_s: 30
//! applications:
//!   - name: iris
//!     route_prefix: /iris
//!     import_path: ferroserve.onnx:app
//!     args:
//!       model_path: apps/iris/iris.onnx
//!     deployments:
//!       - name: Model
//!         num_replicas: 2
//! ```
//!
//! Every field is checked: unknown fields are errors (Ray silently ignored a misplaced
//! `request_timeout_s`, ray#37882), and each error names the file, the line and the field path
//! and says what was expected, e.g.
//! `serve.yaml:9:23: applications[0].deployments[0].num_replicas: must be at least 1, got 0`.
//! JSON is accepted too (it is parsed as YAML, of which it is a subset).

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use ferroserve_core::autoscaling::AutoscalingOptions;
use ferroserve_core::DeploymentOptions;
use ferroserve_http::app::{check_apps, AppClash};
use ferroserve_http::limits::Limits;
use ferroserve_http::metrics::{validate_metrics_path, DEFAULT_METRICS_PATH};
use ferroserve_http::route::validate_root_path;

use crate::options::HttpOptions;

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Where the proxy listens and how it treats requests.
    #[serde(default)]
    pub http_options: HttpOptionsConfig,
    /// Where the admin REST API listens.
    #[serde(default)]
    pub admin_options: AdminOptionsConfig,
    /// Log level and format.
    #[serde(default)]
    pub logging_config: LoggingConfig,
    /// The applications to run. Applying a config replaces the whole set: applications not
    /// listed are deleted.
    #[serde(default)]
    pub applications: Vec<AppConfig>,
}

/// `http_options`: the proxy's address and request handling, and the request limits (every
/// field of [`Limits`], flat, as Ray's `http_options`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpOptionsConfig {
    /// Default `127.0.0.1`.
    pub host: String,
    /// Default `8000`; `0` picks a free port.
    pub port: u16,
    /// End-to-end timeout per request; `null` (the default) waits forever.
    pub request_timeout_s: Option<f64>,
    /// Idle timeout: a connection that sends nothing within it is closed, and one with no
    /// request open and nothing to send (idle keep-alive, a request head that never
    /// completes) after between one and two of it. Default 5.
    pub keep_alive_timeout_s: f64,
    /// A path the whole server is mounted under (behind a reverse proxy), e.g. `/serve`:
    /// `/serve/iris/predict` reaches application `/iris`. Default `""`.
    pub root_path: String,
    /// Where the proxy answers with Prometheus metrics. Default `/metrics`; `null` turns
    /// metrics off (no endpoint, no collection).
    pub metrics_path: Option<String>,
    /// The request limits (`max_request_body_bytes`, ...; see [`ferroserve_http::limits`]).
    #[serde(flatten)]
    pub limits: Limits,
}

impl Default for HttpOptionsConfig {
    fn default() -> Self {
        HttpOptionsConfig {
            host: default_host(),
            port: 8000,
            request_timeout_s: None,
            keep_alive_timeout_s: 5.0,
            root_path: String::new(),
            metrics_path: Some(DEFAULT_METRICS_PATH.to_owned()),
            limits: Limits::default(),
        }
    }
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}

/// The fields of `http_options` that are not limits.
const HTTP_FIELDS: [&str; 6] = [
    "host",
    "port",
    "request_timeout_s",
    "keep_alive_timeout_s",
    "root_path",
    "metrics_path",
];

/// Every field `http_options` takes, for "unknown field" messages.
fn http_options_fields() -> &'static [&'static str] {
    static FIELDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| HTTP_FIELDS.iter().chain(Limits::FIELDS).copied().collect())
}

/// Read field by field (not derived): the limits are flat among the other options, yet written
/// once, in [`Limits`]; unknown and repeated fields are errors at their own line.
impl<'de> Deserialize<'de> for HttpOptionsConfig {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HttpOptionsConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the http_options mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = HttpOptionsConfig::default();
                let mut seen: Vec<&'static str> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let Some(&field) = http_options_fields().iter().find(|f| **f == key) else {
                        return Err(de::Error::unknown_field(&key, http_options_fields()));
                    };
                    if seen.contains(&field) {
                        return Err(de::Error::duplicate_field(field));
                    }
                    seen.push(field);
                    match field {
                        "host" => out.host = map.next_value()?,
                        "port" => out.port = map.next_value()?,
                        "request_timeout_s" => out.request_timeout_s = map.next_value()?,
                        "keep_alive_timeout_s" => out.keep_alive_timeout_s = map.next_value()?,
                        "root_path" => out.root_path = map.next_value()?,
                        "metrics_path" => out.metrics_path = map.next_value()?,
                        limit => map.next_value_seed(LimitField(&mut out.limits, limit))?,
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads one limit into [`Limits`].
struct LimitField<'a>(&'a mut Limits, &'static str);

impl<'de> de::DeserializeSeed<'de> for LimitField<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.deserialize_field(self.1, d).map(drop)
    }
}

/// `admin_options`: the admin REST API (`/api/serve/applications/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminOptionsConfig {
    /// Default `127.0.0.1`.
    #[serde(default = "default_host")]
    pub host: String,
    /// Default `8265` (Ray's dashboard port).
    #[serde(default = "default_admin_port")]
    pub port: u16,
}

/// The admin API's default port (Ray's dashboard port).
pub const DEFAULT_ADMIN_PORT: u16 = 8265;

fn default_admin_port() -> u16 {
    DEFAULT_ADMIN_PORT
}

impl Default for AdminOptionsConfig {
    fn default() -> Self {
        AdminOptionsConfig {
            host: default_host(),
            port: DEFAULT_ADMIN_PORT,
        }
    }
}

/// `logging_config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `DEBUG`, `INFO` (default), `WARNING`, `ERROR` (`RUST_LOG` wins when set).
    #[serde(default)]
    pub log_level: LogLevel,
    /// `TEXT` (default) or `JSON` (one object per line).
    #[serde(default)]
    pub encoding: LogEncoding,
    /// One `INFO` access-log line per request (target `ferroserve::access`). Default true.
    #[serde(default = "default_true")]
    pub enable_access_log: bool,
}

fn default_true() -> bool {
    true
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            log_level: LogLevel::Info,
            encoding: LogEncoding::Text,
            enable_access_log: true,
        }
    }
}

/// A log level, spelled as Python's logging spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warning,
    Error,
}

impl LogLevel {
    /// The tracing filter directive for this level.
    pub fn directive(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs)]
pub enum LogEncoding {
    #[default]
    Text,
    Json,
}

/// One entry of `applications`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Unique among the applications.
    pub name: String,
    /// Unique among the applications; `null` serves the application to handles only. Default `/`.
    #[serde(default = "default_prefix")]
    pub route_prefix: Option<String>,
    /// The registered application builder, e.g. `ferroserve.onnx:app`.
    pub import_path: String,
    /// Arguments for the builder. Changing them (or `import_path`) rolls the replicas over.
    #[serde(default)]
    pub args: Map<String, Value>,
    /// Per-deployment overrides of the options the code declares, by deployment name.
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
}

fn default_prefix() -> Option<String> {
    Some("/".to_owned())
}

/// One entry of an application's `deployments`: every field but `name` is optional and
/// overrides what the code declares.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A deployment of the application's graph.
    pub name: String,
    /// At least 1; not together with `autoscaling_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_replicas: Option<usize>,
    /// At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ongoing_requests: Option<usize>,
    /// `-1` is unlimited (the default), else at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued_requests: Option<i64>,
    /// Passed to the instances' `reconfigure` hook, in place, on every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_config: Option<Value>,
    /// Replica bounds and scaling targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling_config: Option<AutoscalingConfig>,
    /// Seconds between health checks (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_period_s: Option<f64>,
    /// Seconds a health check may take (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_timeout_s: Option<f64>,
    /// Seconds a replica being removed may take to finish its requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_shutdown_timeout_s: Option<f64>,
}

/// `autoscaling_config`, in Ray's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingConfig {
    /// Default 1; 0 allows scale to zero.
    #[serde(default = "one")]
    pub min_replicas: usize,
    /// Replicas at start; default `min_replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_replicas: Option<usize>,
    /// Default 1.
    #[serde(default = "one")]
    pub max_replicas: usize,
    /// Ongoing requests per replica to aim for. Default 2.
    #[serde(default = "two")]
    pub target_ongoing_requests: f64,
    /// Seconds of metrics averaged per decision. Default 1.
    #[serde(default = "one_f")]
    pub look_back_period_s: f64,
    /// Seconds the load must stay high before scaling up. Default 1.
    #[serde(default = "one_f")]
    pub upscale_delay_s: f64,
    /// Seconds the load must stay low before scaling down. Default 30.
    #[serde(default = "thirty")]
    pub downscale_delay_s: f64,
}

fn one() -> usize {
    1
}
fn two() -> f64 {
    2.0
}
fn one_f() -> f64 {
    1.0
}
fn thirty() -> f64 {
    30.0
}

/// One problem found in a config: where, which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigIssue {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field path, e.g. `applications[0].deployments[1].num_replicas` (empty for the root).
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Everything wrong with a config file. Displays one issue per line as
/// `file:line:column: path: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The file name (or `<request body>`).
    pub file: String,
    /// The problems, in file order.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = issue.line {
                write!(f, ":{line}")?;
                if let Some(column) = issue.column {
                    write!(f, ":{column}")?;
                }
            }
            if issue.path.is_empty() {
                write!(f, ": {}", issue.message)?;
            } else {
                write!(f, ": {}: {}", issue.path, issue.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ServeConfig {
    /// Reads and checks a config file.
    pub fn from_file(path: &std::path::Path) -> Result<ServeConfig, ConfigError> {
        ServeConfig::read(path).map(|(config, _)| config)
    }

    /// Reads and checks a config file; returns it with its text.
    pub(crate) fn read(path: &std::path::Path) -> Result<(ServeConfig, String), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            issues: vec![ConfigIssue {
                line: None,
                column: None,
                path: String::new(),
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        ServeConfig::parse(&text, &file).map(|config| (config, text))
    }

    /// Parses and checks a config (YAML or JSON). `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<ServeConfig, ConfigError> {
        let tree = serde_saphyr::from_str::<Spanned<Tree>>(text).ok();
        let config: ServeConfig = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (Some(l.line() as usize), Some(l.column() as usize)))
                .unwrap_or((None, None));
            let message = e.without_snippet().to_string();
            let message = strip_location(&message);
            let mut path = match (&tree, line, column) {
                (Some(tree), Some(l), Some(c)) => tree_path_at(tree, l, c).unwrap_or_default(),
                _ => String::new(),
            };
            if message.starts_with("missing field") {
                // The error points at the mapping's first key; the field belongs to the mapping.
                path = parent_path(&path).to_owned();
            }
            ConfigError {
                file: file.to_owned(),
                issues: vec![ConfigIssue {
                    line,
                    column,
                    path,
                    message: message.to_owned(),
                }],
            }
        })?;
        let issues = config.validate();
        if issues.is_empty() {
            return Ok(config);
        }
        let mut issues: Vec<ConfigIssue> = issues
            .into_iter()
            .map(|(path, message)| {
                let (line, column) = tree
                    .as_ref()
                    .and_then(|t| tree_location(t, &path))
                    .map_or((None, None), |(l, c)| (Some(l), Some(c)));
                ConfigIssue {
                    line,
                    column,
                    path,
                    message,
                }
            })
            .collect();
        // In file order (validation finds them section by section).
        issues.sort_by_key(|i| (i.line.is_none(), i.line, i.column));
        Err(ConfigError {
            file: file.to_owned(),
            issues,
        })
    }

    /// Fills in the line and column of issues found after parsing (by the controller), from
    /// the config's source text.
    pub(crate) fn locate(text: &str, issues: &mut [ConfigIssue]) {
        let Ok(tree) = serde_saphyr::from_str::<Spanned<Tree>>(text) else {
            return;
        };
        for issue in issues.iter_mut().filter(|i| i.line.is_none()) {
            if let Some((line, column)) = tree_location(&tree, &issue.path) {
                issue.line = Some(line);
                issue.column = Some(column);
            }
        }
    }

    /// The config as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks the rules serde cannot: ranges, uniqueness, prefixes, exclusive fields. Returns
    /// `(field path, message)` pairs.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Issues::default();
        self.http_options.validate(&mut issues);
        self.validate_apps(&mut issues);
        for (i, app) in self.applications.iter().enumerate() {
            app.validate_deployments(i, &mut issues);
        }
        issues.0
    }

    /// Names and route prefixes of the applications, and their import paths.
    fn validate_apps(&self, issues: &mut Issues) {
        let apps: Vec<(&str, Option<&str>)> = self
            .applications
            .iter()
            .map(|a| (a.name.as_str(), a.route_prefix.as_deref()))
            .collect();
        let at = |i: usize, field: &str| format!("applications[{i}].{field}");
        for clash in check_apps(&apps) {
            match clash {
                AppClash::EmptyName { index } => issues.add(at(index, "name"), "must not be empty"),
                AppClash::BadPrefix { index, message } => {
                    issues.add(at(index, "route_prefix"), message)
                }
                AppClash::DuplicateName { index, first } => issues.add(
                    at(index, "name"),
                    format!(
                        "duplicate application name '{}' (also applications[{first}])",
                        apps[index].0
                    ),
                ),
                AppClash::DuplicatePrefix { index, first } => issues.add(
                    at(index, "route_prefix"),
                    format!(
                        "duplicate route_prefix '{}' (also applications[{first}])",
                        apps[index].1.unwrap_or_default()
                    ),
                ),
            }
        }
        for (i, app) in self.applications.iter().enumerate() {
            if app.import_path.trim().is_empty() {
                issues.add(
                    at(i, "import_path"),
                    "must name a registered application builder",
                );
            }
        }
    }
}

/// Issues found by validation, in the order found: `(field path, message)`.
#[derive(Default)]
struct Issues(Vec<(String, String)>);

impl Issues {
    fn add(&mut self, path: String, message: impl Into<String>) {
        self.0.push((path, message.into()));
    }

    /// `v` must be a number of seconds greater than 0 that a `Duration` can hold.
    fn positive(&mut self, path: String, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.add(path, format!("must be a number greater than 0, got {v}"));
        } else if Duration::try_from_secs_f64(v).is_err() {
            self.add(path, format!("must be at most {MAX_SECONDS:e}, got {v:e}"));
        }
    }

    /// `v` must be a number of seconds at least 0 that a `Duration` can hold.
    fn non_negative(&mut self, path: String, v: f64) {
        if !(v.is_finite() && v >= 0.0) {
            self.add(path, format!("must be a number at least 0, got {v}"));
        } else if Duration::try_from_secs_f64(v).is_err() {
            self.add(path, format!("must be at most {MAX_SECONDS:e}, got {v:e}"));
        }
    }
}

impl HttpOptionsConfig {
    /// Timeouts, limits, the root path and the metrics path.
    fn validate(&self, issues: &mut Issues) {
        if let Some(t) = self.request_timeout_s {
            issues.positive("http_options.request_timeout_s".into(), t);
        }
        issues.positive(
            "http_options.keep_alive_timeout_s".into(),
            self.keep_alive_timeout_s,
        );
        for (field, problem) in self.limits.problems() {
            issues.add(format!("http_options.{field}"), problem);
        }
        if let Err(e) = validate_root_path(&self.root_path) {
            issues.add("http_options.root_path".into(), e);
        }
        if let Some(path) = &self.metrics_path {
            if let Err(e) = validate_metrics_path(path) {
                issues.add("http_options.metrics_path".into(), e);
            }
        }
    }
}

impl AppConfig {
    /// Application `i`'s deployment overrides: unique names, ranges, autoscaling bounds.
    fn validate_deployments(&self, i: usize, issues: &mut Issues) {
        for (k, d) in self.deployments.iter().enumerate() {
            let at = |field: &str| format!("applications[{i}].deployments[{k}].{field}");
            if d.name.is_empty() {
                issues.add(at("name"), "must not be empty");
            }
            if let Some(j) = self.deployments[..k].iter().position(|o| o.name == d.name) {
                issues.add(
                    at("name"),
                    format!(
                        "duplicate deployment name '{}' (also deployments[{j}])",
                        d.name
                    ),
                );
            }
            d.validate_ranges(&at, issues);
            if let Some(a) = &d.autoscaling_config {
                if d.num_replicas.is_some() {
                    issues.add(
                        at("num_replicas"),
                        "cannot be set together with autoscaling_config; set \
                         autoscaling_config.initial_replicas instead",
                    );
                }
                a.validate(&|field| at(&format!("autoscaling_config.{field}")), issues);
            }
        }
    }
}

impl DeploymentConfig {
    /// Replica counts, queue size and timeouts.
    fn validate_ranges(&self, at: &dyn Fn(&str) -> String, issues: &mut Issues) {
        if self.num_replicas == Some(0) {
            issues.add(at("num_replicas"), "must be at least 1, got 0");
        }
        if self.max_ongoing_requests == Some(0) {
            issues.add(at("max_ongoing_requests"), "must be at least 1, got 0");
        }
        if let Some(q) = self.max_queued_requests {
            if q == 0 || q < -1 {
                issues.add(
                    at("max_queued_requests"),
                    format!("must be -1 (unlimited) or at least 1, got {q}"),
                );
            }
        }
        for (field, v) in [
            ("health_check_period_s", self.health_check_period_s),
            ("health_check_timeout_s", self.health_check_timeout_s),
        ] {
            if let Some(v) = v {
                issues.positive(at(field), v);
            }
        }
        if let Some(v) = self.graceful_shutdown_timeout_s {
            issues.non_negative(at("graceful_shutdown_timeout_s"), v);
        }
    }
}

impl AutoscalingConfig {
    /// Bounds that agree with each other, and positive periods.
    fn validate(&self, at: &dyn Fn(&str) -> String, issues: &mut Issues) {
        if self.max_replicas == 0 {
            issues.add(at("max_replicas"), "must be at least 1, got 0");
        }
        if self.min_replicas > self.max_replicas {
            issues.add(
                at("min_replicas"),
                format!(
                    "must be at most max_replicas ({}), got {}",
                    self.max_replicas, self.min_replicas
                ),
            );
        }
        if let Some(initial) = self.initial_replicas {
            if initial < self.min_replicas || initial > self.max_replicas {
                issues.add(
                    at("initial_replicas"),
                    format!(
                        "must be between min_replicas ({}) and max_replicas ({}), got {initial}",
                        self.min_replicas, self.max_replicas
                    ),
                );
            }
        }
        issues.positive(at("target_ongoing_requests"), self.target_ongoing_requests);
        issues.positive(at("look_back_period_s"), self.look_back_period_s);
        issues.non_negative(at("upscale_delay_s"), self.upscale_delay_s);
        issues.non_negative(at("downscale_delay_s"), self.downscale_delay_s);
    }
}

impl HttpOptionsConfig {
    /// The options as the server takes them.
    pub fn to_options(&self) -> HttpOptions {
        HttpOptions {
            host: self.host.clone(),
            port: self.port,
            request_timeout: self.request_timeout_s.map(Duration::from_secs_f64),
            keep_alive_timeout: Duration::from_secs_f64(self.keep_alive_timeout_s),
            root_path: self.root_path.clone(),
            metrics_path: self.metrics_path.clone(),
            limits: self.limits,
            ..Default::default()
        }
    }
}

impl DeploymentConfig {
    /// `base` (the code's options) with this entry's overrides applied.
    pub fn apply_to(&self, base: &DeploymentOptions) -> DeploymentOptions {
        let mut options = base.clone();
        if let Some(n) = self.num_replicas {
            options.num_replicas = n;
        }
        if let Some(a) = &self.autoscaling_config {
            options.autoscaling = Some(a.to_options());
        }
        if let Some(t) = self.health_check_period_s {
            options.health_check_period = Duration::from_secs_f64(t);
        }
        if let Some(t) = self.health_check_timeout_s {
            options.health_check_timeout = Duration::from_secs_f64(t);
        }
        if let Some(n) = self.max_ongoing_requests {
            options.max_ongoing_requests = n;
        }
        if let Some(q) = self.max_queued_requests {
            options.max_queued_requests = usize::try_from(q).ok();
        }
        if let Some(c) = &self.user_config {
            options.user_config = Some(c.clone());
        }
        if let Some(t) = self.graceful_shutdown_timeout_s {
            options.graceful_shutdown_timeout = Duration::from_secs_f64(t);
        }
        options
    }
}

impl From<&AutoscalingOptions> for AutoscalingConfig {
    fn from(o: &AutoscalingOptions) -> Self {
        AutoscalingConfig {
            min_replicas: o.min_replicas,
            initial_replicas: o.initial_replicas,
            max_replicas: o.max_replicas,
            target_ongoing_requests: o.target_ongoing_requests,
            look_back_period_s: o.look_back_period.as_secs_f64(),
            upscale_delay_s: o.upscale_delay.as_secs_f64(),
            downscale_delay_s: o.downscale_delay.as_secs_f64(),
        }
    }
}

impl AutoscalingConfig {
    /// The options as a deployment takes them.
    pub fn to_options(&self) -> AutoscalingOptions {
        AutoscalingOptions {
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            initial_replicas: self.initial_replicas,
            target_ongoing_requests: self.target_ongoing_requests,
            look_back_period: Duration::from_secs_f64(self.look_back_period_s),
            upscale_delay: Duration::from_secs_f64(self.upscale_delay_s),
            downscale_delay: Duration::from_secs_f64(self.downscale_delay_s),
        }
    }
}

/// The most seconds a field may hold: what a `Duration` can (about 585 billion years).
const MAX_SECONDS: f64 = u64::MAX as f64;

/// serde-saphyr's messages start with `line L column C: `; we print the location ourselves.
fn strip_location(message: &str) -> &str {
    let mut m = message.strip_prefix("error: ").unwrap_or(message);
    if m.starts_with("line ") {
        if let Some((_, rest)) = m.split_once(": ") {
            m = rest;
        }
    }
    let m = m.lines().next().unwrap_or(m);
    match m.rfind(" at line ") {
        Some(i) => &m[..i],
        None => m,
    }
}

fn parent_path(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The document's shape with every key's and value's location, to turn paths into lines and
/// lines into paths.
#[derive(Debug)]
enum Tree {
    Map(Vec<(Spanned<String>, Spanned<Tree>)>),
    Seq(Vec<Spanned<Tree>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_u128<E>(self, _: u128) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_unit<E>(self) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_none<E>(self) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Tree, D::Error> {
                Tree::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = a.next_element()? {
                    items.push(item);
                }
                Ok(Tree::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    entries.push(entry);
                }
                Ok(Tree::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

fn loc(s: &serde_saphyr::Location) -> (usize, usize) {
    (s.line() as usize, s.column() as usize)
}

/// The line and column of `path` (`a.b[2].c`), or of its nearest existing ancestor.
fn tree_location(tree: &Spanned<Tree>, path: &str) -> Option<(usize, usize)> {
    let mut node = tree;
    let mut at = loc(&tree.referenced);
    for segment in path.split('.').flat_map(|s| {
        let (key, rest) = s.split_once('[').unwrap_or((s, ""));
        std::iter::once(Ok(key)).chain(rest.split('[').filter(|r| !r.is_empty()).map(|r| {
            Err(r
                .trim_end_matches(']')
                .parse::<usize>()
                .unwrap_or(usize::MAX))
        }))
    }) {
        match (&node.value, segment) {
            (_, Ok("")) => {}
            (Tree::Map(entries), Ok(key)) => match entries.iter().find(|(k, _)| k.value == key) {
                Some((k, v)) => {
                    at = loc(&k.referenced);
                    node = v;
                }
                None => break,
            },
            (Tree::Seq(items), Err(i)) => match items.get(i) {
                Some(item) => {
                    at = loc(&item.referenced);
                    node = item;
                }
                None => break,
            },
            _ => break,
        }
    }
    Some(at)
}

/// The path of the key or value at `line:column`, if any.
fn tree_path_at(tree: &Spanned<Tree>, line: usize, column: usize) -> Option<String> {
    fn walk(node: &Spanned<Tree>, path: &str, target: (usize, usize)) -> Option<String> {
        match &node.value {
            Tree::Map(entries) => entries.iter().find_map(|(k, v)| {
                let p = if path.is_empty() {
                    k.value.clone()
                } else {
                    format!("{path}.{}", k.value)
                };
                if loc(&k.referenced) == target || loc(&v.referenced) == target {
                    return Some(walk(v, &p, target).unwrap_or(p));
                }
                walk(v, &p, target)
            }),
            Tree::Seq(items) => items.iter().enumerate().find_map(|(i, item)| {
                let p = format!("{path}[{i}]");
                if loc(&item.referenced) == target {
                    return Some(walk(item, &p, target).unwrap_or(p));
                }
                walk(item, &p, target)
            }),
            Tree::Leaf => None,
        }
    }
    walk(tree, "", (line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        ServeConfig::parse(text, "serve.yaml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_ray_shaped_config_with_defaults() {
        let c = ServeConfig::parse(
            "http_options:\n  port: 9000\n  request_timeout_s: 1.5\napplications:\n  - name: a\n    import_path: x:app\n    args: {k: [1, 2]}\n    deployments:\n      - name: Model\n        num_replicas: 2\n        user_config: {t: 0.5}\n",
            "serve.yaml",
        )
        .unwrap();
        assert_eq!(c.http_options.port, 9000);
        assert_eq!(c.http_options.host, "127.0.0.1");
        assert_eq!(c.applications[0].route_prefix.as_deref(), Some("/"));
        assert_eq!(c.applications[0].args["k"], serde_json::json!([1, 2]));
        assert_eq!(c.applications[0].deployments[0].num_replicas, Some(2));
        assert_eq!(c.admin_options.port, 8265);
        let again = ServeConfig::parse(&c.to_yaml(), "x").unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn json_is_accepted() {
        let c = ServeConfig::parse(
            r#"{"applications": [{"name": "a", "import_path": "x:app", "route_prefix": "/a"}]}"#,
            "<request body>",
        )
        .unwrap();
        assert_eq!(c.applications[0].route_prefix.as_deref(), Some("/a"));
    }

    #[test]
    fn unknown_fields_name_line_and_path() {
        assert_eq!(
            err("applications:\n  - name: a\n    import_path: x:app\n    request_timeout_s: 3\n"),
            "serve.yaml:4:5: applications[0].request_timeout_s: unknown field `request_timeout_s`, expected one of name, route_prefix, import_path, args, deployments"
        );
    }

    #[test]
    fn wrong_types_and_missing_fields() {
        assert_eq!(
            err("http_options:\n  port: 70000\n"),
            "serve.yaml:2:9: http_options.port: invalid u16"
        );
        assert_eq!(
            err("applications:\n  - name: a\n    route_prefix: /a\n"),
            "serve.yaml:3:5: applications[0]: missing field `import_path`"
        );
    }

    #[test]
    fn validation_errors_point_at_their_fields() {
        let e = err("applications:\n  - name: a\n    import_path: x:app\n    deployments:\n      - name: M\n        num_replicas: 0\n  - name: a\n    route_prefix: /b/\n    import_path: x:app\n");
        assert_eq!(
            e,
            "serve.yaml:6:9: applications[0].deployments[0].num_replicas: must be at least 1, got 0\n\
             serve.yaml:7:5: applications[1].name: duplicate application name 'a' (also applications[0])\n\
             serve.yaml:8:5: applications[1].route_prefix: route_prefix '/b/' must not end with '/' unless it is exactly '/'"
        );
    }

    /// Seconds too large for a `Duration` passed validation and then panicked in
    /// `Duration::from_secs_f64` when the server took the options (found while writing the
    /// `config` fuzz target's property that accepted configs convert to options).
    #[test]
    fn durations_too_large_are_refused() {
        let e = err("http_options:\n  request_timeout_s: 1e300\napplications:\n  - name: a\n    import_path: x:app\n    deployments:\n      - name: M\n        graceful_shutdown_timeout_s: 1e20\n        autoscaling_config: {upscale_delay_s: 1e300}\n");
        assert!(e.contains("serve.yaml:2:3: http_options.request_timeout_s: must be at most 1.8446744073709552e19, got 1e300"), "{e}");
        assert!(e.contains("deployments[0].graceful_shutdown_timeout_s: must be at most 1.8446744073709552e19, got 1e20"), "{e}");
        assert!(
            e.contains("autoscaling_config.upscale_delay_s: must be at most 1.8446744073709552e19"),
            "{e}"
        );
        let ok =
            ServeConfig::parse("http_options:\n  request_timeout_s: 1e9\n", "serve.yaml").unwrap();
        assert_eq!(
            ok.http_options.to_options().request_timeout,
            Some(Duration::from_secs(1_000_000_000))
        );
    }

    #[test]
    fn autoscaling_bounds() {
        let e = err("applications:\n  - name: a\n    import_path: x:app\n    deployments:\n      - name: M\n        num_replicas: 2\n        autoscaling_config:\n          min_replicas: 3\n          max_replicas: 2\n          initial_replicas: 5\n          target_ongoing_requests: 0\n");
        assert!(e.contains("serve.yaml:6:9: applications[0].deployments[0].num_replicas: cannot be set together with autoscaling_config"), "{e}");
        assert!(e.contains("serve.yaml:8:11: applications[0].deployments[0].autoscaling_config.min_replicas: must be at most max_replicas (2), got 3"), "{e}");
        assert!(e.contains("autoscaling_config.initial_replicas: must be between min_replicas (3) and max_replicas (2), got 5"), "{e}");
        assert!(
            e.contains("target_ongoing_requests: must be a number greater than 0, got 0"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_prefixes_and_deployments_and_ranges() {
        let e = err("http_options:\n  request_timeout_s: -1\n  root_path: serve\napplications:\n  - {name: a, import_path: x, route_prefix: /a, deployments: [{name: M}, {name: M, max_queued_requests: 0}]}\n  - {name: b, import_path: x, route_prefix: /a}\n");
        assert!(
            e.contains("http_options.request_timeout_s: must be a number greater than 0, got -1"),
            "{e}"
        );
        assert!(
            e.contains("http_options.root_path: must be empty or start with '/'"),
            "{e}"
        );
        assert!(
            e.contains("applications[0].deployments[1].name: duplicate deployment name 'M'"),
            "{e}"
        );
        assert!(e.contains("applications[0].deployments[1].max_queued_requests: must be -1 (unlimited) or at least 1, got 0"), "{e}");
        assert!(e.contains("serve.yaml:6:"), "{e}");
        assert!(
            e.contains(
                "applications[1].route_prefix: duplicate route_prefix '/a' (also applications[0])"
            ),
            "{e}"
        );
    }

    #[test]
    fn metrics_path_and_access_log() {
        let ok = |text: &str| ServeConfig::parse(text, "serve.yaml").unwrap();
        let c = ok("applications: []\n");
        assert_eq!(c.http_options.metrics_path.as_deref(), Some("/metrics"));
        assert!(c.logging_config.enable_access_log);
        let c = ok("http_options:\n  metrics_path: /-/metrics\nlogging_config:\n  enable_access_log: false\n");
        assert_eq!(
            c.http_options.to_options().metrics_path.as_deref(),
            Some("/-/metrics")
        );
        assert!(!c.logging_config.enable_access_log);
        let c = ok("http_options:\n  metrics_path: null\n");
        assert_eq!(c.http_options.to_options().metrics_path, None);
        let e = err("http_options:\n  metrics_path: metrics\n");
        assert!(
            e.starts_with("serve.yaml:2:3: http_options.metrics_path: must start with '/'"),
            "{e}"
        );
        let e = err("logging_config:\n  enable_access_logs: false\n");
        assert!(e.contains("unknown field `enable_access_logs`"), "{e}");
    }

    #[test]
    fn http_options_take_every_limit_flat_and_refuse_unknown_or_repeated_fields() {
        let c = ServeConfig::parse(
            "http_options:\n  port: 1\n  max_image_pixels: 7\n  max_connections: 3\n",
            "serve.yaml",
        )
        .unwrap();
        assert_eq!(c.http_options.port, 1);
        assert_eq!(c.http_options.limits.max_image_pixels, 7);
        assert_eq!(c.http_options.to_options().limits.max_connections, 3);
        let yaml = c.to_yaml();
        assert!(yaml.contains("max_image_pixels: 7"), "{yaml}");
        assert_eq!(ServeConfig::parse(&yaml, "again").unwrap(), c);
        let e = err("http_options:\n  port: 1\n  max_pixels: 7\n");
        assert!(
            e.starts_with("serve.yaml:3:3: http_options.max_pixels: unknown field `max_pixels`, expected one of host, port,"),
            "{e}"
        );
        let e = err("http_options:\n  max_headers: 0\n");
        assert_eq!(
            e,
            "serve.yaml:2:3: http_options.max_headers: must be at least 1, got 0"
        );
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = err("applications: [\n");
        assert!(e.starts_with("serve.yaml:1:"), "{e}");
    }

    #[test]
    fn overrides_apply_over_code_options() {
        let base = DeploymentOptions::default();
        let d = DeploymentConfig {
            name: "M".into(),
            max_queued_requests: Some(-1),
            autoscaling_config: Some(AutoscalingConfig {
                min_replicas: 2,
                initial_replicas: None,
                max_replicas: 4,
                target_ongoing_requests: 2.0,
                look_back_period_s: 1.0,
                upscale_delay_s: 1.0,
                downscale_delay_s: 30.0,
            }),
            health_check_period_s: Some(2.5),
            health_check_timeout_s: Some(1.0),
            ..Default::default()
        };
        let o = d.apply_to(&base);
        assert_eq!(o.health_check_period, Duration::from_millis(2500));
        assert_eq!(o.health_check_timeout, Duration::from_secs(1));
        assert_eq!((o.initial_replicas(), o.max_queued_requests), (2, None));
        let a = o.autoscaling.expect("autoscaling applied");
        assert_eq!((a.min_replicas, a.max_replicas), (2, 4));
        assert_eq!(a.downscale_delay, Duration::from_secs(30));
    }
}
