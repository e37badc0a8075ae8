//! Discounted reward-to-go per sequence (REINFORCE++, ReMax returns).
//!
//! Per row, in reverse from its last valid token with `G_next = 0`:
//! `G_t = r_t + γ·G_next`. The running return resets at every row boundary. Masked tokens
//! inside a row follow [`Masked`]: `Skip` carries `G_next` across them undiscounted, `Zero`
//! makes them zero-reward steps (`G_next ← γ·G_next`). Masked and padding slots of the output
//! are exactly 0. Arithmetic runs in f64.

use super::gae::{check_unit, valid_end, Masked};
use crate::error::Result;
use crate::layout::{check_mask, Float, Layout, MaskValue};
use crate::parallel::{for_each_item, split_rows};

/// Discounted returns of `rewards` (one per slot of `layout`) into `out` (every slot written).
pub fn discounted_returns<F: Float, M: MaskValue>(
    layout: &Layout,
    rewards: &[F],
    mask: Option<&[M]>,
    gamma: f64,
    masked: Masked,
    out: &mut [F],
) -> Result<()> {
    check_unit("gamma", gamma)?;
    layout.check_len("rewards", rewards.len())?;
    check_mask(layout, mask)?;
    layout.check_len("returns output", out.len())?;
    let rows = split_rows(layout, out);
    for_each_item(layout.n_slots(), rows, |i, out| {
        let rg = layout.row(i);
        let r = &rewards[rg.clone()];
        let m = mask.map(|m| &m[rg]);
        let end = valid_end(m, r.len());
        out[end..].fill(F::ZERO);
        let mut g = 0.0f64;
        match m {
            None => {
                for j in (0..end).rev() {
                    g = r[j].to_f64() + gamma * g;
                    out[j] = F::from_f64(g);
                }
            }
            Some(m) => {
                for j in (0..end).rev() {
                    if m[j].on() {
                        g = r[j].to_f64() + gamma * g;
                        out[j] = F::from_f64(g);
                    } else {
                        if masked == Masked::Zero {
                            g *= gamma;
                        }
                        out[j] = F::ZERO;
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_to_go_resets_per_row() {
        let l = Layout::ragged(&[0, 3, 5], 5).unwrap();
        let mut out = vec![f32::NAN; 5];
        discounted_returns::<f32, bool>(
            &l,
            &[1.0, 0.0, 2.0, 4.0, 8.0],
            None,
            0.5,
            Masked::Skip,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![1.5, 1.0, 2.0, 8.0, 8.0]);
    }

    #[test]
    fn masked_modes() {
        let l = Layout::padded(1, 4);
        let r = [1.0, f64::NAN, 4.0, f64::INFINITY];
        let m = [1u8, 0, 1, 0];
        let mut out = vec![9.0; 4];
        discounted_returns(&l, &r, Some(&m), 0.5, Masked::Skip, &mut out).unwrap();
        assert_eq!(out, vec![3.0, 0.0, 4.0, 0.0]);
        discounted_returns(&l, &r, Some(&m), 0.5, Masked::Zero, &mut out).unwrap();
        assert_eq!(out, vec![2.0, 0.0, 4.0, 0.0]);
    }
}
