//! The controller: the running applications, and how a new config is applied to them.
//!
//! Applying a config is declarative, as `serve deploy` is: the listed applications run, the
//! others are deleted. For each application:
//! - **new**: built, every deployment started (dependencies first), then routed to;
//! - **same `import_path` and `args`**: updated in place, without restarting anything:
//!   `max_ongoing_requests`/`max_queued_requests` at once, `user_config` through each replica's
//!   `reconfigure`, `num_replicas` by adding replicas or draining idle ones first;
//! - **changed `import_path` or `args`**: rebuilt and rolled over. A deployment of the same name
//!   and type takes over its predecessor's replica set, so both versions' traffic meets in one
//!   place,
//!   and its replicas are replaced at most 20% of the target at a time, each batch running
//!   before the matching old replicas stop taking requests; other deployments start fresh and
//!   the route switches once all are up. In-flight requests always finish where they started.
//! - **deleted**: unrouted, then its replicas drain.
//!
//! A failure leaves the application `DEPLOY_FAILED` with the error in its status; for an update
//! the previous version keeps serving.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use ferroserve_core::deployment::{DeploymentOptions, NodeRef, ReplicaInfo, ReplicaState};
use ferroserve_core::sync::lock;
use ferroserve_core::Error;
use ferroserve_http::app::Application;
use ferroserve_http::endpoint::HttpEndpoint;
use ferroserve_http::metrics::{DeploymentSample, MetricsSource};
use ferroserve_http::proxy::ProxyState;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{
    AppConfig, AutoscalingConfig, ConfigError, ConfigIssue, DeploymentConfig, ServeConfig,
};
use crate::registry::{Args, Registry};

/// An application's state (Ray's `ApplicationStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AppStatus {
    /// Known, not yet being deployed.
    NotStarted,
    /// Replicas are being started or replaced.
    Deploying,
    /// The last deploy failed; see the message.
    DeployFailed,
    /// Every deployment runs its target number of replicas.
    Running,
    /// Some deployment runs fewer replicas than its target.
    Unhealthy,
    /// Being deleted.
    Deleting,
}

/// Where an application came from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// `Serve::app(...)` in code.
    Code,
    /// A config file entry.
    Config {
        import_path: String,
        args: Map<String, Value>,
    },
}

struct AppRecord {
    name: String,
    route_prefix: Option<String>,
    source: Source,
    config: Option<AppConfig>,
    nodes: Vec<NodeRef>,
    endpoint: Option<Arc<dyn HttpEndpoint>>,
    status: AppStatus,
    message: String,
    last_deployed_time_s: f64,
}

