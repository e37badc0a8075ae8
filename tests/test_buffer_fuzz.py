"""A fuzz of the buffer and planning API: random sequences of calls with hostile arguments
(sizes far beyond any address space, integers out of range, floats, bools, strings, None,
numpy scalars). Every call either gives the result the plain-Python reference
(:mod:`rlhf_core.testing.buffer_reference`) gives, or raises a typed error
(:class:`~rlhf_core.errors.RlhfCoreError`, ``AllocationError`` included); a refused call
leaves the buffer as it was. A ``PanicException`` (a ``BaseException``), an untyped
``OverflowError`` / ``TypeError`` or a wrong result fails; an abort would end the run.

The "huge" sizes are 2**55 values or more, so they are refused under every Linux overcommit
mode instead of being granted and then touched; valid sizes stay small.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core.buffer import (
    RolloutBuffer,
    balanced_partition,
    pack_sequences,
    permutation,
)
from rlhf_core.errors import AllocationError, InvalidOptionError, RlhfCoreError
from rlhf_core.testing import buffer_reference as ref

HUGE = [2**55, 2**56 + 1, 2**62, 2**63 - 1]
OUT_OF_RANGE = [2**63, 2**64 - 1, 2**64, 2**100, -1, -(2**63), -(2**64)]
MISTYPED = [1.9, 2.0, 0.6, True, False, np.bool_(True), "2", "0.5", None, [2], np.float64(2.0)]


def hostile(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly valid values (also as numpy integers), else huge, out of range or mistyped."""
    as_numpy = valid.map(lambda v: np.int64(v) if isinstance(v, int) and abs(v) < 2**63 else v)
    return st.one_of(
        valid,
        as_numpy,
        st.sampled_from(HUGE),
        st.sampled_from(OUT_OF_RANGE),
        st.sampled_from(MISTYPED),
    )


def make_seqs(rng: np.random.Generator, n: int) -> list[dict]:
    seqs = []
    for _ in range(n):
        p, r = int(rng.integers(1, 5)), int(rng.integers(0, 6))
        seqs.append({
            "prompt_ids": rng.integers(1, 50, p).astype(np.int64),
            "response_ids": rng.integers(1, 50, r).astype(np.int64),
            "logprobs": -rng.random(r),
            "loss_mask": rng.random(r) < 0.8,
            "scores": float(rng.integers(0, 3)) if rng.random() > 0.1 else float("nan"),
            "group_ids": int(rng.integers(0, 3)),
        })
    return seqs


def add_seqs(buf: RolloutBuffer, seqs: list[dict]) -> None:
    buf.add(
        prompt_ids=[s["prompt_ids"] for s in seqs],
        response_ids=[s["response_ids"] for s in seqs],
        logprobs=[s["logprobs"] for s in seqs],
        loss_mask=[s["loss_mask"] for s in seqs],
        scores=np.array([s["scores"] for s in seqs]),
        group_ids=np.array([s["group_ids"] for s in seqs], dtype=np.int64),
    )


def call(fn, *args, **kwargs):
    """``(result, None)`` or ``(None, error)``; anything but a typed error fails the test."""
    try:
        return fn(*args, **kwargs), None
    except RlhfCoreError as e:
        return None, e
    except BaseException as e:  # PanicException, OverflowError, TypeError, ...
        raise AssertionError(f"untyped {type(e).__name__} from {fn.__qualname__}: {e}") from e


def is_int(v: object, lo: int, hi: int) -> bool:
    return (
        isinstance(v, (int, np.integer))
        and not isinstance(v, (bool, np.bool_))
        and lo <= int(v) <= hi
    )


def check_option_error(err: RlhfCoreError | None, name: str, value: object, lo: int, hi: int):
    """A value that is not an integer in ``[lo, hi]`` must be refused naming ``name``."""
    if not is_int(value, lo, hi):
        assert isinstance(err, InvalidOptionError), (name, value, err)
        assert str(err).startswith(f"{name} must be"), str(err)


def snapshot(buf: RolloutBuffer) -> dict:
    return {k: v.copy() if isinstance(v, np.ndarray) else v
            for k, v in buf.state_dict().items() if k != "computed"}


