//! Calls that can cross a process boundary: a method name, the caller's [`WireContext`], and
//! the message as bytes.
//!
//! A handle call to a replica in this process never touches this module: the message is handed
//! over as it is. A replica elsewhere takes only the methods its deployment registered with
//! `BoundDeployment::remote_method::<M>()`, whose message `M` and output are `Serialize +
//! DeserializeOwned`: the caller encodes the message, the replica's side decodes it, runs the
//! method through the same path as a local call (slot, context, metrics, panics caught), and
//! encodes the output back. Methods are named by their message type's Rust name, the same on
//! both sides of a wire because both run the same binary.
//!
//! The encoding is JSON (serde_json) for now: self-describing, so any serde type round-trips,
//! and already a dependency. The transport that ships these bytes between processes chooses and
//! measures the format it puts on the wire; it is one pair of functions here ([`encode`],
//! [`decode`]).

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::WireContext;
use crate::error::Error;
use crate::method::Handles;

/// One call as it crosses a wire.
#[derive(Debug, Clone)]
pub struct WireCall {
    /// The method: its message type's name (see [`method_name`]).
    pub method: Arc<str>,
    /// What the caller's context sends along.
    pub ctx: WireContext,
    /// The encoded message.
    pub payload: Bytes,
}

/// The name a method goes by on the wire: its message type's Rust name.
pub fn method_name<M: 'static>() -> &'static str {
    std::any::type_name::<M>()
}

/// Encodes a message or an output for the wire.
pub fn encode<V: Serialize + ?Sized>(value: &V) -> Result<Bytes, String> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// Decodes a message or an output from the wire.
pub fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Runs a decoded call on an instance and encodes its output.
type Run<T> = fn(Arc<T>, Bytes) -> BoxFuture<'static, Result<Bytes, String>>;
/// Encodes a message handed over as `&dyn Any`.
type EncodeMsg = fn(&(dyn Any + Send)) -> Result<Bytes, String>;
/// Decodes an output into a box the caller downcasts.
type DecodeOutput = fn(&[u8]) -> Result<Box<dyn Any + Send>, String>;

struct Entry<T> {
    name: &'static str,
    run: Run<T>,
    encode: EncodeMsg,
    decode: DecodeOutput,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry { ..*self }
    }
}

/// The methods of a deployment whose instances are `T` that can be called over a wire. Shared
/// by the deployment's handles (the caller's side) and its replicas (the callee's side).
pub struct Methods<T> {
    entries: ArcSwap<Vec<Entry<T>>>,
}

impl<T> Default for Methods<T> {
    fn default() -> Self {
        Methods {
            entries: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

impl<T> std::fmt::Debug for Methods<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.load().iter().map(|e| e.name))
            .finish()
    }
}

impl<T: Send + Sync + 'static> Methods<T> {
    /// Registers `M` (idempotent).
    pub fn register<M>(&self)
    where
        T: Handles<M>,
        M: Serialize + DeserializeOwned + Send + 'static,
        T::Output: Serialize + DeserializeOwned,
    {
        let name = method_name::<M>();
        self.entries.rcu(|entries| {
            let mut entries = (**entries).clone();
            if !entries.iter().any(|e| e.name == name) {
                entries.push(Entry {
                    name,
                    run: run_method::<T, M>,
                    encode: encode_msg::<M>,
                    decode: decode_output::<T::Output>,
                });
            }
            entries
        });
    }

    /// Adds every method of `other` not registered here (a new version of a deployment taking
    /// over its predecessor's replica set brings its own registrations).
    pub fn extend(&self, other: &Methods<T>) {
        let theirs = other.entries.load();
        self.entries.rcu(|entries| {
            let mut entries = (**entries).clone();
            for entry in theirs.iter() {
                if !entries.iter().any(|e| e.name == entry.name) {
                    entries.push(entry.clone());
                }
            }
            entries
        });
    }

    fn find(&self, name: &str) -> Option<Entry<T>> {
        self.entries.load().iter().find(|e| e.name == name).cloned()
    }

    /// The caller's side: `msg` encoded as the wire call of method `M`, or `None` when `M` is
    /// not registered.
    pub fn encode_call<M: Send + 'static>(
        &self,
        msg: &M,
        ctx: WireContext,
    ) -> Option<Result<WireCall, String>> {
        let name = method_name::<M>();
        let entry = self.find(name)?;
        Some((entry.encode)(msg).map(|payload| WireCall {
            method: Arc::from(name),
            ctx,
            payload,
        }))
    }

    /// The caller's side: the output of method `M` decoded from `bytes`.
    pub fn decode_output<M: 'static, O: 'static>(&self, bytes: &[u8]) -> Result<O, String> {
        let entry = self
            .find(method_name::<M>())
            .ok_or_else(|| format!("{} is not a remote method", method_name::<M>()))?;
        let output = (entry.decode)(bytes)?;
        output
            .downcast::<O>()
            .map(|o| *o)
            .map_err(|_| "the output type does not match the method's".to_owned())
    }

    /// The callee's side: runs `payload` as method `method` on `instance`; `None` when the
    /// method is not registered.
    pub fn run(
        &self,
        method: &str,
        instance: Arc<T>,
        payload: Bytes,
    ) -> Option<BoxFuture<'static, Result<Bytes, String>>> {
        self.find(method)
            .map(|entry| (entry.run)(instance, payload))
    }

    /// The registered methods' names.
    pub fn names(&self) -> Vec<&'static str> {
        self.entries.load().iter().map(|e| e.name).collect()
    }
}

fn run_method<T, M>(instance: Arc<T>, payload: Bytes) -> BoxFuture<'static, Result<Bytes, String>>
where
    T: Handles<M>,
    M: DeserializeOwned + Send + 'static,
    T::Output: Serialize,
{
    async move {
        let msg: M = decode(&payload).map_err(|e| format!("cannot decode the message: {e}"))?;
        let output = instance.call(msg).await;
        encode(&output).map_err(|e| format!("cannot encode the output: {e}"))
    }
    .boxed()
}

fn encode_msg<M: Serialize + 'static>(msg: &(dyn Any + Send)) -> Result<Bytes, String> {
    let msg = msg
        .downcast_ref::<M>()
        .ok_or_else(|| format!("not a {}", method_name::<M>()))?;
    encode(msg).map_err(|e| format!("cannot encode the message: {e}"))
}

fn decode_output<O: DeserializeOwned + Send + 'static>(
    bytes: &[u8],
) -> Result<Box<dyn Any + Send>, String> {
    decode::<O>(bytes)
        .map(|o| Box::new(o) as Box<dyn Any + Send>)
        .map_err(|e| format!("cannot decode the output: {e}"))
}

/// The error a caller gets for a method its callee's deployment did not register.
pub(crate) fn unregistered<M: 'static>(deployment: &str) -> Error {
    Error::Config(format!(
        "deployment '{deployment}' has a replica in another process, and {} is not one of its \
         remote methods: register it with `.remote_method::<{}>()` on the bound deployment",
        method_name::<M>(),
        method_name::<M>()
    ))
}
