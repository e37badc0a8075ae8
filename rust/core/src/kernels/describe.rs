//! Moments with the range of a set of values, for logging summaries (the buffer's
//! `advantages/*`, `returns/*`, `scores/*`, lengths): [`flat_moments`] into a [`Described`].
//!
//! The result is the kernels' [`Moments`]; the reduction order is its own: one global
//! two-pass (`mean = Σx / n`, then `m2 = Σ(x − mean)²`), each sum over blocks of 64 Ki slots
//! with 8 lanes, blocks in parallel and added in order, so bit-identical for any thread count.
//! Its rounding differs from [`super::stats::batch_moments`]' per-block merge in the last
//! bits (1–2 ulp of a logged std): the summaries keep it so that the statistics a trainer logs
//! stay what `tests/data/behaviour.json` recorded. Unlike the masked kernels it skips NaN
//! values by itself, and without a mask its first pass carries no selects (a NaN shows up as
//! a NaN sum and sends the block through the careful loop).

use super::stats::Moments;
use crate::layout::Float;
use crate::parallel::for_each_item;

/// [`Moments`] of a set of values together with its smallest and largest value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Described {
    pub moments: Moments,
    pub min: f64,
    pub max: f64,
}

impl Described {
    pub fn mean(&self) -> f64 {
        self.moments.mean
    }

    /// Population standard deviation (ddof 0).
    pub fn std(&self) -> f64 {
        self.moments.var(0).sqrt()
    }
}

/// Slots per block of [`flat_moments`] (blocks run in parallel, merged in block order).
const FLAT_BLOCK: usize = 1 << 16;
/// Accumulator lanes of [`flat_moments`].
const FLAT_LANES: usize = 8;

/// Moments, minimum and maximum of the non-NaN entries of `x` where `valid` (if given) is
/// true; `None` when no entry counts. See the module documentation for the order of sums.
pub fn flat_moments<F: Float>(x: &[F], valid: Option<&[bool]>) -> Option<Described> {
    let blocks = x.len().div_ceil(FLAT_BLOCK);
    let part = |k: usize| {
        let r = k * FLAT_BLOCK..((k + 1) * FLAT_BLOCK).min(x.len());
        (&x[r.clone()], valid.map(|m| &m[r]))
    };
    let mut firsts = vec![(0.0f64, 0.0f64, 0.0f64, 0.0f64); blocks];
    let items: Vec<_> = firsts.iter_mut().collect();
    for_each_item(x.len(), items, |k, slot| {
        let (xb, vb) = part(k);
        *slot = flat_first(xb, vb);
    });
    let (mut count, mut sum) = (0.0f64, 0.0f64);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(c, s, lo, hi) in &firsts {
        count += c;
        sum += s;
        min = min.min(lo);
        max = max.max(hi);
    }
    if count == 0.0 {
        return None;
    }
    let mean = sum / count;
    let mut seconds = vec![0.0f64; blocks];
    let items: Vec<_> = seconds.iter_mut().collect();
    for_each_item(x.len(), items, |k, slot| {
        let (xb, vb) = part(k);
        *slot = flat_second(xb, vb, mean);
    });
    Some(Described {
        moments: Moments {
            count: count as u64,
            mean,
            m2: seconds.iter().sum(),
        },
        min,
        max,
    })
}

