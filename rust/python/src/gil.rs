//! The one place that releases the GIL. Every kernel call goes through [`without_gil`] (or
//! [`run_kernel`], which adds the panic guard), so a test with two Python threads can prove
//! kernels overlap.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;
use rlhf_core::CoreError;

use crate::errors::{internal_error, to_py};

/// Run `f` with the GIL released. `f` must not touch Python objects: borrow the numpy data
/// as slices first, compute inside, wrap the result after.
#[inline]
pub fn without_gil<T, F>(py: Python<'_>, f: F) -> T
where
    F: Send + FnOnce() -> T,
    T: Send,
{
    py.detach(f)
}

/// Run the core call `f` named `what` with the GIL released, map its `CoreError` to the typed
/// Python exception, and turn a Rust panic (a bug, never expected) into `RlhfCoreError`
/// instead of letting pyo3's `PanicException` (a `BaseException`) reach the caller.
#[inline]
pub fn run_kernel<T, F>(py: Python<'_>, what: &str, f: F) -> PyResult<T>
where
    F: Send + FnOnce() -> Result<T, CoreError>,
    T: Send,
{
    match without_gil(py, || catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_py(e)),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(internal_error(format!(
                "internal error in {what} (a bug in rlhf_core; please report it): {msg}"
            )))
        }
    }
}
