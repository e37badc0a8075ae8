//! Move between one value per sequence and one value per token.
//!
//! * [`broadcast_to_tokens`]: write each sequence's value on its valid tokens (0 elsewhere),
//!   so an outcome advantage of shape `(B,)` becomes the `(B, T)` / ragged per-token form;
//! * [`reduce_tokens`]: sum or mean of each sequence's valid tokens (f64 accumulation; the
//!   mean of a sequence without valid tokens is 0).

use std::str::FromStr;

use super::stats::row_sum_count;
use crate::error::{CoreError, Result};
use crate::layout::{check_mask, Float, Layout, MaskValue};
use crate::parallel::{for_each_item, split_rows};
use crate::simd::vectorized;

/// Broadcast `seq_values` (one per row) onto the valid slots of `layout`; every slot of `out`
/// is written.
pub fn broadcast_to_tokens<F: Float, M: MaskValue>(
    layout: &Layout,
    seq_values: &[F],
    mask: Option<&[M]>,
    out: &mut [F],
) -> Result<()> {
    layout.check_rows("seq_values", seq_values.len())?;
    check_mask(layout, mask)?;
    layout.check_len("output", out.len())?;
    let rows = split_rows(layout, out);
    for_each_item(layout.n_slots(), rows, |i, o| {
        let v = seq_values[i];
        match mask {
            None => o.fill(v),
            Some(m) => {
                let m = &m[layout.row(i)];
                vectorized(
                    #[inline(always)]
                    || {
                        for (x, mv) in o.iter_mut().zip(m) {
                            *x = v.keep(mv.on());
                        }
                    },
                )
            }
        }
    });
    Ok(())
}

/// How [`reduce_tokens`] combines a sequence's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
}

impl FromStr for Reduce {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sum" => Ok(Reduce::Sum),
            "mean" => Ok(Reduce::Mean),
            _ => Err(CoreError::option(format!(
                "how must be 'sum' or 'mean', got {s:?}"
            ))),
        }
    }
}

/// Sum or mean of the valid tokens of every row of `x` into `out` (one per row).
pub fn reduce_tokens<F: Float, M: MaskValue>(
    layout: &Layout,
    x: &[F],
    mask: Option<&[M]>,
    how: Reduce,
    out: &mut [F],
) -> Result<()> {
    layout.check_len("x", x.len())?;
    check_mask(layout, mask)?;
    layout.check_rows("output", out.len())?;
    let items: Vec<_> = out.iter_mut().collect();
    for_each_item(layout.n_slots(), items, |i, o| {
        let r = layout.row(i);
        let (s, c) = row_sum_count(&x[r.clone()], mask.map(|m| &m[r]));
        *o = F::from_f64(match how {
            Reduce::Sum => s,
            Reduce::Mean if c == 0 => 0.0,
            Reduce::Mean => s / c as f64,
        });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_and_reduce() {
        let l = Layout::ragged(&[0, 2, 2, 5], 5).unwrap();
        let m = [1u8, 0, 1, 1, 0];
        let mut out = [9.0f64; 5];
        broadcast_to_tokens(&l, &[1.5, 2.0, -3.0], Some(&m), &mut out).unwrap();
        assert_eq!(out, [1.5, 0.0, -3.0, -3.0, 0.0]);
        let x = [1.0, f64::NAN, 2.0, 4.0, f64::INFINITY];
        let mut r = [0.0; 3];
        reduce_tokens(&l, &x, Some(&m), Reduce::Sum, &mut r).unwrap();
        assert_eq!(r, [1.0, 0.0, 6.0]);
        reduce_tokens(&l, &x, Some(&m), Reduce::Mean, &mut r).unwrap();
        assert_eq!(r, [1.0, 0.0, 3.0]);
        let e = broadcast_to_tokens::<f64, bool>(&l, &[1.0], None, &mut out).unwrap_err();
        assert!(e.message().starts_with("seq_values has 1 entries"), "{e}");
    }
}
