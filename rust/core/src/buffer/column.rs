//! Typed storage of one field: [`DType`], the borrowed [`Slice`] an add reads from and the owned,
//! growable [`Column`] the buffer keeps.
//!
//! Columns grow by at most 1/8 of their capacity beyond what an add needs (not the doubling
//! of `Vec::push`), so a full buffer costs close to the raw bytes it holds.

use std::str::FromStr;

use crate::error::{CoreError, Result};
use crate::memory;

/// Element type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    I32,
    I64,
    F32,
    F64,
    Bool,
}

impl DType {
    /// numpy's name of the dtype (`"int32"`, `"float64"`, `"bool"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn itemsize(self) -> usize {
        match self {
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
            DType::Bool => 1,
        }
    }

    /// Parse numpy's name of a dtype.
    pub fn parse(name: &str) -> Result<DType> {
        match name {
            "int32" => Ok(DType::I32),
            "int64" => Ok(DType::I64),
            "float32" => Ok(DType::F32),
            "float64" => Ok(DType::F64),
            "bool" => Ok(DType::Bool),
            other => Err(CoreError::dtype(format!(
                "unsupported dtype {other:?}; expected one of int32, int64, float32, float64, bool"
            ))),
        }
    }

    /// True for float32 and float64.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// True for int32 and int64.
    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::I64)
    }
}

impl FromStr for DType {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<DType> {
        DType::parse(s)
    }
}

/// A borrowed, typed, contiguous 1-D view (a numpy array's data, flattened in C order).
#[derive(Debug, Clone, Copy)]
pub enum Slice<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    Bool(&'a [bool]),
}

macro_rules! each_slice {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            Slice::I32($v) => $body,
            Slice::I64($v) => $body,
            Slice::F32($v) => $body,
            Slice::F64($v) => $body,
            Slice::Bool($v) => $body,
        }
    };
}

macro_rules! each_column {
    ($c:expr, $v:ident => $body:expr) => {
        match $c {
            Column::I32($v) => $body,
            Column::I64($v) => $body,
            Column::F32($v) => $body,
            Column::F64($v) => $body,
            Column::Bool($v) => $body,
        }
    };
}

impl<'a> Slice<'a> {
    pub fn len(&self) -> usize {
        each_slice!(self, v => v.len())
    }

    /// Address of the first element (with the dtype and length, identifies the memory).
    pub(crate) fn addr(&self) -> usize {
        each_slice!(self, v => v.as_ptr() as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Slice::I32(_) => DType::I32,
            Slice::I64(_) => DType::I64,
            Slice::F32(_) => DType::F32,
            Slice::F64(_) => DType::F64,
            Slice::Bool(_) => DType::Bool,
        }
    }

