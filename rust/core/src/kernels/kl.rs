//! KL estimators between policy and reference log-probabilities, and KL-shaped rewards.
//!
//! With `Δ = logp − ref_logp` per token (Schulman's approximations, as named by verl and
//! OpenRLHF):
//!
//! ```text
//! k1  = Δ
//! k2  = ½·Δ²
//! k3  = exp(−Δ) + Δ − 1      (≥ 0; low variance)
//! abs = |Δ|
//! ```
//!
//! With `clamp = Some(c)` every estimator's output is clamped to `[−c, c]` (OpenRLHF clamps
//! all estimators to ±10; verl clamps k3 to ±10), and k3's `Δ` is first clamped to
//! `±(c + 1)` so `exp` cannot produce `inf − inf`; this never changes a value that the output
//! clamp keeps. NaN propagates. `clamp = None` is the raw formula.
//!
//! These elementwise kernels compute in the input precision (f32 for f32 inputs) with
//! branch-free code the compiler vectorises (AVX-512 / AVX2 chosen at run time, see
//! `simd.rs`). k3 keeps full relative precision for small divergences: in f32 it comes from
//! the tail of the `exp` polynomial (see [`k3_f32`]), in f64 from a Taylor series for
//! `|Δ| ≤ 0.5`.

use std::str::FromStr;

use super::gae::valid_end;
use crate::error::{CoreError, Result};
use crate::layout::{check_mask, Float, Layout, MaskValue};
use crate::parallel::{for_each_item, split_rows};
use crate::simd::vectorized;

/// Elements per parallel chunk of the purely elementwise [`kl`].
const CHUNK: usize = 1 << 14;

/// Which KL estimator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    K1,
    K2,
    K3,
    Abs,
}

impl FromStr for Estimator {
    type Err = CoreError;

    /// `"k1"`, `"k2"`, `"k3"`, `"abs"`; verl's names `"kl"`, `"mse"`, `"low_var_kl"` are
    /// accepted as aliases of k1, k2, k3.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "k1" | "kl" => Ok(Estimator::K1),
            "k2" | "mse" => Ok(Estimator::K2),
            "k3" | "low_var_kl" => Ok(Estimator::K3),
            "abs" => Ok(Estimator::Abs),
            _ => Err(CoreError::option(format!(
                "estimator must be 'k1', 'k2', 'k3' or 'abs', got {s:?}"
            ))),
        }
    }
}

/// Validate a clamp bound named `name`: `None`, or a non-negative number (inf allowed).
pub fn check_clamp(name: &str, clamp: Option<f64>) -> Result<()> {
    if let Some(c) = clamp {
        if c.is_nan() || c < 0.0 {
            return Err(CoreError::option(format!(
                "{name} must be None or >= 0, got {c}"
            )));
        }
    }
    Ok(())
}

/// Float types with an accurate, vectorisable `k3`.
pub trait KlFloat: Float {
    /// `exp(−d) + d − 1`, accurate in relative terms near 0.
    fn k3(self) -> Self;
}

impl KlFloat for f32 {
    #[inline(always)]
    fn k3(self) -> f32 {
        k3_f32(self)
    }
}

impl KlFloat for f64 {
    #[inline(always)]
    fn k3(self) -> f64 {
        let x = -self;
        // Σ_{k≥2} x^k / k!, truncated after k = 17 (error < 1e-17 relative for |x| ≤ 0.5)
        const C: [f64; 16] = [
            1.0 / 2.0,
            1.0 / 6.0,
            1.0 / 24.0,
            1.0 / 120.0,
            1.0 / 720.0,
            1.0 / 5040.0,
            1.0 / 40320.0,
            1.0 / 362880.0,
            1.0 / 3628800.0,
            1.0 / 39916800.0,
            1.0 / 479001600.0,
            1.0 / 6227020800.0,
            1.0 / 87178291200.0,
            1.0 / 1307674368000.0,
            1.0 / 20922789888000.0,
            1.0 / 355687428096000.0,
        ];
        let mut p = C[15];
        for c in C[..15].iter().rev() {
            p = p * x + c;
        }
        let series = x * x * p;
        let direct = (exp_f64(x) - 1.0) + self;
        if self.abs() <= 0.5 {
            series
        } else {
            direct
        }
    }
}

