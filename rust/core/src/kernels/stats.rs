//! Masked statistics (mean, variance) and whitening, over the whole batch or per sequence.
//!
//! Values are accumulated in f64. Each fixed block of at most [`BLOCK`] slots (cut from the
//! flat buffer for batch statistics, from each row for per-row ones) is reduced with a
//! two-pass formula while it sits in cache, with a fixed set of accumulator lanes; the block
//! results are merged left to right with Chan et al.'s pairwise update. Block boundaries
//! depend only on the data layout, never on the thread count, so results are bit-identical
//! for any number of threads.
//!
//! Conventions (no NaN for empty selections): the mean of zero valid values is 0; the
//! variance of `n <= ddof` valid values is 0.
//!
//! [`weighted_whiten`] whitens with per-entry weights (the buffer's per-sequence advantages).
//! Logging summaries reduce with [`super::describe::flat_moments`] into the same [`Moments`].

use crate::error::{CoreError, Result};
use crate::layout::{check_mask, Float, Layout, MaskValue};
use crate::parallel::{for_each_item, split_rows};
use crate::simd::{keep_f64, vectorized};

/// Slots per reduction block (16 KiB of f32).
pub const BLOCK: usize = 4096;

/// Independent f64 accumulators per reduction: enough to hide the add latency with AVX-512
/// (two 8-wide registers) and AVX2 (four 4-wide). The lane structure is fixed, so the
/// summation order is the same on every CPU and thread count.
const LANES: usize = 16;

/// Count, mean and centred sum of squares of a set of values; mergeable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Moments {
    /// Chan et al.'s pairwise merge: the moments of the union of two disjoint sets.
    pub fn merge(&self, other: &Moments) -> Moments {
        if other.count == 0 {
            return *self;
        }
        if self.count == 0 {
            return *other;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        Moments {
            count: self.count + other.count,
            mean: self.mean + delta * (nb / n),
            m2: self.m2 + other.m2 + delta * delta * (na * nb / n),
        }
    }

    /// `m2 / (count − ddof)`, or 0 when `count <= ddof`.
    pub fn var(&self, ddof: u32) -> f64 {
        if self.count <= ddof as u64 {
            0.0
        } else {
            self.m2 / (self.count - ddof as u64) as f64
        }
    }

    /// Two-pass moments of the valid entries of one block (`x` and `m` of equal length).
    pub fn of_block<F: Float, M: MaskValue>(x: &[F], m: Option<&[M]>) -> Moments {
        let (sum, count) = sum_count(x, m);
        if count == 0 {
            return Moments::default();
        }
        let mean = sum / count as f64;
        let m2 = centred_squares(x, m, mean);
        Moments { count, mean, m2 }
    }

    /// Moments of the valid entries of `x`, block by block, merged left to right.
    pub fn of_slice<F: Float, M: MaskValue>(x: &[F], m: Option<&[M]>) -> Moments {
        let mut acc = Moments::default();
        for (k, xb) in x.chunks(BLOCK).enumerate() {
            let mb = m.map(|m| &m[k * BLOCK..k * BLOCK + xb.len()]);
            acc = acc.merge(&Moments::of_block(xb, mb));
        }
        acc
    }
}

/// Sum (f64, `LANES` lanes) and count of the valid entries.
#[inline]
pub fn sum_count<F: Float, M: MaskValue>(x: &[F], m: Option<&[M]>) -> (f64, u64) {
    vectorized(
        #[inline(always)]
        || sum_count_body(x, m),
    )
}

