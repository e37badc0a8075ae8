//! Property tests of the advantage and statistics kernels (no Python needed):
//! identities (γ=0, λ=1, identical group scores, fully masked rows), layout equivalence
//! (padded == ragged), thread-count independence, and that arbitrary input never panics.

#![allow(clippy::needless_range_loop)] // index loops over several parallel arrays read clearer here

use proptest::prelude::*;
use rlhf_core::kernels::gae::{gae, GaeOptions, Masked};
use rlhf_core::kernels::group::{
    group_advantages, Baseline, GroupOptions, Groups, Scale, Singleton,
};
use rlhf_core::kernels::kl::{kl, shaped_rewards, Estimator};
use rlhf_core::kernels::returns::discounted_returns;
use rlhf_core::kernels::running::RunningMoments;
use rlhf_core::kernels::stats::{masked_mean, masked_var, masked_whiten, Axis, WhitenOptions};
use rlhf_core::kernels::tokens::{broadcast_to_tokens, reduce_tokens, Reduce};
use rlhf_core::layout::Layout;
use rlhf_core::parallel::set_parallel;

/// A padded batch: values, right-padded lengths plus holes in the mask.
#[derive(Debug, Clone)]
struct Padded {
    b: usize,
    t: usize,
    r: Vec<f64>,
    v: Vec<f64>,
    mask: Vec<bool>,
}

fn padded() -> impl Strategy<Value = Padded> {
    (0usize..7, 0usize..13).prop_flat_map(|(b, t)| {
        let n = b * t;
        (
            Just(b),
            Just(t),
            prop::collection::vec(-5.0f64..5.0, n),
            prop::collection::vec(-5.0f64..5.0, n),
            prop::collection::vec(0usize..=t, b),
            prop::collection::vec(prop::bool::weighted(0.8), n),
        )
            .prop_map(|(b, t, r, v, lens, holes)| {
                let mut mask = vec![false; b * t];
                for i in 0..b {
                    for j in 0..lens[i] {
                        mask[i * t + j] = holes[i * t + j];
                    }
                }
                Padded { b, t, r, v, mask }
            })
    })
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + scale)
}

fn modes() -> impl Strategy<Value = Masked> {
    prop_oneof![Just(Masked::Skip), Just(Masked::Zero)]
}

