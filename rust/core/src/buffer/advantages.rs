//! Advantage estimators run in place on a [`RolloutBuffer`]'s flat ragged fields.
//!
//! The [`kernels`](crate::kernels) read the buffer's columns directly with `response_offsets`
//! as a ragged layout: no copy when the fields already have the buffer's `float_dtype`. The
//! options of each estimator are typed in [`super::estimators`].
//!
//! Estimators (defaults in brackets; the anchor each matches is named):
//! - `gae` (PPO): per-token rewards `r_t` = the `rewards` field when held (it is the whole
//!   per-token reward; scores are then not added again), else the sequence's score on its last
//!   valid token; minus `kl_coef`·KL_t when `kl_coef` ≠ 0 (needs `logprobs` and
//!   `ref_logprobs`). Then GAE with `gamma` [1], `lam` [1], `masked` [skip] over `values`.
//!   Advantages and returns per token. Whitening [token] (verl, OpenRLHF).
//! - `reinforce++`: the same rewards, returns = discounted reward-to-go with `gamma` [1],
//!   advantages = whitened returns [token] (OpenRLHF `reinforce`).
//! - `grpo`: group mean baseline, divided by the group std + `eps` [1e-6] (verl's
//!   `norm_adv_by_std_in_grpo=True`; TRL uses eps 1e-4), `ddof` [1]. One advantage per sequence.
//! - `dr_grpo`: group mean baseline, no std scaling (Dr. GRPO; verl `norm_adv_by_std_in_grpo=False`).
//! - `rloo`: leave-one-out baseline, no scaling (verl, OpenRLHF `rloo`).
//! - `reinforce++_baseline`: group mean baseline, then as `reinforce++` with the centred score
//!   on the last valid token plus the `rewards` field when held (OpenRLHF
//!   `reinforce_baseline`). With `kl_coef = 0`, `gamma = 1` and no `rewards` field every token
//!   of a sequence would get the same value, so one advantage per sequence is kept; whitening
//!   [token] then weights each sequence by its number of valid tokens, which is what whitening
//!   the broadcast tokens would do.
//!
//! Group estimators take groups from the `group_ids` field, or contiguous groups of
//! `group_size`. `scale` overrides the estimator's std scaling (`group`, `batch`, `none`).
//!
//! Valid tokens are [`RolloutBuffer::valid_tokens`]: `loss_mask` (if held) true and the
//! sequence's score not NaN. A sequence whose score is NaN (unscorable) gets advantage 0 and is
//! left out of whitening statistics.
//!
//! Whitening `(x − μ)/sqrt(σ² + whiten_eps)` (verl's `masked_whiten`): `token` weighs every valid
//! token equally (unbiased variance, ddof 1: via [`crate::kernels::stats::masked_whiten`] for
//! per-token advantages, and for per-sequence ones the token-count-weighted variance over
//! `N_tok − 1`, the same numbers as whitening the broadcast tokens); `sequence` weighs every
//! sequence equally (each of its valid tokens gets weight 1/n_valid; population variance);
//! `none` leaves them as computed.

use std::borrow::Cow;

use super::column::{Column, DType};
use super::estimators::{AdvantageOptions, ReinforceAdvantages, Whiten};
use super::store::{Advantages, RolloutBuffer};
use crate::error::{CoreError, Result};
use crate::kernels::gae::gae;
use crate::kernels::group::{group_advantages, GroupStats, Groups};
use crate::kernels::kl::{shaped_rewards, KlFloat};
use crate::kernels::returns::discounted_returns;
use crate::kernels::stats::{masked_whiten, weighted_whiten, Axis, WhitenOptions};
use crate::layout::Layout;

/// f32 / f64 views of buffer columns.
trait ColumnFloat: KlFloat {
    fn column(v: Vec<Self>) -> Column;
    fn borrow(c: &Column) -> Cow<'_, [Self]>;
    fn is_vec_of(c: &Column) -> bool;
    fn into_vec(c: Column) -> Option<Vec<Self>>;
}

