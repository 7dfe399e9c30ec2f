//! `json_to_ndarray` and `json_to_multi_ndarray`: JSON nested lists into `ndarray` arrays.
//!
//! The `array` field is decoded while the body is parsed, never as a `serde_json::Value` tree:
//! the decoder records the shape from the first descent (the first list at each depth), checks
//! every later list against it, counts the values and stops storing them once there are more
//! than `max_array_elements`, and keeps them in one typed vector that widens as numpy's
//! inference does (`bool` → `int64` → `float64`): the common all-float array is a `Vec<f64>`
//! that becomes the `float64` array without a copy. Problems in `array` are kept and reported
//! when the array is converted (the object's keys may come in any order, so `shape` and
//! `dtype` may follow it), with the same precedence, messages and `loc`s as a check of the
//! whole tree: the declared `shape`, then the element limit (naming the shape of the first
//! descent), then the first problem in document order (a list's length counting as found at
//! its start), then the reshape, then the dtype.

use std::collections::BTreeMap;
use std::fmt;

use ndarray::{ArrayD, IxDyn};
use schemars::JsonSchema;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use ferroserve_http::api::ValidationError;

/// The body `json_to_ndarray` accepts (Ray's `NdArray` schema).
///
/// `array` is decoded as the body is read, never into a `serde_json::Value` tree: the shape
/// from its nesting and the values in one typed vector (`bool`, `i64` or `f64`, widening as
/// numpy's inference does). Convert it with [`NdArray::into_dyn`] or [`NdArray::into_array`],
/// which report whatever is wrong with it (the keys may come in any order).
/// An `array` with more than `max_array_elements` values (see [`ferroserve_http::limits`]) is refused;
/// at most that many values are ever stored.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "The body `json_to_ndarray` accepts (Ray's `NdArray` schema).")]
pub struct NdArray {
    /// The values: a number, a boolean, or nested lists of them (every list at one depth the
    /// same length).
    #[schemars(with = "Value")]
    array: Decoded,
    /// The shape to reshape into; its product must equal the number of values.
    #[serde(default)]
    pub shape: Option<Vec<u64>>,
    /// A numpy dtype name: `float32`, `float64`, `int32`, `int64`, `uint8`, `bool` (also
    /// `float`, `int`, `f4`, `f8`, `i4`, `i8`, `u1`). Inferred when absent, as numpy does: any
    /// float makes `float64`, else any integer `int64`, else `bool`.
    #[serde(default)]
    pub dtype: Option<String>,
}

mod sealed {
    /// Conversion from the decoded values; implemented for numpy's six dtypes only.
    pub trait Sealed: Sized {
        /// The values as this type, or the first that does not fit (index and value).
        fn from_values(values: super::Values) -> Result<Vec<Self>, (usize, super::Scalar)>;
    }
}

/// An element type an array can hold: numpy's `float32`, `float64`, `int32`, `int64`, `uint8`
/// and `bool` (the trait is sealed).
///
/// A value converts when it fits exactly: booleans are `0`/`1` in the number types, and `0`/`1`
/// are booleans; integers convert to an integer type that holds them and to the float types (as
/// `f64` would round them); floats convert to the float types only (to `float32` if they do not
/// overflow it). Anything else is a `422` naming the element.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// numpy's name for it.
    const DTYPE: &'static str;
    /// The value as `f64` (for sums and conversions).
    fn to_f64(self) -> f64;
}

/// One JSON value of `array`, as read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// `true` or `false`.
    Bool(bool),
    /// Any integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A number with a fraction or an exponent (or an integer too long for `u64`).
    Float(f64),
}

impl Scalar {
    fn to_f64(self) -> f64 {
        match self {
            Scalar::Bool(b) => f64::from(u8::from(b)),
            Scalar::Int(i) => i as f64,
            Scalar::UInt(u) => u as f64,
            Scalar::Float(x) => x,
        }
    }

    /// The value as JSON (for error messages: it prints as the body had it).
    fn to_json(self) -> Value {
        match self {
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(i) => Value::from(i),
            Scalar::UInt(u) => Value::from(u),
            Scalar::Float(x) => Value::from(x),
        }
    }
}

/// The values of `array` in document order, in the narrowest of `bool`, `i64`, `f64` that
/// holds them all as numpy's inference would (booleans as `0`/`1` once there is a number).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Only booleans (or none).
    Bool(Vec<bool>),
    /// Integers, and booleans as `0`/`1`.
    Int(Vec<i64>),
    /// Some value fits no integer dtype.
    Float(Floats),
}

