//! Request limits: how much a client may send before the server refuses it.
//!
//! Every limit is part of [`crate::HttpOptions`] (`http_options` in the config file) and is
//! enforced in one place:
//!
//! | option | default | what the client sees beyond it |
//! |---|---|---|
//! | `max_request_body_bytes` | 16 MiB | `413 Payload Too Large`: at once when `Content-Length` says so (the body is not read), or as soon as a chunked body's running total crosses the limit |
//! | `max_header_bytes` | 64 KiB | `431 Request Header Fields Too Large` (request line and headers together), then the connection closes |
//! | `max_headers` | 100 | `431 Request Header Fields Too Large`, then the connection closes |
//! | `max_connections` | 10 000 | nothing: further connections wait in the kernel's listen queue until one closes |
//! | `max_websocket_message_bytes` | 16 MiB | the WebSocket closes with code `1009` (message too big) |
//! | `max_image_pixels` | 40 000 000 | `413` naming the image's width × height (checked from its header, before decoding) |
//! | `max_array_elements` | 16 777 216 | `422` naming the `json_to_ndarray` shape |
//! | `max_multipart_parts` | 1000 | `413` (the image adapter's multipart body) |
//! | `max_multipart_part_bytes` | 16 MiB | `413` naming the part, kept or skipped |
//!
//! JSON nesting is limited by serde_json to 128 levels: deeper bodies get a `400` (raw
//! [`crate::Request::json`]) or `422` ([`crate::api::Json`]) naming the limit, never a stack
//! overflow.
//!
//! Why 16 MiB of body: it holds any inference payload a JSON API usually carries (a 2048×2048
//! RGBA PNG, thousands of feature rows) while a few hundred bodies buffered at once still fit
//! in memory. nginx's default is 1 MiB and axum's 2 MiB (too small for images); uvicorn has none
//! (one client can exhaust memory). Raise it for bulk uploads.

use http::StatusCode;

use crate::error::Error;

/// The limits a server applies to every request (see the [module docs](self) for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest request body, in bytes. Default 16 MiB.
    pub max_request_body_bytes: u64,
    /// Largest HTTP/1.1 request head (request line and headers) or HTTP/2 header list, in
    /// bytes. Default 64 KiB; at least 8192.
    pub max_header_bytes: usize,
    /// Most headers in one HTTP/1.1 request. Default 100.
    pub max_headers: usize,
    /// Most connections open at once; more wait in the listen queue. Default 10 000.
    pub max_connections: usize,
    /// Largest WebSocket message (and frame), in bytes. Default 16 MiB.
    pub max_websocket_message_bytes: usize,
    /// Largest uploaded image (`width × height`) the image adapter decodes. Default 40 M.
    pub max_image_pixels: u64,
    /// Most elements in one `json_to_ndarray` array. Default 2^24.
    pub max_array_elements: u64,
    /// Most parts in one `multipart/form-data` body the server reads (the image adapter).
    /// Default 1000, as Starlette's `max_fields`.
    pub max_multipart_parts: usize,
    /// Largest single part of a `multipart/form-data` body, in bytes, whether it is kept or
    /// skipped. Default 16 MiB: with a raised `max_request_body_bytes`, parts stay bounded.
    pub max_multipart_part_bytes: u64,
}

/// hyper's own cap on the headers of an HTTP/1.1 request, and so `max_headers`' default: the
/// proxy names the cap to hyper only when it differs (hyper parses into stack arrays of this
/// size, but fills a vector per request once a cap is named).
pub(crate) const HYPER_MAX_HEADERS: usize = 100;

/// hyper's smallest read buffer: a smaller header limit cannot be enforced.
pub(crate) const MIN_HEADER_BYTES: usize = 8192;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
            max_headers: HYPER_MAX_HEADERS,
            max_connections: 10_000,
            max_websocket_message_bytes: 16 << 20,
            max_image_pixels: 40_000_000,
            max_array_elements: 1 << 24,
            max_multipart_parts: 1000,
            max_multipart_part_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// The `413` for a body of `length` bytes (`None`: a streamed body that crossed the limit).
    pub(crate) fn body_too_large(&self, length: Option<u64>) -> Error {
        let max = self.max_request_body_bytes;
        let message = match length {
            Some(n) => format!(
                "Request body is {n} bytes, larger than the limit of {max} bytes (max_request_body_bytes)."
            ),
            None => format!(
                "Request body is larger than the limit of {max} bytes (max_request_body_bytes)."
            ),
        };
        Error::bad_request(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// The `413` for a multipart body with more than `max_multipart_parts` parts.
    pub(crate) fn too_many_parts(&self) -> crate::api::DetailError {
        crate::api::DetailError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: format!(
                "Multipart body has more than {} parts (max_multipart_parts).",
                self.max_multipart_parts
            ),
        }
    }

    /// The `413` for a multipart part `name` larger than `max_multipart_part_bytes`.
    pub(crate) fn part_too_large(&self, name: &str) -> crate::api::DetailError {
        crate::api::DetailError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: format!(
                "Multipart part '{name}' is larger than the limit of {} bytes (max_multipart_part_bytes).",
                self.max_multipart_part_bytes
            ),
        }
    }

    /// The limits of the request being served on this task (the defaults outside a request).
    pub(crate) fn current() -> Limits {
        crate::context::current_limits()
    }
}

/// Whether reading a body failed because it crossed the body limit.
pub(crate) fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The `400` for JSON that serde_json refused; names the nesting limit when that was the reason.
pub(crate) fn json_error_message(e: &serde_json::Error) -> String {
    if e.to_string().starts_with("recursion limit exceeded") {
        format!(
            "JSON is nested more than 128 levels deep (at line {} column {}).",
            e.line(),
            e.column()
        )
    } else {
        e.to_string()
    }
}
