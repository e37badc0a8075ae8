//! Bindings of the rollout buffer, minibatch planning, balanced partition and packing
//! (`rlhf_core._core._RolloutBuffer`, `_Sampler`, `balanced_partition`, ...), wrapped for users
//! by `rlhf_core.buffer`.
//!
//! The glue borrows numpy arrays (C-contiguous; `rlhf_core.buffer` converts torch tensors and
//! non-contiguous arrays first), checks their dtypes and dimensions, releases the GIL, calls the
//! core and wraps freshly allocated outputs as numpy arrays without a copy. No arithmetic here.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    Element, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rlhf_core_kernels::buffer::{
    AddBatch, Advantages, BufferParts, Column, Computed, DType, RolloutBuffer, Slice, TokenInput,
};
use rlhf_core_kernels::buffer_advantages::{self as adv, AdvantageOptions};
use rlhf_core_kernels::materialize::{self, Batch, MaterializeOptions};
use rlhf_core_kernels::partition::{self, check_lengths, Method};
use rlhf_core_kernels::plan::{self, Budget, PlanKind, Sampler, SamplerConfig, SamplerState};
use rlhf_core_kernels::CoreError;

use crate::errors::{to_py, IntoPyResult};
use crate::gil::run_kernel;

// ---------------------------------------------------------------------------------------------
// Borrowing arrays
// ---------------------------------------------------------------------------------------------

const DTYPES: &str = "int32, int64, float32, float64 or bool";

/// A borrowed array of one of the buffer's dtypes.
enum Ro<'py> {
    I32(PyReadonlyArrayDyn<'py, i32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    Bool(PyReadonlyArrayDyn<'py, bool>),
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!("dtype {}", a.dtype()),
        Err(_) => obj
            .get_type()
            .name()
            .map(|n| format!("Python type {n}"))
            .unwrap_or_else(|_| "an unknown type".into()),
    }
}

/// numpy bool arrays can hold bytes other than 0 and 1 (a bool view of uint8 data, say); read
/// as Rust `bool`s those would be undefined behaviour, so they are refused before any
/// `&[bool]` is made of them.
fn check_bool_bytes(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<()> {
    let bytes = obj.call_method1("view", ("u1",))?;
    let arr = bytes.cast::<PyArrayDyn<u8>>().map_err(PyErr::from)?;
    let ro = arr.try_readonly().map_err(|e| {
        to_py(CoreError::shape(format!(
            "{name} cannot be borrowed for reading: {e}"
        )))
    })?;
    if let Some(b) = ro.as_array().iter().find(|&&b| b > 1) {
        return Err(to_py(CoreError::dtype(format!(
            "{name} is a bool array holding the byte value {b} (only 0 and 1 are booleans); \
             pass numpy.asarray(x) != 0 instead of a bool view of other data"
        ))));
    }
    Ok(())
}

fn borrow<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Ro<'py>> {
    macro_rules! try_t {
        ($t:ty, $v:ident) => {
            if let Ok(a) = obj.cast::<PyArrayDyn<$t>>() {
                return a.try_readonly().map(Ro::$v).map_err(|e| {
                    to_py(CoreError::shape(format!(
                        "{name} cannot be borrowed for reading: {e}"
                    )))
                });
            }
        };
    }
    try_t!(i32, I32);
    try_t!(i64, I64);
    try_t!(f32, F32);
    try_t!(f64, F64);
    if obj.cast::<PyArrayDyn<bool>>().is_ok() {
        check_bool_bytes(obj, name)?;
    }
    try_t!(bool, Bool);
    Err(to_py(CoreError::dtype(format!(
        "{name} has {}; expected a numpy array of {DTYPES}",
        describe(obj)
    ))))
}

impl<'py> Ro<'py> {
    fn shape(&self) -> &[usize] {
        match self {
            Ro::I32(a) => a.shape(),
            Ro::I64(a) => a.shape(),
            Ro::F32(a) => a.shape(),
            Ro::F64(a) => a.shape(),
            Ro::Bool(a) => a.shape(),
        }
    }

