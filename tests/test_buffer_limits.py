"""Sizes the caller chooses never kill the process: a request too large to allocate is an
``AllocationError`` (a ``MemoryError``) naming the argument, an integer out of range is an
``InvalidOptionError`` naming it, and ``compute_advantages`` checks its options exactly as
``rlhf_core.ops`` does (one validation, :mod:`rlhf_core._options`).

The allocation cases run in a child process: a regression that aborts there fails one test
with the case named, instead of killing pytest. The sizes are far beyond any address space
(2**55 or more 8-byte values), so they fail under every Linux overcommit mode.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from rlhf_core import ops
from rlhf_core.buffer import Ragged, RolloutBuffer, balanced_partition, pack_sequences, permutation
from rlhf_core.errors import (
    AllocationError,
    CapacityError,
    InvalidOptionError,
    RlhfCoreError,
    ShapeError,
)

# ---------------------------------------------------------------------------------------------
# Huge allocations, in a child process
# ---------------------------------------------------------------------------------------------

_SETUP = """
import numpy as np
from rlhf_core.buffer import RolloutBuffer, balanced_partition, pack_sequences, permutation
def buf(n=3):
    b = RolloutBuffer()
    b.add(prompt_ids=[np.array([1, 2])] * n, response_ids=[np.array([3, 4, 5])] * n,
          logprobs=[np.zeros(3, np.float32)] * n, scores=np.zeros(n))
    return b
"""

# name: (code, the words the message must contain)
HUGE = {
    "reserve_sequences": ("buf().reserve(2**62, 0, 0)", "sequences="),
    "reserve_sequences_alloc": ("buf().reserve(2**55, 0, 0)", "sequences="),
    "reserve_prompt_tokens": ("buf().reserve(0, 2**60, 0)", "prompt_tokens="),
    "reserve_response_tokens": ("buf().reserve(0, 0, 2**60)", "response_tokens="),
    "reserve_before_any_add": ("RolloutBuffer().reserve(2**62, 0, 0)", "sequences="),
    "to_padded_overflow": ("buf().all().to_padded(pad_to_multiple_of=2**62)",
                           "pad_to_multiple_of="),
    "to_padded_alloc": ("buf().all().to_padded(pad_to_multiple_of=2**55)",
                        "pad_to_multiple_of="),
    "to_padded_repeated_rows": ("buf(1).batch(np.zeros(2**20, np.int64))"
                                ".to_padded(pad_to_multiple_of=2**40)", "pad_to_multiple_of="),
    "split": ("buf().all().split(2**62)", "k="),
    "split_alloc": ("buf().all().split(2**55)", "k="),
    "balanced_partition_kk": ("balanced_partition([5, 3, 2], 2**56, method='kk')", "k="),
    "balanced_partition_lpt": ("balanced_partition([5, 3, 2], 2**56, method='lpt')", "k="),
    "permutation": ("permutation(2**62, 0)", "n="),
    "permutation_alloc": ("permutation(2**56, 0)", "n="),
}

_CHILD = _SETUP + """
import json, sys
cases = json.loads(sys.argv[1])
for name, code in cases:
    print(json.dumps([name, "started"]), flush=True)
    try:
        exec(code)
        out = [name, "no error", ""]
    except BaseException as e:
        out = [name, type(e).__name__, str(e)]
    print(json.dumps(out), flush=True)
"""


def _run_in_child(cases: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Run every case in child processes: ``{name: (exception class, message)}``, or
    ``("killed", detail)`` for a case that ended its process; the other cases still run."""
    results: dict[str, tuple[str, str]] = {}
    todo = list(cases.items())
    while todo:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(todo)],
                              capture_output=True, text=True, timeout=300)
        started = None
        for line in proc.stdout.splitlines():
            name, *rest = json.loads(line)
            if rest == ["started"]:
                started = name
            else:
                results[name] = (rest[0], rest[1])
                started = None
        if started is not None:  # the process died inside this case
            tail = proc.stderr.strip().splitlines()[-1:] or [""]
            results[started] = ("killed", f"exit status {proc.returncode}: {tail[0]}")
        todo = [(n, c) for n, c in todo if n not in results]
        if proc.returncode != 0 and started is None and todo:
            for n, _ in todo:
                results[n] = ("killed", f"exit status {proc.returncode}: {proc.stderr[-500:]}")
            todo = []
    return results


@pytest.fixture(scope="module")
def huge_results():
    return _run_in_child({name: code for name, (code, _) in HUGE.items()})


