//! Bindings of the advantage and statistics kernels (`rlhf_core._core.<kernel>`), wrapped for
//! users by `rlhf_core.ops`.
//!
//! Every function here borrows numpy arrays (C-contiguous; `rlhf_core.ops` converts torch
//! tensors and non-contiguous arrays first), checks dtypes and shapes, releases the GIL,
//! calls the core and wraps freshly allocated outputs as numpy arrays without a copy.
//! No arithmetic lives here.

use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rlhf_core_kernels::gae::{GaeOptions, Masked};
use rlhf_core_kernels::group::{GroupOptions, Groups};
use rlhf_core_kernels::kl::{check_clamp, Estimator, KlFloat};
use rlhf_core_kernels::layout::{ensure_same_shape, fmt_shape};
use rlhf_core_kernels::running::RunningMoments;
use rlhf_core_kernels::stats::{Axis, Moments, WhitenOptions};
use rlhf_core_kernels::tokens::Reduce;
use rlhf_core_kernels::{
    gae as core_gae, group as core_group, kl as core_kl, returns as core_returns,
    stats as core_stats, tokens as core_tokens, CoreError, Float, Layout,
};

use crate::errors::IntoPyResult;
use crate::gil::run_kernel;
use crate::pool::OutBuf;

// ---------------------------------------------------------------------------------------------
// Argument helpers
// ---------------------------------------------------------------------------------------------

/// The dtype of `obj` as numpy prints it, or its Python type when it is not an array.
fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.dtype().to_string(),
        Err(_) => obj
            .get_type()
            .name()
            .map(|n| format!("Python type {n}"))
            .unwrap_or_else(|_| "an unknown type".into()),
    }
}

fn not_array(obj: &Bound<'_, PyAny>, name: &str) -> Option<PyErr> {
    if obj.cast::<PyUntypedArray>().is_err() {
        return Some(
            CoreError::dtype(format!(
                "{name} must be a numpy.ndarray (rlhf_core.ops also takes torch CPU tensors), got \
                 {}",
                describe(obj)
            ))
            .into_pyerr(),
        );
    }
    None
}

trait IntoPyErr {
    fn into_pyerr(self) -> PyErr;
}

impl IntoPyErr for CoreError {
    fn into_pyerr(self) -> PyErr {
        crate::errors::to_py(self)
    }
}

/// Borrow `obj` as a readonly array of `T`, or fail with a `DtypeError` naming `name` and the
/// `expected` dtype(s).
fn typed<'py, T: Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, T>> {
    if let Some(e) = not_array(obj, name) {
        return Err(e);
    }
    let arr = obj.cast::<PyArrayDyn<T>>().map_err(|_| {
        CoreError::dtype(format!(
            "{name} has dtype {}; expected {expected}",
            describe(obj)
        ))
        .into_pyerr()
    })?;
    arr.try_readonly().map_err(|e| {
        CoreError::shape(format!("{name} cannot be borrowed for reading: {e}")).into_pyerr()
    })
}

/// The contiguous data of a borrowed array.
fn slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| {
        CoreError::shape(format!(
            "{name} is not C-contiguous; pass numpy.ascontiguousarray({name}) (rlhf_core.ops \
             does this for you)"
        ))
        .into_pyerr()
    })
}

/// A float32 or float64 array.
enum FloatArg<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

fn float_arg<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<FloatArg<'py>> {
    if let Some(e) = not_array(obj, name) {
        return Err(e);
    }
    if obj.cast::<PyArrayDyn<f32>>().is_ok() {
        return Ok(FloatArg::F32(typed(obj, name, "float32")?));
    }
    if obj.cast::<PyArrayDyn<f64>>().is_ok() {
        return Ok(FloatArg::F64(typed(obj, name, "float64")?));
    }
    Err(CoreError::dtype(format!(
        "{name} has dtype {}; expected float32 or float64",
        describe(obj)
    ))
    .into_pyerr())
}

/// An array of the same float dtype as the argument `like` (of dtype `F`).
fn same_float<'py, F: Float + Element>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    like: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, F>> {
    typed::<F>(obj, name, &format!("{} like {like}", F::NAME))
}

fn opt_same_float<'py, F: Float + Element>(
    obj: Option<&Bound<'py, PyAny>>,
    name: &str,
    like: &str,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, F>>> {
    obj.map(|o| same_float::<F>(o, name, like)).transpose()
}