/// The running applications and the proxy's route table.
pub(crate) struct Controller {
    proxy: Arc<ProxyState>,
    registry: Registry,
    /// The config the server started with (its fixed parts: http, admin, logging).
    base: ServeConfig,
    /// One apply at a time.
    apply_lock: tokio::sync::Mutex<()>,
    apps: Mutex<Vec<AppRecord>>,
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn issue(path: String, message: String) -> ConfigIssue {
    ConfigIssue {
        line: None,
        column: None,
        path,
        message,
    }
}

fn message(e: &Error) -> String {
    match e {
        Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

/// One application's plan: what to build and how to apply it.
enum Plan {
    InPlace {
        options: Vec<(NodeRef, DeploymentOptions)>,
    },
    Build {
        app: Application,
        nodes: Vec<NodeRef>,
    },
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.apps().iter().map(|a| a.name.clone()).collect();
        f.debug_struct("Controller")
            .field("applications", &names)
            .finish()
    }
}

impl Controller {
    pub(crate) fn new(proxy: Arc<ProxyState>, registry: Registry, base: ServeConfig) -> Self {
        Controller {
            proxy,
            registry,
            base,
            apply_lock: tokio::sync::Mutex::new(()),
            apps: Mutex::new(Vec::new()),
        }
    }

    fn apps(&self) -> MutexGuard<'_, Vec<AppRecord>> {
        lock(&self.apps)
    }

    /// Starts applications declared in code. Any failure stops what was started.
    pub(crate) async fn start_code_apps(&self, apps: Vec<Application>) -> Result<(), Error> {
        let _guard = self.apply_lock.lock().await;
        for app in apps {
            let nodes = app.deployments()?;
            let mut started: Vec<NodeRef> = Vec::new();
            for node in &nodes {
                if let Err(e) = node.start().await {
                    for n in started.iter().rev() {
                        n.stop();
                    }
                    return Err(e);
                }
                started.push(node.clone());
            }
            tracing::info!(
                app = %app.app_name(),
                route_prefix = %app.app_route_prefix(),
                "application running"
            );
            let endpoint = app.endpoint();
            self.apps().push(AppRecord {
                name: app.app_name().to_owned(),
                route_prefix: Some(app.app_route_prefix().to_owned()),
                source: Source::Code,
                config: None,
                nodes,
                endpoint: Some(endpoint),
                status: AppStatus::Running,
                message: String::new(),
                last_deployed_time_s: now_s(),
            });
        }
        self.publish_routes();
        Ok(())
    }

    /// Rebuilds the proxy's route table from the applications that have an endpoint, and binds
    /// every deployment's metrics to its application.
    fn publish_routes(&self) {
        let apps = self.apps();
        for app in apps.iter() {
            for node in &app.nodes {
                node.metrics().bind(&app.name, self.proxy.metrics_enabled());
            }
        }
        let routes = apps
            .iter()
            .filter_map(|a| {
                Some(self.proxy.route(
                    a.route_prefix.as_deref()?,
                    a.name.clone(),
                    a.endpoint.clone()?,
                ))
            })
            .collect();
        drop(apps);
        self.proxy.set_routes(routes);
    }

    /// Applies a checked config. Errors that can be found before anything changes (unknown
    /// import path, bad args, overrides for unknown deployments, changed fixed options) come
    /// back as a [`ConfigError`] and nothing is touched. Failures while starting replicas are
    /// recorded in the applications' status instead.
    pub(crate) async fn apply(&self, config: ServeConfig, file: &str) -> Result<(), ConfigError> {
        let _guard = self.apply_lock.lock().await;
        let mut issues = Vec::new();
        for (field, same) in [
            (
                "http_options",
                config.http_options == self.base.http_options,
            ),
            (
                "admin_options",
                config.admin_options == self.base.admin_options,
            ),
            (
                "logging_config",
                config.logging_config == self.base.logging_config,
            ),
        ] {
            if !same {
                issues.push(issue(
                    field.to_owned(),
                    "cannot change on a running server (restart `ferroserve run` to change it); \
                     leave it as the server started with"
                        .to_owned(),
                ));
            }
        }
        // Plan every application before touching any.
        let mut plans = Vec::new();
        for (i, cfg) in config.applications.iter().enumerate() {
            match self.plan(i, cfg) {
                Ok(plan) => plans.push(plan),
                Err(mut more) => issues.append(&mut more),
            }
        }
        if !issues.is_empty() {
            return Err(ConfigError {
                file: file.to_owned(),
                issues,
            });
        }
        // Delete what the config no longer lists.
        let deleted: Vec<AppRecord> = {
            let mut apps = self.apps();
            let (keep, gone) = apps
                .drain(..)
                .partition(|a| config.applications.iter().any(|c| c.name == a.name));
            *apps = keep;
            gone
        };
        self.publish_routes();
        for app in deleted {
            tracing::info!(app = %app.name, "deleting application");
            self.drain_nodes(&app.nodes, &[]).await;
        }
        for (cfg, plan) in config.applications.iter().zip(plans) {
            self.execute(cfg, plan).await;
        }
        Ok(())
    }

    fn plan(&self, i: usize, cfg: &AppConfig) -> Result<Plan, Vec<ConfigIssue>> {
        let at = |field: &str| format!("applications[{i}].{field}");
        let source = Source::Config {
            import_path: cfg.import_path.clone(),
            args: cfg.args.clone(),
        };
        let existing = {
            let apps = self.apps();
            apps.iter()
                .position(|a| a.name == cfg.name && a.source == source && !a.nodes.is_empty())
                .map(|index| apps[index].nodes.clone())
        };
        if let Some(nodes) = existing {
            let options = overrides(i, cfg, &nodes)?;
            for (node, opts) in &options {
                check_options(i, cfg, node, opts)?;
            }
            return Ok(Plan::InPlace { options });
        }
        let app = self
            .registry
            .build(&cfg.import_path, Args(cfg.args.clone()))
            .map_err(|e| {
                let m = message(&e);
                let field = if m.starts_with("import_path") {
                    "import_path"
                } else {
                    "args"
                };
                vec![issue(at(field), m)]
            })?;
        let nodes = app
            .deployments()
            .map_err(|e| vec![issue(at("import_path"), message(&e))])?;
        for (node, opts) in overrides(i, cfg, &nodes)? {
            node.configure(opts)
                .map_err(|e| vec![issue(deployment_path(i, cfg, node.name()), message(&e))])?;
        }
        Ok(Plan::Build { app, nodes })
    }

    async fn execute(&self, cfg: &AppConfig, plan: Plan) {
        self.set_status(&cfg.name, AppStatus::Deploying, "");
        let failure = match plan {
            Plan::InPlace { options } => self.update_in_place(cfg, options).await,
            Plan::Build { app, nodes } => self.build_and_roll(cfg, app, nodes).await,
        };
        self.finish(&cfg.name, failure);
    }

    /// Same import path and args: new options for every deployment, nothing restarted.
    async fn update_in_place(
        &self,
        cfg: &AppConfig,
        options: Vec<(NodeRef, DeploymentOptions)>,
    ) -> Option<Error> {
        let mut failure = None;
        for (node, opts) in options {
            if let Err(e) = node.update(opts).await {
                failure = Some(e);
                break;
            }
        }
        if let Some(app) = self.apps().iter_mut().find(|a| a.name == cfg.name) {
            app.route_prefix = cfg.route_prefix.clone();
            app.config = Some(cfg.clone());
            app.last_deployed_time_s = now_s();
        }
        self.publish_routes();
        failure
    }

    /// A new graph: each deployment takes over its predecessor's replicas (rolling update) or
    /// starts fresh; the route switches once all run, then what was not taken over drains. On
    /// a failure the previous version keeps serving.
    async fn build_and_roll(
        &self,
        cfg: &AppConfig,
        app: Application,
        nodes: Vec<NodeRef>,
    ) -> Option<Error> {
        let old_nodes = self.record_deploying(cfg);
        let mut done: Vec<NodeRef> = Vec::new();
        for node in &nodes {
            if let Err(e) = Self::start_or_roll(node, &old_nodes).await {
                self.keep_previous(cfg, &done, &old_nodes).await;
                return Some(e);
            }
            done.push(node.clone());
        }
        let endpoint = app.endpoint();
        if let Some(rec) = self.apps().iter_mut().find(|a| a.name == cfg.name) {
            rec.route_prefix = cfg.route_prefix.clone();
            rec.source = Source::Config {
                import_path: cfg.import_path.clone(),
                args: cfg.args.clone(),
            };
            rec.config = Some(cfg.clone());
            rec.nodes = nodes.clone();
            rec.endpoint = Some(endpoint);
            rec.last_deployed_time_s = now_s();
        }
        self.publish_routes();
        // The old version's deployments that were not taken over drain now.
        self.drain_nodes(&old_nodes, &nodes).await;
        tracing::info!(app = %cfg.name, "application running");
        None
    }

    /// The running version's nodes, after recording a new application as deploying.
    fn record_deploying(&self, cfg: &AppConfig) -> Vec<NodeRef> {
        let mut apps = self.apps();
        if let Some(app) = apps.iter().find(|a| a.name == cfg.name) {
            return app.nodes.clone();
        }
        apps.push(AppRecord {
            name: cfg.name.clone(),
            route_prefix: cfg.route_prefix.clone(),
            source: Source::Code,
            config: Some(cfg.clone()),
            nodes: Vec::new(),
            endpoint: None,
            status: AppStatus::Deploying,
            message: String::new(),
            last_deployed_time_s: now_s(),
        });
        Vec::new()
    }

    /// Starts `node`, taking over the replicas of the running version of the same deployment
    /// if there is one.
    async fn start_or_roll(node: &NodeRef, old_nodes: &[NodeRef]) -> Result<(), Error> {
        match old_nodes.iter().find(|o| o.name() == node.name()) {
            Some(old) if node.adopt(old) => {
                // One supervisor per replica set: the new version's, once it runs.
                old.halt();
                node.roll().await
            }
            _ => node.start().await,
        }
    }

    /// After a failed build: drops what was started anew and lets the previous version (if
    /// any) go on serving under its own supervisors.
    async fn keep_previous(&self, cfg: &AppConfig, done: &[NodeRef], old_nodes: &[NodeRef]) {
        self.drain_nodes(done, old_nodes).await;
        for old in old_nodes {
            if !done.iter().any(|d| old.shares_replicas(d)) {
                old.supervise();
            }
        }
        if let Some(rec) = self.apps().iter_mut().find(|a| a.name == cfg.name) {
            rec.last_deployed_time_s = now_s();
            rec.config = Some(cfg.clone());
        }
    }

    /// Stops every node of `nodes` that does not share its replicas with one of `keep`.
    async fn drain_nodes(&self, nodes: &[NodeRef], keep: &[NodeRef]) {
        for node in nodes.iter().rev() {
            if keep.iter().any(|k| node.shares_replicas(k)) {
                node.halt();
                continue;
            }
            node.stop();
        }
    }

    fn set_status(&self, name: &str, status: AppStatus, message: &str) {
        if let Some(app) = self.apps().iter_mut().find(|a| a.name == name) {
            app.status = status;
            app.message = message.to_owned();
        }
    }

    fn finish(&self, name: &str, failure: Option<Error>) {
        match failure {
            None => self.set_status(name, AppStatus::Running, ""),
            Some(e) => {
                tracing::error!(app = %name, "deploy failed: {e}");
                self.set_status(name, AppStatus::DeployFailed, &e.to_string());
            }
        }
    }

    /// The first application whose deploy failed, as `app 'name': error`.
    pub(crate) fn failed_app(&self) -> Option<String> {
        self.apps()
            .iter()
            .find(|a| a.status == AppStatus::DeployFailed)
            .map(|a| format!("application '{}' failed to deploy: {}", a.name, a.message))
    }

    /// Stops every application (the server is shutting down).
    pub(crate) fn stop_all(&self) {
        let apps: Vec<AppRecord> = std::mem::take(&mut *self.apps());
        for app in apps {
            for node in app.nodes.iter().rev() {
                node.stop();
            }
        }
    }

    /// The status of every application, as the admin API and `ferroserve status` show it.
    pub(crate) fn status(&self) -> ServeStatus {
        let apps = self.apps();
        let mut applications = serde_json::Map::new();
        for app in apps.iter() {
            let mut deployments = serde_json::Map::new();
            let mut short = false;
            for node in &app.nodes {
                let options = node.options();
                let replicas = node.replica_infos();
                let running = replicas
                    .iter()
                    .filter(|r| r.state == ReplicaState::Running)
                    .count();
                let target = node.target();
                let message = node.message();
                let status = if app.status == AppStatus::Deploying {
                    "UPDATING"
                } else if running == target && message.is_empty() {
                    "HEALTHY"
                } else if options.autoscaling.is_some() && message.is_empty() {
                    // The autoscaler moved the target; replicas are on their way.
                    if running < target {
                        "UPSCALING"
                    } else {
                        "DOWNSCALING"
                    }
                } else if running >= target {
                    "HEALTHY"
                } else {
                    short = true;
                    "UNHEALTHY"
                };
                let detail = DeploymentStatus {
                    name: node.name().to_owned(),
                    status,
                    message,
                    target_num_replicas: target,
                    deployment_config: DeploymentConfigView::from(&options),
                    replica_states: count_states(&replicas),
                    replicas,
                };
                deployments.insert(
                    node.name().to_owned(),
                    serde_json::to_value(detail).unwrap_or(Value::Null),
                );
            }
            let status = match app.status {
                AppStatus::Running if short => AppStatus::Unhealthy,
                s => s,
            };
            let detail = AppDetail {
                name: app.name.clone(),
                route_prefix: app.route_prefix.clone(),
                status,
                message: app.message.clone(),
                last_deployed_time_s: app.last_deployed_time_s,
                deployed_app_config: app.config.clone(),
                deployments: Value::Object(deployments),
            };
            applications.insert(
                app.name.clone(),
                serde_json::to_value(detail).unwrap_or(Value::Null),
            );
        }
        ServeStatus {
            http_options: self.base.http_options.clone(),
            applications: Value::Object(applications),
        }
    }

    /// The running config: the server's fixed parts and every application's last deployed
    /// entry (applications from code have none and are left out).
    pub(crate) fn config(&self) -> ServeConfig {
        let mut config = self.base.clone();
        config.applications = self
            .apps()
            .iter()
            .filter_map(|a| a.config.clone())
            .collect();
        config
    }
}

impl MetricsSource for Controller {
    /// What `/metrics` reads from every deployment of every application.
    fn deployment_samples(&self) -> Vec<DeploymentSample> {
        let apps = self.apps();
        let mut out = Vec::new();
        for app in apps.iter() {
            for (i, node) in app.nodes.iter().enumerate() {
                out.push(DeploymentSample {
                    app: app.name.clone(),
                    metrics: node.metrics(),
                    queued: node.num_queued(),
                    replicas: node.replica_infos(),
                    ingress: i + 1 == app.nodes.len(),
                });
            }
        }
        out
    }
}

/// The whole status report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServeStatus {
    pub(crate) http_options: crate::config::HttpOptionsConfig,
    /// Application name → detail.
    pub(crate) applications: Value,
}