@pytest.mark.parametrize("name", sorted(HUGE))
def test_a_huge_size_is_an_allocation_error_naming_the_argument(name, huge_results):
    kind, msg = huge_results[name]
    assert kind == "AllocationError", f"{name}: {kind}: {msg}"
    assert HUGE[name][1] in msg and "cannot allocate" in msg, msg


def test_allocation_error_is_a_memory_error_and_a_core_error():
    assert issubclass(AllocationError, MemoryError)
    assert issubclass(AllocationError, RlhfCoreError)
    with pytest.raises(AllocationError, match="an output of float32 values"):
        ops.broadcast_to_tokens(np.zeros(1, np.float32), offsets=np.array([0, 2**60]))


def test_a_failed_reserve_or_add_leaves_the_buffer_usable():
    b = RolloutBuffer()
    b.add(prompt_ids=[np.array([1])], response_ids=[np.array([2, 3])])
    before = b.state_dict()
    with pytest.raises(MemoryError):
        b.reserve(2**62, 0, 0)
    with pytest.raises(MemoryError):
        b.all().to_padded(pad_to_multiple_of=2**62)
    after = b.state_dict()
    assert before.keys() == after.keys()
    for k in ("prompt_offsets", "response_offsets", "prompt_ids"):
        np.testing.assert_array_equal(before[k], after[k])
    b.add(prompt_ids=[np.array([4])], response_ids=[np.array([5])])
    assert len(b) == 2 and b.all().to_padded(return_tensors="np")["input_ids"].shape == (2, 3)


def test_huge_ragged_lengths_in_an_add_are_a_shape_error():
    b = RolloutBuffer()
    with pytest.raises(ShapeError, match="prompt_ids"):
        b.add(prompt_ids=Ragged(np.array([1]), np.array([0, 2**62])),
              response_ids=[np.array([2])])
    with pytest.raises(ShapeError, match="response_ids"):
        b.add(prompt_ids=[np.array([1]), np.array([1])],
              response_ids=Ragged(np.array([2]), np.array([0, 2**63 - 1, 2**63 - 1])))
    assert len(b) == 0 and not b._core.has_schema


def test_lengths_whose_sum_passes_int64_are_a_capacity_error():
    with pytest.raises(CapacityError, match="more than 2\\^63 - 1"):
        balanced_partition(np.array([2**62] * 3), 2)
    plan = pack_sequences(np.array([2**62] * 3), 2**63 - 1)  # one per row: every load fits
    assert [len(r) for r in plan.rows] == [1, 1, 1]


# ---------------------------------------------------------------------------------------------
# Integers out of range: a typed error naming the argument (was an untyped OverflowError)
# ---------------------------------------------------------------------------------------------