    fn slice(&self, name: &str) -> PyResult<Slice<'_>> {
        let err = |_| {
            to_py(CoreError::shape(format!(
                "{name} is not C-contiguous; pass numpy.ascontiguousarray({name}) (rlhf_core.buffer does this)"
            )))
        };
        Ok(match self {
            Ro::I32(a) => Slice::I32(a.as_slice().map_err(err)?),
            Ro::I64(a) => Slice::I64(a.as_slice().map_err(err)?),
            Ro::F32(a) => Slice::F32(a.as_slice().map_err(err)?),
            Ro::F64(a) => Slice::F64(a.as_slice().map_err(err)?),
            Ro::Bool(a) => Slice::Bool(a.as_slice().map_err(err)?),
        })
    }

    fn ndim_is(&self, name: &str, want: usize, what: &str) -> PyResult<()> {
        let shape = self.shape();
        if shape.len() != want {
            return Err(to_py(CoreError::shape(format!(
                "{name} must be {what}, got shape {shape:?}"
            ))));
        }
        Ok(())
    }
}

/// A 1-D, C-contiguous, aligned numpy array of a buffer dtype, viewed without registering a
/// borrow. Lists of thousands of per-sequence arrays are common input: registering each with
/// numpy's borrow checker cost ~1 µs per array (28 ms for 4,096 sequences × 5 fields,
/// measured), more than copying their data.
struct Raw<'py> {
    /// Keeps the array alive while the slice is in use.
    _obj: Bound<'py, PyAny>,
    ptr: *const u8,
    len: usize,
    dtype: DType,
}

/// The numpy dtypes of the buffer's element types, made once per call.
struct Dtypes<'py>([(Bound<'py, numpy::PyArrayDescr>, DType); 5]);

impl<'py> Dtypes<'py> {
    fn new(py: Python<'py>) -> Self {
        Dtypes([
            (numpy::dtype::<i32>(py), DType::I32),
            (numpy::dtype::<i64>(py), DType::I64),
            (numpy::dtype::<f32>(py), DType::F32),
            (numpy::dtype::<f64>(py), DType::F64),
            (numpy::dtype::<bool>(py), DType::Bool),
        ])
    }
}

fn raw<'py>(
    obj: Bound<'py, PyAny>,
    name: impl Fn() -> String,
    dtypes: &Dtypes<'py>,
) -> PyResult<Raw<'py>> {
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        to_py(CoreError::dtype(format!(
            "{} has {}; expected a numpy array",
            name(),
            describe(&obj)
        )))
    })?;
    if arr.ndim() != 1 {
        return Err(to_py(CoreError::shape(format!(
            "{} must be 1-D, got shape {:?}",
            name(),
            arr.shape()
        ))));
    }
    if !arr.is_c_contiguous() || !arr.is_aligned() {
        return Err(to_py(CoreError::shape(format!(
            "{} is not C-contiguous and aligned; pass numpy.ascontiguousarray(...) \
             (rlhf_core.buffer does this)",
            name()
        ))));
    }
    let dt = arr.dtype();
    // Native dtypes are usually numpy's singleton descriptors: compare pointers first.
    let dtype = match dtypes
        .0
        .iter()
        .find(|(d, _)| d.as_ptr() == dt.as_ptr())
        .or_else(|| dtypes.0.iter().find(|(d, _)| dt.is_equiv_to(d)))
    {
        Some((_, t)) => *t,
        None => {
            return Err(to_py(CoreError::dtype(format!(
                "{} has dtype {dt}; expected {DTYPES}",
                name()
            ))))
        }
    };
    if dtype == DType::Bool {
        check_bool_bytes(&obj, &name())?;
    }
    let len = arr.len();
    // SAFETY: reads the `data` field of a live PyArrayObject (kept alive by `obj`).
    let ptr = unsafe { (*arr.as_array_ptr()).fields.data as *const u8 };
    Ok(Raw {
        _obj: obj,
        ptr,
        len,
        dtype,
    })
}

impl Raw<'_> {
    fn slice(&self) -> Slice<'_> {
        if self.len == 0 {
            return match self.dtype {
                DType::I32 => Slice::I32(&[]),
                DType::I64 => Slice::I64(&[]),
                DType::F32 => Slice::F32(&[]),
                DType::F64 => Slice::F64(&[]),
                DType::Bool => Slice::Bool(&[]),
            };
        }
        let (p, n) = (self.ptr, self.len);
        // SAFETY: `p` points at `n` contiguous, aligned elements of `dtype` (checked in `raw`),
        // owned by the array that `_obj` keeps alive as long as `self`. As for every kernel
        // input, the array must not be resized or written by another thread during the call
        // (numpy's borrow flags would not stop Python code either). Bool bytes were checked
        // to be 0 or 1 in `raw` (`check_bool_bytes`), so they are valid Rust `bool`s.
        unsafe {
            match self.dtype {
                DType::I32 => Slice::I32(std::slice::from_raw_parts(p as *const i32, n)),
                DType::I64 => Slice::I64(std::slice::from_raw_parts(p as *const i64, n)),
                DType::F32 => Slice::F32(std::slice::from_raw_parts(p as *const f32, n)),
                DType::F64 => Slice::F64(std::slice::from_raw_parts(p as *const f64, n)),
                DType::Bool => Slice::Bool(std::slice::from_raw_parts(p as *const bool, n)),
            }
        }
    }
}