proptest! {
    #[test]
    fn gae_lambda_one_is_discounted_return_minus_value(
        x in padded(), gamma in 0.0f64..=1.0, masked in modes()
    ) {
        let l = Layout::padded(x.b, x.t);
        let n = x.b * x.t;
        let (mut a, mut ret, mut g) = (vec![9.0; n], vec![9.0; n], vec![9.0; n]);
        let opts = GaeOptions { gamma, lam: 1.0, masked };
        gae(&l, &x.r, &x.v, Some(&x.mask), None, opts, &mut a, &mut ret).unwrap();
        discounted_returns(&l, &x.r, Some(&x.mask), gamma, masked, &mut g).unwrap();
        let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for k in 0..n {
            if x.mask[k] {
                prop_assert!(close(a[k], g[k] - x.v[k], scale), "{} vs {}", a[k], g[k] - x.v[k]);
                prop_assert!(close(ret[k], g[k], scale));
            } else {
                prop_assert_eq!(a[k], 0.0);
                prop_assert_eq!(ret[k], 0.0);
            }
        }
    }

    #[test]
    fn gae_gamma_zero_is_reward_minus_value(x in padded(), lam in 0.0f64..=1.0, masked in modes()) {
        let l = Layout::padded(x.b, x.t);
        let n = x.b * x.t;
        let (mut a, mut ret) = (vec![9.0; n], vec![9.0; n]);
        let boot = vec![3.0; x.b];
        let opts = GaeOptions { gamma: 0.0, lam, masked };
        gae(&l, &x.r, &x.v, Some(&x.mask), Some(&boot), opts, &mut a, &mut ret).unwrap();
        for k in 0..n {
            let expect = if x.mask[k] { x.r[k] - x.v[k] } else { 0.0 };
            prop_assert_eq!(a[k], expect);
        }
    }

    #[test]
    fn padded_and_ragged_layouts_agree(x in padded(), gamma in 0.0f64..=1.0, lam in 0.0f64..=1.0) {
        // Ragged rows = the padded rows in full (mask holes kept as a ragged mask).
        let offsets: Vec<i64> = (0..=x.b).map(|i| (i * x.t) as i64).collect();
        let pl = Layout::padded(x.b, x.t);
        let rl = Layout::ragged(&offsets, x.b * x.t).unwrap();
        let n = x.b * x.t;
        let opts = GaeOptions { gamma, lam, masked: Masked::Skip };
        let (mut a1, mut r1, mut a2, mut r2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        gae(&pl, &x.r, &x.v, Some(&x.mask), None, opts, &mut a1, &mut r1).unwrap();
        gae(&rl, &x.r, &x.v, Some(&x.mask), None, opts, &mut a2, &mut r2).unwrap();
        prop_assert_eq!(a1, a2);
        prop_assert_eq!(r1, r2);
    }

    #[test]
    fn statistics_match_naive_two_pass(x in padded(), ddof in 0i64..=1) {
        let l = Layout::padded(x.b, x.t);
        let vals: Vec<f64> = x.r.iter().zip(&x.mask).filter(|(_, &m)| m).map(|(v, _)| *v).collect();
        let n = vals.len() as f64;
        let mean = if vals.is_empty() { 0.0 } else { vals.iter().sum::<f64>() / n };
        let var = if vals.len() as i64 <= ddof { 0.0 } else {
            vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - ddof as f64)
        };
        let mut one = [0.0];
        masked_mean(&l, &x.r, Some(&x.mask), Axis::All, &mut one).unwrap();
        prop_assert!(close(one[0], mean, 5.0));
        masked_var(&l, &x.r, Some(&x.mask), Axis::All, ddof, &mut one).unwrap();
        prop_assert!(close(one[0], var, 25.0));
        let mut w = vec![9.0; x.b * x.t];
        let o = WhitenOptions::new(Axis::All, true, ddof, 1e-8).unwrap();
        masked_whiten(&l, &x.r, Some(&x.mask), o, &mut w).unwrap();
        let wsum: f64 = w.iter().zip(&x.mask).filter(|(_, &m)| m).map(|(v, _)| *v).sum();
        prop_assert!(wsum.abs() < 1e-6 * (1.0 + n), "whitened sum {}", wsum);
        prop_assert!(w.iter().zip(&x.mask).all(|(v, &m)| m || *v == 0.0));
    }

    #[test]
    fn broadcast_then_mean_recovers_values(x in padded()) {
        let l = Layout::padded(x.b, x.t);
        let seq: Vec<f64> = (0..x.b).map(|i| i as f64 * 0.5 - 1.0).collect();
        let mut tok = vec![9.0; x.b * x.t];
        broadcast_to_tokens(&l, &seq, Some(&x.mask), &mut tok).unwrap();
        let mut back = vec![9.0; x.b];
        reduce_tokens(&l, &tok, Some(&x.mask), Reduce::Mean, &mut back).unwrap();
        for i in 0..x.b {
            let any = x.mask[i * x.t..(i + 1) * x.t].iter().any(|&m| m);
            prop_assert_eq!(back[i], if any { seq[i] } else { 0.0 });
        }
    }

    #[test]
    fn group_invariants(
        scores in prop::collection::vec(prop_oneof![Just(0.0f64), Just(1.0), -3.0f64..3.0, Just(f64::NAN)], 0..40),
        n_ids in 1i64..6,
        seed in 0u64..1000,
    ) {
        let ids: Vec<i64> = (0..scores.len()).map(|i| ((i as u64 * 2654435761 + seed) % n_ids as u64) as i64).collect();
        let o = GroupOptions::new(Baseline::Mean, Scale::Group, 1, 1e-6, Singleton::Zero).unwrap();
        let mut a = vec![9.0; scores.len()];
        let st = group_advantages(&scores, Groups::Ids(&ids), &o, &mut a).unwrap();
        prop_assert!(a.iter().all(|v| v.is_finite()));
        for (k, s) in scores.iter().enumerate() {
            if s.is_nan() { prop_assert_eq!(a[k], 0.0); }
        }
        // within a group, advantages sum to 0 (mean baseline), and equal scores give 0
        for g in 0..n_ids {
            let members: Vec<usize> = (0..scores.len()).filter(|&k| ids[k] == g && !scores[k].is_nan()).collect();
            let sum: f64 = members.iter().map(|&k| a[k]).sum();
            prop_assert!(sum.abs() < 1e-6 * (1.0 + members.len() as f64), "group {} sums to {}", g, sum);
            if members.len() >= 2 && members.iter().all(|&k| scores[k] == scores[members[0]]) {
                prop_assert!(members.iter().all(|&k| a[k] == 0.0));
            }
        }
        prop_assert_eq!(st.num_nan, scores.iter().filter(|s| s.is_nan()).count());
        prop_assert!(st.frac_zero_std() >= 0.0 && st.frac_zero_std() <= 1.0);
    }

    #[test]
    fn kl_estimator_properties(d in prop::collection::vec(-30.0f32..30.0, 0..100), c in 0.1f64..20.0) {
        let zero = vec![0.0f32; d.len()];
        let mut k = vec![0.0f32; d.len()];
        kl(&d, &zero, Estimator::K3, None, &mut k).unwrap();
        prop_assert!(k.iter().all(|v| *v >= 0.0));
        kl(&d, &zero, Estimator::K3, Some(c), &mut k).unwrap();
        prop_assert!(k.iter().all(|v| *v >= 0.0 && *v as f64 <= c + 1e-6));
        kl(&d, &zero, Estimator::K1, None, &mut k).unwrap();
        prop_assert_eq!(&k, &d);
    }

    #[test]
    fn running_moments_do_not_depend_on_batching(
        x in prop::collection::vec(-100.0f64..100.0, 0..200), cut in 0usize..200
    ) {
        let cut = cut.min(x.len());
        let mut a = RunningMoments::new(1).unwrap();
        a.update::<f64, bool>(&x, None).unwrap();
        let mut b = RunningMoments::new(1).unwrap();
        b.update::<f64, bool>(&x[..cut], None).unwrap();
        let mut c = RunningMoments::new(1).unwrap();
        c.update::<f64, bool>(&x[cut..], None).unwrap();
        b.merge(&c);
        prop_assert_eq!(a.count(), b.count());
        prop_assert!(close(a.mean(), b.mean(), 100.0));
        prop_assert!(close(a.var(), b.var(), 1e4));
    }

    #[test]
    fn arbitrary_offsets_never_panic(offsets in prop::collection::vec(-3i64..20, 0..6), n in 0usize..20) {
        let x = vec![1.0f64; n];
        if let Ok(l) = Layout::ragged(&offsets, n) {
            let mut out = vec![0.0; n];
            let opts = GaeOptions { gamma: 0.9, lam: 0.9, masked: Masked::Zero };
            let mut out2 = vec![0.0; n];
            gae::<f64, bool>(&l, &x, &x, None, None, opts, &mut out, &mut out2).unwrap();
            let scores = vec![1.0; l.n_rows()];
            shaped_rewards::<f64, bool>(&l, &scores, &x, &x, None, 0.1, Estimator::K1, None, &mut out).unwrap();
        }
    }
}