#[inline(always)]
fn sum_count_body<F: Float, M: MaskValue>(x: &[F], m: Option<&[M]>) -> (f64, u64) {
    let mut acc = [0.0f64; LANES];
    match m {
        None => {
            let mut it = x.chunks_exact(LANES);
            for c in &mut it {
                for k in 0..LANES {
                    acc[k] += c[k].to_f64();
                }
            }
            for (k, v) in it.remainder().iter().enumerate() {
                acc[k] += v.to_f64();
            }
            (lane_total(&acc), x.len() as u64)
        }
        Some(m) => {
            let mut cnt = [0u64; LANES];
            let mut xi = x.chunks_exact(LANES);
            let mut mi = m.chunks_exact(LANES);
            for (c, mc) in (&mut xi).zip(&mut mi) {
                for k in 0..LANES {
                    let on = mc[k].on();
                    acc[k] += keep_f64(c[k].to_f64(), on);
                    cnt[k] += on as u64;
                }
            }
            for (k, (v, mv)) in xi.remainder().iter().zip(mi.remainder()).enumerate() {
                let on = mv.on();
                acc[k] += keep_f64(v.to_f64(), on);
                cnt[k] += on as u64;
            }
            (lane_total(&acc), cnt.iter().sum())
        }
    }
}

/// Sum and count of the valid entries of one row, block by block (the blocks of
/// [`BLOCK`] slots added in order, so the result does not depend on threads).
pub(crate) fn row_sum_count<F: Float, M: MaskValue>(x: &[F], m: Option<&[M]>) -> (f64, u64) {
    let (mut s, mut c) = (0.0f64, 0u64);
    for (k, xb) in x.chunks(BLOCK).enumerate() {
        let (bs, bc) = sum_count(xb, m.map(|m| &m[k * BLOCK..k * BLOCK + xb.len()]));
        s += bs;
        c += bc;
    }
    (s, c)
}

/// Σ (x − mean)² over the valid entries (f64, `LANES` lanes).
#[inline]
fn centred_squares<F: Float, M: MaskValue>(x: &[F], m: Option<&[M]>, mean: f64) -> f64 {
    vectorized(
        #[inline(always)]
        || centred_squares_body(x, m, mean),
    )
}

#[inline(always)]
fn centred_squares_body<F: Float, M: MaskValue>(x: &[F], m: Option<&[M]>, mean: f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    match m {
        None => {
            let mut it = x.chunks_exact(LANES);
            for c in &mut it {
                for k in 0..LANES {
                    let d = c[k].to_f64() - mean;
                    acc[k] += d * d;
                }
            }
            for (k, v) in it.remainder().iter().enumerate() {
                let d = v.to_f64() - mean;
                acc[k] += d * d;
            }
        }
        Some(m) => {
            let mut xi = x.chunks_exact(LANES);
            let mut mi = m.chunks_exact(LANES);
            for (c, mc) in (&mut xi).zip(&mut mi) {
                for k in 0..LANES {
                    let d = c[k].to_f64() - mean;
                    acc[k] += keep_f64(d * d, mc[k].on());
                }
            }
            for (k, (v, mv)) in xi.remainder().iter().zip(mi.remainder()).enumerate() {
                let d = v.to_f64() - mean;
                acc[k] += keep_f64(d * d, mv.on());
            }
        }
    }
    lane_total(&acc)
}

#[inline(always)]
fn lane_total(acc: &[f64; LANES]) -> f64 {
    // pairwise, in a fixed order
    let mut v = *acc;
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for k in 0..w {
            v[k] += v[k + w];
        }
    }
    v[0]
}

/// Over which slots a statistic is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Every valid slot of the batch: one scalar.
    All,
    /// Each sequence separately: one value per row.
    PerRow,
}

impl Axis {
    /// From the Python `axis` argument: `None` → whole batch; `-1` or `1` → per sequence.
    pub fn from_arg(axis: Option<i64>) -> Result<Self> {
        match axis {
            None => Ok(Axis::All),
            Some(-1) | Some(1) => Ok(Axis::PerRow),
            Some(a) => Err(CoreError::option(format!(
                "axis must be None (whole batch) or -1 / 1 (per sequence), got {a}"
            ))),
        }
    }
}

fn check_ddof(ddof: i64) -> Result<u32> {
    if ddof != 0 && ddof != 1 {
        return Err(CoreError::option(format!(
            "ddof must be 0 or 1, got {ddof}"
        )));
    }
    Ok(ddof as u32)
}