def assert_unchanged(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for k, v in before.items():
        if isinstance(v, np.ndarray):
            assert v.tobytes() == after[k].tobytes(), k


TF = ["logprobs"]
INT64_MAX = 2**63 - 1
U64_MAX = 2**64 - 1


# ---------------------------------------------------------------------------------------------
# One operation each: the arguments drawn, the call made, the outcome checked
# ---------------------------------------------------------------------------------------------


def op_reserve(data, buf, seqs):
    args = [data.draw(hostile(st.integers(0, 64)), label=n)
            for n in ("sequences", "prompt_tokens", "response_tokens")]
    before = snapshot(buf)
    _, err = call(buf.reserve, *args)
    for name, v in zip(("sequences", "prompt_tokens", "response_tokens"), args, strict=True):
        if not is_int(v, 0, INT64_MAX):
            check_option_error(err, name, v, 0, INT64_MAX)
            break
    else:
        if any(int(v) >= 2**55 for v in args):
            assert isinstance(err, AllocationError), (args, err)
        else:
            assert err is None, err
    assert_unchanged(before, snapshot(buf))


def op_padded(data, buf, seqs):
    n = len(seqs)
    idx = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8), label="idx")
    pad = data.draw(hostile(st.integers(-3, 60)), label="pad_token_id")
    mult = data.draw(hostile(st.integers(1, 8)), label="pad_to_multiple_of")
    got, err = call(buf.batch(idx).to_padded, pad_token_id=pad, pad_to_multiple_of=mult,
                    return_tensors="np")
    if not is_int(pad, -(2**63), INT64_MAX):
        check_option_error(err, "pad_token_id", pad, -(2**63), INT64_MAX)
    elif not is_int(mult, 1, INT64_MAX):
        check_option_error(err, "pad_to_multiple_of", mult, 1, INT64_MAX)
    elif int(mult) >= 2**55:
        assert isinstance(err, AllocationError) and "pad_to_multiple_of=" in str(err), err
    else:
        assert err is None, err
        want = ref.padded_batch(seqs, idx, pad_token_id=int(pad), pad_to_multiple_of=int(mult),
                                token_fields=TF, seq_fields=["scores", "group_ids"])
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def op_packed(data, buf, seqs):
    n = len(seqs)
    idx = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=8), label="idx")
    pad = data.draw(hostile(st.integers(-3, 60)), label="pad_token_id")
    got, err = call(buf.batch(idx).to_packed, pad_token_id=pad, return_tensors="np")
    if not is_int(pad, -(2**63), INT64_MAX):
        check_option_error(err, "pad_token_id", pad, -(2**63), INT64_MAX)
    else:
        assert err is None, err
        want = ref.packed_batch(seqs, idx, token_fields=TF)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def check_parts(parts: list[list[int]], k: int, n: int) -> None:
    assert len(parts) == k
    assert sorted(i for p in parts for i in p) == list(range(n))


def op_split(data, buf, seqs):
    n = len(seqs)
    k = data.draw(hostile(st.integers(1, 6)), label="k")
    method = data.draw(st.sampled_from(["best", "lpt", "kk", "greedy", "random", 3]), label="method")
    equal = data.draw(st.sampled_from([False, True, 1, "yes"]), label="equal_size")
    parts, err = call(buf.all().split, k, equal_size=equal, method=method)
    if not is_int(k, 1, INT64_MAX):
        check_option_error(err, "k", k, 1, INT64_MAX)
    elif not isinstance(equal, bool):
        assert isinstance(err, InvalidOptionError) and "equal_size" in str(err), err
    elif method not in ("best", "lpt", "kk", "greedy"):
        assert isinstance(err, InvalidOptionError) and "method" in str(err), err
    elif equal and n % int(k):
        assert isinstance(err, InvalidOptionError) and "equal_size" in str(err), err
    elif int(k) >= 2**55:
        assert isinstance(err, AllocationError) and "k=" in str(err), err
    else:
        assert err is None, err
        check_parts([p.indices.tolist() for p in parts], int(k), n)
        if equal:
            assert {len(p.indices) for p in parts} == {n // int(k)}


def op_partition(data, buf, seqs):
    lengths = data.draw(st.lists(st.integers(0, 2**40), max_size=12), label="lengths")
    k = data.draw(hostile(st.integers(1, 6)), label="k")
    method = data.draw(st.sampled_from(["best", "lpt", "kk"]), label="method")
    got, err = call(balanced_partition, lengths, k, method=method)
    if not is_int(k, 1, INT64_MAX):
        check_option_error(err, "k", k, 1, INT64_MAX)
    elif int(k) >= 2**55:
        assert isinstance(err, AllocationError) and "k=" in str(err), err
    else:
        assert err is None, err
        parts = [list(map(int, p)) for p in got.parts]
        check_parts(parts, int(k), len(lengths))
        loads = [sum(lengths[i] for i in p) for p in parts]
        assert list(map(int, got.loads)) == loads
        if method != "kk":  # best and LPT are never worse than LPT
            _, lpt_loads = ref.lpt_partition(lengths, int(k))
            assert max(loads, default=0) <= max(lpt_loads, default=0)


def op_pack(data, buf, seqs):
    lengths = data.draw(st.lists(st.integers(0, 64), max_size=12), label="lengths")
    cap = data.draw(hostile(st.integers(1, 80)), label="capacity")
    got, err = call(pack_sequences, lengths, cap)
    if not is_int(cap, 1, INT64_MAX):
        check_option_error(err, "capacity", cap, 1, INT64_MAX)
    elif lengths and max(lengths) > int(cap):
        assert err is not None
    else:
        assert err is None, err
        rows = [sorted(map(int, r)) for r in got.rows]
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= int(cap) for r in rows)


