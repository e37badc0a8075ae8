//! Group-relative advantages for the GRPO family (GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline),
//! from one score per sequence.
//!
//! For sequence `i` in group `g` with `n_g` scorable (non-NaN) members, group mean `μ_g` and
//! standard deviation `σ_g = sqrt(Σ(x − μ_g)² / (n_g − ddof))`:
//!
//! ```text
//! baseline = mean:           c_i = r_i − μ_g
//! baseline = leave_one_out:  c_i = r_i − (Σ_g r − r_i)/(n_g − 1) = n_g/(n_g − 1)·(r_i − μ_g)
//! scale = group:  A_i = c_i / (σ_g + eps)
//! scale = batch:  A_i = c_i / (σ_batch + eps)    (σ over every scorable score of the batch)
//! scale = none:   A_i = c_i
//! ```
//!
//! * NaN scores (unscorable samples) are left out of every statistic and get `A = 0`.
//! * A group with one scorable member gets `0` (`singleton = zero`) or its raw score
//!   (`singleton = raw`).
//! * A group whose scorable scores are all bit-identical gets exactly `0` (its σ is 0); such
//!   groups are counted in [`GroupStats::num_zero_std`].
//!
//! Statistics are two-pass in f64. The work is O(B) and runs serially.

use std::collections::HashMap;
use std::str::FromStr;

use crate::error::{CoreError, Result};
use crate::layout::Float;

/// What each score is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// The group mean (GRPO).
    Mean,
    /// The mean of the other members (RLOO).
    LeaveOneOut,
}

impl FromStr for Baseline {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Baseline::Mean),
            "leave_one_out" => Ok(Baseline::LeaveOneOut),
            _ => Err(CoreError::option(format!(
                "baseline must be 'mean' or 'leave_one_out', got {s:?}"
            ))),
        }
    }
}

/// What the centred scores are divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The group's standard deviation (+ eps).
    Group,
    /// The standard deviation of every scorable score of the batch (+ eps).
    Batch,
    /// Nothing (Dr.GRPO, RLOO).
    None,
}

impl FromStr for Scale {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "group" => Ok(Scale::Group),
            "batch" => Ok(Scale::Batch),
            "none" => Ok(Scale::None),
            _ => Err(CoreError::option(format!(
                "scale must be 'group', 'batch' or 'none', got {s:?}"
            ))),
        }
    }
}

/// What a group with one scorable member gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Singleton {
    /// Advantage 0.
    Zero,
    /// Its raw score.
    Raw,
}

impl FromStr for Singleton {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "zero" => Ok(Singleton::Zero),
            "raw" => Ok(Singleton::Raw),
            _ => Err(CoreError::option(format!(
                "singleton must be 'zero' or 'raw', got {s:?}"
            ))),
        }
    }
}

/// Options of [`group_advantages`].
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    pub baseline: Baseline,
    pub scale: Scale,
    /// 0 (population) or 1 (unbiased, every anchor's choice).
    pub ddof: u32,
    pub eps: f64,
    pub singleton: Singleton,
}

impl GroupOptions {
    /// Check `ddof` (0 or 1) and `eps` (finite, >= 0).
    pub fn new(
        baseline: Baseline,
        scale: Scale,
        ddof: i64,
        eps: f64,
        singleton: Singleton,
    ) -> Result<Self> {
        if ddof != 0 && ddof != 1 {
            return Err(CoreError::option(format!(
                "ddof must be 0 or 1, got {ddof}"
            )));
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(CoreError::option(format!(
                "eps must be finite and >= 0, got {eps}"
            )));
        }
        Ok(GroupOptions {
            baseline,
            scale,
            ddof: ddof as u32,
            eps,
            singleton,
        })
    }
}

/// How sequences form groups.
#[derive(Debug, Clone, Copy)]
pub enum Groups<'a> {
    /// One id per sequence, any order, any group sizes.
    Ids(&'a [i64]),
    /// Contiguous groups of this size (`B` must be a multiple).
    Size(usize),
}

impl<'a> Groups<'a> {
    /// From the Python arguments: exactly one of `group_ids` / `group_size`.
    pub fn from_args(ids: Option<&'a [i64]>, size: Option<i64>) -> Result<Self> {
        match (ids, size) {
            (Some(_), Some(_)) => Err(CoreError::option(
                "pass either group_ids or group_size, not both".to_string(),
            )),
            (None, None) => Err(CoreError::option(
                "group_advantages needs group_ids (one id per sequence) or group_size \
                 (contiguous groups)"
                    .to_string(),
            )),
            (Some(ids), None) => Ok(Groups::Ids(ids)),
            (None, Some(g)) if g <= 0 => Err(CoreError::option(format!(
                "group_size must be a positive integer, got {g}"
            ))),
            (None, Some(g)) => Ok(Groups::Size(g as usize)),
        }
    }
}

