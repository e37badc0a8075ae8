//! Rollout buffer: storage, validation (a rejected add changes nothing), state round trip,
//! statistics and materialisation against a plain construction.

use proptest::prelude::*;
use rlhf_core::buffer::materialize::{packed, padded, MaterializeOptions};
use rlhf_core::buffer::summary::summary;
use rlhf_core::buffer::{AddBatch, Advantages, Column, DType, RolloutBuffer, Slice, TokenInput};
use rlhf_core::CoreError;

/// Plain per-sequence data of a test batch.
#[derive(Debug, Clone)]
struct Seqs {
    prompts: Vec<Vec<i64>>,
    responses: Vec<Vec<i64>>,
    logprobs: Vec<Vec<f32>>,
    scores: Vec<f64>,
}

impl Seqs {
    fn flat<T: Copy>(v: &[Vec<T>]) -> (Vec<T>, Vec<i64>) {
        (
            v.iter().flatten().copied().collect(),
            v.iter().map(|x| x.len() as i64).collect(),
        )
    }
}

/// Owned flat arrays backing an AddBatch.
struct Flat {
    p: (Vec<i64>, Vec<i64>),
    r: (Vec<i64>, Vec<i64>),
    lp: (Vec<f32>, Vec<i64>),
    scores: Vec<f64>,
}

fn flat(s: &Seqs) -> Flat {
    Flat {
        p: Seqs::flat(&s.prompts),
        r: Seqs::flat(&s.responses),
        lp: Seqs::flat(&s.logprobs),
        scores: s.scores.clone(),
    }
}

fn batch(f: &Flat) -> AddBatch<'_> {
    AddBatch {
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
        seq_fields: vec![("scores".into(), Slice::F64(&f.scores))],
    }
}

fn example() -> Seqs {
    Seqs {
        prompts: vec![vec![1, 2], vec![3], vec![4, 5, 6]],
        responses: vec![vec![10, 11, 12], vec![13], vec![]],
        logprobs: vec![vec![-0.1, -0.2, -0.3], vec![-0.4], vec![]],
        scores: vec![1.0, f64::NAN, -2.0],
    }
}

fn same(a: &RolloutBuffer, b: &RolloutBuffer) -> bool {
    let (pa, pb) = (a.to_parts(), b.to_parts());
    pa.prompt_offsets == pb.prompt_offsets
        && pa.response_offsets == pb.response_offsets
        && match (&pa.prompt_ids, &pb.prompt_ids) {
            (Some(x), Some(y)) => x.bits_eq(y),
            (None, None) => true,
            _ => false,
        }
        && pa.token_fields.len() == pb.token_fields.len()
        && pa
            .token_fields
            .iter()
            .zip(&pb.token_fields)
            .all(|(x, y)| x.0 == y.0 && x.1.bits_eq(&y.1))
        && pa.seq_fields.len() == pb.seq_fields.len()
        && pa
            .seq_fields
            .iter()
            .zip(&pb.seq_fields)
            .all(|(x, y)| x.0 == y.0 && x.1.bits_eq(&y.1))
        && match (&pa.computed, &pb.computed) {
            (None, None) => true,
            (Some(x), Some(y)) => {
                x.estimator == y.estimator
                    && x.advantages.is_token_level() == y.advantages.is_token_level()
                    && x.advantages.column().bits_eq(y.advantages.column())
                    && match (&x.returns, &y.returns) {
                        (None, None) => true,
                        (Some(r), Some(s)) => r.bits_eq(s),
                        _ => false,
                    }
            }
            _ => false,
        }
}

