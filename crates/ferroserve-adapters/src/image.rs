//! `image_to_ndarray`: a PNG or JPEG from a multipart form field into `Array3<u8>`.

use std::io::Cursor;

use ndarray::Array3;

use ferroserve_http::api::{DetailError, Rejection, ValidationError};
use http::StatusCode;

/// Limits for decoding uploaded images. The server's `max_image_pixels` (see
/// [`ferroserve_http::limits`]) applies by default; insert one as a request extension (e.g. with axum's
/// `Extension` layer) to change it for some routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest `width × height` accepted, checked from the image header before any pixel is
    /// allocated (decompression bombs get `413`). Default 40 megapixels.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_pixels: 40_000_000,
        }
    }
}

fn not_an_image(msg: String) -> Rejection {
    ValidationError::one(
        "value_error",
        vec!["body".into(), "img".into()],
        msg,
        serde_json::Value::Null,
    )
    .into()
}

/// Width and height from a PNG's `IHDR` or a JPEG's start-of-frame marker, read without a
/// decoder (so a bomb is refused before any decoder state or pixel buffer exists).
pub(crate) fn header_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let be16 = |b: &[u8]| u32::from(u16::from_be_bytes([b[0], b[1]]));
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return (bytes.len() >= 24 && &bytes[12..16] == b"IHDR")
            .then(|| (be32(&bytes[16..20]), be32(&bytes[20..24])));
    }
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xff {
            return None;
        }
        let marker = bytes[i + 1];
        if marker == 0xff {
            i += 1;
            continue;
        }
        if matches!(marker, 0xd0..=0xd9 | 0x01) {
            i += 2;
            continue;
        }
        let len = be16(&bytes[i + 2..i + 4]) as usize;
        let is_sof = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc);
        if is_sof {
            let seg = bytes.get(i + 4..i + 9)?;
            return Some((be16(&seg[3..5]), be16(&seg[1..3])));
        }
        i += 2 + len;
    }
    None
}

/// Decodes `bytes` (PNG or JPEG) into `(height, width, channels)`: 1 channel for grayscale, 2
/// for grayscale with alpha, 3 for RGB, 4 for RGBA (16-bit images are reduced to 8 bits).
pub(crate) fn decode(bytes: &[u8], limits: ImageLimits) -> Result<Array3<u8>, Rejection> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| not_an_image(format!("could not read the upload: {e}")))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(not_an_image(format!(
                "unsupported image format {other:?}; expected PNG or JPEG"
            )))
        }
        None => {
            return Err(not_an_image(
                "the upload is not a PNG or JPEG image".to_owned(),
            ))
        }
    }
    let (width, height) = header_dimensions(bytes)
        .ok_or_else(|| not_an_image("invalid image header: no dimensions found".to_owned()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(DetailError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            detail: format!(
                "image is {width}x{height} = {pixels} pixels, above the limit of {}",
                limits.max_pixels
            ),
        }
        .into());
    }
    let mut reader = reader;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(width);
    decoder_limits.max_image_height = Some(height);
    decoder_limits.max_alloc = Some(pixels.saturating_mul(8).max(1 << 20));
    reader.limits(decoder_limits);
    let img = reader
        .decode()
        .map_err(|e| not_an_image(format!("could not decode the image: {e}")))?;
    let (channels, raw) = match img.color().channel_count() {
        1 => (1, img.into_luma8().into_raw()),
        2 => (2, img.into_luma_alpha8().into_raw()),
        3 => (3, img.into_rgb8().into_raw()),
        _ => (4, img.into_rgba8().into_raw()),
    };
    Array3::from_shape_vec((height as usize, width as usize, channels), raw)
        .map_err(|e| not_an_image(format!("could not build the array: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn decodes_height_width_channels() {
        let a = decode(&png(4, 3), ImageLimits::default()).unwrap();
        assert_eq!(a.shape(), &[3, 4, 3]);
        assert_eq!(a[[2, 1, 0]], 1);
        assert_eq!(a[[2, 1, 1]], 2);
    }

    #[test]
    fn reads_dimensions_from_headers() {
        assert_eq!(header_dimensions(&png(4, 3)), Some((4, 3)));
        let img = image::RgbImage::new(9, 5);
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(header_dimensions(&jpeg), Some((9, 5)));
        assert_eq!(header_dimensions(b"nope"), None);
    }

    #[test]
    fn refuses_before_allocating_past_the_limit() {
        let r = decode(&png(100, 100), ImageLimits { max_pixels: 9_999 });
        match r {
            Err(Rejection::Detail(d)) => assert_eq!(d.status, StatusCode::PAYLOAD_TOO_LARGE),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(b"GIF89a....", ImageLimits::default()),
            Err(Rejection::Invalid(_))
        ));
        assert!(matches!(
            decode(b"not an image", ImageLimits::default()),
            Err(Rejection::Invalid(_))
        ));
    }
}
