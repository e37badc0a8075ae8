"""group_advantages: kernel vs float64 reference, identities, stats, kinds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import ops
from rlhf_core.testing import reference as ref
from rlhf_core.testing.strategies import FLOAT_DTYPES, assert_close

options = st.fixed_dictionaries(
    {
        "baseline": st.sampled_from(["mean", "leave_one_out"]),
        "scale": st.sampled_from(["group", "batch", "none"]),
        "ddof": st.sampled_from([0, 1]),
        "eps": st.sampled_from([0.0, 1e-9, 1e-6, 1e-4]),
        "singleton": st.sampled_from(["zero", "raw"]),
    }
)


@st.composite
def grouped_scores(draw: st.DrawFn) -> tuple[np.ndarray, dict]:
    """Scores with ties (zero-std groups), NaNs (unscorable) and a grouping."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    contiguous = draw(st.booleans())
    if contiguous:
        g = draw(st.integers(1, 8))
        b = g * draw(st.integers(0, 6))
        grouping: dict = {"group_size": g}
    else:
        b = draw(st.integers(0, 40))
        n_ids = draw(st.integers(1, 10))
        pool = draw(st.sampled_from([np.arange(n_ids), rng.integers(-(2**62), 2**62, n_ids)]))
        grouping = {"group_ids": rng.choice(pool, size=b).astype(np.int64)}
    kind = draw(st.sampled_from(["discrete", "normal", "binary"]))
    if kind == "discrete":
        s = rng.choice([0.0, 0.5, 1.0, 2.0], size=b)
    elif kind == "binary":
        s = rng.choice([0.0, 1.0], size=b)
    else:
        s = rng.standard_normal(b) * draw(st.sampled_from([1.0, 10.0]))
    nan_p = draw(st.sampled_from([0.0, 0.2]))
    s = np.where(rng.random(b) < nan_p, np.nan, s).astype(dtype)
    return s, grouping


@given(case=grouped_scores(), opts=options)
def test_group_advantages_match_reference(case, opts):
    s, grouping = case
    adv, stats = ops.group_advantages(s, **grouping, **opts, return_stats=True)
    expect, counts = ref.group_advantages(s, **grouping, **opts)
    scale = max(float(np.nanmax(np.abs(s), initial=1.0)), float(np.max(np.abs(expect), initial=1.0)))
    assert_close(adv, expect, s.dtype, scale=scale)
    assert stats == ops.GroupStats(**counts)
    assert not np.any(np.isnan(adv))
    assert np.all(adv[np.isnan(s)] == 0)


@given(case=grouped_scores(), opts=options)
def test_permuting_sequences_permutes_advantages(case, opts):
    s, grouping = case
    ids = (np.arange(s.size) // grouping["group_size"] if "group_size" in grouping
           else grouping["group_ids"])
    perm = np.random.default_rng(0).permutation(s.size)
    a = ops.group_advantages(s, group_ids=ids, **opts)
    b = ops.group_advantages(s[perm], group_ids=ids[perm], **opts)
    # summation order changes with the permutation: equal up to rounding
    assert_close(b, a[perm].astype(np.float64), s.dtype,
                 scale=float(np.max(np.abs(a), initial=1.0)))
    if "group_size" in grouping:
        np.testing.assert_array_equal(a, ops.group_advantages(s, **grouping, **opts))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("baseline", ["mean", "leave_one_out"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_identical_rewards_in_a_group_give_exact_zero(dtype, baseline, scale):
    s = np.array([0.1, 0.1, 0.1, 0.1, 0.3, 0.7, 0.1, 0.1], dtype=dtype)
    adv, st_ = ops.group_advantages(s, group_size=4, baseline=baseline, scale=scale,
                                    return_stats=True)
    assert np.all(adv[:4] == 0.0)
    assert np.all(adv[4:] != 0.0)
    assert st_.num_zero_std == 1 and st_.frac_zero_std == 0.5


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_group_of_one_follows_singleton(dtype):
    s = np.array([3.0, 1.0, 2.0, -4.0], dtype=dtype)
    ids = np.array([7, 9, 9, 11])
    zero, stats = ops.group_advantages(s, group_ids=ids, return_stats=True)
    assert zero[0] == 0.0 and zero[3] == 0.0
    assert stats.num_singleton == 2 and stats.num_groups == 3
    raw = ops.group_advantages(s, group_ids=ids, singleton="raw")
    assert raw[0] == 3.0 and raw[3] == -4.0
    np.testing.assert_array_equal(zero[1:3], raw[1:3])
    # NaN siblings leave a singleton behind
    s2 = np.array([np.nan, 5.0], dtype=dtype)
    assert ops.group_advantages(s2, group_size=2, singleton="raw").tolist() == [0.0, 5.0]


def test_known_values_grpo_rloo_drgrpo():
    s = np.array([1.0, 0.0, 0.0, 1.0])
    # group mean 0.5, unbiased std sqrt(1/3)
    std = np.sqrt(1 / 3)
    np.testing.assert_allclose(ops.group_advantages(s, group_size=4, eps=1e-4),
                               np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4), rtol=1e-14)
    np.testing.assert_allclose(ops.group_advantages(s, group_size=4, scale="none"),
                               [0.5, -0.5, -0.5, 0.5])
    # RLOO: r_i - mean(others): 1 - 1/3, 0 - 2/3
    np.testing.assert_allclose(
        ops.group_advantages(s, group_size=4, baseline="leave_one_out", scale="none"),
        [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-14)


def test_batch_scale_uses_group_mean_and_batch_std():
    s = np.array([0.0, 2.0, 10.0, 14.0])
    adv = ops.group_advantages(s, group_size=2, scale="batch", eps=0.0)
    std = np.std(s, ddof=1)
    np.testing.assert_allclose(adv, [-1 / std, 1 / std, -2 / std, 2 / std], rtol=1e-14)


def test_torch_kind_and_int32_ids():
    torch = pytest.importorskip("torch")
    s = torch.tensor([1.0, 2.0, 3.0, 5.0])
    out = ops.group_advantages(s, group_ids=torch.tensor([0, 1, 0, 1], dtype=torch.int32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ops.group_advantages(s.numpy(), group_ids=[0, 1, 0, 1]))


def test_empty_batch():
    adv, stats = ops.group_advantages(np.zeros(0, np.float32), group_size=4, return_stats=True)
    assert adv.shape == (0,) and adv.dtype == np.float32
    assert stats.num_groups == 0 and stats.frac_zero_std == 0.0
