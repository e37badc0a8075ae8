//! Balanced partition of sequences by token count.
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
//! - `Best` (default): a serpentine start (the lengths in decreasing order dealt to parts
//!   0..k, k..0, ...) repaired by a local search that moves or swaps sequences between the
//!   heaviest part and lighter ones (see `refine`); when that does not reach the ceiling of the
//!   mean load (a lower bound on the optimum), LPT and, for up to 2,048 sequences,
//!   Karmarkar–Karp, each followed by the same search, and the best result is kept. It is
//!   never worse than `Lpt`.
//!
//! Every tie is broken by index, so results are deterministic. Parts list their sequence
//! indices in increasing order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::str::FromStr;

use super::lengths::sorted_desc_with_max;
use crate::error::{CoreError, Result};
use crate::memory;

/// Above this many sequences `Method::Best` skips its Karmarkar–Karp candidate (a heap
/// operation per sequence, about 1 ms at 8,192 sequences); for that many sequences LPT with the
/// local search is within a few tokens of the ceiling of the mean.
const KK_FALLBACK_MAX: usize = 2048;

/// Which algorithm [`balanced_partition`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Kk,
    Lpt,
    Best,
}

impl FromStr for Method {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Method> {
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

/// `k` parts (lists of indices, increasing) and their loads (sums of lengths), stored flat:
/// part `p` is `order[offsets[p]..offsets[p + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub order: Vec<usize>,
    pub offsets: Vec<usize>,
    pub loads: Vec<u64>,
}

impl Partition {
    /// The indices of part `p`, increasing.
    pub fn part(&self, p: usize) -> &[usize] {
        &self.order[self.offsets[p]..self.offsets[p + 1]]
    }

    /// Every part.
    pub fn parts(&self) -> Vec<&[usize]> {
        (0..self.loads.len()).map(|p| self.part(p)).collect()
    }

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