/// A token mask of any supported dtype.
enum MaskArg<'py> {
    U8(PyReadonlyArrayDyn<'py, u8>),
    I8(PyReadonlyArrayDyn<'py, i8>),
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

const MASK_DTYPES: &str = "bool, uint8, int8, int32, int64, float32 or float64";

fn mask_arg<'py>(obj: Option<&Bound<'py, PyAny>>) -> PyResult<Option<MaskArg<'py>>> {
    let Some(obj) = obj else { return Ok(None) };
    if let Some(e) = not_array(obj, "mask") {
        return Err(e);
    }
    macro_rules! try_mask {
        ($t:ty, $v:ident) => {
            if obj.cast::<PyArrayDyn<$t>>().is_ok() {
                return Ok(Some(MaskArg::$v(typed(obj, "mask", MASK_DTYPES)?)));
            }
        };
    }
    if obj.cast::<PyArrayDyn<bool>>().is_ok() {
        // Read bool masks as bytes: a numpy bool array can hold bytes other than 0/1 (e.g.
        // a view of uint8 data), which would be undefined behaviour as a Rust `bool`.
        let bytes = obj.call_method1("view", ("u1",))?;
        return Ok(Some(MaskArg::U8(typed(&bytes, "mask", MASK_DTYPES)?)));
    }
    try_mask!(u8, U8);
    try_mask!(i8, I8);
    try_mask!(i32, I32);
    try_mask!(i64, I64);
    try_mask!(f32, F32);
    try_mask!(f64, F64);
    Err(CoreError::dtype(format!(
        "mask has dtype {}; expected {MASK_DTYPES}",
        describe(obj)
    ))
    .into_pyerr())
}

impl MaskArg<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            MaskArg::U8(a) => a.shape(),
            MaskArg::I8(a) => a.shape(),
            MaskArg::I32(a) => a.shape(),
            MaskArg::I64(a) => a.shape(),
            MaskArg::F32(a) => a.shape(),
            MaskArg::F64(a) => a.shape(),
        }
    }
}

/// Bind `$m: Option<&[M]>` for the mask's element type `M` and evaluate `$body` (which is
/// generic over `M`) once per supported mask dtype.
macro_rules! with_mask {
    ($mask:expr, $m:ident => $body:expr) => {
        match $mask {
            None => {
                let $m: Option<&[bool]> = None;
                $body
            }
            Some(MaskArg::U8(a)) => {
                let $m = Some(slice(a, "mask")?);
                $body
            }
            Some(MaskArg::I8(a)) => {
                let $m = Some(slice(a, "mask")?);
                $body
            }
            Some(MaskArg::I32(a)) => {
                let $m = Some(slice(a, "mask")?);
                $body
            }
            Some(MaskArg::I64(a)) => {
                let $m = Some(slice(a, "mask")?);
                $body
            }
            Some(MaskArg::F32(a)) => {
                let $m = Some(slice(a, "mask")?);
                $body
            }
            Some(MaskArg::F64(a)) => {
                let $m = Some(slice(a, "mask")?);
                $body
            }
        }
    };
}

/// `offsets`: int64, 1-D.
fn offsets_arg<'py>(
    obj: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, i64>>> {
    let Some(obj) = obj else { return Ok(None) };
    let a = typed::<i64>(obj, "offsets", "int64")?;
    if a.ndim() != 1 {
        return Err(CoreError::offsets(format!(
            "offsets must be 1-D (N + 1 entries), got shape {}",
            fmt_shape(a.shape())
        ))
        .into_pyerr());
    }
    Ok(Some(a))
}

/// The layout of the primary array `name` (padded, single row or ragged) and, when given, a
/// mask of the same shape.
fn layout_of<'a>(
    shape: &[usize],
    name: &str,
    offsets: Option<&'a [i64]>,
    mask: Option<&MaskArg<'_>>,
) -> PyResult<Layout<'a>> {
    let layout = Layout::from_shape(shape, offsets, name).py()?;
    if let Some(m) = mask {
        ensure_same_shape("mask", m.shape(), name, shape).py()?;
    }
    Ok(layout)
}

