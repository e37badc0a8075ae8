//! Planning: the PRNG, permutations, minibatch and token-budget plans, resumable samplers,
//! balanced partition and first-fit-decreasing packing.

use proptest::prelude::*;
use rlhf_core::plan::sampler::plan_epoch;
use rlhf_core::plan::{
    balanced_partition, pack, permutation, token_budget_batches, Budget, Method, PlanKind, Sampler,
    SamplerConfig, SplitMix64,
};
use rlhf_core::CoreError;

#[test]
fn splitmix64_matches_the_published_sequence() {
    // Reference outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
    let mut r = SplitMix64::new(0);
    assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
}

#[test]
fn bounded_draws_are_in_range_and_roughly_uniform() {
    let mut r = SplitMix64::new(42);
    let mut counts = [0usize; 7];
    for _ in 0..70_000 {
        counts[r.below(7) as usize] += 1;
    }
    for c in counts {
        assert!((9_000..11_000).contains(&c), "{counts:?}");
    }
    assert_eq!(r.below(1), 0);
}

#[test]
fn permutations_are_seeded_per_epoch() {
    let a = permutation(1000, 7, 0).unwrap();
    let mut s = a.clone();
    s.sort_unstable();
    assert_eq!(s, (0..1000).collect::<Vec<_>>());
    assert_eq!(a, permutation(1000, 7, 0).unwrap());
    assert_ne!(a, permutation(1000, 7, 1).unwrap());
    assert_ne!(a, permutation(1000, 8, 0).unwrap());
    // Pinned (the Python reference in rlhf_core.testing.buffer_reference gives the same).
    assert_eq!(
        permutation(10, 0, 0).unwrap(),
        vec![4, 9, 2, 5, 1, 7, 6, 0, 3, 8]
    );
    assert_eq!(
        permutation(10, 12345, 3).unwrap(),
        vec![7, 5, 6, 4, 1, 2, 9, 8, 3, 0]
    );
}

fn cfg(kind: PlanKind, epochs: u64, seed: u64) -> SamplerConfig {
    SamplerConfig {
        kind,
        epochs,
        seed,
        shuffle: true,
    }
}

#[test]
fn minibatch_plans_cover_every_sequence_once_per_epoch() {
    let lengths = vec![3u64; 10];
    let c = cfg(
        PlanKind::Minibatches {
            batch_size: 4,
            drop_last: false,
        },
        2,
        1,
    );
    let p = plan_epoch(&c, &lengths, 0).unwrap();
    assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
    let mut all: Vec<usize> = p.concat();
    all.sort_unstable();
    assert_eq!(all, (0..10).collect::<Vec<_>>());
    let c = cfg(
        PlanKind::Minibatches {
            batch_size: 4,
            drop_last: true,
        },
        2,
        1,
    );
    let p2 = plan_epoch(&c, &lengths, 0).unwrap();
    assert_eq!(
        p2,
        p[..2].to_vec(),
        "drop_last only drops the last, short batch"
    );
    let e = Sampler::new(
        cfg(
            PlanKind::Minibatches {
                batch_size: 11,
                drop_last: true,
            },
            1,
            0,
        ),
        lengths.clone(),
    )
    .unwrap_err();
    assert!(
        matches!(e, CoreError::InvalidOption(_)) && e.message().contains("no minibatch"),
        "{e}"
    );
    let e = Sampler::new(
        cfg(
            PlanKind::Minibatches {
                batch_size: 2,
                drop_last: false,
            },
            1,
            0,
        ),
        vec![],
    )
    .unwrap_err();
    assert!(e.message().contains("no sequences"), "{e}");
}