/// Values once one was a float or an integer above `i64::MAX` (neither fits an integer dtype
/// nor `bool`), all as `f64` (integers `as f64`, as `float64` conversion rounds them).
///
/// What the integer dtypes need is kept beside: every value before `first` was an integer
/// (which `f64` may have rounded), so the first that does not fit `int32`, `uint8` or `bool`
/// is either the first misfit among them, recorded when the values widened, or `first`.
#[derive(Debug, Clone, PartialEq)]
pub struct Floats {
    values: Vec<f64>,
    /// Whether any value was a float (else only integers above `i64::MAX` widened: `int64`).
    any_float: bool,
    /// The first value that is not an `i64`.
    first: (usize, Scalar),
    /// The first integer before `first` that `int32`, `uint8`, `bool` cannot hold.
    misfit_i32: Option<(usize, i64)>,
    misfit_u8: Option<(usize, i64)>,
    misfit_bool: Option<(usize, i64)>,
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Bool(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Float(f) => f.values.len(),
        }
    }

    #[inline]
    fn push(&mut self, x: Scalar) {
        match (&mut *self, x) {
            (Values::Float(f), Scalar::Float(x)) => {
                f.values.push(x);
                f.any_float = true;
            }
            (Values::Int(v), Scalar::Int(i)) => v.push(i),
            (Values::Bool(v), Scalar::Bool(b)) => v.push(b),
            _ => self.push_other(x),
        }
    }

    /// [`Values::push`] of a value of another kind than the values so far (kept out of the
    /// per-value path).
    #[cold]
    #[inline(never)]
    fn push_other(&mut self, x: Scalar) {
        match (&mut *self, x) {
            (Values::Float(f), x) => f.values.push(x.to_f64()),
            (Values::Int(v), Scalar::Bool(b)) => v.push(i64::from(b)),
            (Values::Bool(v), Scalar::Bool(b)) => v.push(b),
            (Values::Bool(v), Scalar::Int(i)) => {
                let mut ints: Vec<i64> = Vec::with_capacity(v.len().max(4) * 2);
                ints.extend(v.iter().map(|&b| i64::from(b)));
                ints.push(i);
                *self = Values::Int(ints);
            }
            (Values::Bool(v), x) => {
                let mut values = Vec::with_capacity(v.len().max(4) * 2);
                values.extend(v.iter().map(|&b| f64::from(u8::from(b))));
                self.widen(values, x, None, None, None);
            }
            (Values::Int(v), x) => {
                let misfit =
                    |fits: fn(i64) -> bool| v.iter().position(|&i| !fits(i)).map(|at| (at, v[at]));
                let (m32, m8, mb) = (
                    misfit(|i| i32::try_from(i).is_ok()),
                    misfit(|i| u8::try_from(i).is_ok()),
                    misfit(|i| i == 0 || i == 1),
                );
                let mut values = Vec::with_capacity(v.len().max(4) * 2);
                values.extend(v.iter().map(|&i| i as f64));
                self.widen(values, x, m32, m8, mb);
            }
        }
    }

    /// Becomes `Float` with `x` (a float or an integer above `i64::MAX`) after `values`.
    fn widen(
        &mut self,
        mut values: Vec<f64>,
        x: Scalar,
        misfit_i32: Option<(usize, i64)>,
        misfit_u8: Option<(usize, i64)>,
        misfit_bool: Option<(usize, i64)>,
    ) {
        let first = (values.len(), x);
        values.push(x.to_f64());
        *self = Values::Float(Floats {
            values,
            any_float: matches!(x, Scalar::Float(_)),
            first,
            misfit_i32,
            misfit_u8,
            misfit_bool,
        });
    }

    /// numpy's inference: any float makes `float64`, else any integer `int64`, else `bool`.
    fn inferred_dtype(&self) -> &'static str {
        match self {
            Values::Bool(_) => "bool",
            Values::Int(_) => "int64",
            Values::Float(f) if f.any_float => "float64",
            Values::Float(_) => "int64",
        }
    }

    /// The values as an integer type `T` (through `fits`); `misfit` picks the recorded misfit
    /// of the widened values for `T`.
    fn into_ints<T: TryFrom<i64> + From<u8>>(
        self,
        misfit: impl FnOnce(&Floats) -> Option<(usize, i64)>,
    ) -> Result<Vec<T>, (usize, Scalar)> {
        match self {
            Values::Bool(v) => Ok(v.into_iter().map(|b| T::from(u8::from(b))).collect()),
            Values::Int(v) => v
                .iter()
                .enumerate()
                .map(|(at, &i)| T::try_from(i).map_err(|_| (at, Scalar::Int(i))))
                .collect(),
            Values::Float(f) => Err(misfit(&f)
                .map(|(at, i)| (at, Scalar::Int(i)))
                .unwrap_or(f.first)),
        }
    }
}

impl sealed::Sealed for f64 {
    fn from_values(values: Values) -> Result<Vec<Self>, (usize, Scalar)> {
        Ok(match values {
            Values::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
            Values::Int(v) => v.into_iter().map(|i| i as f64).collect(),
            Values::Float(f) => f.values,
        })
    }
}

impl sealed::Sealed for f32 {
    fn from_values(values: Values) -> Result<Vec<Self>, (usize, Scalar)> {
        match values {
            Values::Bool(v) => Ok(v.into_iter().map(|b| f32::from(u8::from(b))).collect()),
            // Integers (at most about 1.8e19) never overflow `f32`.
            Values::Int(v) => Ok(v.into_iter().map(|i| i as f64 as f32).collect()),
            // So a value that overflows is a float, stored as read.
            Values::Float(f) => f
                .values
                .iter()
                .enumerate()
                .map(|(at, &x)| {
                    let y = x as f32;
                    if y.is_finite() {
                        Ok(y)
                    } else {
                        Err((at, Scalar::Float(x)))
                    }
                })
                .collect(),
        }
    }
}

impl sealed::Sealed for i64 {
    fn from_values(values: Values) -> Result<Vec<Self>, (usize, Scalar)> {
        match values {
            Values::Int(v) => Ok(v),
            // Every value before `first` was an `i64`.
            other => other.into_ints(|_| None),
        }
    }
}

impl sealed::Sealed for i32 {
    fn from_values(values: Values) -> Result<Vec<Self>, (usize, Scalar)> {
        values.into_ints(|f| f.misfit_i32)
    }
}

