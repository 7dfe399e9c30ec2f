//! Thin wrappers over crate-private decoders, for the fuzz targets in `fuzz/` (feature
//! `fuzzing`, off by default). Not a public API: nothing here is stable.

use ferroserve_http::api::Rejection;
use ndarray::Array3;

use crate::ImageLimits;

/// `json_to_ndarray`'s decoder as it was before it streamed (a `serde_json::Value` tree):
/// the oracle `NdArray` must agree with, result for result and error for error.
pub use crate::ndarray_oracle::NdArray as NdArrayOracle;

/// Panics unless the streaming decoder and [`NdArrayOracle`] agree on `body` exactly (under the
/// current limits; see [`with_max_array_elements`]).
pub use crate::ndarray_oracle::assert_agrees as assert_ndarray_agrees_with_oracle;

/// Runs `f` as a request whose `max_array_elements` limit is `max`.
pub fn with_max_array_elements<R>(max: u64, f: impl FnOnce() -> R) -> R {
    crate::with_max_array_elements(max, f)
}

/// An uploaded image decoded as `ImageToNdarray` decodes it.
pub fn decode_image(bytes: &[u8], limits: ImageLimits) -> Result<Array3<u8>, Rejection> {
    crate::image::decode(bytes, limits)
}

/// `(width, height)` read from a PNG or JPEG header, as the pixel limit reads it.
pub fn image_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    crate::image::header_dimensions(bytes)
}