    fn from_assignment(assign: &[u32], lengths: &[u64], k: usize) -> Result<Partition> {
        let mut offsets = parts_of(k.saturating_add(1), 0usize, "offsets", k)?;
        let mut loads = parts_of(k, 0u64, "loads", k)?;
        for (i, &p) in assign.iter().enumerate() {
            offsets[p as usize + 1] += 1;
            loads[p as usize] += lengths[i];
        }
        for p in 0..k {
            offsets[p + 1] += offsets[p];
        }
        let mut next = offsets[..k].to_vec();
        let mut order = vec![0usize; assign.len()];
        for (i, &p) in assign.iter().enumerate() {
            order[next[p as usize]] = i;
            next[p as usize] += 1;
        }
        Ok(Partition {
            order,
            offsets,
            loads,
        })
    }
}

/// `n` copies of `fill` for the `what` of `k` parts, allocated fallibly: `k` is the caller's,
/// so a huge one is a [`CoreError::Memory`] naming it, never an abort.
fn parts_of<T: Clone>(n: usize, fill: T, what: &str, k: usize) -> Result<Vec<T>> {
    memory::filled(n, fill, &format!("the {what} of k={k} parts"))
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
    // One pass for the total (u128: no overflow possible) and the largest length.
    // Loads are returned as int64: the total must fit it.
    let (total, max) = lengths
        .iter()
        .fold((0u128, 0u64), |(t, m), &l| (t + l as u128, m.max(l)));
    if total > i64::MAX as u128 {
        return Err(CoreError::capacity(format!(
            "the lengths add up to {total}, more than 2^63 - 1"
        )));
    }
    let total = total as u64;
    if n > u32::MAX as usize {
        return Err(CoreError::capacity(format!(
            "{n} sequences: at most 2^32 - 1 are supported"
        )));
    }
    let (order, sorted) = sorted_desc_with_max(lengths, max);
    let rank_part = match method {
        Method::Kk => karmarkar_karp(&sorted, k, equal_size)?,
        Method::Lpt => lpt(&sorted, k, equal_size)?,
        Method::Best => {
            // Cheapest first: a serpentine start repaired by the local search usually reaches
            // the ceiling of the mean (optimal). Otherwise LPT, then (up to KK_FALLBACK_MAX
            // sequences) Karmarkar–Karp, each with the same search, keeping the best. LPT is
            // among the candidates, so the result is never worse than LPT.
            let ceil = total.div_ceil(k as u64);
            let (mut best, mut best_max) = snake_refine(&sorted, k, equal_size)?;
            if best_max > ceil {
                let mut a = lpt(&sorted, k, equal_size)?;
                let a_max = refine(&sorted, &mut a, k, equal_size)?;
                if a_max <= best_max {
                    (best, best_max) = (a, a_max);
                }
            }
            if best_max > ceil && n <= KK_FALLBACK_MAX {
                let mut b = karmarkar_karp(&sorted, k, equal_size)?;
                let b_max = refine(&sorted, &mut b, k, equal_size)?;
                if b_max < best_max {
                    best = b;
                }
            }
            best
        }
    };
    let mut assign = vec![0u32; n];
    for (&i, &p) in order.iter().zip(&rank_part) {
        assign[i as usize] = p;
    }
    Partition::from_assignment(&assign, lengths, k)
}

fn max_of(loads: &[u64]) -> u64 {
    loads.iter().copied().max().unwrap_or(0)
}

/// LPT over lengths sorted in decreasing order: the part of each rank.
fn lpt(sorted: &[u64], k: usize, equal_size: bool) -> Result<Vec<u32>> {
    let n = sorted.len();
    let cap = if equal_size { n / k } else { usize::MAX };
    let mut part = vec![0u32; n];
    let mut counts = parts_of(k, 0usize, "sizes", k)?;
    if k <= 8 && !equal_size {
        // Few parts: an unrolled scan over a fixed array (unused slots hold u64::MAX).
        let mut loads = [u64::MAX; 8];
        loads[..k].fill(0);
        for (slot, &l) in part.iter_mut().zip(sorted) {
            let mut best = 0;
            let mut best_load = loads[0];
            for (p, &x) in loads.iter().enumerate().skip(1) {
                if x < best_load {
                    best = p;
                    best_load = x;
                }
            }
            *slot = best as u32;
            loads[best] = best_load + l;
        }
        return Ok(part);
    }
    if k <= 32 {
        // A linear scan over few parts beats a heap. Full parts (equal_size) read as u64::MAX.
        let mut loads = vec![0u64; k];
        for (slot, &l) in part.iter_mut().zip(sorted) {
            let mut best = 0;
            let mut best_load = loads[0];
            for (p, &x) in loads.iter().enumerate().skip(1) {
                if x < best_load {
                    best = p;
                    best_load = x;
                }
            }
            *slot = best as u32;
            loads[best] += l;
            if equal_size {
                counts[best] += 1;
                if counts[best] == cap {
                    loads[best] = u64::MAX;
                }
            }
        }
        return Ok(part);
    }
    // Min-heap of (load, part): the lightest part, ties to the lowest index.
    let heap = memory::collect(
        k,
        (0..k).map(|p| Reverse((0u64, p))),
        &format!("the loads of k={k} parts"),
    )?;
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::from(heap);
    for (slot, &l) in part.iter_mut().zip(sorted) {
        let Reverse((load, p)) = heap
            .pop()
            .expect("a part with room exists while sequences remain");
        *slot = p as u32;
        counts[p] += 1;
        if counts[p] < cap {
            heap.push(Reverse((load + l, p)));
        }
    }
    Ok(part)
}

const NONE: u32 = u32::MAX;

/// Karmarkar–Karp largest differencing over lengths sorted in decreasing order: the part of
/// each rank.
fn karmarkar_karp(sorted: &[u64], k: usize, equal_size: bool) -> Result<Vec<u32>> {
    let n = sorted.len();
    let mut assign = vec![0u32; n];
    if n == 0 || k == 1 {
        return Ok(assign);
    }
    // Items are linked lists (next pointers) so that merging two subsets is O(1).
    let mut next = vec![NONE; n];
    // State s owns slots s*k .. s*k+k, kept sorted by decreasing sum: n × k slots (n / k × k
    // with equal_size), allocated up front.
    let what = format!("the Karmarkar–Karp states of {n} sequences × k={k} parts");
    let slots = memory::checked_mul(if equal_size { n / k } else { n }, k, &what)?;
    let mut sum: Vec<u64> = memory::with_capacity(slots, &what)?;
    let mut head: Vec<u32> = memory::with_capacity(slots, &what)?;
    let mut tail: Vec<u32> = memory::with_capacity(slots, &what)?;
    let push_state =
        |items: &[u32], sum: &mut Vec<u64>, head: &mut Vec<u32>, tail: &mut Vec<u32>| {
            for j in 0..k {
                match items.get(j) {
                    Some(&r) => {
                        sum.push(sorted[r as usize]);
                        head.push(r);
                        tail.push(r);
                    }
                    None => {
                        sum.push(0);
                        head.push(NONE);
                        tail.push(NONE);
                    }
                }
            }
        };
    let ranks: Vec<u32> = (0..n as u32).collect();
    if equal_size {
        for chunk in ranks.chunks(k) {
            push_state(chunk, &mut sum, &mut head, &mut tail);
        }
    } else {
        for r in ranks.chunks(1) {
            push_state(r, &mut sum, &mut head, &mut tail);
        }
    }
    let states = sum.len() / k;
    // Max-heap on (spread, state id): the largest spread first, ties to the higher id.
    let mut heap: BinaryHeap<(u64, u32)> = (0..states)
        .map(|s| (sum[s * k] - sum[s * k + k - 1], s as u32))
        .collect();
    let mut new_sum = parts_of(k, 0u64, "loads", k)?;
    let mut new_head = parts_of(k, NONE, "lists", k)?;
    let mut new_tail = parts_of(k, NONE, "lists", k)?;
    let mut perm: Vec<usize> = memory::collect(k, 0..k, &format!("the order of k={k} parts"))?;
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
            assign[it as usize] = j as u32;
            it = next[it as usize];
        }
    }
    Ok(assign)
}

