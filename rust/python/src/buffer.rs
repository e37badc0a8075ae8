//! `rlhf_core._core._RolloutBuffer`: the core rollout buffer as a Python class, wrapped for
//! users by `rlhf_core.buffer.RolloutBuffer`.
//!
//! Each method borrows its arrays ([`crate::arrays`], [`crate::tokens`]), releases the GIL for
//! the work, calls the core and wraps fresh outputs without a copy; stored fields come back as
//! copies (snapshots must not alias the buffer's memory). Checkpoint dicts are built in
//! [`crate::state`]. No arithmetic here.
//!
//! **Threads.** One buffer may be used from several Python threads: the core buffer sits in a
//! read-write lock, so reads (materialising batches, statistics, copies of fields) run
//! together and writes (add, clear, compute_advantages, load) one at a time, each with the GIL
//! released for its work. A thread never waits for the lock while holding the GIL, and never
//! holds the lock while taking the GIL back ([`PyRolloutBuffer::read`], [`PyRolloutBuffer::write`]),
//! so the two locks cannot deadlock. Methods that only look at sizes take the lock without
//! releasing the GIL when it is free.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rlhf_core::buffer::advantages::compute;
use rlhf_core::buffer::estimators::{AdvantageOptions, Estimator, GroupArgs, KlPenalty, Whiten};
use rlhf_core::buffer::materialize::{self, Batch, MaterializeOptions};
use rlhf_core::buffer::summary::{advantage_moments, summary};
use rlhf_core::buffer::{AddBatch, Advantages, DType, Level, RolloutBuffer};
use rlhf_core::kernels::gae::{GaeOptions, Masked};
use rlhf_core::kernels::group::Scale;
use rlhf_core::kernels::kl::Estimator as KlEstimator;
use rlhf_core::CoreError;

use crate::arrays::{any_array, bools, indices, AnyArray};
use crate::convert::{column_to_numpy, int64_numpy, parse, vec_to_numpy, Wrap};
use crate::errors::{to_py, IntoPyResult};
use crate::gil::{run_kernel, without_gil};
use crate::select::{counts, FilterCounts};
use crate::state::{column_from, parts_from_dict, parts_to_dict};
use crate::tokens::{token_arg, TokenArg};

/// The core rollout buffer; use `rlhf_core.buffer.RolloutBuffer`.
#[pyclass(name = "_RolloutBuffer", module = "rlhf_core._core", frozen)]
pub struct PyRolloutBuffer {
    inner: RwLock<RolloutBuffer>,
}

// A panic inside the core (a bug, reported as `RlhfCoreError` by `run_kernel`) poisons the
// lock; the buffer stays usable, as it would be without the lock.
fn shared(lock: &RwLock<RolloutBuffer>) -> RwLockReadGuard<'_, RolloutBuffer> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn exclusive(lock: &RwLock<RolloutBuffer>) -> RwLockWriteGuard<'_, RolloutBuffer> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

impl PyRolloutBuffer {
    /// `f` on the buffer under the shared lock: at once (GIL held) when the lock is free, else
    /// waiting for it with the GIL released. For quick looks; work goes through [`Self::read`].
    fn peek<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&RolloutBuffer) -> T + Send) -> T {
        match self.inner.try_read() {
            Ok(b) => f(&b),
            Err(TryLockError::Poisoned(p)) => f(&p.into_inner()),
            Err(TryLockError::WouldBlock) => without_gil(py, || f(&shared(&self.inner))),
        }
    }

    /// The core call `f` on the buffer under the shared lock, with the GIL released.
    fn read<T: Send>(
        &self,
        py: Python<'_>,
        what: &str,
        f: impl FnOnce(&RolloutBuffer) -> Result<T, CoreError> + Send,
    ) -> PyResult<T> {
        run_kernel(py, what, || f(&shared(&self.inner)))
    }

    /// The core call `f` on the buffer under the exclusive lock, with the GIL released.
    fn write<T: Send>(
        &self,
        py: Python<'_>,
        what: &str,
        f: impl FnOnce(&mut RolloutBuffer) -> Result<T, CoreError> + Send,
    ) -> PyResult<T> {
        run_kernel(py, what, || f(&mut exclusive(&self.inner)))
    }
}

/// A materialised batch as `(dict of arrays, max_seqlen)` (arrays moved, not copied).
fn batch_to_dict<'py>(py: Python<'py>, batch: Batch) -> PyResult<(Bound<'py, PyDict>, usize)> {
    let d = PyDict::new(py);
    for a in batch.arrays {
        d.set_item(a.name, column_to_numpy(py, a.data, &a.shape)?)?;
    }
    Ok((d, batch.max_seqlen))
}

