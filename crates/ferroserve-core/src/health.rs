//! Replica health checks (Ray's `check_health(self)`).
//!
//! The controller checks every running replica of a deployment every `health_check_period`
//! (default 10 s). A check fails when the hook returns an error, panics, or takes longer than
//! `health_check_timeout` (default 30 s). After [`FAILURE_THRESHOLD`] failures in a row the
//! replica is unhealthy: it leaves routing at once, finishes the requests it holds (up to the
//! deployment's graceful shutdown timeout), and a new replica is built in its place.
//!
//! Without a hook the check passes: an in-process replica is alive as long as the process is,
//! and a request that panics is caught without harming it. Write a hook to catch what only the
//! model knows about, such as a lost GPU context or a connection that will not come back.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use ferroserve_core::{BoxError, Deployment, HealthCheck};
//!
//! struct Model { connected: AtomicBool }
//!
//! impl HealthCheck for Model {
//!     async fn check_health(&self) -> Result<(), BoxError> {
//!         if self.connected.load(Ordering::Relaxed) {
//!             Ok(())
//!         } else {
//!             Err("lost the connection to the feature store".into())
//!         }
//!     }
//! }
//!
//! let model = Deployment::new("Model")
//!     .bind(|| Model { connected: AtomicBool::new(true) })
//!     .health_checked();
//! ```

use std::future::Future;

use crate::error::BoxError;

/// Failed checks in a row after which a replica is replaced (Ray's value).
pub const FAILURE_THRESHOLD: u32 = 3;

/// A deployment whose replicas can tell whether they are healthy. Bind it with
/// [`crate::BoundDeployment::health_checked`].
pub trait HealthCheck: Send + Sync + 'static {
    /// `Ok` when the replica can serve. Runs concurrently with requests. Cancel safety: the
    /// future is dropped when the check times out.
    fn check_health(&self) -> impl Future<Output = Result<(), BoxError>> + Send;
}
