"""Bad input raises a typed exception naming the argument; no Rust panic reaches Python."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import ops
from rlhf_core.errors import (
    DtypeError,
    InvalidOptionError,
    OffsetsError,
    RlhfCoreError,
    ShapeError,
)

f32 = np.zeros((4, 5), np.float32)
f64 = np.zeros((4, 5), np.float64)
flat = np.zeros(6, np.float32)
mask = np.ones((4, 5), bool)
scores = np.zeros(8, np.float32)

CASES = [
    # shapes
    (lambda: ops.gae(f32, np.zeros((4, 6), np.float32)), ShapeError,
     r"values has shape \(4, 6\), rewards has shape \(4, 5\)"),
    (lambda: ops.gae(f32, f32, np.ones((4, 4), bool)), ShapeError, r"mask has shape \(4, 4\)"),
    (lambda: ops.gae(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.float32)),
     ShapeError, r"rewards must be 2-D \(B, T\) padded.*\(2, 2, 2\)"),
    (lambda: ops.gae(f32, f32, offsets=np.array([0, 20])), ShapeError,
     "rewards must be 1-D .*when offsets is given"),
    (lambda: ops.gae(f32, f32, bootstrap=np.zeros(3, np.float32)), ShapeError,
     "bootstrap has 3 entries, expected one per sequence: 4"),
    (lambda: ops.gae(f32, f32, bootstrap=np.zeros((4, 1), np.float32)), ShapeError,
     "bootstrap must be 1-D"),
    (lambda: ops.group_advantages(np.zeros((2, 4), np.float32), group_size=2), ShapeError,
     "scores must be 1-D"),
    (lambda: ops.group_advantages(np.zeros(10), group_size=4), ShapeError,
     "scores has 10 entries, not a multiple of group_size=4"),
    (lambda: ops.group_advantages(scores, group_ids=np.zeros(7, np.int64)), ShapeError,
     "group_ids has 7 entries, scores has 8"),
    (lambda: ops.kl(f32, np.zeros((5, 4), np.float32)), ShapeError,
     r"ref_logp has shape \(5, 4\), logp has shape \(4, 5\)"),
    (lambda: ops.shaped_rewards(np.zeros(3, np.float32), f32, f32, mask, beta=0.1), ShapeError,
     "scores has 3 entries, expected one per sequence: 4"),
    (lambda: ops.broadcast_to_tokens(np.zeros(3, np.float32), mask), ShapeError,
     "seq_values has 3 entries"),
    (lambda: ops.reduce_tokens(flat, offsets=np.array([0, 2])), OffsetsError,
     r"offsets\[-1\] must equal the number of values \(6\), got 2"),
    # dtypes
    (lambda: ops.gae(f32, f64), DtypeError, "values has dtype float64; expected float32 like rewards"),
    (lambda: ops.gae(np.zeros((4, 5), np.int64), f32), DtypeError,
     "rewards has dtype int64; expected float32 or float64"),
    (lambda: ops.gae(np.zeros((4, 5), np.float16), f32), DtypeError, "rewards has dtype float16"),
    (lambda: ops.gae(f32, f32, np.ones((4, 5), np.int16)), DtypeError, "mask has dtype int16"),
    (lambda: ops.gae(flat, flat, offsets=np.array([0.0, 6.0])), DtypeError,
     "offsets has dtype float64; expected an integer dtype"),
    (lambda: ops.gae("abc", f32), DtypeError,
     "rewards must be a numpy array or a torch CPU tensor, got str"),
    (lambda: ops.group_advantages(scores, group_ids=np.zeros(8)), DtypeError, "group_ids"),
    (lambda: ops.shaped_rewards(np.zeros(4), f32, f32, beta=0.1), DtypeError,
     "scores has dtype float64; expected float32 like logp"),
    (lambda: ops.masked_mean(np.zeros(4, np.dtype(">f4"))), DtypeError, "x has dtype >f4"),
    # offsets
    (lambda: ops.gae(flat, flat, offsets=np.array([1, 6])), OffsetsError,
     r"offsets\[0\] must be 0, got 1"),
    (lambda: ops.gae(flat, flat, offsets=np.array([0, 4, 2, 6])), OffsetsError,
     r"offsets must be non-decreasing: offsets\[2\] = 2 < offsets\[1\] = 4"),
    (lambda: ops.gae(flat, flat, offsets=np.array([0, 5])), OffsetsError,
     r"offsets\[-1\] must equal the number of values \(6\), got 5"),
    (lambda: ops.gae(flat, flat, offsets=np.array([], np.int64)), OffsetsError,
     "offsets must have N \\+ 1 entries"),
    (lambda: ops.gae(flat, flat, offsets=np.array([[0, 6]])), OffsetsError, "offsets must be 1-D"),
    # options
    (lambda: ops.gae(f32, f32, gamma=1.5), InvalidOptionError, r"gamma must be in \[0, 1\], got 1.5"),
    (lambda: ops.gae(f32, f32, lam=-0.1), InvalidOptionError, "lam must be in"),
    (lambda: ops.gae(f32, f32, masked="carry"), InvalidOptionError,
     "masked must be 'skip' or 'zero', got \"carry\""),
    (lambda: ops.discounted_returns(f32, gamma=float("nan")), InvalidOptionError, "gamma"),
    (lambda: ops.group_advantages(scores, group_size=-2), InvalidOptionError,
     "group_size must be a positive integer, got -2"),
    (lambda: ops.group_advantages(scores, group_size=0), InvalidOptionError, "got 0"),
    (lambda: ops.group_advantages(scores), InvalidOptionError, "needs group_ids .* or group_size"),
    (lambda: ops.group_advantages(scores, group_size=2, group_ids=np.zeros(8, np.int64)),
     InvalidOptionError, "not both"),
    (lambda: ops.group_advantages(scores, group_size=2, baseline="median"), InvalidOptionError,
     "baseline must be 'mean' or 'leave_one_out'"),
    (lambda: ops.group_advantages(scores, group_size=2, scale="std"), InvalidOptionError,
     "scale must be 'group', 'batch' or 'none'"),
    (lambda: ops.group_advantages(scores, group_size=2, singleton="one"), InvalidOptionError,
     "singleton must be 'zero' or 'raw'"),
    (lambda: ops.group_advantages(scores, group_size=2, ddof=2), InvalidOptionError,
     "ddof must be 0 or 1, got 2"),
    (lambda: ops.group_advantages(scores, group_size=2, eps=-1.0), InvalidOptionError, "eps"),
    (lambda: ops.group_advantages(np.array([0.0, np.inf]), group_size=2), InvalidOptionError,
     r"scores\[1\] is inf; scores must be finite \(NaN marks an unscorable sample\)"),
    (lambda: ops.masked_mean(f32, axis=0), InvalidOptionError,
     r"axis must be None \(whole batch\) or -1 / 1 \(per sequence\), got 0"),
    (lambda: ops.masked_var(f32, ddof=3), InvalidOptionError, "ddof must be 0 or 1, got 3"),
    (lambda: ops.masked_whiten(f32, eps=float("nan")), InvalidOptionError, "eps"),
    (lambda: ops.kl(f32, f32, estimator="k4"), InvalidOptionError,
     "estimator must be 'k1', 'k2', 'k3' or 'abs'"),
    (lambda: ops.kl(f32, f32, clamp=-1.0), InvalidOptionError, "clamp must be None or >= 0"),
    (lambda: ops.shaped_rewards(np.zeros(4, np.float32), f32, f32, beta=float("inf")),
     InvalidOptionError, "beta must be finite"),
    (lambda: ops.reduce_tokens(f32, how="max"), InvalidOptionError,
     "how must be 'sum' or 'mean'"),
    (lambda: ops.broadcast_to_tokens(np.zeros(4, np.float32)), InvalidOptionError,
     "needs mask .* or offsets"),
    (lambda: ops.RunningMoments(ddof=5), InvalidOptionError, "ddof must be 0 or 1"),
    # wrong-typed scalar options: named, with the value and its type
    (lambda: ops.group_advantages(scores, group_size=2.0), InvalidOptionError,
     r"group_size must be an integer or None, got 2.0 \(float\)"),
    (lambda: ops.group_advantages(scores, group_size=True), InvalidOptionError,
     r"group_size must be an integer or None, got True \(bool\)"),
    (lambda: ops.group_advantages(scores, group_size=2, ddof=1.0), InvalidOptionError,
     r"ddof must be an integer, got 1.0 \(float\)"),
    (lambda: ops.group_advantages(scores, group_size=2, eps="1e-6"), InvalidOptionError,
     r"eps must be a real number, got '1e-6' \(str\)"),
    (lambda: ops.group_advantages(scores, group_size=2, baseline=None), InvalidOptionError,
     r"baseline must be a string, got None \(NoneType\)"),
    (lambda: ops.gae(f32, f32, gamma="a"), InvalidOptionError,
     r"gamma must be a real number, got 'a' \(str\)"),
    (lambda: ops.gae(f32, f32, lam=None), InvalidOptionError, r"lam must be a real number, got None"),
    (lambda: ops.gae(f32, f32, masked=0), InvalidOptionError, r"masked must be a string, got 0"),
    (lambda: ops.discounted_returns(f32, gamma=True), InvalidOptionError,
     r"gamma must be a real number, got True \(bool\)"),
    (lambda: ops.masked_mean(f32, axis="x"), InvalidOptionError,
     r"axis must be an integer or None, got 'x' \(str\)"),
    (lambda: ops.masked_var(f32, axis=1.0), InvalidOptionError, "axis must be an integer"),
    (lambda: ops.masked_var(f32, ddof=None), InvalidOptionError, "ddof must be an integer, got None"),
    (lambda: ops.masked_whiten(f32, shift_mean="no"), InvalidOptionError,
     r"shift_mean must be True or False, got 'no' \(str\)"),
    (lambda: ops.masked_whiten(f32, eps=[1e-8]), InvalidOptionError, "eps must be a real number"),
    (lambda: ops.kl(f32, f32, clamp="10"), InvalidOptionError,
     r"clamp must be a real number or None, got '10' \(str\)"),
    (lambda: ops.kl(f32, f32, estimator=3), InvalidOptionError, "estimator must be a string"),
    (lambda: ops.shaped_rewards(np.zeros(4, np.float32), f32, f32, beta="0.1"), InvalidOptionError,
     r"beta must be a real number, got '0.1'"),
    (lambda: ops.reduce_tokens(f32, how=None), InvalidOptionError, "how must be a string"),
    (lambda: ops.RunningMoments(ddof=True), InvalidOptionError,
     r"ddof must be an integer, got True \(bool\)"),
    (lambda: ops.RunningMoments().update(f32, mask=np.ones(3, bool)), ShapeError,
     r"mask has shape \(3,\), x has shape \(4, 5\)"),
]


@pytest.mark.parametrize(("call", "exc", "match"), CASES)
def test_typed_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    assert isinstance(info.value, RlhfCoreError)


def test_errors_are_also_builtin_exceptions():
    with pytest.raises(ValueError):
        ops.gae(f32, np.zeros((4, 6), np.float32))
    with pytest.raises(TypeError):
        ops.gae(f32, f64)
    assert issubclass(OffsetsError, ValueError) and issubclass(InvalidOptionError, ValueError)


def test_torch_inputs_that_cannot_be_borrowed():
    with pytest.raises(DtypeError, match=r"rewards has dtype torch.bfloat16.*\.float\(\)"):
        ops.gae(torch.zeros(2, 3, dtype=torch.bfloat16), torch.zeros(2, 3))
    with pytest.raises(DtypeError, match=r"logp is on device meta.*\.cpu\(\)"):
        ops.kl(torch.zeros(3, device="meta"), torch.zeros(3))


def test_huge_output_is_a_memory_error_not_a_crash():
    with pytest.raises(MemoryError):
        ops.broadcast_to_tokens(np.zeros(1, np.float32), offsets=np.array([0, 2**60]))


# ---------------------------------------------------------------------------------------------
# No panic ever: random garbage in, a result or an RlhfCoreError out
# ---------------------------------------------------------------------------------------------

_dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_,
                           np.float16, np.complex64])


@st.composite
def garbage_arrays(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    dtype = draw(_dtypes)
    fill = draw(st.sampled_from([0, 1, -1, 3, np.nan, np.inf, 2**40]))
    with np.errstate(invalid="ignore", over="ignore"):
        try:
            return np.full(shape, fill).astype(dtype)
        except (OverflowError, ValueError):
            return np.zeros(shape, dtype)


maybe = st.one_of(st.none(), garbage_arrays())
offsets_garbage = st.one_of(
    st.none(),
    st.lists(st.integers(-3, 12), max_size=5).map(lambda v: np.asarray(v, dtype=np.int64)),
    garbage_arrays(),
)
unit = st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float("nan")])
words = st.sampled_from(["skip", "zero", "mean", "leave_one_out", "group", "batch", "none",
                         "raw", "k1", "k2", "k3", "abs", "sum", "bogus", ""])


@given(data=st.data(), which=st.sampled_from(
    ["gae", "returns", "group", "mean", "var", "whiten", "kl", "shaped", "broadcast", "reduce",
     "running"]))
def test_random_garbage_never_panics(data, which):
    d = data.draw
    x, y, m, off = d(garbage_arrays()), d(garbage_arrays()), d(maybe), d(offsets_garbage)
    calls = {
        "gae": lambda: ops.gae(x, y, m, offsets=off, gamma=d(unit), lam=d(unit), masked=d(words),
                               bootstrap=d(maybe)),
        "returns": lambda: ops.discounted_returns(x, m, offsets=off, gamma=d(unit),
                                                  masked=d(words)),
        "group": lambda: ops.group_advantages(
            x, group_ids=d(st.one_of(st.none(), garbage_arrays())),
            group_size=d(st.one_of(st.none(), st.integers(-2, 5))), baseline=d(words),
            scale=d(words), ddof=d(st.integers(-1, 2)), eps=d(unit), singleton=d(words)),
        "mean": lambda: ops.masked_mean(x, m, offsets=off, axis=d(st.sampled_from([None, -1, 0, 2]))),
        "var": lambda: ops.masked_var(x, m, offsets=off, ddof=d(st.integers(-1, 2))),
        "whiten": lambda: ops.masked_whiten(x, m, offsets=off, eps=d(unit), ddof=d(st.integers(0, 1))),
        "kl": lambda: ops.kl(x, y, estimator=d(words), clamp=d(st.sampled_from([None, 1.0, -1.0]))),
        "shaped": lambda: ops.shaped_rewards(d(garbage_arrays()), x, y, m, offsets=off,
                                             beta=d(unit), estimator=d(words)),
        "broadcast": lambda: ops.broadcast_to_tokens(x, m, offsets=off),
        "reduce": lambda: ops.reduce_tokens(x, m, offsets=off, how=d(words)),
        "running": lambda: ops.RunningMoments(d(st.integers(-1, 2))).update(x, m),
    }
    try:
        calls[which]()
    except RlhfCoreError:
        pass
