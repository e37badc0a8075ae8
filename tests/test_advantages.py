"""The estimator layer (rlhf_core.advantages): each estimator stores what the buffer's own Rust
estimator (or the group kernel) computes, bit for bit; the KL-in-reward scores; the
several-process statistics (moments, whitening, summaries), checked on one process against
the buffer's own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rlhf_core import ops
from rlhf_core.advantages import (
    GAE,
    AdvantageStats,
    Estimator,
    GroupRelative,
    ReinforcePP,
    ReinforcePPBaseline,
    sequence_kl,
)
from rlhf_core.advantages import distributed as AD
from rlhf_core.buffer import RolloutBuffer

G = 4  # group size


def _buffer(seed: int = 0, *, nan: bool = True, loss_mask: bool = True) -> RolloutBuffer:
    """12 sequences in 3 groups of 4 with ragged responses, logprobs, values and scores (one
    NaN score), and a loss_mask leaving a few tokens out."""
    rng = np.random.default_rng(seed)
    n = 12
    lengths = rng.integers(1, 9, size=n)
    scores = rng.normal(size=n)
    if nan:
        scores[5] = np.nan
    scores[8:12] = 0.25  # one group whose scores are all equal
    fields = dict(
        prompt_ids=[rng.integers(1, 50, size=3) for _ in range(n)],
        response_ids=[rng.integers(1, 50, size=k) for k in lengths],
        logprobs=[(-rng.random(k) - 0.1).astype(np.float32) for k in lengths],
        ref_logprobs=[(-rng.random(k) - 0.1).astype(np.float32) for k in lengths],
        values=[rng.normal(size=k).astype(np.float32) for k in lengths],
        scores=scores,
        group_ids=np.repeat(np.arange(n // G), G),
    )
    if loss_mask:
        fields["loss_mask"] = [rng.random(k) > 0.2 for k in lengths]
    buf = RolloutBuffer()
    buf.add(**fields)
    return buf


def _same(a: RolloutBuffer, b: RolloutBuffer) -> None:
    assert a.advantages_info == b.advantages_info
    np.testing.assert_array_equal(a.field("advantages"), b.field("advantages"))
    if a.advantages_info and a.advantages_info["has_returns"]:
        np.testing.assert_array_equal(a.field("returns"), b.field("returns"))


def _summary(stats: dict[str, float]) -> dict[str, float]:
    names = {"mean": "advantages/mean", "std": "advantages/std", "min": "advantages/min",
             "max": "advantages/max", "frac_zero_std": "frac_zero_std_groups",
             "num_singleton": "num_singleton_groups"}  # fmt: skip
    return {names[k]: float(v) for k, v in stats.items() if k in names}


KL = dict(kl_coef=0.1, kl_estimator="k3", kl_clamp=10.0)


@pytest.mark.parametrize(
    "estimator, name, options",
    [
        (GAE(gamma=0.9, lam=0.8, **KL), "gae", dict(gamma=0.9, lam=0.8, whiten="token", **KL)),
        (GAE(whiten=False), "gae", dict(gamma=1.0, lam=0.95, whiten="none", kl_clamp=10.0)),
        (ReinforcePP(gamma=0.95, **KL), "reinforce++", dict(gamma=0.95, **KL)),
        (ReinforcePPBaseline(**KL), "reinforce++_baseline", dict(**KL)),
        (ReinforcePPBaseline(), "reinforce++_baseline", dict(kl_clamp=10.0)),
        (GroupRelative.grpo(eps=1e-4), "grpo", dict(scale="group", eps=1e-4)),
        (GroupRelative.grpo(scale="batch"), "grpo", dict(scale="batch")),
        (GroupRelative.dr_grpo(), "grpo", dict(scale="none")),
        (GroupRelative.rloo(), "rloo", {}),
    ],
)
def test_estimators_store_what_the_buffer_computes(
    estimator: Estimator, name: str, options: dict
) -> None:
    """Each estimator, on one process, stores the buffer's own estimator's bits and reports
    its statistics under the logged names."""
    assert isinstance(estimator, Estimator)
    mine, ref = _buffer(), _buffer()
    stats = estimator.compute(mine)
    expected = ref.compute_advantages(name, **options)
    _same(mine, ref)
    assert stats.metrics() == _summary(expected)
    assert stats.metrics()["advantages/std"] > 0


def test_estimators_handle_buffers_without_loss_mask_or_nan() -> None:
    for est in (GAE(), GroupRelative.grpo(), ReinforcePPBaseline()):
        mine, ref = _buffer(1, nan=False, loss_mask=False), _buffer(1, nan=False, loss_mask=False)
        est.compute(mine)
        ref.compute_advantages(est.name, **({"lam": 0.95} if est.name == "gae" else {}))
        _same(mine, ref)


@pytest.mark.parametrize("kl_estimator", ["k1", "k3"])
def test_group_kl_in_reward_subtracts_the_summed_kl(kl_estimator: str) -> None:
    """KL in the reward of a group estimator: scores − β·Σ_t KL_t (float64 numpy reference),
    then the group kernel on those scores."""
    buf = _buffer()
    est = GroupRelative.rloo(kl_estimator=kl_estimator, kl_clamp=None).with_kl_coef(0.3)
    assert est.kl_coef == 0.3 and est.baseline == "leave_one_out"
    lp, ref = buf.field("logprobs"), buf.field("ref_logprobs")
    off = buf.offsets("response")
    kl = []
    for a, b in zip(off[:-1], off[1:], strict=True):
        d = lp[a:b].astype(np.float64) - ref[a:b].astype(np.float64)
        kl.append((d if kl_estimator == "k1" else np.exp(-d) + d - 1.0).sum())
    want = buf.field("scores") - 0.3 * np.array(kl)
    np.testing.assert_allclose(sequence_kl(buf, estimator=kl_estimator, clamp=None), kl,
                               rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(est.scores(buf), want, rtol=1e-12, equal_nan=True)
    est.compute(buf)
    expect = ops.group_advantages(want.astype(np.float32), group_ids=buf.field("group_ids"),
                                  baseline="leave_one_out", scale="none")  # fmt: skip
    np.testing.assert_array_equal(buf.field("advantages"), expect)
    # without the penalty the scores are the buffer's
    np.testing.assert_array_equal(GroupRelative.rloo().scores(buf), buf.field("scores"))


@pytest.mark.parametrize(
    "name, options",
    [
        ("gae", dict(lam=0.9)),  # per-token advantages
        ("reinforce++", {}),  # per-token
        ("reinforce++_baseline", {}),  # kept per sequence (β = 0, γ = 1, no rewards field)
    ],
)
def test_whitening_over_ranks_equals_the_buffers_own(name: str, options: dict) -> None:
    """The several-process whitening, run on one process, equals the buffer's ``whiten="token"``
    (every valid token weighs the same, unbiased variance), per-token and per-sequence."""
    mine, ref = _buffer(2), _buffer(2)
    mine.compute_advantages(name, whiten="none", **options)
    ref.compute_advantages(name, whiten="token", **options)
    AD.whiten_advantages(mine, None)
    assert mine.advantages_info == ref.advantages_info
    np.testing.assert_allclose(mine.field("advantages"), ref.field("advantages"), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    if name == "reinforce++_baseline":
        assert mine.advantages_info["level"] == "sequence"


def test_advantage_summary_and_valid_tokens() -> None:
    buf = _buffer(3)
    out = buf.compute_advantages("gae", lam=0.9)
    assert AD.advantage_moments(buf) == (out["mean"], out["std"], out["min"], out["max"])
    valid = AD.valid_tokens(buf)
    mask, scores = buf.field("loss_mask"), buf.field("scores")
    lengths = buf.lengths("response")
    assert np.array_equal(valid, mask & ~np.repeat(np.isnan(scores), lengths))
    counts = AD.valid_counts(buf)
    assert counts[5] == 0 and counts.sum() == valid.sum()
    # the same summary as the buffer's own, through the several-process formulas (ddof 0)
    tokens = buf.field("advantages")[valid].astype(np.float64)
    mom = AD.global_masked_moments(buf.field("advantages"), valid, ddof=0)
    assert mom.mean == pytest.approx(tokens.mean(), abs=1e-12)
    assert mom.var == pytest.approx(tokens.var(), abs=1e-12)


def test_stats_metrics_names() -> None:
    groups = ops.GroupStats(num_groups=4, num_nan=1, num_singleton=1, num_zero_std=1)
    stats = AdvantageStats(mean=0.0, std=1.0, min=-1.0, max=2.0, groups=groups)
    assert stats.metrics() == {
        "advantages/mean": 0.0, "advantages/std": 1.0, "advantages/min": -1.0,
        "advantages/max": 2.0, "frac_zero_std_groups": 0.25, "num_singleton_groups": 1.0,
    }  # fmt: skip
    assert AdvantageStats().metrics() == {}  # nothing valid, no groups


def test_estimators_are_frozen_options() -> None:
    est = GAE(gamma=0.99)
    with pytest.raises(dataclasses.FrozenInstanceError):
        est.gamma = 0.5  # type: ignore[misc]
    assert est.with_kl_coef(0.2) == GAE(gamma=0.99, kl_coef=0.2)
    assert GroupRelative.grpo().name == "grpo" and GroupRelative.rloo().name == "rloo"


def test_global_moments_and_whiten_single_process() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    mask = rng.random((4, 6)) > 0.3
    valid = x[mask].astype(np.float64)
    mom = AD.global_masked_moments(x, mask)
    assert mom.count == valid.size
    assert mom.mean == pytest.approx(valid.mean(), abs=1e-12)
    assert mom.var == pytest.approx(valid.var(ddof=1), abs=1e-12)
    w = AD.global_masked_whiten(x, mask, eps=1e-8)
    assert w.dtype == np.float32 and w.shape == x.shape
    expect = np.where(mask, (x - valid.mean()) / np.sqrt(valid.var(ddof=1) + 1e-8), 0.0)
    np.testing.assert_allclose(w, expect, atol=1e-6)
    np.testing.assert_allclose(w, ops.masked_whiten(x, mask), atol=1e-6)
    unshifted = AD.global_masked_whiten(
        torch.from_numpy(x), torch.from_numpy(mask), shift_mean=False, ddof=0
    )
    assert isinstance(unshifted, torch.Tensor) and unshifted.dtype == torch.float32
    expect2 = np.where(mask, (x - valid.mean()) / np.sqrt(valid.var() + 1e-8) + valid.mean(), 0)
    np.testing.assert_allclose(unshifted.numpy(), expect2, atol=1e-6)
    # no valid value: mean 0, variance 0 (the kernels' conventions)
    empty = AD.global_masked_moments(x, np.zeros_like(mask))
    assert (empty.count, empty.mean, empty.var) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="ddof=2"):
        AD.global_masked_moments(x, mask, ddof=2)