/// Branch-free `exp` for f32 (Cephes `expf` polynomial; about 1 ulp). Overflow gives inf,
/// results below `f32::MIN_POSITIVE` flush to 0, NaN propagates.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.722_83;
    const LO: f32 = -87.336_54;
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(LO, HI); // NaN stays NaN
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (xc - n * C1) - n * C2;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    // 2^n as two factors so n = ±128 stays representable.
    let h = ni >> 1;
    let s1 = f32::from_bits((h.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((ni.wrapping_sub(h).wrapping_add(127) as u32) << 23);
    let y = p * s1 * s2;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
}

/// k3 for f32 from one `exp` range reduction: with `x = −Δ = n·ln2 + r`,
/// `e^x − 1 − x = 2^n·(1 + r + p(r)) − 1 − x` where `p(r) = r²·P(r)` is the polynomial tail;
/// when `n = 0` (|x| < ln2/2) `r = x` and the result is `p(r)` itself, so small divergences
/// keep full relative precision without a separate series.
#[inline(always)]
pub fn k3_f32(d: f32) -> f32 {
    const HI: f32 = 88.722_83;
    const LO: f32 = -87.336_54;
    const MAGIC: f32 = 12_582_912.0;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = -d;
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = (xc - n * C1) - n * C2;
    let tail = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let tail = tail * (r * r);
    let h = ni >> 1;
    let s1 = f32::from_bits((h.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((ni.wrapping_sub(h).wrapping_add(127) as u32) << 23);
    let big = (((tail + r) + 1.0) * s1 * s2 - 1.0) - x;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        -1.0 - x
    } else if ni == 0 {
        tail
    } else {
        big
    }
}

/// Branch-free `exp` for f64 (Cephes `exp` rational approximation; about 1 ulp). Overflow
/// gives inf, results below `f64::MIN_POSITIVE` flush to 0, NaN propagates.
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    const HI: f64 = 709.782_712_893_384;
    const LO: f64 = -708.396_418_532_264_1;
    const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5·2^52
    const C1: f64 = 6.931_457_519_531_25e-1;
    const C2: f64 = 1.428_606_820_309_417_3e-6;
    const P0: f64 = 1.261_771_930_748_105_9e-4;
    const P1: f64 = 3.029_944_077_074_419_6e-2;
    const P2: f64 = 9.999_999_999_999_999e-1;
    const Q0: f64 = 3.001_985_051_386_644_6e-6;
    const Q1: f64 = 2.524_483_403_496_841e-3;
    const Q2: f64 = 2.272_655_482_081_550_3e-1;
    const Q3: f64 = 2.0;
    let xc = x.clamp(LO, HI); // NaN stays NaN
    let t = xc * std::f64::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
    let r = (xc - n * C1) - n * C2;
    let rr = r * r;
    let px = r * ((P0 * rr + P1) * rr + P2);
    let qx = ((Q0 * rr + Q1) * rr + Q2) * rr + Q3;
    let e = 1.0 + 2.0 * (px / (qx - px));
    let h = ni >> 1;
    let s1 = f64::from_bits((h.wrapping_add(1023) as u64) << 52);
    let s2 = f64::from_bits((ni.wrapping_sub(h).wrapping_add(1023) as u64) << 52);
    let y = e * s1 * s2;
    if x > HI {
        f64::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
}

/// Clamp keeping NaN (unlike `f32::max`/`min`).
#[inline(always)]
fn clamp_nan<F: Float>(v: F, lo: F, hi: F) -> F {
    if v > hi {
        hi
    } else if v < lo {
        lo
    } else {
        v
    }
}

#[inline(always)]
fn map2<F: Float>(a: &[F], b: &[F], out: &mut [F], f: impl Fn(F) -> F) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x - y);
    }
}