/// A sequence in the local search: `length << 32 | index`, so items order by length, then
/// index, as plain integers.
type Item = u64;

#[inline(always)]
fn item(len: u64, i: u32) -> Item {
    (len << 32) | i as u64
}

#[inline(always)]
fn len(x: Item) -> u64 {
    x >> 32
}

#[inline(always)]
fn idx(x: Item) -> usize {
    (x & 0xFFFF_FFFF) as usize
}

/// Local search towards the ceiling `C = ⌈total / k⌉` of the mean load (a lower bound on the
/// best maximum). Each round takes the heaviest part `h` (excess `e = load_h − C`) and:
/// 1. looks, over the lighter parts `q` (lightest first), for a move of one sequence (not with
///    `equal_size`) or a swap of two whose length change `δ` lies in `[e, C − load_q]`: both
///    parts then end at or below `C` (fewest changes: `δ` closest to `e`);
/// 2. failing that, applies the change that most lowers the larger of `load_h`, `load_q`.
///
/// Every applied change lowers the number of parts above `C`, or the heaviest load, or the
/// number of parts at it; rounds are bounded, so the search always ends. Returns the largest
/// load. Lengths above 2^32 (never token counts) skip the search.
fn refine(sorted: &[u64], assign: &mut [u32], k: usize, equal_size: bool) -> Result<u64> {
    let mut loads = parts_of(k, 0u64, "loads", k)?;
    let mut sizes = parts_of(k, 0usize, "sizes", k)?;
    for (&l, &p) in sorted.iter().zip(assign.iter()) {
        loads[p as usize] += l;
        sizes[p as usize] += 1;
    }
    let total: u64 = loads.iter().sum();
    let ceil = total.div_ceil(k as u64);
    // Items are packed as `len << 32 | index`: lengths must fit 32 bits (token counts do).
    if max_of(&loads) <= ceil || k < 2 || sorted.len() < 2 || sorted[0] > u32::MAX as u64 {
        return Ok(max_of(&loads)); // optimal already, or nothing to search
    }
    // Items of each part by increasing length: ranks in reverse.
    let mut parts: Vec<Vec<Item>> = memory::collect(
        k,
        sizes.iter().map(|&c| Vec::with_capacity(c + 1)),
        &format!("the lists of k={k} parts"),
    )?;
    for r in (0..sorted.len()).rev() {
        parts[assign[r] as usize].push(item(sorted[r], r as u32));
    }
    let max = search(&mut parts, &mut loads, ceil, equal_size)?;
    for (p, part) in parts.iter().enumerate() {
        for &x in part {
            assign[idx(x)] = p as u32;
        }
    }
    Ok(max)
}