/// Moments of every valid slot of the batch: fixed flat blocks, reduced in parallel, merged
/// in order.
pub fn batch_moments<F: Float, M: MaskValue>(
    layout: &Layout,
    x: &[F],
    mask: Option<&[M]>,
) -> Result<Moments> {
    layout.check_len("x", x.len())?;
    check_mask(layout, mask)?;
    let n = x.len();
    let blocks: Vec<usize> = (0..n.div_ceil(BLOCK)).collect();
    let mut parts = vec![Moments::default(); blocks.len()];
    let items: Vec<_> = parts.iter_mut().collect();
    for_each_item(n, items, |k, slot| {
        let r = k * BLOCK..((k + 1) * BLOCK).min(n);
        *slot = Moments::of_block(&x[r.clone()], mask.map(|m| &m[r]));
    });
    Ok(parts.iter().fold(Moments::default(), |a, b| a.merge(b)))
}

/// Moments of every row (rows in parallel; each row block by block, merged in order).
pub fn row_moments<F: Float, M: MaskValue>(
    layout: &Layout,
    x: &[F],
    mask: Option<&[M]>,
) -> Result<Vec<Moments>> {
    layout.check_len("x", x.len())?;
    check_mask(layout, mask)?;
    let mut out = vec![Moments::default(); layout.n_rows()];
    let items: Vec<_> = out.iter_mut().collect();
    for_each_item(layout.n_slots(), items, |i, slot| {
        let r = layout.row(i);
        *slot = Moments::of_slice(&x[r.clone()], mask.map(|m| &m[r]));
    });
    Ok(out)
}

/// Masked mean: one value (`Axis::All`) or one per row, written to `out` (length 1 or
/// `n_rows`). Zero valid values give 0.
pub fn masked_mean<F: Float, M: MaskValue>(
    layout: &Layout,
    x: &[F],
    mask: Option<&[M]>,
    axis: Axis,
    out: &mut [F],
) -> Result<()> {
    layout.check_len("x", x.len())?;
    check_mask(layout, mask)?;
    match axis {
        Axis::All => {
            check_out(out, 1)?;
            let n = x.len();
            let blocks = n.div_ceil(BLOCK);
            let mut parts = vec![(0.0f64, 0u64); blocks];
            let items: Vec<_> = parts.iter_mut().collect();
            for_each_item(n, items, |k, slot| {
                let r = k * BLOCK..((k + 1) * BLOCK).min(n);
                *slot = sum_count(&x[r.clone()], mask.map(|m| &m[r]));
            });
            let (s, c) = parts
                .iter()
                .fold((0.0, 0u64), |(s, c), p| (s + p.0, c + p.1));
            out[0] = F::from_f64(if c == 0 { 0.0 } else { s / c as f64 });
        }
        Axis::PerRow => {
            check_out(out, layout.n_rows())?;
            let items: Vec<_> = out.iter_mut().collect();
            for_each_item(layout.n_slots(), items, |i, o| {
                let r = layout.row(i);
                let (s, c) = row_sum_count(&x[r.clone()], mask.map(|m| &m[r]));
                *o = F::from_f64(if c == 0 { 0.0 } else { s / c as f64 });
            });
        }
    }
    Ok(())
}

/// Masked variance with `ddof` (0 or 1): one value or one per row, written to `out`.
pub fn masked_var<F: Float, M: MaskValue>(
    layout: &Layout,
    x: &[F],
    mask: Option<&[M]>,
    axis: Axis,
    ddof: i64,
    out: &mut [F],
) -> Result<()> {
    let ddof = check_ddof(ddof)?;
    match axis {
        Axis::All => {
            check_out(out, 1)?;
            out[0] = F::from_f64(batch_moments(layout, x, mask)?.var(ddof));
        }
        Axis::PerRow => {
            check_out(out, layout.n_rows())?;
            for (o, m) in out.iter_mut().zip(row_moments(layout, x, mask)?) {
                *o = F::from_f64(m.var(ddof));
            }
        }
    }
    Ok(())
}

