//! Request limits: how much a client may send before the server refuses it.
//!
//! Every limit is a field of [`Limits`] (`http_options` in the config file; the list below is
//! written once, in this module) and is enforced in one place:
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

use ferroserve_core::Error;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// hyper's own cap on the headers of an HTTP/1.1 request, and so `max_headers`' default: the
/// proxy names the cap to hyper only when it differs (hyper parses into stack arrays of this
/// size, but fills a vector per request once a cap is named).
pub const HYPER_MAX_HEADERS: usize = 100;

/// hyper's smallest read buffer: a smaller header limit cannot be enforced.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Declares [`Limits`] from one list: the struct, its defaults, its field names and the reader
/// of one field by name (for config formats that keep the limits among other options).
macro_rules! limits {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr; )+) => {
        /// The limits a server applies to every request (see the [module docs](self) for the
        /// table). Serialized as a flat map of its fields; missing fields take their defaults,
        /// unknown ones are errors.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        #[non_exhaustive]
        pub struct Limits {
            $( $(#[doc = $doc])* pub $field: $ty, )+
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $field: $default, )+ }
            }
        }

        impl Limits {
            /// The names of the fields, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$( stringify!($field), )+];

            /// Reads field `name` from `deserializer` into `self`; `Ok(false)` when there is
            /// no such field (nothing is read then).
            pub fn deserialize_field<'de, D: serde::Deserializer<'de>>(
                &mut self,
                name: &str,
                deserializer: D,
            ) -> Result<bool, D::Error> {
                match name {
                    $( stringify!($field) => self.$field = Deserialize::deserialize(deserializer)?, )+
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }
    };
}

limits! {
    /// Largest request body, in bytes. Default 16 MiB.
    max_request_body_bytes: u64 = 16 << 20;
    /// Largest HTTP/1.1 request head (request line and headers) or HTTP/2 header list, in
    /// bytes. Default 64 KiB; at least 8192.
    max_header_bytes: usize = 64 << 10;
    /// Most headers in one HTTP/1.1 request. Default 100.
    max_headers: usize = HYPER_MAX_HEADERS;
    /// Most connections open at once; more wait in the listen queue. Default 10 000.
    max_connections: usize = 10_000;
    /// Largest WebSocket message (and frame), in bytes. Default 16 MiB.
    max_websocket_message_bytes: usize = 16 << 20;
    /// Largest uploaded image (`width × height`) the image adapter decodes. Default 40 M.
    max_image_pixels: u64 = 40_000_000;
    /// Most elements in one `json_to_ndarray` array. Default 2^24.
    max_array_elements: u64 = 1 << 24;
    /// Most parts in one `multipart/form-data` body the server reads (the image adapter).
    /// Default 1000, as Starlette's `max_fields`.
    max_multipart_parts: usize = 1000;
    /// Largest single part of a `multipart/form-data` body, in bytes, whether it is kept or
    /// skipped. Default 16 MiB: with a raised `max_request_body_bytes`, parts stay bounded.
    max_multipart_part_bytes: u64 = 16 << 20;
}

impl Limits {
    /// What is wrong with these limits, as `(field, message)` pairs: a `max_header_bytes`
    /// below [`MIN_HEADER_BYTES`], or a `max_connections`, `max_headers` or
    /// `max_multipart_parts` of 0. Config validation and the server's start both use it.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.max_header_bytes < MIN_HEADER_BYTES {
            problems.push((
                "max_header_bytes",
                format!(
                    "must be at least {MIN_HEADER_BYTES}, got {}",
                    self.max_header_bytes
                ),
            ));
        }
        for (field, value) in [
            ("max_headers", self.max_headers),
            ("max_connections", self.max_connections),
            ("max_multipart_parts", self.max_multipart_parts),
        ] {
            if value == 0 {
                problems.push((field, "must be at least 1, got 0".to_owned()));
            }
        }
        problems
    }

    /// The `413` for a body of `length` bytes (`None`: a streamed body that crossed the limit).
    pub fn body_too_large(&self, length: Option<u64>) -> Error {
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
    pub fn too_many_parts(&self) -> Error {
        Error::bad_request(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Multipart body has more than {} parts (max_multipart_parts).",
                self.max_multipart_parts
            ),
        )
    }

    /// The `413` for a multipart part `name` larger than `max_multipart_part_bytes`.
    pub fn part_too_large(&self, name: &str) -> Error {
        Error::bad_request(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Multipart part '{name}' is larger than the limit of {} bytes (max_multipart_part_bytes).",
                self.max_multipart_part_bytes
            ),
        )
    }
}

/// Whether reading a body failed because it crossed the body limit.
pub fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The message for JSON that serde_json refused; names the nesting limit when that was the
/// reason.
pub fn json_error_message(e: &serde_json::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_list_drives_defaults_names_and_reading() {
        assert_eq!(Limits::FIELDS.len(), 9);
        assert_eq!(Limits::FIELDS[0], "max_request_body_bytes");
        let json = serde_json::to_value(Limits::default()).unwrap();
        assert_eq!(json.as_object().unwrap().len(), Limits::FIELDS.len());
        assert_eq!(json["max_headers"], 100);
        let mut limits = Limits::default();
        assert!(limits
            .deserialize_field("max_image_pixels", serde_json::json!(7))
            .unwrap());
        assert_eq!(limits.max_image_pixels, 7);
        assert!(!limits
            .deserialize_field("max_pixels", serde_json::json!(7))
            .unwrap());
        let err = serde_json::from_str::<Limits>(r#"{"max_body": 1}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown field `max_body`"),
            "{err}"
        );
    }

    #[test]
    fn problems_name_their_fields() {
        let limits = Limits {
            max_header_bytes: 100,
            max_connections: 0,
            ..Limits::default()
        };
        let problems = limits.problems();
        assert_eq!(
            problems,
            [
                (
                    "max_header_bytes",
                    "must be at least 8192, got 100".to_owned()
                ),
                ("max_connections", "must be at least 1, got 0".to_owned()),
            ]
        );
        assert!(Limits::default().problems().is_empty());
    }
}
