"""The "how to get each framework's behaviour" recipes of docs/kernels.md, checked against
small re-typed versions of the frameworks' formulas (as described in the project's anchor
notes; the structure, not the code). Each test names the recipe it checks."""

from __future__ import annotations

import numpy as np
import pytest

from rlhf_core import ops

rng = np.random.default_rng(7)


def _right_padded(b: int, t: int) -> np.ndarray:
    lengths = rng.integers(1, t + 1, b)
    return np.arange(t)[None, :] < lengths[:, None]


def test_gae_default_is_verls_carry_loop_on_valid_tokens():
    """verl: reverse loop; on a masked token V_next and A_next are carried unchanged."""
    b, t = 5, 12
    r, v = rng.standard_normal((b, t)), rng.standard_normal((b, t))
    m = _right_padded(b, t) & (rng.random((b, t)) > 0.25)  # multi-turn holes
    gamma, lam = 0.99, 0.95
    v_next = np.zeros(b)
    a_next = np.zeros(b)
    adv = np.zeros((b, t))
    for j in range(t - 1, -1, -1):
        delta = r[:, j] + gamma * v_next - v[:, j]
        a = delta + gamma * lam * a_next
        v_next = np.where(m[:, j], v[:, j], v_next)
        a_next = np.where(m[:, j], a, a_next)
        adv[:, j] = a_next  # verl keeps the carried value in masked slots
    ours, ret = ops.gae(r, v, m, gamma=gamma, lam=lam)
    np.testing.assert_allclose(ours[m], adv[m], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret[m], adv[m] + v[m], rtol=1e-12, atol=1e-12)
    assert np.all(ours[~m] == 0)


def test_gae_zero_mode_is_openrlhfs_masked_loop():
    """OpenRLHF: rewards and values multiplied by the mask, plain loop over every slot."""
    b, t = 4, 10
    r, v = rng.standard_normal((b, t)), rng.standard_normal((b, t))
    m = _right_padded(b, t) & (rng.random((b, t)) > 0.3)
    gamma, lam = 0.9, 0.8
    rm, vm = r * m, v * m
    last = np.zeros(b)
    adv = np.zeros((b, t))
    for j in range(t - 1, -1, -1):
        next_v = vm[:, j + 1] if j < t - 1 else 0.0
        delta = rm[:, j] + gamma * next_v - vm[:, j]
        last = delta + gamma * lam * last
        adv[:, j] = last
    ours, _ = ops.gae(r, v, m, gamma=gamma, lam=lam, masked="zero")
    np.testing.assert_allclose(ours[m], adv[m], rtol=1e-12, atol=1e-12)


def test_group_defaults_with_raw_singletons_are_verls_grpo():
    """verl GRPO: dict of groups; a group of one has mean 0, std 1; A = (s − μ)/(σ + 1e-6)."""
    ids = np.array([3, 3, 3, 9, 5, 5, 5, 5])
    s = rng.standard_normal(ids.size)
    expect = np.zeros_like(s)
    for g in np.unique(ids):
        idx = np.flatnonzero(ids == g)
        if idx.size == 1:
            mu, sd = 0.0, 1.0
        else:
            mu, sd = s[idx].mean(), s[idx].std(ddof=1)
        expect[idx] = (s[idx] - mu) / (sd + 1e-6)
    ours = ops.group_advantages(s, group_ids=ids, singleton="raw")
    multi = ids != 9
    np.testing.assert_allclose(ours[multi], expect[multi], rtol=1e-12)
    # singleton: verl gives s/(1+ε), the raw-score option gives s
    np.testing.assert_allclose(ours[~multi], expect[~multi], rtol=2e-6)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_eps_1e4_is_trls_grpo_with_nan(scale):
    """TRL GRPO: view(-1, G), NaN-aware mean / unbiased std, ε = 1e-4, NaN advantages → 0."""
    g = 4
    s = rng.choice([0.0, 1.0, 0.5], size=16)
    s[[2, 9]] = np.nan
    grid = s.reshape(-1, g)
    mean = np.nanmean(grid, axis=1, keepdims=True)
    if scale == "group":
        std = np.nanstd(grid, axis=1, ddof=1, keepdims=True)
    else:
        std = np.full_like(mean, np.nanstd(s, ddof=1))
    with np.errstate(invalid="ignore"):
        a = grid - mean if scale == "none" else (grid - mean) / (std + 1e-4)
    expect = np.nan_to_num(a.reshape(-1), nan=0.0)
    ours = ops.group_advantages(s, group_size=g, scale=scale, eps=1e-4)
    np.testing.assert_allclose(ours, expect, rtol=1e-12, atol=1e-15)


def test_rloo_is_trls_leave_one_out():
    """TRL RLOO: baseline = (Σ_group r − r_i)/(n − 1)."""
    s = rng.standard_normal(12)
    grid = s.reshape(-1, 4)
    expect = (grid - (grid.sum(1, keepdims=True) - grid) / 3).reshape(-1)
    ours = ops.group_advantages(s, group_size=4, baseline="leave_one_out", scale="none")
    np.testing.assert_allclose(ours, expect, rtol=1e-12, atol=1e-14)


def test_whiten_defaults_are_verls_masked_whiten():
    """verl masked_whiten: (x − μ)·rsqrt(σ²_unbiased + 1e-8) over valid tokens."""
    x = rng.standard_normal((6, 9)) * 3 + 1
    m = _right_padded(6, 9)
    mu = x[m].mean()
    var = x[m].var(ddof=1)
    expect = (x - mu) / np.sqrt(var + 1e-8)
    np.testing.assert_allclose(ops.masked_whiten(x, m)[m], expect[m], rtol=1e-12)
    kept = ops.masked_whiten(x, m, shift_mean=False)
    np.testing.assert_allclose(kept[m], expect[m] + mu, rtol=1e-12)


def test_shaped_rewards_default_is_openrlhfs_compute_reward():
    """OpenRLHF: −β·clamp(k1, ±10) on every action token, score on the last one."""
    b, t = 4, 7
    logp = -rng.exponential(2.0, (b, t))
    ref_logp = -rng.exponential(2.0, (b, t))
    ref_logp[0, 0] = -40.0  # a clamped token
    m = _right_padded(b, t)
    scores = rng.standard_normal(b)
    kl = np.clip(logp - ref_logp, -10, 10)
    expect = -0.05 * kl * m
    last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
    expect[np.arange(b), last] += scores
    ours = ops.shaped_rewards(scores, logp, ref_logp, m, beta=0.05)
    np.testing.assert_allclose(ours, expect, rtol=1e-12, atol=1e-15)
