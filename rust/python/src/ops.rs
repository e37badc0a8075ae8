//! Bindings of the advantage and statistics kernels (`rlhf_core._core.<kernel>`), wrapped for
//! users by `rlhf_core.ops`.
//!
//! Every function here borrows numpy arrays (C-contiguous; `rlhf_core.ops` converts torch
//! tensors and non-contiguous arrays first), checks dtypes and shapes, releases the GIL,
//! calls the core and wraps freshly allocated outputs as numpy arrays without a copy.
//! No arithmetic lives here.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use rlhf_core_kernels::gae::{GaeOptions, Masked};
use rlhf_core_kernels::layout::{ensure_same_shape, fmt_shape};
use rlhf_core_kernels::{gae as core_gae, returns as core_returns, CoreError, Float, Layout};

use crate::errors::IntoPyResult;
use crate::gil::run_kernel;

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
    Bool(PyReadonlyArrayDyn<'py, bool>),
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
    try_mask!(bool, Bool);
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
            MaskArg::Bool(a) => a.shape(),
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
            Some(MaskArg::Bool(a)) => {
                let $m = Some(slice(a, "mask")?);
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

/// Move a freshly computed buffer into a numpy array of `shape` (no copy).
fn to_numpy<'py, T: Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let arr = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| {
        crate::errors::internal_error(format!("output shape {}: {e}", fmt_shape(shape)))
    })?;
    Ok(PyArrayDyn::from_owned_array(py, arr).into_any())
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
    let (mut adv, mut ret) = (vec![F::ZERO; n], vec![F::ZERO; n]);
    with_mask!(&mask, m => run_kernel(py, "gae", || {
        core_gae::gae(&layout, r, v, m, b, opts, &mut adv, &mut ret)
    }))?;
    Ok((to_numpy(py, adv, &shape)?, to_numpy(py, ret, &shape)?))
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
    let mut out = vec![F::ZERO; layout.n_slots()];
    with_mask!(&mask, m => run_kernel(py, "discounted_returns", || {
        core_returns::discounted_returns(&layout, r, m, gamma, masked, &mut out)
    }))?;
    to_numpy(py, out, &shape)
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

/// Disable rayon in a forked child (the parent's worker threads do not exist there).
#[pyfunction]
fn _after_fork_in_child() {
    rlhf_core_kernels::layout::set_parallel(false);
}

/// Add the kernels to `rlhf_core._core` and register the fork hook.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gae, m)?)?;
    m.add_function(wrap_pyfunction!(discounted_returns, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_in_child, m)?)?;
    let py = m.py();
    let hook = m.getattr("_after_fork_in_child")?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("after_in_child", hook)?;
    py.import("os")?
        .getattr("register_at_fork")?
        .call((), Some(&kwargs))?;
    Ok(())
}