def op_permutation(data, buf, seqs):
    n = data.draw(hostile(st.integers(0, 40)), label="n")
    seed = data.draw(hostile(st.sampled_from([0, 1, 12345, U64_MAX])), label="seed")
    epoch = data.draw(hostile(st.integers(0, 3)), label="epoch")
    got, err = call(permutation, n, seed, epoch)
    if not is_int(n, 0, INT64_MAX):
        check_option_error(err, "n", n, 0, INT64_MAX)
    elif not is_int(seed, 0, U64_MAX):
        check_option_error(err, "seed", seed, 0, U64_MAX)
    elif not is_int(epoch, 0, U64_MAX):
        check_option_error(err, "epoch", epoch, 0, U64_MAX)
    elif int(n) >= 2**55:
        assert isinstance(err, AllocationError) and "n=" in str(err), err
    else:
        assert err is None, err
        assert got.tolist() == ref.permutation(int(n), int(seed), int(epoch))


def op_micro_batches(data, buf, seqs):
    budget = data.draw(hostile(st.integers(1, 40)), label="token_budget")
    mult = data.draw(hostile(st.integers(1, 4)), label="pad_to_multiple_of")
    packed = data.draw(st.sampled_from([False, True, 0, None]), label="packed")
    parts, err = call(buf.all().micro_batches, budget, packed=packed, pad_to_multiple_of=mult)
    if not is_int(budget, 1, INT64_MAX):
        check_option_error(err, "token_budget", budget, 1, INT64_MAX)
    elif not isinstance(packed, bool):
        assert isinstance(err, InvalidOptionError) and "packed" in str(err), err
    elif not is_int(mult, 1, INT64_MAX):
        check_option_error(err, "pad_to_multiple_of", mult, 1, INT64_MAX)
    elif err is not None:
        assert "CapacityError" == type(err).__name__, err  # a sequence over the budget
    else:
        check_parts([p.indices.tolist() for p in parts], len(parts), len(seqs))


def op_advantages(data, buf, seqs):
    est = data.draw(st.sampled_from(["grpo", "dr_grpo", "rloo"]), label="estimator")
    kw = {
        "group_size": data.draw(st.one_of(st.none(), hostile(st.sampled_from([1, 2]))),
                                label="group_size"),
        "ddof": data.draw(hostile(st.sampled_from([0, 1])), label="ddof"),
        "eps": data.draw(st.one_of(st.sampled_from([1e-6, 0.5, np.float64(1e-3), 1]),
                                   st.sampled_from(MISTYPED)), label="eps"),
        "whiten": data.draw(st.sampled_from([None, "none", "token", "sequence", True, False,
                                             1, "yes"]), label="whiten"),
    }
    before = buf.advantages_info
    _, err = call(buf.compute_advantages, est, **kw)
    g, ddof, eps, whiten = kw["group_size"], kw["ddof"], kw["eps"], kw["whiten"]
    bad = (
        (g is not None and not is_int(g, -(2**63), INT64_MAX))
        or not is_int(ddof, -(2**63), INT64_MAX)
        or isinstance(eps, (bool, np.bool_, str, list)) or eps is None
        or not (whiten is None or isinstance(whiten, (bool, str)))
    )
    if bad:
        assert isinstance(err, InvalidOptionError), (kw, err)
        assert buf.advantages_info == before
        return
    group_ok = g is None or (int(g) >= 1 and len(seqs) % int(g) == 0)
    if not group_ok or int(ddof) not in (0, 1) or whiten == "yes":
        assert err is not None, kw
        return
    assert err is None, (kw, err)
    w = whiten if not isinstance(whiten, bool) else ("token" if whiten else "none")
    level, adv, _ = ref.advantages(seqs, est, group_size=None if g is None else int(g),
                                   ddof=int(ddof), eps=float(eps), whiten=w)
    assert buf.advantages_info["level"] == level
    np.testing.assert_allclose(buf.field("advantages"), adv, rtol=1e-9, atol=1e-9)


OPS = {
    "reserve": op_reserve,
    "to_padded": op_padded,
    "to_packed": op_packed,
    "split": op_split,
    "balanced_partition": op_partition,
    "pack_sequences": op_pack,
    "permutation": op_permutation,
    "micro_batches": op_micro_batches,
    "compute_advantages": op_advantages,
}


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8), data=st.data())
def test_random_calls_give_the_reference_result_or_a_typed_error(seed, n, data):
    seqs = make_seqs(np.random.default_rng(seed), n)
    buf = RolloutBuffer(float_dtype="float64")
    add_seqs(buf, seqs)
    names = data.draw(st.lists(st.sampled_from(sorted(OPS)), min_size=1, max_size=6),
                      label="calls")
    for name in names:
        OPS[name](data, buf, seqs)
    # The buffer still holds what was added and still works.
    assert len(buf) == n
    got = buf.all().to_padded(return_tensors="np")
    want = ref.padded_batch(seqs, list(range(n)), token_fields=TF)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])


@given(data=st.data())
def test_every_operation_alone_with_hostile_arguments(data):
    """Each operation drawn on its own as well, so every one gets examples in every run."""
    seqs = make_seqs(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))),
                     data.draw(st.integers(1, 8)))
    buf = RolloutBuffer(float_dtype="float64")
    add_seqs(buf, seqs)
    for name in sorted(OPS):
        OPS[name](data, buf, seqs)
