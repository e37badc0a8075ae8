//! Generalised advantage estimation (Schulman et al. 2016) over padded or ragged sequences.
//!
//! Per row, in reverse over its slots, starting after the last valid token with
//! `V_next = bootstrap` (0 when not given) and `A_next = 0`:
//!
//! ```text
//! δ_t = r_t + γ·V_next − V_t
//! A_t = δ_t + γλ·A_next
//! R_t = A_t + V_t                       (returns)
//! ```
//!
//! Masked tokens *inside* a row follow [`Masked`]:
//! * `Skip`: `V_next` and `A_next` pass over them unchanged, so bootstrapping jumps across
//!   them (verl's behaviour for multi-turn observation tokens);
//! * `Zero`: they are zero-reward, zero-value steps, i.e. `A_next ← γ·V_next + γλ·A_next`,
//!   `V_next ← 0` (OpenRLHF's behaviour, which multiplies rewards and values by the mask).
//!
//! Masked and padding slots of both outputs are exactly 0; their inputs are never read, so NaN
//! or inf there does no harm. Arithmetic runs in f64 whatever the element type.

use std::str::FromStr;

use crate::error::{CoreError, Result};
use crate::layout::{check_mask, Float, Layout, MaskValue};
use crate::parallel::{for_each_item, split_rows};

/// What masked tokens inside a sequence mean to a reverse recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masked {
    /// Carry the running state across masked tokens (verl).
    Skip,
    /// Masked tokens are zero-reward (and zero-value) steps (OpenRLHF).
    Zero,
}

impl FromStr for Masked {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(Masked::Skip),
            "zero" => Ok(Masked::Zero),
            _ => Err(CoreError::option(format!(
                "masked must be 'skip' or 'zero', got {s:?}"
            ))),
        }
    }
}

/// Options of [`gae`].
#[derive(Debug, Clone, Copy)]
pub struct GaeOptions {
    pub gamma: f64,
    pub lam: f64,
    pub masked: Masked,
}

/// Check that a discount-like scalar lies in [0, 1].
pub(crate) fn check_unit(name: &str, x: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&x) {
        return Err(CoreError::option(format!(
            "{name} must be in [0, 1], got {x}"
        )));
    }
    Ok(())
}

/// Index one past the last valid slot of a row (0 when none is valid).
#[inline]
pub(crate) fn valid_end<M: MaskValue>(mask: Option<&[M]>, len: usize) -> usize {
    match mask {
        None => len,
        Some(m) => m.iter().rposition(|x| x.on()).map_or(0, |p| p + 1),
    }
}

/// GAE advantages and returns.
///
/// * `rewards`, `values`: one value per slot of `layout`;
/// * `mask`: optional, one entry per slot ([`MaskValue`] decides validity);
/// * `bootstrap`: optional, one value per row: the value of the state after the row's last
///   valid token (for truncated sequences; pass 0 for terminated ones);
/// * `adv_out`, `ret_out`: one slot per slot of `layout`; every slot is written.
#[allow(clippy::too_many_arguments)]
pub fn gae<F: Float, M: MaskValue>(
    layout: &Layout,
    rewards: &[F],
    values: &[F],
    mask: Option<&[M]>,
    bootstrap: Option<&[F]>,
    opts: GaeOptions,
    adv_out: &mut [F],
    ret_out: &mut [F],
) -> Result<()> {
    check_unit("gamma", opts.gamma)?;
    check_unit("lam", opts.lam)?;
    layout.check_len("rewards", rewards.len())?;
    layout.check_len("values", values.len())?;
    check_mask(layout, mask)?;
    if let Some(b) = bootstrap {
        layout.check_rows("bootstrap", b.len())?;
    }
    layout.check_len("advantages output", adv_out.len())?;
    layout.check_len("returns output", ret_out.len())?;

    let items: Vec<_> = split_rows(layout, adv_out)
        .into_iter()
        .zip(split_rows(layout, ret_out))
        .collect();
    for_each_item(layout.n_slots(), items, |i, (adv, ret)| {
        let rg = layout.row(i);
        let boot = bootstrap.map_or(0.0, |b| b[i].to_f64());
        gae_row(
            &rewards[rg.clone()],
            &values[rg.clone()],
            mask.map(|m| &m[rg]),
            boot,
            opts,
            adv,
            ret,
        );
    });
    Ok(())
}

