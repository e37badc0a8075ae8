//! Balanced partition of sequences by token count, and first-fit-decreasing packing.
//!
//! **Balanced partition** (multiway number partitioning): split `n` lengths into `k` parts so
//! that the largest part sum is small. Used to give data-parallel ranks equal work and to cut
//! a minibatch into gradient-accumulation micro-batches of equal size.
//! - `Kk`: the Karmarkar–Karp largest differencing method generalised to `k` parts
//!   (Karmarkar & Karp 1982; Korf 2009 describes the k-way form): keep partial solutions of `k`
//!   part sums, repeatedly combine the two with the largest spread, pairing the largest sums of
//!   one with the smallest sums of the other. With `equal_size`, the lengths sorted in decreasing
//!   order start in chunks of `k` (one per part), so every part ends with `n / k` sequences.
//! - `Lpt`: longest processing time first (Graham 1969): sorted in decreasing order, each
//!   length goes to the currently lightest part (that still has room when `equal_size`).
//! - `Best` (default): both, each followed by a local search that moves or swaps one pair of
//!   sequences between the heaviest part and another part while that lowers the heavier of
//!   the two; the result with the smaller maximum load wins. It is never worse than `Lpt`.
//!
//! Every tie is broken by index, so results are deterministic. Parts list their sequence
//! indices in increasing order.
//!
//! **Packing** ([`pack`]): first-fit-decreasing (Johnson 1973) of lengths into rows of a fixed
//! capacity; each row lists the original indices it holds, in increasing order, so outputs
//! map back to the input order. A segment tree over the rows' free space finds the first row
//! that fits in O(log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::{CoreError, Result};

/// Which algorithm [`balanced_partition`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Kk,
    Lpt,
    Best,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        match s {
            "kk" | "karmarkar_karp" => Ok(Method::Kk),
            "lpt" | "greedy" => Ok(Method::Lpt),
            "best" | "auto" => Ok(Method::Best),
            other => Err(CoreError::option(format!(
                "method must be 'best', 'kk' or 'lpt', got {other:?}"
            ))),
        }
    }
}

/// `k` parts (lists of indices, increasing) and their loads (sums of lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub parts: Vec<Vec<usize>>,
    pub loads: Vec<u64>,
}

impl Partition {
    pub fn max_load(&self) -> u64 {
        self.loads.iter().copied().max().unwrap_or(0)
    }

    pub fn min_load(&self) -> u64 {
        self.loads.iter().copied().min().unwrap_or(0)
    }

    pub fn mean_load(&self) -> f64 {
        if self.loads.is_empty() {
            return 0.0;
        }
        self.loads.iter().map(|&l| l as f64).sum::<f64>() / self.loads.len() as f64
    }

    /// max / mean load (1.0 is perfect; 1.0 as well when every load is 0).
    pub fn imbalance(&self) -> f64 {
        let mean = self.mean_load();
        if mean == 0.0 {
            1.0
        } else {
            self.max_load() as f64 / mean
        }
    }

    fn from_assignment(assign: &[usize], lengths: &[u64], k: usize) -> Partition {
        let mut parts = vec![Vec::new(); k];
        let mut loads = vec![0u64; k];
        for (i, &p) in assign.iter().enumerate() {
            parts[p].push(i);
            loads[p] += lengths[i];
        }
        Partition { parts, loads }
    }
}

/// Non-negative lengths as u64 (an error names the first negative one).
pub fn check_lengths(lengths: &[i64], name: &str) -> Result<Vec<u64>> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if l < 0 {
                Err(CoreError::shape(format!(
                    "{name}[{i}] is {l}; lengths must be non-negative"
                )))
            } else {
                Ok(l as u64)
            }
        })
        .collect()
}

