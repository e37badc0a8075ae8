//! Summary statistics of a [`RolloutBuffer`](crate::buffer::RolloutBuffer), for logging.
//!
//! Names (present only when the data they need is held):
//! - `num_sequences`, `num_response_tokens`, `num_prompt_tokens`, `nbytes`;
//! - `response_length/{mean,std,min,max}`, `prompt_length/{mean,std,min,max}`;
//! - `truncated/frac` (fraction of sequences flagged truncated);
//! - `scores/{mean,std,min,max}` over the non-NaN scores, `scores/num_nan`;
//! - `groups/num_groups`, `groups/num_singleton` (groups with exactly one non-NaN score),
//!   `groups/frac_zero_std`: the fraction of groups with two or more non-NaN scores, all equal
//!   (no GRPO/RLOO learning signal); the same definitions as `group_advantages`' statistics;
//! - `advantages/{mean,std,min,max}` over what is trained on: valid tokens (`loss_mask` true,
//!   score not NaN) for per-token advantages, sequences with a valid token for per-sequence
//!   ones; `returns/{mean,std}` over valid tokens.
//!
//! Standard deviations are population (ddof = 0), accumulated in f64 with two passes.

use crate::buffer::{Column, RolloutBuffer, Slice};

struct Moments {
    mean: f64,
    std: f64,
    min: f64,
    max: f64,
}

fn moments(n: usize, get: impl Fn(usize) -> f64) -> Option<Moments> {
    let mut count = 0usize;
    let mut sum = 0.0f64;
    let mut min = f64::INFINITY;
    let mut max = f64::NEG_INFINITY;
    for i in 0..n {
        let x = get(i);
        if x.is_nan() {
            continue;
        }
        count += 1;
        sum += x;
        min = min.min(x);
        max = max.max(x);
    }
    if count == 0 {
        return None;
    }
    let mean = sum / count as f64;
    let mut ss = 0.0f64;
    for i in 0..n {
        let x = get(i);
        if !x.is_nan() {
            ss += (x - mean) * (x - mean);
        }
    }
    Some(Moments {
        mean,
        std: (ss / count as f64).sqrt(),
        min,
        max,
    })
}

fn push_moments(out: &mut Vec<(String, f64)>, prefix: &str, m: Option<Moments>, with_range: bool) {
    if let Some(m) = m {
        out.push((format!("{prefix}/mean"), m.mean));
        out.push((format!("{prefix}/std"), m.std));
        if with_range {
            out.push((format!("{prefix}/min"), m.min));
            out.push((format!("{prefix}/max"), m.max));
        }
    }
}

fn column_moments(c: &Column) -> Option<Moments> {
    masked_column_moments(c, None)
}

/// Elements per block of [`float_moments`]: blocks run in parallel and are merged in a fixed
/// order, so the result does not depend on the thread count.
const BLOCK: usize = 1 << 16;
const LANES: usize = 8;

/// The float types [`float_moments`] reads.
trait MomentFloat: Copy + Send + Sync + Into<f64> + PartialOrd {
    const INF: Self;
    const NEG_INF: Self;
    const ZERO: Self;
    /// IEEE minNum / maxNum: a NaN operand yields the other one.
    fn fmin(self, o: Self) -> Self;
    fn fmax(self, o: Self) -> Self;
    fn nan(self) -> bool;
}

macro_rules! moment_float {
    ($t:ty) => {
        impl MomentFloat for $t {
            const INF: Self = <$t>::INFINITY;
            const NEG_INF: Self = <$t>::NEG_INFINITY;
            const ZERO: Self = 0.0;
            #[inline(always)]
            fn fmin(self, o: Self) -> Self {
                self.min(o)
            }
            #[inline(always)]
            fn fmax(self, o: Self) -> Self {
                self.max(o)
            }
            #[inline(always)]
            fn nan(self) -> bool {
                self.is_nan()
            }
        }
    };
}
moment_float!(f32);
moment_float!(f64);

