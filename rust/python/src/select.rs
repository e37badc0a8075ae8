//! The selection kernels (`informative_groups`, `quantile`, `top_k_mask`): borrow, release
//! the GIL, call `rlhf_core::kernels::select`, wrap. No arithmetic here.

use numpy::PyUntypedArrayMethods;
use pyo3::prelude::*;
use rlhf_core::kernels::select as k_select;
use rlhf_core::CoreError;

use crate::arrays::{slice, typed};
use crate::convert::vec_to_numpy;
use crate::errors::to_py;
use crate::gil::run_kernel;

/// `(num_groups, kept_groups, kept_rows)` of a group filter.
pub type FilterCounts = (usize, usize, usize);

pub fn counts(c: k_select::GroupFilterCounts) -> FilterCounts {
    (c.num_groups, c.kept_groups, c.kept_rows)
}

fn one_d(a: &numpy::PyReadonlyArrayDyn<'_, impl numpy::Element>, name: &str) -> PyResult<()> {
    if a.ndim() != 1 {
        return Err(to_py(CoreError::shape(format!(
            "{name} must be 1-D, got {} dimensions",
            a.ndim()
        ))));
    }
    Ok(())
}

/// Which rows belong to an informative group; see `rlhf_core.ops.informative_groups`.
#[pyfunction]
#[pyo3(signature = (scores, group_ids, min_std=0.0))]
fn informative_groups<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    group_ids: &Bound<'py, PyAny>,
    min_std: f64,
) -> PyResult<(Bound<'py, PyAny>, FilterCounts)> {
    group_filter(py, "informative_groups", scores, group_ids, |s, g| {
        k_select::informative_groups(s, g, min_std)
    })
}

/// A group filter over `scores` (1-D float64) and `group_ids` (1-D int64): borrows both,
/// runs `filter` without the GIL (`what` names it in a panic's error), and returns its keep
/// flags as a numpy bool array with its counts. `informative_groups` and
/// `GroupRefill.add_round` are this call.
pub fn group_filter<'py, F>(
    py: Python<'py>,
    what: &str,
    scores: &Bound<'py, PyAny>,
    group_ids: &Bound<'py, PyAny>,
    filter: F,
) -> PyResult<(Bound<'py, PyAny>, FilterCounts)>
where
    F: Send + FnOnce(&[f64], &[i64]) -> Result<(Vec<bool>, k_select::GroupFilterCounts), CoreError>,
{
    let s = typed::<f64>(scores, "scores", "float64")?;
    let g = typed::<i64>(group_ids, "group_ids", "int64")?;
    one_d(&s, "scores")?;
    one_d(&g, "group_ids")?;
    let (s, g) = (slice(&s, "scores")?, slice(&g, "group_ids")?);
    let (keep, c) = run_kernel(py, what, || filter(s, g))?;
    let n = keep.len();
    Ok((vec_to_numpy(py, keep, &[n])?, counts(c)))
}

/// The `q` quantile with linear interpolation; see `rlhf_core.ops.quantile`.
#[pyfunction]
fn quantile(py: Python<'_>, values: &Bound<'_, PyAny>, q: f64) -> PyResult<f64> {
    let v = typed::<f64>(values, "values", "float64")?;
    one_d(&v, "values")?;
    let v = slice(&v, "values")?;
    run_kernel(py, "quantile", || k_select::quantile_linear(v, q))
}

/// A mask of the `k` largest values; see `rlhf_core.ops.top_k_mask`.
#[pyfunction]
fn top_k_mask<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    k: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let v = typed::<f64>(values, "values", "float64")?;
    one_d(&v, "values")?;
    let v = slice(&v, "values")?;
    let out = run_kernel(py, "top_k_mask", || k_select::top_k_mask(v, k))?;
    let n = out.len();
    vec_to_numpy(py, out, &[n])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(informative_groups, m)?)?;
    m.add_function(wrap_pyfunction!(quantile, m)?)?;
    m.add_function(wrap_pyfunction!(top_k_mask, m)?)?;
    Ok(())
}