/// A borrowed per-token input: `("ragged", values 1-D, lengths int64 1-D)`,
/// `("pieces", [1-D array per sequence], None)` or `("padded", values 2-D, mask 2-D)`.
enum TokenArg<'py> {
    Ragged {
        name: String,
        values: Ro<'py>,
        lengths: Ro<'py>,
    },
    Pieces {
        name: String,
        pieces: Vec<Raw<'py>>,
    },
    Padded {
        name: String,
        values: Ro<'py>,
        mask: Ro<'py>,
    },
}

fn token_arg<'py>(name: &str, spec: &Bound<'py, PyAny>) -> PyResult<TokenArg<'py>> {
    let (kind, values, aux): (String, Bound<'py, PyAny>, Bound<'py, PyAny>) = spec.extract()?;
    let name_s = name.to_string();
    match kind.as_str() {
        "ragged" => {
            let v = borrow(&values, name)?;
            v.ndim_is(name, 1, "1-D (values of all sequences concatenated)")?;
            let lengths = borrow(&aux, &format!("{name} lengths"))?;
            lengths.ndim_is(&format!("{name} lengths"), 1, "1-D")?;
            if !matches!(lengths, Ro::I64(_)) {
                return Err(to_py(CoreError::dtype(format!(
                    "{name} lengths must be int64"
                ))));
            }
            Ok(TokenArg::Ragged {
                name: name_s,
                values: v,
                lengths,
            })
        }
        "pieces" => {
            let list = values.cast::<PyList>().map_err(|_| {
                to_py(CoreError::shape(format!(
                    "{name}: pieces must be a list of 1-D arrays"
                )))
            })?;
            let dtypes = Dtypes::new(spec.py());
            let pieces = list
                .iter()
                .enumerate()
                .map(|(i, item)| raw(item, || format!("{name}: sequence {i}"), &dtypes))
                .collect::<PyResult<Vec<_>>>()?;
            Ok(TokenArg::Pieces {
                name: name_s,
                pieces,
            })
        }
        "padded" => {
            let v = borrow(&values, name)?;
            v.ndim_is(name, 2, "2-D (B, T) when padded")?;
            let mask = borrow(&aux, &format!("{name} mask"))?;
            mask.ndim_is(&format!("{name} mask"), 2, "2-D (B, T)")?;
            Ok(TokenArg::Padded {
                name: name_s,
                values: v,
                mask,
            })
        }
        other => Err(to_py(CoreError::option(format!(
            "{name}: input kind must be 'ragged', 'pieces' or 'padded', got {other:?}"
        )))),
    }
}