    /// Element `i` as f64 (exact for every stored type except int64 beyond 2^53).
    pub fn get_f64(&self, i: usize) -> f64 {
        match self {
            Slice::I32(v) => v[i] as f64,
            Slice::I64(v) => v[i] as f64,
            Slice::F32(v) => v[i] as f64,
            Slice::F64(v) => v[i],
            Slice::Bool(v) => {
                if v[i] {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// An owned, typed, growable 1-D array.
#[derive(Debug, Clone)]
pub enum Column {
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
}

/// Reserve room for `additional` more elements, growing by at most 1/8 beyond the need (only
/// the need when the slack cannot be had); [`CoreError::Memory`] naming `what` when even the
/// need cannot be allocated.
pub(crate) fn grow<T>(v: &mut Vec<T>, additional: usize, what: &str) -> Result<()> {
    let need = memory::checked_add(v.len(), additional, what)?;
    if need > v.capacity() {
        let target = need.max(v.capacity() + v.capacity() / 8);
        if v.try_reserve_exact(target - v.len()).is_err() {
            memory::reserve_exact(v, need - v.len(), what)?;
        }
    }
    Ok(())
}

impl Column {
    pub fn empty(dtype: DType) -> Column {
        match dtype {
            DType::I32 => Column::I32(Vec::new()),
            DType::I64 => Column::I64(Vec::new()),
            DType::F32 => Column::F32(Vec::new()),
            DType::F64 => Column::F64(Vec::new()),
            DType::Bool => Column::Bool(Vec::new()),
        }
    }

    /// Copy a borrowed slice into a new column of the same dtype.
    pub fn from_slice(s: Slice<'_>) -> Column {
        match s {
            Slice::I32(v) => Column::I32(v.to_vec()),
            Slice::I64(v) => Column::I64(v.to_vec()),
            Slice::F32(v) => Column::F32(v.to_vec()),
            Slice::F64(v) => Column::F64(v.to_vec()),
            Slice::Bool(v) => Column::Bool(v.to_vec()),
        }
    }

    pub fn dtype(&self) -> DType {
        self.as_slice().dtype()
    }

    pub fn len(&self) -> usize {
        each_column!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the elements.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().itemsize()
    }

    /// Bytes allocated (capacity), which is what memory use is made of.
    pub fn capacity_bytes(&self) -> usize {
        each_column!(self, v => v.capacity()) * self.dtype().itemsize()
    }

    pub fn as_slice(&self) -> Slice<'_> {
        match self {
            Column::I32(v) => Slice::I32(v),
            Column::I64(v) => Slice::I64(v),
            Column::F32(v) => Slice::F32(v),
            Column::F64(v) => Slice::F64(v),
            Column::Bool(v) => Slice::Bool(v),
        }
    }

    pub(crate) fn clear(&mut self) {
        each_column!(self, v => v.clear())
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        each_column!(self, v => v.shrink_to_fit())
    }

    /// Room for `additional` more values (`what` names them in the error).
    pub(crate) fn reserve(&mut self, additional: usize, what: &str) -> Result<()> {
        each_column!(self, v => grow(v, additional, what))
    }

    /// Append `segments` (start, len) of `src` in order. `src` must have this column's dtype
    /// (checked by the caller's validation; a mismatch is reported, never a panic).
    pub(crate) fn extend_segments(
        &mut self,
        src: Slice<'_>,
        segments: &[(usize, usize)],
        contiguous: bool,
    ) -> Result<()> {
        macro_rules! ext {
            ($dst:ident, $s:ident) => {{
                if contiguous {
                    grow($dst, $s.len(), "a buffer column")?;
                    $dst.extend_from_slice($s);
                } else {
                    let total: usize = segments.iter().map(|&(_, l)| l).sum();
                    grow($dst, total, "a buffer column")?;
                    for &(start, len) in segments {
                        $dst.extend_from_slice(&$s[start..start + len]);
                    }
                }
                Ok(())
            }};
        }
        match (self, src) {
            (Column::I32(d), Slice::I32(s)) => ext!(d, s),
            (Column::I64(d), Slice::I64(s)) => ext!(d, s),
            (Column::F32(d), Slice::F32(s)) => ext!(d, s),
            (Column::F64(d), Slice::F64(s)) => ext!(d, s),
            (Column::Bool(d), Slice::Bool(s)) => ext!(d, s),
            (d, s) => Err(CoreError::dtype(format!(
                "internal: column holds {} but {} was appended",
                d.dtype().name(),
                s.dtype().name()
            ))),
        }
    }

    /// Append every piece in order (all of this column's dtype, checked by validation).
    pub(crate) fn extend_pieces(&mut self, pieces: &[Slice<'_>]) -> Result<()> {
        let total: usize = pieces.iter().map(Slice::len).sum();
        self.reserve(total, "a buffer column")?;
        for p in pieces {
            self.extend_segments(*p, &[(0, p.len())], true)?;
        }
        Ok(())
    }

    /// Keep the elements of `segments` (start, len), in order, moving them to the front in
    /// place and dropping the rest. The segments must be increasing and disjoint (those of
    /// kept sequences, in buffer order); no allocation, no copy out.
    pub(crate) fn retain_segments(&mut self, segments: &[(usize, usize)]) {
        each_column!(self, v => {
            let mut w = 0usize;
            for &(start, len) in segments {
                if start != w {
                    v.copy_within(start..start + len, w);
                }
                w += len;
            }
            v.truncate(w);
        })
    }

    /// Bitwise equality (NaN equals NaN with the same bits); what an exact round trip means.
    pub fn bits_eq(&self, other: &Column) -> bool {
        match (self, other) {
            (Column::I32(a), Column::I32(b)) => a == b,
            (Column::I64(a), Column::I64(b)) => a == b,
            (Column::Bool(a), Column::Bool(b)) => a == b,
            (Column::F32(a), Column::F32(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (Column::F64(a), Column::F64(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        }
    }

    /// A new column with the elements at `idx` (for per-sequence fields of a minibatch).
    pub fn take(&self, idx: &[usize]) -> Column {
        match self {
            Column::I32(v) => Column::I32(idx.iter().map(|&i| v[i]).collect()),
            Column::I64(v) => Column::I64(idx.iter().map(|&i| v[i]).collect()),
            Column::F32(v) => Column::F32(idx.iter().map(|&i| v[i]).collect()),
            Column::F64(v) => Column::F64(idx.iter().map(|&i| v[i]).collect()),
            Column::Bool(v) => Column::Bool(idx.iter().map(|&i| v[i]).collect()),
        }
    }
}