#[test]
fn token_budget_respects_the_budget_and_names_oversized_sequences() {
    let lengths = vec![5u64, 9, 2, 7, 7, 1, 3];
    let order: Vec<usize> = (0..7).collect();
    for bucket in [true, false] {
        for budget in [
            Budget::Padded {
                tokens: 14,
                pad_to_multiple_of: 1,
            },
            Budget::Packed { tokens: 14 },
        ] {
            let bs = token_budget_batches(&order, &lengths, budget, bucket).unwrap();
            let mut all = bs.concat();
            all.sort_unstable();
            assert_eq!(all, order);
            for b in &bs {
                let cost = match budget {
                    Budget::Padded { .. } => {
                        b.len() as u64 * b.iter().map(|&i| lengths[i]).max().unwrap()
                    }
                    Budget::Packed { .. } => b.iter().map(|&i| lengths[i]).sum(),
                };
                assert!(cost <= 14, "{budget:?} {bucket} {bs:?}");
            }
        }
    }
    // Bucketing sorts longest first: [9], [7, 7], [5, 3], [2, 1].
    let bs = token_budget_batches(
        &order,
        &lengths,
        Budget::Padded {
            tokens: 14,
            pad_to_multiple_of: 1,
        },
        true,
    )
    .unwrap();
    assert_eq!(bs, vec![vec![1], vec![3, 4], vec![0, 6], vec![2, 5]]);
    let e = token_budget_batches(
        &order,
        &lengths,
        Budget::Padded {
            tokens: 8,
            pad_to_multiple_of: 1,
        },
        true,
    )
    .unwrap_err();
    assert!(matches!(e, CoreError::Capacity(_)), "{e}");
    assert!(e.message().contains("sequence 1 has 9 tokens"), "{e}");
    let e = token_budget_batches(
        &order,
        &lengths,
        Budget::Padded {
            tokens: 9,
            pad_to_multiple_of: 4,
        },
        true,
    )
    .unwrap_err();
    assert!(
        e.message().contains("12 once padded to a multiple of 4"),
        "{e}"
    );
}

#[test]
fn sampler_resumes_exactly_mid_epoch_and_at_epoch_boundaries() {
    let lengths: Vec<u64> = (0..37).map(|i| 1 + (i * 7) % 13).collect();
    for kind in [
        PlanKind::Minibatches {
            batch_size: 5,
            drop_last: true,
        },
        PlanKind::MicroBatches {
            budget: Budget::Padded {
                tokens: 40,
                pad_to_multiple_of: 1,
            },
            bucket: true,
        },
        PlanKind::MicroBatches {
            budget: Budget::Packed { tokens: 40 },
            bucket: false,
        },
    ] {
        let c = cfg(kind, 3, 99);
        let mut full = Sampler::new(c, lengths.clone()).unwrap();
        let mut all = Vec::new();
        while let Some(b) = full.next_batch().unwrap() {
            all.push(b);
        }
        for stop in 0..all.len() {
            let mut s = Sampler::new(c, lengths.clone()).unwrap();
            for _ in 0..stop {
                s.next_batch().unwrap();
            }
            let st = s.state();
            let mut r = Sampler::restore(st, lengths.clone()).unwrap();
            let mut rest = Vec::new();
            while let Some(b) = r.next_batch().unwrap() {
                rest.push(b);
            }
            assert_eq!(rest, all[stop..].to_vec(), "{kind:?} stop {stop}");
        }
        // Exhausted state stays exhausted; a state for other lengths is refused.
        let st = full.state();
        assert_eq!((st.epoch, st.step), (3, 0));
        assert!(Sampler::restore(st, lengths.clone())
            .unwrap()
            .next_batch()
            .unwrap()
            .is_none());
        let mut other = lengths.clone();
        other[3] += 1;
        let e = Sampler::restore(st, other).unwrap_err();
        assert!(matches!(e, CoreError::State(_)), "{e}");
    }
}

#[test]
fn partition_small_cases() {
    // Karmarkar–Karp alone gives 16/14; the local search reaches 15/15.
    let p = balanced_partition(&[8, 7, 6, 5, 4], 2, false, Method::Kk).unwrap();
    assert_eq!(p.max_load(), 16);
    let p = balanced_partition(&[8, 7, 6, 5, 4], 2, false, Method::Best).unwrap();
    assert_eq!(p.max_load(), 15);
    let p = balanced_partition(&[8, 7, 6, 5, 4], 2, false, Method::Lpt).unwrap();
    assert_eq!(p.loads.iter().sum::<u64>(), 30);
    let p = balanced_partition(&[4, 4, 1, 1], 2, true, Method::Best).unwrap();
    assert_eq!(p.loads, vec![5, 5]);
    assert!(p.parts().iter().all(|q| q.len() == 2));
    let e = balanced_partition(&[1, 2, 3], 2, true, Method::Best).unwrap_err();
    assert!(e.message().contains("multiple of k"), "{e}");
    let e = balanced_partition(&[1], 0, false, Method::Best).unwrap_err();
    assert!(matches!(e, CoreError::InvalidOption(_)));
    let p = balanced_partition(&[3, 1], 4, false, Method::Best).unwrap();
    assert_eq!(p.parts().len(), 4);
    assert_eq!(p.max_load(), 3);
}

