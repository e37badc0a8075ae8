//! Dynamic sampling's refill bookkeeping (DAPO): the group filter applied round after round,
//! the counters, whether this rank's batch is full, and which rows make the batch.
//!
//! The rows themselves (token ids, texts) stay with the caller. A [`GroupRefill`] holds one
//! keep flag and one group id per row of the rounds so far, in the order the rounds were
//! added; the rows of round `r` follow those of round `r − 1`, and a selection indexes that
//! order.
//!
//! ```text
//! add_round   keep = informative_groups(scores, group_ids, min_std)   (the kernel's rule)
//!             rounds += 1; generated += N; groups_dropped += the round's dropped groups
//! full        kept rows ≥ batch_rows
//! exhausted   max_rounds > 0 and rounds ≥ max_rounds                  (0: no limit)
//! selection   the first min(kept, batch_rows) kept rows, in order; when that is short and
//!             some rows were dropped, then the rows of the first
//!             (batch_rows − taken) / group_size dropped groups (group ids in order of
//!             first appearance among the dropped rows, every dropped row of such an id);
//!             both parts together must be exactly batch_rows rows
//! ```
//!
//! This is verl-recipe's `RayDAPOTrainer.fit` (`algorithm.filter_groups`: regenerate until
//! the kept groups fill `train_batch_size·n`, then truncate to it) with one choice of our own:
//! when the rounds run out first, the batch is completed with the earliest dropped groups
//! instead of raising. Each round is filtered on its own, so group ids should be distinct
//! across rounds (the rollout collector gives every round its own).
//!
//! The progress ([`RefillProgress`]: rounds, groups dropped, keep flags, group ids) is plain
//! data; a refill restored from it ([`GroupRefill::restore`]) continues exactly.

use std::collections::HashSet;

use crate::error::{CoreError, Result};
use crate::kernels::select::{informative_groups, GroupFilterCounts};

/// The fixed settings of a refill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefillConfig {
    /// Rows the batch holds (this rank's share), a multiple of `group_size`, at least 1.
    pub batch_rows: usize,
    /// Completions per prompt (G), at least 1.
    pub group_size: usize,
    /// Rounds at most (`max_num_gen_batches`); 0 = no limit.
    pub max_rounds: usize,
    /// Groups whose population std of scores is at most this are dropped; finite, ≥ 0.
    pub min_std: f64,
}

impl RefillConfig {
    /// The checks of every field, each error naming its field.
    pub fn check(&self) -> Result<()> {
        if self.group_size == 0 {
            return Err(CoreError::option("group_size must be at least 1, got 0"));
        }
        if self.batch_rows == 0 {
            return Err(CoreError::option("batch_rows must be at least 1, got 0"));
        }
        if !self.batch_rows.is_multiple_of(self.group_size) {
            return Err(CoreError::option(format!(
                "batch_rows = {} is not a multiple of group_size = {}",
                self.batch_rows, self.group_size
            )));
        }
        if !(self.min_std.is_finite() && self.min_std >= 0.0) {
            return Err(CoreError::option(format!(
                "min_std must be finite and >= 0, got {}",
                self.min_std
            )));
        }
        Ok(())
    }
}

/// What the rounds so far have gathered: everything a checkpoint of a refill holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefillProgress {
    /// Rounds added.
    pub rounds: usize,
    /// Groups dropped, summed over the rounds (each round's distinct dropped ids).
    pub groups_dropped: usize,
    /// Keep flag of every row so far.
    pub keep: Vec<bool>,
    /// Group id of every row so far.
    pub group_ids: Vec<i64>,
}

/// The batch's rows: indices into the rows of all rounds, in the order of [`GroupRefill`]'s
/// module docs (kept rows first, then the rows of the dropped groups that complete it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefillSelection {
    /// `batch_rows` row indices.
    pub rows: Vec<usize>,
    /// How many of `rows` are kept rows (the first ones).
    pub kept_rows: usize,
    /// Dropped groups used to complete the batch.
    pub groups_filled: usize,
}