#[test]
fn add_ragged_stores_flat_fields_with_offsets() {
    let s = example();
    let f = flat(&s);
    let mut buf = RolloutBuffer::default();
    buf.add(&batch(&f)).unwrap();
    assert_eq!(buf.len(), 3);
    assert_eq!(buf.prompt_offsets(), &[0, 2, 3, 6]);
    assert_eq!(buf.response_offsets(), &[0, 3, 4, 4]);
    assert!(buf
        .prompt_ids()
        .unwrap()
        .bits_eq(&Column::I64(vec![1, 2, 3, 4, 5, 6])));
    assert!(buf
        .token_field("response_ids")
        .unwrap()
        .bits_eq(&Column::I64(vec![10, 11, 12, 13])));
    assert!(buf
        .token_field("logprobs")
        .unwrap()
        .bits_eq(&Column::F32(vec![-0.1, -0.2, -0.3, -0.4])));
    assert!(buf
        .seq_field("scores")
        .unwrap()
        .bits_eq(&Column::F64(vec![1.0, f64::NAN, -2.0])));
    // A second add appends.
    buf.add(&batch(&f)).unwrap();
    assert_eq!(buf.len(), 6);
    assert_eq!(buf.response_offsets(), &[0, 3, 4, 4, 7, 8, 8]);
    assert_eq!(buf.total_lengths(), vec![5, 2, 3, 5, 2, 3]);
}

#[test]
fn add_padded_left_and_right_padding() {
    // Prompts left-padded (B=2, T=3), responses right-padded (B=2, T=3).
    let prompt = [0i32, 7, 8, 9, 9, 9];
    let pmask = [false, true, true, true, true, true];
    let resp = [5i32, 6, 0, 4, 0, 0];
    let rmask = [1.0f32, 1.0, 0.0, 1.0, 0.0, 0.0];
    let lp = [-1.0f64, -2.0, 99.0, -3.0, 99.0, 99.0];
    let b = AddBatch {
        prompt_ids: TokenInput::Padded {
            values: Slice::I32(&prompt),
            rows: 2,
            cols: 3,
            mask: Slice::Bool(&pmask),
            mask_shape: (2, 3),
        },
        token_fields: vec![
            (
                "response_ids".into(),
                TokenInput::Padded {
                    values: Slice::I32(&resp),
                    rows: 2,
                    cols: 3,
                    mask: Slice::F32(&rmask),
                    mask_shape: (2, 3),
                },
            ),
            (
                "logprobs".into(),
                TokenInput::Padded {
                    values: Slice::F64(&lp),
                    rows: 2,
                    cols: 3,
                    mask: Slice::F32(&rmask),
                    mask_shape: (2, 3),
                },
            ),
        ],
        seq_fields: vec![],
    };
    let mut buf = RolloutBuffer::default();
    buf.add(&b).unwrap();
    assert!(buf
        .prompt_ids()
        .unwrap()
        .bits_eq(&Column::I32(vec![7, 8, 9, 9, 9])));
    assert_eq!(buf.prompt_offsets(), &[0, 2, 5]);
    assert!(buf
        .token_field("response_ids")
        .unwrap()
        .bits_eq(&Column::I32(vec![5, 6, 4])));
    assert!(buf
        .token_field("logprobs")
        .unwrap()
        .bits_eq(&Column::F64(vec![-1.0, -2.0, -3.0])));
}

fn expect_err<T: std::fmt::Debug>(
    r: Result<T, CoreError>,
    kind: fn(&CoreError) -> bool,
    needles: &[&str],
) {
    let e = r.expect_err("expected an error");
    assert!(kind(&e), "wrong error kind: {e:?}");
    for n in needles {
        assert!(e.message().contains(n), "{n:?} not in {:?}", e.message());
    }
}

