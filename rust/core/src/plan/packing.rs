//! Cutting sequences into batches under a token budget, and packing them into rows.
//!
//! **Micro-batches under a token budget** ([`token_budget_batches`]): at most `token_budget`
//! tokens per micro-batch. Padded cost = count × (longest prompt + response, rounded up to
//! `pad_to_multiple_of`); packed cost = sum of lengths. With `bucket`, sequences are sorted by
//! length (longest first, ties in the given order) before cutting (padded) or packed
//! first-fit-decreasing (packed); without it, sequences are cut greedily in the given order
//! (next-fit).
//!
//! **Packing** ([`pack`]): first-fit-decreasing (Johnson 1973) of lengths into rows of a fixed
//! capacity; each row lists the original indices it holds, in increasing order, so outputs
//! map back to the input order. A segment tree over the rows' free space finds the first row
//! that fits in O(log n).

use super::lengths::sorted_desc;
use crate::error::{CoreError, Result};

/// How a token budget is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// count × longest length (rounded up to a multiple of `pad_to_multiple_of`) ≤ `tokens`.
    Padded {
        tokens: u64,
        pad_to_multiple_of: u64,
    },
    /// sum of lengths ≤ `tokens`.
    Packed { tokens: u64 },
}

impl Budget {
    pub fn tokens(&self) -> u64 {
        match *self {
            Budget::Padded { tokens, .. } | Budget::Packed { tokens } => tokens,
        }
    }

    /// The width a sequence of `len` tokens takes (saturating: a width past `u64::MAX` is
    /// over every budget anyway).
    fn width(&self, len: u64) -> u64 {
        match *self {
            Budget::Padded {
                pad_to_multiple_of: m,
                ..
            } if m > 1 => len.div_ceil(m).saturating_mul(m),
            _ => len,
        }
    }

    fn check(&self) -> Result<()> {
        if self.tokens() == 0 {
            return Err(CoreError::option("token_budget must be at least 1"));
        }
        if let Budget::Padded {
            pad_to_multiple_of: 0,
            ..
        } = self
        {
            return Err(CoreError::option("pad_to_multiple_of must be at least 1"));
        }
        Ok(())
    }
}

/// Split `order` (sequence ids, in the order to consider) into micro-batches under `budget`.
/// `lengths[i]` is the token count of sequence `i` (prompt + response). Every sequence of
/// `order` lands in exactly one micro-batch. With `bucket`, see the module docs; the returned
/// batches are then longest first (the caller may shuffle their order).
pub fn token_budget_batches(
    order: &[usize],
    lengths: &[u64],
    budget: Budget,
    bucket: bool,
) -> Result<Vec<Vec<usize>>> {
    budget.check()?;
    let cap = budget.tokens();
    for &i in order {
        let l = *lengths.get(i).ok_or_else(|| {
            CoreError::shape(format!(
                "sequence index {i} is out of range for {} lengths",
                lengths.len()
            ))
        })?;
        if budget.width(l) > cap {
            let what = match budget {
                Budget::Padded {
                    pad_to_multiple_of: m,
                    ..
                } if m > 1 => {
                    format!(
                        "{l} tokens ({} once padded to a multiple of {m})",
                        budget.width(l)
                    )
                }
                _ => format!("{l} tokens"),
            };
            return Err(CoreError::capacity(format!(
                "sequence {i} has {what} (prompt + response), more than the token budget {cap}"
            )));
        }
    }
    let mut batches: Vec<Vec<usize>> = Vec::new();
    match (budget, bucket) {
        (Budget::Padded { .. }, true) => {
            let mut sorted = order.to_vec();
            sorted.sort_by(|&a, &b| lengths[b].cmp(&lengths[a])); // stable: ties keep `order`
            let mut s = 0;
            while s < sorted.len() {
                let w = budget.width(lengths[sorted[s]]).max(1);
                let count = ((cap / w) as usize).max(1);
                let e = (s + count).min(sorted.len());
                batches.push(sorted[s..e].to_vec());
                s = e;
            }
        }
        (Budget::Padded { .. }, false) => {
            let mut cur: Vec<usize> = Vec::new();
            let mut cur_w = 0u64;
            for &i in order {
                let w = cur_w.max(budget.width(lengths[i]));
                if !cur.is_empty() && (cur.len() as u64 + 1).saturating_mul(w) > cap {
                    batches.push(std::mem::take(&mut cur));
                    cur_w = budget.width(lengths[i]);
                } else {
                    cur_w = w;
                }
                cur.push(i);
            }
            if !cur.is_empty() {
                batches.push(cur);
            }
        }
        (Budget::Packed { .. }, true) => {
            let mut sorted = order.to_vec();
            sorted.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
            let lens: Vec<u64> = sorted.iter().map(|&i| lengths[i]).collect();
            // `lens` is already in decreasing order, so first-fit here is first-fit-decreasing.
            for row in ffd_rows(&lens, cap) {
                batches.push(row.into_iter().map(|j| sorted[j]).collect());
            }
        }
        (Budget::Packed { .. }, false) => {
            let mut cur: Vec<usize> = Vec::new();
            let mut load = 0u64;
            for &i in order {
                if !cur.is_empty() && load.saturating_add(lengths[i]) > cap {
                    batches.push(std::mem::take(&mut cur));
                    load = 0;
                }
                load += lengths[i];
                cur.push(i);
            }
            if !cur.is_empty() {
                batches.push(cur);
            }
        }
    }
    Ok(batches)
}

