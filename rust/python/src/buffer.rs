//! `rlhf_core._core._RolloutBuffer`: the core rollout buffer as a Python class, wrapped for
//! users by `rlhf_core.buffer.RolloutBuffer`.
//!
//! Each method borrows its arrays ([`crate::arrays`], [`crate::tokens`]), releases the GIL for
//! the work, calls the core and wraps fresh outputs without a copy; stored fields come back as
//! copies (snapshots must not alias the buffer's memory). Checkpoint dicts are built in
//! [`crate::state`]. No arithmetic here.

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

use crate::arrays::{any_array, indices, AnyArray};
use crate::convert::{column_copy, column_to_numpy, int64_numpy, parse, vec_to_numpy, Wrap};
use crate::errors::{to_py, IntoPyResult};
use crate::gil::run_kernel;
use crate::state::{buffer_to_dict, column_from, parts_from_dict};
use crate::tokens::{token_arg, TokenArg};

/// The core rollout buffer; use `rlhf_core.buffer.RolloutBuffer`.
#[pyclass(name = "_RolloutBuffer", module = "rlhf_core._core")]
pub struct PyRolloutBuffer {
    inner: RolloutBuffer,
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
            inner: RolloutBuffer::new(dt).py()?,
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn num_response_tokens(&self) -> usize {
        self.inner.num_response_tokens()
    }

    #[getter]
    fn num_prompt_tokens(&self) -> usize {
        self.inner.num_prompt_tokens()
    }

    #[getter]
    fn version(&self) -> u64 {
        self.inner.version()
    }