#[test]
fn rejected_adds_name_field_and_sequence_and_change_nothing() {
    let s = example();
    let f = flat(&s);
    let mut buf = RolloutBuffer::default();
    buf.add(&batch(&f)).unwrap();
    let before = buf.clone();

    // logprobs of sequence 1 too long.
    let mut bad = s.clone();
    bad.logprobs[1].push(-9.0);
    let fb = flat(&bad);
    expect_err(
        buf.add(&batch(&fb)),
        |e| matches!(e, CoreError::Shape(_)),
        &[
            "logprobs",
            "sequence 1 of this add",
            "buffer index 4",
            "2 values",
            "1 tokens",
        ],
    );
    assert!(same(&buf, &before));

    // Unknown field after the schema is fixed.
    let mut b = batch(&f);
    let extra = [0.5f32; 4];
    let lens = [3i64, 1, 0];
    b.token_fields.push((
        "bonus".into(),
        TokenInput::Ragged {
            values: Slice::F32(&extra),
            lengths: &lens,
        },
    ));
    expect_err(
        buf.add(&b),
        |e| matches!(e, CoreError::Field(_)),
        &["unknown field \"bonus\""],
    );
    assert!(same(&buf, &before));

    // Missing field.
    let mut b = batch(&f);
    b.token_fields.pop();
    expect_err(
        buf.add(&b),
        |e| matches!(e, CoreError::Field(_)),
        &["\"logprobs\" is missing"],
    );
    assert!(same(&buf, &before));

    // Wrong dtype vs the schema.
    let lp64: Vec<f64> = f.lp.0.iter().map(|&x| x as f64).collect();
    let mut b = batch(&f);
    b.token_fields[1].1 = TokenInput::Ragged {
        values: Slice::F64(&lp64),
        lengths: &f.lp.1,
    };
    expect_err(
        buf.add(&b),
        |e| matches!(e, CoreError::Dtype(_)),
        &["logprobs", "float32", "float64"],
    );
    assert!(same(&buf, &before));

    // Wrong dtype for a known field.
    let ids_f: Vec<f32> = vec![1.0; 4];
    let mut b = batch(&f);
    b.token_fields[0].1 = TokenInput::Ragged {
        values: Slice::F32(&ids_f),
        lengths: &f.r.1,
    };
    expect_err(
        buf.add(&b),
        |e| matches!(e, CoreError::Dtype(_)),
        &["response_ids must be int32 or int64, got float32"],
    );
    assert!(same(&buf, &before));

    // Empty prompt.
    let mut bad = s.clone();
    bad.prompts[2].clear();
    let fb = flat(&bad);
    expect_err(
        buf.add(&batch(&fb)),
        |e| matches!(e, CoreError::Shape(_)),
        &["prompt_ids", "sequence 2 of this add", "empty"],
    );
    assert!(same(&buf, &before));

    // Per-sequence field of the wrong length.
    let short = [1.0f64, 2.0];
    let mut b = batch(&f);
    b.seq_fields[0].1 = Slice::F64(&short);
    expect_err(
        buf.add(&b),
        |e| matches!(e, CoreError::Shape(_)),
        &["scores has 2 values", "3 sequences"],
    );
    assert!(same(&buf, &before));

    // Lengths that do not add up.
    let mut b = batch(&f);
    let wrong = [3i64, 1, 1];
    b.token_fields[1].1 = TokenInput::Ragged {
        values: Slice::F32(&f.lp.0),
        lengths: &wrong,
    };
    expect_err(
        buf.add(&b),
        |e| matches!(e, CoreError::Shape(_)),
        &["logprobs", "add up to 5", "4 values"],
    );
    assert!(same(&buf, &before));

    // Mask with a gap, and a mask value that is not 0/1.
    let vals = [1i64, 2, 3];
    let gap = [true, false, true];
    let b = AddBatch {
        prompt_ids: TokenInput::Ragged {
            values: Slice::I64(&vals[..1]),
            lengths: &[1],
        },
        token_fields: vec![(
            "response_ids".into(),
            TokenInput::Padded {
                values: Slice::I64(&vals),
                rows: 1,
                cols: 3,
                mask: Slice::Bool(&gap),
                mask_shape: (1, 3),
            },
        )],
        seq_fields: vec![],
    };
    let mut fresh = RolloutBuffer::default();
    expect_err(
        fresh.add(&b),
        |e| matches!(e, CoreError::Shape(_)),
        &["response_ids", "mask row 0", "contiguous", "loss_mask"],
    );
    let half = [1.0f32, 0.5, 0.0];
    let b = AddBatch {
        prompt_ids: TokenInput::Ragged {
            values: Slice::I64(&vals[..1]),
            lengths: &[1],
        },
        token_fields: vec![(
            "response_ids".into(),
            TokenInput::Padded {
                values: Slice::I64(&vals),
                rows: 1,
                cols: 3,
                mask: Slice::F32(&half),
                mask_shape: (1, 3),
            },
        )],
        seq_fields: vec![],
    };
    expect_err(
        fresh.add(&b),
        |e| matches!(e, CoreError::Shape(_)),
        &["column 1 holds 0.5"],
    );
    assert!(fresh.is_empty() && !fresh.has_schema());
}