#[derive(Serialize)]
struct AppDetail {
    name: String,
    route_prefix: Option<String>,
    status: AppStatus,
    message: String,
    last_deployed_time_s: f64,
    deployed_app_config: Option<AppConfig>,
    deployments: Value,
}

#[derive(Serialize)]
struct DeploymentStatus {
    name: String,
    status: &'static str,
    message: String,
    /// The replicas it should run now (the autoscaler moves it).
    target_num_replicas: usize,
    deployment_config: DeploymentConfigView,
    replica_states: Map<String, Value>,
    replicas: Vec<ReplicaInfo>,
}

#[derive(Serialize)]
struct DeploymentConfigView {
    num_replicas: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    autoscaling_config: Option<AutoscalingConfig>,
    max_ongoing_requests: usize,
    max_queued_requests: i64,
    user_config: Option<Value>,
    graceful_shutdown_timeout_s: f64,
    health_check_period_s: f64,
    health_check_timeout_s: f64,
}

impl From<&DeploymentOptions> for DeploymentConfigView {
    fn from(o: &DeploymentOptions) -> Self {
        DeploymentConfigView {
            num_replicas: o.initial_replicas(),
            autoscaling_config: o.autoscaling.as_ref().map(AutoscalingConfig::from),
            max_ongoing_requests: o.max_ongoing_requests,
            max_queued_requests: o
                .max_queued_requests
                .map_or(-1, |q| i64::try_from(q).unwrap_or(i64::MAX)),
            user_config: o.user_config.clone(),
            graceful_shutdown_timeout_s: o.graceful_shutdown_timeout.as_secs_f64(),
            health_check_period_s: o.health_check_period.as_secs_f64(),
            health_check_timeout_s: o.health_check_timeout.as_secs_f64(),
        }
    }
}