/// Count, sum, min, max of one block of [`flat_moments`].
fn flat_first<F: Float>(x: &[F], valid: Option<&[bool]>) -> (f64, f64, f64, f64) {
    let finish = |cnt: f64, sum: [f64; FLAT_LANES], min: [F; FLAT_LANES], max: [F; FLAT_LANES]| {
        (
            cnt,
            sum.iter().sum::<f64>(),
            min.iter()
                .map(|&v| v.to_f64())
                .fold(f64::INFINITY, f64::min),
            max.iter()
                .map(|&v| v.to_f64())
                .fold(f64::NEG_INFINITY, f64::max),
        )
    };
    let body = x.len() / FLAT_LANES * FLAT_LANES;
    if valid.is_none() {
        let mut sum = [0.0f64; FLAT_LANES];
        let mut min = [F::INFINITY; FLAT_LANES];
        let mut max = [F::NEG_INFINITY; FLAT_LANES];
        for chunk in x[..body].chunks_exact(FLAT_LANES) {
            for (((s, lo), hi), &v) in sum.iter_mut().zip(&mut min).zip(&mut max).zip(chunk) {
                *s += v.to_f64();
                *lo = lo.fmin(v);
                *hi = hi.fmax(v);
            }
        }
        for (((s, lo), hi), &v) in sum.iter_mut().zip(&mut min).zip(&mut max).zip(&x[body..]) {
            *s += v.to_f64();
            *lo = lo.fmin(v);
            *hi = hi.fmax(v);
        }
        let out = finish(x.len() as f64, sum, min, max);
        if !out.1.is_nan() {
            return out;
        }
    }
    let mut cnt = [0.0f64; FLAT_LANES];
    let mut sum = [0.0f64; FLAT_LANES];
    let mut min = [F::INFINITY; FLAT_LANES];
    let mut max = [F::NEG_INFINITY; FLAT_LANES];
    for (j, &v) in x.iter().enumerate() {
        let k = j % FLAT_LANES;
        let on = valid.is_none_or(|m| m[j]) && !v.is_nan();
        let v = if on { v } else { F::ZERO };
        cnt[k] += if on { 1.0 } else { 0.0 };
        sum[k] += v.to_f64();
        min[k] = if on { min[k].fmin(v) } else { min[k] };
        max[k] = if on { max[k].fmax(v) } else { max[k] };
    }
    finish(cnt.iter().sum(), sum, min, max)
}

/// Sum of squared deviations from `mean` of one block (the entries [`flat_first`] counts).
fn flat_second<F: Float>(x: &[F], valid: Option<&[bool]>, mean: f64) -> f64 {
    let mut ss = [0.0f64; FLAT_LANES];
    if valid.is_none() {
        let body = x.len() / FLAT_LANES * FLAT_LANES;
        for chunk in x[..body].chunks_exact(FLAT_LANES) {
            for (s, &v) in ss.iter_mut().zip(chunk) {
                let d = v.to_f64() - mean;
                *s += d * d;
            }
        }
        for (s, &v) in ss.iter_mut().zip(&x[body..]) {
            let d = v.to_f64() - mean;
            *s += d * d;
        }
        let total: f64 = ss.iter().sum();
        if !total.is_nan() {
            return total;
        }
        ss = [0.0; FLAT_LANES];
    }
    for (j, &v) in x.iter().enumerate() {
        let on = valid.is_none_or(|m| m[j]) && !v.is_nan();
        let d = if on { v.to_f64() - mean } else { 0.0 };
        ss[j % FLAT_LANES] += d * d;
    }
    ss.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_moments_skip_nan_and_masked_entries() {
        let n = 3 * FLAT_BLOCK + 17;
        let mut x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 3.0)
            .collect();
        x[5] = f32::NAN;
        let valid: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
        let kept: Vec<f64> = (0..n)
            .filter(|&i| valid[i] && !x[i].is_nan())
            .map(|i| x[i] as f64)
            .collect();
        let c = kept.len() as f64;
        let mean = kept.iter().sum::<f64>() / c;
        let var = kept.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c;
        let d = flat_moments(&x, Some(&valid)).unwrap();
        assert_eq!(d.moments.count, kept.len() as u64);
        assert!((d.mean() - mean).abs() < 1e-9, "{d:?}");
        assert!((d.std() - var.sqrt()).abs() < 1e-9, "{d:?}");
        let lo = kept.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = kept.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!((d.min, d.max), (lo, hi));
        // Without a mask, the NaN sends its block through the careful loop: it is skipped.
        let all = flat_moments(&x, None).unwrap();
        assert_eq!(all.moments.count, n as u64 - 1);
        // The same bits with parallelism off.
        crate::parallel::set_parallel(false);
        let serial = flat_moments(&x, Some(&valid)).unwrap();
        crate::parallel::set_parallel(true);
        assert_eq!(serial, d);
        assert!(flat_moments::<f64>(&[f64::NAN], None).is_none());
        assert!(flat_moments::<f64>(&[], None).is_none());
    }
}
