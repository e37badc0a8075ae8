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
    let s = c.as_slice();
    moments(s.len(), |i| s.get_f64(i))
}

/// Whether each response token counts: its `loss_mask` (if held) is true and its sequence's
/// score (if held) is not NaN — the tokens advantage estimators train on.
fn valid_tokens(buf: &RolloutBuffer) -> Vec<bool> {
    let mut valid = match buf.token_field("loss_mask") {
        Some(Column::Bool(m)) => m.clone(),
        _ => vec![true; buf.num_response_tokens()],
    };
    if let Some(s) = buf.seq_field("scores") {
        let sl = s.as_slice();
        let off = buf.response_offsets();
        for i in 0..buf.len() {
            if sl.get_f64(i).is_nan() {
                valid[off[i] as usize..off[i + 1] as usize].fill(false);
            }
        }
    }
    valid
}

fn advantage_moments_of(buf: &RolloutBuffer, valid: &[bool]) -> Option<Moments> {
    let c = buf.computed()?;
    let s = c.advantages.column().as_slice();
    if c.advantages.is_token_level() {
        moments(s.len(), |j| if valid[j] { s.get_f64(j) } else { f64::NAN })
    } else {
        // Sequences with at least one valid token.
        let off = buf.response_offsets();
        moments(s.len(), |i| {
            if valid[off[i] as usize..off[i + 1] as usize]
                .iter()
                .any(|&b| b)
            {
                s.get_f64(i)
            } else {
                f64::NAN
            }
        })
    }
}

/// `(mean, std, min, max)` of the stored advantages over what is trained on: valid tokens
/// (per-token advantages) or sequences with a valid token (per-sequence advantages); `None`
/// before any estimator ran or when nothing is valid.
pub fn advantage_moments(buf: &RolloutBuffer) -> Option<(f64, f64, f64, f64)> {
    let valid = valid_tokens(buf);
    advantage_moments_of(buf, &valid).map(|m| (m.mean, m.std, m.min, m.max))
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
            advantage_moments_of(buf, &valid),
            true,
        );
        if let Some(r) = &c.returns {
            let s = r.as_slice();
            let m = moments(s.len(), |j| if valid[j] { s.get_f64(j) } else { f64::NAN });
            push_moments(&mut out, "returns", m, false);
        }
    }
    out
}
