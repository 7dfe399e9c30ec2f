//! The `json_to_ndarray` decoder as it was before the streaming one: the body's `array` parsed
//! into a `serde_json::Value` tree, then flattened, checked and converted. Kept (tests and the
//! `fuzzing` feature only) as the oracle the streaming decoder must agree with exactly: the
//! same arrays, the same errors, the same messages and `loc`s.

use ndarray::{ArrayD, IxDyn};
use serde::Deserialize;
use serde_json::Value;

use super::ndarray::{checked_product, endpoint_dtype, invalid, requested_dtype, DynArray};
use ferroserve_http::api::ValidationError;

/// `NdArray` with `array` as a `Value` tree (named alike: serde's messages name the type).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NdArray {
    array: Value,
    #[serde(default)]
    shape: Option<Vec<u64>>,
    #[serde(default)]
    dtype: Option<String>,
}

trait FromJson: Sized {
    const DTYPE: &'static str;
    fn from_json(v: &Value) -> Option<Self>;
}

macro_rules! int_from_json {
    ($t:ty, $name:literal) => {
        impl FromJson for $t {
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
        }
    };
}
int_from_json!(i32, "int32");
int_from_json!(i64, "int64");
int_from_json!(u8, "uint8");

impl FromJson for f64 {
    const DTYPE: &'static str = "float64";
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Number(n) => n.as_f64(),
            _ => None,
        }
    }
}

impl FromJson for f32 {
    const DTYPE: &'static str = "float32";
    fn from_json(v: &Value) -> Option<Self> {
        let x = f64::from_json(v)?;
        let y = x as f32;
        (y.is_finite() || !x.is_finite()).then_some(y)
    }
}

impl FromJson for bool {
    const DTYPE: &'static str = "bool";
    fn from_json(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) if n.as_u64() == Some(0) => Some(false),
            Value::Number(n) if n.as_u64() == Some(1) => Some(true),
            _ => None,
        }
    }
}

enum Flatten {
    Invalid(String),
    TooLarge(ValidationError),
}

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
                match other {
                    Value::Null => "null",
                    Value::String(_) => "a string",
                    _ => "an object",
                }
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

fn build<T: FromJson>(leaves: &[&Value], shape: Vec<usize>) -> Result<ArrayD<T>, ValidationError> {
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

fn build_dyn(
    dtype: &str,
    leaves: &[&Value],
    shape: Vec<usize>,
) -> Result<DynArray, ValidationError> {
    Ok(match dtype {
        "float32" => DynArray::Float32(build(leaves, shape)?),
        "float64" => DynArray::Float64(build(leaves, shape)?),
        "int32" => DynArray::Int32(build(leaves, shape)?),
        "int64" => DynArray::Int64(build(leaves, shape)?),
        "uint8" => DynArray::Uint8(build(leaves, shape)?),
        _ => DynArray::Bool(build(leaves, shape)?),
    })
}

impl NdArray {
    fn layout(&self) -> Result<(Vec<&Value>, Vec<usize>), ValidationError> {
        let max = ferroserve_http::scope::limits().max_array_elements;
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

    /// What `NdArray::into_dyn` gave.
    pub fn into_dyn(self) -> Result<DynArray, ValidationError> {
        let (leaves, shape) = self.layout()?;
        let dtype = match &self.dtype {
            Some(name) => requested_dtype(name)?,
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
        build_dyn(dtype, &leaves, shape)
    }

    /// What `NdArray::into_array::<T>` gave, for the `T` whose dtype is `dtype` (a canonical
    /// name), wrapped in the `DynArray` variant of that dtype.
    pub fn into_array_of(self, dtype: &str) -> Result<DynArray, ValidationError> {
        endpoint_dtype(self.dtype.as_deref(), dtype)?;
        let (leaves, shape) = self.layout()?;
        build_dyn(dtype, &leaves, shape)
    }
}

/// numpy's six dtypes, by canonical name.
pub(crate) const DTYPES: [&str; 6] = ["float32", "float64", "int32", "int64", "uint8", "bool"];

/// `NdArray::into_array::<T>` for the `T` whose dtype is `dtype`, in that dtype's variant.
pub(crate) fn typed(nd: super::ndarray::NdArray, dtype: &str) -> Result<DynArray, ValidationError> {
    Ok(match dtype {
        "float32" => DynArray::Float32(nd.into_array()?),
        "float64" => DynArray::Float64(nd.into_array()?),
        "int32" => DynArray::Int32(nd.into_array()?),
        "int64" => DynArray::Int64(nd.into_array()?),
        "uint8" => DynArray::Uint8(nd.into_array()?),
        _ => DynArray::Bool(nd.into_array()?),
    })
}

/// Panics unless the streaming decoder and this one agree on `body` exactly, under the current
/// request's limits: both refuse it with the same error, or both accept it and give the same
/// array (or error) from `into_dyn` and from `into_array` for every dtype.
pub fn assert_agrees(body: &[u8]) {
    let shown = String::from_utf8_lossy(body);
    let new = ferroserve_http::api::parse_json_body::<super::ndarray::NdArray>(body);
    let old = ferroserve_http::api::parse_json_body::<NdArray>(body);
    let (new, old) = match (new, old) {
        (Ok(new), Ok(old)) => (new, old),
        (Err(new), Err(old)) => return assert_eq!(new, old, "{shown}"),
        (new, old) => panic!("{shown}: {new:?} but {old:?}"),
    };
    assert_eq!(new.clone().into_dyn(), old.clone().into_dyn(), "{shown}");
    for dtype in DTYPES {
        assert_eq!(
            typed(new.clone(), dtype),
            old.clone().into_array_of(dtype),
            "{shown} as {dtype}"
        );
    }
}