#[pymethods]
impl PyRolloutBuffer {
    #[new]
    #[pyo3(signature = (float_dtype = "float32"))]
    fn new(float_dtype: &str) -> PyResult<Self> {
        let dt: DType = parse(float_dtype)?;
        Ok(PyRolloutBuffer {
            inner: RwLock::new(RolloutBuffer::new(dt).py()?),
        })
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.peek(py, |b| b.len())
    }

    #[getter]
    fn num_response_tokens(&self, py: Python<'_>) -> usize {
        self.peek(py, |b| b.num_response_tokens())
    }

    #[getter]
    fn num_prompt_tokens(&self, py: Python<'_>) -> usize {
        self.peek(py, |b| b.num_prompt_tokens())
    }

    #[getter]
    fn version(&self, py: Python<'_>) -> u64 {
        self.peek(py, |b| b.version())
    }

    #[getter]
    fn float_dtype(&self, py: Python<'_>) -> &'static str {
        self.peek(py, |b| b.float_dtype().name())
    }

    #[getter]
    fn has_schema(&self, py: Python<'_>) -> bool {
        self.peek(py, |b| b.has_schema())
    }

    #[getter]
    fn nbytes(&self, py: Python<'_>) -> usize {
        self.peek(py, |b| b.nbytes())
    }

    #[getter]
    fn capacity_bytes(&self, py: Python<'_>) -> usize {
        self.peek(py, |b| b.capacity_bytes())
    }

    /// `{name: dtype}` of the per-token fields (response_ids first), in storage order.
    fn token_field_dtypes(&self, py: Python<'_>) -> Vec<(String, &'static str)> {
        self.peek(py, |b| {
            b.token_fields()
                .iter()
                .map(|(n, c)| (n.clone(), c.dtype().name()))
                .collect()
        })
    }

    /// `{name: dtype}` of the per-sequence fields, in storage order.
    fn seq_field_dtypes(&self, py: Python<'_>) -> Vec<(String, &'static str)> {
        self.peek(py, |b| {
            b.seq_fields()
                .iter()
                .map(|(n, c)| (n.clone(), c.dtype().name()))
                .collect()
        })
    }

    /// dtype of prompt_ids (None before the first add).
    fn prompt_dtype(&self, py: Python<'_>) -> Option<&'static str> {
        self.peek(py, |b| b.prompt_ids().map(|c| c.dtype().name()))
    }

    /// `(estimator, "token" | "sequence", has_returns)` of the computed advantages, or None.
    fn computed_info(&self, py: Python<'_>) -> Option<(String, &'static str, bool)> {
        self.peek(py, |b| {
            b.computed().map(|c| {
                (
                    c.estimator.clone(),
                    c.advantages.level().name(),
                    c.returns.is_some(),
                )
            })
        })
    }

    /// Add a batch. `prompt`, and each value of `token_fields`, is `("ragged", values, lengths)`,
    /// `("pieces", arrays, None)` or `("padded", values, mask)`; `seq_fields` maps names to
    /// 1-D arrays.
    fn add<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        token_fields: Vec<(String, Bound<'py, PyAny>)>,
        seq_fields: Vec<(String, Bound<'py, PyAny>)>,
    ) -> PyResult<()> {
        let prompt = token_arg("prompt_ids", prompt)?;
        let tokens: Vec<TokenArg<'py>> = token_fields
            .iter()
            .map(|(n, spec)| token_arg(n, spec))
            .collect::<PyResult<_>>()?;
        let seqs: Vec<(String, AnyArray<'py>)> = seq_fields
            .iter()
            .map(|(n, a)| {
                let a = any_array(a, n)?;
                a.ndim_is(n, 1, "1-D with one value per sequence")?;
                Ok((n.clone(), a))
            })
            .collect::<PyResult<_>>()?;
        let batch = AddBatch {
            prompt_ids: prompt.view()?,
            token_fields: tokens
                .iter()
                .map(|t| Ok((t.name().to_string(), t.view()?)))
                .collect::<PyResult<_>>()?,
            seq_fields: seqs
                .iter()
                .map(|(n, a)| Ok((n.clone(), a.slice(n)?)))
                .collect::<PyResult<_>>()?,
        };
        self.write(py, "RolloutBuffer.add", |b| b.add(&batch))
    }

    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.write(py, "RolloutBuffer.clear", |b| {
            b.clear();
            Ok(())
        })
    }

    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.write(py, "RolloutBuffer.reset", |b| {
            b.reset();
            Ok(())
        })
    }

    fn shrink_to_fit(&self, py: Python<'_>) -> PyResult<()> {
        self.write(py, "RolloutBuffer.shrink_to_fit", |b| {
            b.shrink_to_fit();
            Ok(())
        })
    }

    fn reserve(
        &self,
        py: Python<'_>,
        sequences: usize,
        prompt_tokens: usize,
        response_tokens: usize,
    ) -> PyResult<()> {
        self.write(py, "RolloutBuffer.reserve", |b| {
            b.reserve(sequences, prompt_tokens, response_tokens)
        })
    }

    /// Keep the sequences flagged in `keep` (bool, N), compacting every field in place.
    fn retain(&self, py: Python<'_>, keep: &Bound<'_, PyAny>) -> PyResult<usize> {
        let keep = bools(keep, "keep")?;
        self.write(py, "RolloutBuffer.retain", |b| b.retain_sequences(&keep))
    }

    /// Keep the first `n` sequences, in place.
    fn truncate(&self, py: Python<'_>, n: usize) -> PyResult<()> {
        self.write(py, "RolloutBuffer.truncate", |b| b.truncate_sequences(n))
    }

    /// Drop the groups whose scores are all equal (or whose std is at most `min_std`), in
    /// place; returns the keep flag of every former sequence and
    /// `(num_groups, kept_groups, kept_rows)`.
    #[pyo3(signature = (min_std=0.0))]
    fn filter_groups<'py>(
        &self,
        py: Python<'py>,
        min_std: f64,
    ) -> PyResult<(Bound<'py, PyAny>, FilterCounts)> {
        let (keep, c) = self.write(py, "RolloutBuffer.filter_groups", |b| {
            b.filter_groups(min_std)
        })?;
        let n = keep.len();
        Ok((vec_to_numpy(py, keep, &[n])?, counts(c)))
    }

    /// Offsets (int64, N+1) of `"prompt"` or `"response"` tokens (a copy).
    fn offsets<'py>(&self, py: Python<'py>, which: &str) -> PyResult<Bound<'py, PyAny>> {
        let prompt = match which {
            "prompt" => true,
            "response" => false,
            other => {
                return Err(to_py(CoreError::option(format!(
                    "which must be 'prompt' or 'response', got {other:?}"
                ))))
            }
        };
        let offsets = self.read(py, "RolloutBuffer.offsets", |b| {
            Ok(if prompt {
                b.prompt_offsets().to_vec()
            } else {
                b.response_offsets().to_vec()
            })
        })?;
        let n = offsets.len();
        vec_to_numpy(py, offsets, &[n])
    }

    /// Prompt + response length of every sequence (int64, N).
    fn total_lengths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let lengths = self.read(py, "RolloutBuffer.total_lengths", |b| Ok(b.total_lengths()))?;
        int64_numpy(py, lengths)
    }

    /// A copy of a stored field: `prompt_ids`, a per-token field, a per-sequence field,
    /// `advantages` or `returns` (in that order of precedence).
    fn field<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let col = self.read(py, "RolloutBuffer.field", |b| b.column(name).cloned())?;
        let n = col.len();
        column_to_numpy(py, col, &[n])
    }

    /// Which response tokens count (bool, one per response token, in the buffer's order):
    /// `loss_mask` true (when held) and the sequence's score not NaN (when held).
    fn valid_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v = self.read(py, "RolloutBuffer.valid_tokens", |b| {
            Ok(b.valid_tokens().to_vec())
        })?;
        let n = v.len();
        vec_to_numpy(py, v, &[n])
    }

    /// Number of valid response tokens of every sequence (int64, N).
    fn valid_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let counts = self.read(py, "RolloutBuffer.valid_counts", |b| {
            Ok(b.valid_tokens().counts())
        })?;
        int64_numpy(py, counts)
    }

    /// Summary statistics as a list of (name, value).
    fn stats(&self, py: Python<'_>) -> PyResult<Vec<(String, f64)>> {
        self.read(py, "RolloutBuffer.stats", |b| Ok(summary(b)))
    }

    /// Store advantages computed elsewhere: `level` is "token" or "sequence".
    #[pyo3(signature = (estimator, level, advantages, returns=None))]
    fn set_advantages(
        &self,
        py: Python<'_>,
        estimator: &str,
        level: Wrap<Level>,
        advantages: &Bound<'_, PyAny>,
        returns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let a = Advantages::new(level.0, column_from(advantages, "advantages")?);
        let r = returns.map(|r| column_from(r, "returns")).transpose()?;
        self.write(py, "RolloutBuffer.set_advantages", |b| {
            b.set_advantages(estimator, a, r)
        })
    }

    /// `(mean, std, min, max)` of the advantages over valid tokens / sequences, or None.
    fn advantage_moments(&self, py: Python<'_>) -> PyResult<Option<(f64, f64, f64, f64)>> {
        self.read(py, "RolloutBuffer.advantage_moments", |b| {
            Ok(advantage_moments(b).map(|d| (d.mean(), d.std(), d.min, d.max)))
        })
    }

    fn clear_advantages(&self, py: Python<'_>) -> PyResult<()> {
        self.write(py, "RolloutBuffer.clear_advantages", |b| {
            b.clear_advantages();
            Ok(())
        })
    }

    /// Run an advantage estimator on the stored fields, in place (see
    /// `rlhf_core.buffer.RolloutBuffer.compute_advantages`). Returns group statistics
    /// `(num_groups, num_nan, num_singleton, num_zero_std)` for group estimators, else None.
    #[pyo3(signature = (estimator, gamma=1.0, lam=1.0, masked="skip", kl_coef=0.0, kl_estimator="k1",
                        kl_clamp=None, ddof=1, eps=1e-6, singleton="zero", scale=None, whiten=None,
                        whiten_eps=1e-8, group_size=None))]
    #[allow(clippy::too_many_arguments)]
    fn compute_advantages(
        &self,
        py: Python<'_>,
        estimator: Wrap<Estimator>,
        gamma: f64,
        lam: f64,
        masked: &str,
        kl_coef: f64,
        kl_estimator: &str,
        kl_clamp: Option<f64>,
        ddof: i64,
        eps: f64,
        singleton: &str,
        scale: Option<Wrap<Scale>>,
        whiten: Option<Wrap<Whiten>>,
        whiten_eps: f64,
        group_size: Option<i64>,
    ) -> PyResult<Option<(usize, usize, usize, usize)>> {
        let masked: Masked = parse(masked)?;
        let kl_estimator: KlEstimator = parse(kl_estimator)?;
        let group = GroupArgs {
            scale: scale.map(|s| s.0),
            ddof,
            eps,
            singleton: parse(singleton)?,
            size: group_size,
        };
        let discount = GaeOptions { gamma, lam, masked };
        let kl = KlPenalty {
            coef: kl_coef,
            estimator: kl_estimator,
            clamp: kl_clamp,
        };
        let whiten = whiten.map(|w| w.0);
        let opts =
            AdvantageOptions::new(estimator.0, discount, kl, group, whiten, whiten_eps).py()?;
        let stats = self.write(py, "RolloutBuffer.compute_advantages", |b| {
            compute(b, &opts)
        })?;
        Ok(stats.map(|s| (s.num_groups, s.num_nan, s.num_singleton, s.num_zero_std)))
    }

    /// Materialise the sequences `idx` (int64) right-padded; returns (dict of arrays, max_seqlen).
    #[pyo3(signature = (idx, pad_token_id=0, pad_to_multiple_of=1))]
    fn padded<'py>(
        &self,
        py: Python<'py>,
        idx: &Bound<'py, PyAny>,
        pad_token_id: i64,
        pad_to_multiple_of: usize,
    ) -> PyResult<(Bound<'py, PyDict>, usize)> {
        let idx = indices(idx, "indices")?;
        let opts = MaterializeOptions {
            pad_token_id,
            pad_to_multiple_of,
        };
        let batch = self.read(py, "Minibatch.to_padded", |b| {
            materialize::padded(b, &idx, &opts)
        })?;
        batch_to_dict(py, batch)
    }

    /// Materialise the sequences `idx` (int64) packed into one row; returns (dict, max_seqlen).
    #[pyo3(signature = (idx, pad_token_id=0))]
    fn packed<'py>(
        &self,
        py: Python<'py>,
        idx: &Bound<'py, PyAny>,
        pad_token_id: i64,
    ) -> PyResult<(Bound<'py, PyDict>, usize)> {
        let idx = indices(idx, "indices")?;
        let opts = MaterializeOptions {
            pad_token_id,
            pad_to_multiple_of: 1,
        };
        let batch = self.read(py, "Minibatch.to_packed", |b| {
            materialize::packed(b, &idx, &opts)
        })?;
        batch_to_dict(py, batch)
    }

    /// Every piece of the buffer as numpy copies (see `RolloutBuffer.state_dict`).
    fn state_parts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let parts = self.read(py, "RolloutBuffer.state_dict", |b| Ok(b.to_parts()))?;
        parts_to_dict(py, parts)
    }

    /// Replace the contents with saved pieces (checked; on error nothing changes).
    fn load_state_parts(&self, py: Python<'_>, parts: &Bound<'_, PyDict>) -> PyResult<()> {
        let parts = parts_from_dict(parts)?;
        let fresh = run_kernel(py, "RolloutBuffer.load_state_dict", || {
            RolloutBuffer::from_parts(parts)
        })?;
        self.write(py, "RolloutBuffer.load_state_dict", |b| {
            b.replace_with(fresh);
            Ok(())
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRolloutBuffer>()
}
