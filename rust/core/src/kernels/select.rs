//! Selections over a batch, the bookkeeping of the 2026 update rules: which groups of a
//! rollout are informative (DAPO's dynamic sampling), the quantile of a set of values with
//! linear interpolation (the top-entropy threshold), and the k largest values (KL-Cov).
//!
//! ```text
//! informative_groups:  keep group g  iff  it has one row,
//!                      or ≥ 2 finite scores, not all equal, with population std > min_std
//! quantile_linear:     v sorted, h = q·(n − 1), i = ⌊h⌋, t = h − i:
//!                      v[i] + (v[i+1] − v[i])·t        (t < ½)
//!                      v[i+1] − (v[i+1] − v[i])·(1 − t)  (t ≥ ½)      numpy's / torch's "linear"
//! top_k_mask:          the k largest values; ties go to the earlier index (−0 ties +0, as in
//!                      numpy's stable argsort of −values)
//! ```
//!
//! A group's score statistics are two-pass in f64 over its finite (scorable) scores, like the
//! group advantages ([`super::group`]). "All equal" is exact (every finite score compares
//! equal to the first), so a group of equal scores is dropped even where rounding would make
//! its computed std a hair above 0 (`np.std([0.1, 0.1, 0.1])` is 1.4e-17). The work is O(N)
//! (O(N log N) for the sorts) and runs serially.

use crate::error::{CoreError, Result};
use crate::kernels::group::factorize;

/// Counts of one [`informative_groups`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupFilterCounts {
    /// Distinct groups.
    pub num_groups: usize,
    /// Groups kept (informative, or of one row).
    pub kept_groups: usize,
    /// Rows of the kept groups.
    pub kept_rows: usize,
}

#[derive(Clone, Copy, Default)]
struct GroupAcc {
    rows: usize,
    finite: usize,
    sum: f64,
    first: f64,
    all_equal: bool,
    m2: f64,
}

/// Which rows belong to a group worth training on (see the module's rule).
///
/// * `scores`: one score per row (NaN = unscorable, left out of the statistics).
/// * `group_ids`: the group of each row, any order, any group sizes.
/// * `min_std`: finite, ≥ 0.
///
/// Returns the keep flag of every row and the counts.
pub fn informative_groups(
    scores: &[f64],
    group_ids: &[i64],
    min_std: f64,
) -> Result<(Vec<bool>, GroupFilterCounts)> {
    if scores.len() != group_ids.len() {
        return Err(CoreError::shape(format!(
            "scores has {} values, group_ids has {}",
            scores.len(),
            group_ids.len()
        )));
    }
    if !(min_std.is_finite() && min_std >= 0.0) {
        return Err(CoreError::option(format!(
            "min_std must be finite and >= 0, got {min_std}"
        )));
    }
    let (gid, n_groups) = factorize(group_ids);
    let mut acc = vec![
        GroupAcc {
            all_equal: true,
            ..GroupAcc::default()
        };
        n_groups
    ];
    for (&g, &x) in gid.iter().zip(scores) {
        let a = &mut acc[g as usize];
        a.rows += 1;
        if x.is_finite() {
            if a.finite == 0 {
                a.first = x;
            } else if x != a.first {
                a.all_equal = false;
            }
            a.finite += 1;
            a.sum += x;
        }
    }
    for (&g, &x) in gid.iter().zip(scores) {
        let a = &mut acc[g as usize];
        if x.is_finite() {
            let d = x - a.sum / a.finite as f64;
            a.m2 += d * d;
        }
    }
    let keep_group: Vec<bool> = acc
        .iter()
        .map(|a| {
            a.rows == 1
                || (a.finite >= 2 && !a.all_equal && (a.m2 / a.finite as f64).sqrt() > min_std)
        })
        .collect();
    let keep: Vec<bool> = gid.iter().map(|&g| keep_group[g as usize]).collect();
    let counts = GroupFilterCounts {
        num_groups: n_groups,
        kept_groups: keep_group.iter().filter(|&&k| k).count(),
        kept_rows: keep.iter().filter(|&&k| k).count(),
    };
    Ok((keep, counts))
}

