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
//!   └── `StateError`          (also `ValueError`)

use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rlhf_core_kernels::CoreError;

pyo3::create_exception!(
    rlhf_core._core,
    RlhfCoreError,
    pyo3::exceptions::PyException,
    "Base class of every error raised by rlhf_core's Rust core."
);

/// Create `name` as a subclass of both `RlhfCoreError` and `builtin`, so users can catch
/// either the library's hierarchy or the familiar builtin.
fn make_sub(
    py: Python<'_>,
    name: &str,
    builtin: &Bound<'_, PyAny>,
    doc: &str,
) -> PyResult<Py<PyAny>> {
    let base = py.get_type::<RlhfCoreError>();
    let bases = PyTuple::new(py, [base.as_any(), builtin])?;
    let dict = pyo3::types::PyDict::new(py);
    dict.set_item("__doc__", doc)?;
    dict.set_item("__module__", "rlhf_core._core")?;
    let ty = py
        .import("builtins")?
        .getattr("type")?
        .call1((name, bases, dict))?;
    Ok(ty.unbind())
}

static SUBCLASSES: std::sync::OnceLock<[Py<PyAny>; 7]> = std::sync::OnceLock::new();

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("RlhfCoreError", py.get_type::<RlhfCoreError>())?;
    let b = py.import("builtins")?;
    let ve = b.getattr("ValueError")?;
    let te = b.getattr("TypeError")?;
    let ke = b.getattr("KeyError")?;
    let subs = [
        make_sub(py, "ShapeError", &ve, "Array lengths or shapes disagree.")?,
        make_sub(
            py,
            "DtypeError",
            &te,
            "An array has an unsupported element type.",
        )?,
        make_sub(
            py,
            "OffsetsError",
            &ve,
            "offsets are not a valid ragged layout.",
        )?,
        make_sub(
            py,
            "InvalidOptionError",
            &ve,
            "An option string or scalar is outside its allowed set or range.",
        )?,
        make_sub(
            py,
            "CapacityError",
            &ve,
            "A sequence does not fit a token budget or pack capacity.",
        )?,
        make_sub(
            py,
            "FieldError",
            &ke,
            "Unknown, missing or conflicting named field.",
        )?,
        make_sub(
            py,
            "StateError",
            &ve,
            "Serialized state cannot be restored.",
        )?,
    ];
    for (name, s) in [
        "ShapeError",
        "DtypeError",
        "OffsetsError",
        "InvalidOptionError",
        "CapacityError",
        "FieldError",
        "StateError",
    ]
    .iter()
    .zip(subs.iter())
    {
        m.add(*name, s.clone_ref(py))?;
    }
    let _ = SUBCLASSES.set(subs);
    Ok(())
}

/// Map a core error to its Python exception.
pub fn to_py(e: CoreError) -> PyErr {
    let idx = match &e {
        CoreError::Shape(_) => 0,
        CoreError::Dtype(_) => 1,
        CoreError::Offsets(_) => 2,
        CoreError::InvalidOption(_) => 3,
        CoreError::Capacity(_) => 4,
        CoreError::Field(_) => 5,
        CoreError::State(_) => 6,
    };
    let msg = e.message().to_string();
    Python::attach(|py| match SUBCLASSES.get() {
        Some(subs) => match subs[idx].bind(py).call1((msg.clone(),)) {
            Ok(inst) => PyErr::from_value(inst),
            Err(err) => err,
        },
        None => RlhfCoreError::new_err(msg),
    })
}

/// An unexpected internal failure (a caught panic), as the base `RlhfCoreError`.
pub fn internal_error(msg: String) -> PyErr {
    RlhfCoreError::new_err(msg)
}

/// `?`-friendly conversion: `core_fn(..).map_err(to_py)?` or `.py()?`.
pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
