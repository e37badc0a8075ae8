//! Summary statistics of a [`RolloutBuffer`], for logging: free functions over the buffer
//! (the store does not know its reports).
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
//! Standard deviations are population (ddof = 0); every statistic is
//! [`flat_moments`] (f64, two passes, NaN values skipped). "Valid" is
//! [`RolloutBuffer::valid_tokens`], the rule the estimators train on.

use super::column::{Column, Slice};
use super::store::RolloutBuffer;
use super::valid::ValidTokens;
use crate::kernels::describe::{flat_moments, Described};

fn push_moments(
    out: &mut Vec<(String, f64)>,
    prefix: &str,
    m: Option<Described>,
    with_range: bool,
) {
    if let Some(m) = m {
        out.push((format!("{prefix}/mean"), m.mean()));
        out.push((format!("{prefix}/std"), m.std()));
        if with_range {
            out.push((format!("{prefix}/min"), m.min));
            out.push((format!("{prefix}/max"), m.max));
        }
    }
}

/// Statistics of the entries of a column where `valid` (if given) is true.
fn column_moments(c: &Column, valid: Option<&[bool]>) -> Option<Described> {
    match c {
        Column::F32(v) => flat_moments(v, valid),
        Column::F64(v) => flat_moments(v, valid),
        other => {
            let s = other.as_slice();
            let values: Vec<f64> = (0..s.len()).map(|j| s.get_f64(j)).collect();
            flat_moments(&values, valid)
        }
    }
}

fn advantage_moments_of(buf: &RolloutBuffer, valid: &ValidTokens<'_>) -> Option<Described> {
    let c = buf.computed()?;
    if c.advantages.is_token_level() {
        column_moments(c.advantages.column(), valid.mask())
    } else {
        // Sequences with at least one valid token.
        let seq_valid: Vec<bool> = (0..buf.len()).map(|i| valid.count(i) > 0).collect();
        column_moments(c.advantages.column(), Some(&seq_valid))
    }
}

/// Statistics of the stored advantages over what is trained on: valid tokens (per-token
/// advantages) or sequences with a valid token (per-sequence advantages); `None` before any
/// estimator ran or when nothing is valid.
pub fn advantage_moments(buf: &RolloutBuffer) -> Option<Described> {
    advantage_moments_of(buf, &buf.valid_tokens())
}

/// Group ids as i64 (None when the column is not an integer column).
fn group_ids(c: &Column) -> Option<Vec<i64>> {
    match c.as_slice() {
        Slice::I32(v) => Some(v.iter().map(|&x| x as i64).collect()),
        Slice::I64(v) => Some(v.to_vec()),
        _ => None,
    }
}

/// Summary statistics as `(name, value)` pairs; see the module documentation for the names.
pub fn summary(buf: &RolloutBuffer) -> Vec<(String, f64)> {
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
    let lengths: Vec<f64> = (0..n).map(|i| buf.response_len(i) as f64).collect();
    push_moments(
        &mut out,
        "response_length",
        flat_moments(&lengths, None),
        true,
    );
    let lengths: Vec<f64> = (0..n).map(|i| buf.prompt_len(i) as f64).collect();
    push_moments(
        &mut out,
        "prompt_length",
        flat_moments(&lengths, None),
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
        push_moments(&mut out, "scores", column_moments(s, None), true);
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
        let valid = buf.valid_tokens();
        push_moments(
            &mut out,
            "advantages",
            advantage_moments_of(buf, &valid),
            true,
        );
        if let Some(r) = &c.returns {
            push_moments(&mut out, "returns", column_moments(r, valid.mask()), false);
        }
    }
    out
}