fn check_finite(values: &[f64], what: &str) -> Result<()> {
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(CoreError::option(format!(
            "{what} must be finite; value {i} is {}",
            values[i]
        )));
    }
    Ok(())
}

/// The `q` quantile of `values` with linear interpolation (numpy's and torch's default).
pub fn quantile_linear(values: &[f64], q: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&q) {
        return Err(CoreError::option(format!("q must be in [0, 1], got {q}")));
    }
    if values.is_empty() {
        return Err(CoreError::shape("the quantile of no values is undefined"));
    }
    check_finite(values, "values")?;
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let h = q * (n - 1) as f64;
    let i = (h.floor() as usize).min(n - 1);
    let j = (i + 1).min(n - 1);
    let t = h - i as f64;
    let (a, b) = (v[i], v[j]);
    let diff = b - a;
    Ok(if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    })
}

/// A mask of the `k` largest `values` (`k` at most `values.len()`), ties to the earlier index.
pub fn top_k_mask(values: &[f64], k: usize) -> Result<Vec<bool>> {
    if k > values.len() {
        return Err(CoreError::option(format!(
            "k = {k} is more than the {} values",
            values.len()
        )));
    }
    check_finite(values, "values")?;
    let mut idx: Vec<usize> = (0..values.len()).collect();
    // finite, so partial_cmp is total here; unlike total_cmp it ties −0 with +0
    idx.sort_by(|&a, &b| {
        values[b]
            .partial_cmp(&values[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    let mut out = vec![false; values.len()];
    for &i in &idx[..k] {
        out[i] = true;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_equal_scores_go_singletons_stay() {
        let ids = [7, 7, 3, 3, 3, 9, 5, 5];
        let s = [1.0, 1.0, 0.0, 1.0, 0.5, 2.0, f64::NAN, 4.0];
        let (keep, c) = informative_groups(&s, &ids, 0.0).unwrap();
        // 7: equal; 3: informative; 9: one row; 5: one finite score
        assert_eq!(keep, [false, false, true, true, true, true, false, false]);
        assert_eq!(
            c,
            GroupFilterCounts {
                num_groups: 4,
                kept_groups: 2,
                kept_rows: 4
            }
        );
        let (keep, _) = informative_groups(&[0.1, 0.1, 0.1], &[0, 0, 0], 0.0).unwrap();
        assert_eq!(keep, [false; 3]);
        // population std of {0, 1, 0.5} is 0.408
        let (keep, _) = informative_groups(&s, &ids, 0.5).unwrap();
        assert_eq!(
            keep,
            [false, false, false, false, false, true, false, false]
        );
    }

    #[test]
    fn quantile_is_numpys_linear() {
        let v = [3.0, 1.0, 2.0, 10.0];
        assert_eq!(quantile_linear(&v, 0.0).unwrap(), 1.0);
        assert_eq!(quantile_linear(&v, 1.0).unwrap(), 10.0);
        // h = 0.5·3 = 1.5 between 2 and 3
        assert_eq!(quantile_linear(&v, 0.5).unwrap(), 2.5);
        // h = 0.8·3 = 2.4 between 3 and 10: 3 + 7·0.4
        assert!((quantile_linear(&v, 0.8).unwrap() - 5.8).abs() < 1e-12);
        assert_eq!(quantile_linear(&[4.0], 0.3).unwrap(), 4.0);
        assert!(quantile_linear(&[], 0.5).is_err());
        assert!(quantile_linear(&v, 1.5).is_err());
        assert!(quantile_linear(&[f64::NAN], 0.5).is_err());
    }

    #[test]
    fn top_k_breaks_ties_by_index() {
        let m = top_k_mask(&[1.0, 5.0, 5.0, 2.0, 5.0], 2).unwrap();
        assert_eq!(m, [false, true, true, false, false]);
        assert_eq!(top_k_mask(&[1.0], 0).unwrap(), [false]);
        // a covariance score of −0 ties +0: the earlier index wins
        let m = top_k_mask(&[-1.0, -0.0, 0.0], 1).unwrap();
        assert_eq!(m, [false, true, false]);
        assert!(top_k_mask(&[1.0], 2).is_err());
    }
}
