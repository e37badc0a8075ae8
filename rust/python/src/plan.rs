//! Bindings of minibatch planning: `rlhf_core._core._Sampler` and the free functions
//! `balanced_partition`, `pack_sequences`, `token_budget_batches`, `permutation`, wrapped for
//! users by `rlhf_core.buffer`. Lengths and indices are int64 arrays in and out.
//!
//! A sampler may be shared by threads: its state sits in a mutex, taken with the GIL released
//! when another thread holds it (and never held while taking the GIL back), so each
//! `next_batch` hands out a different batch.

use std::sync::{Mutex, MutexGuard, TryLockError};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rlhf_core::plan::{self, Method, PlanKind, Sampler, SamplerConfig};

use crate::arrays::{indices, lengths};
use crate::convert::{int64_numpy, int64_rows, parse};
use crate::errors::IntoPyResult;
use crate::gil::{run_kernel, without_gil};
use crate::state::{budget_of, sampler_from_dict, sampler_to_dict};

/// A resumable minibatch / micro-batch plan; use `rlhf_core.buffer` samplers.
#[pyclass(name = "_Sampler", module = "rlhf_core._core", frozen)]
pub struct PySampler {
    inner: Mutex<Sampler>,
}

impl PySampler {
    fn wrap(inner: Sampler) -> Self {
        PySampler {
            inner: Mutex::new(inner),
        }
    }

    /// `f` on the sampler under its mutex: at once when it is free, else waiting with the GIL
    /// released. A sampler's work is small (one epoch's plan at most), so it runs under the
    /// GIL.
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&mut Sampler) -> T + Send) -> T {
        match self.inner.try_lock() {
            Ok(mut s) => f(&mut s),
            Err(TryLockError::Poisoned(p)) => f(&mut p.into_inner()),
            Err(TryLockError::WouldBlock) => without_gil(py, || f(&mut lock(&self.inner))),
        }
    }
}

fn lock(m: &Mutex<Sampler>) -> MutexGuard<'_, Sampler> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[pymethods]
impl PySampler {
    /// A fixed-size minibatch plan over sequences of the given lengths (int64).
    #[staticmethod]
    fn minibatches(
        lengths: &Bound<'_, PyAny>,
        batch_size: usize,
        drop_last: bool,
        epochs: u64,
        seed: u64,
        shuffle: bool,
    ) -> PyResult<Self> {
        let lengths = self::lengths(lengths, "lengths")?;
        let config = SamplerConfig {
            kind: PlanKind::Minibatches {
                batch_size,
                drop_last,
            },
            epochs,
            seed,
            shuffle,
        };
        Ok(PySampler::wrap(Sampler::new(config, lengths).py()?))
    }

    /// A token-budget micro-batch plan over sequences of the given lengths (int64).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn micro_batches(
        lengths: &Bound<'_, PyAny>,
        token_budget: u64,
        packed: bool,
        bucket: bool,
        pad_to_multiple_of: u64,
        epochs: u64,
        seed: u64,
        shuffle: bool,
    ) -> PyResult<Self> {
        let lengths = self::lengths(lengths, "lengths")?;
        let budget = budget_of(token_budget, packed, pad_to_multiple_of);
        let config = SamplerConfig {
            kind: PlanKind::MicroBatches { budget, bucket },
            epochs,
            seed,
            shuffle,
        };
        Ok(PySampler::wrap(Sampler::new(config, lengths).py()?))
    }

    /// Resume from `state` (a dict from `state_dict()`) against these lengths.
    #[staticmethod]
    fn restore(state: &Bound<'_, PyDict>, lengths: &Bound<'_, PyAny>) -> PyResult<Self> {
        let st = sampler_from_dict(state)?;
        let lengths = self::lengths(lengths, "lengths")?;
        Ok(PySampler::wrap(Sampler::restore(st, lengths).py()?))
    }

    /// `(epoch, step, indices int64)` of the next batch, or None when exhausted.
    fn next_batch<'py>(&self, py: Python<'py>) -> PyResult<Option<(u64, u64, Bound<'py, PyAny>)>> {
        match self.with(py, |s| s.next_batch()).py()? {
            None => Ok(None),
            Some((e, s, idx)) => Ok(Some((e, s, int64_numpy(py, idx)?))),
        }
    }

    /// `(epoch, step)` of the next batch.
    #[getter]
    fn position(&self, py: Python<'_>) -> (u64, u64) {
        self.with(py, |s| s.position())
    }

    fn set_position(&self, py: Python<'_>, epoch: u64, step: u64) -> PyResult<()> {
        self.with(py, |s| s.set_position(epoch, step)).py()
    }

    fn batches_in_epoch(&self, py: Python<'_>, epoch: u64) -> PyResult<usize> {
        self.with(py, |s| s.batches_in_epoch(epoch)).py()
    }

    #[getter]
    fn epochs(&self, py: Python<'_>) -> u64 {
        self.with(py, |s| s.config().epochs)
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = self.with(py, |s| s.state());
        sampler_to_dict(py, &state)
    }
}