/// [`snake`] followed by [`refine`], building each part straight from its ranks (the parts of a
/// serpentine deal are known in closed form). Returns the part of each rank and the largest
/// load.
fn snake_refine(sorted: &[u64], k: usize, equal_size: bool) -> Result<(Vec<u32>, u64)> {
    let n = sorted.len();
    if k < 2 || n < 2 || sorted[0] > u32::MAX as u64 {
        let mut a = snake(n, k);
        let m = refine(sorted, &mut a, k, equal_size)?;
        return Ok((a, m));
    }
    let rounds = n.div_ceil(k);
    let mut loads = parts_of(k, 0u64, "loads", k)?;
    let mut parts: Vec<Vec<Item>> = memory::with_capacity(k, &format!("the lists of k={k} parts"))?;
    for (p, load) in loads.iter_mut().enumerate() {
        // Part p holds rank round*k + p in even rounds and round*k + k-1-p in odd ones;
        // walking the rounds backwards lists its items by increasing length.
        let mut v = Vec::with_capacity(rounds + 1);
        for round in (0..rounds).rev() {
            let r = round * k + if round % 2 == 0 { p } else { k - 1 - p };
            if r < n {
                *load += sorted[r];
                v.push(item(sorted[r], r as u32));
            }
        }
        parts.push(v);
    }
    let total: u64 = loads.iter().sum();
    let max = search(&mut parts, &mut loads, total.div_ceil(k as u64), equal_size)?;
    let mut assign = vec![0u32; n];
    for (p, part) in parts.iter().enumerate() {
        for &x in part {
            assign[idx(x)] = p as u32;
        }
    }
    Ok((assign, max))
}

/// The rounds of the local search over parts of items sorted by increasing length; returns
/// the largest load.
fn search(parts: &mut [Vec<Item>], loads: &mut [u64], ceil: u64, equal_size: bool) -> Result<u64> {
    let k = parts.len();
    let max_rounds = 8 * k + 64;
    let mut lighter: Vec<usize> = memory::with_capacity(k, &format!("the order of k={k} parts"))?;
    for _ in 0..max_rounds {
        let (hp, hmax) = loads
            .iter()
            .enumerate()
            .fold((0, 0u64), |b, (j, &l)| if l > b.1 { (j, l) } else { b });
        if hmax <= ceil {
            break; // optimal
        }
        lighter.clear();
        lighter.extend((0..k).filter(|&q| loads[q] < hmax));
        lighter.sort_by_key(|&q| (loads[q], q));
        let change = fix_excess(parts, loads, hp, hmax - ceil, ceil, &lighter, equal_size)
            .or_else(|| best_pair_change(parts, loads, hp, hmax, &lighter, equal_size));
        let Some((q, ia, ib)) = change else {
            break;
        };
        let a = parts[hp].remove(ia);
        loads[hp] -= len(a);
        if ib != usize::MAX {
            let b = parts[q].remove(ib);
            loads[q] -= len(b);
            let pos = parts[hp].partition_point(|&x| x < b);
            parts[hp].insert(pos, b);
            loads[hp] += len(b);
        }
        let pos = parts[q].partition_point(|&x| x < a);
        parts[q].insert(pos, a);
        loads[q] += len(a);
    }
    Ok(max_of(loads))
}

