//! Keeping a subset of the held sequences, in place: [`RolloutBuffer::retain_sequences`] (by a
//! keep flag per sequence), [`RolloutBuffer::truncate_sequences`] (the first `n`) and
//! [`RolloutBuffer::filter_groups`] (DAPO's dynamic-sampling filter: the groups whose scores
//! differ, [`informative_groups`]).
//!
//! Every field is compacted where it lies (kept values moved to the front, the rest dropped):
//! no second buffer, no copy out, the allocated capacity kept for the next add. The order of
//! the kept sequences is the order they were added in. Advantages computed before are
//! dropped (they describe the old rows), and the version moves on, so a sampler planned on the
//! old rows refuses to continue.

use super::column::Column;
use super::store::RolloutBuffer;
use crate::error::{CoreError, Result};
use crate::kernels::select::{informative_groups, GroupFilterCounts};

/// Compact an offsets array (N+1) to the kept sequences, in place; returns the kept
/// sequences' runs (start, len) in the old layout. Each old offset is read before any write
/// reaches its slot (the write index never passes the read index).
fn compact_offsets(offsets: &mut Vec<i64>, keep: &[bool]) -> Vec<(usize, usize)> {
    let mut runs = Vec::with_capacity(keep.iter().filter(|&&k| k).count());
    let mut start = offsets[0];
    let mut total = 0i64;
    let mut w = 1usize;
    for (i, &k) in keep.iter().enumerate() {
        let end = offsets[i + 1];
        if k {
            runs.push((start as usize, (end - start) as usize));
            total += end - start;
            offsets[w] = total;
            w += 1;
        }
        start = end;
    }
    offsets.truncate(w);
    runs
}

impl RolloutBuffer {
    /// Keep the sequences whose flag is true, in order, compacting every field in place.
    /// Returns how many are kept.
    pub fn retain_sequences(&mut self, keep: &[bool]) -> Result<usize> {
        if keep.len() != self.len() {
            return Err(CoreError::shape(format!(
                "keep has {} flags, the buffer holds {} sequences",
                keep.len(),
                self.len()
            )));
        }
        let prompt_runs = compact_offsets(&mut self.prompt_offsets, keep);
        let token_runs = compact_offsets(&mut self.response_offsets, keep);
        let seq_runs: Vec<(usize, usize)> = keep
            .iter()
            .enumerate()
            .filter(|(_, &k)| k)
            .map(|(i, _)| (i, 1))
            .collect();
        if let Some(p) = &mut self.prompt_ids {
            p.retain_segments(&prompt_runs);
        }
        for (_, c) in self.token_fields.iter_mut() {
            c.retain_segments(&token_runs);
        }
        for (_, c) in self.seq_fields.iter_mut() {
            c.retain_segments(&seq_runs);
        }
        self.clear_advantages();
        self.version += 1;
        Ok(seq_runs.len())
    }

    /// Keep the first `n` sequences (all of them when `n` is larger).
    pub fn truncate_sequences(&mut self, n: usize) -> Result<()> {
        let keep: Vec<bool> = (0..self.len()).map(|i| i < n).collect();
        self.retain_sequences(&keep).map(|_| ())
    }

    /// Drop the groups (``group_ids``) whose ``scores`` are all equal, or whose population
    /// std is at most `min_std`; groups of one row stay (verl's rule, see
    /// [`informative_groups`]). Returns the keep flag each sequence had and the counts.
    pub fn filter_groups(&mut self, min_std: f64) -> Result<(Vec<bool>, GroupFilterCounts)> {
        let ids: Vec<i64> = match self.seq_field("group_ids") {
            Some(Column::I64(v)) => v.clone(),
            Some(Column::I32(v)) => v.iter().map(|&x| x as i64).collect(),
            Some(c) => {
                return Err(CoreError::dtype(format!(
                    "group_ids must be int32 or int64, the buffer holds {}",
                    c.dtype().name()
                )))
            }
            None => {
                return Err(CoreError::field(
                    "filter_groups needs the per-sequence field 'group_ids'",
                ))
            }
        };
        let scores: Vec<f64> = match self.seq_field("scores") {
            Some(c) if c.dtype().is_float() => {
                let s = c.as_slice();
                (0..s.len()).map(|i| s.get_f64(i)).collect()
            }
            Some(c) => {
                return Err(CoreError::dtype(format!(
                    "scores must be float32 or float64, the buffer holds {}",
                    c.dtype().name()
                )))
            }
            None => {
                return Err(CoreError::field(
                    "filter_groups needs the per-sequence field 'scores'",
                ))
            }
        };
        let (keep, counts) = informative_groups(&scores, &ids, min_std)?;
        self.retain_sequences(&keep)?;
        Ok((keep, counts))
    }
}