/// A per-sequence array (one value per row): must be 1-D.
fn ensure_per_row(name: &str, shape: &[usize]) -> PyResult<()> {
    if shape.len() != 1 {
        return Err(CoreError::shape(format!(
            "{name} must be 1-D with one value per sequence, got shape {}",
            fmt_shape(shape)
        ))
        .into_pyerr());
    }
    Ok(())
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
        masked: Masked::parse(masked).py()?,
    };
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    match float_arg(rewards, "rewards")? {
        FloatArg::F32(r) => gae_typed(py, r, values, mask, off, bootstrap, opts),
        FloatArg::F64(r) => gae_typed(py, r, values, mask, off, bootstrap, opts),
    }
}

fn gae_typed<'py, F: Float + Element>(
    py: Python<'py>,
    rewards: PyReadonlyArrayDyn<'py, F>,
    values: &Bound<'py, PyAny>,
    mask: Option<MaskArg<'py>>,
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
        core_gae::gae(&layout, r, v, m, b, opts, adv, ret)
    }))?;
    let mut dims = vec![2];
    dims.extend_from_slice(&shape);
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
    let masked = Masked::parse(masked).py()?;
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    match float_arg(rewards, "rewards")? {
        FloatArg::F32(r) => returns_typed(py, r, mask, off, gamma, masked),
        FloatArg::F64(r) => returns_typed(py, r, mask, off, gamma, masked),
    }
}

fn returns_typed<'py, F: Float + Element>(
    py: Python<'py>,
    rewards: PyReadonlyArrayDyn<'py, F>,
    mask: Option<MaskArg<'py>>,
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
        core_returns::discounted_returns(&layout, r, m, gamma, masked, o)
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
    let opts = GroupOptions::parse(baseline, scale, ddof, eps, singleton).py()?;
    let ids = group_ids
        .map(|g| typed::<i64>(g, "group_ids", "int64"))
        .transpose()?;
    if let Some(ids) = &ids {
        if ids.ndim() != 1 {
            return Err(CoreError::shape(format!(
                "group_ids must be 1-D with one id per sequence, got shape {}",
                fmt_shape(ids.shape())
            ))
            .into_pyerr());
        }
    }
    let ids_slice = ids.as_ref().map(|i| slice(i, "group_ids")).transpose()?;
    let groups = Groups::from_args(ids_slice, group_size).py()?;
    match float_arg(scores, "scores")? {
        FloatArg::F32(s) => group_typed(py, s, groups, opts),
        FloatArg::F64(s) => group_typed(py, s, groups, opts),
    }
}

fn group_typed<'py, F: Float + Element>(
    py: Python<'py>,
    scores: PyReadonlyArrayDyn<'py, F>,
    groups: Groups,
    opts: GroupOptions,
) -> PyResult<(Bound<'py, PyAny>, GroupCounts)> {
    ensure_per_row("scores", scores.shape())?;
    let s = slice(&scores, "scores")?;
    let mut out = OutBuf::<F>::new(s.len())?;
    let o = out.as_mut_slice();
    let st = run_kernel(py, "group_advantages", || {
        core_group::group_advantages(s, groups, &opts, o)
    })?;
    Ok((
        out.into_numpy(py, &[s.len()])?,
        (st.num_groups, st.num_nan, st.num_singleton, st.num_zero_std),
    ))
}

// ---------------------------------------------------------------------------------------------
// Masked statistics
// ---------------------------------------------------------------------------------------------

/// Output shape of a statistic: `()` for the whole batch, `(n_rows,)` per sequence.
fn stat_shape(axis: Axis, layout: &Layout) -> Vec<usize> {
    match axis {
        Axis::All => vec![],
        Axis::PerRow => vec![layout.n_rows()],
    }
}

/// Parse the primary float array `x` named `name` with its mask/offsets, and call `$typed`
/// (a generic function) for its dtype.
macro_rules! dispatch_float {
    ($x:expr, $name:expr, $f:ident($($arg:expr),*)) => {
        match float_arg($x, $name)? {
            FloatArg::F32(a) => $f(a, $($arg),*),
            FloatArg::F64(a) => $f(a, $($arg),*),
        }
    };
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
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    dispatch_float!(x, "x", mean_typed(py, mask, off, axis))
}

fn mean_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<MaskArg<'py>>,
    offsets: Option<&[i64]>,
    axis: Axis,
) -> PyResult<Bound<'py, PyAny>> {
    let layout = layout_of(x.shape(), "x", offsets, mask.as_ref())?;
    let xs = slice(&x, "x")?;
    let shape = stat_shape(axis, &layout);
    let mut out = OutBuf::<F>::new(shape.iter().product())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "masked_mean", || {
        core_stats::masked_mean(&layout, xs, m, axis, o)
    }))?;
    out.into_numpy(py, &shape)
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
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    dispatch_float!(x, "x", var_typed(py, mask, off, axis, ddof))
}

