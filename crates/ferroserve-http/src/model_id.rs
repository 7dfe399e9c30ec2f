//! The `serve_multiplexed_model_id` header (Ray's name; header names are case-insensitive).

use std::sync::Arc;

use ferroserve_core::multiplex::{MAX_MODEL_ID_LEN, MODEL_ID_HEADER};
use ferroserve_core::Error;
use http::{HeaderName, HeaderValue, StatusCode};

/// The header's name.
pub static HEADER: HeaderName = HeaderName::from_static(MODEL_ID_HEADER);

/// The model id a request names with `value`, its (first) `serve_multiplexed_model_id` header:
/// `None` when absent or empty; a `400` when it is not UTF-8 or longer than
/// [`MAX_MODEL_ID_LEN`] bytes.
pub fn parse(value: Option<&HeaderValue>) -> Result<Option<Arc<str>>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.len() > MAX_MODEL_ID_LEN {
        return Err(Error::bad_request(
            StatusCode::BAD_REQUEST,
            format!(
                "Invalid {MODEL_ID_HEADER} header: {} bytes long, the limit is {MAX_MODEL_ID_LEN}.",
                bytes.len()
            ),
        ));
    }
    match std::str::from_utf8(bytes) {
        Ok("") => Ok(None),
        Ok(id) => Ok(Some(Arc::from(id))),
        Err(_) => Err(Error::bad_request(
            StatusCode::BAD_REQUEST,
            format!("Invalid {MODEL_ID_HEADER} header: not UTF-8 text."),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn header_model_id(headers: &HeaderMap) -> Result<Option<Arc<str>>, Error> {
        parse(headers.get(&HEADER))
    }

    fn headers(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "Serve_Multiplexed_Model_Id",
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        h
    }

    #[test]
    fn header_is_read_case_insensitively_and_checked() {
        assert_eq!(header_model_id(&HeaderMap::new()).unwrap(), None);
        assert_eq!(header_model_id(&headers(b"")).unwrap(), None);
        assert_eq!(
            header_model_id(&headers("m\u{e9}1".as_bytes()))
                .unwrap()
                .as_deref(),
            Some("m\u{e9}1")
        );
        let err = header_model_id(&headers(b"\xff\xfe")).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            err.to_string(),
            "Invalid serve_multiplexed_model_id header: not UTF-8 text."
        );
        assert!(header_model_id(&headers(&[b'a'; 256])).is_ok());
        let err = header_model_id(&headers(&[b'a'; 257])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid serve_multiplexed_model_id header: 257 bytes long, the limit is 256."
        );
    }
}
