//! What the proxy attaches to each request's context for the HTTP layer: the server's limits
//! and the application's root path.
//!
//! One [`HttpScope`] per route, built when routes are published and shared by every request to
//! that route (one reference count per request). It rides in the request context's local part
//! ([`ferroserve_core::RequestContext::local`]), so handle calls made under the request see it
//! too; it never crosses a process boundary.

use std::sync::Arc;

use ferroserve_core::RequestContext;

use crate::limits::Limits;
use crate::route::root_of;

/// The HTTP state of one route: see the [module docs](self).
#[derive(Debug)]
pub struct HttpScope {
    limits: Limits,
    /// The server's `root_path` joined with the route's prefix.
    mount: Arc<str>,
}

impl HttpScope {
    /// The scope of an application mounted at `mount` on a server with `limits`.
    pub fn new(limits: Limits, mount: impl Into<Arc<str>>) -> Self {
        HttpScope {
            limits,
            mount: mount.into(),
        }
    }

    /// The server's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where the application is mounted (`/` at the root).
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// The application's root path (`""` at `/`; FastAPI's `root_path`).
    pub fn root_path(&self) -> &str {
        root_of(&self.mount)
    }
}

/// The HTTP scope of `ctx`, if it came through the proxy.
pub fn of(ctx: &RequestContext) -> Option<&HttpScope> {
    ctx.local::<HttpScope>()
}

/// The limits of the server serving the current request (the defaults outside one).
pub fn limits() -> Limits {
    ferroserve_core::current()
        .and_then(|ctx| of(&ctx).map(|s| s.limits))
        .unwrap_or_default()
}

/// The root path of the application serving the current request (`""` outside one).
pub fn root_path() -> String {
    ferroserve_core::current()
        .and_then(|ctx| of(&ctx).map(|s| s.root_path().to_owned()))
        .unwrap_or_default()
}
