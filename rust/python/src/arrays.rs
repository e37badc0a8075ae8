//! The one vocabulary for borrowing numpy arrays, shared by the kernels and the buffer.
//!
//! Inputs are borrowed, never copied: C-contiguous arrays of the expected dtype, read through
//! numpy's borrow checker ([`typed`], [`AnyArray`]) or, for long lists of per-sequence arrays,
//! through the raw fast path of [`crate::tokens`]. `rlhf_core.ops` and `rlhf_core.buffer` convert torch tensors
//! and non-contiguous arrays first. A wrong dtype, layout or kind is a typed error naming the
//! argument.
//!
//! **The bool rule** ([`check_bool_bytes`]): a numpy bool array can hold bytes other than 0 and
//! 1 (a bool view of uint8 data, say); read as Rust `bool`s those would be undefined behaviour,
//! and read as bytes they would mean something else in one place than in another. Such arrays
//! are refused everywhere — kernel masks, buffer fields, per-sequence pieces — with a
//! `DtypeError` naming the argument (the check itself is `rlhf_core::bools`).

use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use rlhf_core::buffer::Slice;
use rlhf_core::layout::{ensure_same_shape, fmt_shape};
use rlhf_core::{CoreError, Float, Layout};

use crate::errors::{to_py, IntoPyResult};
use crate::gil::without_gil;

/// The dtypes a buffer field may have.
pub const BUFFER_DTYPES: &str = "int32, int64, float32, float64 or bool";
/// The dtypes a kernel mask may have.
pub const MASK_DTYPES: &str = "bool, uint8, int8, int32, int64, float32 or float64";

/// `"dtype float16"` for an array, `"Python type list"` for anything else.
pub fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!("dtype {}", a.dtype()),
        Err(_) => obj
            .get_type()
            .name()
            .map(|n| format!("Python type {n}"))
            .unwrap_or_else(|_| "an unknown type".into()),
    }
}

fn not_readable(name: &str, e: impl std::fmt::Display) -> PyErr {
    to_py(CoreError::shape(format!(
        "{name} cannot be borrowed for reading: {e}"
    )))
}

fn not_contiguous(name: &str) -> PyErr {
    to_py(CoreError::shape(format!(
        "{name} is not C-contiguous; pass numpy.ascontiguousarray({name}) (rlhf_core.ops and \
         rlhf_core.buffer do this for you)"
    )))
}

/// The bool rule (`rlhf_core::bools::check_bool_bytes`): every byte of a bool array's data
/// must be 0 or 1. Large arrays are checked with the GIL released.
pub fn check_bool_bytes(py: Python<'_>, bytes: &[u8], name: &str) -> PyResult<()> {
    if bytes.len() < 1 << 16 {
        return rlhf_core::bools::check_bool_bytes(bytes, name).py();
    }
    without_gil(py, || rlhf_core::bools::check_bool_bytes(bytes, name)).py()
}

/// The bytes of the bool array `obj`, checked by the bool rule.
fn bool_bytes<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArrayDyn<'py, u8>> {
    let view = obj.call_method1("view", ("u1",))?;
    let arr = view.cast::<PyArrayDyn<u8>>().map_err(PyErr::from)?;
    let ro = arr.try_readonly().map_err(|e| not_readable(name, e))?;
    match ro.as_slice() {
        Ok(bytes) => check_bool_bytes(obj.py(), bytes, name)?,
        Err(_) => {
            let bytes: Vec<u8> = ro.as_array().iter().copied().collect();
            check_bool_bytes(obj.py(), &bytes, name)?;
        }
    }
    Ok(ro)
}

/// The flags of a 1-D bool array `obj` (checked by the bool rule), as a `Vec<bool>`.
pub fn bools(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<bool>> {
    if obj.cast::<PyArrayDyn<bool>>().is_err() {
        return Err(to_py(CoreError::dtype(format!(
            "{name} must be a bool array, got {}",
            describe(obj)
        ))));
    }
    let ro = bool_bytes(obj, name)?;
    if ro.ndim() != 1 {
        return Err(to_py(CoreError::shape(format!(
            "{name} must be 1-D with one flag per sequence, got {} dimensions",
            ro.ndim()
        ))));
    }
    Ok(ro.as_array().iter().map(|&b| b != 0).collect())
}

/// Borrow `obj` as a readonly array of `T`, or fail with a `DtypeError` naming `name` and the
/// `expected` dtype(s).
pub fn typed<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    if obj.cast::<PyUntypedArray>().is_err() {
        return Err(to_py(CoreError::dtype(format!(
            "{name} must be a numpy.ndarray (rlhf_core.ops also takes torch CPU tensors), got {}",
            describe(obj)
        ))));
    }
    let arr = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        to_py(CoreError::dtype(format!(
            "{name} has {}; expected {expected}",
            describe(obj)
        )))
    })?;
    arr.try_readonly().map_err(|e| not_readable(name, e))
}

