//! Layouts, element traits and row iteration shared by every kernel.
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
//! per row and run rows in parallel (rayon) only when there is enough work; every row is
//! computed by the same code whatever the thread count, so results are bit-identical.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

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
    /// "float32" or "float64", for messages.
    const NAME: &'static str;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
    /// `self` when `on`, else +0.0, branch-free (vectorises; NaN never leaks through).
    fn keep(self, on: bool) -> Self;
}

impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
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
}

impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
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
        validate_offsets(offsets, n_values, "offsets")?;
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

/// Validate a ragged `offsets` array named `name` over `n_values` values.
pub fn validate_offsets(offsets: &[i64], n_values: usize, name: &str) -> Result<()> {
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
    if last != n_values as i64 {
        return Err(CoreError::offsets(format!(
            "{name}[-1] must equal the number of values ({n_values}), got {last}"
        )));
    }
    Ok(())
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

// ---------------------------------------------------------------------------------------------
// Parallel execution
// ---------------------------------------------------------------------------------------------

/// Below this many slots a kernel runs serially on the calling thread: rayon's fork/join costs
/// a few microseconds, more than small inputs take in total.
pub const PAR_MIN_SLOTS: usize = 1 << 15;

/// Target number of slots per parallel task.
const PAR_GRAIN: usize = 1 << 14;

static PARALLEL: AtomicBool = AtomicBool::new(true);
static FORKED: AtomicBool = AtomicBool::new(false);

/// Enable or disable rayon parallelism process-wide (results are the same either way).
pub fn set_parallel(enabled: bool) {
    PARALLEL.store(enabled, Ordering::SeqCst);
}

/// Mark this process as a forked child: rayon stays off for good, since the parent's worker
/// threads do not exist here and the global pool would hang. Called by the Python glue's
/// `os.register_at_fork(after_in_child=...)` hook.
pub fn mark_forked_child() {
    FORKED.store(true, Ordering::SeqCst);
}

/// Whether kernels may use rayon.
pub fn parallel_enabled() -> bool {
    PARALLEL.load(Ordering::Relaxed) && !FORKED.load(Ordering::Relaxed)
}

/// Whether `work` slots spread over `items` independent items are worth running in parallel.
#[inline]
pub(crate) fn go_parallel(work: usize, items: usize) -> bool {
    items >= 2 && work >= PAR_MIN_SLOTS && parallel_enabled()
}

/// Run `f(i, item_i)` for every item, in parallel when `work` (slots touched) is large enough.
/// Items are independent (one per row, group or fixed-size chunk), so the result never depends
/// on the number of threads.
pub(crate) fn for_each_item<X, Fun>(work: usize, items: Vec<X>, f: Fun)
where
    X: Send,
    Fun: Fn(usize, X) + Sync + Send,
{
    let n = items.len();
    if go_parallel(work, n) {
        let min_len = (PAR_GRAIN * n / work.max(1)).max(1);
        items
            .into_par_iter()
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(i, x)| f(i, x));
    } else {
        items.into_iter().enumerate().for_each(|(i, x)| f(i, x));
    }
}

/// Split a flat output buffer into one mutable slice per row.
pub(crate) fn split_rows<'s, T>(layout: &Layout, out: &'s mut [T]) -> Vec<&'s mut [T]> {
    debug_assert_eq!(out.len(), layout.n_slots());
    match layout {
        Layout::Padded { rows, cols } => {
            if *cols == 0 {
                (0..*rows).map(|_| <&mut [T]>::default()).collect()
            } else {
                out.chunks_mut(*cols).collect()
            }
        }
        Layout::Ragged { offsets } => {
            let mut rest = out;
            let mut rows = Vec::with_capacity(offsets.len() - 1);
            for w in offsets.windows(2) {
                let (head, tail) = rest.split_at_mut((w[1] - w[0]) as usize);
                rows.push(head);
                rest = tail;
            }
            rows
        }
    }
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
    }

    #[test]
    fn rows_and_split() {
        let l = Layout::ragged(&[0, 2, 2, 5], 5).unwrap();
        assert_eq!(l.n_rows(), 3);
        assert_eq!(l.row(2), 2..5);
        let mut buf = [0u8; 5];
        let rows = split_rows(&l, &mut buf);
        assert_eq!(
            rows.iter().map(|r| r.len()).collect::<Vec<_>>(),
            vec![2, 0, 3]
        );
        let p = Layout::padded(3, 0);
        let mut empty: [u8; 0] = [];
        assert_eq!(split_rows(&p, &mut empty).len(), 3);
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