/// One row of [`gae`]; all slices have the row's length.
#[inline]
fn gae_row<F: Float, M: MaskValue>(
    r: &[F],
    v: &[F],
    mask: Option<&[M]>,
    boot: f64,
    opts: GaeOptions,
    adv: &mut [F],
    ret: &mut [F],
) {
    let n = r.len();
    let end = valid_end(mask, n);
    adv[end..].fill(F::ZERO);
    ret[end..].fill(F::ZERO);
    let (gamma, gl) = (opts.gamma, opts.gamma * opts.lam);
    let mut v_next = boot;
    let mut a_next = 0.0f64;
    match mask {
        None => {
            for j in (0..end).rev() {
                let vj = v[j].to_f64();
                let delta = r[j].to_f64() + gamma * v_next - vj;
                a_next = delta + gl * a_next;
                v_next = vj;
                adv[j] = F::from_f64(a_next);
                ret[j] = F::from_f64(a_next + vj);
            }
        }
        Some(m) => {
            for j in (0..end).rev() {
                if m[j].on() {
                    let vj = v[j].to_f64();
                    let delta = r[j].to_f64() + gamma * v_next - vj;
                    a_next = delta + gl * a_next;
                    v_next = vj;
                    adv[j] = F::from_f64(a_next);
                    ret[j] = F::from_f64(a_next + vj);
                } else {
                    if opts.masked == Masked::Zero {
                        a_next = gamma * v_next + gl * a_next;
                        v_next = 0.0;
                    }
                    adv[j] = F::ZERO;
                    ret[j] = F::ZERO;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn run(
        layout: &Layout,
        r: &[f64],
        v: &[f64],
        m: Option<&[bool]>,
        boot: Option<&[f64]>,
        gamma: f64,
        lam: f64,
        masked: Masked,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut a = vec![f64::NAN; r.len()];
        let mut ret = vec![f64::NAN; r.len()];
        let opts = GaeOptions { gamma, lam, masked };
        gae(layout, r, v, m, boot, opts, &mut a, &mut ret).unwrap();
        (a, ret)
    }

    #[test]
    fn hand_computed() {
        // one row, gamma = 0.5, lam = 1: A_2 = 1 - 3 = -2; A_1 = 0 + 0.5*3 - 2 + 0.5*(-2) = -1.5
        let l = Layout::padded(1, 3);
        let (a, ret) = run(
            &l,
            &[0.0, 0.0, 1.0],
            &[1.0, 2.0, 3.0],
            None,
            None,
            0.5,
            1.0,
            Masked::Skip,
        );
        assert_eq!(a[2], -2.0);
        assert_eq!(a[1], -1.5);
        assert_eq!(a[0], 0.5 * 2.0 - 1.0 + 0.5 * -1.5);
        assert_eq!(ret[2], 1.0);
    }

    #[test]
    fn masked_slots_are_zero_even_with_nan_inputs() {
        let l = Layout::padded(2, 3);
        let r = [1.0, f64::NAN, f64::INFINITY, 1.0, 1.0, 1.0];
        let v = [0.5, f64::NAN, f64::NAN, 0.0, 0.0, 0.0];
        let m = [true, false, false, false, false, false];
        for masked in [Masked::Skip, Masked::Zero] {
            let (a, ret) = run(&l, &r, &v, Some(&m), None, 1.0, 1.0, masked);
            assert_eq!(a, vec![0.5, 0.0, 0.0, 0.0, 0.0, 0.0]);
            assert_eq!(ret, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn skip_versus_zero_inside_a_row() {
        // tokens: valid, masked, valid. gamma = lam = 1.
        let l = Layout::padded(1, 3);
        let r = [0.0, 5.0, 1.0];
        let v = [0.25, 7.0, 0.5];
        let m = [true, false, true];
        let (a, _) = run(&l, &r, &v, Some(&m), None, 1.0, 1.0, Masked::Skip);
        // skip: A_2 = 1 - 0.5 = 0.5; A_0 = 0 + 0.5 - 0.25 + 0.5 = 0.75
        assert_eq!(a, vec![0.75, 0.0, 0.5]);
        let (a, _) = run(&l, &r, &v, Some(&m), None, 1.0, 1.0, Masked::Zero);
        // zero: A_2 = 0.5; masked step: A = 0 + 1*0.5 - 0 + 0.5 = 1.0, V_next = 0;
        // A_0 = 0 + 0 - 0.25 + 1.0 = 0.75 (the same total when gamma = lam = 1)
        assert_eq!(a, vec![0.75, 0.0, 0.5]);
        let (a, _) = run(&l, &r, &v, Some(&m), None, 0.5, 1.0, Masked::Zero);
        // zero, gamma 0.5: A_2 = 0.5; masked: 0.5*0.5 + 0.5*0.5 = 0.5; A_0 = -0.25 + 0.5*0.5 = 0
        assert_eq!(a, vec![0.0, 0.0, 0.5]);
        let (a, _) = run(&l, &r, &v, Some(&m), None, 0.5, 1.0, Masked::Skip);
        // skip, gamma 0.5: A_0 = 0 + 0.5*0.5 - 0.25 + 0.5*0.5 = 0.25
        assert_eq!(a, vec![0.25, 0.0, 0.5]);
    }

    #[test]
    fn bootstrap_and_ragged() {
        let l = Layout::ragged(&[0, 2, 2, 3], 3).unwrap();
        let (a, ret) = run(
            &l,
            &[0.0, 1.0, 2.0],
            &[0.0, 0.0, 1.0],
            None,
            Some(&[10.0, 99.0, 4.0]),
            1.0,
            1.0,
            Masked::Skip,
        );
        assert_eq!(a, vec![11.0, 11.0, 5.0]);
        assert_eq!(ret, vec![11.0, 11.0, 6.0]);
    }

    #[test]
    fn errors_name_the_argument() {
        let l = Layout::padded(1, 3);
        let mut a = vec![0.0; 3];
        let mut r = vec![0.0; 3];
        let opts = GaeOptions {
            gamma: 1.5,
            lam: 1.0,
            masked: Masked::Skip,
        };
        let e = gae::<f64, bool>(&l, &[0.0; 3], &[0.0; 3], None, None, opts, &mut a, &mut r)
            .unwrap_err();
        assert_eq!(e, CoreError::option("gamma must be in [0, 1], got 1.5"));
        let opts = GaeOptions {
            gamma: 1.0,
            lam: 1.0,
            masked: Masked::Skip,
        };
        let e = gae::<f64, bool>(&l, &[0.0; 3], &[0.0; 2], None, None, opts, &mut a, &mut r)
            .unwrap_err();
        assert!(
            e.message().starts_with("values has 2 values, expected 3"),
            "{e}"
        );
        let e = gae::<f64, bool>(
            &l,
            &[0.0; 3],
            &[0.0; 3],
            None,
            Some(&[0.0, 1.0]),
            opts,
            &mut a,
            &mut r,
        )
        .unwrap_err();
        assert!(e.message().starts_with("bootstrap has 2 entries"), "{e}");
        assert!("skipp"
            .parse::<Masked>()
            .unwrap_err()
            .message()
            .contains("'skip' or 'zero'"));
    }
}