fn count_states(replicas: &[ReplicaInfo]) -> Map<String, Value> {
    let mut counts = Map::new();
    for r in replicas {
        let key = r.state.as_str().to_owned();
        let n = counts.get(&key).and_then(Value::as_u64).unwrap_or(0);
        counts.insert(key, Value::from(n + 1));
    }
    counts
}

fn deployment_path(i: usize, cfg: &AppConfig, name: &str) -> String {
    match cfg.deployments.iter().position(|d| d.name == name) {
        Some(k) => format!("applications[{i}].deployments[{k}]"),
        None => format!("applications[{i}]"),
    }
}

/// Each node with its options: the code's, overridden by the config's entry of the same name.
/// An entry naming no deployment of the graph is an error.
fn overrides(
    i: usize,
    cfg: &AppConfig,
    nodes: &[NodeRef],
) -> Result<Vec<(NodeRef, DeploymentOptions)>, Vec<ConfigIssue>> {
    let mut issues = Vec::new();
    for (k, d) in cfg.deployments.iter().enumerate() {
        if !nodes.iter().any(|n| n.name() == d.name) {
            let names: Vec<&str> = nodes.iter().map(|n| n.name()).collect();
            issues.push(issue(
                format!("applications[{i}].deployments[{k}].name"),
                format!(
                    "application '{}' has no deployment named '{}'; its deployments are: {}",
                    cfg.name,
                    d.name,
                    names.join(", ")
                ),
            ));
        }
    }
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(nodes
        .iter()
        .map(|node| {
            let base = node.defaults();
            let options = match cfg.deployments.iter().find(|d| d.name == node.name()) {
                Some(d) => DeploymentConfig::apply_to(d, &base),
                None => base,
            };
            (node.clone(), options)
        })
        .collect())
}

