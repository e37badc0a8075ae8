"""Minibatch planning: seeded determinism (equal to the plain-Python SplitMix64 reference, so
the same on every machine), coverage per epoch, drop_last, token budgets, exact resume from a
sampler state (mid-epoch and at epoch boundaries), balanced partition and FFD packing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core.buffer import (
    RolloutBuffer,
    balanced_partition,
    pack_sequences,
    permutation,
)
from rlhf_core.errors import CapacityError, InvalidOptionError, StateError
from rlhf_core.testing import buffer_reference as ref


def buffer_with_lengths(prompt: list[int], response: list[int]) -> RolloutBuffer:
    buf = RolloutBuffer()
    buf.add(
        prompt_ids=[np.arange(1, p + 1) for p in prompt],
        response_ids=[np.arange(r) for r in response],
        scores=np.zeros(len(prompt)),
    )
    return buf


lengths_st = st.lists(st.tuples(st.integers(1, 6), st.integers(0, 20)), min_size=1, max_size=40)


# ---------------------------------------------------------------------------------------------
# PRNG and permutations
# ---------------------------------------------------------------------------------------------


@given(n=st.integers(0, 300), seed=st.integers(0, 2**64 - 1), epoch=st.integers(0, 1000))
def test_permutation_equals_the_python_reference(n, seed, epoch):
    assert permutation(n, seed, epoch).tolist() == ref.permutation(n, seed, epoch)


def test_pinned_permutations():
    # The same values are pinned in rust/core/tests/buffer_plan.rs.
    assert permutation(10, 0, 0).tolist() == [4, 9, 2, 5, 1, 7, 6, 0, 3, 8]
    assert permutation(10, 12345, 3).tolist() == [7, 5, 6, 4, 1, 2, 9, 8, 3, 0]
    r = ref.SplitMix64(0)
    assert [r.next_u64() for _ in range(2)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_same_order_in_a_fresh_process_with_other_thread_counts():
    code = (
        "import json; from rlhf_core.buffer import permutation;"
        "print(json.dumps(permutation(50, 7, 2).tolist()))"
    )
    env = {"RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout
    assert json.loads(out) == permutation(50, 7, 2).tolist()


# ---------------------------------------------------------------------------------------------
# Minibatches
# ---------------------------------------------------------------------------------------------


@given(lens=lengths_st, bs=st.integers(1, 12), epochs=st.integers(1, 3),
       seed=st.integers(0, 2**64 - 1), drop_last=st.booleans(), shuffle=st.booleans())
def test_minibatches_match_reference_and_cover_each_sequence_once(lens, bs, epochs, seed,
                                                                   drop_last, shuffle):
    n = len(lens)
    if drop_last and bs > n:
        bs = n
    buf = buffer_with_lengths([p for p, _ in lens], [r for _, r in lens])
    sampler = buf.minibatches(bs, epochs=epochs, seed=seed, drop_last=drop_last, shuffle=shuffle)
    got: dict[int, list[list[int]]] = {}
    for mb in sampler:
        got.setdefault(mb.epoch, []).append(mb.indices.tolist())
    assert sorted(got) == list(range(epochs))
    for e in range(epochs):
        want = ref.minibatch_plan(n, bs, seed, e, drop_last=drop_last, shuffle_=shuffle)
        assert got[e] == want
        flat = sorted(i for b in got[e] for i in b)
        if drop_last:
            assert len(flat) == n // bs * bs and len(set(flat)) == len(flat)
        else:
            assert flat == list(range(n))
    assert len(sampler) == sum(len(got[e]) for e in got) and sampler.remaining() == 0
    assert sampler.position == (epochs, 0)


def test_each_epoch_gets_a_fresh_permutation():
    buf = buffer_with_lengths([1] * 64, [1] * 64)
    orders = [np.concatenate([m.indices for m in buf.minibatches(64, epochs=3, seed=1)])]
    perm = [m.indices.tolist() for m in buf.minibatches(64, epochs=3, seed=1)]
    assert perm[0] != perm[1] != perm[2]
    assert sorted(perm[0]) == list(range(64)) and len(orders[0]) == 192


def test_minibatch_option_errors():
    buf = buffer_with_lengths([1] * 5, [1] * 5)
    with pytest.raises(InvalidOptionError, match="no minibatch"):
        buf.minibatches(6, drop_last=True)
    with pytest.raises(InvalidOptionError, match="batch_size"):
        buf.minibatches(0)
    with pytest.raises(InvalidOptionError, match="seed"):
        buf.minibatches(2, seed=-1)
    with pytest.raises(InvalidOptionError, match="no sequences"):
        RolloutBuffer().minibatches(2)


# ---------------------------------------------------------------------------------------------
# Token budgets
# ---------------------------------------------------------------------------------------------


@given(lens=lengths_st, budget=st.integers(26, 120), packed=st.booleans(), bucket=st.booleans(),
       mult=st.sampled_from([1, 8]), seed=st.integers(0, 2**64 - 1))
def test_micro_batches_respect_the_budget_and_match_reference(lens, budget, packed, bucket,
                                                              mult, seed):
    buf = buffer_with_lengths([p for p, _ in lens], [r for _, r in lens])
    total = buf.lengths().tolist()
    sampler = buf.micro_batches(budget, epochs=2, seed=seed, packed=packed, bucket=bucket,
                                pad_to_multiple_of=mult)
    by_epoch: dict[int, list[list[int]]] = {}
    for mb in sampler:
        by_epoch.setdefault(mb.epoch, []).append(mb.indices.tolist())
        if packed:
            out = mb.to_packed(return_tensors="np")
            assert out["input_ids"].size <= budget
        else:
            out = mb.to_padded(pad_to_multiple_of=mult, return_tensors="np")
            assert out["input_ids"].size <= budget
    for e, batches in by_epoch.items():
        assert sorted(i for b in batches for i in b) == list(range(len(lens)))
        want = ref.micro_batch_plan(total, budget, seed, e, packed=packed, bucket=bucket,
                                    pad_to_multiple_of=mult)
        assert batches == want


def test_bucketing_cuts_padding():
    rng = np.random.default_rng(0)
    resp = rng.integers(1, 500, 400).tolist()
    buf = buffer_with_lengths([4] * 400, resp)
    total = sum(4 + r for r in resp)

    def padded_tokens(bucket):
        return sum(
            mb.to_padded(return_tensors="np")["input_ids"].size
            for mb in buf.micro_batches(4096, seed=0, bucket=bucket)
        )

    assert padded_tokens(True) < 1.1 * total < padded_tokens(False)


def test_oversized_sequence_is_named():
    buf = buffer_with_lengths([2, 3, 2], [5, 30, 1])
    with pytest.raises(CapacityError, match="sequence 1 has 33 tokens"):
        buf.micro_batches(32)
    with pytest.raises(CapacityError, match="sequence 1 has 33 tokens"):
        buf.all().micro_batches(32)
    with pytest.raises(CapacityError, match="sequence 1 has 33 tokens, more than the pack"):
        buf.all().pack(32)


def test_minibatch_splits():
    rng = np.random.default_rng(1)
    buf = buffer_with_lengths(rng.integers(1, 9, 40).tolist(), rng.integers(0, 90, 40).tolist())
    mb = buf.batch(np.arange(0, 40, 2))
    parts = mb.split(4)
    assert sorted(np.concatenate([p.indices for p in parts]).tolist()) == sorted(mb.indices.tolist())
    loads = [p.num_tokens for p in parts]
    assert max(loads) <= balanced_partition(mb.lengths, 4, method="lpt").max_load
    for p in parts:  # rows keep their minibatch order
        pos = [mb.indices.tolist().index(i) for i in p.indices]
        assert pos == sorted(pos)
    micro = mb.micro_batches(200)
    assert sorted(np.concatenate([m.indices for m in micro]).tolist()) == sorted(mb.indices.tolist())
    assert all(m.to_padded(return_tensors="np")["input_ids"].size <= 200 for m in micro)
    rows = mb.pack(150)
    assert all(r.num_tokens <= 150 for r in rows)
    assert sum(r.num_tokens for r in rows) == mb.num_tokens


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


@given(lens=lengths_st, kind=st.sampled_from(["mini", "micro", "packed"]),
       stop=st.integers(0, 200), seed=st.integers(0, 2**64 - 1))
def test_resume_from_any_position_continues_exactly(lens, kind, stop, seed):
    buf = buffer_with_lengths([p for p, _ in lens], [r for _, r in lens])

    def make():
        if kind == "mini":
            return buf.minibatches(3, epochs=3, seed=seed, drop_last=len(lens) >= 3)
        return buf.micro_batches(40, epochs=3, seed=seed, packed=kind == "packed",
                                 bucket=kind == "micro")

    full = [(m.epoch, m.step, m.indices.tolist()) for m in make()]
    stop = stop % (len(full) + 1)  # includes every epoch boundary and the very end
    s = make()
    for _ in range(stop):
        next(s)
    state = json.loads(json.dumps(s.state_dict()))  # plain JSON values
    # Restore into a buffer rebuilt from a state_dict, as after a restart.
    buf2 = RolloutBuffer()
    buf2.load_state_dict(buf.state_dict())
    rest = [(m.epoch, m.step, m.indices.tolist()) for m in buf2.resume_sampler(state)]
    assert rest == full[stop:]
    s2 = make()
    s2.load_state_dict(state)
    assert [(m.epoch, m.step, m.indices.tolist()) for m in s2] == full[stop:]


def test_resume_at_epoch_boundary_is_not_a_silent_no_op():
    buf = buffer_with_lengths([1] * 8, [2] * 8)
    s = buf.minibatches(4, epochs=2, seed=3)
    next(s)
    next(s)
    assert s.position == (1, 0) and s.remaining() == 2
    resumed = buf.resume_sampler(s.state_dict())
    assert [m.epoch for m in resumed] == [1, 1]


def test_sampler_state_for_another_buffer_is_refused():
    buf = buffer_with_lengths([1, 2, 3], [4, 5, 6])
    state = buf.minibatches(2, seed=0).state_dict()
    other = buffer_with_lengths([1, 2, 3], [4, 5, 7])
    with pytest.raises(StateError, match="other sequence lengths"):
        other.resume_sampler(state)
    with pytest.raises(StateError, match="saved for 3 sequences"):
        buffer_with_lengths([1, 2], [4, 5]).resume_sampler(state)
    with pytest.raises(StateError, match="format"):
        buf.resume_sampler({k: v for k, v in state.items() if k != "format"})
    with pytest.raises(StateError, match="past the end"):
        buf.resume_sampler(dict(state, epoch=5))


def test_sampler_stops_when_the_buffer_changes():
    buf = buffer_with_lengths([1, 2, 3], [4, 5, 6])
    s = buf.minibatches(1, seed=0)
    next(s)
    buf.clear()
    with pytest.raises(StateError, match="buffer changed"):
        next(s)


# ---------------------------------------------------------------------------------------------
# Partition and packing
# ---------------------------------------------------------------------------------------------


@given(lengths=st.lists(st.integers(0, 5000), max_size=200), k=st.integers(1, 10),
       equal=st.booleans(), method=st.sampled_from(["best", "kk", "lpt"]))
def test_partition_keeps_every_sequence_and_best_is_at_least_lpt(lengths, k, equal, method):
    if equal:
        lengths = lengths[: len(lengths) // k * k]
    p = balanced_partition(lengths, k, equal_size=equal, method=method)
    assert len(p.parts) == k
    assert sorted(np.concatenate(p.parts).tolist()) == list(range(len(lengths)))
    for part, load in zip(p.parts, p.loads, strict=True):
        assert load == sum(lengths[i] for i in part)
        assert list(part) == sorted(part)
        if equal:
            assert len(part) == len(lengths) // k
    if method == "best" and not equal:
        _, lpt_loads = ref.lpt_partition(lengths, k)
        assert p.max_load <= max(lpt_loads)
    if method == "lpt" and not equal:
        parts, loads = ref.lpt_partition(lengths, k)
        assert sorted(p.loads.tolist()) == sorted(loads)
    assert p.max_load * k >= sum(lengths)


def test_partition_balance_on_realistic_lengths():
    rng = np.random.default_rng(2)
    lengths = np.clip(rng.lognormal(6.5, 0.6, 8192), 16, 8192).astype(np.int64)
    p = balanced_partition(lengths, 8)
    assert p.imbalance < 1.0001
    assert p.max_load <= max(ref.lpt_partition(lengths.tolist(), 8)[1])
    assert p.mean_load == lengths.sum() / 8


def test_partition_errors():
    with pytest.raises(InvalidOptionError, match="multiple of k"):
        balanced_partition([1, 2, 3], 2, equal_size=True)
    with pytest.raises(InvalidOptionError, match="k must be a positive"):
        balanced_partition([1], 0)
    with pytest.raises(InvalidOptionError, match="method"):
        balanced_partition([1], 1, method="random")
    with pytest.raises(ValueError, match=r"lengths\[1\] is -2"):
        balanced_partition([1, -2], 1)


@given(lengths=st.lists(st.integers(0, 100), max_size=200), extra=st.integers(0, 100))
def test_packing_equals_plain_ffd_and_maps_back(lengths, extra):
    cap = max(lengths, default=1) + extra or 1
    plan = pack_sequences(lengths, cap)
    assert [r.tolist() for r in plan.rows] == ref.ffd_pack(lengths, cap)
    assert all(load <= cap for load in plan.loads)
    order, inv = plan.order, plan.inverse
    assert (order[inv] == np.arange(len(lengths))).all()
    for i, row in enumerate(plan.row_of):
        assert i in plan.rows[row]


def test_packing_capacity_error():
    with pytest.raises(CapacityError, match="sequence 2 has 11 tokens"):
        pack_sequences([1, 2, 11], 10)
