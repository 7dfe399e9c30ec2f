//! `image_to_ndarray`'s decoder on arbitrary uploads: it never panics or over-allocates, the
//! pixel limit is enforced from the header before decoding, and a decoded image's shape is
//! `(height, width, channels)` as its header says.
#![no_main]

use ferroserve::__fuzz::{decode_image, image_dimensions};
use ferroserve::adapters::ImageLimits;
use ferroserve::api::Rejection;
use libfuzzer_sys::fuzz_target;

const LIMITS: ImageLimits = ImageLimits {
    max_pixels: 1 << 16,
};

fuzz_target!(|data: &[u8]| {
    let header = image_dimensions(data);
    match decode_image(data, LIMITS) {
        Ok(a) => {
            let (h, w, c) = a.dim();
            assert!((1..=4).contains(&c), "{c} channels");
            assert_eq!(
                header,
                Some((w as u32, h as u32)),
                "decoded size differs from the header"
            );
            assert!((w as u64) * (h as u64) <= LIMITS.max_pixels);
        }
        Err(Rejection::Detail(d)) => {
            assert_eq!(d.status, 413, "{d:?}");
            let (w, h) = header.expect("a 413 comes from the header's size");
            assert!(u64::from(w) * u64::from(h) > LIMITS.max_pixels);
            assert!(d.detail.contains("pixels"), "{d:?}");
        }
        Err(Rejection::Invalid(e)) => {
            assert_eq!(e.detail.len(), 1);
            assert_eq!(e.detail[0].loc, ["body", "img"]);
            assert!(!e.detail[0].msg.is_empty());
        }
    }
});