impl sealed::Sealed for u8 {
    fn from_values(values: Values) -> Result<Vec<Self>, (usize, Scalar)> {
        values.into_ints(|f| f.misfit_u8)
    }
}

impl sealed::Sealed for bool {
    fn from_values(values: Values) -> Result<Vec<Self>, (usize, Scalar)> {
        match values {
            Values::Bool(v) => Ok(v),
            Values::Int(v) => v
                .iter()
                .enumerate()
                .map(|(at, &i)| match i {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err((at, Scalar::Int(i))),
                })
                .collect(),
            Values::Float(f) => Err(f
                .misfit_bool
                .map(|(at, i)| (at, Scalar::Int(i)))
                .unwrap_or(f.first)),
        }
    }
}

macro_rules! element {
    ($t:ty, $name:literal, $x:ident => $f64:expr) => {
        impl Element for $t {
            const DTYPE: &'static str = $name;
            fn to_f64(self) -> f64 {
                let $x = self;
                $f64
            }
        }
    };
}
element!(f32, "float32", x => f64::from(x));
element!(f64, "float64", x => x);
element!(i32, "int32", x => f64::from(x));
element!(i64, "int64", x => x as f64);
element!(u8, "uint8", x => f64::from(x));
element!(bool, "bool", x => f64::from(u8::from(x)));

/// `array` as decoded: its values and the shape of its nesting, or what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
enum Decoded {
    Array { values: Values, shape: Vec<usize> },
    Invalid { msg: String, input: Value },
}

impl<'de> Deserialize<'de> for Decoded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let max = ferroserve_http::scope::limits().max_array_elements;
        Ok(Decoder::read(deserializer, max)?.finish())
    }
}

/// The streaming decoder of `array`.
#[derive(Debug)]
struct Decoder {
    /// `max_array_elements`.
    max: u64,
    values: Values,
    /// The values stored (never more than `max`).
    count: u64,
    /// The length of the first list at each depth (the shape), set as each closes.
    shape: Vec<usize>,
    /// The number of dimensions, known once the first descent reaches a value (or anything
    /// not a list) or an empty list.
    ndim: Option<usize>,
    /// The index of the element being read in each enclosing list.
    path: Vec<usize>,
    /// The first problem found. From then on nothing is stored or checked: the rest of
    /// `array` is only parsed (as strictly as a `Value` would be) and its open lists counted.
    fault: Option<Fault>,
    /// The final lengths of the lists that were open when `fault` was found, by depth.
    open_lens: Vec<usize>,
}

#[derive(Debug)]
struct Fault {
    /// Where: the element, or for the `List*` kinds the list.
    path: Vec<usize>,
    kind: FaultKind,
}

#[derive(Debug)]
enum FaultKind {
    /// One value more than `max`.
    TooMany,
    /// A list longer than the shape says, or nested deeper than it (its length is counted).
    ListLong,
    /// A list that closed shorter than the shape says.
    ListShort(usize),
    /// A value where the shape says a list.
    ValueForList,
    /// Not a number, a boolean or a list: what it is.
    NotNumber(&'static str),
}

/// `array[i][j]` for an index path.
fn at(path: &[usize]) -> String {
    path.iter().map(|i| format!("[{i}]")).collect()
}

impl Decoder {
    fn read<'de, D: Deserializer<'de>>(deserializer: D, max: u64) -> Result<Self, D::Error> {
        let mut decoder = Decoder {
            max,
            values: Values::Bool(Vec::new()),
            count: 0,
            shape: Vec::new(),
            ndim: None,
            path: Vec::new(),
            fault: None,
            open_lens: Vec::new(),
        };
        Item(&mut decoder).deserialize(deserializer)?;
        Ok(decoder)
    }

    fn fail(&mut self, path: Vec<usize>, kind: FaultKind) {
        debug_assert!(self.fault.is_none());
        self.fault = Some(Fault { path, kind });
    }

    #[inline]
    fn value(&mut self, x: Scalar) {
        if self.ndim == Some(self.path.len()) && self.count < self.max {
            self.count += 1;
            self.values.push(x);
        } else {
            self.value_other(x);
        }
    }

    /// [`Decoder::value`] for the first value, or one that is out of place or over the limit.
    #[cold]
    #[inline(never)]
    fn value_other(&mut self, x: Scalar) {
        let depth = self.path.len();
        match self.ndim {
            Some(n) if n == depth => {}
            // Deeper is impossible: a list at depth `n` failed already.
            Some(_) => return self.fail(self.path.clone(), FaultKind::ValueForList),
            None => self.ndim = Some(depth),
        }
        if self.count >= self.max {
            return self.fail(self.path.clone(), FaultKind::TooMany);
        }
        self.count += 1;
        self.values.push(x);
    }

    fn not_number(&mut self, kind: &'static str) {
        if self.ndim.is_none() {
            self.ndim = Some(self.path.len());
        }
        self.fail(self.path.clone(), FaultKind::NotNumber(kind));
    }

