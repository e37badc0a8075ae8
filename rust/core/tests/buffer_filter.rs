//! Keeping a subset of the buffer's sequences in place (dynamic sampling's group filter):
//! against a plain rebuild of the kept rows, and as properties (no all-equal group is kept,
//! groups are kept whole, the order is preserved, memory stays where it was).

use proptest::prelude::*;
use rlhf_core::buffer::{AddBatch, Advantages, Column, RolloutBuffer, Slice, TokenInput};
use rlhf_core::kernels::select::informative_groups;

/// Plain rows of a test rollout: prompt, response, per-token logprobs, score, group.
#[derive(Debug, Clone)]
struct Row {
    prompt: Vec<i64>,
    response: Vec<i64>,
    logprobs: Vec<f32>,
    score: f64,
    group: i64,
}

struct Flat {
    p: (Vec<i64>, Vec<i64>),
    r: (Vec<i64>, Vec<i64>),
    lp: (Vec<f32>, Vec<i64>),
    scores: Vec<f64>,
    groups: Vec<i64>,
}

fn flat(rows: &[Row]) -> Flat {
    fn ragged<T: Copy>(parts: Vec<&Vec<T>>) -> (Vec<T>, Vec<i64>) {
        (
            parts.iter().flat_map(|v| v.iter().copied()).collect(),
            parts.iter().map(|v| v.len() as i64).collect(),
        )
    }
    Flat {
        p: ragged(rows.iter().map(|r| &r.prompt).collect()),
        r: ragged(rows.iter().map(|r| &r.response).collect()),
        lp: ragged(rows.iter().map(|r| &r.logprobs).collect()),
        scores: rows.iter().map(|r| r.score).collect(),
        groups: rows.iter().map(|r| r.group).collect(),
    }
}

fn buffer(rows: &[Row]) -> RolloutBuffer {
    let f = flat(rows);
    let batch = AddBatch {
        prompt_ids: TokenInput::Ragged {
            values: Slice::I64(&f.p.0),
            lengths: &f.p.1,
        },
        token_fields: vec![
            (
                "response_ids".into(),
                TokenInput::Ragged {
                    values: Slice::I64(&f.r.0),
                    lengths: &f.r.1,
                },
            ),
            (
                "logprobs".into(),
                TokenInput::Ragged {
                    values: Slice::F32(&f.lp.0),
                    lengths: &f.lp.1,
                },
            ),
        ],
        seq_fields: vec![
            ("scores".into(), Slice::F64(&f.scores)),
            ("group_ids".into(), Slice::I64(&f.groups)),
        ],
    };
    let mut b = RolloutBuffer::default();
    b.add(&batch).unwrap();
    b
}

fn same(a: &RolloutBuffer, b: &RolloutBuffer) -> bool {
    a.prompt_offsets() == b.prompt_offsets()
        && a.response_offsets() == b.response_offsets()
        && a.prompt_ids().unwrap().bits_eq(b.prompt_ids().unwrap())
        && a.token_fields()
            .iter()
            .zip(b.token_fields())
            .all(|((n, x), (m, y))| n == m && x.bits_eq(y))
        && a.seq_fields()
            .iter()
            .zip(b.seq_fields())
            .all(|((n, x), (m, y))| n == m && x.bits_eq(y))
}

fn row(group: i64, score: f64, len: usize, tag: i64) -> Row {
    Row {
        prompt: vec![1, tag],
        response: (0..len as i64).map(|k| 100 * tag + k).collect(),
        logprobs: (0..len).map(|k| -(k as f32) - tag as f32).collect(),
        score,
        group,
    }
}

#[test]
fn filter_groups_keeps_informative_groups_in_place() {
    let rows = vec![
        row(0, 1.0, 3, 1),
        row(1, 0.0, 2, 2),
        row(0, 1.0, 1, 3),
        row(1, 1.0, 0, 4),
        row(2, 0.5, 4, 5),
        row(3, f64::NAN, 2, 6),
        row(3, 2.0, 1, 7),
    ];
    let mut b = buffer(&rows);
    let v = b.version();
    let cap = b.capacity_bytes();
    let (keep, counts) = b.filter_groups(0.0).unwrap();
    // group 0 all equal; 1 informative; 2 a single row; 3 one scorable member
    assert_eq!(keep, [false, true, false, true, true, false, false]);
    assert_eq!(
        (counts.num_groups, counts.kept_groups, counts.kept_rows),
        (4, 2, 3)
    );
    let kept: Vec<Row> = rows
        .iter()
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|(r, _)| r.clone())
        .collect();
    assert!(same(&b, &buffer(&kept)));
    assert!(b.version() > v);
    assert_eq!(b.capacity_bytes(), cap, "compacted where it lies");
}

#[test]
fn retain_truncate_and_computed_advantages() {
    let rows: Vec<Row> = (0..5)
        .map(|i| row(i, i as f64, (i % 3) as usize + 1, i + 1))
        .collect();
    let mut b = buffer(&rows);
    b.set_advantages("x", Advantages::Sequence(Column::F32(vec![1.0; 5])), None)
        .unwrap();
    assert!(b.retain_sequences(&[true, false]).is_err());
    assert_eq!(
        b.retain_sequences(&[true, false, true, true, false])
            .unwrap(),
        3
    );
    assert!(
        b.computed().is_none(),
        "advantages of the old rows are dropped"
    );
    b.truncate_sequences(2).unwrap();
    assert!(same(&b, &buffer(&[rows[0].clone(), rows[2].clone()])));
    b.truncate_sequences(10).unwrap();
    assert_eq!(b.len(), 2);
    b.retain_sequences(&[false, false]).unwrap();
    assert_eq!(
        (b.len(), b.num_response_tokens(), b.num_prompt_tokens()),
        (0, 0, 0)
    );
}

fn rows_strategy() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (
            0i64..6,
            prop::sample::select(vec![0.0, 1.0, 0.5, f64::NAN]),
            0usize..5,
        ),
        1..40,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (g, s, len))| row(g, s, len, i as i64 + 1))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn filtered_buffer_is_the_kept_rows_of_whole_informative_groups(
        rows in rows_strategy(),
        min_std in prop::sample::select(vec![0.0, 0.2, 0.45]),
    ) {
        let mut b = buffer(&rows);
        let (keep, _) = b.filter_groups(min_std).unwrap();
        let ids: Vec<i64> = rows.iter().map(|r| r.group).collect();
        let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
        prop_assert_eq!(&keep, &informative_groups(&scores, &ids, min_std).unwrap().0);
        for g in 0..6 {
            let members: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].group == g).collect();
            if members.is_empty() {
                continue;
            }
            // a group is kept or dropped whole
            prop_assert!(members.iter().all(|&i| keep[i] == keep[members[0]]));
            let finite: Vec<f64> =
                members.iter().map(|&i| rows[i].score).filter(|x| x.is_finite()).collect();
            let all_equal = finite.windows(2).all(|w| w[0] == w[1]);
            if keep[members[0]] && members.len() > 1 {
                // no all-equal (or unscorable) group survives
                prop_assert!(finite.len() >= 2 && !all_equal);
            }
        }
        // the buffer is the kept rows, in their order
        let kept: Vec<Row> =
            rows.iter().zip(&keep).filter(|(_, &k)| k).map(|(r, _)| r.clone()).collect();
        if kept.is_empty() {
            prop_assert_eq!(b.len(), 0);
        } else {
            prop_assert!(same(&b, &buffer(&kept)));
        }
    }
}