/// `out[i] = estimator(logp[i] − ref_logp[i])`, clamped; the generic body.
#[inline(always)]
fn kl_body<F: KlFloat>(lp: &[F], rf: &[F], est: Estimator, clamp: Option<f64>, out: &mut [F]) {
    let half = F::from_f64(0.5);
    match clamp {
        None => match est {
            Estimator::K1 => map2(lp, rf, out, |d| d),
            Estimator::K2 => map2(lp, rf, out, |d| half * d * d),
            Estimator::K3 => map2(lp, rf, out, |d| d.k3()),
            Estimator::Abs => map2(lp, rf, out, |d| d.abs()),
        },
        Some(c) => {
            let (hi, lo) = (F::from_f64(c), F::from_f64(-c));
            let (dhi, dlo) = (F::from_f64(c + 1.0), F::from_f64(-(c + 1.0)));
            match est {
                Estimator::K1 => map2(lp, rf, out, |d| clamp_nan(d, lo, hi)),
                Estimator::K2 => map2(lp, rf, out, |d| clamp_nan(half * d * d, lo, hi)),
                Estimator::K3 => map2(lp, rf, out, |d| {
                    clamp_nan(clamp_nan(d, dlo, dhi).k3(), lo, hi)
                }),
                Estimator::Abs => map2(lp, rf, out, |d| clamp_nan(d.abs(), lo, hi)),
            }
        }
    }
}

/// Elementwise KL of equal-length slices, vectorised for the CPU at hand.
pub fn kl_slice<F: KlFloat>(lp: &[F], rf: &[F], est: Estimator, clamp: Option<f64>, out: &mut [F]) {
    vectorized(
        #[inline(always)]
        || kl_body(lp, rf, est, clamp, out),
    )
}

/// Per-token KL estimate of `logp` against `ref_logp` (equal lengths) into `out`.
pub fn kl<F: KlFloat>(
    logp: &[F],
    ref_logp: &[F],
    est: Estimator,
    clamp: Option<f64>,
    out: &mut [F],
) -> Result<()> {
    check_clamp("clamp", clamp)?;
    if ref_logp.len() != logp.len() || out.len() != logp.len() {
        return Err(CoreError::shape(format!(
            "ref_logp has {} values, logp has {}; they must match",
            ref_logp.len(),
            logp.len()
        )));
    }
    let n = logp.len();
    let items: Vec<_> = out.chunks_mut(CHUNK).collect();
    for_each_item(n, items, |k, o| {
        let r = k * CHUNK..k * CHUNK + o.len();
        kl_slice(&logp[r.clone()], &ref_logp[r], est, clamp, o);
    });
    Ok(())
}