/// Options of [`masked_whiten`].
#[derive(Debug, Clone, Copy)]
pub struct WhitenOptions {
    pub axis: Axis,
    pub shift_mean: bool,
    pub ddof: u32,
    pub eps: f64,
}

impl WhitenOptions {
    pub fn new(axis: Axis, shift_mean: bool, ddof: i64, eps: f64) -> Result<Self> {
        let ddof = check_ddof(ddof)?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(CoreError::option(format!(
                "eps must be finite and >= 0, got {eps}"
            )));
        }
        Ok(WhitenOptions {
            axis,
            shift_mean,
            ddof,
            eps,
        })
    }
}

/// Masked whitening: `(x − μ) / sqrt(σ² + eps)` on valid slots, plus `μ` back when
/// `shift_mean` is false; masked and padding slots are 0. `μ`, `σ²` over the batch or per row.
pub fn masked_whiten<F: Float, M: MaskValue>(
    layout: &Layout,
    x: &[F],
    mask: Option<&[M]>,
    opts: WhitenOptions,
    out: &mut [F],
) -> Result<()> {
    layout.check_len("output", out.len())?;
    let affine = |m: &Moments| {
        let inv = 1.0 / (m.var(opts.ddof) + opts.eps).sqrt();
        let add = if opts.shift_mean { 0.0 } else { m.mean };
        (m.mean, inv, add)
    };
    match opts.axis {
        Axis::All => {
            let (mu, inv, add) = affine(&batch_moments(layout, x, mask)?);
            let n = x.len();
            let items: Vec<_> = out.chunks_mut(BLOCK).collect();
            for_each_item(n, items, |k, o| {
                let r = k * BLOCK..k * BLOCK + o.len();
                whiten_slice(&x[r.clone()], mask.map(|m| &m[r]), mu, inv, add, o);
            });
        }
        Axis::PerRow => {
            let moments = row_moments(layout, x, mask)?;
            let rows = split_rows(layout, out);
            for_each_item(layout.n_slots(), rows, |i, o| {
                let (mu, inv, add) = affine(&moments[i]);
                let r = layout.row(i);
                whiten_slice(&x[r.clone()], mask.map(|m| &m[r]), mu, inv, add, o);
            });
        }
    }
    Ok(())
}

#[inline]
fn whiten_slice<F: Float, M: MaskValue>(
    x: &[F],
    m: Option<&[M]>,
    mu: f64,
    inv: f64,
    add: f64,
    out: &mut [F],
) {
    vectorized(
        #[inline(always)]
        || match m {
            None => {
                for (o, v) in out.iter_mut().zip(x) {
                    *o = F::from_f64((v.to_f64() - mu) * inv + add);
                }
            }
            Some(m) => {
                for ((o, v), mv) in out.iter_mut().zip(x).zip(m) {
                    *o = F::from_f64((v.to_f64() - mu) * inv + add).keep(mv.on());
                }
            }
        },
    )
}