/// Counts describing one call of [`group_advantages`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Distinct groups.
    pub num_groups: usize,
    /// NaN (unscorable) scores.
    pub num_nan: usize,
    /// Groups with exactly one scorable member.
    pub num_singleton: usize,
    /// Groups with at least two scorable members, all equal (σ = 0).
    pub num_zero_std: usize,
}

impl GroupStats {
    /// `num_zero_std / num_groups` (0 for an empty batch): TRL's `frac_reward_zero_std`.
    pub fn frac_zero_std(&self) -> f64 {
        if self.num_groups == 0 {
            0.0
        } else {
            self.num_zero_std as f64 / self.num_groups as f64
        }
    }
}

/// Dense group index (in order of first appearance) of every sequence, and the group count.
pub fn factorize(ids: &[i64]) -> (Vec<u32>, usize) {
    let n = ids.len();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return (out, 0);
    }
    let (lo, hi) = ids
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let span = (hi as i128 - lo as i128) as u128;
    let mut count = 0u32;
    if span < (4 * n as u128 + 1024) {
        // Small id range: a direct lookup table.
        let mut table = vec![u32::MAX; span as usize + 1];
        for &id in ids {
            let slot = &mut table[(id - lo) as usize];
            if *slot == u32::MAX {
                *slot = count;
                count += 1;
            }
            out.push(*slot);
        }
    } else {
        let mut map: HashMap<i64, u32> = HashMap::with_capacity(n);
        for &id in ids {
            let g = *map.entry(id).or_insert_with(|| {
                count += 1;
                count - 1
            });
            out.push(g);
        }
    }
    (out, count as usize)
}

#[derive(Clone, Copy)]
struct Acc {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    m2: f64,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            m2: 0.0,
        }
    }
}

/// Group-relative advantages of `scores` (one per sequence) into `out` (same length).
pub fn group_advantages<F: Float>(
    scores: &[F],
    groups: Groups,
    opts: &GroupOptions,
    out: &mut [F],
) -> Result<GroupStats> {
    let b = scores.len();
    if out.len() != b {
        return Err(CoreError::shape(format!(
            "advantages output has {} entries, scores has {b}",
            out.len()
        )));
    }
    if let Some(i) = scores.iter().position(|x| x.to_f64().is_infinite()) {
        return Err(CoreError::option(format!(
            "scores[{i}] is {:?}; scores must be finite (NaN marks an unscorable sample)",
            scores[i]
        )));
    }
    let (gid, n_groups) = match groups {
        Groups::Ids(ids) => {
            if ids.len() != b {
                return Err(CoreError::shape(format!(
                    "group_ids has {} entries, scores has {b}; pass one id per sequence",
                    ids.len()
                )));
            }
            factorize(ids)
        }
        Groups::Size(g) => {
            if !b.is_multiple_of(g) {
                return Err(CoreError::shape(format!(
                    "scores has {b} entries, not a multiple of group_size={g}"
                )));
            }
            ((0..b).map(|i| (i / g) as u32).collect(), b / g)
        }
    };

    // Pass 1: counts, sums, extremes of the scorable scores of every group.
    let mut acc = vec![Acc::default(); n_groups];
    let mut stats = GroupStats {
        num_groups: n_groups,
        ..Default::default()
    };
    for (x, &g) in scores.iter().zip(&gid) {
        let x = x.to_f64();
        if x.is_nan() {
            stats.num_nan += 1;
            continue;
        }
        let a = &mut acc[g as usize];
        a.n += 1;
        a.sum += x;
        a.min = a.min.min(x);
        a.max = a.max.max(x);
    }
    // Means; bit-identical groups take their common value as the mean, exactly.
    let mean: Vec<f64> = acc
        .iter()
        .map(|a| {
            if a.n > 0 && a.min == a.max {
                a.min
            } else {
                a.sum / a.n.max(1) as f64
            }
        })
        .collect();
    // Pass 2: centred sums of squares.
    for (x, &g) in scores.iter().zip(&gid) {
        let x = x.to_f64();
        if !x.is_nan() {
            let d = x - mean[g as usize];
            acc[g as usize].m2 += d * d;
        }
    }
    for a in &acc {
        if a.n == 1 {
            stats.num_singleton += 1;
        } else if a.n >= 2 && a.min == a.max {
            stats.num_zero_std += 1;
        }
    }
    let ddof = opts.ddof as f64;
    let batch_std = if opts.scale == Scale::Batch {
        batch_std(scores, ddof)
    } else {
        0.0
    };

    for ((o, x), &g) in out.iter_mut().zip(scores).zip(&gid) {
        let x = x.to_f64();
        let a = &acc[g as usize];
        let adv = if x.is_nan() {
            0.0
        } else if a.n == 1 {
            match opts.singleton {
                Singleton::Zero => 0.0,
                Singleton::Raw => x,
            }
        } else if a.min == a.max {
            0.0
        } else {
            let n = a.n as f64;
            let centred = x - mean[g as usize];
            let c = match opts.baseline {
                Baseline::Mean => centred,
                Baseline::LeaveOneOut => centred * n / (n - 1.0),
            };
            match opts.scale {
                Scale::Group => c / ((a.m2 / (n - ddof)).sqrt() + opts.eps),
                Scale::Batch => c / (batch_std + opts.eps),
                Scale::None => c,
            }
        };
        *o = F::from_f64(adv);
    }
    Ok(stats)
}

