//! Dynamic sampling's refill bookkeeping as properties: rounds of whole groups added until the
//! batch is full or the rounds run out give a batch of whole groups, kept ones first with no
//! all-equal group among them, and a refill restored from its progress after any round ends
//! in the same state and selection.

use proptest::prelude::*;
use rlhf_core::buffer::{GroupRefill, RefillConfig};

/// One round: `groups[k]` holds the scores of group `100·round + k`.
fn flat(round: usize, groups: &[Vec<f64>]) -> (Vec<f64>, Vec<i64>) {
    let scores = groups.iter().flatten().copied().collect();
    let ids = groups
        .iter()
        .enumerate()
        .flat_map(|(k, g)| std::iter::repeat_n((100 * round + k) as i64, g.len()))
        .collect();
    (scores, ids)
}

fn case() -> impl Strategy<Value = (usize, usize, usize, f64, Vec<Vec<Vec<f64>>>, usize)> {
    (1usize..4).prop_flat_map(|g| {
        let score = prop::sample::select(vec![0.0, -0.0, 0.5, 1.0, f64::NAN]);
        let group = prop::collection::vec(score, g..=g);
        (
            Just(g),
            1usize..5,
            0usize..5,
            prop::sample::select(vec![0.0, 0.21, 0.47]),
            prop::collection::vec(prop::collection::vec(group, 1..4), 8..=8),
            0usize..9,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn refill_batch_is_whole_groups_and_resumes_exactly(
        (g, k, max_rounds, min_std, rounds, cut) in case()
    ) {
        let config = RefillConfig { batch_rows: g * k, group_size: g, max_rounds, min_std };
        let mut straight = GroupRefill::new(config).unwrap();
        let mut saved = None;
        let (mut scores, mut ids) = (Vec::new(), Vec::new());
        for (r, groups) in rounds.iter().enumerate() {
            if r == cut {
                saved = Some(straight.progress().clone());
            }
            let (s, i) = flat(r, groups);
            straight.add_round(&s, &i).unwrap();
            scores.extend(s);
            ids.extend(i);
            if straight.is_full() || straight.rounds_exhausted() {
                break;
            }
        }
        // resumed: restored after round `cut` (or after the last one) and fed the rest
        let saved = saved.unwrap_or_else(|| straight.progress().clone());
        let mut resumed = GroupRefill::restore(config, saved.clone()).unwrap();
        let rest = rounds.iter().enumerate().take(straight.rounds()).skip(saved.rounds);
        for (r, groups) in rest {
            let (s, i) = flat(r, groups);
            resumed.add_round(&s, &i).unwrap();
        }
        prop_assert_eq!(resumed.progress(), straight.progress());
        prop_assert_eq!(resumed.kept_rows(), straight.kept_rows());
        prop_assert_eq!(resumed.selection(), straight.selection());

        let sel = match straight.selection() {
            Ok(sel) => sel,
            Err(_) => {
                // only when the rounds ran out before there were rows enough
                prop_assert!(ids.len() < g * k && straight.rounds_exhausted());
                return Ok(());
            }
        };
        prop_assert_eq!(sel.rows.len(), g * k);
        for (n, &row) in sel.rows.iter().enumerate() {
            let members: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == ids[row]).collect();
            // whole groups
            prop_assert!(members.iter().all(|m| sel.rows.contains(m)));
            if n < sel.kept_rows {
                let finite: Vec<f64> =
                    members.iter().map(|&i| scores[i]).filter(|x| x.is_finite()).collect();
                let all_equal = finite.iter().all(|&x| x == finite[0]);
                prop_assert!(members.len() == 1 || (finite.len() >= 2 && !all_equal));
                prop_assert!(straight.progress().keep[row]);
            } else {
                prop_assert!(!straight.progress().keep[row]);
            }
        }
        // kept rows in sampling order, then dropped rows in sampling order
        prop_assert!(sel.rows[..sel.kept_rows].windows(2).all(|w| w[0] < w[1]));
        prop_assert!(sel.rows[sel.kept_rows..].windows(2).all(|w| w[0] < w[1]));
    }
}
