"""The 2026 policy-loss options of the GRPO family on the built-in tiny model: GSPO and
GSPO-token (``importance_sampling_level``), CISPO and SAPO (``loss_type``), the top-entropy
quantile, Clip-Cov and KL-Cov. Each trains and improves a trivially learnable reward, is
micro-batch invariant, and bad combinations are refused with the field named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlhf_core.monitor import read_metrics
from rlhf_core.testing.trainers import (
    FAST,
    assert_all_changed,
    assert_finite_metrics,
    assert_grads_close,
    capture_grads,
    policy,
    snapshot,
    tokenizer,
)
from rlhf_core.trainers import GRPOConfig, GRPOTrainer, PPOConfig

PROMPTS = ["Q:", "A:", "x=", "y="]


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """Fraction of digits: dense, learnable by the tiny model in a few steps."""
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


OPTIONS: dict[str, dict[str, Any]] = {
    "gspo": dict(importance_sampling_level="sequence", clip_low=3e-4, clip_high=4e-4),
    "gspo_token": dict(importance_sampling_level="sequence_token", clip_low=3e-4, clip_high=4e-4),
    "cispo_verl": dict(loss_type="cispo", clip_high=0.28),
    "cispo_trl": dict(loss_type="cispo", cispo_ratio_max=5.0),
    "sapo": dict(loss_type="sapo"),
    "top_entropy": dict(top_entropy_quantile=0.5, entropy_coef=0.01),
    "clip_cov": dict(clip_cov_ratio=0.05, clip_cov_lb=0.0, clip_cov_ub=5.0),
    "kl_cov": dict(kl_cov_ratio=0.05),
}
#: the metric each option adds to the step's metrics
OWN_METRIC = {
    "gspo": "clip_frac",
    "gspo_token": "clip_frac",
    "cispo_verl": "clip_frac",
    "cispo_trl": "clip_frac",
    "sapo": "soft_gate_mean",
    "top_entropy": "entropy",
    "clip_cov": "clip_cov_frac",
    "kl_cov": "kl_cov_frac",
}


def _trainer(run: Path, **kw: Any) -> GRPOTrainer:
    base = dict(total_steps=1, rollout_batch_size=8, num_samples=4, learning_rate=1e-3,
                max_new_tokens=6, weight_decay=0.0, **FAST)  # fmt: skip
    cfg = GRPOConfig(run_dir=str(run), **{**base, **kw})
    return GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_option_trains_and_improves_a_learnable_reward(tmp_path, name):
    t = _trainer(tmp_path, total_steps=8, rollout_batch_size=16, learning_rate=5e-3,
                 max_new_tokens=4, **OPTIONS[name])  # fmt: skip
    before = snapshot(t.policy)
    res = t.train()
    assert_finite_metrics(res.metrics)
    assert OWN_METRIC[name] in res.metrics
    assert_all_changed(before, t.policy)
    rewards = [r["reward/mean"] for r in read_metrics(tmp_path)]
    print(f"{name}: reward/mean {np.mean(rewards[:2]):.3f} -> {np.mean(rewards[-2:]):.3f}")
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.05, rewards


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_option_is_micro_batch_invariant(tmp_path, name):
    """Masks are chosen over the whole minibatch, so 1 × 8 == 8 × 1 micro-batches."""
    kw = dict(kl_coef=0.05, ppo_epochs=2, **OPTIONS[name])
    a = _trainer(tmp_path / "a", **kw)
    b = _trainer(tmp_path / "b", micro_batch_size=1, **kw)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    for key in ("policy_loss", "kl_loss", "entropy", OWN_METRIC[name], "reward/mean"):
        assert ra.metrics[key] == pytest.approx(rb.metrics[key], rel=1e-4, abs=1e-7), key
    assert_grads_close(ga, gb)


def test_gspo_on_one_update_per_rollout_is_sequence_mean_policy_gradient(tmp_path):
    """With one optimizer step per rollout s ≡ 1, so GSPO with seq-mean-token-mean takes the
    step of GRPO's loss_type='grpo' (the research note, §2)."""
    a = _trainer(tmp_path / "a", total_steps=2)
    b = _trainer(tmp_path / "b", total_steps=2, **OPTIONS["gspo"])
    ra, rb = a.train(), b.train()
    assert ra.metrics["reward/mean"] == rb.metrics["reward/mean"]
    assert ra.metrics["policy_loss"] == pytest.approx(rb.metrics["policy_loss"], rel=1e-5)


def test_default_config_keeps_the_clipped_surrogate():
    cfg = GRPOConfig(**FAST)
    assert cfg.policy_objective == "ppo" and cfg.importance_sampling_level == "token"
    assert cfg.top_entropy_quantile == 1.0 and cfg.clip_cov_ratio == cfg.kl_cov_ratio == 0.0
    assert GRPOConfig(loss_type="cispo", **FAST).aggregation == "token-mean"
    assert GRPOConfig(loss_type="sapo", **FAST).aggregation == "seq-mean-token-mean"
    # both CISPO spellings
    assert GRPOConfig(loss_type="cispo", clip_high=0.28, **FAST).cispo_bounds() == (
        pytest.approx(0.8),
        pytest.approx(1.28),
    )
    assert GRPOConfig(loss_type="cispo", clip_low=10, **FAST).cispo_bounds()[0] is None
    assert GRPOConfig(loss_type="cispo", cispo_ratio_max=5.0, **FAST).cispo_bounds() == (None, 5.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="cispo", clip_high=5.0), "clip_high=5.0.*cispo_ratio_max"),
        (dict(importance_sampling_level="seq"), "importance_sampling_level='seq'"),
        (dict(loss_type="sapo", sapo_temperature_neg=0.0), "sapo_temperature_neg=0.0"),
        (dict(loss_type="sapo", dual_clip=3.0), "dual_clip=3.0"),
        (dict(top_entropy_quantile=1.5), "top_entropy_quantile=1.5"),
        (dict(clip_cov_ratio=2e-4, kl_cov_ratio=2e-4), "kl_cov_ratio"),
        (dict(kl_cov_ratio=2e-4, loss_type="cispo"), "kl_cov_ratio=0.0002"),
        (dict(clip_cov_ratio=2e-4, importance_sampling_level="sequence"), "clip_cov_ratio"),
        (dict(clip_cov_lb=5.0, clip_cov_ub=1.0), "clip_cov_lb=5.0"),
        (dict(cispo_ratio_max=0.0), "cispo_ratio_max=0.0"),
        (dict(ppo_kl_coef=-1.0), "ppo_kl_coef=-1.0"),
        (dict(loss_type="vespo"), "loss_type='vespo'"),
    ],
)
def test_bad_combinations_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs, **FAST)


def test_ppo_takes_the_sequence_level_and_entropy_options(tmp_path):
    """The options live on RLConfig: PPO's clipped surrogate takes them too."""
    from rlhf_core.models import RewardModel
    from rlhf_core.trainers import PPOTrainer

    cfg = PPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=4,
                    importance_sampling_level="sequence_token", top_entropy_quantile=0.5,
                    max_new_tokens=6, **FAST)  # fmt: skip
    rm = RewardModel.from_policy(policy(1))
    res = PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, [rm, digit_reward]).train()
    assert_finite_metrics(res.metrics)
