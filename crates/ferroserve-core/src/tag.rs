//! Who serves a call: a replica's tag, carried by the context of every call it runs.
//!
//! A [`ReplicaTag`] names the replica (application, deployment, `Deployment#n`) for the lines a
//! handler logs, and holds the multiplexed model ids the replica publishes ([`ModelIds`]) for
//! the balancer. One tag per replica, shared (one reference count) by every call on it.

use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::metrics::DeploymentMetrics;
use crate::sync::lock;

/// A replica's identity and what it publishes. See the [module docs](self).
pub struct ReplicaTag {
    replica_id: Arc<str>,
    metrics: Arc<DeploymentMetrics>,
    models: ModelIds,
}

impl fmt::Debug for ReplicaTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaTag")
            .field("replica_id", &self.replica_id)
            .field("models", &self.models)
            .finish_non_exhaustive()
    }
}

impl ReplicaTag {
    /// The tag of replica `replica_id` of the deployment whose series are `metrics`.
    pub fn new(replica_id: impl Into<Arc<str>>, metrics: Arc<DeploymentMetrics>) -> Self {
        ReplicaTag {
            replica_id: replica_id.into(),
            metrics,
            models: ModelIds::default(),
        }
    }

    /// `Deployment#n`.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The deployment's name.
    pub fn deployment(&self) -> &Arc<str> {
        self.metrics.deployment()
    }

    /// The application's name (`""` until its routes are published).
    pub fn application(&self) -> Arc<String> {
        self.metrics.app()
    }

    /// The deployment's replica-side metric series.
    pub fn metrics(&self) -> &Arc<DeploymentMetrics> {
        &self.metrics
    }

    /// The multiplexed model ids this replica holds.
    pub fn models(&self) -> &ModelIds {
        &self.models
    }
}

/// The model ids one replica holds, as the balancer reads them: published by the replica's
/// `Multiplexed` caches (usually one) whenever they start a load, finish one, or evict.
#[derive(Default)]
pub struct ModelIds {
    by_owner: Mutex<Vec<(u64, Vec<Arc<str>>)>>,
    published: ArcSwap<Vec<Arc<str>>>,
}

impl fmt::Debug for ModelIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.published.load().iter())
            .finish()
    }
}

impl ModelIds {
    /// Whether this replica holds (or is loading) model `id`. Lock-free.
    pub fn holds(&self, id: &str) -> bool {
        self.published.load().iter().any(|m| **m == *id)
    }

    /// The ids held, sorted and without repeats, for status reports.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .published
            .load()
            .iter()
            .map(|m| m.to_string())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Replaces what cache `owner` holds.
    pub fn set(&self, owner: u64, ids: Vec<Arc<str>>) {
        let mut by_owner = lock(&self.by_owner);
        match by_owner.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, held)) => *held = ids,
            None => by_owner.push((owner, ids)),
        }
        by_owner.retain(|(_, held)| !held.is_empty());
        let all = by_owner
            .iter()
            .flat_map(|(_, held)| held.iter().cloned())
            .collect();
        self.published.store(Arc::new(all));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_ids_merge_owners() {
        let ids = ModelIds::default();
        ids.set(1, vec!["b".into(), "a".into()]);
        ids.set(2, vec!["c".into()]);
        assert!(ids.holds("a") && ids.holds("c") && !ids.holds("d"));
        assert_eq!(ids.list(), ["a", "b", "c"]);
        ids.set(1, Vec::new());
        assert_eq!(ids.list(), ["c"]);
    }
}