#[test]
fn field_names_are_checked() {
    let s = example();
    let f = flat(&s);
    for (name, needle) in [
        ("advantages", "reserved"),
        ("input_ids", "reserved"),
        ("1x", "not an identifier"),
        ("scores", "per-sequence field"),
    ] {
        let mut b = batch(&f);
        b.token_fields.push((
            name.into(),
            TokenInput::Ragged {
                values: Slice::F32(&f.lp.0),
                lengths: &f.lp.1,
            },
        ));
        let mut buf = RolloutBuffer::default();
        expect_err(buf.add(&b), |e| matches!(e, CoreError::Field(_)), &[needle]);
    }
    let mut b = batch(&f);
    b.token_fields.push((
        "logprobs".into(),
        TokenInput::Ragged {
            values: Slice::F32(&f.lp.0),
            lengths: &f.lp.1,
        },
    ));
    expect_err(
        RolloutBuffer::default().add(&b),
        |e| matches!(e, CoreError::Field(_)),
        &["given twice"],
    );
    let mut b = batch(&f);
    b.token_fields.remove(0);
    expect_err(
        RolloutBuffer::default().add(&b),
        |e| matches!(e, CoreError::Field(_)),
        &["response_ids is required"],
    );
}

#[test]
fn parts_round_trip_is_bitwise_and_corrupt_parts_are_rejected() {
    let f = flat(&example());
    let mut buf = RolloutBuffer::new(DType::F64).unwrap();
    buf.add(&batch(&f)).unwrap();
    buf.set_advantages(
        "grpo",
        Advantages::Sequence(Column::F64(vec![0.5, f64::NAN, -0.0])),
        None,
    )
    .unwrap();
    let back = RolloutBuffer::from_parts(buf.to_parts()).unwrap();
    assert!(same(&buf, &back));
    assert_eq!(back.float_dtype(), DType::F64);

    let mut p = buf.to_parts();
    p.response_offsets[2] = 1;
    expect_err(
        RolloutBuffer::from_parts(p),
        |e| matches!(e, CoreError::State(_)),
        &["response_offsets must be non-decreasing: response_offsets[2] = 1"],
    );
    let mut p = buf.to_parts();
    p.token_fields[1].1 = Column::F32(vec![0.0; 3]);
    expect_err(
        RolloutBuffer::from_parts(p),
        |e| matches!(e, CoreError::State(_)),
        &["logprobs has 3 values", "end at 4"],
    );
    let mut p = buf.to_parts();
    p.seq_fields[0].1 = Column::I64(vec![0; 3]);
    expect_err(
        RolloutBuffer::from_parts(p),
        |e| matches!(e, CoreError::State(_)),
        &["scores must be float32 or float64"],
    );
    let mut p = buf.to_parts();
    if let Some(c) = &mut p.computed {
        c.advantages = Advantages::Token(Column::F32(vec![0.0; 2]));
    }
    expect_err(
        RolloutBuffer::from_parts(p),
        |e| matches!(e, CoreError::State(_)),
        &["per-token advantages", "expected 4"],
    );
}

#[test]
fn clear_keeps_schema_reset_forgets_it() {
    let f = flat(&example());
    let mut buf = RolloutBuffer::default();
    buf.add(&batch(&f)).unwrap();
    let v = buf.version();
    buf.clear();
    assert!(buf.is_empty() && buf.has_schema() && buf.version() > v);
    assert_eq!(buf.num_response_tokens(), 0);
    let mut b = batch(&f);
    b.token_fields.pop();
    assert!(buf.add(&b).is_err(), "the schema survives clear()");
    buf.reset();
    assert!(!buf.has_schema());
    buf.add(&b).unwrap();
    assert_eq!(buf.len(), 3);
}

