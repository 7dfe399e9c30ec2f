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
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::node::Node;
use crate::autoscaling::{Policy, SAMPLE_PERIOD};
use crate::health::FAILURE_THRESHOLD;
use crate::metrics;
use crate::replica::{ReplicaMember, ReplicaSet};
use crate::sync::lock;

/// The longest pause between attempts to build a missing replica.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

impl<T: Send + Sync + 'static> Node<T> {
    /// Starts this deployment's supervisor unless one runs.
    pub(super) fn spawn_supervisor(self: &Arc<Self>) {
        let token = CancellationToken::new();
        {
            let mut task = lock(&self.supervision.task);
            if task.is_some() {
                return;
            }
            *task = Some(token.clone());
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            token.run_until_cancelled(run(weak)).await;
        });
    }
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
        let (set, wake) = {
            let Some(node) = node.upgrade() else { return };
            let set = node.replicas();
            let wake = node.turn(&set, &mut turn).await;
            (set, wake)
        };
        let scale_from_zero = turn.policy.is_some() && set.balancer().is_empty();
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = set.balancer().demand(), if scale_from_zero => {}
        }
    }
}

impl<T: Send + Sync + 'static> Node<T> {
    /// One turn of the supervisor; returns when the next one is due.
    async fn turn(&self, set: &Arc<ReplicaSet<T>>, turn: &mut Turn) -> Instant {
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
            let app = set.metrics().app();
            if !turn.gauge_set && !app.is_empty() {
                let target = self.supervision.target();
                metrics::autoscaling_decision(&app, &self.name, target, target);
                turn.gauge_set = true;
            }
            let load = set.balancer().num_ongoing() + set.balancer().num_queued();
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
            self.check_health(set, &mut turn.failures).await;
            turn.next_check = Instant::now() + options.health_check_period;
        }

        // 3. Reconcile.
        let due = turn.retry_at.is_none_or(|t| Instant::now() >= t);
        if set.balancer().len() != self.supervision.target() && due {
            // A config update holds the lock while it scales; it reconciles itself.
            if let Some(_ops) = self.supervision.try_lock_ops() {
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
        } else if set.balancer().len() != self.supervision.target() {
            // The lock was busy: look again soon.
            wake = wake.min(Instant::now() + SAMPLE_PERIOD);
        }
        wake
    }

    /// Checks every routed replica in this process at once; replaces those that failed too
    /// often.
    async fn check_health(&self, set: &Arc<ReplicaSet<T>>, failures: &mut HashMap<String, u32>) {
        let Some(hook) = self.health.get() else {
            return;
        };
        let timeout = self.current().health_check_timeout;
        let members = set.balancer().members();
        // Replicas elsewhere are checked by their own process.
        let local: Vec<_> = members
            .iter()
            .filter_map(|m| Some((m, m.endpoint().as_local()?)))
            .collect();
        let checks = local.iter().map(|(_, replica)| {
            let check = crate::panic::catch(hook(replica.instance().clone()));
            async move {
                match tokio::time::timeout(timeout, check).await {
                    Err(_) => Err(format!("health check timed out after {timeout:?}")),
                    Ok(Err(panic)) => Err(format!("health check {panic}")),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Ok(Ok(()))) => Ok(()),
                }
            }
        });
        let results = futures_util::future::join_all(checks).await;
        let mut unhealthy: Vec<Arc<ReplicaMember<T>>> = Vec::new();
        for ((member, _), result) in local.iter().zip(results) {
            let id = member.endpoint().id();
            let Err(reason) = result else {
                failures.remove(id);
                continue;
            };
            metrics::health_check_failed(&set.metrics().app(), &self.name);
            let count = failures.entry(id.to_owned()).or_insert(0);
            *count += 1;
            tracing::warn!(
                deployment = %self.name,
                replica = %id,
                failures = *count,
                "health check failed: {reason}"
            );
            if *count >= FAILURE_THRESHOLD {
                tracing::error!(
                    deployment = %self.name,
                    replica = %id,
                    "replica is unhealthy after {count} failed health checks; replacing it"
                );
                self.supervision.set_message(format!(
                    "replica {id} failed {count} health checks in a row ({reason}); replacing it"
                ));
                unhealthy.push((*member).clone());
            }
        }
        failures.retain(|id, _| members.iter().any(|m| m.endpoint().id() == id));
        for member in &unhealthy {
            failures.remove(member.endpoint().id());
        }
        if !unhealthy.is_empty() {
            self.retire_in_background(set, unhealthy);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;
    use crate::autoscaling::AutoscalingOptions;
    use crate::deployment::{Deployment, ReplicaState};
    use crate::{BoxError, Handles, HealthCheck};

    /// Replica `n` of its deployment; unhealthy when `n` is `sick`.
    struct Numbered {
        n: usize,
        sick: usize,
    }

    impl HealthCheck for Numbered {
        async fn check_health(&self) -> Result<(), BoxError> {
            if self.n == self.sick {
                Err("lost its GPU".into())
            } else {
                Ok(())
            }
        }
    }

    /// Holds a slot until told to finish.
    struct Wait(tokio::sync::watch::Receiver<bool>);

    impl Handles<Wait> for Numbered {
        type Output = ();
        async fn call(&self, Wait(mut go): Wait) {
            let _ = go.wait_for(|go| *go).await;
        }
    }

    fn running(node: &super::super::NodeRef) -> Vec<String> {
        let mut ids: Vec<String> = node
            .replica_infos()
            .into_iter()
            .filter(|r| r.state == ReplicaState::Running)
            .map(|r| r.replica_id)
            .collect();
        ids.sort();
        ids
    }

    /// Lets the supervisor run, in virtual time, until `done` holds (at most a minute).
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..600 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not within a minute of virtual time: {what}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_failing_three_checks_in_a_row_is_replaced() {
        let built = Arc::new(AtomicUsize::new(0));
        let model = Deployment::new("Sick")
            .num_replicas(2)
            .health_check_period(Duration::from_secs(1))
            .health_check_timeout(Duration::from_secs(1))
            .bind(move || Numbered {
                n: built.fetch_add(1, SeqCst),
                sick: 0,
            })
            .health_checked();
        let node = model.node_ref();
        node.start().await.unwrap();
        assert_eq!(running(&node), ["Sick#0", "Sick#1"]);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(
            running(&node),
            ["Sick#0", "Sick#1"],
            "two failures are not enough"
        );
        until("Sick#0 replaced", || running(&node) == ["Sick#1", "Sick#2"]).await;
        let failures =
            metrics::with_global(|g| g.health_failures[&(String::new(), "Sick".to_owned())]);
        assert_eq!(failures, 3, "counted in serve_health_check_failures_total");
        assert!(
            node.message().is_empty(),
            "back to its target: nothing wrong now"
        );
        node.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn the_autoscaler_follows_the_load_up_and_back_down() {
        let model = Deployment::new("M")
            .max_ongoing_requests(1)
            .autoscaling(AutoscalingOptions {
                min_replicas: 1,
                max_replicas: 3,
                target_ongoing_requests: 1.0,
                upscale_delay: Duration::from_secs(1),
                downscale_delay: Duration::from_secs(2),
                look_back_period: Duration::from_millis(500),
                ..AutoscalingOptions::default()
            })
            .bind(|| Numbered { n: 0, sick: 1 });
        let node = model.node_ref();
        node.start().await.unwrap();
        let handle = model.handle();
        let (release, go) = tokio::sync::watch::channel(false);
        let calls: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn({
                    let handle = handle.clone();
                    let go = go.clone();
                    async move { handle.remote(Wait(go)).await }
                })
            })
            .collect();
        until("three replicas for three calls", || {
            node.target() == 3 && running(&node).len() == 3 && handle.num_queued() == 0
        })
        .await;
        release.send(true).unwrap();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        until("back to one replica when idle", || {
            node.target() == 1 && running(&node).len() == 1
        })
        .await;
        node.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn from_zero_a_queued_call_starts_a_replica_at_once() {
        let model = Deployment::new("M")
            .autoscaling(AutoscalingOptions {
                min_replicas: 0,
                initial_replicas: Some(0),
                max_replicas: 2,
                upscale_delay: Duration::from_secs(3600),
                ..AutoscalingOptions::default()
            })
            .bind(|| Numbered { n: 0, sick: 1 });
        let node = model.node_ref();
        node.start().await.unwrap();
        assert!(running(&node).is_empty());
        let (_release, go) = tokio::sync::watch::channel(true);
        let started = tokio::time::Instant::now();
        model.handle().remote(Wait(go)).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no upscale delay from zero: {:?}",
            started.elapsed()
        );
        assert_eq!(running(&node), ["M#0"]);
        node.stop();
    }
}