/// Checks options for an in-place update without applying them.
fn check_options(
    i: usize,
    cfg: &AppConfig,
    node: &NodeRef,
    options: &DeploymentOptions,
) -> Result<(), Vec<ConfigIssue>> {
    node.check(options)
        .map_err(|e| vec![issue(deployment_path(i, cfg, node.name()), message(&e))])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferroserve_core::deployment::Deployment;
    use ferroserve_http::proxy::ProxyOptions;
    use ferroserve_http::{Ingress, Request};

    use super::*;

    /// An ingress that says which version built it.
    struct Versioned(String);

    impl Ingress for Versioned {
        type Output = String;
        async fn call(&self, _: Request) -> String {
            self.0.clone()
        }
    }

    #[derive(serde::Deserialize)]
    struct VersionArgs {
        version: String,
        #[serde(default)]
        fail: bool,
    }

    fn registry() -> Registry {
        Registry::new().register("t:app", |args: Args| {
            let VersionArgs { version, fail } = args.parse()?;
            let deployment = Deployment::new("D").bind_async(move || {
                let version = version.clone();
                async move {
                    if fail {
                        return Err("the model file is corrupt".into());
                    }
                    Ok::<_, BoxError>(Versioned(version))
                }
            });
            Ok(Application::new(deployment))
        })
    }

    type BoxError = ferroserve_core::BoxError;

    fn controller() -> Controller {
        let proxy = ProxyState::new(ProxyOptions {
            host: "127.0.0.1:0".into(),
            root_path: String::new(),
            request_timeout: None,
            limits: Default::default(),
            metrics_path: None,
            access_log: false,
        });
        Controller::new(proxy, registry(), ServeConfig::default())
    }

    fn config(version: &str, replicas: usize) -> ServeConfig {
        ServeConfig::parse(
            &format!(
                "applications:\n  - name: a\n    route_prefix: /a\n    import_path: t:app\n    \
                 args: {{version: {version}}}\n    deployments:\n      - {{name: D, num_replicas: {replicas}}}\n"
            ),
            "test.yaml",
        )
        .unwrap()
    }

    /// The running replicas of application `a`'s deployment `D`, and the application's status.
    fn replicas(c: &Controller) -> (Vec<String>, Value) {
        let status = serde_json::to_value(c.status().applications).unwrap();
        let app = &status["a"];
        let mut ids: Vec<String> = app["deployments"]["D"]["replicas"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter(|r| r["state"] == "RUNNING")
                    .map(|r| r["replica_id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        (ids, app["status"].clone())
    }

    #[tokio::test(start_paused = true)]
    async fn configs_start_update_in_place_roll_over_and_delete() {
        let c = controller();
        c.apply(config("v1", 2), "test.yaml").await.unwrap();
        assert_eq!(
            replicas(&c),
            (vec!["D#0".into(), "D#1".into()], "RUNNING".into())
        );
        // Same import path and args: in place, nothing restarted.
        c.apply(config("v1", 3), "test.yaml").await.unwrap();
        assert_eq!(replicas(&c).0, ["D#0", "D#1", "D#2"]);
        // New args: every replica replaced, numbering carried on.
        c.apply(config("v2", 2), "test.yaml").await.unwrap();
        assert_eq!(
            replicas(&c),
            (vec!["D#3".into(), "D#4".into()], "RUNNING".into())
        );
        assert_eq!(c.config().applications[0].args["version"], "v2");
        // Not listed: deleted.
        c.apply(ServeConfig::default(), "test.yaml").await.unwrap();
        assert_eq!(replicas(&c).1, Value::Null);
        assert!(c.config().applications.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_update_keeps_the_previous_version_serving() {
        let c = controller();
        c.apply(config("v1", 1), "test.yaml").await.unwrap();
        let mut broken = config("v2", 1);
        broken.applications[0]
            .args
            .insert("fail".into(), Value::Bool(true));
        c.apply(broken, "test.yaml").await.unwrap();
        let (ids, status) = replicas(&c);
        assert_eq!((ids, status), (vec!["D#0".into()], "DEPLOY_FAILED".into()));
        let message = serde_json::to_value(c.status().applications).unwrap()["a"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains("deployment 'D' failed to start: the model file is corrupt"),
            "{message}"
        );
        assert!(c.failed_app().is_some());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            replicas(&c).0,
            ["D#0"],
            "the old version's supervisor still runs it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_config_changes_nothing_and_names_the_field() {
        let c = controller();
        c.apply(config("v1", 1), "test.yaml").await.unwrap();
        let mut unknown = config("v1", 1);
        unknown.applications[0].import_path = "nowhere:app".into();
        let err = c.apply(unknown, "test.yaml").await.unwrap_err();
        assert_eq!(err.issues[0].path, "applications[0].import_path");
        assert!(err.issues[0].message.contains("not registered"), "{err}");
        let mut wrong = config("v1", 1);
        wrong.applications[0].deployments[0].name = "E".into();
        let err = c.apply(wrong, "test.yaml").await.unwrap_err();
        assert_eq!(err.issues[0].path, "applications[0].deployments[0].name");
        assert_eq!(replicas(&c), (vec!["D#0".into()], "RUNNING".into()));
    }
}