def _buf(n: int = 4) -> RolloutBuffer:
    b = RolloutBuffer()
    b.add(prompt_ids=[np.array([1])] * n, response_ids=[np.array([2, 3])] * n,
          scores=np.arange(n, dtype=np.float64), group_ids=np.repeat(np.arange(n // 2), 2))
    return b


OUT_OF_RANGE = [
    ("sequences", lambda v: _buf().reserve(v, 0, 0)),
    ("prompt_tokens", lambda v: _buf().reserve(0, v, 0)),
    ("response_tokens", lambda v: _buf().reserve(0, 0, v)),
    ("pad_to_multiple_of", lambda v: _buf().all().to_padded(pad_to_multiple_of=v)),
    ("pad_token_id", lambda v: _buf().all().to_padded(pad_token_id=v)),
    ("pad_token_id", lambda v: _buf().all().to_packed(pad_token_id=v)),
    ("k", lambda v: _buf().all().split(v)),
    ("k", lambda v: balanced_partition([1, 2], v)),
    ("capacity", lambda v: pack_sequences([1, 2], v)),
    ("capacity", lambda v: _buf().all().pack(v)),
    ("token_budget", lambda v: _buf().all().micro_batches(v)),
    ("token_budget", lambda v: _buf().micro_batches(v)),
    ("batch_size", lambda v: _buf().minibatches(v)),
    ("epochs", lambda v: _buf().minibatches(1, epochs=v)),
    ("seed", lambda v: _buf().minibatches(1, seed=v)),
    ("epoch", lambda v: _buf().minibatches(1).batches_in_epoch(v)),
    ("n", lambda v: permutation(v, 0)),
    ("seed", lambda v: permutation(3, v)),
    ("epoch", lambda v: permutation(3, 0, v)),
    ("i", lambda v: _buf().sequence(v)),
    ("group_size", lambda v: _buf().compute_advantages("grpo", group_size=v)),
    ("ddof", lambda v: _buf().compute_advantages("grpo", ddof=v)),
    ("ddof", lambda v: ops.group_advantages(np.zeros(2), group_size=2, ddof=v)),
    ("group_size", lambda v: ops.group_advantages(np.zeros(2), group_size=v)),
    ("axis", lambda v: ops.masked_mean(np.zeros(2), axis=v)),
]


@pytest.mark.parametrize("value", [2**64, 2**100, -(2**64)])
@pytest.mark.parametrize(("name", "call"), OUT_OF_RANGE)
def test_integers_out_of_range_are_named(name, call, value):
    with pytest.raises(InvalidOptionError, match=f"^{name} must be"):
        call(value)


@pytest.mark.parametrize(("name", "call"), [
    (n, c) for n, c in OUT_OF_RANGE
    if n not in ("pad_token_id", "i", "group_size", "ddof", "axis")
])
def test_negative_sizes_are_named(name, call):
    with pytest.raises(InvalidOptionError, match=f"^{name} must be"):
        call(-1)


def test_uint64_indices_beyond_int64_are_not_wrapped():
    b = _buf()
    with pytest.raises(ShapeError, match=r"indices\[1\] is 9223372036854775808, beyond int64"):
        b.batch(np.array([0, 2**63], np.uint64))
    with pytest.raises(ShapeError, match=r"lengths\[0\] is 18446744073709551615"):
        balanced_partition(np.array([2**64 - 1], np.uint64), 2)


# ---------------------------------------------------------------------------------------------
# compute_advantages checks its options as ops does (one validation)
# ---------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("group_size", 1.9), ("group_size", 2.0), ("group_size", True), ("group_size", "2"),
    ("group_size", np.float64(2.0)),
    ("ddof", 0.6), ("ddof", True), ("ddof", "1"), ("ddof", None), ("ddof", np.bool_(True)),
    ("eps", "1e-6"), ("eps", True), ("eps", None), ("eps", [1e-6]),
    ("singleton", 0), ("singleton", None),
]


def _ops_call(option: str, value: object) -> None:
    kw: dict[str, object] = {"group_size": 2, option: value}
    ops.group_advantages(np.zeros(4), **kw)


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS)
def test_compute_advantages_refuses_what_ops_refuses_with_the_same_message(option, value):
    with pytest.raises(InvalidOptionError) as from_ops:
        _ops_call(option, value)
    kw: dict[str, object] = {"group_size": 2, option: value}
    with pytest.raises(InvalidOptionError) as from_buffer:
        _buf().compute_advantages("grpo", **kw)
    assert str(from_buffer.value) == str(from_ops.value)
    assert str(from_ops.value).startswith(f"{option} must be")


@pytest.mark.parametrize(("option", "value"), [
    ("gamma", "0.5"), ("gamma", True), ("gamma", None), ("lam", "1"), ("kl_coef", "0.1"),
    ("masked", 0), ("kl_estimator", 3), ("kl_clamp", "10"), ("whiten_eps", "1e-8"),
    ("scale", 1), ("whiten", 1), ("whiten", 0.0), ("whiten", "yes"),
])
def test_compute_advantages_refuses_every_mistyped_option(option, value):
    estimator = "grpo" if option == "scale" else "gae"
    b = _buf()
    if estimator == "gae":
        b = RolloutBuffer()
        b.add(prompt_ids=[np.array([1])], response_ids=[np.array([2, 3])],
              values=[np.zeros(2, np.float32)], scores=np.ones(1))
    with pytest.raises(InvalidOptionError, match=f"^{option}"):
        b.compute_advantages(estimator, **{option: value})


def test_group_size_1_9_no_longer_zeroes_every_advantage():
    """``group_size=1.9`` was rounded to 1 (every group a singleton: every advantage 0)."""
    b = _buf()
    with pytest.raises(InvalidOptionError, match=r"group_size must be an integer or None, got 1.9"):
        b.compute_advantages("grpo", group_size=1.9)
    assert b.advantages_info is None


def test_numpy_scalars_and_bools_that_mean_what_they_say_are_accepted():
    a, b = _buf(), _buf()
    a.compute_advantages("grpo", group_size=2, ddof=1, eps=1e-6, gamma=1, whiten=False)
    b.compute_advantages("grpo", group_size=np.int64(2), ddof=np.int32(1), eps=np.float64(1e-6),
                         gamma=np.float64(1.0), whiten=np.bool_(False))
    np.testing.assert_array_equal(a.field("advantages"), b.field("advantages"))
