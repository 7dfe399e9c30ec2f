//! # ferroserve-core
//!
//! The runtime of ferroserve, without HTTP: an application is a graph of **deployments**
//! (replicated types that call each other through **handles**), each balanced over its replicas.
//!
//! What it owns, bottom layer first (each module imports only from the ones above it in this
//! list):
//!
//! | module | Ray Serve concept |
//! |---|---|
//! | [`sync`], [`panic`](mod@panic), [`error`] | locks that survive panics; panics in user code; failures and their HTTP status (one mapping) |
//! | [`metrics`], [`tag`] | replica-side metric series; who serves a call (logs), the model ids a replica publishes |
//! | [`context`] | request id, deadline, cancellation, `asyncio.shield`; the part that crosses a wire |
//! | [`health`], [`autoscaling`] | `check_health(self)`, `autoscaling_config` (the policy) |
//! | [`balance`] | routing over replicas: power of two choices, `max_ongoing_requests`, `max_queued_requests` |
//! | [`method`], [`wire`], [`replica`], [`handle`] | a deployment's methods; calls that cross a process boundary; the replica boundary (in this process or another); `DeploymentHandle`, `.remote()`, streaming handles |
//! | [`batch`], [`multiplex`] | `@serve.batch`, `@serve.multiplexed` |
//! | [`deployment`] | `@serve.deployment`, `.bind()`, `user_config`, supervision (health, autoscaling, replacement) |
//!
//! It may import: tokio, serde, tracing and small utility crates, plus `axum-core`'s
//! `IntoResponse` so that errors carry their HTTP answer. No HTTP server, no router, no
//! command line, no array or image crates: those live in `ferroserve-http` and above.
//!
//! ```
//! use ferroserve_core::{Deployment, Handles};
//!
//! struct Adder;
//! struct Sum(Vec<f64>);
//!
//! impl Handles<Sum> for Adder {
//!     type Output = f64;
//!     async fn call(&self, Sum(xs): Sum) -> f64 {
//!         xs.iter().sum()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ferroserve_core::Error> {
//! let adder = Deployment::new("Adder").num_replicas(2).bind(|| Adder);
//! adder.node_ref().start().await?;
//! assert_eq!(adder.handle().remote(Sum(vec![1.0, 2.5])).await?, 3.5);
//! adder.node_ref().stop();
//! # Ok(())
//! # }
//! ```

pub mod autoscaling;
pub mod balance;
pub mod batch;
pub mod context;
pub mod deployment;
pub mod error;
pub mod handle;
pub mod health;
pub mod method;
pub mod metrics;
pub mod multiplex;
pub mod panic;
pub mod replica;
pub mod sync;
pub mod tag;
pub mod wire;

pub use batch::{Batch, BatchError, BatchOptions, StreamingBatch};
pub use context::{current, on_cancel, shield, OnCancel, RequestContext, RequestId};
pub use deployment::{BoundDeployment, Deployment, DeploymentOptions, Reconfigure};
pub use error::{BoxError, Error, Fault};
pub use handle::{DeploymentHandle, Handles, HandlesStream};
pub use health::HealthCheck;
pub use multiplex::Multiplexed;
