//! Mergeable running mean and variance (for reward normalisation across steps and ranks).
//!
//! The state is `(count, mean, m2)`; a batch is reduced two-pass in f64 (see
//! [`super::stats::Moments`]) and folded in with Chan et al.'s pairwise update, which is also
//! how two accumulators (e.g. from two data-parallel ranks) merge. Merging is exact up to
//! rounding and does not depend on how the data was split into batches.

use super::stats::{batch_moments, Moments};
use crate::error::{CoreError, Result};
use crate::layout::{Float, Layout, MaskValue};

/// Running moments with a fixed `ddof` for [`RunningMoments::var`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunningMoments {
    pub moments: Moments,
    pub ddof: u32,
}

impl RunningMoments {
    pub fn new(ddof: i64) -> Result<Self> {
        if ddof != 0 && ddof != 1 {
            return Err(CoreError::option(format!(
                "ddof must be 0 or 1, got {ddof}"
            )));
        }
        Ok(RunningMoments {
            moments: Moments::default(),
            ddof: ddof as u32,
        })
    }

    /// Fold in the valid entries of `x`.
    pub fn update<F: Float, M: MaskValue>(&mut self, x: &[F], mask: Option<&[M]>) -> Result<()> {
        if let Some(m) = mask {
            if m.len() != x.len() {
                return Err(CoreError::shape(format!(
                    "mask has {} values, x has {}; they must match",
                    m.len(),
                    x.len()
                )));
            }
        }
        // The batch's blocks in parallel when large, merged in order: the same bits as
        // `Moments::of_slice` for any thread count.
        let batch = batch_moments(&Layout::padded(1, x.len()), x, mask)?;
        self.moments = self.moments.merge(&batch);
        Ok(())
    }

    /// Fold in another accumulator (its `ddof` is ignored).
    pub fn merge(&mut self, other: &RunningMoments) {
        self.moments = self.moments.merge(&other.moments);
    }

    pub fn count(&self) -> u64 {
        self.moments.count
    }
    /// 0 before any value was seen.
    pub fn mean(&self) -> f64 {
        self.moments.mean
    }
    /// 0 while `count <= ddof`.
    pub fn var(&self) -> f64 {
        self.moments.var(self.ddof)
    }
    pub fn std(&self) -> f64 {
        self.var().sqrt()
    }

    /// Restore from serialized parts, checking they are consistent.
    pub fn from_parts(count: u64, mean: f64, m2: f64, ddof: i64) -> Result<Self> {
        let mut r = RunningMoments::new(ddof)?;
        if !mean.is_finite() || !m2.is_finite() || m2 < 0.0 {
            return Err(CoreError::state(format!(
                "RunningMoments state needs finite mean and m2 >= 0, got mean={mean}, m2={m2}"
            )));
        }
        if count == 0 && (mean != 0.0 || m2 != 0.0) {
            return Err(CoreError::state(format!(
                "RunningMoments state with count=0 must have mean=0 and m2=0, got mean={mean}, \
                 m2={m2}"
            )));
        }
        r.moments = Moments { count, mean, m2 };
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_merge_agree_with_one_pass() {
        let x: Vec<f64> = (0..1000).map(|i| (i as f64).sin() * 3.0 + 100.0).collect();
        let mut a = RunningMoments::new(1).unwrap();
        for c in x.chunks(37) {
            a.update::<f64, bool>(c, None).unwrap();
        }
        let mut b = RunningMoments::new(1).unwrap();
        b.update::<f64, bool>(&x[..500], None).unwrap();
        let mut c = RunningMoments::new(1).unwrap();
        c.update::<f64, bool>(&x[500..], None).unwrap();
        b.merge(&c);
        let mut all = RunningMoments::new(1).unwrap();
        all.update::<f64, bool>(&x, None).unwrap();
        for r in [a, b] {
            assert_eq!(r.count(), 1000);
            assert!((r.mean() - all.mean()).abs() < 1e-12);
            assert!((r.var() - all.var()).abs() < 1e-10);
        }
        assert!(RunningMoments::from_parts(0, 1.0, 0.0, 1).is_err());
        assert!(RunningMoments::new(3).is_err());
    }
}
