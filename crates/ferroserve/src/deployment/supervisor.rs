//! The supervisor: one task per running deployment, the controller's loop for it.
//!
//! Each turn it
//! 1. **autoscales** (autoscaled deployments, every 100 ms): samples the load (requests running
//!    or queued) and lets the [`Policy`] move the target; a request queued while no replica runs
//!    wakes it at once;
//! 2. **checks health** (every `health_check_period`, deployments with a hook): a replica that
//!    fails [`FAILURE_THRESHOLD`] checks in a row leaves routing, drains in the background, and
//!    is replaced;
//! 3. **reconciles**: builds the missing replicas at once (one constructor attempt each per turn,
//!    retried with a pause doubling from 100 ms up to 30 s, the error kept as the deployment's
//!    status message), or retires the idlest extra replicas.
//!
//! Configuration updates and the supervisor take the same operation lock, so they never scale
//! one deployment at the same time. The task holds only a weak reference to its deployment and
//! ends when the deployment is stopped, halted (a rolling update took over) or dropped.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{panic_message, Node};
use crate::autoscaling::{Policy, SAMPLE_PERIOD};
use crate::health::FAILURE_THRESHOLD;
use crate::metrics;
use crate::router::{Replica, Router};

/// The longest pause between attempts to build a missing replica.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// A deployment's supervision state, shared by its supervisor task and the controller.
#[derive(Default)]
pub(super) struct Supervision {
    /// Replicas the deployment should run.
    target: AtomicUsize,
    /// Serializes scaling operations (config updates, the supervisor's turns).
    ops: tokio::sync::Mutex<()>,
    /// Cancels the running supervisor task, if any.
    task: Mutex<Option<CancellationToken>>,
    /// The last problem, while the deployment is short of its target.
    message: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervision {
    pub(super) fn target(&self) -> usize {
        self.target.load(SeqCst)
    }

    pub(super) fn set_target(&self, n: usize) {
        self.target.store(n, SeqCst);
    }

    pub(super) async fn lock_ops(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.ops.lock().await
    }

    pub(super) fn halt(&self) {
        if let Some(token) = lock(&self.task).take() {
            token.cancel();
        }
    }

    pub(super) fn message(&self) -> String {
        lock(&self.message).clone()
    }

    fn set_message(&self, message: String) {
        *lock(&self.message) = message;
    }
}

/// Starts `node`'s supervisor unless one runs.
pub(super) fn spawn<T: Send + Sync + 'static>(node: &Arc<Node<T>>) {
    let token = CancellationToken::new();
    {
        let mut task = lock(&node.supervision.task);
        if task.is_some() {
            return;
        }
        *task = Some(token.clone());
    }
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        token.run_until_cancelled(run(weak)).await;
    });
}

/// Where the supervisor is between turns.
struct Turn {
    policy: Option<Policy>,
    failures: HashMap<String, u32>,
    next_check: Instant,
    retry_at: Option<Instant>,
    retry_pause: Duration,
    /// Whether `serve_autoscaling_target_replicas` has been set for this policy.
    gauge_set: bool,
}

async fn run<T: Send + Sync + 'static>(node: Weak<Node<T>>) {
    let mut turn = {
        let Some(node) = node.upgrade() else { return };
        Turn {
            policy: None,
            failures: HashMap::new(),
            next_check: Instant::now() + node.current().health_check_period,
            retry_at: None,
            retry_pause: Duration::from_millis(100),
            gauge_set: false,
        }
    };
    loop {
        let (router, wake) = {
            let Some(node) = node.upgrade() else { return };
            let router = node.router.load_full();
            let wake = node.turn(&router, &mut turn).await;
            (router, wake)
        };
        let scale_from_zero = turn.policy.is_some() && router.num_replicas() == 0;
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = router.demand(), if scale_from_zero => {}
        }
    }
}

