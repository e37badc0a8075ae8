//! `rlhf_core._core._GroupRefill`: dynamic sampling's refill bookkeeping
//! (`rlhf_core::buffer::refill`) as a Python class, wrapped for users by
//! `rlhf_core.buffer.GroupRefill`. Borrow, release the GIL, call the core, wrap; no
//! arithmetic here.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rlhf_core::buffer::{GroupRefill, RefillConfig};

use crate::convert::int64_numpy;
use crate::errors::IntoPyResult;
use crate::gil::run_kernel;
use crate::select::{group_filter, FilterCounts};
use crate::state::{refill_from_dict, refill_to_dict};

/// The refill of one step; use `rlhf_core.buffer.GroupRefill`.
#[pyclass(name = "_GroupRefill", module = "rlhf_core._core")]
pub struct PyGroupRefill {
    inner: GroupRefill,
}

#[pymethods]
impl PyGroupRefill {
    #[new]
    #[pyo3(signature = (batch_rows, group_size, max_rounds=0, min_std=0.0))]
    fn new(
        batch_rows: usize,
        group_size: usize,
        max_rounds: usize,
        min_std: f64,
    ) -> PyResult<Self> {
        let config = RefillConfig {
            batch_rows,
            group_size,
            max_rounds,
            min_std,
        };
        Ok(PyGroupRefill {
            inner: GroupRefill::new(config).py()?,
        })
    }

    /// Filter and append one scored round: float64 `scores` (N,), int64 `group_ids` (N,).
    /// Returns the round's bool keep flags and `(num_groups, kept_groups, kept_rows)`.
    fn add_round<'py>(
        &mut self,
        py: Python<'py>,
        scores: &Bound<'py, PyAny>,
        group_ids: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, FilterCounts)> {
        let inner = &mut self.inner;
        group_filter(py, "GroupRefill.add_round", scores, group_ids, |s, g| {
            inner.add_round(s, g)
        })
    }

    /// `(rows, kept_rows, groups_filled)`: int64 row indices into the rounds' rows in order.
    fn selection<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, usize, usize)> {
        let inner = &self.inner;
        let sel = run_kernel(py, "GroupRefill.selection", || inner.selection())?;
        Ok((int64_numpy(py, sel.rows)?, sel.kept_rows, sel.groups_filled))
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    #[getter]
    fn rounds(&self) -> usize {
        self.inner.rounds()
    }
    #[getter]
    fn generated(&self) -> usize {
        self.inner.generated()
    }
    #[getter]
    fn groups_dropped(&self) -> usize {
        self.inner.groups_dropped()
    }
    #[getter]
    fn kept_rows(&self) -> usize {
        self.inner.kept_rows()
    }
    #[getter]
    fn full(&self) -> bool {
        self.inner.is_full()
    }
    #[getter]
    fn exhausted(&self) -> bool {
        self.inner.rounds_exhausted()
    }
    #[getter]
    fn batch_rows(&self) -> usize {
        self.inner.config().batch_rows
    }
    #[getter]
    fn group_size(&self) -> usize {
        self.inner.config().group_size
    }
    #[getter]
    fn max_rounds(&self) -> usize {
        self.inner.config().max_rounds
    }
    #[getter]
    fn min_std(&self) -> f64 {
        self.inner.config().min_std
    }

    /// `{"rounds": int, "groups_dropped": int, "keep": [bool], "group_ids": [int]}`.
    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        refill_to_dict(py, self.inner.progress())
    }

    /// Continue from `state_dict()` output (same config); `StateError` on a malformed state.
    fn load_state_dict(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let progress = refill_from_dict(state)?;
        self.inner = GroupRefill::restore(*self.inner.config(), progress).py()?;
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGroupRefill>()
}