/// The contiguous data of a borrowed array.
pub fn slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| not_contiguous(name))
}

// ---------------------------------------------------------------------------------------------
// Kernel inputs: float arrays, masks, offsets
// ---------------------------------------------------------------------------------------------

/// A float32 or float64 array: the first float argument of a kernel, which fixes the dtype of
/// the others.
pub enum FloatArray<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

pub fn float_array<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<FloatArray<'py>> {
    if obj.cast::<PyArrayDyn<f32>>().is_ok() {
        return Ok(FloatArray::F32(typed(obj, name, "float32")?));
    }
    if obj.cast::<PyArrayDyn<f64>>().is_ok() {
        return Ok(FloatArray::F64(typed(obj, name, "float64")?));
    }
    typed::<f32>(obj, name, "float32 or float64").map(FloatArray::F32)
}

/// An array of the float dtype `F` of the argument `like`.
pub fn same_float<'py, F: Float + Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    like: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, F>> {
    typed::<F>(obj, name, &format!("{} like {like}", F::NAME))
}

pub fn opt_same_float<'py, F: Float + Element>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
    like: &str,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, F>>> {
    obj.map(|o| same_float::<F>(o, name, like)).transpose()
}

/// A token mask of any supported dtype (bool masks are read as their checked bytes).
pub enum Mask<'py> {
    U8(PyReadonlyArrayDyn<'py, u8>),
    I8(PyReadonlyArrayDyn<'py, i8>),
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

/// The argument `mask`, when given.
pub fn mask<'py>(obj: Option<&Bound<'py, PyAny>>) -> PyResult<Option<Mask<'py>>> {
    let Some(obj) = obj else { return Ok(None) };
    macro_rules! try_mask {
        ($t:ty, $v:ident) => {
            if obj.cast::<PyArrayDyn<$t>>().is_ok() {
                return Ok(Some(Mask::$v(typed(obj, "mask", MASK_DTYPES)?)));
            }
        };
    }
    if obj.cast::<PyArrayDyn<bool>>().is_ok() {
        return Ok(Some(Mask::U8(bool_bytes(obj, "mask")?)));
    }
    try_mask!(u8, U8);
    try_mask!(i8, I8);
    try_mask!(i32, I32);
    try_mask!(i64, I64);
    try_mask!(f32, F32);
    try_mask!(f64, F64);
    typed::<u8>(obj, "mask", MASK_DTYPES).map(|a| Some(Mask::U8(a)))
}

impl Mask<'_> {
    pub fn shape(&self) -> &[usize] {
        match self {
            Mask::U8(a) => a.shape(),
            Mask::I8(a) => a.shape(),
            Mask::I32(a) => a.shape(),
            Mask::I64(a) => a.shape(),
            Mask::F32(a) => a.shape(),
            Mask::F64(a) => a.shape(),
        }
    }
}

/// Bind `$m: Option<&[M]>` for the mask's element type `M` and evaluate `$body` (generic over
/// `M`) once per supported mask dtype.
macro_rules! with_mask {
    ($mask:expr, $m:ident => $body:expr) => {
        match $mask {
            None => {
                let $m: Option<&[bool]> = None;
                $body
            }
            Some($crate::arrays::Mask::U8(a)) => {
                let $m = Some($crate::arrays::slice(a, "mask")?);
                $body
            }
            Some($crate::arrays::Mask::I8(a)) => {
                let $m = Some($crate::arrays::slice(a, "mask")?);
                $body
            }
            Some($crate::arrays::Mask::I32(a)) => {
                let $m = Some($crate::arrays::slice(a, "mask")?);
                $body
            }
            Some($crate::arrays::Mask::I64(a)) => {
                let $m = Some($crate::arrays::slice(a, "mask")?);
                $body
            }
            Some($crate::arrays::Mask::F32(a)) => {
                let $m = Some($crate::arrays::slice(a, "mask")?);
                $body
            }
            Some($crate::arrays::Mask::F64(a)) => {
                let $m = Some($crate::arrays::slice(a, "mask")?);
                $body
            }
        }
    };
}
pub(crate) use with_mask;

/// The argument `offsets` (int64, 1-D), when given.
pub fn offsets<'py>(
    obj: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, i64>>> {
    let Some(obj) = obj else { return Ok(None) };
    let a = typed::<i64>(obj, "offsets", "int64")?;
    if a.ndim() != 1 {
        return Err(to_py(CoreError::offsets(format!(
            "offsets must be 1-D (N + 1 entries), got shape {}",
            fmt_shape(a.shape())
        ))));
    }
    Ok(Some(a))
}