/// KL-shaped per-token rewards: `−beta·KL_t` on every valid token plus the sequence's score
/// on its last valid token; masked and padding slots are 0. A row without valid tokens is
/// all 0 (its score is dropped).
#[allow(clippy::too_many_arguments)]
pub fn shaped_rewards<F: KlFloat, M: MaskValue>(
    layout: &Layout,
    scores: &[F],
    logp: &[F],
    ref_logp: &[F],
    mask: Option<&[M]>,
    beta: f64,
    est: Estimator,
    clamp: Option<f64>,
    out: &mut [F],
) -> Result<()> {
    check_clamp("clamp", clamp)?;
    if !beta.is_finite() {
        return Err(CoreError::option(format!(
            "beta must be finite, got {beta}"
        )));
    }
    layout.check_rows("scores", scores.len())?;
    layout.check_len("logp", logp.len())?;
    layout.check_len("ref_logp", ref_logp.len())?;
    check_mask(layout, mask)?;
    layout.check_len("output", out.len())?;
    let nb = F::from_f64(-beta);
    let rows = split_rows(layout, out);
    for_each_item(layout.n_slots(), rows, |i, o| {
        let r = layout.row(i);
        let m = mask.map(|m| &m[r.clone()]);
        let (lp, rf) = (&logp[r.clone()], &ref_logp[r]);
        vectorized(
            #[inline(always)]
            || {
                kl_body(lp, rf, est, clamp, o);
                match m {
                    None => o.iter_mut().for_each(|v| *v = nb * *v),
                    Some(m) => {
                        for (v, mv) in o.iter_mut().zip(m) {
                            *v = (nb * *v).keep(mv.on());
                        }
                    }
                }
            },
        );
        let end = valid_end(m, o.len());
        if end > 0 {
            o[end - 1] = o[end - 1] + scores[i];
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_accuracy() {
        let mut x = -80.0f64;
        while x < 80.0 {
            let e = exp_f64(x);
            let t = x.exp();
            assert!(((e - t) / t).abs() < 4e-16, "f64 exp({x}) = {e} vs {t}");
            let e32 = exp_f32(x as f32) as f64;
            let t32 = (x as f32 as f64).exp();
            assert!(
                ((e32 - t32) / t32).abs() < 3e-7,
                "f32 exp({x}) = {e32} vs {t32}"
            );
            x += 0.0137;
        }
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f64(800.0), f64::INFINITY);
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert!(exp_f64(f64::NAN).is_nan());
        assert_eq!(exp_f64(0.0), 1.0);
        assert!(exp_f32(88.7).is_finite() && exp_f64(709.7).is_finite());
    }

    #[test]
    fn k3_small_and_large() {
        for &d in &[1e-8f64, -1e-8, 1e-4, -0.3, 0.5, -0.5, 0.51, 2.0, -5.0] {
            let exact = if d.abs() < 1e-3 {
                d * d / 2.0 - d * d * d / 6.0 + d.powi(4) / 24.0 - d.powi(5) / 120.0
                    + d.powi(6) / 720.0
            } else {
                (-d).exp_m1() + d
            };
            let got = d.k3();
            assert!(
                ((got - exact) / exact).abs() < 1e-14,
                "k3({d}) = {got} vs {exact}"
            );
            let got32 = (d as f32).k3() as f64;
            let exact32 = {
                let d = d as f32 as f64;
                if d.abs() < 1e-3 {
                    d * d / 2.0 - d * d * d / 6.0
                } else {
                    (-d).exp_m1() + d
                }
            };
            assert!(
                ((got32 - exact32) / exact32).abs() < 2e-6,
                "k3_32({d}) = {got32}"
            );
        }
    }

    #[test]
    fn k3_f32_dense() {
        let mut d = -30.0f64;
        let mut worst = 0.0f64;
        while d < 30.0 {
            let d32 = d as f32;
            let x = -(d32 as f64);
            let exact = if x.abs() < 1e-3 {
                x * x / 2.0 + x * x * x / 6.0 + x.powi(4) / 24.0 + x.powi(5) / 120.0
            } else {
                x.exp_m1() - x
            };
            let got = k3_f32(d32) as f64;
            if exact > 0.0 {
                worst = worst.max(((got - exact) / exact).abs());
            }
            d += if d.abs() < 1e-2 { 1.3e-7 } else { 1.1e-3 };
        }
        assert!(worst < 4e-6, "worst relative error {worst}");
        assert_eq!(k3_f32(0.0), 0.0);
        assert_eq!(k3_f32(f32::NEG_INFINITY), f32::INFINITY);
        assert_eq!(k3_f32(200.0), 199.0);
        assert!(k3_f32(f32::NAN).is_nan());
    }

    #[test]
    fn estimators_and_clamp() {
        let lp = [0.0f64, -1.0, -50.0, f64::NEG_INFINITY, f64::NAN];
        let rf = [0.0f64, 0.0, 0.0, 0.0, 0.0];
        let mut out = [0.0; 5];
        kl(&lp, &rf, Estimator::K3, Some(10.0), &mut out).unwrap();
        assert_eq!(out[0], 0.0);
        assert!((out[1] - (1f64.exp() - 2.0)).abs() < 1e-15);
        assert_eq!(&out[2..4], &[10.0, 10.0]);
        assert!(out[4].is_nan());
        kl(&lp, &rf, Estimator::K1, Some(10.0), &mut out).unwrap();
        assert_eq!(&out[..4], &[0.0, -1.0, -10.0, -10.0]);
        kl(&lp, &rf, Estimator::K2, None, &mut out).unwrap();
        assert_eq!(&out[..3], &[0.0, 0.5, 1250.0]);
        kl(&lp, &rf, Estimator::Abs, None, &mut out).unwrap();
        assert_eq!(&out[..4], &[0.0, 1.0, 50.0, f64::INFINITY]);
        assert!("k4".parse::<Estimator>().is_err());
        assert!(check_clamp("clamp", Some(-1.0)).is_err());
    }

    #[test]
    fn shaped() {
        let l = Layout::padded(2, 3);
        let lp = [0.0f32, -1.0, f32::NAN, 1.0, 1.0, 1.0];
        let rf = [0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0];
        let m = [true, true, false, false, false, false];
        let mut out = [9.0f32; 6];
        shaped_rewards(
            &l,
            &[5.0, 7.0],
            &lp,
            &rf,
            Some(&m),
            0.1,
            Estimator::K1,
            None,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0.0, 0.1 + 5.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