/// The same inputs give the same bits with rayon on and off (large enough to go parallel).
#[test]
fn parallel_and_serial_runs_are_bit_identical() {
    let (b, t) = (200, 700);
    let n = b * t;
    let r: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1013) as f32 * 0.01 - 5.0)
        .collect();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 997) as f32 * 0.01 - 5.0)
        .collect();
    let mask: Vec<u8> = (0..n).map(|i| ((i % t) < (i / t * 13) % t) as u8).collect();
    let l = Layout::padded(b, t);
    let run = || {
        let mut out = vec![vec![0f32; n]; 6];
        let opts = GaeOptions {
            gamma: 0.99,
            lam: 0.95,
            masked: Masked::Zero,
        };
        let (a, rest) = out.split_at_mut(1);
        gae(&l, &r, &v, Some(&mask), None, opts, &mut a[0], &mut rest[0]).unwrap();
        kl(&r, &v, Estimator::K3, Some(10.0), &mut rest[1]).unwrap();
        let wo = WhitenOptions::new(Axis::All, true, 1, 1e-8).unwrap();
        masked_whiten(&l, &r, Some(&mask), wo, &mut rest[2]).unwrap();
        let s = vec![1.0f32; b];
        shaped_rewards(
            &l,
            &s,
            &r,
            &v,
            Some(&mask),
            0.1,
            Estimator::K2,
            None,
            &mut rest[3],
        )
        .unwrap();
        let mut var = [0f32];
        masked_var(&l, &r, Some(&mask), Axis::All, 1, &mut var).unwrap();
        rest[4][0] = var[0];
        out
    };
    set_parallel(false);
    let serial = run();
    set_parallel(true);
    let parallel = run();
    assert!(
        serial == parallel,
        "results differ between serial and parallel runs"
    );
}
