//! Layouts and element traits shared by every kernel, and the one check of ragged offsets.
//!
//! Two layouts describe how a flat buffer of per-token values splits into sequences (rows):
//!
//! * **padded** `(B, T)`: row `i` is `values[i*T .. (i+1)*T]`, usually right-padded and paired
//!   with a mask of the same shape;
//! * **ragged**: the sequences concatenated, plus `offsets` (int64, `N + 1` entries,
//!   `offsets[0] == 0`, non-decreasing, `offsets[N] == values.len()`); row `i` is
//!   `values[offsets[i] .. offsets[i+1]]`. A mask of the same length is optional.
//!
//! Kernels take a [`Layout`], flat input slices and flat output slices. They split the outputs
//! per row ([`crate::parallel::split_rows`]) and run rows in parallel only when there is enough
//! work; every row is computed by the same code whatever the thread count, so results are
//! bit-identical.

use std::ops::Range;

use crate::error::{CoreError, Result};

// ---------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------

/// A floating-point element type of the kernels' inputs and outputs (f32 or f64).
///
/// Arithmetic inside kernels runs in f64 (`to_f64` / `from_f64`), except the purely
/// elementwise KL estimators, which run in the input precision (see `kl.rs`).
pub trait Float:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    /// "float32" or "float64", for messages.
    const NAME: &'static str;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
    /// `self` when `on`, else +0.0, branch-free (vectorises; NaN never leaks through).
    fn keep(self, on: bool) -> Self;
    /// IEEE minNum / maxNum: a NaN operand yields the other one.
    fn fmin(self, other: Self) -> Self;
    fn fmax(self, other: Self) -> Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INFINITY: Self = f32::INFINITY;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const NAME: &'static str = "float32";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    #[inline(always)]
    fn keep(self, on: bool) -> Self {
        f32::from_bits(self.to_bits() & (on as u32).wrapping_neg())
    }
    #[inline(always)]
    fn fmin(self, other: Self) -> Self {
        f32::min(self, other)
    }
    #[inline(always)]
    fn fmax(self, other: Self) -> Self {
        f32::max(self, other)
    }
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INFINITY: Self = f64::INFINITY;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const NAME: &'static str = "float64";
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline(always)]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    #[inline(always)]
    fn keep(self, on: bool) -> Self {
        f64::from_bits(self.to_bits() & (on as u64).wrapping_neg())
    }
    #[inline(always)]
    fn fmin(self, other: Self) -> Self {
        f64::min(self, other)
    }
    #[inline(always)]
    fn fmax(self, other: Self) -> Self {
        f64::max(self, other)
    }
}

/// An element of a token mask. An entry is *valid* when it is `true`, a nonzero integer, or a
/// float `> 0` (so a NaN in a float mask counts as masked).
pub trait MaskValue: Copy + Send + Sync + 'static {
    fn on(self) -> bool;
}

impl MaskValue for bool {
    #[inline(always)]
    fn on(self) -> bool {
        self
    }
}

macro_rules! int_mask {
    ($($t:ty),*) => {$(
        impl MaskValue for $t {
            #[inline(always)]
            fn on(self) -> bool {
                self != 0
            }
        }
    )*};
}
int_mask!(u8, i8, i32, i64);

impl MaskValue for f32 {
    #[inline(always)]
    fn on(self) -> bool {
        self > 0.0
    }
}

impl MaskValue for f64 {
    #[inline(always)]
    fn on(self) -> bool {
        self > 0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

/// How a flat buffer of `n_slots()` values splits into rows (sequences).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout<'a> {
    /// `rows × cols`, row-major.
    Padded { rows: usize, cols: usize },
    /// Validated offsets (`N + 1` entries).
    Ragged { offsets: &'a [i64] },
}

impl<'a> Layout<'a> {
    /// A padded `(rows, cols)` layout.
    pub fn padded(rows: usize, cols: usize) -> Layout<'static> {
        Layout::Padded { rows, cols }
    }

    /// A ragged layout over `n_values` values. Checks that `offsets` has at least one entry,
    /// starts at 0, never decreases and ends at `n_values`.
    pub fn ragged(offsets: &'a [i64], n_values: usize) -> Result<Self> {
        validate_offsets(offsets, Some(n_values), "offsets")?;
        Ok(Layout::Ragged { offsets })
    }

    /// The layout of an array of shape `shape` named `name`:
    /// with `offsets`, the array must be 1-D (ragged); without, 2-D is padded `(B, T)` and
    /// 1-D is a single sequence.
    pub fn from_shape(shape: &[usize], offsets: Option<&'a [i64]>, name: &str) -> Result<Self> {
        match (offsets, shape.len()) {
            (Some(off), 1) => Layout::ragged(off, shape[0]),
            (Some(_), nd) => Err(CoreError::shape(format!(
                "{name} must be 1-D (ragged values) when offsets is given, got a {nd}-D array of \
                 shape {}",
                fmt_shape(shape)
            ))),
            (None, 2) => Ok(Layout::padded(shape[0], shape[1])),
            (None, 1) => Ok(Layout::padded(1, shape[0])),
            (None, nd) => Err(CoreError::shape(format!(
                "{name} must be 2-D (B, T) padded, or 1-D with offsets (ragged), got a {nd}-D \
                 array of shape {}",
                fmt_shape(shape)
            ))),
        }
    }

    /// Number of rows (sequences).
    #[inline]
    pub fn n_rows(&self) -> usize {
        match self {
            Layout::Padded { rows, .. } => *rows,
            Layout::Ragged { offsets } => offsets.len() - 1,
        }
    }

    /// Number of value slots (B·T for padded, total tokens for ragged).
    #[inline]
    pub fn n_slots(&self) -> usize {
        match self {
            Layout::Padded { rows, cols } => rows * cols,
            Layout::Ragged { offsets } => offsets[offsets.len() - 1] as usize,
        }
    }

    /// The slots of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> Range<usize> {
        match self {
            Layout::Padded { cols, .. } => i * cols..(i + 1) * cols,
            Layout::Ragged { offsets } => offsets[i] as usize..offsets[i + 1] as usize,
        }
    }

