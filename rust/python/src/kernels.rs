//! Bindings of the advantage and statistics kernels (`rlhf_core._core.<kernel>`), wrapped for
//! users by `rlhf_core.ops`.
//!
//! Each binding borrows its arrays ([`crate::arrays`]), checks dtypes and shapes, releases the
//! GIL, calls the core and wraps freshly allocated outputs as numpy arrays without a copy
//! ([`OutBuf`]). Option strings become core enums on
//! the first line ([`parse`]). No arithmetic lives here.
//!
//! Every kernel is a public function taking Python objects, which picks the float dtype of
//! its first float argument, and a generic `*_typed` function that does the rest for that
//! dtype.

use numpy::{Element, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use rlhf_core::kernels::gae::{GaeOptions, Masked};
use rlhf_core::kernels::group::{GroupOptions, Groups};
use rlhf_core::kernels::kl::{check_clamp, Estimator, KlFloat};
use rlhf_core::kernels::stats::{Axis, WhitenOptions};
use rlhf_core::kernels::tokens::Reduce;
use rlhf_core::kernels::{gae as k_gae, group as k_group, kl as k_kl, returns as k_returns};
use rlhf_core::kernels::{stats as k_stats, tokens as k_tokens};
use rlhf_core::layout::{ensure_same_shape, fmt_shape};
use rlhf_core::{CoreError, Float, Layout};

use crate::arrays::{
    ensure_per_row, float_array, layout_of, mask, offsets, opt_same_float, same_float, slice,
    typed, with_mask, FloatArray, Mask,
};
use crate::convert::parse;
use crate::errors::{to_py, IntoPyResult};
use crate::gil::run_kernel;
use crate::pool::OutBuf;

/// Call the generic `$f::<F>(array, args...)` for the float dtype of the argument `$x`.
macro_rules! dispatch_float {
    ($x:expr, $name:expr, $f:ident($($arg:expr),*)) => {
        match float_array($x, $name)? {
            FloatArray::F32(a) => $f(a, $($arg),*),
            FloatArray::F64(a) => $f(a, $($arg),*),
        }
    };
}

/// The borrowed `offsets` slice, when given.
macro_rules! offsets_slice {
    ($o:expr) => {
        $o.as_ref().map(|o| slice(o, "offsets")).transpose()?
    };
}

// ---------------------------------------------------------------------------------------------
// GAE and discounted returns
// ---------------------------------------------------------------------------------------------

/// GAE advantages and returns; see `rlhf_core.ops.gae`.
#[pyfunction]
#[pyo3(signature = (rewards, values, mask=None, offsets=None, bootstrap=None, gamma=1.0, lam=1.0, masked="skip"))]
#[allow(clippy::too_many_arguments)]
fn gae<'py>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    values: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    bootstrap: Option<&Bound<'py, PyAny>>,
    gamma: f64,
    lam: f64,
    masked: &str,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let opts = GaeOptions {
        gamma,
        lam,
        masked: parse(masked)?,
    };
    let (mask, offsets) = (self::mask(mask)?, self::offsets(offsets)?);
    let off = offsets_slice!(offsets);
    dispatch_float!(
        rewards,
        "rewards",
        gae_typed(py, values, mask, off, bootstrap, opts)
    )
}

fn gae_typed<'py, F: Float + Element>(
    rewards: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    mask: Option<Mask<'py>>,
    offsets: Option<&[i64]>,
    bootstrap: Option<&Bound<'py, PyAny>>,
    opts: GaeOptions,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let shape = rewards.shape().to_vec();
    let layout = layout_of(&shape, "rewards", offsets, mask.as_ref())?;
    let values = same_float::<F>(values, "values", "rewards")?;
    ensure_same_shape("values", values.shape(), "rewards", &shape).py()?;
    let bootstrap = opt_same_float::<F>(bootstrap, "bootstrap", "rewards")?;
    if let Some(b) = &bootstrap {
        ensure_per_row("bootstrap", b.shape())?;
    }
    let (r, v) = (slice(&rewards, "rewards")?, slice(&values, "values")?);
    let b = bootstrap
        .as_ref()
        .map(|b| slice(b, "bootstrap"))
        .transpose()?;
    let n = layout.n_slots();
    // One allocation for both outputs (two views of a (2, ...) array): two separate large
    // buffers freed together push glibc to return them to the OS on every call, and the next
    // call pays a page fault per 4 KiB (measured: 2.5x slower at 1024x2048 float32).
    let mut both = OutBuf::<F>::new(2 * n)?;
    let (adv, ret) = both.as_mut_slice().split_at_mut(n);
    with_mask!(&mask, m => run_kernel(py, "gae", || {
        k_gae::gae(&layout, r, v, m, b, opts, adv, ret)
    }))?;
    let dims: Vec<usize> = std::iter::once(2).chain(shape).collect();
    let both = both.into_numpy(py, &dims)?;
    Ok((both.get_item(0)?, both.get_item(1)?))
}

