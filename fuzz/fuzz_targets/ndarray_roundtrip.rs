//! `json_to_ndarray` decodes what a numpy client sends (`{"array": a.tolist(), "shape": ...,
//! "dtype": ...}`) back into the same array: decode(encode(x)) == x for every dtype, shape
//! (including zero-length dimensions), dtype spelling, and nested or flat-plus-shape layout.
#![no_main]

use arbitrary::Arbitrary;
use ferroserve::__fuzz::json_body;
use ferroserve::adapters::{DynArray, NdArray};
use libfuzzer_sys::fuzz_target;
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

#[derive(Arbitrary, Debug)]
enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    values: Values,
    /// Each dimension is taken modulo 5; at most 4 dimensions.
    dims: Vec<u8>,
    /// Which numpy spelling of the dtype to send.
    spelling: u8,
    /// Nested lists (as `tolist()`), else a flat list plus `shape`.
    nested: bool,
    /// Send `shape` even when the nesting already says it.
    send_shape: bool,
    /// Leave `dtype` out where numpy's inference gives the same dtype back.
    infer: bool,
}

fn spell(names: &[&'static str], pick: u8) -> &'static str {
    names[usize::from(pick) % names.len()]
}

/// The array's values as nested JSON lists of its shape, as `ndarray.tolist()` prints them.
fn tolist(flat: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => flat[0].clone(),
        Some((&n, rest)) => {
            let step: usize = rest.iter().product();
            Value::Array(
                (0..n)
                    .map(|i| tolist(&flat[i * step..(i + 1) * step], rest))
                    .collect(),
            )
        }
    }
}

fn take<T: Copy + Default>(v: &[T], n: usize, ok: impl Fn(T) -> bool) -> Vec<T> {
    (0..n)
        .map(|i| v.get(i).copied().filter(|&x| ok(x)).unwrap_or_default())
        .collect()
}

fn array<T>(shape: &[usize], v: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape and length agree")
}

fuzz_target!(|input: Input| {
    let shape: Vec<usize> = input
        .dims
        .iter()
        .take(4)
        .map(|d| usize::from(d % 5))
        .collect();
    let n: usize = shape.iter().product();
    let (expected, flat, names): (DynArray, Vec<Value>, &[&str]) = match &input.values {
        Values::F32(v) => {
            let v = take(v, n, f32::is_finite);
            let flat = v.iter().map(|&x| json!(f64::from(x))).collect();
            (
                DynArray::Float32(array(&shape, v)),
                flat,
                &["float32", "f4", "single"],
            )
        }
        Values::F64(v) => {
            let v = take(v, n, f64::is_finite);
            let flat = v.iter().map(|&x| json!(x)).collect();
            (
                DynArray::Float64(array(&shape, v)),
                flat,
                &["float64", "f8", "float", "double"],
            )
        }
        Values::I32(v) => {
            let v = take(v, n, |_| true);
            let flat = v.iter().map(|&x| json!(x)).collect();
            (
                DynArray::Int32(array(&shape, v)),
                flat,
                &["int32", "i4", "intc"],
            )
        }
        Values::I64(v) => {
            let v = take(v, n, |_| true);
            let flat = v.iter().map(|&x| json!(x)).collect();
            (
                DynArray::Int64(array(&shape, v)),
                flat,
                &["int64", "i8", "int", "long"],
            )
        }
        Values::U8(v) => {
            let v = take(v, n, |_| true);
            let flat = v.iter().map(|&x| json!(x)).collect();
            (
                DynArray::Uint8(array(&shape, v)),
                flat,
                &["uint8", "u1", "ubyte"],
            )
        }
        Values::Bool(v) => {
            let v = take(v, n, |_| true);
            let flat = v.iter().map(|&x| json!(x)).collect();
            (
                DynArray::Bool(array(&shape, v)),
                flat,
                &["bool", "?", "bool_"],
            )
        }
    };
    // Nested lists stop at the first empty one, so a zero dimension needs `shape` to survive.
    let needs_shape = !input.nested || shape.contains(&0);
    let mut body = serde_json::Map::new();
    body.insert(
        "array".into(),
        if input.nested {
            tolist(&flat, &shape)
        } else {
            Value::Array(flat.clone())
        },
    );
    if needs_shape || input.send_shape {
        body.insert("shape".into(), json!(shape));
    }
    // numpy infers float64 from floats, int64 from integers, bool from booleans (non-empty).
    let floats = flat.iter().any(|v| v.is_f64());
    let inferable = n > 0
        && match &expected {
            DynArray::Float64(_) => floats,
            DynArray::Int64(_) | DynArray::Bool(_) => true,
            _ => false,
        };
    if !(input.infer && inferable) {
        body.insert("dtype".into(), json!(spell(names, input.spelling)));
    }
    let bytes = serde_json::to_vec(&Value::Object(body)).expect("JSON");
    let nd: NdArray = json_body(&bytes).expect("a numpy client's body parses");
    // The nesting's shape: nested lists stop at the first empty one; a flat list is 1-D.
    let nested_shape: Vec<usize> = if input.nested {
        let zero = shape.iter().position(|&d| d == 0);
        shape[..zero.map_or(shape.len(), |z| z + 1)].to_vec()
    } else {
        vec![n]
    };
    assert_eq!(
        nd.array_shape(),
        Some(&nested_shape[..]),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let got = nd
        .into_dyn()
        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&bytes)));
    assert_eq!(got, expected, "{}", String::from_utf8_lossy(&bytes));
});