    fn list<'de, A: SeqAccess<'de>>(&mut self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.path.len();
        let mut len = 0;
        if self.ndim.is_some_and(|n| depth >= n) {
            self.fail(self.path.clone(), FaultKind::ListLong);
            while seq.next_element_seed(Skip)?.is_some() {
                len += 1;
            }
            self.set_open_len(depth, len);
            return Ok(());
        }
        // The first list at its depth sets the shape; the first at a depth closes before any
        // other at that depth opens, so theirs is known.
        let first = self.path.iter().all(|&i| i == 0);
        let expected = if first {
            self.shape.push(0);
            None
        } else {
            Some(self.shape[depth])
        };
        self.path.push(0);
        let mut done = false;
        while self.fault.is_none() {
            if Some(len) == expected {
                // One more element is a list too long, whatever the element is.
                if seq.next_element_seed(Skip)?.is_none() {
                    done = true;
                } else {
                    len += 1;
                    self.fail(self.path[..depth].to_vec(), FaultKind::ListLong);
                }
                break;
            }
            self.path[depth] = len;
            if seq.next_element_seed(Item(self))?.is_none() {
                done = true;
                break;
            }
            len += 1;
        }
        if !done {
            while seq.next_element_seed(Skip)?.is_some() {
                len += 1;
            }
        }
        self.path.pop();
        if self.fault.is_some() {
            self.set_open_len(depth, len);
        } else if first {
            self.shape[depth] = len;
            if len == 0 && self.ndim.is_none() {
                self.ndim = Some(depth + 1);
            }
        } else if Some(len) != expected {
            self.fail(self.path.clone(), FaultKind::ListShort(len));
        }
        Ok(())
    }

    fn set_open_len(&mut self, depth: usize, len: usize) {
        if self.open_lens.len() <= depth {
            self.open_lens.resize(depth + 1, 0);
        }
        self.open_lens[depth] = len;
    }

