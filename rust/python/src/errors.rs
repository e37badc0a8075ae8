//! One mapping from `CoreError` to typed Python exceptions.
//!
//! Hierarchy (defined here, re-exported by `rlhf_core.errors`):
//! `RlhfCoreError` (base, subclass of `Exception`)
//!   ├── `ShapeError`          (also `ValueError`)
//!   ├── `DtypeError`          (also `TypeError`)
//!   ├── `OffsetsError`        (also `ValueError`)
//!   ├── `InvalidOptionError`  (also `ValueError`)
//!   ├── `CapacityError`       (also `ValueError`)
//!   ├── `FieldError`          (also `KeyError`)
//!   ├── `StateError`          (also `ValueError`)
//!   └── `AllocationError`     (also `MemoryError`)
//!
//! [`EXCEPTIONS`] is the only list: registration walks it, and [`to_py`] finds a core error's
//! class by the same row.

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use rlhf_core::CoreError;

pyo3::create_exception!(
    rlhf_core._core,
    RlhfCoreError,
    pyo3::exceptions::PyException,
    "Base class of every error raised by rlhf_core's Rust core."
);

/// One exception class: which core errors it takes, its name, the builtin it also subclasses,
/// and its docstring.
struct Exception {
    matches: fn(&CoreError) -> bool,
    name: &'static str,
    builtin: &'static str,
    doc: &'static str,
}

const EXCEPTIONS: [Exception; 8] = [
    Exception {
        matches: |e| matches!(e, CoreError::Shape(_)),
        name: "ShapeError",
        builtin: "ValueError",
        doc: "Array lengths or shapes disagree.",
    },
    Exception {
        matches: |e| matches!(e, CoreError::Dtype(_)),
        name: "DtypeError",
        builtin: "TypeError",
        doc: "An array has an unsupported element type.",
    },
    Exception {
        matches: |e| matches!(e, CoreError::Offsets(_)),
        name: "OffsetsError",
        builtin: "ValueError",
        doc: "offsets are not a valid ragged layout.",
    },
    Exception {
        matches: |e| matches!(e, CoreError::InvalidOption(_)),
        name: "InvalidOptionError",
        builtin: "ValueError",
        doc: "An option string or scalar is outside its allowed set or range.",
    },
    Exception {
        matches: |e| matches!(e, CoreError::Capacity(_)),
        name: "CapacityError",
        builtin: "ValueError",
        doc: "A sequence does not fit a token budget or pack capacity.",
    },
    Exception {
        matches: |e| matches!(e, CoreError::Field(_)),
        name: "FieldError",
        builtin: "KeyError",
        doc: "Unknown, missing or conflicting named field.",
    },
    Exception {
        matches: |e| matches!(e, CoreError::State(_)),
        name: "StateError",
        builtin: "ValueError",
        doc: "Serialized state cannot be restored.",
    },
    Exception {
        matches: |e| matches!(e, CoreError::Memory(_)),
        name: "AllocationError",
        builtin: "MemoryError",
        doc: "An array too large to allocate, its size named by the argument that asked for it.",
    },
];

/// The classes made by [`register`], in the order of [`EXCEPTIONS`].
static CLASSES: OnceLock<Vec<Py<PyAny>>> = OnceLock::new();

/// Create `row.name` as a subclass of both `RlhfCoreError` and its builtin, so users can catch
/// either the library's hierarchy or the familiar builtin.
fn make_class(py: Python<'_>, row: &Exception) -> PyResult<Py<PyAny>> {
    let builtins = py.import("builtins")?;
    let base = py.get_type::<RlhfCoreError>();
    let bases = PyTuple::new(py, [base.as_any(), &builtins.getattr(row.builtin)?])?;
    let dict = PyDict::new(py);
    dict.set_item("__doc__", row.doc)?;
    dict.set_item("__module__", "rlhf_core._core")?;
    Ok(builtins
        .getattr("type")?
        .call1((row.name, bases, dict))?
        .unbind())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RlhfCoreError", py.get_type::<RlhfCoreError>())?;
    let classes = EXCEPTIONS
        .iter()
        .map(|row| make_class(py, row))
        .collect::<PyResult<Vec<_>>>()?;
    for (row, class) in EXCEPTIONS.iter().zip(&classes) {
        m.add(row.name, class.clone_ref(py))?;
    }
    let _ = CLASSES.set(classes);
    Ok(())
}

/// Map a core error to its Python exception.
pub fn to_py(e: CoreError) -> PyErr {
    let row = EXCEPTIONS.iter().position(|row| (row.matches)(&e));
    let msg = e.message().to_string();
    Python::attach(|py| match (row, CLASSES.get()) {
        (Some(i), Some(classes)) => match classes[i].bind(py).call1((msg.clone(),)) {
            Ok(inst) => PyErr::from_value(inst),
            Err(err) => err,
        },
        _ => RlhfCoreError::new_err(msg),
    })
}

/// An unexpected internal failure (a caught panic), as the base `RlhfCoreError`.
pub fn internal_error(msg: String) -> PyErr {
    RlhfCoreError::new_err(msg)
}

/// `?`-friendly conversion: `core_fn(..).py()?`.
pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