/// Count, sum, min, max of one block (non-NaN entries where `valid`), in 8 independent lanes
/// that the compiler vectorises. Without a mask the first attempt carries no selects; a NaN
/// shows up as a NaN sum and sends the block through the careful loop.
fn block_first<T: MomentFloat>(x: &[T], valid: Option<&[bool]>) -> (f64, f64, f64, f64) {
    let finish = |cnt: f64, sum: [f64; LANES], min: [T; LANES], max: [T; LANES]| {
        (
            cnt,
            sum.iter().sum::<f64>(),
            min.iter().map(|&v| v.into()).fold(f64::INFINITY, f64::min),
            max.iter()
                .map(|&v| v.into())
                .fold(f64::NEG_INFINITY, f64::max),
        )
    };
    let body = x.len() / LANES * LANES;
    if valid.is_none() {
        let mut sum = [0.0f64; LANES];
        let mut min = [T::INF; LANES];
        let mut max = [T::NEG_INF; LANES];
        for chunk in x[..body].chunks_exact(LANES) {
            for (((s, lo), hi), &v) in sum.iter_mut().zip(&mut min).zip(&mut max).zip(chunk) {
                *s += v.into();
                *lo = lo.fmin(v);
                *hi = hi.fmax(v);
            }
        }
        for (((s, lo), hi), &v) in sum.iter_mut().zip(&mut min).zip(&mut max).zip(&x[body..]) {
            *s += v.into();
            *lo = lo.fmin(v);
            *hi = hi.fmax(v);
        }
        let out = finish(x.len() as f64, sum, min, max);
        if !out.1.is_nan() {
            return out;
        }
    }
    let mut cnt = [0.0f64; LANES];
    let mut sum = [0.0f64; LANES];
    let mut min = [T::INF; LANES];
    let mut max = [T::NEG_INF; LANES];
    for (j, &v) in x.iter().enumerate() {
        let k = j % LANES;
        let on = valid.is_none_or(|m| m[j]) && !v.nan();
        let v = if on { v } else { T::ZERO };
        cnt[k] += if on { 1.0 } else { 0.0 };
        sum[k] += v.into();
        min[k] = if on { min[k].fmin(v) } else { min[k] };
        max[k] = if on { max[k].fmax(v) } else { max[k] };
    }
    finish(cnt.iter().sum(), sum, min, max)
}

/// Sum of squared deviations from `mean` of one block (same entries as [`block_first`]).
fn block_second<T: MomentFloat>(x: &[T], valid: Option<&[bool]>, mean: f64) -> f64 {
    let mut ss = [0.0f64; LANES];
    if valid.is_none() {
        let body = x.len() / LANES * LANES;
        for chunk in x[..body].chunks_exact(LANES) {
            for (s, &v) in ss.iter_mut().zip(chunk) {
                let d = v.into() - mean;
                *s += d * d;
            }
        }
        for (s, &v) in ss.iter_mut().zip(&x[body..]) {
            let d = v.into() - mean;
            *s += d * d;
        }
        let total: f64 = ss.iter().sum();
        if !total.is_nan() {
            return total;
        }
        ss = [0.0; LANES];
    }
    for (j, &v) in x.iter().enumerate() {
        let on = valid.is_none_or(|m| m[j]) && !v.nan();
        let d = if on { v.into() - mean } else { 0.0 };
        ss[j % LANES] += d * d;
    }
    ss.iter().sum()
}

/// Moments of the non-NaN entries of a float slice where `valid` (if given) is true: two
/// passes in f64, blocks in parallel when large, merged in block order.
fn float_moments<T: MomentFloat>(x: &[T], valid: Option<&[bool]>) -> Option<Moments> {
    use rayon::prelude::*;
    let blocks: Vec<(usize, &[T])> = x.chunks(BLOCK).enumerate().collect();
    let par = blocks.len() >= 2 && crate::layout::parallel_enabled();
    let vslice = |b: usize, len: usize| valid.map(|m| &m[b * BLOCK..b * BLOCK + len]);
    let firsts: Vec<(f64, f64, f64, f64)> = if par {
        blocks
            .par_iter()
            .map(|&(b, xb)| block_first(xb, vslice(b, xb.len())))
            .collect()
    } else {
        blocks
            .iter()
            .map(|&(b, xb)| block_first(xb, vslice(b, xb.len())))
            .collect()
    };
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
    let sss: Vec<f64> = if par {
        blocks
            .par_iter()
            .map(|&(b, xb)| block_second(xb, vslice(b, xb.len()), mean))
            .collect()
    } else {
        blocks
            .iter()
            .map(|&(b, xb)| block_second(xb, vslice(b, xb.len()), mean))
            .collect()
    };
    let ss: f64 = sss.iter().sum();
    Some(Moments {
        mean,
        std: (ss / count).sqrt(),
        min,
        max,
    })
}

fn masked_column_moments(c: &Column, valid: Option<&[bool]>) -> Option<Moments> {
    match c {
        Column::F32(v) => float_moments(v, valid),
        Column::F64(v) => float_moments(v, valid),
        other => {
            let s = other.as_slice();
            moments(s.len(), |j| {
                if valid.is_none_or(|v| v[j]) {
                    s.get_f64(j)
                } else {
                    f64::NAN
                }
            })
        }
    }
}

