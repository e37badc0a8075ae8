//! `rlhf_core._core`: PyO3 glue over the `rlhf-core` crate. Borrow, check, release the GIL,
//! call the core, wrap the result; no arithmetic here.
//!
//! | module | holds |
//! |---|---|
//! | this file | registration, `__version__`, `BUILD_PROFILE`, parallelism and the fork hook |
//! | [`errors`] | the exception classes and the one `CoreError` → exception mapping |
//! | [`gil`] | the one place that releases the GIL (with the panic guard) |
//! | [`arrays`] | borrowing numpy arrays: dtypes, masks, offsets, indices, the bool rule |
//! | [`tokens`] | the per-token inputs of an add and the per-sequence pieces fast path |
//! | [`convert`] | option strings → core enums; outputs → numpy (no copy) |
//! | [`state`] | checkpoint dicts of the buffer, the sampler and running moments |
//! | [`pool`] | the output block cache of the kernels |
//! | [`kernels`] | the kernel functions (`gae`, `group_advantages`, `masked_whiten`, ...) |
//! | [`select`] | the selection kernels (`informative_groups`, `quantile`, `top_k_mask`) |
//! | [`running`] | `RunningMoments` |
//! | [`buffer`] | `_RolloutBuffer` |
//! | [`refill`] | `_GroupRefill` (dynamic sampling's refill bookkeeping) |
//! | [`plan`] | `_Sampler`, `balanced_partition`, `pack_sequences`, ... |

use pyo3::prelude::*;

mod arrays;
mod buffer;
mod convert;
mod errors;
mod gil;
mod kernels;
mod plan;
mod pool;
mod refill;
mod running;
mod select;
mod state;
mod tokens;

/// Disable rayon for good in a forked child (the parent's worker threads do not exist there).
#[pyfunction]
fn _after_fork_in_child() {
    rlhf_core::parallel::mark_forked_child();
}

/// Turn rayon parallelism on or off process-wide; see `rlhf_core.ops.set_parallelism`.
#[pyfunction]
fn set_parallelism(enabled: bool) {
    rlhf_core::parallel::set_parallel(enabled);
}

/// Whether kernels may run on several threads (false in a forked child).
#[pyfunction]
fn get_parallelism() -> bool {
    rlhf_core::parallel::parallel_enabled()
}

/// Free the cached output blocks; see `rlhf_core.ops.empty_cache`. Returns bytes released.
#[pyfunction]
fn empty_cache() -> usize {
    crate::pool::clear()
}

/// Process-wide settings: parallelism, the fork hook, the output cache.
fn register_settings(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(set_parallelism, m)?)?;
    m.add_function(wrap_pyfunction!(get_parallelism, m)?)?;
    m.add_function(wrap_pyfunction!(empty_cache, m)?)?;
    let py = m.py();
    let hook = m.getattr("_after_fork_in_child")?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", hook)?;
    py.import("os")?
        .getattr("register_at_fork")?
        .call((), Some(&kwargs))?;
    Ok(())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    errors::register(m)?;
    register_settings(m)?;
    kernels::register(m)?;
    select::register(m)?;
    running::register(m)?;
    buffer::register(m)?;
    refill::register(m)?;
    plan::register(m)?;
    Ok(())
}