/// Discounted reward-to-go; see `rlhf_core.ops.discounted_returns`.
#[pyfunction]
#[pyo3(signature = (rewards, mask=None, offsets=None, gamma=1.0, masked="skip"))]
fn discounted_returns<'py>(
    py: Python<'py>,
    rewards: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    gamma: f64,
    masked: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let masked: Masked = parse(masked)?;
    let (mask, offsets) = (self::mask(mask)?, self::offsets(offsets)?);
    let off = offsets_slice!(offsets);
    dispatch_float!(
        rewards,
        "rewards",
        returns_typed(py, mask, off, gamma, masked)
    )
}

fn returns_typed<'py, F: Float + Element>(
    rewards: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<Mask<'py>>,
    offsets: Option<&[i64]>,
    gamma: f64,
    masked: Masked,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = rewards.shape().to_vec();
    let layout = layout_of(&shape, "rewards", offsets, mask.as_ref())?;
    let r = slice(&rewards, "rewards")?;
    let mut out = OutBuf::<F>::new(layout.n_slots())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "discounted_returns", || {
        k_returns::discounted_returns(&layout, r, m, gamma, masked, o)
    }))?;
    out.into_numpy(py, &shape)
}

// ---------------------------------------------------------------------------------------------
// Group advantages
// ---------------------------------------------------------------------------------------------

/// `(num_groups, num_nan, num_singleton, num_zero_std)`.
type GroupCounts = (usize, usize, usize, usize);

/// Group-relative advantages; see `rlhf_core.ops.group_advantages`. Returns
/// `(advantages, (num_groups, num_nan, num_singleton, num_zero_std))`.
#[pyfunction]
#[pyo3(signature = (scores, group_ids=None, group_size=None, baseline="mean", scale="group", ddof=1, eps=1e-6, singleton="zero"))]
#[allow(clippy::too_many_arguments)]
fn group_advantages<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    group_ids: Option<&Bound<'py, PyAny>>,
    group_size: Option<i64>,
    baseline: &str,
    scale: &str,
    ddof: i64,
    eps: f64,
    singleton: &str,
) -> PyResult<(Bound<'py, PyAny>, GroupCounts)> {
    let (baseline, scale, singleton) = (parse(baseline)?, parse(scale)?, parse(singleton)?);
    let opts = GroupOptions::new(baseline, scale, ddof, eps, singleton).py()?;
    let ids = group_ids
        .map(|g| typed::<i64>(g, "group_ids", "int64"))
        .transpose()?;
    if let Some(ids) = &ids {
        if ids.ndim() != 1 {
            return Err(to_py(CoreError::shape(format!(
                "group_ids must be 1-D with one id per sequence, got shape {}",
                fmt_shape(ids.shape())
            ))));
        }
    }
    let ids = ids.as_ref().map(|i| slice(i, "group_ids")).transpose()?;
    let groups = Groups::from_args(ids, group_size).py()?;
    dispatch_float!(scores, "scores", group_typed(py, groups, opts))
}

fn group_typed<'py, F: Float + Element>(
    scores: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    groups: Groups,
    opts: GroupOptions,
) -> PyResult<(Bound<'py, PyAny>, GroupCounts)> {
    ensure_per_row("scores", scores.shape())?;
    let s = slice(&scores, "scores")?;
    let mut out = OutBuf::<F>::new(s.len())?;
    let o = out.as_mut_slice();
    let st = run_kernel(py, "group_advantages", || {
        k_group::group_advantages(s, groups, &opts, o)
    })?;
    Ok((
        out.into_numpy(py, &[s.len()])?,
        (st.num_groups, st.num_nan, st.num_singleton, st.num_zero_std),
    ))
}

// ---------------------------------------------------------------------------------------------
// Masked statistics
// ---------------------------------------------------------------------------------------------

/// What a masked statistic computes: one value for the batch or one per sequence.
#[derive(Clone, Copy)]
enum Statistic {
    Mean,
    Var(i64),
    Whiten(WhitenOptions),
}

/// Masked mean; see `rlhf_core.ops.masked_mean`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, offsets=None, axis=None))]
fn masked_mean<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    axis: Option<i64>,
) -> PyResult<Bound<'py, PyAny>> {
    let axis = Axis::from_arg(axis).py()?;
    statistic(py, x, mask, offsets, axis, Statistic::Mean)
}