    /// Check that the flat array `name` has one value per slot.
    pub fn check_len(&self, name: &str, len: usize) -> Result<()> {
        if len != self.n_slots() {
            return Err(CoreError::shape(format!(
                "{name} has {len} values, expected {} ({})",
                self.n_slots(),
                self.describe()
            )));
        }
        Ok(())
    }

    /// Check that the per-sequence array `name` has one value per row.
    pub fn check_rows(&self, name: &str, len: usize) -> Result<()> {
        if len != self.n_rows() {
            return Err(CoreError::shape(format!(
                "{name} has {len} entries, expected one per sequence: {} ({})",
                self.n_rows(),
                self.describe()
            )));
        }
        Ok(())
    }

    /// "padded (B=4, T=6)" or "ragged, 4 sequences, 17 tokens".
    pub fn describe(&self) -> String {
        match self {
            Layout::Padded { rows, cols } => format!("padded (B={rows}, T={cols})"),
            Layout::Ragged { offsets } => format!(
                "ragged, {} sequences, {} tokens",
                offsets.len() - 1,
                offsets[offsets.len() - 1]
            ),
        }
    }
}

/// Validate a ragged `offsets` array named `name`: at least one entry, `offsets[0] == 0`,
/// non-decreasing, and, when `n_values` is given, `offsets[N] == n_values`. The only offsets
/// check of the core: kernel layouts and the buffer's saved state both go through it.
pub fn validate_offsets(offsets: &[i64], n_values: Option<usize>, name: &str) -> Result<()> {
    let Some(&first) = offsets.first() else {
        return Err(CoreError::offsets(format!(
            "{name} must have N + 1 entries for N sequences (at least 1), got an empty array"
        )));
    };
    if first != 0 {
        return Err(CoreError::offsets(format!(
            "{name}[0] must be 0, got {first}"
        )));
    }
    for (i, w) in offsets.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(CoreError::offsets(format!(
                "{name} must be non-decreasing: {name}[{}] = {} < {name}[{i}] = {}",
                i + 1,
                w[1],
                w[0]
            )));
        }
    }
    let last = offsets[offsets.len() - 1];
    match n_values {
        Some(n) if last != n as i64 => Err(CoreError::offsets(format!(
            "{name}[-1] must equal the number of values ({n}), got {last}"
        ))),
        _ => Ok(()),
    }
}

/// Fail with a `ShapeError` unless the two shapes are equal: "values has shape (4, 6), rewards
/// has shape (4, 5)".
pub fn ensure_same_shape(
    name: &str,
    shape: &[usize],
    like: &str,
    like_shape: &[usize],
) -> Result<()> {
    if shape != like_shape {
        return Err(CoreError::shape(format!(
            "{name} has shape {}, {like} has shape {}; they must match",
            fmt_shape(shape),
            fmt_shape(like_shape)
        )));
    }
    Ok(())
}

/// `(4, 6)` / `(5,)`.
pub fn fmt_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// An optional mask checked against the layout.
pub fn check_mask<M>(layout: &Layout, mask: Option<&[M]>) -> Result<()> {
    if let Some(m) = mask {
        layout.check_len("mask", m.len())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_validation() {
        assert!(Layout::ragged(&[0, 2, 2, 5], 5).is_ok());
        let e = Layout::ragged(&[], 0).unwrap_err();
        assert!(matches!(e, CoreError::Offsets(_)), "{e}");
        let e = Layout::ragged(&[1, 2], 2).unwrap_err();
        assert!(e.message().contains("offsets[0] must be 0, got 1"), "{e}");
        let e = Layout::ragged(&[0, 3, 2], 2).unwrap_err();
        assert!(e.message().contains("non-decreasing"), "{e}");
        let e = Layout::ragged(&[0, 2, 4], 5).unwrap_err();
        assert!(e.message().contains("(5), got 4"), "{e}");
        assert!(validate_offsets(&[0, 2, 4], None, "o").is_ok());
        let e = validate_offsets(&[0, 3, 2], None, "o").unwrap_err();
        assert_eq!(e.message(), "o must be non-decreasing: o[2] = 2 < o[1] = 3");
    }

    #[test]
    fn rows() {
        let l = Layout::ragged(&[0, 2, 2, 5], 5).unwrap();
        assert_eq!(l.n_rows(), 3);
        assert_eq!(l.row(2), 2..5);
    }

    #[test]
    fn shapes() {
        assert_eq!(
            Layout::from_shape(&[2, 3], None, "x").unwrap(),
            Layout::padded(2, 3)
        );
        assert_eq!(
            Layout::from_shape(&[4], None, "x").unwrap(),
            Layout::padded(1, 4)
        );
        let e = Layout::from_shape(&[2, 3], Some(&[0, 6]), "x").unwrap_err();
        assert!(e.message().contains("x must be 1-D"), "{e}");
        let e = Layout::from_shape(&[1, 2, 3], None, "x").unwrap_err();
        assert!(e.message().contains("(1, 2, 3)"), "{e}");
        let e = ensure_same_shape("values", &[4, 6], "rewards", &[4, 5]).unwrap_err();
        assert_eq!(
            e.message(),
            "values has shape (4, 6), rewards has shape (4, 5); they must match"
        );
    }
}