#[test]
fn add_invalidates_advantages() {
    let f = flat(&example());
    let mut buf = RolloutBuffer::default();
    buf.add(&batch(&f)).unwrap();
    buf.set_advantages(
        "gae",
        Advantages::Token(Column::F32(vec![1.0; 4])),
        Some(Column::F32(vec![2.0; 4])),
    )
    .unwrap();
    assert!(buf.computed().is_some());
    expect_err(
        buf.set_advantages("gae", Advantages::Token(Column::F32(vec![1.0; 3])), None),
        |e| matches!(e, CoreError::Shape(_)),
        &["expected 4 values, got 3"],
    );
    buf.add(&batch(&f)).unwrap();
    assert!(buf.computed().is_none());
}

#[test]
fn stats_report_lengths_scores_and_groups() {
    let p = [1i64, 1, 1, 1, 1];
    let pl = [1i64; 5];
    let r = [7i64; 10];
    let rl = [1i64, 2, 3, 4, 0];
    let scores = [1.0f64, 1.0, 0.0, 2.0, f64::NAN];
    let groups = [0i64, 0, 1, 1, 2];
    let trunc = [true, false, false, false, false];
    let b = AddBatch {
        prompt_ids: TokenInput::Ragged {
            values: Slice::I64(&p),
            lengths: &pl,
        },
        token_fields: vec![(
            "response_ids".into(),
            TokenInput::Ragged {
                values: Slice::I64(&r),
                lengths: &rl,
            },
        )],
        seq_fields: vec![
            ("scores".into(), Slice::F64(&scores)),
            ("group_ids".into(), Slice::I64(&groups)),
            ("truncated".into(), Slice::Bool(&trunc)),
        ],
    };
    let mut buf = RolloutBuffer::default();
    buf.add(&b).unwrap();
    let st: std::collections::HashMap<String, f64> = summary(&buf).into_iter().collect();
    assert_eq!(st["num_sequences"], 5.0);
    assert_eq!(st["num_response_tokens"], 10.0);
    assert_eq!(st["response_length/mean"], 2.0);
    assert_eq!(st["response_length/max"], 4.0);
    assert!((st["response_length/std"] - 2.0f64.sqrt()).abs() < 1e-12);
    assert_eq!(st["truncated/frac"], 0.2);
    assert_eq!(st["scores/mean"], 1.0);
    assert_eq!(st["scores/num_nan"], 1.0);
    assert_eq!(st["groups/num_groups"], 3.0);
    // Group 2 has no non-NaN score: neither a singleton nor zero-std.
    assert_eq!(st["groups/num_singleton"], 0.0);
    assert_eq!(st["groups/frac_zero_std"], 1.0 / 3.0);
}