/// Masked variance; see `rlhf_core.ops.masked_var`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, offsets=None, axis=None, ddof=1))]
fn masked_var<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    axis: Option<i64>,
    ddof: i64,
) -> PyResult<Bound<'py, PyAny>> {
    let axis = Axis::from_arg(axis).py()?;
    statistic(py, x, mask, offsets, axis, Statistic::Var(ddof))
}

/// Masked whitening; see `rlhf_core.ops.masked_whiten`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, offsets=None, axis=None, shift_mean=true, ddof=1, eps=1e-8))]
#[allow(clippy::too_many_arguments)]
fn masked_whiten<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    axis: Option<i64>,
    shift_mean: bool,
    ddof: i64,
    eps: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = WhitenOptions::new(Axis::from_arg(axis).py()?, shift_mean, ddof, eps).py()?;
    statistic(py, x, mask, offsets, opts.axis, Statistic::Whiten(opts))
}

fn statistic<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    axis: Axis,
    what: Statistic,
) -> PyResult<Bound<'py, PyAny>> {
    let (mask, offsets) = (self::mask(mask)?, self::offsets(offsets)?);
    let off = offsets_slice!(offsets);
    dispatch_float!(x, "x", statistic_typed(py, mask, off, axis, what))
}

fn statistic_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<Mask<'py>>,
    offsets: Option<&[i64]>,
    axis: Axis,
    what: Statistic,
) -> PyResult<Bound<'py, PyAny>> {
    let layout = layout_of(x.shape(), "x", offsets, mask.as_ref())?;
    let xs = slice(&x, "x")?;
    // `()` for the whole batch, `(n_rows,)` per sequence; whitening keeps the input's shape.
    let shape = match (what, axis) {
        (Statistic::Whiten(_), _) => x.shape().to_vec(),
        (_, Axis::All) => vec![],
        (_, Axis::PerRow) => vec![layout.n_rows()],
    };
    let mut out = OutBuf::<F>::new(shape.iter().product())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => match what {
        Statistic::Mean => run_kernel(py, "masked_mean", || {
            k_stats::masked_mean(&layout, xs, m, axis, o)
        }),
        Statistic::Var(ddof) => run_kernel(py, "masked_var", || {
            k_stats::masked_var(&layout, xs, m, axis, ddof, o)
        }),
        Statistic::Whiten(opts) => run_kernel(py, "masked_whiten", || {
            k_stats::masked_whiten(&layout, xs, m, opts, o)
        }),
    })?;
    out.into_numpy(py, &shape)
}

// ---------------------------------------------------------------------------------------------
// KL and shaped rewards
// ---------------------------------------------------------------------------------------------

/// Per-token KL estimate; see `rlhf_core.ops.kl`. Any shape; `ref_logp` matches `logp`.
#[pyfunction]
#[pyo3(signature = (logp, ref_logp, estimator="k3", clamp=Some(10.0)))]
fn kl<'py>(
    py: Python<'py>,
    logp: &Bound<'py, PyAny>,
    ref_logp: &Bound<'py, PyAny>,
    estimator: &str,
    clamp: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let estimator: Estimator = parse(estimator)?;
    check_clamp("clamp", clamp).py()?;
    dispatch_float!(logp, "logp", kl_typed(py, ref_logp, estimator, clamp))
}

fn kl_typed<'py, F: KlFloat + Element>(
    logp: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    ref_logp: &Bound<'py, PyAny>,
    est: Estimator,
    clamp: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = logp.shape().to_vec();
    let rf = same_float::<F>(ref_logp, "ref_logp", "logp")?;
    ensure_same_shape("ref_logp", rf.shape(), "logp", &shape).py()?;
    let (a, b) = (slice(&logp, "logp")?, slice(&rf, "ref_logp")?);
    let mut out = OutBuf::<F>::new(a.len())?;
    let o = out.as_mut_slice();
    run_kernel(py, "kl", || k_kl::kl(a, b, est, clamp, o))?;
    out.into_numpy(py, &shape)
}

/// KL-shaped per-token rewards; see `rlhf_core.ops.shaped_rewards`.
#[pyfunction]
#[pyo3(signature = (scores, logp, ref_logp, mask=None, offsets=None, beta=0.0, estimator="k1", clamp=Some(10.0)))]
#[allow(clippy::too_many_arguments)]
fn shaped_rewards<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    logp: &Bound<'py, PyAny>,
    ref_logp: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    beta: f64,
    estimator: &str,
    clamp: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let estimator: Estimator = parse(estimator)?;
    check_clamp("clamp", clamp).py()?;
    let (mask, offsets) = (self::mask(mask)?, self::offsets(offsets)?);
    let off = offsets_slice!(offsets);
    let kl = (beta, estimator, clamp);
    dispatch_float!(
        logp,
        "logp",
        shaped_typed(py, scores, ref_logp, mask, off, kl)
    )
}

