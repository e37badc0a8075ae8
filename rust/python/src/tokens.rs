//! The per-token inputs of `_RolloutBuffer.add`: `("ragged", values, lengths)`,
//! `("pieces", [one 1-D array per sequence], None)` or `("padded", values, mask)`, borrowed as
//! the core's [`TokenInput`] without copying.
//!
//! Pieces go through the [`Raw`] fast path: lists of thousands of per-sequence arrays are
//! common, and each is viewed directly instead of being registered with numpy's borrow
//! checker. The bool rule of [`crate::arrays`] holds here too.

use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyList;
use rlhf_core::buffer::{DType, Slice, TokenInput};
use rlhf_core::CoreError;

use crate::arrays::{any_array, check_bool_bytes, describe, AnyArray, BUFFER_DTYPES};
use crate::errors::to_py;

/// A 1-D, C-contiguous, aligned numpy array of a buffer dtype, viewed without registering a
/// borrow. Lists of thousands of per-sequence arrays are common input: registering each with
/// numpy's borrow checker cost ~1 µs per array (28 ms for 4,096 sequences × 5 fields,
/// measured), more than copying their data.
pub struct Raw<'py> {
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

/// View `obj` (named by `name()`, built only on error) as a [`Raw`] array.
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
                "{} has dtype {dt}; expected {BUFFER_DTYPES}",
                name()
            ))))
        }
    };
    let len = arr.len();
    // SAFETY: reads the `data` field of a live PyArrayObject (kept alive by `obj`).
    let ptr = unsafe { (*arr.as_array_ptr()).fields.data as *const u8 };
    if dtype == DType::Bool && len > 0 {
        // SAFETY: `ptr` points at `len` contiguous bytes of the live array (checked above);
        // any byte is a valid `u8`.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        check_bool_bytes(obj.py(), bytes, &name())?;
    }
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
        // to be 0 or 1 in `raw` (the bool rule), so they are valid Rust `bool`s.
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
pub enum TokenArg<'py> {
    Ragged {
        name: String,
        values: AnyArray<'py>,
        lengths: AnyArray<'py>,
    },
    Pieces {
        name: String,
        pieces: Vec<Raw<'py>>,
    },
    Padded {
        name: String,
        values: AnyArray<'py>,
        mask: AnyArray<'py>,
    },
}

pub fn token_arg<'py>(name: &str, spec: &Bound<'py, PyAny>) -> PyResult<TokenArg<'py>> {
    let (kind, values, aux): (String, Bound<'py, PyAny>, Bound<'py, PyAny>) = spec.extract()?;
    let name_s = name.to_string();
    match kind.as_str() {
        "ragged" => {
            let v = any_array(&values, name)?;
            v.ndim_is(name, 1, "1-D (values of all sequences concatenated)")?;
            let lengths = any_array(&aux, &format!("{name} lengths"))?;
            lengths.ndim_is(&format!("{name} lengths"), 1, "1-D")?;
            if !matches!(lengths, AnyArray::I64(_)) {
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
            let v = any_array(&values, name)?;
            v.ndim_is(name, 2, "2-D (B, T) when padded")?;
            let mask = any_array(&aux, &format!("{name} mask"))?;
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
    pub fn name(&self) -> &str {
        match self {
            TokenArg::Ragged { name, .. }
            | TokenArg::Pieces { name, .. }
            | TokenArg::Padded { name, .. } => name,
        }
    }

    pub fn view(&self) -> PyResult<TokenInput<'_>> {
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