impl ColumnFloat for f32 {
    fn column(v: Vec<f32>) -> Column {
        Column::F32(v)
    }
    fn is_vec_of(c: &Column) -> bool {
        matches!(c, Column::F32(_))
    }
    fn into_vec(c: Column) -> Option<Vec<f32>> {
        match c {
            Column::F32(v) => Some(v),
            _ => None,
        }
    }
    fn borrow(c: &Column) -> Cow<'_, [f32]> {
        match c {
            Column::F32(v) => Cow::Borrowed(v),
            Column::F64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
            other => Cow::Owned(
                (0..other.len())
                    .map(|i| other.as_slice().get_f64(i) as f32)
                    .collect(),
            ),
        }
    }
}

impl ColumnFloat for f64 {
    fn column(v: Vec<f64>) -> Column {
        Column::F64(v)
    }
    fn is_vec_of(c: &Column) -> bool {
        matches!(c, Column::F64(_))
    }
    fn into_vec(c: Column) -> Option<Vec<f64>> {
        match c {
            Column::F64(v) => Some(v),
            _ => None,
        }
    }
    fn borrow(c: &Column) -> Cow<'_, [f64]> {
        match c {
            Column::F64(v) => Cow::Borrowed(v),
            other => Cow::Owned(
                (0..other.len())
                    .map(|i| other.as_slice().get_f64(i))
                    .collect(),
            ),
        }
    }
}

fn need<'a>(buf: &'a RolloutBuffer, name: &str, why: &str) -> Result<&'a Column> {
    buf.token_field(name)
        .or_else(|| buf.seq_field(name))
        .ok_or_else(|| {
            CoreError::field(format!(
                "{why} needs the field {name:?}, which this buffer does not hold"
            ))
        })
}

/// Run the estimator and store its results in the buffer. Returns group statistics for
/// group estimators.
pub fn compute(buf: &mut RolloutBuffer, opts: &AdvantageOptions) -> Result<Option<GroupStats>> {
    opts.check()?;
    if buf.is_empty() {
        return Err(CoreError::option(
            "the buffer holds no sequences; add rollouts first",
        ));
    }
    // Reuse the storage of earlier results (kept by `clear`) for the outputs and scratch.
    // What is left over afterwards (the un-whitened advantages, say) is freed, not kept: a
    // buffer holds no more than its results between steps.
    let mut pool = Pool(buf.take_spare());
    let (adv, ret, stats) = match buf.float_dtype() {
        DType::F64 => compute_typed::<f64>(buf, opts, &mut pool)?,
        _ => compute_typed::<f32>(buf, opts, &mut pool)?,
    };
    drop(pool);
    buf.set_advantages(opts.estimator().name(), adv, ret)?;
    Ok(stats)
}

/// Float columns to reuse as token-sized buffers.
struct Pool(Vec<Column>);

impl Pool {
    /// A zeroed `Vec<F>` of length `t`, reusing a spare column of that dtype when there is one.
    fn zeros<F: ColumnFloat>(&mut self, t: usize) -> Vec<F> {
        if let Some(k) = self.0.iter().position(|c| F::is_vec_of(c)) {
            if let Some(mut v) = F::into_vec(self.0.swap_remove(k)) {
                v.clear();
                v.resize(t, F::ZERO);
                return v;
            }
        }
        vec![F::ZERO; t]
    }

    /// A `Vec<F>` of length `t` with unspecified (old, initialised) contents, for an output
    /// that a kernel overwrites entirely: a reused column is not zeroed first.
    fn overwritten<F: ColumnFloat>(&mut self, t: usize) -> Vec<F> {
        if let Some(k) = self.0.iter().position(|c| F::is_vec_of(c)) {
            if let Some(mut v) = F::into_vec(self.0.swap_remove(k)) {
                v.truncate(t);
                v.resize(t, F::ZERO); // writes only the part beyond the old length
                return v;
            }
        }
        vec![F::ZERO; t]
    }
}