    /// The values and shape, or the problem a check of the whole tree would have reported
    /// first.
    fn finish(self) -> Decoded {
        let Some(Fault { path, kind }) = self.fault else {
            return Decoded::Array {
                values: self.values,
                shape: self.shape,
            };
        };
        let ndim = self.ndim.unwrap_or(self.shape.len());
        // Lists open when the fault was found: those enclosing it, and a list that failed
        // while open (too long or too deep).
        let enclosing = path.len();
        let open =
            |d: usize| d < enclosing || (d == enclosing && matches!(kind, FaultKind::ListLong));
        let first = |d: usize| path[..d.min(path.len())].iter().all(|&i| i == 0);
        // The shape of the first descent: its lists still open then were counted to the end.
        let shape: Vec<u64> = (0..ndim)
            .map(|d| {
                let len = if open(d) && first(d) {
                    self.open_lens[d]
                } else {
                    self.shape[d]
                };
                len as u64
            })
            .collect();
        if let Err(e) = checked_product(&shape, self.max, "array") {
            let d = e.detail.into_iter().next().map(|d| (d.msg, d.input));
            let (msg, input) = d.unwrap_or_default();
            return Decoded::Invalid { msg, input };
        }
        let expected = |d: usize| shape.get(d).map_or("none".to_owned(), |n| n.to_string());
        let list = |d: usize, len: usize| {
            format!(
                "ragged array: the list at array{} has {len} elements where {} were expected",
                at(&path[..d]),
                expected(d)
            )
        };
        // A list's wrong length counts as found at its start, before anything inside it.
        let outer = (0..enclosing)
            .find(|&d| !first(d) && self.open_lens[d] as u64 != shape[d])
            .map(|d| list(d, self.open_lens[d]));
        let msg = outer.unwrap_or_else(|| match kind {
            FaultKind::ListLong => list(enclosing, self.open_lens[enclosing]),
            FaultKind::ListShort(len) => list(enclosing, len),
            FaultKind::ValueForList => format!(
                "ragged array: a value at array{} where a list of {} was expected",
                at(&path),
                expected(enclosing)
            ),
            FaultKind::NotNumber(what) => format!(
                "array{} is {what}, expected a number, a boolean or a list",
                at(&path)
            ),
            // The values read fit the shape of the first descent, so more than `max` of them
            // made its product more than `max`, refused above.
            FaultKind::TooMany => format!(
                "array has more than {} elements, the limit (max_array_elements)",
                self.max
            ),
        });
        Decoded::Invalid {
            msg,
            input: Value::Null,
        }
    }
}

/// An element of `array` (or `array` itself).
struct Item<'a>(&'a mut Decoder);

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a boolean or a list")
    }
    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<(), E> {
        self.0.value(Scalar::Bool(b));
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<(), E> {
        self.0.value(Scalar::Int(i));
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<(), E> {
        self.0
            .value(i64::try_from(u).map_or(Scalar::UInt(u), Scalar::Int));
        Ok(())
    }
    #[inline]
    fn visit_f64<E: serde::de::Error>(self, x: f64) -> Result<(), E> {
        // The common case, a float among floats where a value belongs, straight to the vector.
        let d = self.0;
        if let Values::Float(f) = &mut d.values {
            if d.ndim == Some(d.path.len()) && d.count < d.max && x.is_finite() {
                d.count += 1;
                f.values.push(x);
                f.any_float = true;
                return Ok(());
            }
        }
        // A `Value` keeps a non-finite float (never parsed from JSON) as `null`.
        if x.is_finite() {
            d.value(Scalar::Float(x));
        } else {
            d.not_number("null");
        }
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.0.not_number("a string");
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.not_number("null");
        Ok(())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        self.0.list(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.not_number("an object");
        Skip.visit_map(map)
    }
}

/// Any JSON value, parsed (numbers, strings, nesting) as strictly as a `Value` and dropped.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys as a `Value` reads them: strings.
        while map.next_key::<String>()?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
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

/// `$f` applied to an iterator over the elements of `$a` in logical order: over a slice when
/// the array is laid out in that order (stepping an `IxDyn` multi-index per element costs
/// several times the addition), else the array's own iterator. The order, and so a float sum,
/// is the same either way.
macro_rules! elements {
    ($a:expr, |$it:ident| $f:expr) => {
        match $a.as_slice() {
            Some(s) => {
                let $it = s.iter();
                $f
            }
            None => {
                let $it = $a.iter();
                $f
            }
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
        each!(self, a => elements!(a, |it| it.map(|x| x.to_f64()).sum()))
    }

    /// The sum as JSON, like numpy's: an integer for integer and bool arrays, a float otherwise.
    pub fn sum_value(&self) -> Value {
        match self {
            DynArray::Float32(_) | DynArray::Float64(_) => Value::from(self.sum()),
            DynArray::Int32(a) => {
                Value::from(elements!(a, |it| it.map(|&x| i64::from(x)).sum::<i64>()))
            }
            DynArray::Int64(a) => {
                Value::from(elements!(a, |it| it.fold(0i64, |s, &x| s.wrapping_add(x))))
            }
            DynArray::Uint8(a) => {
                Value::from(elements!(a, |it| it.map(|&x| u64::from(x)).sum::<u64>()))
            }
            DynArray::Bool(a) => Value::from(elements!(a, |it| it.filter(|&&x| x).count())),
        }
    }

    /// The elements converted to `f64`.
    pub fn to_f64(&self) -> ArrayD<f64> {
        each!(self, a => a.mapv(|x| x.to_f64()))
    }
}

pub(super) fn invalid(field: &str, kind: &str, msg: String, input: Value) -> ValidationError {
    ValidationError::one(kind, vec!["body".into(), field.into()], msg, input)
}

/// Canonical dtype name for a numpy spelling.
pub(super) fn canonical_dtype(name: &str) -> Option<&'static str> {
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

/// The dimensions of `shape` as `usize` and their product; a `422` naming the shape if the
/// product overflows or is above `max` elements. `field` is where the shape came from.
pub(super) fn checked_product<T: Copy + Into<u64> + std::fmt::Debug>(
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

/// The values as an array of `T` and `shape`.
fn build<T: Element>(values: Values, shape: Vec<usize>) -> Result<ArrayD<T>, ValidationError> {
    let out = T::from_values(values).map_err(|(i, x)| {
        let v = x.to_json();
        invalid(
            "array",
            "value_error",
            format!("element {i} ({v}) does not fit dtype {}", T::DTYPE),
            v,
        )
    })?;
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
    /// The shape the nesting of `array` gives (before `shape` reshapes it), or `None` when
    /// `array` is not an array (ragged, not numbers, above the element limit; the conversions
    /// say which).
    pub fn array_shape(&self) -> Option<&[usize]> {
        match &self.array {
            Decoded::Array { shape, .. } => Some(shape),
            Decoded::Invalid { .. } => None,
        }
    }

    /// The array's values and final shape (after `shape`), validated.
    ///
    /// An array of more than `max_array_elements` (see [`ferroserve_http::limits`]) is refused, its
    /// declared shape before the values are looked at (they were never stored).
    fn layout(
        array: Decoded,
        shape: Option<&Vec<u64>>,
    ) -> Result<(Values, Vec<usize>), ValidationError> {
        let max = ferroserve_http::scope::limits().max_array_elements;
        let declared = match shape {
            Some(shape) => Some((shape, checked_product(shape, max, "shape")?)),
            None => None,
        };
        let (values, inferred) = match array {
            Decoded::Array { values, shape } => (values, shape),
            Decoded::Invalid { msg, input } => {
                return Err(invalid("array", "value_error", msg, input))
            }
        };
        let Some((shape, (dims, product))) = declared else {
            return Ok((values, inferred));
        };
        if product != values.len() {
            return Err(invalid(
                "shape",
                "value_error",
                format!(
                    "cannot reshape array of size {} into shape {shape:?}",
                    values.len()
                ),
                serde_json::to_value(shape).unwrap_or(Value::Null),
            ));
        }
        Ok((values, dims))
    }

    /// Converts to an array of the requested (or inferred) dtype.
    pub fn into_dyn(self) -> Result<DynArray, ValidationError> {
        let (values, shape) = Self::layout(self.array, self.shape.as_ref())?;
        let dtype = match &self.dtype {
            Some(name) => requested_dtype(name)?,
            None => values.inferred_dtype(),
        };
        Ok(match dtype {
            "float32" => DynArray::Float32(build(values, shape)?),
            "float64" => DynArray::Float64(build(values, shape)?),
            "int32" => DynArray::Int32(build(values, shape)?),
            "int64" => DynArray::Int64(build(values, shape)?),
            "uint8" => DynArray::Uint8(build(values, shape)?),
            _ => DynArray::Bool(build(values, shape)?),
        })
    }

    /// Converts to an array of `T`. A `dtype` in the body must name `T`.
    pub fn into_array<T: Element>(self) -> Result<ArrayD<T>, ValidationError> {
        endpoint_dtype(self.dtype.as_deref(), T::DTYPE)?;
        let (values, shape) = Self::layout(self.array, self.shape.as_ref())?;
        build(values, shape)
    }
}

/// The canonical dtype `name` asks for, or the `422` naming the choices.
pub(super) fn requested_dtype(name: &str) -> Result<&'static str, ValidationError> {
    canonical_dtype(name).ok_or_else(|| {
        invalid(
            "dtype",
            "enum",
            format!(
                "unknown dtype '{name}'; expected one of float32, float64, int32, int64, uint8, bool"
            ),
            Value::from(name),
        )
    })
}

/// The `422` when a body's `dtype` is not the one an endpoint of `dtype` converts to.
pub(super) fn endpoint_dtype(requested: Option<&str>, dtype: &str) -> Result<(), ValidationError> {
    match requested {
        Some(name) if canonical_dtype(name) != Some(dtype) => Err(invalid(
            "dtype",
            "enum",
            format!("dtype '{name}' does not match this endpoint's {dtype}"),
            Value::from(name),
        )),
        _ => Ok(()),
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
    use crate::ndarray_oracle::{self as oracle, NdArray as NdArrayOracle};
    use ferroserve_http::api::parse_json_body;
    use serde_json::json;

    fn nd(v: Value) -> NdArray {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: Value) -> String {
        nd(v).into_dyn().unwrap_err().detail[0].msg.clone()
    }

    fn body_err(body: &str) -> String {
        let nd: NdArray = parse_json_body(body.as_bytes()).unwrap();
        nd.into_dyn().unwrap_err().detail[0].msg.clone()
    }

    fn with_max<R>(max: u64, f: impl FnOnce() -> R) -> R {
        crate::with_max_array_elements(max, f)
    }

    /// The streaming decoder and the `Value`-tree one agree on `body` exactly (arrays, errors,
    /// messages, `loc`s), under several element limits.
    fn agrees(body: &str) {
        for max in [1 << 24, 12, 4, 1, 0] {
            with_max(max, || {
                std::panic::catch_unwind(|| oracle::assert_agrees(body.as_bytes()))
                    .unwrap_or_else(|_| panic!("disagreement under max_array_elements {max}"))
            });
        }
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
        let nd: NdArray = ferroserve_http::api::parse_json_body(body).unwrap();
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

    /// Above the limit the values stop being stored at once; the rest is only parsed, to name
    /// the shape as before.
    #[test]
    fn element_limit_stops_storing_mid_stream() {
        let body = format!(
            r#"{{"array": [{}]}}"#,
            (0..1000)
                .map(|i| format!("[{i}, 0.5]"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let de = &mut serde_json::Deserializer::from_str(&body[10..body.len() - 1]);
        let decoder = Decoder::read(de, 12).unwrap();
        assert_eq!((decoder.count, decoder.values.len()), (12, 12));
        assert!(matches!(
            decoder.fault,
            Some(Fault {
                kind: FaultKind::TooMany,
                ..
            })
        ));
        let e = with_max(12, || {
            parse_json_body::<NdArray>(body.as_bytes())
                .unwrap()
                .into_dyn()
                .unwrap_err()
        });
        let d = &e.detail[0];
        assert_eq!(
            (d.kind.as_str(), &d.loc, d.msg.as_str(), &d.input),
            (
                "value_error",
                &vec![json!("body"), json!("array")],
                "shape [1000, 2] has 2000 elements, more than the limit of 12 (max_array_elements)",
                &json!([1000, 2])
            )
        );
        // Exactly at the limit is fine; an empty array is fine under a limit of 0.
        let a = with_max(12, || {
            nd(json!({"array": [[1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2]]})).into_dyn()
        });
        assert_eq!(a.unwrap().shape(), &[2, 6]);
        let a = with_max(0, || nd(json!({"array": [[], []]})).into_dyn());
        assert_eq!(a.unwrap().shape(), &[2, 0]);
        // A ragged array whose first descent names more than the limit is refused as too
        // large, whatever comes later (the shape is checked first).
        let msg = with_max(12, || {
            body_err(r#"{"array": [[1, 2, 3, 4, 5], [1], [1, 2, 3, 4, 5]]}"#)
        });
        assert_eq!(
            msg,
            "shape [3, 5] has 15 elements, more than the limit of 12 (max_array_elements)"
        );
        agrees(&body);
    }

    #[test]
    fn ragged_at_depth_names_the_list() {
        assert_eq!(
            body_err(r#"{"array": [[[1, 2], [3, 4]], [[5, 6], [7]]]}"#),
            "ragged array: the list at array[1][1] has 1 elements where 2 were expected"
        );
        assert_eq!(
            body_err(r#"{"array": [[[1, 2], [3, 4]], [[5, 6], [7, 8, 9]]]}"#),
            "ragged array: the list at array[1][1] has 3 elements where 2 were expected"
        );
        assert_eq!(
            body_err(r#"{"array": [[[1, 2], [3, 4]], [[5, 6], 7]]}"#),
            "ragged array: a value at array[1][1] where a list of 2 was expected"
        );
        assert_eq!(
            body_err(r#"{"array": [[1, 2], [3, [4]]]}"#),
            "ragged array: the list at array[1][1] has 1 elements where none were expected"
        );
        // A list of the wrong length is reported before anything wrong inside it.
        assert_eq!(
            body_err(r#"{"array": [[1, 2], ["x", 3, 4]]}"#),
            "ragged array: the list at array[1] has 3 elements where 2 were expected"
        );
        assert_eq!(
            body_err(r#"{"array": [[1, 2], [3, null]]}"#),
            "array[1][1] is null, expected a number, a boolean or a list"
        );
        assert_eq!(
            body_err(r#"{"array": {"a": 1}}"#),
            "array is an object, expected a number, a boolean or a list"
        );
    }

    #[test]
    fn keys_come_in_any_order() {
        for body in [
            r#"{"array": [1, 2, 3, 4], "shape": [2, 2], "dtype": "float32"}"#,
            r#"{"dtype": "float32", "shape": [2, 2], "array": [1, 2, 3, 4]}"#,
            r#"{"shape": [2, 2], "array": [1, 2, 3, 4], "dtype": "float32"}"#,
        ] {
            let a = parse_json_body::<NdArray>(body.as_bytes())
                .unwrap()
                .into_dyn()
                .unwrap();
            assert_eq!(
                (a.shape(), a.dtype(), a.sum()),
                (&[2, 2][..], "float32", 10.0)
            );
        }
        // The array is checked before the dtype, wherever the dtype is.
        assert!(body_err(r#"{"dtype": "nope", "array": [[1], []]}"#).starts_with("ragged"));
    }

    #[test]
    fn empty_lists_and_scalars() {
        for (array, shape, dtype) in [
            (json!([]), vec![0], "bool"),
            (json!([[]]), vec![1, 0], "bool"),
            (json!([[], []]), vec![2, 0], "bool"),
            (json!(7), vec![], "int64"),
            (json!(-2.5), vec![], "float64"),
            (json!(true), vec![], "bool"),
        ] {
            let n = nd(json!({ "array": array }));
            assert_eq!(n.array_shape(), Some(&shape[..]), "{array}");
            let a = n.into_dyn().unwrap();
            assert_eq!((a.shape(), a.dtype()), (&shape[..], dtype), "{array}");
        }
        assert_eq!(
            err(json!({"array": [[], [1]]})),
            "ragged array: the list at array[1] has 1 elements where 0 were expected"
        );
        assert_eq!(
            err(json!({"array": "x"})),
            "array is a string, expected a number, a boolean or a list"
        );
        assert_eq!(nd(json!({"array": [[1], 2]})).array_shape(), None);
    }

    #[test]
    fn values_widen_as_numpy_infers() {
        let a = nd(json!({"array": [true, 2, false]})).into_dyn().unwrap();
        assert_eq!((a.dtype(), a.sum_value()), ("int64", json!(3)));
        let a = nd(json!({"array": [true, 2, 0.5]})).into_dyn().unwrap();
        assert_eq!((a.dtype(), a.sum()), ("float64", 3.5));
        let a = nd(json!({"array": [0.5, true, 2]})).into_dyn().unwrap();
        assert_eq!(
            a,
            DynArray::Float64(ndarray::arr1(&[0.5, 1.0, 2.0]).into_dyn())
        );
        // A float64 array holds integers as `f64` rounds them.
        let a = nd(json!({"array": [9007199254740993u64, 0.5]}))
            .into_dyn()
            .unwrap();
        assert_eq!(a.to_f64().as_slice().unwrap(), [9007199254740992.0, 0.5]);
        // Converting widened values to an integer dtype names the first that does not fit,
        // integer or float, as read.
        for (array, dtype, msg) in [
            (
                json!([1, 2.5]),
                "int32",
                "element 1 (2.5) does not fit dtype int32",
            ),
            (
                json!([300, 2.5]),
                "uint8",
                "element 0 (300) does not fit dtype uint8",
            ),
            (
                json!([0, 1, true, 2.5]),
                "bool",
                "element 3 (2.5) does not fit dtype bool",
            ),
            (
                json!([true, 2, 0.5]),
                "bool",
                "element 1 (2) does not fit dtype bool",
            ),
            (
                json!([1, 2, 1.0]),
                "int64",
                "element 2 (1.0) does not fit dtype int64",
            ),
            (
                json!([1, 1e300, 2]),
                "float32",
                "element 1 (1e+300) does not fit dtype float32",
            ),
        ] {
            assert_eq!(err(json!({"array": array, "dtype": dtype})), msg);
        }
        let a = nd(json!({"array": [true, 2, 0.5], "dtype": "float32"}))
            .into_dyn()
            .unwrap();
        assert_eq!(a.sum_value(), json!(3.5));
        let a = nd(json!({"array": [1, 0, true], "dtype": "bool"}))
            .into_dyn()
            .unwrap();
        assert_eq!(a.sum_value(), json!(2));
    }

    #[test]
    fn integers_above_i64_and_negative_into_uint8() {
        let big = u64::MAX;
        assert_eq!(
            err(json!({ "array": [1, big] })),
            format!("element 1 ({big}) does not fit dtype int64")
        );
        let a = nd(json!({"array": [-1, big], "dtype": "float64"}))
            .into_dyn()
            .unwrap();
        assert_eq!(a.to_f64().as_slice().unwrap(), [-1.0, u64::MAX as f64]);
        // Still numpy's int64 inference after the widening, until a float comes.
        let a = nd(json!({"array": [big, 0.5]})).into_dyn().unwrap();
        assert_eq!(a.dtype(), "float64");
        assert_eq!(
            err(json!({"array": [2, big], "dtype": "bool"})),
            "element 0 (2) does not fit dtype bool"
        );
        assert_eq!(
            err(json!({"array": [[0, 255], [-1, 3]], "dtype": "uint8"})),
            "element 2 (-1) does not fit dtype uint8"
        );
        let e = nd(json!({"array": [-1], "dtype": "uint8"}))
            .into_dyn()
            .unwrap_err();
        assert_eq!(e.detail[0].input, json!(-1));
        let a: ArrayD<u8> = nd(json!({"array": [0, 255, true]})).into_array().unwrap();
        assert_eq!(a.as_slice().unwrap(), [0, 255, 1]);
    }

    #[test]
    fn agrees_with_the_value_tree_decoder() {
        for body in [
            r#"{"array": [[1, 2], [3, 4]]}"#,
            r#"{"array": [[1.5, 2], [true, -0]], "dtype": "f4"}"#,
            r#"{"array": [-0]}"#,
            r#"{"array": [1, 2, 3, 4, 5, 6], "shape": [3, 2], "dtype": "u1"}"#,
            r#"{"shape": [2], "array": [[1], [2]]}"#,
            r#"{"array": [[1, 2], [3]], "shape": [1000, 1000]}"#,
            r#"{"array": [[1, 2], [3]], "dtype": "x"}"#,
            r#"{"array": [[[1, 2], [3, 4]], [[5, 6], [7]]]}"#,
            r#"{"array": [[[1, 2], [3, 4]], [[5, 6], [7, 8, 9]]]}"#,
            r#"{"array": [[[1, 2], [3, 4]], [[5, 6], 7]]}"#,
            r#"{"array": [[[1, 2], 3], 4]}"#,
            r#"{"array": [[[[[[[[[[[[[[[1, 1], 1], 1], 1], 1], 1], 1], 1], 1], 1], 1], 1], 1], 1], 1]}"#,
            r#"{"array": [[1, 2], [3, [4, 5]]]}"#,
            r#"{"array": [[1, 2], ["x", 3, 4]]}"#,
            r#"{"array": [[1, 2], [3, 4], ["x"], [5, 6, 7]]}"#,
            r#"{"array": [[1, 2, 3, 4, 5, 6, 7], [1], [1, 2, 3, 4, 5, 6, 7]]}"#,
            r#"{"array": [[1, 2, 3], [4, 5, 6], [7, 8, {"a": [1]}], [1, 2, 3], [4, 5]]}"#,
            r#"{"array": [["a", 1], [2, 3]]}"#,
            r#"{"array": [[], [1]]}"#,
            r#"{"array": [[], 1]}"#,
            r#"{"array": [[1], []]}"#,
            r#"{"array": [[[]], [[]], [[], []]]}"#,
            r#"{"array": []}"#,
            r#"{"array": [[]]}"#,
            r#"{"array": 7}"#,
            r#"{"array": 2.5}"#,
            r#"{"array": false}"#,
            r#"{"array": null}"#,
            r#"{"array": "x"}"#,
            r#"{"array": {"a": 1}}"#,
            r#"{"array": [null, [1, 2]]}"#,
            r#"{"array": [1, 18446744073709551615, 0.5]}"#,
            r#"{"array": [true, 18446744073709551615]}"#,
            r#"{"array": [0, 1, 2, 300, -1, 70000, 2147483648, 1.5]}"#,
            r#"{"array": [true, false, 1, 0, 0.0]}"#,
            r#"{"array": [1e300, 1e-300, 3.4028235e38, 3.4028236e38]}"#,
            r#"{"array": [123456789012345678901234567890]}"#,
            r#"{"array": [[1, 2], [3, 4]], "shape": [4], "dtype": "int"}"#,
            r#"{"array": [1], "shape": [18446744073709551615, 2]}"#,
            r#"{"array": [1], "shape": [-1]}"#,
            r#"{"array": [1], "array": [2]}"#,
            r#"{"array": [1], "other": 1}"#,
            r#"{"shape": [1]}"#,
            r#"{"array": [1, 1e400]}"#,
            r#"{"array": [[1, 2], [3, 4], "\ud800"]}"#,
            r#"{"array": [[1, 2], [3, 4, 5], [1e400]]}"#,
            r#"{"array": [1, 2,]}"#,
            r#"{"array": [[1, 2], [3, 4]]"#,
            "false",
            "[1, 2]",
        ] {
            agrees(body);
        }
        let deep = format!(r#"{{"array": {}1{}}}"#, "[".repeat(127), "]".repeat(127));
        agrees(&deep);
        let deeper = format!(
            r#"{{"array": [[1], {}1{}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        agrees(&deeper);
        // Multi-byte, escaped and invalid UTF-8 strings after the first problem.
        agrees("{\"array\": [[1], [\"\u{e9}\\n\", 2]]}");
        let mut bad = br#"{"array": [[1, 2], [3], ["#.to_vec();
        bad.extend_from_slice(b"\"\xff\"]]}");
        with_max(1 << 24, || {
            let new = parse_json_body::<NdArray>(&bad).map(|_| ());
            let old = parse_json_body::<NdArrayOracle>(&bad).map(|_| ());
            assert_eq!(new, old);
        });
    }

    #[test]
    fn schema_documents_array_as_any_value() {
        let schema = serde_json::to_value(schemars::schema_for!(NdArray)).unwrap();
        assert_eq!(
            schema,
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "NdArray",
                "description": "The body `json_to_ndarray` accepts (Ray's `NdArray` schema).",
                "type": "object",
                "properties": {
                    "array": {"description": "The values: a number, a boolean, or nested lists of them (every list at one depth the\n same length)."},
                    "dtype": {
                        "description": "A numpy dtype name: `float32`, `float64`, `int32`, `int64`, `uint8`, `bool` (also\n `float`, `int`, `f4`, `f8`, `i4`, `i8`, `u1`). Inferred when absent, as numpy does: any\n float makes `float64`, else any integer `int64`, else `bool`.",
                        "type": ["string", "null"],
                        "default": null
                    },
                    "shape": {
                        "description": "The shape to reshape into; its product must equal the number of values.",
                        "type": ["array", "null"],
                        "default": null,
                        "items": {"type": "integer", "format": "uint64", "minimum": 0}
                    }
                },
                "additionalProperties": false,
                "required": ["array"]
            })
        );
    }
}