#[test]
fn padded_batch_is_next_token_aligned() {
    let f = flat(&example());
    let mut buf = RolloutBuffer::default();
    buf.add(&batch(&f)).unwrap();
    buf.set_advantages(
        "grpo",
        Advantages::Sequence(Column::F32(vec![2.0, 3.0, 4.0])),
        None,
    )
    .unwrap();
    let opts = MaterializeOptions {
        pad_token_id: -1,
        pad_to_multiple_of: 1,
    };
    let bt = padded(&buf, &[1, 0], &opts).unwrap();
    let get = |n: &str| bt.get(n).unwrap_or_else(|| panic!("{n} missing"));
    // Sequence 1: prompt [3], response [13]; sequence 0: prompt [1, 2], response [10, 11, 12].
    assert_eq!(get("input_ids").shape, vec![2, 5]);
    assert!(get("input_ids")
        .data
        .bits_eq(&Column::I64(vec![3, 13, -1, -1, -1, 1, 2, 10, 11, 12])));
    assert!(get("attention_mask")
        .data
        .bits_eq(&Column::I64(vec![1, 1, 0, 0, 0, 1, 1, 1, 1, 1])));
    assert!(get("position_ids")
        .data
        .bits_eq(&Column::I64(vec![0, 1, 0, 0, 0, 0, 1, 2, 3, 4])));
    assert_eq!(get("response_mask").shape, vec![2, 4]);
    assert!(get("response_mask").data.bits_eq(&Column::Bool(vec![
        true, false, false, false, false, true, true, true
    ])));
    assert!(get("old_logprobs").data.bits_eq(&Column::F32(vec![
        -0.4, 0.0, 0.0, 0.0, 0.0, -0.1, -0.2, -0.3
    ])));
    assert!(get("advantages")
        .data
        .bits_eq(&Column::F32(vec![3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0])));
    assert!(get("seq_advantages")
        .data
        .bits_eq(&Column::F32(vec![3.0, 2.0])));
    assert!(get("seq_index").data.bits_eq(&Column::I64(vec![1, 0])));
    assert!(get("scores")
        .data
        .bits_eq(&Column::F64(vec![f64::NAN, 1.0])));
    assert!(bt.get("returns").is_none());

    let bt = padded(
        &buf,
        &[2],
        &MaterializeOptions {
            pad_token_id: 0,
            pad_to_multiple_of: 4,
        },
    )
    .unwrap();
    assert_eq!(bt.get("input_ids").unwrap().shape, vec![1, 4]);
    assert!(bt
        .get("response_mask")
        .unwrap()
        .data
        .bits_eq(&Column::Bool(vec![false; 3])));

    expect_err(
        padded(&buf, &[], &opts),
        |e| matches!(e, CoreError::Shape(_)),
        &["at least one sequence"],
    );
    expect_err(
        padded(&buf, &[0, 3], &opts),
        |e| matches!(e, CoreError::Shape(_)),
        &["index 3", "position 1", "3 sequences"],
    );
}

#[test]
fn packed_batch_restarts_positions() {
    let f = flat(&example());
    let mut buf = RolloutBuffer::default();
    buf.add(&batch(&f)).unwrap();
    let bt = packed(&buf, &[0, 1, 2], &MaterializeOptions::default()).unwrap();
    let get = |n: &str| &bt.get(n).unwrap().data;
    assert!(get("input_ids").bits_eq(&Column::I64(vec![1, 2, 10, 11, 12, 3, 13, 4, 5, 6])));
    assert!(get("position_ids").bits_eq(&Column::I64(vec![0, 1, 2, 3, 4, 0, 1, 0, 1, 2])));
    assert!(get("seq_ids").bits_eq(&Column::I64(vec![0, 0, 0, 0, 0, 1, 1, 2, 2, 2])));
    assert!(get("cu_seqlens").bits_eq(&Column::I32(vec![0, 5, 7, 10])));
    assert_eq!(bt.max_seqlen, 5);
    assert_eq!(bt.get("response_mask").unwrap().shape, vec![1, 9]);
    assert!(get("response_mask").bits_eq(&Column::Bool(vec![
        false, true, true, true, false, true, false, false, false
    ])));
    assert!(bt.get("attention_mask").is_none());
}

#[test]
fn loss_mask_narrows_the_response_mask() {
    let p = [1i64];
    let r = [5i64, 6, 7];
    let lm = [true, false, true];
    let b = AddBatch {
        prompt_ids: TokenInput::Ragged {
            values: Slice::I64(&p),
            lengths: &[1],
        },
        token_fields: vec![
            (
                "response_ids".into(),
                TokenInput::Ragged {
                    values: Slice::I64(&r),
                    lengths: &[3],
                },
            ),
            (
                "loss_mask".into(),
                TokenInput::Ragged {
                    values: Slice::Bool(&lm),
                    lengths: &[3],
                },
            ),
        ],
        seq_fields: vec![],
    };
    let mut buf = RolloutBuffer::default();
    buf.add(&b).unwrap();
    buf.set_advantages("grpo", Advantages::Sequence(Column::F32(vec![1.5])), None)
        .unwrap();
    let bt = padded(&buf, &[0], &MaterializeOptions::default()).unwrap();
    assert!(bt
        .get("response_mask")
        .unwrap()
        .data
        .bits_eq(&Column::Bool(vec![true, false, true])));
    assert!(bt
        .get("advantages")
        .unwrap()
        .data
        .bits_eq(&Column::F32(vec![1.5, 0.0, 1.5])));
    assert!(bt.get("loss_mask").is_none());
}