/// Which response tokens count: `loss_mask` (if held) true and the sequence's score (if held)
/// not NaN — the tokens advantage estimators train on. `None` means all of them.
fn valid_tokens(buf: &RolloutBuffer) -> Option<Vec<bool>> {
    let lm = match buf.token_field("loss_mask") {
        Some(Column::Bool(m)) => Some(m),
        _ => None,
    };
    let nan: Vec<usize> = match buf.seq_field("scores") {
        Some(s) => {
            let sl = s.as_slice();
            (0..buf.len()).filter(|&i| sl.get_f64(i).is_nan()).collect()
        }
        None => Vec::new(),
    };
    if lm.is_none() && nan.is_empty() {
        return None;
    }
    let mut valid = lm
        .cloned()
        .unwrap_or_else(|| vec![true; buf.num_response_tokens()]);
    let off = buf.response_offsets();
    for i in nan {
        valid[off[i] as usize..off[i + 1] as usize].fill(false);
    }
    Some(valid)
}

fn advantage_moments_of(buf: &RolloutBuffer, valid: Option<&[bool]>) -> Option<Moments> {
    let c = buf.computed()?;
    if c.advantages.is_token_level() {
        masked_column_moments(c.advantages.column(), valid)
    } else {
        // Sequences with at least one valid token.
        let off = buf.response_offsets();
        let seq_valid: Vec<bool> = (0..buf.len())
            .map(|i| {
                let r = off[i] as usize..off[i + 1] as usize;
                match valid {
                    None => !r.is_empty(),
                    Some(v) => v[r].iter().any(|&b| b),
                }
            })
            .collect();
        masked_column_moments(c.advantages.column(), Some(&seq_valid))
    }
}

/// `(mean, std, min, max)` of the stored advantages over what is trained on: valid tokens
/// (per-token advantages) or sequences with a valid token (per-sequence advantages); `None`
/// before any estimator ran or when nothing is valid.
pub fn advantage_moments(buf: &RolloutBuffer) -> Option<(f64, f64, f64, f64)> {
    let valid = valid_tokens(buf);
    advantage_moments_of(buf, valid.as_deref()).map(|m| (m.mean, m.std, m.min, m.max))
}

/// Group ids as i64 (None when the column is not an integer column).
fn group_ids(c: &Column) -> Option<Vec<i64>> {
    match c.as_slice() {
        Slice::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
        Slice::I64(v) => Some(v.to_vec()),
        _ => None,
    }
}

pub fn stats(buf: &RolloutBuffer) -> Vec<(String, f64)> {
    let n = buf.len();
    let mut out: Vec<(String, f64)> = vec![
        ("num_sequences".into(), n as f64),
        (
            "num_response_tokens".into(),
            buf.num_response_tokens() as f64,
        ),
        ("num_prompt_tokens".into(), buf.num_prompt_tokens() as f64),
        ("nbytes".into(), buf.nbytes() as f64),
    ];
    if n == 0 {
        return out;
    }
    push_moments(
        &mut out,
        "response_length",
        moments(n, |i| buf.response_len(i) as f64),
        true,
    );
    push_moments(
        &mut out,
        "prompt_length",
        moments(n, |i| buf.prompt_len(i) as f64),
        true,
    );
    if let Some(Column::Bool(t)) = buf.seq_field("truncated") {
        out.push((
            "truncated/frac".into(),
            t.iter().filter(|&&b| b).count() as f64 / n as f64,
        ));
    }
    let scores = buf.seq_field("scores");
    if let Some(s) = scores {
        let sl = s.as_slice();
        let nan = (0..n).filter(|&i| sl.get_f64(i).is_nan()).count();
        push_moments(&mut out, "scores", column_moments(s), true);
        out.push(("scores/num_nan".into(), nan as f64));
    }
    if let (Some(s), Some(g)) = (scores, buf.seq_field("group_ids").and_then(group_ids)) {
        let sl = s.as_slice();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (g[i], i));
        let (mut groups, mut singletons, mut zero) = (0usize, 0usize, 0usize);
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && g[order[end]] == g[order[start]] {
                end += 1;
            }
            groups += 1;
            let vals: Vec<f64> = order[start..end]
                .iter()
                .map(|&i| sl.get_f64(i))
                .filter(|x| !x.is_nan())
                .collect();
            if vals.len() == 1 {
                singletons += 1;
            } else if vals.len() >= 2 && vals.iter().all(|&x| x == vals[0]) {
                zero += 1;
            }
            start = end;
        }
        out.push(("groups/num_groups".into(), groups as f64));
        out.push(("groups/num_singleton".into(), singletons as f64));
        out.push(("groups/frac_zero_std".into(), zero as f64 / groups as f64));
    }
    if let Some(c) = buf.computed() {
        let valid = valid_tokens(buf);
        push_moments(
            &mut out,
            "advantages",
            advantage_moments_of(buf, valid.as_deref()),
            true,
        );
        if let Some(r) = &c.returns {
            push_moments(
                &mut out,
                "returns",
                masked_column_moments(r, valid.as_deref()),
                false,
            );
        }
    }
    out
}
