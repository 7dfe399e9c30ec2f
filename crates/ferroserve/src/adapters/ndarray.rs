//! `json_to_ndarray` and `json_to_multi_ndarray`: JSON nested lists into `ndarray` arrays.

use std::collections::BTreeMap;

use ndarray::{ArrayD, IxDyn};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::ValidationError;

/// The body `json_to_ndarray` accepts (Ray's `NdArray` schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NdArray {
    /// The values: a number, a boolean, or nested lists of them (every list at one depth the
    /// same length).
    pub array: Value,
    /// The shape to reshape into; its product must equal the number of values.
    #[serde(default)]
    pub shape: Option<Vec<u64>>,
    /// A numpy dtype name: `float32`, `float64`, `int32`, `int64`, `uint8`, `bool` (also
    /// `float`, `int`, `f4`, `f8`, `i4`, `i8`, `u1`). Inferred when absent, as numpy does: any
    /// float makes `float64`, else any integer `int64`, else `bool`.
    #[serde(default)]
    pub dtype: Option<String>,
}

/// An element type an array can hold.
pub trait Element: Copy + Send + Sync + 'static {
    /// numpy's name for it.
    const DTYPE: &'static str;
    /// The JSON value as this type, if it fits exactly.
    fn from_json(v: &Value) -> Option<Self>;
    /// The value as `f64` (for sums and conversions).
    fn to_f64(self) -> f64;
}

macro_rules! int_element {
    ($t:ty, $name:literal) => {
        impl Element for $t {
            const DTYPE: &'static str = $name;
            fn from_json(v: &Value) -> Option<Self> {
                match v {
                    Value::Bool(b) => Some(<$t>::from(u8::from(*b))),
                    Value::Number(n) => n
                        .as_i64()
                        .and_then(|i| <$t>::try_from(i).ok())
                        .or_else(|| n.as_u64().and_then(|u| <$t>::try_from(u).ok())),
                    _ => None,
                }
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
int_element!(i32, "int32");
int_element!(i64, "int64");
int_element!(u8, "uint8");

impl Element for f64 {
    const DTYPE: &'static str = "float64";
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
    fn to_f64(self) -> f64 {
        self
    }
}

impl Element for f32 {
    const DTYPE: &'static str = "float32";
    fn from_json(v: &Value) -> Option<Self> {
        let x = f64::from_json(v)?;
        let y = x as f32;
        (y.is_finite() || !x.is_finite()).then_some(y)
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Element for bool {
    const DTYPE: &'static str = "bool";
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) if n.as_u64() == Some(0) => Some(false),
            Value::Number(n) if n.as_u64() == Some(1) => Some(true),
            _ => None,
        }
    }
    fn to_f64(self) -> f64 {
        f64::from(u8::from(self))
    }
}

/// An array whose element type was chosen by the request (`dtype`).
#[derive(Debug, Clone, PartialEq)]
pub enum DynArray {
    /// `float32`
    Float32(ArrayD<f32>),
    /// `float64`
    Float64(ArrayD<f64>),
    /// `int32`
    Int32(ArrayD<i32>),
    /// `int64`
    Int64(ArrayD<i64>),
    /// `uint8`
    Uint8(ArrayD<u8>),
    /// `bool`
    Bool(ArrayD<bool>),
}

macro_rules! each {
    ($self:expr, $a:ident => $e:expr) => {
        match $self {
            DynArray::Float32($a) => $e,
            DynArray::Float64($a) => $e,
            DynArray::Int32($a) => $e,
            DynArray::Int64($a) => $e,
            DynArray::Uint8($a) => $e,
            DynArray::Bool($a) => $e,
        }
    };
}

impl DynArray {
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        each!(self, a => a.shape())
    }

    /// numpy's name of the element type.
    pub fn dtype(&self) -> &'static str {
        match self {
            DynArray::Float32(_) => f32::DTYPE,
            DynArray::Float64(_) => f64::DTYPE,
            DynArray::Int32(_) => i32::DTYPE,
            DynArray::Int64(_) => i64::DTYPE,
            DynArray::Uint8(_) => u8::DTYPE,
            DynArray::Bool(_) => bool::DTYPE,
        }
    }

    /// The sum of the elements, as `f64` (`true` counts 1).
    pub fn sum(&self) -> f64 {
        each!(self, a => a.iter().map(|x| x.to_f64()).sum())
    }

    /// The sum as JSON, like numpy's: an integer for integer and bool arrays, a float otherwise.
    pub fn sum_value(&self) -> Value {
        match self {
            DynArray::Float32(_) | DynArray::Float64(_) => Value::from(self.sum()),
            DynArray::Int32(a) => Value::from(a.iter().map(|&x| i64::from(x)).sum::<i64>()),
            DynArray::Int64(a) => Value::from(a.iter().fold(0i64, |s, &x| s.wrapping_add(x))),
            DynArray::Uint8(a) => Value::from(a.iter().map(|&x| u64::from(x)).sum::<u64>()),
            DynArray::Bool(a) => Value::from(a.iter().filter(|&&x| x).count()),
        }
    }

    /// The elements converted to `f64`.
    pub fn to_f64(&self) -> ArrayD<f64> {
        each!(self, a => a.mapv(|x| x.to_f64()))
    }
}

fn invalid(field: &str, kind: &str, msg: String, input: Value) -> ValidationError {
    ValidationError::one(kind, vec!["body".into(), field.into()], msg, input)
}

/// Canonical dtype name for a numpy spelling.
fn canonical_dtype(name: &str) -> Option<&'static str> {
    Some(match name {
        "float32" | "f4" | "single" => "float32",
        "float64" | "f8" | "float" | "double" => "float64",
        "int32" | "i4" | "intc" => "int32",
        "int64" | "i8" | "int" | "long" => "int64",
        "uint8" | "u1" | "ubyte" => "uint8",
        "bool" | "?" | "bool_" => "bool",
        _ => return None,
    })
}