impl TokenArg<'_> {
    fn name(&self) -> &str {
        match self {
            TokenArg::Ragged { name, .. }
            | TokenArg::Pieces { name, .. }
            | TokenArg::Padded { name, .. } => name,
        }
    }

    fn view(&self) -> PyResult<TokenInput<'_>> {
        match self {
            TokenArg::Padded { name, values, mask } => {
                let (s, m) = (values.shape(), mask.shape());
                Ok(TokenInput::Padded {
                    values: values.slice(name)?,
                    rows: s[0],
                    cols: s[1],
                    mask: mask.slice(&format!("{name} mask"))?,
                    mask_shape: (m[0], m[1]),
                })
            }
            TokenArg::Ragged {
                name,
                values,
                lengths,
            } => {
                let lengths = match lengths.slice(&format!("{name} lengths"))? {
                    Slice::I64(l) => l,
                    _ => {
                        return Err(to_py(CoreError::dtype(format!(
                            "{name} lengths must be int64"
                        ))))
                    }
                };
                Ok(TokenInput::Ragged {
                    values: values.slice(name)?,
                    lengths,
                })
            }
            TokenArg::Pieces { pieces, .. } => {
                if pieces.is_empty() {
                    return Ok(TokenInput::Ragged {
                        values: Slice::I64(&[]),
                        lengths: &[],
                    });
                }
                Ok(TokenInput::Pieces(pieces.iter().map(Raw::slice).collect()))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Converting outputs
// ---------------------------------------------------------------------------------------------

/// Move a fresh Vec into a numpy array of `shape` (no copy).
fn vec_to_numpy<'py, T: Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    let arr = ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| crate::errors::internal_error(format!("output shape {shape:?}: {e}")))?;
    Ok(PyArrayDyn::from_owned_array(py, arr).into_any())
}

fn column_to_numpy<'py>(
    py: Python<'py>,
    col: Column,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    match col {
        Column::I32(v) => vec_to_numpy(py, v, shape),
        Column::I64(v) => vec_to_numpy(py, v, shape),
        Column::F32(v) => vec_to_numpy(py, v, shape),
        Column::F64(v) => vec_to_numpy(py, v, shape),
        Column::Bool(v) => vec_to_numpy(py, v, shape),
    }
}

/// A numpy copy of a stored column (snapshots must not alias the buffer's memory).
fn column_copy<'py>(py: Python<'py>, col: &Column) -> Bound<'py, PyAny> {
    match col {
        Column::I32(v) => PyArray1::from_slice(py, v).into_any(),
        Column::I64(v) => PyArray1::from_slice(py, v).into_any(),
        Column::F32(v) => PyArray1::from_slice(py, v).into_any(),
        Column::F64(v) => PyArray1::from_slice(py, v).into_any(),
        Column::Bool(v) => PyArray1::from_slice(py, v).into_any(),
    }
}

/// A 1-D numpy array (any buffer dtype) copied into a column.
fn column_from(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Column> {
    let ro = borrow(obj, name)?;
    ro.ndim_is(name, 1, "1-D")?;
    Ok(Column::from_slice(ro.slice(name)?))
}

fn state_err(msg: String) -> PyErr {
    to_py(CoreError::state(msg))
}

fn batch_to_dict<'py>(py: Python<'py>, batch: Batch) -> PyResult<(Bound<'py, PyDict>, usize)> {
    let d = PyDict::new(py);
    for a in batch.arrays {
        d.set_item(a.name, column_to_numpy(py, a.data, &a.shape)?)?;
    }
    Ok((d, batch.max_seqlen))
}

fn indices(idx: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<usize>> {
    let ro = borrow(idx, name)?;
    ro.ndim_is(name, 1, "1-D")?;
    match ro.slice(name)? {
        Slice::I64(v) => v
            .iter()
            .map(|&i| {
                usize::try_from(i).map_err(|_| {
                    to_py(CoreError::shape(format!(
                        "{name} holds {i}; indices must be >= 0"
                    )))
                })
            })
            .collect(),
        _ => Err(to_py(CoreError::dtype(format!("{name} must be int64")))),
    }
}

fn lengths_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<u64>> {
    if let Ok(a) = obj.cast::<PyArray1<i64>>() {
        let ro = a.try_readonly().map_err(|e| {
            to_py(CoreError::shape(format!(
                "{name} cannot be borrowed for reading: {e}"
            )))
        })?;
        if let Ok(v) = ro.as_slice() {
            return check_lengths(v, name).py();
        }
    }
    let ro = borrow(obj, name)?;
    ro.ndim_is(name, 1, "1-D")?;
    match ro.slice(name)? {
        Slice::I64(v) => check_lengths(v, name).py(),
        _ => Err(to_py(CoreError::dtype(format!("{name} must be int64")))),
    }
}

fn list_of_i64<'py>(py: Python<'py>, rows: Vec<Vec<usize>>) -> PyResult<Bound<'py, PyList>> {
    let arrays: Vec<Bound<'py, PyAny>> = rows
        .into_iter()
        .map(|r| {
            let n = r.len();
            vec_to_numpy(
                py,
                r.into_iter().map(|i| i as i64).collect::<Vec<i64>>(),
                &[n],
            )
        })
        .collect::<PyResult<_>>()?;
    PyList::new(py, arrays)
}

// ---------------------------------------------------------------------------------------------
// RolloutBuffer
// ---------------------------------------------------------------------------------------------