/// A change `(q, position in h, position in q or usize::MAX for a move)` with length change
/// `δ ∈ [e, C − load_q]`, `δ` as small as found first; see [`refine`].
fn fix_excess(
    parts: &[Vec<Item>],
    loads: &[u64],
    hp: usize,
    e: u64,
    ceil: u64,
    lighter: &[usize],
    equal_size: bool,
) -> Option<(usize, usize, usize)> {
    let ph = &parts[hp];
    let first = ph.partition_point(|&x| len(x) < e); // only items of length ≥ e can help
    for &q in lighter {
        if loads[q] >= ceil || ceil - loads[q] < e {
            continue;
        }
        let s = ceil - loads[q];
        if !equal_size {
            if let Some(&a) = ph.get(first) {
                if len(a) <= s {
                    return Some((q, first, usize::MAX));
                }
            }
        }
        let pq = &parts[q];
        // Two pointers: as la grows, the longest b with la − lb ≥ e moves right.
        let mut pos = 0; // number of b with lb ≤ la − e
        for (ia, &a) in ph.iter().enumerate().skip(first) {
            let la = len(a);
            while pos < pq.len() && len(pq[pos]) <= la - e {
                pos += 1;
            }
            // Accepted when la − lb ≤ s as well.
            if pos > 0 && len(pq[pos - 1]) + s >= la {
                return Some((q, ia, pos - 1));
            }
        }
    }
    None
}

/// The move or swap between `h` and a lighter part that most lowers the larger of their two
/// loads (seeking a change of half their difference; the first part that allows any
/// improvement is used). `None` when nothing improves.
fn best_pair_change(
    parts: &[Vec<Item>],
    loads: &[u64],
    hp: usize,
    hmax: u64,
    lighter: &[usize],
    equal_size: bool,
) -> Option<(usize, usize, usize)> {
    // (new larger load of the pair, q, position in hp, position in q or usize::MAX)
    let mut best: Option<(u64, usize, usize, usize)> = None;
    'parts: for &q in lighter {
        let d = hmax - loads[q];
        if d < 2 {
            continue;
        }
        let ideal = hmax - d / 2; // the pair's larger load after a perfect change
        let pb = &parts[q];
        let mut pos = 0; // first b with lb ≥ la − d/2 (moves right as la grows)
        for (ia, &a) in parts[hp].iter().enumerate() {
            let la = len(a);
            if la == 0 {
                continue;
            }
            let mut consider = |delta: u64, ib: usize| {
                if delta == 0 || delta >= d {
                    return false;
                }
                let new_max = (hmax - delta).max(loads[q] + delta);
                if best.is_none_or(|b| new_max < b.0) {
                    best = Some((new_max, q, ia, ib));
                }
                new_max == ideal
            };
            if !equal_size && consider(la, usize::MAX) {
                break 'parts;
            }
            // Swap with b where la − lb is closest to d/2.
            let target = la.saturating_sub(d / 2);
            while pos < pb.len() && len(pb[pos]) < target {
                pos += 1;
            }
            for cand in [pos, pos.wrapping_sub(1)] {
                if let Some(&b) = pb.get(cand) {
                    let lb = len(b);
                    if lb < la && consider(la - lb, cand) {
                        break 'parts;
                    }
                }
            }
        }
        if best.is_some() {
            break;
        }
    }
    match best {
        Some((new_max, q, ia, ib)) if new_max < hmax => Some((q, ia, ib)),
        _ => None,
    }
}

/// Serpentine assignment of the ranks (lengths in decreasing order): parts 0..k, then k..0, ...
/// (every part gets `n / k` or `n / k + 1` sequences).
fn snake(n: usize, k: usize) -> Vec<u32> {
    (0..n)
        .map(|r| {
            let (round, pos) = (r / k, r % k);
            (if round % 2 == 0 { pos } else { k - 1 - pos }) as u32
        })
        .collect()
}