/// Indices sorted by decreasing length, ties by increasing index.
fn sorted_desc(lengths: &[u64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_unstable_by_key(|&i| (Reverse(lengths[i]), i));
    order
}

/// Split `lengths` into `k` parts with balanced sums. See the module docs.
pub fn balanced_partition(
    lengths: &[u64],
    k: usize,
    equal_size: bool,
    method: Method,
) -> Result<Partition> {
    let n = lengths.len();
    if k == 0 {
        return Err(CoreError::option(
            "k (the number of parts) must be at least 1",
        ));
    }
    if equal_size && !n.is_multiple_of(k) {
        return Err(CoreError::option(format!(
            "equal_size=True needs the number of sequences ({n}) to be a multiple of k ({k})"
        )));
    }
    if lengths
        .iter()
        .try_fold(0u64, |a, &l| a.checked_add(l))
        .is_none()
    {
        return Err(CoreError::capacity("the lengths add up to more than 2^64"));
    }
    let order = sorted_desc(lengths);
    let assign = match method {
        Method::Kk => karmarkar_karp(lengths, &order, k, equal_size),
        Method::Lpt => lpt(lengths, &order, k, equal_size),
        Method::Best => {
            let mut a = karmarkar_karp(lengths, &order, k, equal_size);
            refine(lengths, &mut a, k, equal_size);
            let mut b = lpt(lengths, &order, k, equal_size);
            refine(lengths, &mut b, k, equal_size);
            if max_of(&loads_of(lengths, &b, k)) < max_of(&loads_of(lengths, &a, k)) {
                b
            } else {
                a
            }
        }
    };
    Ok(Partition::from_assignment(&assign, lengths, k))
}

fn loads_of(lengths: &[u64], assign: &[usize], k: usize) -> Vec<u64> {
    let mut loads = vec![0u64; k];
    for (i, &p) in assign.iter().enumerate() {
        loads[p] += lengths[i];
    }
    loads
}

fn max_of(loads: &[u64]) -> u64 {
    loads.iter().copied().max().unwrap_or(0)
}

/// LPT: part of each sequence.
fn lpt(lengths: &[u64], order: &[usize], k: usize, equal_size: bool) -> Vec<usize> {
    let n = lengths.len();
    let cap = if equal_size { n / k } else { usize::MAX };
    let mut assign = vec![0usize; n];
    let mut counts = vec![0usize; k];
    // Min-heap of (load, part): the lightest part, ties to the lowest index.
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..k).map(|p| Reverse((0u64, p))).collect();
    for &i in order {
        let Reverse((load, p)) = heap
            .pop()
            .expect("a part with room exists while sequences remain");
        assign[i] = p;
        counts[p] += 1;
        if counts[p] < cap {
            heap.push(Reverse((load + lengths[i], p)));
        }
    }
    assign
}

const NONE: u32 = u32::MAX;

/// Karmarkar–Karp largest differencing: part of each sequence.
fn karmarkar_karp(lengths: &[u64], order: &[usize], k: usize, equal_size: bool) -> Vec<usize> {
    let n = lengths.len();
    let mut assign = vec![0usize; n];
    if n == 0 || k == 1 {
        return assign;
    }
    // Items are linked lists (next pointers) so that merging two subsets is O(1).
    let mut next = vec![NONE; n];
    // State s owns slots s*k .. s*k+k, kept sorted by decreasing sum.
    let mut sum: Vec<u64> = Vec::new();
    let mut head: Vec<u32> = Vec::new();
    let mut tail: Vec<u32> = Vec::new();
    let push_state =
        |items: &[usize], sum: &mut Vec<u64>, head: &mut Vec<u32>, tail: &mut Vec<u32>| {
            for j in 0..k {
                match items.get(j) {
                    Some(&i) => {
                        sum.push(lengths[i]);
                        head.push(i as u32);
                        tail.push(i as u32);
                    }
                    None => {
                        sum.push(0);
                        head.push(NONE);
                        tail.push(NONE);
                    }
                }
            }
        };
    if equal_size {
        for chunk in order.chunks(k) {
            push_state(chunk, &mut sum, &mut head, &mut tail);
        }
    } else {
        for &i in order {
            push_state(&[i], &mut sum, &mut head, &mut tail);
        }
    }
    let states = sum.len() / k;
    // Max-heap on (spread, state id): the largest spread first, ties to the higher id.
    let mut heap: BinaryHeap<(u64, u32)> = (0..states)
        .map(|s| (sum[s * k] - sum[s * k + k - 1], s as u32))
        .collect();
    let mut new_sum = vec![0u64; k];
    let mut new_head = vec![NONE; k];
    let mut new_tail = vec![NONE; k];
    let mut perm: Vec<usize> = (0..k).collect();
    while heap.len() > 1 {
        let (_, a) = heap.pop().expect("len > 1");
        let (_, b) = heap.pop().expect("len > 1");
        let (a, b) = (a as usize * k, b as usize * k);
        // Pair A's j-th largest with B's j-th smallest.
        for j in 0..k {
            let bj = b + k - 1 - j;
            new_sum[j] = sum[a + j] + sum[bj];
            let (ha, ta, hb, tb) = (head[a + j], tail[a + j], head[bj], tail[bj]);
            if ha == NONE {
                new_head[j] = hb;
                new_tail[j] = tb;
            } else {
                if hb != NONE {
                    next[ta as usize] = hb;
                }
                new_head[j] = ha;
                new_tail[j] = if hb != NONE { tb } else { ta };
            }
        }
        // Re-sort the k slots by decreasing sum (stable; k is small: insertion sort).
        for (j, p) in perm.iter_mut().enumerate() {
            *p = j;
        }
        for x in 1..k {
            let mut y = x;
            while y > 0 && new_sum[perm[y - 1]] < new_sum[perm[y]] {
                perm.swap(y - 1, y);
                y -= 1;
            }
        }
        for j in 0..k {
            sum[a + j] = new_sum[perm[j]];
            head[a + j] = new_head[perm[j]];
            tail[a + j] = new_tail[perm[j]];
        }
        heap.push((sum[a] - sum[a + k - 1], (a / k) as u32));
    }
    let (_, s) = heap.pop().expect("one state remains");
    let s = s as usize * k;
    for j in 0..k {
        let mut it = head[s + j];
        while it != NONE {
            assign[it as usize] = j;
            it = next[it as usize];
        }
    }
    assign
}