#[test]
fn pack_small_cases() {
    let p = pack(&[5, 3, 8, 2, 2, 6], 10).unwrap();
    // FFD: 8 -> row0, 6 -> row1, 5 -> row2, 3 -> row1, 2 -> row0, 2 -> row2.
    assert_eq!(p.rows, vec![vec![2, 3], vec![1, 5], vec![0, 4]]);
    assert_eq!(p.loads, vec![10, 9, 7]);
    let e = pack(&[5, 11], 10).unwrap_err();
    assert!(
        matches!(e, CoreError::Capacity(_)) && e.message().contains("sequence 1 has 11 tokens"),
        "{e}"
    );
    assert!(pack(&[], 10).unwrap().rows.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn partition_keeps_every_sequence_and_best_beats_lpt(
        lengths in prop::collection::vec(0u64..5000, 0..300),
        k in 1usize..12,
        equal in any::<bool>(),
    ) {
        let mut lengths = lengths;
        if equal {
            let n = lengths.len() / k * k;
            lengths.truncate(n);
        }
        for m in [Method::Kk, Method::Lpt, Method::Best] {
            let p = balanced_partition(&lengths, k, equal, m).unwrap();
            prop_assert_eq!(p.parts().len(), k);
            let mut all: Vec<usize> = p.parts().concat();
            all.sort_unstable();
            prop_assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
            for (q, part) in p.parts().iter().enumerate() {
                prop_assert_eq!(p.loads[q], part.iter().map(|&i| lengths[i]).sum::<u64>());
                prop_assert!(part.windows(2).all(|w| w[0] < w[1]));
                if equal {
                    prop_assert_eq!(part.len(), lengths.len() / k);
                }
            }
        }
        let best = balanced_partition(&lengths, k, equal, Method::Best).unwrap();
        let lpt = balanced_partition(&lengths, k, equal, Method::Lpt).unwrap();
        prop_assert!(best.max_load() <= lpt.max_load());
        let total: u64 = lengths.iter().sum();
        prop_assert!(best.max_load() as u128 * k as u128 >= total as u128);
    }

    #[test]
    fn packing_never_exceeds_capacity_and_keeps_every_sequence(
        lengths in prop::collection::vec(0u64..100, 0..300),
        extra in 0u64..200,
    ) {
        let cap = lengths.iter().copied().max().unwrap_or(1).max(1) + extra;
        let p = pack(&lengths, cap).unwrap();
        let mut all: Vec<usize> = p.rows.concat();
        all.sort_unstable();
        prop_assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        for (r, row) in p.rows.iter().enumerate() {
            prop_assert!(p.loads[r] <= cap);
            prop_assert_eq!(p.loads[r], row.iter().map(|&i| lengths[i]).sum::<u64>());
        }
        // Same rows as a plain first-fit-decreasing (linear scan over the open rows).
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
        let mut rows: Vec<(u64, Vec<usize>)> = Vec::new();
        for i in order {
            match rows.iter_mut().find(|r| r.0 + lengths[i] <= cap) {
                Some(r) => { r.0 += lengths[i]; r.1.push(i); }
                None => rows.push((lengths[i], vec![i])),
            }
        }
        let mut want: Vec<Vec<usize>> = rows.into_iter().map(|r| r.1).collect();
        for r in &mut want { r.sort_unstable(); }
        prop_assert_eq!(&p.rows, &want);
    }

    #[test]
    fn epoch_plans_are_permutations(n in 1usize..200, bs in 1usize..50, seed in any::<u64>(), epoch in 0u64..5) {
        let lengths = vec![1u64; n];
        let c = SamplerConfig { kind: PlanKind::Minibatches { batch_size: bs, drop_last: false }, epochs: 5, seed, shuffle: true };
        let p = plan_epoch(&c, &lengths, epoch).unwrap();
        let mut all = p.concat();
        all.sort_unstable();
        prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
        prop_assert!(p[..p.len() - 1].iter().all(|b| b.len() == bs));
    }
}
