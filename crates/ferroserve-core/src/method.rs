//! Deployment methods: the messages a deployment answers, one trait implementation each
//! (Ray's methods called through `handle.method.remote(..)`). Called through a
//! [`DeploymentHandle`](crate::DeploymentHandle).

use std::future::Future;
use std::sync::Arc;

use futures_util::Stream;

/// A deployment method callable through a handle: the deployment answers message `M`.
///
/// ```
/// struct Model;
/// struct Sum(Vec<f64>);
///
/// impl ferroserve_core::Handles<Sum> for Model {
///     type Output = f64;
///     async fn call(&self, Sum(xs): Sum) -> f64 {
///         xs.iter().sum()
///     }
/// }
/// ```
pub trait Handles<M>: Send + Sync + 'static {
    /// What the method returns.
    type Output: Send + 'static;
    /// Runs the method on this replica. Dropping the future cancels the call.
    fn call(&self, msg: M) -> impl Future<Output = Self::Output> + Send;
}

/// A deployment method that answers message `M` with a stream (Ray's
/// `handle.options(stream=True)`).
///
/// ```
/// use std::sync::Arc;
/// use futures_util::Stream;
///
/// struct Tokenizer;
/// struct Tokens(String);
///
/// impl ferroserve_core::HandlesStream<Tokens> for Tokenizer {
///     type Item = String;
///     fn stream(self: Arc<Self>, Tokens(text): Tokens) -> impl Stream<Item = String> + Send + 'static {
///         futures_util::stream::iter(text.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
///     }
/// }
/// ```
pub trait HandlesStream<M>: Send + Sync + 'static {
    /// One item of the stream.
    type Item: Send + 'static;
    /// Starts the stream on this replica. It holds the replica's slot until it ends or is
    /// dropped; dropping it cancels the call.
    fn stream(self: Arc<Self>, msg: M) -> impl Stream<Item = Self::Item> + Send + 'static;
}