/// The core rollout buffer; use `rlhf_core.buffer.RolloutBuffer`.
#[pyclass(name = "_RolloutBuffer", module = "rlhf_core._core")]
pub struct PyRolloutBuffer {
    inner: RolloutBuffer,
}

#[pymethods]
impl PyRolloutBuffer {
    #[new]
    #[pyo3(signature = (float_dtype = "float32"))]
    fn new(float_dtype: &str) -> PyResult<Self> {
        let dt = DType::parse(float_dtype).py()?;
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
                if c.advantages.is_token_level() {
                    "token"
                } else {
                    "sequence"
                },
                c.returns.is_some(),
            )
        })
    }

    /// Add a batch. `prompt`, and each value of `token_fields`, is `("ragged", values, lengths)`
    /// or `("padded", values, mask)`; `seq_fields` maps names to 1-D arrays.
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
        let seqs: Vec<(String, Ro<'py>)> = seq_fields
            .iter()
            .map(|(n, a)| {
                let ro = borrow(a, n)?;
                ro.ndim_is(n, 1, "1-D with one value per sequence")?;
                Ok((n.clone(), ro))
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
                .map(|(n, ro)| Ok((n.clone(), ro.slice(n)?)))
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
        match which {
            "prompt" => Ok(PyArray1::from_slice(py, self.inner.prompt_offsets()).into_any()),
            "response" => Ok(PyArray1::from_slice(py, self.inner.response_offsets()).into_any()),
            other => Err(to_py(CoreError::option(format!(
                "which must be 'prompt' or 'response', got {other:?}"
            )))),
        }
    }

    /// Prompt + response length of every sequence (int64, N).
    fn total_lengths<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let v: Vec<i64> = self
            .inner
            .total_lengths()
            .into_iter()
            .map(|x| x as i64)
            .collect();
        let n = v.len();
        vec_to_numpy(py, v, &[n])
    }

    /// A copy of a stored field: `prompt_ids`, a per-token field, a per-sequence field,
    /// `advantages` or `returns`.
    fn field<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        if name == "prompt_ids" {
            if let Some(c) = self.inner.prompt_ids() {
                return Ok(column_copy(py, c));
            }
        }
        if let Some(c) = self
            .inner
            .token_field(name)
            .or_else(|| self.inner.seq_field(name))
        {
            return Ok(column_copy(py, c));
        }
        if let Some(c) = self.inner.computed() {
            if name == "advantages" {
                return Ok(column_copy(py, c.advantages.column()));
            }
            if name == "returns" {
                if let Some(r) = &c.returns {
                    return Ok(column_copy(py, r));
                }
            }
        }
        let held: Vec<&str> = std::iter::once("prompt_ids")
            .chain(self.inner.token_fields().iter().map(|(n, _)| n.as_str()))
            .chain(self.inner.seq_fields().iter().map(|(n, _)| n.as_str()))
            .collect();
        Err(to_py(CoreError::field(format!(
            "no field {name:?} in the buffer; it holds {held:?}"
        ))))
    }

    /// Summary statistics as a list of (name, value).
    fn stats(&self, py: Python<'_>) -> PyResult<Vec<(String, f64)>> {
        let inner = &self.inner;
        run_kernel(py, "RolloutBuffer.stats", || Ok(inner.stats()))
    }

    /// Store advantages computed elsewhere: `level` is "token" or "sequence".
    #[pyo3(signature = (estimator, level, advantages, returns=None))]
    fn set_advantages(
        &mut self,
        estimator: &str,
        level: &str,
        advantages: &Bound<'_, PyAny>,
        returns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let a = column_from(advantages, "advantages")?;
        let a = match level {
            "token" => Advantages::Token(a),
            "sequence" => Advantages::Sequence(a),
            other => {
                return Err(to_py(CoreError::option(format!(
                    "level must be 'token' or 'sequence', got {other:?}"
                ))))
            }
        };
        let r = returns.map(|r| column_from(r, "returns")).transpose()?;
        self.inner.set_advantages(estimator, a, r).py()
    }

    /// `(mean, std, min, max)` of the advantages over valid tokens / sequences, or None.
    fn advantage_moments(&self) -> Option<(f64, f64, f64, f64)> {
        rlhf_core_kernels::buffer_stats::advantage_moments(&self.inner)
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
        estimator: &str,
        gamma: f64,
        lam: f64,
        masked: &str,
        kl_coef: f64,
        kl_estimator: &str,
        kl_clamp: Option<f64>,
        ddof: i64,
        eps: f64,
        singleton: &str,
        scale: Option<String>,
        whiten: Option<String>,
        whiten_eps: f64,
        group_size: Option<i64>,
    ) -> PyResult<Option<(usize, usize, usize, usize)>> {
        let opts = AdvantageOptions::parse(
            estimator,
            gamma,
            lam,
            masked,
            kl_coef,
            kl_estimator,
            kl_clamp,
            ddof,
            eps,
            singleton,
            scale.as_deref(),
            whiten.as_deref(),
            whiten_eps,
            group_size,
        )
        .py()?;
        let inner = &mut self.inner;
        let stats = run_kernel(py, "RolloutBuffer.compute_advantages", || {
            adv::compute(inner, &opts)
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
        let b = &self.inner;
        let d = PyDict::new(py);
        d.set_item("float_dtype", b.float_dtype().name())?;
        d.set_item(
            "prompt_offsets",
            PyArray1::from_slice(py, b.prompt_offsets()),
        )?;
        d.set_item(
            "response_offsets",
            PyArray1::from_slice(py, b.response_offsets()),
        )?;
        d.set_item("prompt_ids", b.prompt_ids().map(|c| column_copy(py, c)))?;
        let tf = PyList::new(
            py,
            b.token_fields()
                .iter()
                .map(|(n, c)| (n.clone(), column_copy(py, c))),
        )?;
        d.set_item("token_fields", tf)?;
        let sf = PyList::new(
            py,
            b.seq_fields()
                .iter()
                .map(|(n, c)| (n.clone(), column_copy(py, c))),
        )?;
        d.set_item("seq_fields", sf)?;
        match b.computed() {
            None => d.set_item("computed", py.None())?,
            Some(c) => {
                let cd = PyDict::new(py);
                cd.set_item("estimator", &c.estimator)?;
                cd.set_item(
                    "level",
                    if c.advantages.is_token_level() {
                        "token"
                    } else {
                        "sequence"
                    },
                )?;
                cd.set_item("advantages", column_copy(py, c.advantages.column()))?;
                cd.set_item("returns", c.returns.as_ref().map(|r| column_copy(py, r)))?;
                d.set_item("computed", cd)?;
            }
        }
        Ok(d)
    }

    /// Replace the contents with saved pieces (checked; on error nothing changes).
    fn load_state_parts(&mut self, parts: &Bound<'_, PyDict>) -> PyResult<()> {
        let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
            parts
                .get_item(k)?
                .ok_or_else(|| state_err(format!("buffer state lacks the key {k:?}")))
        };
        let float_dtype = DType::parse(&get("float_dtype")?.extract::<String>()?)
            .map_err(|e| state_err(e.message().into()))?;
        let offs = |k: &str| -> PyResult<Vec<i64>> {
            match column_from(&get(k)?, k)? {
                Column::I64(v) => Ok(v),
                other => Err(state_err(format!(
                    "{k} must be int64, got {}",
                    other.dtype().name()
                ))),
            }
        };
        let prompt_offsets = offs("prompt_offsets")?;
        let response_offsets = offs("response_offsets")?;
        let p = get("prompt_ids")?;
        let prompt_ids = if p.is_none() {
            None
        } else {
            Some(column_from(&p, "prompt_ids")?)
        };
        let named = |k: &str| -> PyResult<Vec<(String, Column)>> {
            let items: Vec<(String, Bound<'_, PyAny>)> = get(k)?.extract()?;
            items
                .into_iter()
                .map(|(n, a)| Ok((n.clone(), column_from(&a, &n)?)))
                .collect()
        };
        let token_fields = named("token_fields")?;
        let seq_fields = named("seq_fields")?;
        let c = get("computed")?;
        let computed = if c.is_none() {
            None
        } else {
            let c = c
                .cast::<PyDict>()
                .map_err(|_| state_err("computed must be a dict or None".into()))?;
            let cget = |k: &str| -> PyResult<Bound<'_, PyAny>> {
                c.get_item(k)?
                    .ok_or_else(|| state_err(format!("computed state lacks the key {k:?}")))
            };
            let a = column_from(&cget("advantages")?, "advantages")?;
            let level: String = cget("level")?.extract()?;
            let advantages = match level.as_str() {
                "token" => Advantages::Token(a),
                "sequence" => Advantages::Sequence(a),
                other => {
                    return Err(state_err(format!(
                        "computed level must be 'token' or 'sequence', got {other:?}"
                    )))
                }
            };
            let r = cget("returns")?;
            let returns = if r.is_none() {
                None
            } else {
                Some(column_from(&r, "returns")?)
            };
            Some(Computed {
                estimator: cget("estimator")?.extract()?,
                advantages,
                returns,
            })
        };
        let parts = BufferParts {
            float_dtype,
            prompt_offsets,
            response_offsets,
            prompt_ids,
            token_fields,
            seq_fields,
            computed,
        };
        let fresh = RolloutBuffer::from_parts(parts).py()?;
        self.inner.replace_with(fresh);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------------------------

/// A resumable minibatch / micro-batch plan; use `rlhf_core.buffer` samplers.
#[pyclass(name = "_Sampler", module = "rlhf_core._core")]
pub struct PySampler {
    inner: Sampler,
}

fn budget_of(token_budget: u64, packed: bool, pad_to_multiple_of: u64) -> Budget {
    if packed {
        Budget::Packed {
            tokens: token_budget,
        }
    } else {
        Budget::Padded {
            tokens: token_budget,
            pad_to_multiple_of,
        }
    }
}

fn state_to_dict<'py>(py: Python<'py>, s: &SamplerState) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match s.config.kind {
        PlanKind::Minibatches {
            batch_size,
            drop_last,
        } => {
            d.set_item("kind", "minibatches")?;
            d.set_item("batch_size", batch_size)?;
            d.set_item("drop_last", drop_last)?;
        }
        PlanKind::MicroBatches { budget, bucket } => {
            d.set_item("kind", "micro_batches")?;
            d.set_item("token_budget", budget.tokens())?;
            match budget {
                Budget::Packed { .. } => {
                    d.set_item("packed", true)?;
                    d.set_item("pad_to_multiple_of", 1)?;
                }
                Budget::Padded {
                    pad_to_multiple_of, ..
                } => {
                    d.set_item("packed", false)?;
                    d.set_item("pad_to_multiple_of", pad_to_multiple_of)?;
                }
            }
            d.set_item("bucket", bucket)?;
        }
    }
    d.set_item("epochs", s.config.epochs)?;
    d.set_item("seed", s.config.seed)?;
    d.set_item("shuffle", s.config.shuffle)?;
    d.set_item("num_sequences", s.num_sequences)?;
    d.set_item("fingerprint", s.fingerprint)?;
    d.set_item("epoch", s.epoch)?;
    d.set_item("step", s.step)?;
    Ok(d)
}