fn check_out<F>(out: &[F], n: usize) -> Result<()> {
    if out.len() != n {
        return Err(CoreError::shape(format!(
            "output has {} entries, expected {n}",
            out.len()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Weighted whitening
// ---------------------------------------------------------------------------------------------

/// Whiten `x` in place with weights `w` (≥ 0): `(x − μ)/sqrt(σ² + eps)` where μ is the weighted
/// mean and σ² = Σ w(x − μ)² / (Σw − ddof) (two passes in f64; 0 when Σw ≤ ddof). `ddof` 0 is
/// the weighted population variance; `ddof` 1 with integer frequency weights is the unbiased
/// variance of the values repeated `w` times. Entries of weight 0 become 0 (all of `x` when
/// every weight is 0).
pub fn weighted_whiten<F: Float>(x: &mut [F], w: &[f64], ddof: f64, eps: f64) {
    let (mut sw, mut swx) = (0.0f64, 0.0f64);
    for (xi, &wi) in x.iter().zip(w) {
        if wi > 0.0 {
            sw += wi;
            swx += wi * xi.to_f64();
        }
    }
    if sw == 0.0 {
        x.iter_mut().for_each(|v| *v = F::ZERO);
        return;
    }
    let mu = swx / sw;
    let mut ss = 0.0f64;
    for (xi, &wi) in x.iter().zip(w) {
        if wi > 0.0 {
            let d = xi.to_f64() - mu;
            ss += wi * d * d;
        }
    }
    let var = if sw > ddof { ss / (sw - ddof) } else { 0.0 };
    let inv = 1.0 / (var + eps).sqrt();
    for (xi, &wi) in x.iter_mut().zip(w) {
        *xi = if wi > 0.0 {
            F::from_f64((xi.to_f64() - mu) * inv)
        } else {
            F::ZERO
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64]) -> (f64, f64) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    #[test]
    fn blocked_moments_match_naive() {
        let x: Vec<f64> = (0..10_000)
            .map(|i| ((i * 7919) % 1000) as f64 * 0.01 + 1e6)
            .collect();
        let m = Moments::of_slice::<f64, bool>(&x, None);
        let (mean, var) = naive(&x);
        assert!((m.mean - mean).abs() < 1e-9 * mean.abs());
        assert!((m.var(1) - var).abs() < 1e-9 * var);
        let l = Layout::padded(10, 1000);
        let b = batch_moments::<f64, bool>(&l, &x, None).unwrap();
        assert!((b.var(1) - var).abs() < 1e-9 * var);
    }

    #[test]
    fn masked_and_empty() {
        let l = Layout::ragged(&[0, 3, 3, 5], 5).unwrap();
        let x = [1.0f32, f32::NAN, 3.0, 4.0, 8.0];
        let m = [1u8, 0, 1, 1, 1];
        let mut out = [9.0f32; 3];
        masked_mean(&l, &x, Some(&m), Axis::PerRow, &mut out).unwrap();
        assert_eq!(out, [2.0, 0.0, 6.0]);
        masked_var(&l, &x, Some(&m), Axis::PerRow, 1, &mut out).unwrap();
        assert_eq!(out, [2.0, 0.0, 8.0]);
        let mut one = [0.0f32];
        masked_mean(&l, &x, Some(&m), Axis::All, &mut one).unwrap();
        assert_eq!(one, [4.0]);
        let mut w = [9.0f32; 5];
        let o = WhitenOptions::new(Axis::PerRow, true, 1, 0.0).unwrap();
        masked_whiten(&l, &x, Some(&m), o, &mut w).unwrap();
        let s = 0.5f64.sqrt();
        let expect = [-s, 0.0, s, -2.0 / 8f64.sqrt(), 2.0 / 8f64.sqrt()];
        for (a, b) in w.iter().zip(expect) {
            assert!((*a as f64 - b).abs() < 1e-6, "{w:?}");
        }
        assert_eq!(w[1], 0.0);
    }

    #[test]
    fn weighted_whiten_of_frequency_weights_is_the_repeated_values() {
        let mut x = [1.0f64, 4.0, 9.0];
        weighted_whiten(&mut x, &[2.0, 1.0, 0.0], 1.0, 0.0);
        // values 1, 1, 4: mean 2, unbiased variance 3
        let s = 3f64.sqrt();
        assert!((x[0] + 1.0 / s).abs() < 1e-12 && (x[1] - 2.0 / s).abs() < 1e-12);
        assert_eq!(x[2], 0.0);
    }

    #[test]
    fn merge_is_exact_for_disjoint_sets() {
        let a = Moments::of_block::<f64, bool>(&[1.0, 2.0], None);
        let b = Moments::of_block::<f64, bool>(&[3.0, 4.0, 5.0], None);
        let all = Moments::of_block::<f64, bool>(&[1.0, 2.0, 3.0, 4.0, 5.0], None);
        let m = a.merge(&b);
        assert_eq!(m.count, 5);
        assert!((m.mean - all.mean).abs() < 1e-15 && (m.m2 - all.m2).abs() < 1e-12);
        assert_eq!(Moments::default().var(1), 0.0);
        assert!(Axis::from_arg(Some(0)).is_err());
    }
}