/// Why [`flatten`] failed.
enum Flatten {
    /// Ragged or not numbers: the message says where.
    Invalid(String),
    /// More than `max_array_elements`.
    TooLarge(ValidationError),
}

/// The dimensions of `shape` as `usize` and their product; a `422` naming the shape if the
/// product overflows or is above `max` elements. `field` is where the shape came from.
fn checked_product<T: Copy + Into<u64> + std::fmt::Debug>(
    shape: &[T],
    max: u64,
    field: &str,
) -> Result<(Vec<usize>, usize), ValidationError> {
    let shape_json = || serde_json::to_value(shape.iter().map(|&d| d.into()).collect::<Vec<u64>>());
    let mut dims = Vec::with_capacity(shape.len());
    let mut product: usize = 1;
    for &d in shape {
        let d = usize::try_from(d.into()).ok();
        product = match d.and_then(|d| product.checked_mul(d)) {
            Some(p) => p,
            None => {
                return Err(invalid(
                    field,
                    "value_error",
                    format!("shape {shape:?} is too large: its product overflows"),
                    shape_json().unwrap_or(Value::Null),
                ))
            }
        };
        dims.push(d.unwrap_or_default());
    }
    if product as u64 > max {
        return Err(invalid(
            field,
            "value_error",
            format!(
                "shape {shape:?} has {product} elements, more than the limit of {max} (max_array_elements)"
            ),
            shape_json().unwrap_or(Value::Null),
        ));
    }
    Ok((dims, product))
}

