//! `json_to_ndarray`'s decoder on arbitrary request bodies: it never panics, every error says
//! what and where (`loc` starts at `"body"`), and every array it returns has the shape it
//! reports, agreeing with the typed extractor of the same dtype. And it is the old decoder
//! (a `serde_json::Value` tree, `NdArrayOracle`) made to stream: both give the same arrays and
//! the same errors, message for message, under the default element limit and a tiny one.
#![no_main]

use ferroserve::__fuzz::{assert_ndarray_agrees_with_oracle, json_body, with_max_array_elements};
use ferroserve::adapters::{DynArray, Element, NdArray};
use ferroserve::api::ValidationError;
use libfuzzer_sys::fuzz_target;
use ndarray::ArrayD;

fn explains(e: &ValidationError) {
    assert!(!e.detail.is_empty(), "an error without details");
    for d in &e.detail {
        assert!(!d.msg.is_empty(), "an empty message: {d:?}");
        assert_eq!(
            d.loc.first().and_then(|v| v.as_str()),
            Some("body"),
            "{d:?}"
        );
    }
}

fn typed<T: Element + std::fmt::Debug + PartialEq>(nd: &NdArray) -> Option<ArrayD<T>> {
    match nd.clone().into_array::<T>() {
        Ok(a) => {
            assert_eq!(a.len(), a.shape().iter().product::<usize>());
            if let Some(shape) = &nd.shape {
                assert!(a
                    .shape()
                    .iter()
                    .map(|&d| d as u64)
                    .eq(shape.iter().copied()));
            }
            Some(a)
        }
        Err(e) => {
            explains(&e);
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    assert_ndarray_agrees_with_oracle(data);
    with_max_array_elements(4, || assert_ndarray_agrees_with_oracle(data));
    let nd: NdArray = match json_body(data) {
        Ok(nd) => nd,
        Err(e) => return explains(&e),
    };
    let f32s = typed::<f32>(&nd);
    let f64s = typed::<f64>(&nd);
    let i32s = typed::<i32>(&nd);
    let i64s = typed::<i64>(&nd);
    let u8s = typed::<u8>(&nd);
    let bools = typed::<bool>(&nd);
    match nd.clone().into_dyn() {
        Ok(a) => {
            let _ = (a.sum(), a.sum_value(), a.to_f64());
            // Without a `shape`, the array's is the nesting's.
            if nd.shape.is_none() {
                assert_eq!(nd.array_shape(), Some(a.shape()));
            }
            if let Some(shape) = &nd.shape {
                assert!(a
                    .shape()
                    .iter()
                    .map(|&d| d as u64)
                    .eq(shape.iter().copied()));
            }
            // The dtype the request named (or numpy inferred) decodes the same either way.
            let same = match &a {
                DynArray::Float32(x) => f32s.as_ref() == Some(x),
                DynArray::Float64(x) => f64s.as_ref() == Some(x),
                DynArray::Int32(x) => i32s.as_ref() == Some(x),
                DynArray::Int64(x) => i64s.as_ref() == Some(x),
                DynArray::Uint8(x) => u8s.as_ref() == Some(x),
                DynArray::Bool(x) => bools.as_ref() == Some(x),
            };
            assert!(same, "into_dyn and into_array::<{}> disagree", a.dtype());
        }
        Err(e) => explains(&e),
    }
});