fn state_from_dict(d: &Bound<'_, PyDict>) -> PyResult<SamplerState> {
    fn get<'py, T: for<'a> FromPyObject<'a, 'py>>(d: &Bound<'py, PyDict>, k: &str) -> PyResult<T> {
        let v = d
            .get_item(k)?
            .ok_or_else(|| state_err(format!("sampler state lacks the key {k:?}")))?;
        v.extract::<T>()
            .map_err(|_| state_err(format!("sampler state key {k:?} has the wrong type")))
    }
    let kind: String = get(d, "kind")?;
    let kind = match kind.as_str() {
        "minibatches" => PlanKind::Minibatches {
            batch_size: get(d, "batch_size")?,
            drop_last: get(d, "drop_last")?,
        },
        "micro_batches" => PlanKind::MicroBatches {
            budget: budget_of(
                get(d, "token_budget")?,
                get(d, "packed")?,
                get(d, "pad_to_multiple_of")?,
            ),
            bucket: get(d, "bucket")?,
        },
        other => {
            return Err(state_err(format!(
                "sampler kind must be 'minibatches' or 'micro_batches', got {other:?}"
            )))
        }
    };
    Ok(SamplerState {
        config: SamplerConfig {
            kind,
            epochs: get(d, "epochs")?,
            seed: get(d, "seed")?,
            shuffle: get(d, "shuffle")?,
        },
        num_sequences: get(d, "num_sequences")?,
        fingerprint: get(d, "fingerprint")?,
        epoch: get(d, "epoch")?,
        step: get(d, "step")?,
    })
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
        let lengths = lengths_arg(lengths, "lengths")?;
        let config = SamplerConfig {
            kind: PlanKind::Minibatches {
                batch_size,
                drop_last,
            },
            epochs,
            seed,
            shuffle,
        };
        Ok(PySampler {
            inner: Sampler::new(config, lengths).py()?,
        })
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
        let lengths = lengths_arg(lengths, "lengths")?;
        let budget = budget_of(token_budget, packed, pad_to_multiple_of);
        let config = SamplerConfig {
            kind: PlanKind::MicroBatches { budget, bucket },
            epochs,
            seed,
            shuffle,
        };
        Ok(PySampler {
            inner: Sampler::new(config, lengths).py()?,
        })
    }

    /// Resume from `state` (a dict from `state_dict()`) against these lengths.
    #[staticmethod]
    fn restore(state: &Bound<'_, PyDict>, lengths: &Bound<'_, PyAny>) -> PyResult<Self> {
        let st = state_from_dict(state)?;
        let lengths = lengths_arg(lengths, "lengths")?;
        Ok(PySampler {
            inner: Sampler::restore(st, lengths).py()?,
        })
    }

    /// `(epoch, step, indices int64)` of the next batch, or None when exhausted.
    fn next_batch<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<Option<(u64, u64, Bound<'py, PyAny>)>> {
        match self.inner.next_batch().py()? {
            None => Ok(None),
            Some((e, s, idx)) => {
                let n = idx.len();
                let v: Vec<i64> = idx.into_iter().map(|i| i as i64).collect();
                Ok(Some((e, s, vec_to_numpy(py, v, &[n])?)))
            }
        }
    }

    /// `(epoch, step)` of the next batch.
    #[getter]
    fn position(&self) -> (u64, u64) {
        self.inner.position()
    }

    fn set_position(&mut self, epoch: u64, step: u64) -> PyResult<()> {
        self.inner.set_position(epoch, step).py()
    }

    fn batches_in_epoch(&mut self, epoch: u64) -> PyResult<usize> {
        self.inner.batches_in_epoch(epoch).py()
    }

    #[getter]
    fn epochs(&self) -> u64 {
        self.inner.config().epochs
    }

    fn state_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        state_to_dict(py, &self.inner.state())
    }
}