/// The refill bookkeeping of one step (see the module docs).
#[derive(Debug, Clone)]
pub struct GroupRefill {
    config: RefillConfig,
    progress: RefillProgress,
    kept_rows: usize,
}

impl GroupRefill {
    /// An empty refill; errors name the bad field of `config`.
    pub fn new(config: RefillConfig) -> Result<Self> {
        Self::restore(config, RefillProgress::default())
    }

    /// A refill that continues from `progress` (a `StateError` if it is inconsistent).
    pub fn restore(config: RefillConfig, progress: RefillProgress) -> Result<Self> {
        config.check()?;
        let n = progress.keep.len();
        if progress.group_ids.len() != n {
            return Err(CoreError::state(format!(
                "refill state has {n} keep flags and {} group ids",
                progress.group_ids.len()
            )));
        }
        if n > 0 && progress.rounds == 0 {
            return Err(CoreError::state(format!(
                "refill state holds {n} rows from 0 rounds"
            )));
        }
        let kept_rows = progress.keep.iter().filter(|&&k| k).count();
        if progress.groups_dropped > n - kept_rows {
            return Err(CoreError::state(format!(
                "refill state counts {} dropped groups among {} dropped rows",
                progress.groups_dropped,
                n - kept_rows
            )));
        }
        Ok(GroupRefill {
            config,
            progress,
            kept_rows,
        })
    }

    pub fn config(&self) -> &RefillConfig {
        &self.config
    }

    /// The state to save (see [`GroupRefill::restore`]).
    pub fn progress(&self) -> &RefillProgress {
        &self.progress
    }

    pub fn rounds(&self) -> usize {
        self.progress.rounds
    }

    /// Rows added over all rounds.
    pub fn generated(&self) -> usize {
        self.progress.keep.len()
    }

    pub fn groups_dropped(&self) -> usize {
        self.progress.groups_dropped
    }

    /// Rows of kept groups over all rounds.
    pub fn kept_rows(&self) -> usize {
        self.kept_rows
    }

    /// Whether the kept rows fill this rank's batch.
    pub fn is_full(&self) -> bool {
        self.kept_rows >= self.config.batch_rows
    }

    /// Whether `max_rounds` rounds have been added (never with `max_rounds = 0`).
    pub fn rounds_exhausted(&self) -> bool {
        self.config.max_rounds > 0 && self.progress.rounds >= self.config.max_rounds
    }

    /// Filter one scored round (`scores` NaN = unscorable, `group_ids` per row) and append it.
    /// Returns the round's keep flags and counts; on an error nothing changes.
    pub fn add_round(
        &mut self,
        scores: &[f64],
        group_ids: &[i64],
    ) -> Result<(Vec<bool>, GroupFilterCounts)> {
        let (keep, counts) = informative_groups(scores, group_ids, self.config.min_std)?;
        let p = &mut self.progress;
        p.rounds += 1;
        p.groups_dropped += counts.num_groups - counts.kept_groups;
        p.keep.extend_from_slice(&keep);
        p.group_ids.extend_from_slice(group_ids);
        self.kept_rows += counts.kept_rows;
        Ok((keep, counts))
    }