/// Local search: while some move (or swap, with `equal_size` only swaps) between the heaviest
/// part and another part lowers the larger of their two loads, apply the best such change.
/// Bounded number of rounds; each round strictly lowers the heaviest part or the number of
/// parts at the maximum.
fn refine(lengths: &[u64], assign: &mut [usize], k: usize, equal_size: bool) {
    if k < 2 || lengths.len() < 2 {
        return;
    }
    // Items of each part sorted by (length, index).
    let mut parts: Vec<Vec<(u64, usize)>> = vec![Vec::new(); k];
    for (i, &p) in assign.iter().enumerate() {
        parts[p].push((lengths[i], i));
    }
    for p in &mut parts {
        p.sort_unstable();
    }
    let mut loads: Vec<u64> = parts.iter().map(|p| p.iter().map(|x| x.0).sum()).collect();
    let max_rounds = 4 * k + 64;
    for _ in 0..max_rounds {
        let (hp, &hmax) = loads
            .iter()
            .enumerate()
            .max_by_key(|&(j, &l)| (l, Reverse(j)))
            .expect("k >= 1");
        let total: u64 = loads.iter().sum();
        if (hmax as u128) * (k as u128) < total as u128 + k as u128 {
            break; // already at the ceiling of the mean
        }
        // Best change: (new larger load of the pair, q, index in hp, index in q or NONE).
        let mut best: Option<(u64, usize, usize, usize)> = None;
        for q in 0..k {
            if q == hp || loads[q] >= hmax {
                continue;
            }
            let d = hmax - loads[q];
            let half = d / 2;
            let consider = |delta: u64,
                            best: &mut Option<(u64, usize, usize, usize)>,
                            ia: usize,
                            ib: usize| {
                if delta == 0 || delta >= d {
                    return;
                }
                let new_max = (hmax - delta).max(loads[q] + delta);
                if best.is_none_or(|b| new_max < b.0) {
                    *best = Some((new_max, q, ia, ib));
                }
            };
            let pb = &parts[q];
            for (ia, &(la, _)) in parts[hp].iter().enumerate() {
                if la == 0 {
                    continue;
                }
                if !equal_size {
                    consider(la, &mut best, ia, usize::MAX);
                }
                // Swap with b where la - lb is closest to d/2, 0 < la - lb < d.
                let target = la.saturating_sub(half);
                let pos = pb.partition_point(|&(lb, _)| lb < target);
                for cand in [pos.wrapping_sub(1), pos] {
                    if let Some(&(lb, _)) = pb.get(cand) {
                        if lb < la {
                            consider(la - lb, &mut best, ia, cand);
                        }
                    }
                }
            }
        }
        let Some((new_max, q, ia, ib)) = best else {
            break;
        };
        if new_max >= hmax {
            break;
        }
        let a = parts[hp].remove(ia);
        loads[hp] -= a.0;
        if ib != usize::MAX {
            let b = parts[q].remove(ib);
            loads[q] -= b.0;
            let pos = parts[hp].partition_point(|x| *x < b);
            parts[hp].insert(pos, b);
            loads[hp] += b.0;
            assign[b.1] = hp;
        }
        let pos = parts[q].partition_point(|x| *x < a);
        parts[q].insert(pos, a);
        loads[q] += a.0;
        assign[a.1] = q;
    }
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
    let order = sorted_desc(lengths);
    let sorted: Vec<u64> = order.iter().map(|&i| lengths[i]).collect();
    let mut rows: Vec<Vec<usize>> = ffd_rows(&sorted, capacity)
        .into_iter()
        .map(|r| r.into_iter().map(|j| order[j]).collect())
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
