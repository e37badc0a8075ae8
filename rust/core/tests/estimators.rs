//! The typed options of the buffer's advantage estimators, the one valid-token rule, and the
//! field lookup the bindings use.

use rlhf_core::buffer::advantages::compute;
use rlhf_core::buffer::estimators::{
    AdvantageOptions, Estimator, GaeAdvantages, GroupAdvantages, GroupArgs, Grouping, KlPenalty,
    ReinforceAdvantages, Whiten, Whitening,
};
use rlhf_core::buffer::summary::advantage_moments;
use rlhf_core::buffer::{AddBatch, Column, DType, Level, RolloutBuffer, Slice, TokenInput};
use rlhf_core::kernels::gae::{GaeOptions, Masked};
use rlhf_core::kernels::group::{Baseline, GroupOptions, Scale, Singleton};
use rlhf_core::kernels::kl::Estimator as KlEstimator;
use rlhf_core::CoreError;

/// Four sequences in two groups; sequence 2 is unscorable (NaN score) and token 1 of
/// sequence 0 is masked out.
fn buffer() -> RolloutBuffer {
    let prompts = [1i64, 2, 3, 4];
    let plen = [1i64; 4];
    let resp = [5i64, 6, 7, 8, 9, 10, 11, 12];
    let rlen = [3i64, 2, 1, 2];
    let values = [0.5f32, 0.1, -0.2, 0.3, 0.0, 0.7, -0.4, 0.2];
    let loss_mask = [true, false, true, true, true, true, true, true];
    let scores = [1.0f32, 0.0, f32::NAN, 2.0];
    let groups = [0i64, 0, 1, 1];
    let ragged = |values| TokenInput::Ragged {
        values,
        lengths: &rlen,
    };
    let batch = AddBatch {
        prompt_ids: TokenInput::Ragged {
            values: Slice::I64(&prompts),
            lengths: &plen,
        },
        token_fields: vec![
            ("response_ids".into(), ragged(Slice::I64(&resp))),
            ("values".into(), ragged(Slice::F32(&values))),
            ("loss_mask".into(), ragged(Slice::Bool(&loss_mask))),
        ],
        seq_fields: vec![
            ("scores".into(), Slice::F32(&scores)),
            ("group_ids".into(), Slice::I64(&groups)),
        ],
    };
    let mut buf = RolloutBuffer::new(DType::F32).unwrap();
    buf.add(&batch).unwrap();
    buf
}

fn group_args() -> GroupArgs {
    GroupArgs {
        scale: None,
        ddof: 1,
        eps: 1e-6,
        singleton: Singleton::Zero,
        size: None,
    }
}

fn discount() -> GaeOptions {
    GaeOptions {
        gamma: 1.0,
        lam: 1.0,
        masked: Masked::Skip,
    }
}

fn new(estimator: Estimator) -> Result<AdvantageOptions, CoreError> {
    AdvantageOptions::new(
        estimator,
        discount(),
        KlPenalty::NONE,
        group_args(),
        None,
        1e-8,
    )
}

fn bits(c: &Column) -> Vec<u64> {
    match c {
        Column::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        Column::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
        _ => panic!("advantages are float"),
    }
}

#[test]
fn option_strings_parse_into_the_estimators() {
    for name in [
        "gae",
        "reinforce++",
        "reinforce++_baseline",
        "grpo",
        "dr_grpo",
        "rloo",
    ] {
        let e: Estimator = name.parse().unwrap();
        assert_eq!(e.name(), name);
        assert_eq!(new(e).unwrap().estimator(), e);
    }
    let e = "ppo".parse::<Estimator>().unwrap_err();
    assert!(e.message().contains("got \"ppo\""), "{e}");
    assert_eq!("sequence".parse::<Whiten>().unwrap(), Whiten::Sequence);
    assert!("batch".parse::<Whiten>().is_err());
    assert_eq!("token".parse::<Level>().unwrap(), Level::Token);
    let e = "row".parse::<Level>().unwrap_err();
    assert_eq!(
        e.message(),
        "level must be 'token' or 'sequence', got \"row\""
    );
}