    /// The batch's rows (module docs). A `ShapeError` when the rows gathered cannot make
    /// exactly `batch_rows` (too few rounds, or groups of other sizes than `group_size`).
    pub fn selection(&self) -> Result<RefillSelection> {
        let RefillConfig {
            batch_rows,
            group_size,
            ..
        } = self.config;
        let p = &self.progress;
        let take = self.kept_rows.min(batch_rows);
        let mut rows: Vec<usize> = (0..p.keep.len())
            .filter(|&i| p.keep[i])
            .take(take)
            .collect();
        let missing = batch_rows - take;
        let dropped_rows = p.keep.len() - self.kept_rows;
        let mut groups_filled = 0;
        if missing > 0 && dropped_rows > 0 {
            groups_filled = missing / group_size;
            let mut chosen: HashSet<i64> = HashSet::with_capacity(groups_filled);
            for (i, (&k, &g)) in p.keep.iter().zip(&p.group_ids).enumerate() {
                if k {
                    continue;
                }
                if chosen.contains(&g) || (chosen.len() < groups_filled && chosen.insert(g)) {
                    rows.push(i);
                }
            }
        }
        if rows.len() != batch_rows {
            return Err(CoreError::shape(format!(
                "the refill cannot make a batch of batch_rows = {batch_rows}: after {} rounds it \
                 holds {} kept rows and {dropped_rows} dropped ones, which give {} rows in whole \
                 groups of group_size = {group_size}",
                p.rounds,
                self.kept_rows,
                rows.len()
            )));
        }
        Ok(RefillSelection {
            rows,
            kept_rows: take,
            groups_filled,
        })
    }