    #[getter]
    fn float_dtype(&self) -> &'static str {
        self.inner.float_dtype().name()
    }

    #[getter]
    fn has_schema(&self) -> bool {
        self.inner.has_schema()
    }

    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    #[getter]
    fn capacity_bytes(&self) -> usize {
        self.inner.capacity_bytes()
    }

    /// `{name: dtype}` of the per-token fields (response_ids first), in storage order.
    fn token_field_dtypes(&self) -> Vec<(String, &'static str)> {
        self.inner
            .token_fields()
            .iter()
            .map(|(n, c)| (n.clone(), c.dtype().name()))
            .collect()
    }

    /// `{name: dtype}` of the per-sequence fields, in storage order.
    fn seq_field_dtypes(&self) -> Vec<(String, &'static str)> {
        self.inner
            .seq_fields()
            .iter()
            .map(|(n, c)| (n.clone(), c.dtype().name()))
            .collect()
    }

    /// dtype of prompt_ids (None before the first add).
    fn prompt_dtype(&self) -> Option<&'static str> {
        self.inner.prompt_ids().map(|c| c.dtype().name())
    }

    /// `(estimator, "token" | "sequence", has_returns)` of the computed advantages, or None.
    fn computed_info(&self) -> Option<(String, &'static str, bool)> {
        self.inner.computed().map(|c| {
            (
                c.estimator.clone(),
                c.advantages.level().name(),
                c.returns.is_some(),
            )
        })
    }

    /// Add a batch. `prompt`, and each value of `token_fields`, is `("ragged", values, lengths)`,
    /// `("pieces", arrays, None)` or `("padded", values, mask)`; `seq_fields` maps names to
    /// 1-D arrays.
    fn add<'py>(
        &mut self,
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
        let inner = &mut self.inner;
        run_kernel(py, "RolloutBuffer.add", || inner.add(&batch))
    }

    fn clear(&mut self) {
        self.inner.clear();
    }

    fn reset(&mut self) {
        self.inner.reset();
    }

    fn shrink_to_fit(&mut self) {
        self.inner.shrink_to_fit();
    }

    fn reserve(&mut self, sequences: usize, prompt_tokens: usize, response_tokens: usize) {
        self.inner
            .reserve(sequences, prompt_tokens, response_tokens);
    }

    /// Offsets (int64, N+1) of `"prompt"` or `"response"` tokens (a copy).
    fn offsets<'py>(&self, py: Python<'py>, which: &str) -> PyResult<Bound<'py, PyAny>> {
        let offsets = match which {
            "prompt" => self.inner.prompt_offsets(),
            "response" => self.inner.response_offsets(),
            other => {
                return Err(to_py(CoreError::option(format!(
                    "which must be 'prompt' or 'response', got {other:?}"
                ))))
            }
        };
        Ok(numpy::PyArray1::from_slice(py, offsets).into_any())
    }

    /// Prompt + response length of every sequence (int64, N).
    fn total_lengths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        int64_numpy(py, self.inner.total_lengths())
    }

    /// A copy of a stored field: `prompt_ids`, a per-token field, a per-sequence field,
    /// `advantages` or `returns` (in that order of precedence).
    fn field<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        Ok(column_copy(py, self.inner.column(name).py()?))
    }

    /// Which response tokens count (bool, one per response token, in the buffer's order):
    /// `loss_mask` true (when held) and the sequence's score not NaN (when held).
    fn valid_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = &self.inner;
        let v = run_kernel(py, "RolloutBuffer.valid_tokens", || {
            Ok(inner.valid_tokens().to_vec())
        })?;
        let n = v.len();
        vec_to_numpy(py, v, &[n])
    }

    /// Number of valid response tokens of every sequence (int64, N).
    fn valid_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = &self.inner;
        let counts = run_kernel(py, "RolloutBuffer.valid_counts", || {
            Ok(inner.valid_tokens().counts())
        })?;
        int64_numpy(py, counts)
    }

    /// Summary statistics as a list of (name, value).
    fn stats(&self, py: Python<'_>) -> PyResult<Vec<(String, f64)>> {
        let inner = &self.inner;
        run_kernel(py, "RolloutBuffer.stats", || Ok(summary(inner)))
    }

    /// Store advantages computed elsewhere: `level` is "token" or "sequence".
    #[pyo3(signature = (estimator, level, advantages, returns=None))]
    fn set_advantages(
        &mut self,
        estimator: &str,
        level: Wrap<Level>,
        advantages: &Bound<'_, PyAny>,
        returns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let a = Advantages::new(level.0, column_from(advantages, "advantages")?);
        let r = returns.map(|r| column_from(r, "returns")).transpose()?;
        self.inner.set_advantages(estimator, a, r).py()
    }

    /// `(mean, std, min, max)` of the advantages over valid tokens / sequences, or None.
    fn advantage_moments(&self) -> Option<(f64, f64, f64, f64)> {
        advantage_moments(&self.inner).map(|d| (d.mean(), d.std(), d.min, d.max))
    }

    fn clear_advantages(&mut self) {
        self.inner.clear_advantages();
    }

    /// Run an advantage estimator on the stored fields, in place (see
    /// `rlhf_core.buffer.RolloutBuffer.compute_advantages`). Returns group statistics
    /// `(num_groups, num_nan, num_singleton, num_zero_std)` for group estimators, else None.
    #[pyo3(signature = (estimator, gamma=1.0, lam=1.0, masked="skip", kl_coef=0.0, kl_estimator="k1",
                        kl_clamp=None, ddof=1, eps=1e-6, singleton="zero", scale=None, whiten=None,
                        whiten_eps=1e-8, group_size=None))]
    #[allow(clippy::too_many_arguments)]
    fn compute_advantages(
        &mut self,
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
        let inner = &mut self.inner;
        let stats = run_kernel(py, "RolloutBuffer.compute_advantages", || {
            compute(inner, &opts)
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
        let inner = &self.inner;
        let batch = run_kernel(py, "Minibatch.to_padded", || {
            materialize::padded(inner, &idx, &opts)
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
        let inner = &self.inner;
        let batch = run_kernel(py, "Minibatch.to_packed", || {
            materialize::packed(inner, &idx, &opts)
        })?;
        batch_to_dict(py, batch)
    }

    /// Every piece of the buffer as numpy copies (see `RolloutBuffer.state_dict`).
    fn state_parts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        buffer_to_dict(py, &self.inner)
    }

    /// Replace the contents with saved pieces (checked; on error nothing changes).
    fn load_state_parts(&mut self, parts: &Bound<'_, PyDict>) -> PyResult<()> {
        let fresh = RolloutBuffer::from_parts(parts_from_dict(parts)?).py()?;
        self.inner.replace_with(fresh);
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRolloutBuffer>()
}
