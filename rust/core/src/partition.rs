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
//! - `Best` (default): a serpentine start (the lengths in decreasing order dealt to parts
//!   0..k, k..0, ...) repaired by a local search that moves or swaps sequences between the
//!   heaviest part and lighter ones (see `refine`); when that does not reach the ceiling of the
//!   mean load (a lower bound on the optimum), LPT and, for up to 2,048 sequences,
//!   Karmarkar–Karp, each followed by the same search, and the best result is kept. It is
//!   never worse than `Lpt`.
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

    fn from_assignment(assign: &[u32], lengths: &[u64], k: usize) -> Partition {
        let mut offsets = vec![0usize; k + 1];
        let mut loads = vec![0u64; k];
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
        Partition {
            order,
            offsets,
            loads,
        }
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

/// Indices sorted by decreasing length, ties by increasing index, in O(n + max): a counting
/// sort when the largest length is at most a few times `n` (the usual case for token counts),
/// else a stable LSD radix sort with 11-bit digits over the bits the largest length needs.
/// Returns `(order, sorted)`: `order[r]` is the index of rank `r`, `sorted[r]` its length.
/// The algorithms below work on ranks, reading `sorted` in sequence instead of `lengths` at
/// random (measured: the random reads were half of LPT's time at 8,192 sequences).
pub(crate) fn sorted_desc(lengths: &[u64]) -> (Vec<u32>, Vec<u64>) {
    sorted_desc_with_max(lengths, lengths.iter().copied().max().unwrap_or(0))
}

/// [`sorted_desc`] when the largest length is known already.
fn sorted_desc_with_max(lengths: &[u64], max: u64) -> (Vec<u32>, Vec<u64>) {
    let n = lengths.len();
    if n >= 64 && max <= (4 * n as u64).max(1 << 16) {
        // Counting sort writing both outputs as it goes. Bucket b holds length max − b;
        // buckets in increasing b = decreasing length; within a bucket, increasing index.
        let mut start = vec![0u32; max as usize + 2];
        for &l in lengths {
            start[(max - l) as usize + 1] += 1;
        }
        for b in 1..start.len() {
            start[b] += start[b - 1];
        }
        let mut order = vec![0u32; n];
        let mut sorted = vec![0u64; n];
        for (i, &l) in lengths.iter().enumerate() {
            let slot = &mut start[(max - l) as usize];
            order[*slot as usize] = i as u32;
            sorted[*slot as usize] = l;
            *slot += 1;
        }
        return (order, sorted);
    }
    let order = sorted_order(lengths);
    let sorted = order.iter().map(|&i| lengths[i as usize]).collect();
    (order, sorted)
}

fn sorted_order(lengths: &[u64]) -> Vec<u32> {
    let n = lengths.len();
    debug_assert!(n <= u32::MAX as usize);
    let max = lengths.iter().copied().max().unwrap_or(0);
    let bits = 64 - max.leading_zeros() as usize;
    if n < 64 || bits > 44 {
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&i| Reverse(lengths[i as usize]));
        return order;
    }
    let mut order: Vec<u32> = (0..n as u32).collect();
    const DIGIT: usize = 11;
    const BUCKETS: usize = 1 << DIGIT;
    let mut tmp = vec![0u32; n];
    let mut count = vec![0usize; BUCKETS];
    let mut shift = 0;
    while shift < bits {
        count.iter_mut().for_each(|c| *c = 0);
        // Key (max - len) ascending == len descending; stability keeps ties by index.
        let digit = |i: u32| (((max - lengths[i as usize]) >> shift) as usize) & (BUCKETS - 1);
        for &i in &order {
            count[digit(i)] += 1;
        }
        let mut acc = 0;
        for c in count.iter_mut() {
            let x = *c;
            *c = acc;
            acc += x;
        }
        for &i in &order {
            let d = digit(i);
            tmp[count[d]] = i;
            count[d] += 1;
        }
        std::mem::swap(&mut order, &mut tmp);
        shift += DIGIT;
    }
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
    // One pass for the total (u128: no overflow possible) and the largest length.
    let (total, max) = lengths
        .iter()
        .fold((0u128, 0u64), |(t, m), &l| (t + l as u128, m.max(l)));
    if total > u64::MAX as u128 {
        return Err(CoreError::capacity("the lengths add up to more than 2^64"));
    }
    let total = total as u64;
    if n > u32::MAX as usize {
        return Err(CoreError::capacity(format!(
            "{n} sequences: at most 2^32 - 1 are supported"
        )));
    }
    let (order, sorted) = sorted_desc_with_max(lengths, max);
    let rank_part = match method {
        Method::Kk => karmarkar_karp(&sorted, k, equal_size),
        Method::Lpt => lpt(&sorted, k, equal_size),
        Method::Best => {
            // Cheapest first: a serpentine start repaired by the local search usually reaches
            // the ceiling of the mean (optimal). Otherwise LPT, then (up to KK_FALLBACK_MAX
            // sequences) Karmarkar–Karp, each with the same search, keeping the best. LPT is
            // among the candidates, so the result is never worse than LPT.
            let ceil = total.div_ceil(k as u64);
            let (mut best, mut best_max) = snake_refine(&sorted, k, equal_size);
            if best_max > ceil {
                let mut a = lpt(&sorted, k, equal_size);
                let a_max = refine(&sorted, &mut a, k, equal_size);
                if a_max <= best_max {
                    (best, best_max) = (a, a_max);
                }
            }
            if best_max > ceil && n <= KK_FALLBACK_MAX {
                let mut b = karmarkar_karp(&sorted, k, equal_size);
                let b_max = refine(&sorted, &mut b, k, equal_size);
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
    Ok(Partition::from_assignment(&assign, lengths, k))
}

fn max_of(loads: &[u64]) -> u64 {
    loads.iter().copied().max().unwrap_or(0)
}

/// LPT over lengths sorted in decreasing order: the part of each rank.
fn lpt(sorted: &[u64], k: usize, equal_size: bool) -> Vec<u32> {
    let n = sorted.len();
    let cap = if equal_size { n / k } else { usize::MAX };
    let mut part = vec![0u32; n];
    let mut counts = vec![0usize; k];
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
        return part;
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
        return part;
    }
    // Min-heap of (load, part): the lightest part, ties to the lowest index.
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = (0..k).map(|p| Reverse((0u64, p))).collect();
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
    part
}

const NONE: u32 = u32::MAX;

/// Karmarkar–Karp largest differencing over lengths sorted in decreasing order: the part of
/// each rank.
fn karmarkar_karp(sorted: &[u64], k: usize, equal_size: bool) -> Vec<u32> {
    let n = sorted.len();
    let mut assign = vec![0u32; n];
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
            assign[it as usize] = j as u32;
            it = next[it as usize];
        }
    }
    assign
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
fn refine(sorted: &[u64], assign: &mut [u32], k: usize, equal_size: bool) -> u64 {
    let mut loads = vec![0u64; k];
    let mut sizes = vec![0usize; k];
    for (&l, &p) in sorted.iter().zip(assign.iter()) {
        loads[p as usize] += l;
        sizes[p as usize] += 1;
    }
    let total: u64 = loads.iter().sum();
    let ceil = total.div_ceil(k as u64);
    // Items are packed as `len << 32 | index`: lengths must fit 32 bits (token counts do).
    if max_of(&loads) <= ceil || k < 2 || sorted.len() < 2 || sorted[0] > u32::MAX as u64 {
        return max_of(&loads); // optimal already, or nothing to search
    }
    // Items of each part by increasing length: ranks in reverse.
    let mut parts: Vec<Vec<Item>> = sizes.iter().map(|&c| Vec::with_capacity(c + 1)).collect();
    for r in (0..sorted.len()).rev() {
        parts[assign[r] as usize].push(item(sorted[r], r as u32));
    }
    let max = search(&mut parts, &mut loads, ceil, equal_size);
    for (p, part) in parts.iter().enumerate() {
        for &x in part {
            assign[idx(x)] = p as u32;
        }
    }
    max
}

/// [`snake`] followed by [`refine`], building each part straight from its ranks (the parts of a
/// serpentine deal are known in closed form). Returns the part of each rank and the largest
/// load.
fn snake_refine(sorted: &[u64], k: usize, equal_size: bool) -> (Vec<u32>, u64) {
    let n = sorted.len();
    if k < 2 || n < 2 || sorted[0] > u32::MAX as u64 {
        let mut a = snake(n, k);
        let m = refine(sorted, &mut a, k, equal_size);
        return (a, m);
    }
    let rounds = n.div_ceil(k);
    let mut loads = vec![0u64; k];
    let mut parts: Vec<Vec<Item>> = Vec::with_capacity(k);
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
    let max = search(&mut parts, &mut loads, total.div_ceil(k as u64), equal_size);
    let mut assign = vec![0u32; n];
    for (p, part) in parts.iter().enumerate() {
        for &x in part {
            assign[idx(x)] = p as u32;
        }
    }
    (assign, max)
}

/// The rounds of the local search over parts of items sorted by increasing length; returns
/// the largest load.
fn search(parts: &mut [Vec<Item>], loads: &mut [u64], ceil: u64, equal_size: bool) -> u64 {
    let k = parts.len();
    let max_rounds = 8 * k + 64;
    let mut lighter: Vec<usize> = Vec::with_capacity(k);
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
    max_of(loads)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::SplitMix64;

    /// Every path of `sorted_desc` (comparison, counting, radix) equals a plain stable sort.
    #[test]
    fn sorted_desc_paths_agree_with_a_plain_sort() {
        let mut r = SplitMix64::new(5);
        for (n, max) in [
            (10, 100u64),
            (500, 3000),
            (500, 1 << 20),
            (2000, 1 << 40),
            (300, 0),
        ] {
            let lengths: Vec<u64> = (0..n).map(|_| r.below(max + 1)).collect();
            let mut want: Vec<u32> = (0..n as u32).collect();
            want.sort_by_key(|&i| Reverse(lengths[i as usize]));
            let (order, sorted) = sorted_desc(&lengths);
            assert_eq!(order, want, "n={n} max={max}");
            let want_sorted: Vec<u64> = want.iter().map(|&i| lengths[i as usize]).collect();
            assert_eq!(sorted, want_sorted);
        }
    }
}