/// Two-pass standard deviation of the non-NaN scores (0 when there are `<= ddof` of them).
fn batch_std<F: Float>(scores: &[F], ddof: f64) -> f64 {
    let (mut n, mut sum) = (0u64, 0.0f64);
    for x in scores {
        let x = x.to_f64();
        if !x.is_nan() {
            n += 1;
            sum += x;
        }
    }
    if (n as f64) <= ddof {
        return 0.0;
    }
    let mean = sum / n as f64;
    let m2: f64 = scores
        .iter()
        .map(|x| x.to_f64())
        .filter(|x| !x.is_nan())
        .map(|x| (x - mean) * (x - mean))
        .sum();
    (m2 / (n as f64 - ddof)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(baseline: &str, scale: &str, singleton: &str) -> GroupOptions {
        GroupOptions::new(
            baseline.parse().unwrap(),
            scale.parse().unwrap(),
            1,
            1e-6,
            singleton.parse().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn grpo_by_size_and_by_ids_agree() {
        let s = [1.0f64, 0.0, 0.5, 2.0, 3.0, 4.0];
        let mut a = [0.0; 6];
        let o = opts("mean", "group", "zero");
        let st = group_advantages(&s, Groups::Size(3), &o, &mut a).unwrap();
        assert_eq!(
            st,
            GroupStats {
                num_groups: 2,
                ..Default::default()
            }
        );
        // group 0: mean 0.5, std 0.5 -> [1, -1, 0] / (1 + 2e-6)
        assert!((a[0] - 0.5 / (0.5 + 1e-6)).abs() < 1e-15);
        assert_eq!(a[2], 0.0);
        let mut b = [0.0; 6];
        // same groups, shuffled ids with large values (hash path)
        let ids = [i64::MAX, i64::MAX, i64::MAX, -7, -7, -7];
        group_advantages(&s, Groups::Ids(&ids), &o, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn rloo_is_leave_one_out() {
        let s = [1.0f64, 2.0, 6.0];
        let mut a = [0.0; 3];
        group_advantages(
            &s,
            Groups::Size(3),
            &opts("leave_one_out", "none", "zero"),
            &mut a,
        )
        .unwrap();
        let expect = [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5];
        for (x, e) in a.iter().zip(expect) {
            assert!((x - e).abs() < 1e-12, "{a:?}");
        }
    }

    #[test]
    fn nan_singleton_and_zero_std() {
        // groups: [nan, 3] (singleton after NaN), [0.1, 0.1, 0.1] (zero std), [5] (singleton)
        let s = [f64::NAN, 3.0, 0.1, 0.1, 0.1, 5.0];
        let ids = [0, 0, 1, 1, 1, 2];
        let mut a = [9.0; 6];
        let st = group_advantages(
            &s,
            Groups::Ids(&ids),
            &opts("mean", "group", "zero"),
            &mut a,
        )
        .unwrap();
        assert_eq!(a, [0.0; 6]);
        assert_eq!(
            st,
            GroupStats {
                num_groups: 3,
                num_nan: 1,
                num_singleton: 2,
                num_zero_std: 1
            }
        );
        assert!((st.frac_zero_std() - 1.0 / 3.0).abs() < 1e-15);
        group_advantages(&s, Groups::Ids(&ids), &opts("mean", "group", "raw"), &mut a).unwrap();
        assert_eq!(a, [0.0, 3.0, 0.0, 0.0, 0.0, 5.0]);
    }

    #[test]
    fn factorize_orders_by_first_appearance() {
        assert_eq!(factorize(&[5, 3, 5, 9]), (vec![0, 1, 0, 2], 3));
        assert_eq!(
            factorize(&[i64::MIN, i64::MAX, i64::MIN]),
            (vec![0, 1, 0], 2)
        );
    }

    #[test]
    fn errors() {
        let o = opts("mean", "group", "zero");
        let mut a = [0.0f32; 5];
        let e = group_advantages(&[0.0f32; 5], Groups::Size(2), &o, &mut a).unwrap_err();
        assert_eq!(
            e,
            CoreError::shape("scores has 5 entries, not a multiple of group_size=2")
        );
        assert!(Groups::from_args(None, Some(-2))
            .unwrap_err()
            .message()
            .contains("got -2"));
        assert!("grp".parse::<Scale>().is_err());
        assert!(GroupOptions::new(Baseline::Mean, Scale::Group, 2, 0.0, Singleton::Zero).is_err());
        let e =
            group_advantages(&[0.0, f32::INFINITY], Groups::Size(1), &o, &mut a[..2]).unwrap_err();
        assert!(e.message().starts_with("scores[1] is inf"), "{e}");
    }
}