/// The layout of the primary array `name` of shape `shape` (padded, one row, or ragged with
/// `offsets`), checking that a given mask has the same shape.
pub fn layout_of<'a>(
    shape: &[usize],
    name: &str,
    offsets: Option<&'a [i64]>,
    mask: Option<&Mask<'_>>,
) -> PyResult<Layout<'a>> {
    let layout = Layout::from_shape(shape, offsets, name).py()?;
    if let Some(m) = mask {
        ensure_same_shape("mask", m.shape(), name, shape).py()?;
    }
    Ok(layout)
}

/// A per-sequence array (one value per row) must be 1-D.
pub fn ensure_per_row(name: &str, shape: &[usize]) -> PyResult<()> {
    if shape.len() != 1 {
        return Err(to_py(CoreError::shape(format!(
            "{name} must be 1-D with one value per sequence, got shape {}",
            fmt_shape(shape)
        ))));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Buffer inputs: arrays of any buffer dtype, indices, lengths (per-token inputs of an add,
// with the per-sequence pieces fast path, are in `crate::tokens`)
// ---------------------------------------------------------------------------------------------

/// A borrowed array of one of the buffer's dtypes.
pub enum AnyArray<'py> {
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    Bool(PyReadonlyArrayDyn<'py, bool>),
}

/// Borrow `obj`, an array of a buffer dtype (bool arrays checked by the bool rule).
pub fn any_array<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<AnyArray<'py>> {
    macro_rules! try_t {
        ($t:ty, $v:ident) => {
            if let Ok(a) = obj.cast::<PyArrayDyn<$t>>() {
                return a
                    .try_readonly()
                    .map(AnyArray::$v)
                    .map_err(|e| not_readable(name, e));
            }
        };
    }
    try_t!(i32, I32);
    try_t!(i64, I64);
    try_t!(f32, F32);
    try_t!(f64, F64);
    if obj.cast::<PyArrayDyn<bool>>().is_ok() {
        bool_bytes(obj, name)?;
    }
    try_t!(bool, Bool);
    Err(to_py(CoreError::dtype(format!(
        "{name} has {}; expected a numpy array of {BUFFER_DTYPES}",
        describe(obj)
    ))))
}

impl AnyArray<'_> {
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyArray::I32(a) => a.shape(),
            AnyArray::I64(a) => a.shape(),
            AnyArray::F32(a) => a.shape(),
            AnyArray::F64(a) => a.shape(),
            AnyArray::Bool(a) => a.shape(),
        }
    }

    /// The contiguous data, typed.
    pub fn slice(&self, name: &str) -> PyResult<Slice<'_>> {
        Ok(match self {
            AnyArray::I32(a) => Slice::I32(slice(a, name)?),
            AnyArray::I64(a) => Slice::I64(slice(a, name)?),
            AnyArray::F32(a) => Slice::F32(slice(a, name)?),
            AnyArray::F64(a) => Slice::F64(slice(a, name)?),
            AnyArray::Bool(a) => Slice::Bool(slice(a, name)?),
        })
    }

    /// Fail with a `ShapeError` unless the array has `want` dimensions (`what` says how).
    pub fn ndim_is(&self, name: &str, want: usize, what: &str) -> PyResult<()> {
        let shape = self.shape();
        if shape.len() != want {
            return Err(to_py(CoreError::shape(format!(
                "{name} must be {what}, got shape {shape:?}"
            ))));
        }
        Ok(())
    }
}

/// A 1-D int64 array `name` (of any buffer dtype otherwise: refused naming int64).
fn int64_1d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArrayDyn<'py, i64>> {
    let a = any_array(obj, name)?;
    a.ndim_is(name, 1, "1-D")?;
    match a {
        AnyArray::I64(a) => Ok(a),
        _ => Err(to_py(CoreError::dtype(format!("{name} must be int64")))),
    }
}

/// Sequence indices (int64, 1-D, each >= 0).
pub fn indices(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<usize>> {
    let a = int64_1d(obj, name)?;
    slice(&a, name)?
        .iter()
        .map(|&i| {
            usize::try_from(i).map_err(|_| {
                to_py(CoreError::shape(format!(
                    "{name} holds {i}; indices must be >= 0"
                )))
            })
        })
        .collect()
}

/// Sequence lengths (int64, 1-D, each >= 0).
pub fn lengths(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<u64>> {
    let a = int64_1d(obj, name)?;
    rlhf_core::plan::check_lengths(slice(&a, name)?, name).py()
}