fn var_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<MaskArg<'py>>,
    offsets: Option<&[i64]>,
    axis: Axis,
    ddof: i64,
) -> PyResult<Bound<'py, PyAny>> {
    let layout = layout_of(x.shape(), "x", offsets, mask.as_ref())?;
    let xs = slice(&x, "x")?;
    let shape = stat_shape(axis, &layout);
    let mut out = OutBuf::<F>::new(shape.iter().product())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "masked_var", || {
        core_stats::masked_var(&layout, xs, m, axis, ddof, o)
    }))?;
    out.into_numpy(py, &shape)
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
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    dispatch_float!(x, "x", whiten_typed(py, mask, off, opts))
}

fn whiten_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<MaskArg<'py>>,
    offsets: Option<&[i64]>,
    opts: WhitenOptions,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = x.shape().to_vec();
    let layout = layout_of(&shape, "x", offsets, mask.as_ref())?;
    let xs = slice(&x, "x")?;
    let mut out = OutBuf::<F>::new(layout.n_slots())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "masked_whiten", || {
        core_stats::masked_whiten(&layout, xs, m, opts, o)
    }))?;
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
    let est = Estimator::parse(estimator).py()?;
    check_clamp(clamp).py()?;
    dispatch_float!(logp, "logp", kl_typed(py, ref_logp, est, clamp))
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
    run_kernel(py, "kl", || core_kl::kl(a, b, est, clamp, o))?;
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
    let est = Estimator::parse(estimator).py()?;
    check_clamp(clamp).py()?;
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    dispatch_float!(
        logp,
        "logp",
        shaped_typed(py, scores, ref_logp, mask, off, beta, est, clamp)
    )
}

#[allow(clippy::too_many_arguments)]
fn shaped_typed<'py, F: KlFloat + Element>(
    logp: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    ref_logp: &Bound<'py, PyAny>,
    mask: Option<MaskArg<'py>>,
    offsets: Option<&[i64]>,
    beta: f64,
    est: Estimator,
    clamp: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let shape = logp.shape().to_vec();
    let layout = layout_of(&shape, "logp", offsets, mask.as_ref())?;
    let rf = same_float::<F>(ref_logp, "ref_logp", "logp")?;
    ensure_same_shape("ref_logp", rf.shape(), "logp", &shape).py()?;
    let sc = same_float::<F>(scores, "scores", "logp")?;
    ensure_per_row("scores", sc.shape())?;
    let (a, b, s) = (
        slice(&logp, "logp")?,
        slice(&rf, "ref_logp")?,
        slice(&sc, "scores")?,
    );
    let mut out = OutBuf::<F>::new(layout.n_slots())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "shaped_rewards", || {
        core_kl::shaped_rewards(&layout, s, a, b, m, beta, est, clamp, o)
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
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    dispatch_float!(seq_values, "seq_values", broadcast_typed(py, mask, off))
}

fn broadcast_typed<'py, F: Float + Element>(
    seq_values: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<MaskArg<'py>>,
    offsets: Option<&[i64]>,
) -> PyResult<Bound<'py, PyAny>> {
    ensure_per_row("seq_values", seq_values.shape())?;
    // The token layout comes from the mask's shape (padded) or from offsets (ragged).
    let shape: Vec<usize> = match (&mask, offsets) {
        (Some(m), _) => m.shape().to_vec(),
        (None, Some(off)) => vec![off.last().copied().unwrap_or(0).max(0) as usize],
        (None, None) => {
            return Err(CoreError::option(
                "broadcast_to_tokens needs mask (padded (B, T) layout) or offsets (ragged \
                 layout) to know where the tokens are"
                    .to_string(),
            )
            .into_pyerr())
        }
    };
    let layout = Layout::from_shape(&shape, offsets, "mask").py()?;
    let v = slice(&seq_values, "seq_values")?;
    let mut out = OutBuf::<F>::new(layout.n_slots())?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "broadcast_to_tokens", || {
        core_tokens::broadcast_to_tokens(&layout, v, m, o)
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
    let how = Reduce::parse(how).py()?;
    let mask = mask_arg(mask)?;
    let offsets = offsets_arg(offsets)?;
    let off = offsets.as_ref().map(|o| slice(o, "offsets")).transpose()?;
    dispatch_float!(x, "x", reduce_typed(py, mask, off, how))
}

