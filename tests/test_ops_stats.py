"""masked_mean / masked_var / masked_whiten and RunningMoments vs float64 references."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import ops
from rlhf_core.errors import StateError
from rlhf_core.testing import reference as ref
from rlhf_core.testing.strategies import assert_close, assert_masked_zero, token_cases

axes = st.sampled_from([None, -1, 1])


def _offset_values(case, name):
    """Values with a large common offset so a one-pass E[x²]−μ² would lose the variance."""
    x = case.values(name, scale=1.0)
    with np.errstate(invalid="ignore"):
        return (x + np.asarray(1000.0, dtype=case.dtype)).astype(case.dtype)


@given(case=token_cases(), axis=axes)
def test_masked_mean_matches_reference(case, axis):
    x = case.values("x")
    out = ops.masked_mean(x, case.mask, offsets=case.offsets, axis=axis)
    expect = ref.masked_mean(x, case.mask, offsets=case.offsets, axis=axis)
    if axis is None:
        assert isinstance(out, np.floating) and out.dtype == case.dtype
    assert_close(np.asarray(out), expect, case.dtype)


@given(case=token_cases(), axis=axes, ddof=st.sampled_from([0, 1]))
def test_masked_var_matches_reference(case, axis, ddof):
    x = _offset_values(case, "x")
    out = ops.masked_var(x, case.mask, offsets=case.offsets, axis=axis, ddof=ddof)
    expect = ref.masked_var(x, case.mask, offsets=case.offsets, axis=axis, ddof=ddof)
    # relative to the variance (about 1), not to the offset: the two-pass form keeps it
    assert_close(np.asarray(out), expect, case.dtype, scale=2.0)


@given(case=token_cases(), axis=axes, ddof=st.sampled_from([0, 1]),
       shift_mean=st.booleans(), eps=st.sampled_from([1e-8, 1e-5, 0.1]))
def test_masked_whiten_matches_reference(case, axis, ddof, shift_mean, eps):
    x = case.values("x", scale=3.0)
    out = ops.masked_whiten(x, case.mask, offsets=case.offsets, axis=axis, ddof=ddof,
                            shift_mean=shift_mean, eps=eps)
    expect = ref.masked_whiten(x, case.mask, offsets=case.offsets, axis=axis, ddof=ddof,
                               shift_mean=shift_mean, eps=eps)
    assert_close(out, expect, case.dtype, scale=max(10.0, float(np.max(np.abs(expect),
                                                                        initial=0.0))))
    assert_masked_zero(out, case.valid)


def test_whitened_values_have_zero_mean_unit_variance(rng):
    x = rng.standard_normal((16, 40)) * 5 + 3
    mask = rng.random((16, 40)) > 0.3
    w = ops.masked_whiten(x, mask)
    assert abs(w[mask].mean()) < 1e-12
    assert abs(w[mask].var(ddof=1) - 1) < 1e-6
    per_row = ops.masked_whiten(x, mask, axis=-1)
    for i in range(16):
        assert abs(per_row[i][mask[i]].mean()) < 1e-12
    kept = ops.masked_whiten(x, mask, shift_mean=False)
    np.testing.assert_allclose(kept[mask].mean(), x[mask].mean(), rtol=1e-12)


def test_empty_selections_give_zero_not_nan():
    x = np.full((2, 3), np.nan, dtype=np.float32)
    mask = np.zeros((2, 3), dtype=bool)
    assert ops.masked_mean(x, mask) == 0.0
    assert ops.masked_var(x, mask) == 0.0
    np.testing.assert_array_equal(ops.masked_mean(x, mask, axis=-1), [0.0, 0.0])
    np.testing.assert_array_equal(ops.masked_whiten(x, mask), np.zeros((2, 3)))
    one = np.array([[5.0, np.nan]])
    assert ops.masked_var(one, np.array([[1, 0]])) == 0.0  # n <= ddof


def test_variance_is_two_pass_accurate():
    # one-pass E[x^2] - mu^2 in float64 loses everything here
    x = (1e8 + np.array([0.0, 1.0, 2.0, 3.0])).reshape(1, 4)
    assert ops.masked_var(x) == pytest.approx(np.var(x, ddof=1), rel=1e-12)


def test_torch_stats_kinds():
    torch = pytest.importorskip("torch")
    x = torch.randn(4, 5, dtype=torch.float64)
    m = torch.ones(4, 5, dtype=torch.bool)
    mean = ops.masked_mean(x, m)
    assert isinstance(mean, torch.Tensor) and mean.ndim == 0 and mean.dtype == torch.float64
    assert float(mean) == pytest.approx(float(x.mean()), rel=1e-12)
    assert ops.masked_var(x, m, axis=-1).shape == (4,)
    w = ops.masked_whiten(x, m)
    assert isinstance(w, torch.Tensor) and w.shape == (4, 5)


# ---------------------------------------------------------------------------------------------
# RunningMoments
# ---------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**32 - 1), chunks=st.integers(1, 6), ddof=st.sampled_from([0, 1]))
def test_running_moments_match_one_pass(seed, chunks, ddof):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(rng.integers(0, 60))) * 2 + 50
    rm = ops.RunningMoments(ddof=ddof)
    parts = np.array_split(x, chunks)
    for p in parts:
        rm.update(p.astype(np.float32) if seed % 2 else p)
    xs = np.concatenate([p.astype(np.float32).astype(np.float64) if seed % 2 else p
                         for p in parts])
    assert rm.count == x.size
    assert rm.mean == pytest.approx(xs.mean() if xs.size else 0.0, rel=1e-12, abs=1e-12)
    expect_var = xs.var(ddof=ddof) if xs.size > ddof else 0.0
    assert rm.var == pytest.approx(expect_var, rel=1e-9, abs=1e-12)
    # merging two accumulators equals one accumulator over everything
    a, b = ops.RunningMoments(ddof=ddof), ops.RunningMoments(ddof=ddof)
    a.update(xs[: xs.size // 2])
    b.update(xs[xs.size // 2:])
    a.merge(b)
    assert a.count == rm.count
    assert a.var == pytest.approx(rm.var, rel=1e-9, abs=1e-12)


@given(
    seed=st.integers(0, 2**32 - 1),
    plan=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=10),
    merge_order=st.permutations(range(3)),
    ddof=st.sampled_from([0, 1]),
    masked=st.booleans(),
    f32=st.booleans(),
)
def test_running_moments_match_the_float64_chan_reference(seed, plan, merge_order, ddof, masked,
                                                          f32):
    """Chunks of arbitrary sizes (0 included) go to one of three accumulators, which are then
    merged in any order: count, mean and m2 equal the float64 reference's."""
    rng = np.random.default_rng(seed)
    got = [ops.RunningMoments(ddof=ddof) for _ in range(3)]
    want = [ref.RunningMoments(ddof=ddof) for _ in range(3)]
    for rows, k in plan:
        x = rng.standard_normal((rows, int(rng.integers(1, 5)))) * 3 + 100
        if f32:
            x = x.astype(np.float32)
        m = rng.random(x.shape) < 0.7 if masked else None
        got[k].update(x, m)
        want[k].update(x, m)
    a, b = got[merge_order[0]], want[merge_order[0]]
    for k in merge_order[1:]:
        a.merge(got[k])
        b.merge(want[k])
    state = a.state_dict()
    assert state["count"] == b.count and state["ddof"] == ddof
    assert state["mean"] == pytest.approx(b.mean, rel=1e-12, abs=1e-12)
    assert state["m2"] == pytest.approx(b.m2, rel=1e-9, abs=1e-9)
    assert a.var == pytest.approx(b.var, rel=1e-9, abs=1e-12)


def test_running_moments_mask_state_and_pickle():
    torch = pytest.importorskip("torch")
    rm = ops.RunningMoments()
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, float("nan")]])
    rm.update(x, mask=torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.uint8))
    assert rm.count == 4 and rm.mean == 2.5
    assert rm.var == pytest.approx(np.var([1, 2, 3, 4], ddof=1))
    assert rm.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    state = rm.state_dict()
    assert state == {"count": 4, "mean": 2.5, "m2": 5.0, "ddof": 1}
    other = ops.RunningMoments()
    other.load_state_dict(state)
    assert other.var == rm.var
    clone = pickle.loads(pickle.dumps(rm))
    assert clone.state_dict() == state
    rm.merge(rm)  # merging with itself doubles the data
    assert rm.count == 8 and rm.mean == 2.5
    with pytest.raises(StateError, match="missing 'm2'"):
        other.load_state_dict({"count": 1, "mean": 0.0, "ddof": 1})
    with pytest.raises(StateError, match="m2 >= 0"):
        other.load_state_dict({"count": 2, "mean": 0.0, "m2": -1.0, "ddof": 1})
    assert "count=4" in repr(other)