type Outcome = (Advantages, Option<Column>, Option<GroupStats>);

fn compute_typed<F: ColumnFloat>(
    buf: &RolloutBuffer,
    opts: &AdvantageOptions,
    pool: &mut Pool,
) -> Result<Outcome> {
    let n = buf.len();
    let offsets = buf.response_offsets();
    let layout = Layout::ragged(offsets, buf.num_response_tokens())?;
    let what = opts.estimator().name();
    let scores: Option<Cow<'_, [F]>> = buf.seq_field("scores").map(F::borrow);
    // Valid tokens: loss_mask AND the sequence's score is not NaN.
    let valid = buf.valid_tokens();
    let mask_ref: Option<&[bool]> = valid.mask();

    // Group estimators: centred (and maybe scaled) scores, one per sequence.
    let mut group_stats = None;
    let mut seq_scores: Option<Vec<F>> = None;
    if let Some(grouping) = opts.grouping() {
        let s = scores.as_deref().ok_or_else(|| {
            CoreError::field(format!(
                "{what} needs the per-sequence field \"scores\", which this buffer does not hold"
            ))
        })?;
        let ids: Option<Cow<'_, [i64]>> = match buf.seq_field("group_ids") {
            Some(Column::I64(v)) => Some(Cow::Borrowed(v)),
            Some(Column::I32(v)) => Some(Cow::Owned(v.iter().map(|&x| x as i64).collect())),
            _ => None,
        };
        let groups = match (grouping.size, ids.as_deref()) {
            (Some(g), _) => Groups::Size(g),
            (None, Some(ids)) => Groups::Ids(ids),
            (None, None) => {
                return Err(CoreError::field(format!(
                "{what} needs groups: add the per-sequence field \"group_ids\" or pass group_size"
            )))
            }
        };
        let mut out = vec![F::ZERO; n];
        group_stats = Some(group_advantages(s, groups, &grouping.options, &mut out)?);
        seq_scores = Some(out);
    }

    let kl = opts.kl();
    let whiten = opts.whitening();
    let per_sequence = match opts {
        AdvantageOptions::Group(_) => true,
        AdvantageOptions::Reinforce(r) => {
            r.baseline.is_some()
                && kl.coef == 0.0
                && r.gamma == 1.0
                && buf.token_field("rewards").is_none()
        }
        AdvantageOptions::Gae(_) => false,
    };

    if per_sequence {
        let mut a = seq_scores.expect("group estimators computed per-sequence scores");
        // Valid-token count per sequence (0 for NaN-score sequences: excluded from whitening);
        // only whitening needs it (the group estimators' default is no whitening).
        let counts = || -> Vec<f64> { valid.counts().into_iter().map(|c| c as f64).collect() };
        match whiten.mode {
            Whiten::None => {}
            // Frequency weights with ddof 1: exactly `masked_whiten` of the broadcast tokens.
            Whiten::Token => weighted_whiten(&mut a, &counts(), 1.0, whiten.eps),
            Whiten::Sequence => {
                // a NaN-score sequence has count 0 already (its tokens are masked out)
                let w: Vec<f64> = counts()
                    .iter()
                    .map(|&c| if c == 0.0 { 0.0 } else { 1.0 })
                    .collect();
                weighted_whiten(&mut a, &w, 0.0, whiten.eps);
            }
        }
        return Ok((Advantages::Sequence(F::column(a)), None, group_stats));
    }

    // Per-token rewards. gae / reinforce++: the `rewards` field when held (it is the reward,
    // scores are not added again), else the score on the last valid token.
    // reinforce++_baseline: the centred score on the last valid token plus the `rewards` field
    // when held. Then − kl_coef·KL on every valid token when kl_coef ≠ 0.
    let t = buf.num_response_tokens();
    let token_rewards = buf.token_field("rewards").map(F::borrow);
    let outcome: Option<Cow<'_, [F]>> = match seq_scores {
        Some(v) => Some(Cow::Owned(v)),
        None if token_rewards.is_some() => None,
        None => scores.clone(),
    };
    if outcome.is_none() && token_rewards.is_none() {
        return Err(CoreError::field(format!(
            "{what} needs per-token \"rewards\" or per-sequence \"scores\"; this buffer holds neither"
        )));
    }
    let zeros;
    let outcome_ref: &[F] = match &outcome {
        Some(o) => o,
        None => {
            zeros = vec![F::ZERO; n];
            &zeros
        }
    };
    let mut rewards: Vec<F> = pool.zeros(t);
    if kl.coef != 0.0 {
        let lp = F::borrow(need(buf, "logprobs", "kl_coef != 0")?);
        let rf = F::borrow(need(buf, "ref_logprobs", "kl_coef != 0")?);
        shaped_rewards(
            &layout,
            outcome_ref,
            &lp,
            &rf,
            mask_ref,
            kl.coef,
            kl.estimator,
            kl.clamp,
            &mut rewards,
        )?;
    } else if outcome.is_some() {
        // The outcome on the last valid token of each sequence (no KL term).
        for i in 0..n {
            let r = offsets[i] as usize..offsets[i + 1] as usize;
            let last = match mask_ref {
                None => r.clone().last(),
                Some(m) => r.clone().rev().find(|&j| m[j]),
            };
            if let Some(j) = last {
                rewards[j] = outcome_ref[i];
            }
        }
    }
    if let Some(tr) = &token_rewards {
        for (j, (r, &x)) in rewards.iter_mut().zip(tr.iter()).enumerate() {
            if mask_ref.is_none_or(|m| m[j]) {
                *r = *r + x;
            }
        }
    }

    // `rewards` is scratch once the recurrence has read it: it receives the whitened (or
    // copied) advantages, so only two more token-sized buffers are allocated.
    let mut scratch = rewards;
    let (raw_adv, ret) = match opts {
        AdvantageOptions::Gae(g) => {
            let values = F::borrow(need(buf, "values", "gae")?);
            // every slot of a ragged layout belongs to a row: GAE writes all of them
            let (mut a, mut r): (Vec<F>, Vec<F>) = (pool.overwritten(t), pool.overwritten(t));
            gae(
                &layout, &scratch, &values, mask_ref, None, g.gae, &mut a, &mut r,
            )?;
            (Some(a), r)
        }
        AdvantageOptions::Reinforce(ReinforceAdvantages { gamma, masked, .. }) => {
            let mut r: Vec<F> = pool.overwritten(t); // every slot written, as for GAE
            discounted_returns(&layout, &scratch, mask_ref, *gamma, *masked, &mut r)?;
            (None, r) // advantages = returns, before whitening
        }
        AdvantageOptions::Group(_) => {
            unreachable!("group estimators return per-sequence advantages above")
        }
    };
    let adv = match (whiten.mode, raw_adv) {
        (Whiten::None, Some(a)) => a,
        (Whiten::None, None) => {
            scratch.copy_from_slice(&ret);
            scratch
        }
        (Whiten::Token, a) => {
            let w = WhitenOptions::new(Axis::All, true, 1, whiten.eps)?;
            masked_whiten(
                &layout,
                a.as_deref().unwrap_or(&ret),
                mask_ref,
                w,
                &mut scratch,
            )?;
            scratch
        }
        (Whiten::Sequence, a) => {
            let mut adv = match a {
                Some(a) => a,
                None => {
                    scratch.copy_from_slice(&ret);
                    scratch
                }
            };
            let mut w = vec![0.0f64; t];
            for i in 0..n {
                let r = offsets[i] as usize..offsets[i + 1] as usize;
                let c = valid.count(i);
                for j in r {
                    if mask_ref.is_none_or(|m| m[j]) {
                        w[j] = 1.0 / c as f64;
                    }
                }
            }
            weighted_whiten(&mut adv, &w, 0.0, whiten.eps);
            adv
        }
    };
    Ok((
        Advantages::Token(F::column(adv)),
        Some(F::column(ret)),
        group_stats,
    ))
}