    /// Empty, for the next step (the config stays).
    pub fn reset(&mut self) {
        self.progress = RefillProgress::default();
        self.kept_rows = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(batch_rows: usize, group_size: usize, max_rounds: usize) -> RefillConfig {
        RefillConfig {
            batch_rows,
            group_size,
            max_rounds,
            min_std: 0.0,
        }
    }

    /// Groups of two: `informative[k]` says whether group `first + k` has distinct scores.
    fn round(first: i64, informative: &[bool]) -> (Vec<f64>, Vec<i64>) {
        let mut s = Vec::new();
        let mut g = Vec::new();
        for (k, &inf) in informative.iter().enumerate() {
            s.extend([0.0, if inf { 1.0 } else { 0.0 }]);
            g.extend([first + k as i64; 2]);
        }
        (s, g)
    }

    #[test]
    fn rounds_until_full_then_the_first_kept_rows() {
        let mut r = GroupRefill::new(config(4, 2, 0)).unwrap();
        let (s, g) = round(0, &[false, true, false]);
        let (keep, c) = r.add_round(&s, &g).unwrap();
        assert_eq!(keep, [false, false, true, true, false, false]);
        assert_eq!((c.num_groups, c.kept_groups), (3, 1));
        assert!(!r.is_full() && !r.rounds_exhausted());
        let (s, g) = round(3, &[true, true, false]);
        r.add_round(&s, &g).unwrap();
        assert!(r.is_full());
        assert_eq!((r.rounds(), r.generated(), r.groups_dropped()), (2, 12, 3));
        assert_eq!(r.kept_rows(), 6);
        let sel = r.selection().unwrap();
        // group 1 of round 0, then group 3 (the first of round 1); group 4 is cut
        assert_eq!(sel.rows, [2, 3, 6, 7]);
        assert_eq!((sel.kept_rows, sel.groups_filled), (4, 0));
        r.reset();
        assert_eq!((r.rounds(), r.generated(), r.kept_rows()), (0, 0, 0));
    }

    #[test]
    fn rounds_run_out_and_the_earliest_dropped_groups_fill() {
        let mut r = GroupRefill::new(config(6, 2, 2)).unwrap();
        let (s, g) = round(0, &[false, true]);
        r.add_round(&s, &g).unwrap();
        assert!(!r.rounds_exhausted());
        let (s, g) = round(2, &[false, false]);
        r.add_round(&s, &g).unwrap();
        assert!(r.rounds_exhausted() && !r.is_full());
        let sel = r.selection().unwrap();
        // kept group 1, then dropped groups 0 and 2 (not 3)
        assert_eq!(sel.rows, [2, 3, 0, 1, 4, 5]);
        assert_eq!((sel.kept_rows, sel.groups_filled), (2, 2));
        assert_eq!(r.groups_dropped(), 3);
    }

    #[test]
    fn a_dropped_id_seen_in_two_rounds_is_one_group() {
        // group 5 dropped in both rounds: filling one group takes all four of its rows
        let mut r = GroupRefill::new(config(2, 2, 0)).unwrap();
        r.add_round(&[1.0, 1.0], &[5, 5]).unwrap();
        r.add_round(&[2.0, 2.0, 3.0, 3.0], &[7, 7, 5, 5]).unwrap();
        assert_eq!(r.groups_dropped(), 3);
        assert!(r.selection().is_err());
        let mut r = GroupRefill::new(config(6, 2, 0)).unwrap();
        r.add_round(&[1.0, 1.0], &[5, 5]).unwrap();
        r.add_round(&[2.0, 2.0, 3.0, 3.0], &[7, 7, 5, 5]).unwrap();
        assert_eq!(r.selection().unwrap().rows, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn too_few_rows_is_an_error_naming_the_batch() {
        let r = GroupRefill::new(config(4, 2, 1)).unwrap();
        let e = r.selection().unwrap_err();
        assert!(matches!(e, CoreError::Shape(_)));
        assert!(e.message().contains("batch_rows = 4"), "{e}");
        // a kept singleton leaves an odd gap that whole groups of two cannot fill
        let mut r = GroupRefill::new(config(4, 2, 1)).unwrap();
        r.add_round(&[1.0, 0.0, 0.0, 0.0, 0.0], &[9, 1, 1, 2, 2])
            .unwrap();
        assert!(r.selection().is_err());
    }

    #[test]
    fn bad_input_names_the_argument_and_changes_nothing() {
        for (cfg, what) in [
            (config(4, 0, 0), "group_size"),
            (config(0, 2, 0), "batch_rows"),
            (config(5, 2, 0), "batch_rows = 5"),
            (
                RefillConfig {
                    min_std: f64::NAN,
                    ..config(4, 2, 0)
                },
                "min_std",
            ),
            (
                RefillConfig {
                    min_std: -0.5,
                    ..config(4, 2, 0)
                },
                "min_std",
            ),
        ] {
            let e = GroupRefill::new(cfg).unwrap_err();
            assert!(matches!(e, CoreError::InvalidOption(_)));
            assert!(e.message().contains(what), "{e}");
        }
        let mut r = GroupRefill::new(config(4, 2, 0)).unwrap();
        let e = r.add_round(&[1.0, 2.0], &[0]).unwrap_err();
        assert!(e.message().contains("group_ids"), "{e}");
        assert_eq!((r.rounds(), r.generated()), (0, 0));
    }

    #[test]
    fn restored_progress_continues_exactly() {
        let (s0, g0) = round(0, &[true, false, false]);
        let (s1, g1) = round(3, &[false, true, true]);
        let mut straight = GroupRefill::new(config(6, 2, 0)).unwrap();
        straight.add_round(&s0, &g0).unwrap();
        let saved = straight.progress().clone();
        straight.add_round(&s1, &g1).unwrap();
        let mut resumed = GroupRefill::restore(config(6, 2, 0), saved).unwrap();
        resumed.add_round(&s1, &g1).unwrap();
        assert_eq!(resumed.progress(), straight.progress());
        assert_eq!(resumed.kept_rows(), straight.kept_rows());
        assert_eq!(resumed.selection(), straight.selection());

        let bad = |p: RefillProgress| GroupRefill::restore(config(6, 2, 0), p).unwrap_err();
        let e = bad(RefillProgress {
            rounds: 1,
            keep: vec![true],
            ..RefillProgress::default()
        });
        assert!(matches!(e, CoreError::State(_)) && e.message().contains("group ids"));
        let e = bad(RefillProgress {
            rounds: 0,
            keep: vec![true],
            group_ids: vec![1],
            ..RefillProgress::default()
        });
        assert!(e.message().contains("0 rounds"), "{e}");
        let e = bad(RefillProgress {
            rounds: 1,
            groups_dropped: 2,
            keep: vec![false, true],
            group_ids: vec![1, 2],
        });
        assert!(e.message().contains("2 dropped groups"), "{e}");
    }
}