/// Balanced partition of `lengths` (int64) into `k` parts: `(order, offsets, loads)`, all int64;
/// part `p` is `order[offsets[p]:offsets[p + 1]]` (increasing indices).
#[pyfunction]
#[pyo3(signature = (lengths, k, equal_size=false, method="best"))]
fn balanced_partition<'py>(
    py: Python<'py>,
    lengths: &Bound<'py, PyAny>,
    k: usize,
    equal_size: bool,
    method: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let lengths = self::lengths(lengths, "lengths")?;
    let method: Method = parse(method)?;
    let p = run_kernel(py, "balanced_partition", || {
        plan::balanced_partition(&lengths, k, equal_size, method)
    })?;
    Ok((
        int64_numpy(py, p.order)?,
        int64_numpy(py, p.offsets)?,
        int64_numpy(py, p.loads)?,
    ))
}

/// First-fit-decreasing packing of `lengths` (int64) into rows of `capacity`:
/// (list of index arrays, loads int64).
#[pyfunction]
fn pack_sequences<'py>(
    py: Python<'py>,
    lengths: &Bound<'py, PyAny>,
    capacity: u64,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyAny>)> {
    let lengths = self::lengths(lengths, "lengths")?;
    let p = run_kernel(py, "pack_sequences", || plan::pack(&lengths, capacity))?;
    Ok((int64_rows(py, p.rows)?, int64_numpy(py, p.loads)?))
}

/// Token-budget micro-batches of the sequences `order` (int64 indices into `lengths`).
#[pyfunction]
#[pyo3(signature = (order, lengths, token_budget, packed=false, bucket=true, pad_to_multiple_of=1))]
fn token_budget_batches<'py>(
    py: Python<'py>,
    order: &Bound<'py, PyAny>,
    lengths: &Bound<'py, PyAny>,
    token_budget: u64,
    packed: bool,
    bucket: bool,
    pad_to_multiple_of: u64,
) -> PyResult<Bound<'py, PyList>> {
    let order = indices(order, "order")?;
    let lengths = self::lengths(lengths, "lengths")?;
    let budget = budget_of(token_budget, packed, pad_to_multiple_of);
    let b = run_kernel(py, "token_budget_batches", || {
        plan::token_budget_batches(&order, &lengths, budget, bucket)
    })?;
    int64_rows(py, b)
}

/// The permutation of `0..n` that epoch `epoch` of seed `seed` uses (int64).
#[pyfunction]
fn permutation<'py>(
    py: Python<'py>,
    n: usize,
    seed: u64,
    epoch: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let p = run_kernel(py, "permutation", || plan::permutation(n, seed, epoch))?;
    int64_numpy(py, p)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySampler>()?;
    m.add_function(wrap_pyfunction!(balanced_partition, m)?)?;
    m.add_function(wrap_pyfunction!(pack_sequences, m)?)?;
    m.add_function(wrap_pyfunction!(token_budget_batches, m)?)?;
    m.add_function(wrap_pyfunction!(permutation, m)?)?;
    Ok(())
}