fn reduce_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<MaskArg<'py>>,
    offsets: Option<&[i64]>,
    how: Reduce,
) -> PyResult<Bound<'py, PyAny>> {
    let layout = layout_of(x.shape(), "x", offsets, mask.as_ref())?;
    let xs = slice(&x, "x")?;
    let n = layout.n_rows();
    let mut out = OutBuf::<F>::new(n)?;
    let o = out.as_mut_slice();
    with_mask!(&mask, m => run_kernel(py, "reduce_tokens", || {
        core_tokens::reduce_tokens(&layout, xs, m, how, o)
    }))?;
    out.into_numpy(py, &[n])
}

// ---------------------------------------------------------------------------------------------
// RunningMoments
// ---------------------------------------------------------------------------------------------

/// Mergeable running mean / variance; see `rlhf_core.ops.RunningMoments`.
#[pyclass(name = "RunningMoments", module = "rlhf_core._core")]
#[derive(Clone)]
pub struct PyRunningMoments {
    inner: RunningMoments,
}

fn moments_typed<'py, F: Float + Element>(
    x: PyReadonlyArrayDyn<'py, F>,
    py: Python<'py>,
    mask: Option<MaskArg<'py>>,
) -> PyResult<Moments> {
    if let Some(m) = &mask {
        ensure_same_shape("mask", m.shape(), "x", x.shape()).py()?;
    }
    let xs = slice(&x, "x")?;
    let layout = Layout::padded(1, xs.len());
    with_mask!(&mask, m => run_kernel(py, "RunningMoments.update", || {
        core_stats::batch_moments(&layout, xs, m)
    }))
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
    #[pyo3(signature = (x, mask=None))]
    fn update(
        slf: &Bound<'_, Self>,
        x: &Bound<'_, PyAny>,
        mask: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let mask = mask_arg(mask)?;
        let m = dispatch_float!(x, "x", moments_typed(py, mask))?;
        let mut this = slf.borrow_mut();
        this.inner.moments = this.inner.moments.merge(&m);
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
        let d = PyDict::new(py);
        d.set_item("count", self.inner.count())?;
        d.set_item("mean", self.inner.mean())?;
        d.set_item("m2", self.inner.moments.m2)?;
        d.set_item("ddof", self.inner.ddof)?;
        Ok(d)
    }

    /// Restore from `state_dict()` output; raises `StateError` on a malformed state.
    fn load_state_dict(&mut self, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
            state.get_item(k).map_err(|_| {
                CoreError::state(format!(
                    "RunningMoments state is missing '{k}'; expected keys count, mean, m2, ddof"
                ))
                .into_pyerr()
            })
        };
        let bad = |k: &str, e: PyErr| {
            CoreError::state(format!("RunningMoments state['{k}'] is invalid: {e}")).into_pyerr()
        };
        let count: u64 = get("count")?.extract().map_err(|e| bad("count", e))?;
        let mean: f64 = get("mean")?.extract().map_err(|e| bad("mean", e))?;
        let m2: f64 = get("m2")?.extract().map_err(|e| bad("m2", e))?;
        let ddof: i64 = get("ddof")?.extract().map_err(|e| bad("ddof", e))?;
        self.inner = RunningMoments::from_parts(count, mean, m2, ddof).py()?;
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

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

/// Disable rayon for good in a forked child (the parent's worker threads do not exist there).
#[pyfunction]
fn _after_fork_in_child() {
    rlhf_core_kernels::layout::mark_forked_child();
}

/// Turn rayon parallelism on or off process-wide; see `rlhf_core.ops.set_parallelism`.
#[pyfunction]
fn set_parallelism(enabled: bool) {
    rlhf_core_kernels::layout::set_parallel(enabled);
}

/// Free the cached output blocks; see `rlhf_core.ops.empty_cache`. Returns bytes released.
#[pyfunction]
fn empty_cache() -> usize {
    crate::pool::clear()
}

/// Whether kernels may run on several threads (false in a forked child).
#[pyfunction]
fn get_parallelism() -> bool {
    rlhf_core_kernels::layout::parallel_enabled()
}

/// Add the kernels to `rlhf_core._core` and register the fork hook.
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
    m.add_class::<PyRunningMoments>()?;
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