impl<T: Send + Sync + 'static> Node<T> {
    /// One turn of the supervisor; returns when the next one is due.
    async fn turn(&self, router: &Arc<Router<T>>, turn: &mut Turn) -> Instant {
        let options = self.current();
        let now = Instant::now();

        // 1. Autoscaling.
        match (&options.autoscaling, &turn.policy) {
            (None, _) => turn.policy = None,
            (Some(a), Some(p)) if p.options() == a => {}
            (Some(a), _) => {
                turn.policy = Some(Policy::new(a.clone()));
                turn.gauge_set = false;
            }
        }
        if let Some(policy) = &mut turn.policy {
            // The target gauge, once the deployment's application is known (routes published).
            let app = router.metrics().app();
            if !turn.gauge_set && !app.is_empty() {
                let target = self.supervision.target();
                metrics::autoscaling_decision(&app, &self.name, target, target);
                turn.gauge_set = true;
            }
            let load = router.num_ongoing() + router.num_queued();
            if let Some(d) = policy.observe(now, load, self.supervision.target()) {
                tracing::info!(
                    deployment = %self.name,
                    from = d.from,
                    to = d.to,
                    load,
                    "autoscaling"
                );
                self.supervision.set_target(d.to);
                metrics::autoscaling_decision(&app, &self.name, d.from, d.to);
                // A new target is worth an attempt now, whatever the retry pause.
                turn.retry_at = None;
            }
        }

        // 2. Health checks.
        if now >= turn.next_check {
            self.check_health(router, &options, &mut turn.failures)
                .await;
            turn.next_check = Instant::now() + options.health_check_period;
        }

        // 3. Reconcile.
        let due = turn.retry_at.is_none_or(|t| Instant::now() >= t);
        if router.num_replicas() != self.supervision.target() && due {
            // A config update holds the lock while it scales; it reconciles itself.
            if let Ok(_ops) = self.supervision.ops.try_lock() {
                match self.reconcile(1).await {
                    Ok(()) => {
                        turn.retry_at = None;
                        turn.retry_pause = Duration::from_millis(100);
                        self.supervision.set_message(String::new());
                    }
                    Err(e) => {
                        tracing::error!(
                            deployment = %self.name,
                            "replica failed to start, retrying in {:?}: {e}",
                            turn.retry_pause
                        );
                        self.supervision.set_message(format!(
                            "{e}; retrying in {:.1}s",
                            turn.retry_pause.as_secs_f64()
                        ));
                        turn.retry_at = Some(Instant::now() + turn.retry_pause);
                        turn.retry_pause = (turn.retry_pause * 2).min(MAX_RETRY_PAUSE);
                    }
                }
            }
        }

        let mut wake = turn.next_check;
        if turn.policy.is_some() {
            wake = wake.min(Instant::now() + SAMPLE_PERIOD);
        }
        if let Some(t) = turn.retry_at {
            wake = wake.min(t);
        } else if router.num_replicas() != self.supervision.target() {
            // The lock was busy: look again soon.
            wake = wake.min(Instant::now() + SAMPLE_PERIOD);
        }
        wake
    }

    /// Checks every routed replica at once; replaces those that failed too often.
    async fn check_health(
        &self,
        router: &Arc<Router<T>>,
        options: &super::DeploymentOptions,
        failures: &mut HashMap<String, u32>,
    ) {
        let Some(hook) = self.health.get() else {
            return;
        };
        let replicas = router.replicas();
        let checks = replicas.iter().map(|replica| {
            let check = hook(replica.instance.clone());
            let timeout = options.health_check_timeout;
            async move {
                match tokio::time::timeout(timeout, AssertUnwindSafe(check).catch_unwind()).await {
                    Err(_) => Err(format!("health check timed out after {timeout:?}")),
                    Ok(Err(panic)) => Err(format!("health check {}", panic_message(&*panic))),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Ok(Ok(()))) => Ok(()),
                }
            }
        });
        let results = futures_util::future::join_all(checks).await;
        let mut unhealthy: Vec<Arc<Replica<T>>> = Vec::new();
        for (replica, result) in replicas.iter().zip(results) {
            let Err(reason) = result else {
                failures.remove(&replica.id);
                continue;
            };
            metrics::health_check_failed(&router.metrics().app(), &self.name);
            let count = failures.entry(replica.id.clone()).or_insert(0);
            *count += 1;
            tracing::warn!(
                deployment = %self.name,
                replica = %replica.id,
                failures = *count,
                "health check failed: {reason}"
            );
            if *count >= FAILURE_THRESHOLD {
                tracing::error!(
                    deployment = %self.name,
                    replica = %replica.id,
                    "replica is unhealthy after {count} failed health checks; replacing it"
                );
                self.supervision.set_message(format!(
                    "replica {} failed {count} health checks in a row ({reason}); replacing it",
                    replica.id
                ));
                unhealthy.push(replica.clone());
            }
        }
        failures.retain(|id, _| replicas.iter().any(|r| &r.id == id));
        if !unhealthy.is_empty() {
            for replica in &unhealthy {
                failures.remove(&replica.id);
            }
            router.retire(&unhealthy);
            let router = router.clone();
            let timeout = options.graceful_shutdown_timeout;
            tokio::spawn(async move { router.wait_retired(&unhealthy, timeout).await });
        }
    }
}