// ---------------------------------------------------------------------------------------------
// Free functions
// ---------------------------------------------------------------------------------------------

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
    let lengths = lengths_arg(lengths, "lengths")?;
    let method = Method::parse(method).py()?;
    let p = run_kernel(py, "balanced_partition", || {
        partition::balanced_partition(&lengths, k, equal_size, method)
    })?;
    let order: Vec<i64> = p.order.iter().map(|&i| i as i64).collect();
    let offsets: Vec<i64> = p.offsets.iter().map(|&i| i as i64).collect();
    let loads: Vec<i64> = p.loads.iter().map(|&l| l as i64).collect();
    let n = order.len();
    Ok((
        vec_to_numpy(py, order, &[n])?,
        vec_to_numpy(py, offsets, &[k + 1])?,
        vec_to_numpy(py, loads, &[k])?,
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
    let lengths = lengths_arg(lengths, "lengths")?;
    let p = run_kernel(py, "pack_sequences", || partition::pack(&lengths, capacity))?;
    let n = p.loads.len();
    let loads: Vec<i64> = p.loads.iter().map(|&l| l as i64).collect();
    Ok((list_of_i64(py, p.rows)?, vec_to_numpy(py, loads, &[n])?))
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
    let lengths = lengths_arg(lengths, "lengths")?;
    let budget = budget_of(token_budget, packed, pad_to_multiple_of);
    let b = run_kernel(py, "token_budget_batches", || {
        plan::token_budget_batches(&order, &lengths, budget, bucket)
    })?;
    list_of_i64(py, b)
}

/// The permutation of `0..n` that epoch `epoch` of seed `seed` uses (int64).
#[pyfunction]
fn permutation<'py>(
    py: Python<'py>,
    n: usize,
    seed: u64,
    epoch: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let v: Vec<i64> = plan::permutation(n, seed, epoch)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    vec_to_numpy(py, v, &[n])
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRolloutBuffer>()?;
    m.add_class::<PySampler>()?;
    m.add_function(wrap_pyfunction!(balanced_partition, m)?)?;
    m.add_function(wrap_pyfunction!(pack_sequences, m)?)?;
    m.add_function(wrap_pyfunction!(token_budget_batches, m)?)?;
    m.add_function(wrap_pyfunction!(permutation, m)?)?;
    Ok(())
}