/// The flattened values and the shape of a nested list; errors say where it is ragged, or that
/// the shape (read from the first element at each depth) holds more than `max` elements.
fn flatten(array: &Value, max: u64) -> Result<(Vec<&Value>, Vec<usize>), Flatten> {
    let mut shape = Vec::new();
    let mut probe = array;
    while let Value::Array(items) = probe {
        shape.push(items.len() as u64);
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let shape = checked_product(&shape, max, "array")
        .map_err(Flatten::TooLarge)?
        .0;
    let mut leaves = Vec::new();
    // Indices of the current position; formatted only to report an error.
    fn at(path: &[usize]) -> String {
        path.iter().map(|i| format!("[{i}]")).collect()
    }
    fn walk<'a>(
        v: &'a Value,
        shape: &[usize],
        path: &mut Vec<usize>,
        leaves: &mut Vec<&'a Value>,
    ) -> Result<(), String> {
        let depth = path.len();
        match v {
            Value::Array(items) => {
                if depth >= shape.len() || items.len() != shape[depth] {
                    return Err(format!(
                        "ragged array: the list at array{} has {} elements where {} were expected",
                        at(path),
                        items.len(),
                        shape
                            .get(depth)
                            .map_or("none".to_owned(), |n| n.to_string())
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    path.push(i);
                    walk(item, shape, path, leaves)?;
                    path.pop();
                }
                Ok(())
            }
            Value::Number(_) | Value::Bool(_) => {
                if depth != shape.len() {
                    return Err(format!(
                        "ragged array: a value at array{} where a list of {} was expected",
                        at(path),
                        shape[depth]
                    ));
                }
                leaves.push(v);
                Ok(())
            }
            other => Err(format!(
                "array{} is {}, expected a number, a boolean or a list",
                at(path),
                kind_of(other)
            )),
        }
    }
    walk(
        array,
        &shape,
        &mut Vec::with_capacity(shape.len()),
        &mut leaves,
    )
    .map_err(Flatten::Invalid)?;
    Ok((leaves, shape))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn build<T: Element>(leaves: &[&Value], shape: Vec<usize>) -> Result<ArrayD<T>, ValidationError> {
    let mut out = Vec::with_capacity(leaves.len());
    for (i, v) in leaves.iter().enumerate() {
        match T::from_json(v) {
            Some(x) => out.push(x),
            None => {
                return Err(invalid(
                    "array",
                    "value_error",
                    format!("element {i} ({v}) does not fit dtype {}", T::DTYPE),
                    (*v).clone(),
                ))
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&shape), out).map_err(|e| {
        invalid(
            "shape",
            "value_error",
            format!("cannot build the array: {e}"),
            Value::Null,
        )
    })
}

impl NdArray {
    /// The array's flat values and final shape (after `shape`), validated.
    ///
    /// An array of more than `max_array_elements` (see [`crate::limits`]) is refused, its
    /// declared shape before the values are read.
    fn layout(&self) -> Result<(Vec<&Value>, Vec<usize>), ValidationError> {
        let max = crate::limits::Limits::current().max_array_elements;
        let declared = match &self.shape {
            Some(shape) => Some((shape, checked_product(shape, max, "shape")?)),
            None => None,
        };
        let (leaves, inferred) = flatten(&self.array, max).map_err(|e| match e {
            Flatten::Invalid(msg) => invalid("array", "value_error", msg, Value::Null),
            Flatten::TooLarge(e) => e,
        })?;
        let Some((shape, (dims, product))) = declared else {
            return Ok((leaves, inferred));
        };
        let shape_json = serde_json::to_value(shape).unwrap_or(Value::Null);
        if product != leaves.len() {
            return Err(invalid(
                "shape",
                "value_error",
                format!(
                    "cannot reshape array of size {} into shape {shape:?}",
                    leaves.len()
                ),
                shape_json,
            ));
        }
        Ok((leaves, dims))
    }

    /// Converts to an array of the requested (or inferred) dtype.
    pub fn into_dyn(self) -> Result<DynArray, ValidationError> {
        let (leaves, shape) = self.layout()?;
        let dtype = match &self.dtype {
            Some(name) => canonical_dtype(name).ok_or_else(|| {
                invalid(
                    "dtype",
                    "enum",
                    format!(
                        "unknown dtype '{name}'; expected one of float32, float64, int32, int64, uint8, bool"
                    ),
                    Value::from(name.as_str()),
                )
            })?,
            None => {
                if leaves.iter().any(|v| matches!(v, Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none())) {
                    "float64"
                } else if leaves.iter().any(|v| v.is_number()) {
                    "int64"
                } else {
                    "bool"
                }
            }
        };
        Ok(match dtype {
            "float32" => DynArray::Float32(build(&leaves, shape)?),
            "float64" => DynArray::Float64(build(&leaves, shape)?),
            "int32" => DynArray::Int32(build(&leaves, shape)?),
            "int64" => DynArray::Int64(build(&leaves, shape)?),
            "uint8" => DynArray::Uint8(build(&leaves, shape)?),
            _ => DynArray::Bool(build(&leaves, shape)?),
        })
    }

    /// Converts to an array of `T`. A `dtype` in the body must name `T`.
    pub fn into_array<T: Element>(self) -> Result<ArrayD<T>, ValidationError> {
        if let Some(name) = &self.dtype {
            if canonical_dtype(name) != Some(T::DTYPE) {
                return Err(invalid(
                    "dtype",
                    "enum",
                    format!("dtype '{name}' does not match this endpoint's {}", T::DTYPE),
                    Value::from(name.as_str()),
                ));
            }
        }
        let (leaves, shape) = self.layout()?;
        build(&leaves, shape)
    }
}

/// Converts every named array; errors are located at `["body", name, field]`.
pub(crate) fn multi(
    arrays: BTreeMap<String, NdArray>,
) -> Result<BTreeMap<String, DynArray>, ValidationError> {
    arrays
        .into_iter()
        .map(|(name, nd)| match nd.into_dyn() {
            Ok(a) => Ok((name, a)),
            Err(mut e) => {
                for d in &mut e.detail {
                    d.loc.insert(1, Value::from(name.as_str()));
                }
                Err(e)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nd(v: Value) -> NdArray {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: Value) -> String {
        nd(v).into_dyn().unwrap_err().detail[0].msg.clone()
    }

    #[test]
    fn infers_dtype_and_shape_like_numpy() {
        let a = nd(json!({"array": [[1, 2], [2, 3]]})).into_dyn().unwrap();
        assert_eq!((a.shape(), a.dtype(), a.sum()), (&[2, 2][..], "int64", 8.0));
        let a = nd(json!({"array": [1, 2.5]})).into_dyn().unwrap();
        assert_eq!(a.dtype(), "float64");
        let a = nd(json!({"array": [true, false, true]}))
            .into_dyn()
            .unwrap();
        assert_eq!((a.dtype(), a.sum()), ("bool", 2.0));
        let a = nd(json!({"array": 7})).into_dyn().unwrap();
        assert_eq!(a.shape(), &[] as &[usize]);
        let a = nd(json!({"array": []})).into_dyn().unwrap();
        assert_eq!(a.shape(), &[0]);
    }

    #[test]
    fn reshapes_and_converts() {
        let a = nd(json!({"array": [1, 2, 3, 4, 5, 6], "shape": [2, 3], "dtype": "float32"}))
            .into_dyn()
            .unwrap();
        assert_eq!((a.shape(), a.dtype()), (&[2, 3][..], "float32"));
        let a: ArrayD<f32> = nd(json!({"array": [[1, 2]]})).into_array().unwrap();
        assert_eq!(a.shape(), &[1, 2]);
    }

    /// Found by `fuzz/` (ndarray_roundtrip): serde_json's default float parsing is off by one
    /// ulp for some values, so a numpy client's float64 reached the model changed.
    #[test]
    fn float64_values_arrive_exactly() {
        let body = br#"{"array": [8.928108708340859e+164, 0.1, 5e-324], "dtype": "float64"}"#;
        let nd: NdArray = crate::api::parse_json_body(body).unwrap();
        let DynArray::Float64(a) = nd.into_dyn().unwrap() else {
            panic!("float64")
        };
        assert_eq!(a.as_slice().unwrap(), [8.928108708340859e164, 0.1, 5e-324]);
    }

    #[test]
    fn says_what_is_wrong() {
        assert!(err(json!({"array": [[1, 2], [3]]}))
            .starts_with("ragged array: the list at array[1] has 1 elements where 2"));
        assert!(err(json!({"array": [[1, 2], 3]})).starts_with("ragged array"));
        assert!(err(json!({"array": [1, "x"]})).contains("array[1] is a string"));
        assert_eq!(
            err(json!({"array": [1, 2, 3], "shape": [2, 2]})),
            "cannot reshape array of size 3 into shape [2, 2]"
        );
        assert!(
            err(json!({"array": [1], "shape": [4294967296u64, 4294967296u64, 4294967296u64]}))
                .contains("overflows")
        );
        assert!(err(json!({"array": [1], "dtype": "complex64"}))
            .starts_with("unknown dtype 'complex64'"));
        assert!(err(json!({"array": [300], "dtype": "uint8"})).contains("does not fit dtype uint8"));
        assert!(err(json!({"array": [1.5], "dtype": "int32"})).contains("does not fit dtype int32"));
        assert!(err(json!({"array": [1e300], "dtype": "float32"}))
            .contains("does not fit dtype float32"));
    }
}