/// A packing plan: rows of original indices (increasing within a row) and their loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackPlan {
    pub rows: Vec<Vec<usize>>,
    pub loads: Vec<u64>,
    pub capacity: u64,
}

/// First-fit-decreasing packing of `lengths` into rows of `capacity` tokens.
pub fn pack(lengths: &[u64], capacity: u64) -> Result<PackPlan> {
    if capacity == 0 {
        return Err(CoreError::option("capacity must be at least 1"));
    }
    for (i, &l) in lengths.iter().enumerate() {
        if l > capacity {
            return Err(CoreError::capacity(format!(
                "sequence {i} has {l} tokens, more than the pack capacity {capacity}"
            )));
        }
    }
    if lengths.len() > u32::MAX as usize {
        return Err(CoreError::capacity(
            "at most 2^32 - 1 sequences can be packed at once",
        ));
    }
    let (order, sorted) = sorted_desc(lengths);
    let mut rows: Vec<Vec<usize>> = ffd_rows(&sorted, capacity)
        .into_iter()
        .map(|r| r.into_iter().map(|j| order[j] as usize).collect())
        .collect();
    for r in &mut rows {
        r.sort_unstable();
    }
    let loads = rows
        .iter()
        .map(|r| r.iter().map(|&i| lengths[i]).sum())
        .collect();
    Ok(PackPlan {
        rows,
        loads,
        capacity,
    })
}

/// First fit of `lens` (in the given order) into rows of `cap`; returns positions into `lens`
/// per row. Every length must be ≤ `cap` (checked by the callers). Rows are opened left to
/// right, so the leftmost leaf that fits is an open row or the next one to open.
pub(crate) fn ffd_rows(lens: &[u64], cap: u64) -> Vec<Vec<usize>> {
    let n = lens.len();
    if n == 0 {
        return Vec::new();
    }
    // Segment tree over n potential rows holding their free space; leaves start at `cap`.
    let size = n.next_power_of_two();
    let mut tree = vec![0u64; 2 * size];
    for leaf in 0..n {
        tree[size + leaf] = cap;
    }
    for v in (1..size).rev() {
        tree[v] = tree[2 * v].max(tree[2 * v + 1]);
    }
    let mut rows: Vec<Vec<usize>> = Vec::new();
    for (j, &l) in lens.iter().enumerate() {
        // Leftmost leaf with free space ≥ l (exists: unopened rows hold `cap` ≥ l).
        let mut v = 1;
        while v < size {
            v = if tree[2 * v] >= l { 2 * v } else { 2 * v + 1 };
        }
        let row = v - size;
        tree[v] -= l;
        let mut u = v / 2;
        while u >= 1 {
            tree[u] = tree[2 * u].max(tree[2 * u + 1]);
            u /= 2;
        }
        if row == rows.len() {
            rows.push(Vec::new());
        }
        rows[row].push(j);
    }
    rows
}
