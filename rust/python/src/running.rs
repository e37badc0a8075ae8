//! `rlhf_core._core.RunningMoments`: the core's mergeable running moments as a Python class,
//! wrapped for users by `rlhf_core.ops.RunningMoments`.

use numpy::{Element, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rlhf_core::kernels::running::RunningMoments;
use rlhf_core::layout::ensure_same_shape;
use rlhf_core::Float;

use crate::arrays::{float_array, mask, slice, with_mask, FloatArray, Mask};
use crate::errors::IntoPyResult;
use crate::gil::run_kernel;
use crate::state::{running_from_dict, running_to_dict};

/// Mergeable running mean / variance; see `rlhf_core.ops.RunningMoments`.
#[pyclass(name = "RunningMoments", module = "rlhf_core._core")]
#[derive(Clone)]
pub struct PyRunningMoments {
    inner: RunningMoments,
}

/// The moments of one batch, accumulated by the core with the GIL released.
fn batch_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<Mask<'py>>,
    ddof: i64,
) -> PyResult<RunningMoments> {
    if let Some(m) = &mask {
        ensure_same_shape("mask", m.shape(), "x", x.shape()).py()?;
    }
    let xs = slice(&x, "x")?;
    let mut batch = RunningMoments::new(ddof).py()?;
    let b = &mut batch;
    with_mask!(&mask, m => run_kernel(py, "RunningMoments.update", || b.update(xs, m)))?;
    Ok(batch)
}

#[pymethods]
impl PyRunningMoments {
    #[new]
    #[pyo3(signature = (ddof=1))]
    fn new(ddof: i64) -> PyResult<Self> {
        Ok(PyRunningMoments {
            inner: RunningMoments::new(ddof).py()?,
        })
    }

    /// Fold in the valid entries of `x` (any shape, float32/float64; optional same-shape mask).
    /// The batch is reduced without holding the object, so threads may update it concurrently.
    #[pyo3(signature = (x, mask=None))]
    fn update(
        slf: &Bound<'_, Self>,
        x: &Bound<'_, PyAny>,
        mask: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let ddof = i64::from(slf.borrow().inner.ddof);
        let mask = self::mask(mask)?;
        let batch = match float_array(x, "x")? {
            FloatArray::F32(a) => batch_typed(a, py, mask, ddof)?,
            FloatArray::F64(a) => batch_typed(a, py, mask, ddof)?,
        };
        slf.borrow_mut().inner.merge(&batch);
        Ok(())
    }

    /// Fold in another accumulator (e.g. from another rank).
    fn merge(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) -> PyResult<()> {
        let o = other.borrow().inner;
        slf.borrow_mut().inner.merge(&o);
        Ok(())
    }

    #[getter]
    fn count(&self) -> u64 {
        self.inner.count()
    }
    #[getter]
    fn mean(&self) -> f64 {
        self.inner.mean()
    }
    #[getter]
    fn var(&self) -> f64 {
        self.inner.var()
    }
    #[getter]
    fn std(&self) -> f64 {
        self.inner.std()
    }
    #[getter]
    fn ddof(&self) -> u32 {
        self.inner.ddof
    }

    /// `{"count": int, "mean": float, "m2": float, "ddof": int}`.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        running_to_dict(py, &self.inner)
    }

    /// Restore from `state_dict()` output; raises `StateError` on a malformed state.
    fn load_state_dict(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        self.inner = running_from_dict(state)?;
        Ok(())
    }

    fn __getstate__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.state_dict(py)
    }

    fn __setstate__(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        self.load_state_dict(state)
    }

    fn __getnewargs__(&self) -> (u32,) {
        (self.inner.ddof,)
    }

    fn __repr__(&self) -> String {
        format!(
            "RunningMoments(count={}, mean={}, var={}, ddof={})",
            self.inner.count(),
            self.inner.mean(),
            self.inner.var(),
            self.inner.ddof
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRunningMoments>()
}
