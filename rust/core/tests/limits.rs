//! Sizes the caller chooses are checked and allocated fallibly: a request that cannot be met is
//! `CoreError::Memory` naming the argument (or a typed error when the sizes are inconsistent),
//! never an abort or a panic, and the buffer is left as it was.

use rlhf_core::buffer::materialize::{padded, MaterializeOptions};
use rlhf_core::buffer::{AddBatch, DType, RolloutBuffer, Slice, TokenInput};
use rlhf_core::plan::{
    balanced_partition, permutation, token_budget_batches, Budget, Method, PlanKind, Sampler,
    SamplerConfig,
};
use rlhf_core::CoreError;

/// Three sequences of prompt `[1, 2]`, response `[3, 4, 5]`.
fn buffer() -> RolloutBuffer {
    let prompt = [1i64, 2, 1, 2, 1, 2];
    let response = [3i64, 4, 5, 3, 4, 5, 3, 4, 5];
    let batch = AddBatch {
        prompt_ids: TokenInput::Ragged {
            values: Slice::I64(&prompt),
            lengths: &[2, 2, 2],
        },
        token_fields: vec![(
            "response_ids".into(),
            TokenInput::Ragged {
                values: Slice::I64(&response),
                lengths: &[3, 3, 3],
            },
        )],
        seq_fields: vec![],
    };
    let mut b = RolloutBuffer::new(DType::F32).unwrap();
    b.add(&batch).unwrap();
    b
}

fn memory_error_naming(e: CoreError, arg: &str) {
    match &e {
        CoreError::Memory(m) => assert!(m.contains(arg), "{m}"),
        other => panic!("expected a memory error naming {arg}, got {other:?}"),
    }
}

#[test]
fn reserve_of_a_huge_size_is_an_error_and_changes_nothing() {
    let mut b = buffer();
    let before = b.to_parts();
    for (s, p, r, arg) in [
        (1usize << 62, 0, 0, "sequences="),
        (usize::MAX, 0, 0, "sequences="),
        (1 << 55, 0, 0, "sequences="),
        (0, 1 << 60, 0, "prompt_tokens="),
        (0, 0, 1 << 60, "response_tokens="),
    ] {
        memory_error_naming(b.reserve(s, p, r).unwrap_err(), arg);
    }
    let after = b.to_parts();
    assert_eq!(before.prompt_offsets, after.prompt_offsets);
    assert!(before
        .prompt_ids
        .unwrap()
        .bits_eq(after.prompt_ids.as_ref().unwrap()));
    b.reserve(10, 20, 30).unwrap();
    assert_eq!(b.len(), 3);
}

#[test]
fn a_padded_batch_too_wide_to_allocate_is_an_error() {
    let b = buffer();
    for multiple in [1usize << 62, usize::MAX, 1 << 55, (1 << 61) + 1] {
        let opts = MaterializeOptions {
            pad_token_id: 0,
            pad_to_multiple_of: multiple,
        };
        memory_error_naming(
            padded(&b, &[0, 1, 2], &opts).unwrap_err(),
            "pad_to_multiple_of=",
        );
    }
    // Many repeated rows: b × t passes the address space.
    let rows = vec![0usize; 1 << 20];
    let opts = MaterializeOptions {
        pad_token_id: 0,
        pad_to_multiple_of: 1 << 40,
    };
    memory_error_naming(padded(&b, &rows, &opts).unwrap_err(), "rows");
}

#[test]
fn a_huge_number_of_parts_is_an_error_for_every_method() {
    for method in [Method::Best, Method::Lpt, Method::Kk] {
        for k in [1usize << 62, 1 << 56, usize::MAX] {
            let e = balanced_partition(&[5, 3, 2], k, false, method).unwrap_err();
            memory_error_naming(e, "k=");
        }
    }
    // Karmarkar–Karp keeps k slots per sequence: n × k overflowing is refused up front.
    let lengths = vec![1u64; 1 << 12];
    let e = balanced_partition(&lengths, 1 << 53, false, Method::Kk).unwrap_err();
    memory_error_naming(e, "k=");
}

#[test]
fn loads_that_pass_int64_are_a_capacity_error() {
    let e = balanced_partition(&[1 << 62, 1 << 62, 1 << 62], 2, false, Method::Best).unwrap_err();
    assert!(matches!(e, CoreError::Capacity(_)), "{e:?}");
}

#[test]
fn a_huge_permutation_is_an_error() {
    memory_error_naming(permutation(1 << 62, 0, 0).unwrap_err(), "n=");
    memory_error_naming(permutation(usize::MAX, 0, 0).unwrap_err(), "n=");
    assert_eq!(permutation(0, 0, 0).unwrap(), Vec::<usize>::new());
}

#[test]
fn budgets_with_huge_multiples_do_not_wrap() {
    // ceil(len / m) * m overflows u64 for m near 2^64: the width saturates, over the budget.
    let budget = Budget::Padded {
        tokens: u64::MAX - 1,
        pad_to_multiple_of: u64::MAX,
    };
    let e = token_budget_batches(&[0], &[2], budget, true).unwrap_err();
    assert!(matches!(e, CoreError::Capacity(_)), "{e:?}");
    // Greedy cutting: count × width saturates instead of wrapping (2 × 2^63 would wrap to 0
    // and put both sequences in one micro-batch).
    let budget = Budget::Padded {
        tokens: u64::MAX - 1,
        pad_to_multiple_of: 1 << 63,
    };
    let batches = token_budget_batches(&[0, 1], &[5, 5], budget, false).unwrap();
    assert_eq!(batches, vec![vec![0], vec![1]]);
    let config = SamplerConfig {
        kind: PlanKind::MicroBatches {
            budget,
            bucket: false,
        },
        epochs: 1,
        seed: 0,
        shuffle: false,
    };
    let mut s = Sampler::new(config, vec![5, 5]).unwrap();
    assert_eq!(s.batches_in_epoch(0).unwrap(), 2);
}
