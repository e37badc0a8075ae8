//! Python values ⇄ core values, once at the boundary.
//!
//! * Options: [`Wrap<T>`] (an argument type) and [`parse`] turn any core option enum
//!   (`Masked`, `Scale`, `Whiten`, `Level`, ...) from its Python string into the enum through
//!   its `FromStr`, so an unknown string is the core's `InvalidOptionError` naming the option
//!   and the core never sees a string.
//! * Outputs: fresh `Vec`s and columns move into numpy arrays without a copy; indices
//!   (`usize` in the core) become int64 arrays in one place.

use std::str::FromStr;

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{Element, PyArrayDyn};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;
use pyo3::types::PyList;
use rlhf_core::buffer::Column;
use rlhf_core::{memory, CoreError};

use crate::errors::{internal_error, to_py};

/// The core option enum `T` named by the Python string `s` (an `InvalidOptionError` naming
/// the option otherwise). Arguments with a string default are taken as `&str` and converted
/// by this on the first line of the binding: pyo3 renders only literal defaults into the
/// signature that `mypy.stubtest` checks against `_core.pyi`.
pub fn parse<T: FromStr<Err = CoreError>>(s: &str) -> PyResult<T> {
    s.parse().map_err(to_py)
}

/// A core option enum extracted from its Python string (for arguments without a string
/// default: required, or `None` by default).
pub struct Wrap<T>(pub T);

impl<'a, 'py, T: FromStr<Err = CoreError>> FromPyObject<'a, 'py> for Wrap<T> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let s: PyBackedStr = obj.extract()?;
        parse(&s).map(Wrap)
    }
}

/// Move a fresh Vec into a numpy array of `shape` (no copy).
pub fn vec_to_numpy<'py, T: Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let arr = ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| internal_error(format!("output shape {shape:?}: {e}")))?;
    Ok(PyArrayDyn::from_owned_array(py, arr).into_any())
}

/// Indices or counts (`usize`/`u64` in the core) as a 1-D int64 numpy array.
pub fn int64_numpy<'py, I>(py: Python<'py>, values: I) -> PyResult<Bound<'py, PyAny>>
where
    I: IntoIterator,
    I::Item: TryInto<i64>,
{
    let values = values.into_iter();
    let mut v: Vec<i64> = Vec::new();
    memory::reserve_exact(&mut v, values.size_hint().0, "an int64 output").map_err(to_py)?;
    for x in values {
        v.push(
            x.try_into()
                .map_err(|_| internal_error("an index does not fit in int64".into()))?,
        );
    }
    let n = v.len();
    vec_to_numpy(py, v, &[n])
}

/// A list of 1-D int64 arrays, one per row of indices.
pub fn int64_rows<'py>(py: Python<'py>, rows: Vec<Vec<usize>>) -> PyResult<Bound<'py, PyList>> {
    let arrays = rows
        .into_iter()
        .map(|r| int64_numpy(py, r))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, arrays)
}

/// Move a column into a numpy array of `shape` (no copy).
pub fn column_to_numpy<'py>(
    py: Python<'py>,
    col: Column,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    match col {
        Column::I32(v) => vec_to_numpy(py, v, shape),
        Column::I64(v) => vec_to_numpy(py, v, shape),
        Column::F32(v) => vec_to_numpy(py, v, shape),
        Column::F64(v) => vec_to_numpy(py, v, shape),
        Column::Bool(v) => vec_to_numpy(py, v, shape),
    }
}