fn shaped_typed<'py, F: KlFloat + Element>(
    logp: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    ref_logp: &Bound<'py, PyAny>,
    mask: Option<Mask<'py>>,
    offsets: Option<&[i64]>,
    (beta, est, clamp): (f64, Estimator, Option<f64>),
) -> PyResult<Bound<'py, PyAny>> {
    let shape = logp.shape().to_vec();
    let layout = layout_of(&shape, "logp", offsets, mask.as_ref())?;
    let rf = same_float::<F>(ref_logp, "ref_logp", "logp")?;
    ensure_same_shape("ref_logp", rf.shape(), "logp", &shape).py()?;
    let sc = same_float::<F>(scores, "scores", "logp")?;
    ensure_per_row("scores", sc.shape())?;
    let (a, b) = (slice(&logp, "logp")?, slice(&rf, "ref_logp")?);
    let s = slice(&sc, "scores")?;
    let mut out = OutBuf::<F>::new(layout.n_slots())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "shaped_rewards", || {
        k_kl::shaped_rewards(&layout, s, a, b, m, beta, est, clamp, o)
    }))?;
    out.into_numpy(py, &shape)
}

// ---------------------------------------------------------------------------------------------
// Broadcast and reduce
// ---------------------------------------------------------------------------------------------

/// One value per sequence onto its valid tokens; see `rlhf_core.ops.broadcast_to_tokens`.
#[pyfunction]
#[pyo3(signature = (seq_values, mask=None, offsets=None))]
fn broadcast_to_tokens<'py>(
    py: Python<'py>,
    seq_values: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let (mask, offsets) = (self::mask(mask)?, self::offsets(offsets)?);
    let off = offsets_slice!(offsets);
    dispatch_float!(seq_values, "seq_values", broadcast_typed(py, mask, off))
}

fn broadcast_typed<'py, F: Float + Element>(
    seq_values: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<Mask<'py>>,
    offsets: Option<&[i64]>,
) -> PyResult<Bound<'py, PyAny>> {
    ensure_per_row("seq_values", seq_values.shape())?;
    // The token layout comes from the mask's shape (padded) or from offsets (ragged).
    let shape: Vec<usize> = match (&mask, offsets) {
        (Some(m), _) => m.shape().to_vec(),
        (None, Some(off)) => vec![off.last().copied().unwrap_or(0).max(0) as usize],
        (None, None) => {
            return Err(to_py(CoreError::option(
                "broadcast_to_tokens needs mask (padded (B, T) layout) or offsets (ragged \
                 layout) to know where the tokens are",
            )))
        }
    };
    let layout = Layout::from_shape(&shape, offsets, "mask").py()?;
    let v = slice(&seq_values, "seq_values")?;
    let mut out = OutBuf::<F>::new(layout.n_slots())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "broadcast_to_tokens", || {
        k_tokens::broadcast_to_tokens(&layout, v, m, o)
    }))?;
    out.into_numpy(py, &shape)
}

/// Per-sequence sum or mean of per-token values; see `rlhf_core.ops.reduce_tokens`.
#[pyfunction]
#[pyo3(signature = (x, mask=None, offsets=None, how="sum"))]
fn reduce_tokens<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    offsets: Option<&Bound<'py, PyAny>>,
    how: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let how: Reduce = parse(how)?;
    let (mask, offsets) = (self::mask(mask)?, self::offsets(offsets)?);
    let off = offsets_slice!(offsets);
    dispatch_float!(x, "x", reduce_typed(py, mask, off, how))
}

fn reduce_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<Mask<'py>>,
    offsets: Option<&[i64]>,
    how: Reduce,
) -> PyResult<Bound<'py, PyAny>> {
    let layout = layout_of(x.shape(), "x", offsets, mask.as_ref())?;
    let xs = slice(&x, "x")?;
    let n = layout.n_rows();
    let mut out = OutBuf::<F>::new(n)?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "reduce_tokens", || {
        k_tokens::reduce_tokens(&layout, xs, m, how, o)
    }))?;
    out.into_numpy(py, &[n])
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

/// Add the kernels to `rlhf_core._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gae, m)?)?;
    m.add_function(wrap_pyfunction!(discounted_returns, m)?)?;
    m.add_function(wrap_pyfunction!(group_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(masked_mean, m)?)?;
    m.add_function(wrap_pyfunction!(masked_var, m)?)?;
    m.add_function(wrap_pyfunction!(masked_whiten, m)?)?;
    m.add_function(wrap_pyfunction!(kl, m)?)?;
    m.add_function(wrap_pyfunction!(shaped_rewards, m)?)?;
    m.add_function(wrap_pyfunction!(broadcast_to_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(reduce_tokens, m)?)?;
    Ok(())
}