#[test]
fn each_estimator_gets_its_defaults() {
    match new(Estimator::Gae).unwrap() {
        AdvantageOptions::Gae(g) => assert_eq!(g.whiten.mode, Whiten::Token),
        other => panic!("{other:?}"),
    }
    match new(Estimator::Grpo).unwrap() {
        AdvantageOptions::Group(g) => {
            assert_eq!(g.grouping.options.baseline, Baseline::Mean);
            assert_eq!(g.grouping.options.scale, Scale::Group);
            assert_eq!(g.whiten.mode, Whiten::None);
        }
        other => panic!("{other:?}"),
    }
    match new(Estimator::Rloo).unwrap() {
        AdvantageOptions::Group(g) => {
            assert_eq!(g.grouping.options.baseline, Baseline::LeaveOneOut);
            assert_eq!(g.grouping.options.scale, Scale::None);
        }
        other => panic!("{other:?}"),
    }
    match new(Estimator::ReinforcePPBaseline).unwrap() {
        AdvantageOptions::Reinforce(r) => {
            let g = r.baseline.expect("a group baseline");
            assert_eq!(g.options.scale, Scale::None);
            assert_eq!(r.whiten.mode, Whiten::Token);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_part_is_checked_whatever_the_estimator() {
    let err = |r: Result<AdvantageOptions, CoreError>| r.unwrap_err().message().to_string();
    let mut d = discount();
    d.lam = 2.0;
    let e = err(AdvantageOptions::new(
        Estimator::Grpo,
        d,
        KlPenalty::NONE,
        group_args(),
        None,
        1e-8,
    ));
    assert_eq!(e, "lam must be in [0, 1], got 2");
    let mut g = group_args();
    g.scale = Some(Scale::Group);
    let e = err(AdvantageOptions::new(
        Estimator::Gae,
        discount(),
        KlPenalty::NONE,
        g,
        None,
        1e-8,
    ));
    assert_eq!(e, "scale applies to group estimators, not \"gae\"");
    let kl = KlPenalty {
        coef: 0.1,
        estimator: KlEstimator::K3,
        clamp: None,
    };
    let e = err(AdvantageOptions::new(
        Estimator::Rloo,
        discount(),
        kl,
        group_args(),
        None,
        1e-8,
    ));
    assert!(e.starts_with("kl_coef puts a KL penalty"), "{e}");
    let mut g = group_args();
    g.size = Some(0);
    let e = err(AdvantageOptions::new(
        Estimator::Gae,
        discount(),
        KlPenalty::NONE,
        g,
        None,
        1e-8,
    ));
    assert_eq!(e, "group_size must be a positive integer, got 0");
    let clamp = KlPenalty {
        clamp: Some(-1.0),
        ..KlPenalty::NONE
    };
    let e = err(AdvantageOptions::new(
        Estimator::Gae,
        discount(),
        clamp,
        group_args(),
        None,
        1e-8,
    ));
    assert_eq!(e, "kl_clamp must be None or >= 0, got -1");
    let e = err(AdvantageOptions::new(
        Estimator::Gae,
        discount(),
        KlPenalty::NONE,
        group_args(),
        Some(Whiten::Token),
        -1.0,
    ));
    assert_eq!(e, "whiten_eps must be finite and >= 0, got -1");
}

#[test]
fn options_built_by_hand_are_checked_and_match_the_builder() {
    let whiten = Whitening {
        mode: Whiten::Token,
        eps: 1e-8,
    };
    let by_hand = AdvantageOptions::Gae(GaeAdvantages {
        gae: discount(),
        kl: KlPenalty::NONE,
        whiten,
    });
    let (mut a, mut b) = (buffer(), buffer());
    compute(&mut a, &by_hand).unwrap();
    compute(&mut b, &new(Estimator::Gae).unwrap()).unwrap();
    let col = |buf: &RolloutBuffer| bits(buf.computed().unwrap().advantages.column());
    assert_eq!(col(&a), col(&b));

    let bad = AdvantageOptions::Reinforce(ReinforceAdvantages {
        gamma: 1.5,
        masked: Masked::Zero,
        kl: KlPenalty::NONE,
        whiten,
        baseline: None,
    });
    let e = compute(&mut a, &bad).unwrap_err();
    assert_eq!(e.message(), "gamma must be in [0, 1], got 1.5");
    let grouping = Grouping {
        options: GroupOptions::new(Baseline::Mean, Scale::None, 1, 1e-6, Singleton::Zero).unwrap(),
        size: None,
    };
    let wrong = AdvantageOptions::Group(GroupAdvantages {
        estimator: Estimator::Gae,
        grouping,
        whiten,
    });
    assert!(compute(&mut a, &wrong).is_err());
    // A refused run leaves the earlier results in place.
    assert_eq!(a.computed().unwrap().estimator, "gae");
}

#[test]
fn valid_tokens_are_loss_mask_and_scorable() {
    let buf = buffer();
    let v = buf.valid_tokens();
    assert_eq!(
        v.to_vec(),
        vec![true, false, true, true, true, false, true, true]
    );
    assert_eq!(v.counts(), vec![2, 2, 0, 2]);
    assert_eq!(v.count(2), 0);
    // No loss_mask and no NaN score: every token counts, and no mask is built.
    let prompts = [1i64];
    let resp = [2i64, 3];
    let one = [1i64];
    let two = [2i64];
    let mut plain = RolloutBuffer::default();
    plain
        .add(&AddBatch {
            prompt_ids: TokenInput::Ragged {
                values: Slice::I64(&prompts),
                lengths: &one,
            },
            token_fields: vec![(
                "response_ids".into(),
                TokenInput::Ragged {
                    values: Slice::I64(&resp),
                    lengths: &two,
                },
            )],
            seq_fields: vec![],
        })
        .unwrap();
    let v = plain.valid_tokens();
    assert!(v.mask().is_none());
    assert_eq!(v.to_vec(), vec![true, true]);
    assert_eq!(v.counts(), vec![2]);
}

#[test]
fn estimators_and_summary_train_on_the_valid_tokens() {
    let mut buf = buffer();
    compute(&mut buf, &new(Estimator::Gae).unwrap()).unwrap();
    let adv = match buf.computed().unwrap().advantages.column() {
        Column::F32(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    let valid = buf.valid_tokens().to_vec();
    for (a, ok) in adv.iter().zip(&valid) {
        if !ok {
            assert_eq!(*a, 0.0);
        }
    }
    // Whitened over the valid tokens: their mean is 0.
    let d = advantage_moments(&buf).unwrap();
    assert_eq!(d.moments.count, 6);
    assert!(d.mean().abs() < 1e-6, "{d:?}");
}

#[test]
fn fields_are_looked_up_in_one_order() {
    let mut buf = buffer();
    assert!(matches!(buf.column("prompt_ids").unwrap(), Column::I64(_)));
    assert!(matches!(buf.column("values").unwrap(), Column::F32(_)));
    assert!(matches!(buf.column("group_ids").unwrap(), Column::I64(_)));
    let e = buf.column("advantages").unwrap_err();
    assert!(matches!(e, CoreError::Field(_)));
    assert_eq!(
        e.message(),
        "no field \"advantages\" in the buffer; it holds [\"prompt_ids\", \"response_ids\", \
         \"values\", \"loss_mask\", \"scores\", \"group_ids\"]"
    );
    compute(&mut buf, &new(Estimator::Gae).unwrap()).unwrap();
    assert_eq!(buf.column("advantages").unwrap().len(), 8);
    assert_eq!(buf.column("returns").unwrap().len(), 8);
    compute(&mut buf, &new(Estimator::Grpo).unwrap()).unwrap();
    assert_eq!(buf.column("advantages").unwrap().len(), 4);
    assert!(buf.column("returns").is_err());
}
