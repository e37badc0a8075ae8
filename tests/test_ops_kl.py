"""KL estimators and KL-shaped rewards vs float64 references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_core import ops
from rlhf_core.testing import reference as ref
from rlhf_core.testing.strategies import FLOAT_DTYPES, assert_close, assert_masked_zero, token_cases

estimators = st.sampled_from(["k1", "k2", "k3", "abs", "kl", "mse", "low_var_kl"])
clamps = st.sampled_from([None, 10.0, 0.5, 0.0, float("inf")])


def _check_kl(out, logp, ref_logp, estimator, clamp):
    """Relative error bound per element (k3 near 0 is tiny, so a plain atol would hide errors)."""
    expect = ref.kl(logp, ref_logp, estimator=estimator, clamp=clamp)
    out64 = np.asarray(out).astype(np.float64)
    assert np.array_equal(np.isnan(out64), np.isnan(expect))
    ok = ~np.isnan(expect)
    f32 = np.asarray(out).dtype == np.float32
    rtol = 1e-5 if f32 else 1e-12
    tiny = 1e-37 if f32 else 1e-300
    err = np.abs(out64[ok] - expect[ok])
    assert np.all(err <= rtol * np.abs(expect[ok]) + tiny), (out64[ok], expect[ok])


@st.composite
def logp_pairs(draw):
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(0,), (7,), (3, 5), (2, 3, 4)]))
    logp = -rng.exponential(3.0, size=shape)
    scale = draw(st.sampled_from([1e-7, 1e-3, 0.3, 2.0, 10.0]))
    ref_logp = logp + rng.standard_normal(shape) * scale
    return logp.astype(dtype), ref_logp.astype(dtype)


@given(pair=logp_pairs(), estimator=estimators, clamp=clamps)
def test_kl_matches_reference(pair, estimator, clamp):
    logp, ref_logp = pair
    out = ops.kl(logp, ref_logp, estimator=estimator, clamp=clamp)
    assert out.shape == logp.shape and out.dtype == logp.dtype
    _check_kl(out, logp, ref_logp, estimator, clamp)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kl_edge_values(dtype):
    logp = np.array([0.0, -np.inf, 0.0, np.nan, -30.0, -1e-6], dtype=dtype)
    ref_logp = np.array([0.0, 0.0, -np.inf, 0.0, 0.0, 0.0], dtype=dtype)
    k3 = ops.kl(logp, ref_logp)  # clamp 10
    assert k3[0] == 0.0 and k3[1] == 10.0 and k3[2] == 10.0 and k3[4] == 10.0
    assert np.isnan(k3[3])
    np.testing.assert_allclose(k3[5], 0.5e-12, rtol=1e-5)
    raw = ops.kl(logp, ref_logp, estimator="k1", clamp=None)
    assert raw[1] == -np.inf and raw[2] == np.inf
    assert ops.kl(logp, ref_logp, estimator="k1")[1] == -10.0
    with np.errstate(over="ignore"):
        big = np.exp(np.float64(30.0)) - 31.0
    np.testing.assert_allclose(ops.kl(logp[4:5], ref_logp[4:5], clamp=None), [big], rtol=1e-5)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_kl_large_input_uses_every_path(dtype, rng):
    # many chunks (parallel path) and every residue of the vector width
    n = 70_001
    logp = (-rng.exponential(2.0, n)).astype(dtype)
    ref_logp = (logp + rng.standard_normal(n)).astype(dtype)
    for est in ("k1", "k2", "k3", "abs"):
        _check_kl(ops.kl(logp, ref_logp, estimator=est), logp, ref_logp, est, 10.0)


@given(case=token_cases(), beta=st.sampled_from([0.0, 0.05, 1.0]), estimator=estimators,
       clamp=clamps)
def test_shaped_rewards_match_reference(case, beta, estimator, clamp):
    logp = case.values("logp", scale=1.0)
    ref_logp = case.values("ref", scale=1.0)
    scores = case.per_row("scores")
    out = ops.shaped_rewards(scores, logp, ref_logp, case.mask, offsets=case.offsets,
                             beta=beta, estimator=estimator, clamp=clamp)
    expect = ref.shaped_rewards(scores, logp, ref_logp, case.mask, offsets=case.offsets,
                                beta=beta, estimator=estimator, clamp=clamp)
    # the KL itself is computed in the input precision (1e-5 relative for float32)
    assert_close(out, expect, case.dtype, scale=10.0,
                 rtol=1e-5 if case.dtype == np.float32 else 1e-11)
    assert_masked_zero(out, case.valid)


def test_shaped_rewards_known_values():
    logp = np.array([[-1.0, -2.0, -3.0, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref_logp = np.array([[-1.5, -2.0, -2.0, 0.0], [-1.0, -0.5, 0.0, 0.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)
    out = ops.shaped_rewards(np.array([1.0, -1.0]), logp, ref_logp, mask, beta=0.1)
    np.testing.assert_allclose(out, [[-0.05, 0.0, 0.1 + 1.0, 0.0], [0.0, 0.05 - 1.0, 0.0, 0.0]])
    fully_masked = ops.shaped_rewards(np.array([1.0, 2.0]), logp, ref_logp,
                                      np.zeros_like(mask), beta=0.1)
    assert np.all(fully_masked == 0)


def test_torch_kinds():
    torch = pytest.importorskip("torch")
    lp = torch.randn(2, 3)
    out = ops.kl(lp, lp + 0.1)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    s = ops.shaped_rewards(torch.ones(2), lp, lp, torch.ones(2, 3, dtype=torch.bool), beta=0.1)
    assert isinstance(s, torch.Tensor)
    np.testing.assert_allclose(s.numpy(), [[0, 0, 1], [0, 0, 1]])


def test_float32_k3_relative_error_over_a_dense_grid():
    """The bound docs/kernels.md states: float32 k3 (unclamped) within 1.5e-6 relative of the
    float64 value of the same float32 Δ, over 2,000,001 points of [−30, 30] plus log-spaced
    |Δ| in [1e-7, 1] (where exp(−Δ) + Δ − 1 cancels most)."""
    small = np.geomspace(1e-7, 1.0, 20_001)
    d = np.concatenate([np.linspace(-30.0, 30.0, 2_000_001), small, -small]).astype(np.float32)
    got = ops.kl(d, np.zeros_like(d), estimator="k3", clamp=None).astype(np.float64)
    d64 = d.astype(np.float64)
    want = np.expm1(-d64) + d64
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(got - want) / np.abs(want)
    rel[want == 0.0] = np.abs(got[want == 0.0])
    assert float(rel.max()) < 1.5e-6, (float(rel.max()), float(d64[np.argmax(rel)]))