/// The plain construction of a padded batch, row by row.
fn reference_padded(s: &Seqs, idx: &[usize], pad: i64) -> (Vec<i64>, Vec<bool>, Vec<f32>, usize) {
    let t = idx
        .iter()
        .map(|&i| s.prompts[i].len() + s.responses[i].len())
        .max()
        .unwrap();
    let mut ids = vec![pad; idx.len() * t];
    let mut rm = vec![false; idx.len() * (t - 1)];
    let mut lp = vec![0.0f32; idx.len() * (t - 1)];
    for (r, &i) in idx.iter().enumerate() {
        let seq: Vec<i64> = s.prompts[i]
            .iter()
            .chain(&s.responses[i])
            .copied()
            .collect();
        ids[r * t..r * t + seq.len()].copy_from_slice(&seq);
        for k in 0..s.responses[i].len() {
            let j = s.prompts[i].len() + k - 1;
            rm[r * (t - 1) + j] = true;
            lp[r * (t - 1) + j] = s.logprobs[i][k];
        }
    }
    (ids, rm, lp, t)
}

fn arb_seqs(max_n: usize) -> impl Strategy<Value = Seqs> {
    prop::collection::vec((1usize..6, 0usize..7, any::<u32>()), 1..max_n).prop_map(|spec| {
        let mut s = Seqs {
            prompts: vec![],
            responses: vec![],
            logprobs: vec![],
            scores: vec![],
        };
        for (pl, rl, seed) in spec {
            s.prompts
                .push((0..pl).map(|j| (seed as i64 + j as i64) % 97).collect());
            s.responses.push(
                (0..rl)
                    .map(|j| (seed as i64 * 7 + j as i64) % 101)
                    .collect(),
            );
            s.logprobs.push(
                (0..rl)
                    .map(|j| -((seed % 1000) as f32) / 100.0 - j as f32)
                    .collect(),
            );
            s.scores.push(seed as f64 / 7.0);
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn split_adds_equal_one_add_and_batches_match_reference(s in arb_seqs(12), cut in 0usize..12, pick in prop::collection::vec(0usize..12, 1..8)) {
        let cut = cut.min(s.prompts.len());
        let part = |a: usize, b: usize| Seqs {
            prompts: s.prompts[a..b].to_vec(),
            responses: s.responses[a..b].to_vec(),
            logprobs: s.logprobs[a..b].to_vec(),
            scores: s.scores[a..b].to_vec(),
        };
        let n = s.prompts.len();
        let mut one = RolloutBuffer::default();
        let fa = flat(&s);
        one.add(&batch(&fa)).unwrap();
        let mut two = RolloutBuffer::default();
        let (f1, f2) = (flat(&part(0, cut)), flat(&part(cut, n)));
        two.add(&batch(&f1)).unwrap();
        two.add(&batch(&f2)).unwrap();
        prop_assert!(same(&one, &two));

        let idx: Vec<usize> = pick.iter().map(|&i| i % n).collect();
        let bt = padded(&one, &idx, &MaterializeOptions { pad_token_id: -7, pad_to_multiple_of: 1 }).unwrap();
        let (ids, rm, lp, t) = reference_padded(&s, &idx, -7);
        prop_assert_eq!(&bt.get("input_ids").unwrap().shape, &vec![idx.len(), t]);
        prop_assert!(bt.get("input_ids").unwrap().data.bits_eq(&Column::I64(ids)));
        prop_assert!(bt.get("response_mask").unwrap().data.bits_eq(&Column::Bool(rm)));
        prop_assert!(bt.get("old_logprobs").unwrap().data.bits_eq(&Column::F32(lp)));

        // Packed: the concatenation of the unpadded rows.
        let pk = packed(&one, &idx, &MaterializeOptions::default()).unwrap();
        let flat_ids: Vec<i64> = idx.iter().flat_map(|&i| s.prompts[i].iter().chain(&s.responses[i]).copied()).collect();
        prop_assert!(pk.get("input_ids").unwrap().data.bits_eq(&Column::I64(flat_ids)));
    }
}
