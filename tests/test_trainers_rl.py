"""On-policy trainers (PPO, GRPO, RLOO, REINFORCE++) and best-of-N on the built-in tiny model:
smoke (finite metrics, every trainable parameter changed), micro-batch invariance, bad
configs, masking, NaN tripwire, and two learning runs (GRPO on exact-match arithmetic, PPO on
a reward model with bounded KL)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_core import ops, tasks
from rlhf_core.generation import generate
from rlhf_core.models import RewardModel
from rlhf_core.monitor import NonFiniteError, read_metrics
from rlhf_core.testing.trainers import (
    FAST,
    assert_all_changed,
    assert_finite_metrics,
    assert_grads_close,
    assert_unchanged,
    capture_grads,
    count_layer_calls,
    count_pairs,
    policy,
    snapshot,
    snapshot_all,
    tokenizer,
)
from rlhf_core.trainers import (
    BestOfNConfig,
    BestOfNTrainer,
    GRPOConfig,
    GRPOTrainer,
    PPOConfig,
    PPOTrainer,
    ReinforcePPConfig,
    ReinforcePPTrainer,
    RewardConfig,
    RewardTrainer,
    RLOOConfig,
    RLOOTrainer,
    SFTConfig,
    SFTTrainer,
)
from rlhf_core.trainers.best_of_n import select_best
from rlhf_core.trainers.ppo import AdaptiveKLController

PROMPTS = ["Q:", "A:", "x=", "y="]


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """Fraction of digits in the completion: dense, so every group has some variance."""
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


RL_COMMON = dict(learning_rate=1e-3, max_new_tokens=6, weight_decay=0.0, **FAST)


def _grpo(run: Path, cls=GRPOTrainer, cfg_cls=GRPOConfig, **kw: Any) -> Any:
    kw.setdefault("total_steps", 2)
    kw.setdefault("rollout_batch_size", 8)
    kw.setdefault("num_samples", 4)
    cfg = cfg_cls(run_dir=str(run), **{**RL_COMMON, **kw})
    return cls(cfg, policy(), tokenizer(), PROMPTS, digit_reward)


def _ppo(run: Path, **kw: Any) -> PPOTrainer:
    kw.setdefault("total_steps", 2)
    kw.setdefault("rollout_batch_size", 4)
    cfg = PPOConfig(run_dir=str(run), **RL_COMMON, **kw)
    rm = RewardModel.from_policy(policy(1))
    return PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, [rm, digit_reward])


# ---------------------------------------------------------------------------------------------
# smoke


@pytest.mark.parametrize(
    "cls, cfg_cls, extra",
    [
        (GRPOTrainer, GRPOConfig, dict(kl_coef=0.05, ppo_epochs=2, minibatch_size=4)),
        (GRPOTrainer, GRPOConfig, dict(loss_type="dr_grpo", clip_high=0.28, dual_clip=3.0)),
        (GRPOTrainer, GRPOConfig, dict(loss_type="dapo", scale_rewards="batch")),
        (GRPOTrainer, GRPOConfig, dict(estimator="reinforce++_baseline", kl_coef=0.05)),
        (RLOOTrainer, RLOOConfig, {}),
        (ReinforcePPTrainer, ReinforcePPConfig, dict(num_samples=1, rollout_batch_size=4)),
    ],
)
def test_grpo_family_smoke(tmp_path, cls, cfg_cls, extra):
    t = _grpo(tmp_path, cls=cls, cfg_cls=cfg_cls, entropy_coef=0.01, **extra)
    before = snapshot(t.policy)
    res = t.train()
    assert res.step == 2
    assert_finite_metrics(res.metrics)
    for key in ("reward/mean", "kl", "entropy", "clip_frac", "approx_kl", "advantages/std"):
        assert key in res.metrics, key
    assert_all_changed(before, t.policy)
    rows = read_metrics(tmp_path)
    assert len(rows) == 2 and all("time/generation" in r for r in rows)


def test_policy_gradient_trainer_takes_any_estimator(tmp_path):
    """A new estimator is a new class, not a trainer override: one written here (the score
    minus the batch mean, one advantage per sequence) trains a PolicyGradientTrainer, which
    calls it with its buffer and process group and logs its statistics."""
    from dataclasses import dataclass
    from typing import ClassVar

    from rlhf_core.advantages import AdvantageStats, RewardKL
    from rlhf_core.trainers import PolicyGradientTrainer, RLConfig

    seen: list[Any] = []

    @dataclass(frozen=True, kw_only=True)
    class BatchMean(RewardKL):
        name: ClassVar[str] = "batch_mean"

        def compute(self, buffer: Any, dist: Any = None) -> AdvantageStats:
            seen.append((buffer, dist, self.kl_coef))
            scores = np.nan_to_num(buffer.field("scores"))
            buffer.set_advantages((scores - scores.mean()).astype(np.float32), estimator=self.name)
            return AdvantageStats.of(buffer, dist)

    cfg = RLConfig(run_dir=str(tmp_path), total_steps=2, rollout_batch_size=8, num_samples=2,
                   kl_coef=0.1, kl_in_reward=True, **RL_COMMON)  # fmt: skip
    t = PolicyGradientTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward,
                              estimator=BatchMean())  # fmt: skip
    before = snapshot(t.policy)
    res = t.train()
    assert [(b is t.buffer, d is t.dist, beta) for b, d, beta in seen] == [(True, True, 0.1)] * 2
    assert t.buffer.advantages_info["estimator"] == "batch_mean"
    assert abs(res.metrics["advantages/mean"]) < 1e-6 and "policy_loss" in res.metrics
    assert_all_changed(before, t.policy)


def test_grpo_lora_trains_only_the_adapters(tmp_path):
    pytest.importorskip("peft")
    from rlhf_core.models import ReferenceModel

    t = _grpo(tmp_path, lora_r=4, lora_alpha=8.0, kl_coef=0.05)
    names = [n for n, p in t.policy.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    base = {n: p.detach().clone() for n, p in t.policy.named_parameters() if not p.requires_grad}
    assert base
    before = snapshot(t.policy)
    assert isinstance(t.reference, ReferenceModel)  # the adapter-disabled policy, no copy
    res = t.train()
    assert res.step == 2
    assert_finite_metrics(res.metrics)
    assert_all_changed(before, t.policy)  # every adapter matrix moved
    for n, p in t.policy.named_parameters():
        if n in base:
            assert torch.equal(p.detach(), base[n]), n
    # the policy now differs from its reference (adapters on vs off)
    assert res.metrics["kl"] != 0.0


def test_lora_on_a_peft_policy_is_refused(tmp_path):
    pytest.importorskip("peft")
    from rlhf_core.models import apply_lora

    cfg = GRPOConfig(run_dir=str(tmp_path), lora_r=4, rollout_batch_size=8, num_samples=4,
                     **RL_COMMON)  # fmt: skip
    with pytest.raises(ValueError, match="lora_r=4: the policy already is a peft model"):
        GRPOTrainer(cfg, apply_lora(policy(), r=2), tokenizer(), PROMPTS, digit_reward)


def test_ppo_smoke(tmp_path):
    t = _ppo(tmp_path, ppo_epochs=2, minibatch_size=2, kl_target=1.0)
    before = snapshot(t.policy, t.value_model)
    rm = t.reward_sources[0].reward_model
    rm_before = snapshot_all(rm)
    ref_before = snapshot_all(t.reference)
    res = t.train()
    assert_finite_metrics(res.metrics)
    for key in ("value_loss", "explained_variance", "kl_coef", "value_grad_norm"):
        assert key in res.metrics, key
    assert_all_changed(before, t.policy, t.value_model)
    # the reward model and the reference stay frozen
    assert_unchanged(rm_before, rm)
    assert_unchanged(ref_before, t.reference)
    assert not any(p.requires_grad for p in t.reference.parameters())


def test_best_of_n_smoke(tmp_path):
    cfg = BestOfNConfig(
        run_dir=str(tmp_path), total_steps=2, rollout_batch_size=8, num_samples=4, **RL_COMMON
    )
    t = BestOfNTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward)
    before = snapshot(t.policy)
    res = t.train()
    assert_finite_metrics(res.metrics)
    assert res.metrics["best_of_n/num_selected"] == 2
    assert res.metrics["best_of_n/selected_reward"] >= res.metrics["reward/mean"]
    assert_all_changed(before, t.policy)


def test_select_best():
    scores = np.array([0.1, 0.5, 0.5, np.nan, np.nan, np.nan, -1.0, 2.0])
    groups = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(select_best(scores, groups), [1, 7])  # ties -> first
    np.testing.assert_array_equal(select_best(scores, groups, min_reward=1.0), [7])


# ---------------------------------------------------------------------------------------------
# micro-batch invariance: micro-batches of 1 accumulate the same gradient as one of 4


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_micro_batch_invariance(tmp_path, loss_type):
    a = _grpo(tmp_path / "a", total_steps=1, loss_type=loss_type, kl_coef=0.05)
    b = _grpo(tmp_path / "b", total_steps=1, loss_type=loss_type, kl_coef=0.05, micro_batch_size=1)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    for key in ("policy_loss", "kl_loss", "entropy", "clip_frac", "reward/mean"):
        assert ra.metrics[key] == pytest.approx(rb.metrics[key], rel=1e-4, abs=1e-7), key
    assert_grads_close(ga, gb)


def test_ppo_micro_batch_invariance(tmp_path):
    a = _ppo(tmp_path / "a", total_steps=1, ppo_epochs=1)
    b = _ppo(tmp_path / "b", total_steps=1, ppo_epochs=1, micro_batch_size=1)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    for key in ("policy_loss", "value_loss", "reward/mean"):
        assert ra.metrics[key] == pytest.approx(rb.metrics[key], rel=1e-4, abs=1e-7), key
    assert len(ga) == 2  # policy and value optimizer steps
    assert_grads_close(ga, gb)


# ---------------------------------------------------------------------------------------------
# behaviour


def test_first_epoch_ratio_is_one(tmp_path):
    t = _grpo(tmp_path, total_steps=1, ppo_epochs=1)
    res = t.train()
    # the first epoch's logprobs are recomputed by the same forward pass as the rollout's, so
    # the ratio exp(new - old) is exactly one, not merely close to it
    assert res.metrics["ratio_min"] == 1.0
    assert res.metrics["ratio_max"] == 1.0
    assert res.metrics["approx_kl"] == 0.0
    assert res.metrics["clip_frac"] == 0.0


def test_unscorable_rewards_are_counted_not_fatal(tmp_path):
    def half_none(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [None if i % 2 else float(len(c)) for i, c in enumerate(completions)]

    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=8, **RL_COMMON)
    res = GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, half_none).train()
    assert res.metrics["reward/frac_unscorable"] == 0.5
    assert math.isfinite(res.metrics["policy_loss"])


@pytest.mark.parametrize("mask_truncated", [True, False])
def test_mask_truncated_drops_truncated_completions_from_the_loss(tmp_path, mask_truncated):
    t = _grpo(tmp_path, total_steps=1, max_new_tokens=2, mask_truncated=mask_truncated)
    seen: list[Any] = []
    original = t.loss

    def spy(micro: Any, n_tok: int, n_seq: int) -> Any:
        seen.append((micro["truncated"].clone(), micro["response_mask"].clone()))
        return original(micro, n_tok, n_seq)

    t.loss = spy
    res = t.train()
    truncated = torch.cat([tr for tr, _ in seen])
    in_loss = torch.cat([m.any(dim=1) for _, m in seen])
    assert truncated.any(), "with 2 new tokens some completions must hit the limit"
    assert (~truncated).any(), "and some must stop earlier (else masking all would pass)"
    if mask_truncated:
        assert torch.equal(in_loss, ~truncated)
    else:
        assert in_loss.all()
    assert res.metrics["response_length/frac_truncated"] == pytest.approx(
        float(truncated.float().mean())
    )


def test_ppo_leaves_unscorable_samples_out_of_the_loss(tmp_path):
    def half_none(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [None if i % 2 else 1.0 for i in range(len(completions))]

    cfg = PPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=4, ppo_epochs=1,
                    **RL_COMMON)  # fmt: skip
    t = PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, half_none)
    seen: list[Any] = []
    original = t.loss

    def spy(micro: Any, n_tok: int, n_seq: int) -> Any:
        seen.append((micro["seq_index"].clone(), micro["response_mask"].any(dim=1)))
        return original(micro, n_tok, n_seq)

    t.loss = spy
    res = t.train()
    assert res.metrics["reward/frac_unscorable"] == 0.5
    assert_finite_metrics({k: v for k, v in res.metrics.items() if k != "explained_variance"})
    for idx, in_loss in seen:
        assert torch.equal(in_loss, idx % 2 == 0)


def test_ppo_unscorable_samples_after_a_fully_scored_step(tmp_path):
    """The buffer's fields are fixed by the first step: PPO stores its loss mask every step,
    so a step with unscorable samples after one without (or the reverse) still trains (it
    used to add the mask only when needed and stop with a FieldError)."""
    calls: list[int] = []

    def later_none(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        calls.append(1)
        return [None if len(calls) == 2 and i % 2 else 1.0 for i in range(len(completions))]

    cfg = PPOConfig(run_dir=str(tmp_path), total_steps=3, rollout_batch_size=4, ppo_epochs=1,
                    **RL_COMMON)  # fmt: skip
    t = PPOTrainer(cfg, policy(), tokenizer(), PROMPTS, later_none)
    res = t.train()
    assert res.step == 3 and len(calls) == 3
    rows = read_metrics(tmp_path)
    assert [r["reward/frac_unscorable"] for r in rows] == [0.0, 0.5, 0.0]


def test_weight_zero_sources_are_logged_not_optimised(tmp_path):
    def sometimes_none(prompts: list[str], completions: list[str], **_: Any) -> list[Any]:
        return [None if i % 2 else 5.0 for i in range(len(completions))]

    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=8,
                     reward_weights=[1.0, 0.0], **RL_COMMON)  # fmt: skip
    res = GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, [digit_reward, sometimes_none]).train()
    assert res.metrics["reward/frac_unscorable"] == 0.0
    assert res.metrics["reward/sometimes_none"] == 5.0
    assert res.metrics["reward/mean"] == pytest.approx(res.metrics["reward/digit_reward"])


def test_reward_columns_reach_reward_functions(tmp_path):
    seen: list[list[str]] = []

    def needs_answer(prompts, completions, answer):
        seen.append(list(answer))
        return [1.0 if c.startswith(a) else 0.0 for c, a in zip(completions, answer, strict=True)]

    prompts = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=4,
                     num_samples=2, **RL_COMMON)  # fmt: skip
    GRPOTrainer(cfg, policy(), tokenizer(), prompts, needs_answer).train()
    assert sorted(seen[0]) == ["2", "2", "4", "4"]


def test_nonfinite_loss_stops_with_a_dump(tmp_path):
    t = _grpo(tmp_path, total_steps=2)
    before = snapshot(t.policy)
    original = t.loss

    def nan_loss(micro: Any, n_tok: int, n_seq: int) -> Any:
        out = original(micro, n_tok, n_seq)
        return type(out)(out.loss * float("nan"), out.metrics)

    t.loss = nan_loss
    with pytest.raises(NonFiniteError, match="grad_norm") as info:
        t.train()
    assert info.value.step == 1
    dump = torch.load(info.value.dump_path, weights_only=False)
    assert {"input_ids", "response_mask", "advantages"} <= set(dump["batch"])
    # the poisoned step was not applied
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(t.policy), strict=True))


def test_infinite_reward_stops_with_a_dump(tmp_path):
    def explode(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [float("inf")] + [0.0] * (len(completions) - 1)

    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=8, **RL_COMMON)
    with pytest.raises(NonFiniteError, match="reward/explode") as info:
        GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, explode).train()
    dump = torch.load(info.value.dump_path, weights_only=False)
    assert len(dump["batch"]["completions"]) == 8


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    c.update(12.0, n_samples=10)  # KL twice the target: error clipped to +0.2
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    c.update(0.0, n_samples=10)  # far below: -0.2
    assert c.value == pytest.approx(0.1 * 1.02 * 0.98)


# ---------------------------------------------------------------------------------------------
# bad configs


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (GRPOConfig, dict(num_samples=1), "num_samples=1.*group size G must be >= 2"),
        (
            GRPOConfig,
            dict(num_samples=4, rollout_batch_size=10),
            "rollout_batch_size=10 is not divisible by num_samples=4.*e.g. 12",
        ),
        (GRPOConfig, dict(kl_coef=-0.1), "kl_coef=-0.1.*beta must be >= 0"),
        (GRPOConfig, dict(loss_type="bnpo"), "loss_type='bnpo'.*unknown loss type"),
        (GRPOConfig, dict(estimator="ppo"), "estimator='ppo'"),
        (GRPOConfig, dict(aggregation="token-sum"), "aggregation='token-sum'"),
        (GRPOConfig, dict(scale_rewards="std"), "scale_rewards='std'"),
        (GRPOConfig, dict(minibatch_size=5), "minibatch_size=5.*divisor"),
        (GRPOConfig, dict(dual_clip=0.5), "dual_clip=0.5"),
        (GRPOConfig, dict(kl_estimator="k4"), "kl_estimator='k4'"),
        (GRPOConfig, dict(temperature=0.0), "temperature=0.0"),
        (RLOOConfig, dict(num_samples=1), "num_samples=1"),
        (PPOConfig, dict(kl_coef=-1.0), "kl_coef=-1.0"),
        (PPOConfig, dict(lam=1.5), "lam=1.5"),
        (PPOConfig, dict(kl_target=0.0), "kl_target=0.0"),
        (PPOConfig, dict(value_init="random"), "value_init='random'"),
        (BestOfNConfig, dict(num_samples=1, rollout_batch_size=4), "num_samples=1.*N >= 2"),
    ],
)
def test_bad_configs(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, expect",
    [
        # REINFORCE++ needs no group: one sample per prompt is valid
        (ReinforcePPConfig, dict(num_samples=1, rollout_batch_size=3),
         dict(num_samples=1, prompts_per_step=3, aggregation="token-mean")),
        # loss_type sets the aggregation and the default scaling when they are 'auto'
        (GRPOConfig, dict(loss_type="dr_grpo"),
         dict(aggregation="seq-mean-token-sum-norm", scale_rewards="none")),
        (GRPOConfig, dict(loss_type="dapo", aggregation="token-mean", scale_rewards="batch"),
         dict(aggregation="token-mean", scale_rewards="batch")),
        (RLOOConfig, {}, dict(estimator="rloo", scale_rewards="none", kl_in_reward=True)),
        (PPOConfig, dict(kl_target=6.0, value_clip=None), dict(kl_target=6.0, value_clip=None)),
        (BestOfNConfig, dict(num_samples=2, rollout_batch_size=2), dict(prompts_per_step=1)),
    ],
)  # fmt: skip
def test_valid_configs_construct(cls, kwargs, expect):
    cfg = cls(**kwargs)
    assert {k: getattr(cfg, k) for k in expect} == expect


def test_reward_weights_must_match_sources(tmp_path):
    cfg = GRPOConfig(run_dir=str(tmp_path), reward_weights=[1.0, 2.0], **RL_COMMON)
    with pytest.raises(ValueError, match="one weight per reward"):
        GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward)


# ---------------------------------------------------------------------------------------------
# learning


def _accuracy(model: Any, rows: list[dict[str, str]]) -> float:
    comp = generate(
        model, tokenizer(), [r["prompt"] for r in rows], num_samples=4, max_new_tokens=3, seed=0
    )
    answers = [rows[g]["answer"] for g in comp.group_ids]
    return float(np.mean(tasks.arithmetic_reward(comp.prompts, comp.texts, answers)))


def test_grpo_raises_exact_match_accuracy(tmp_path):
    """Warm-start on a corpus whose answers are wrong half the time, then GRPO with the
    exact-match reward: accuracy on held-out problems goes up."""
    tok = tokenizer()
    model = policy()
    sft = SFTConfig(run_dir=str(tmp_path / "sft"), total_steps=150, learning_rate=3e-3,
                    batch_size=32, **FAST)  # fmt: skip
    corpus = tasks.arithmetic_sft_corpus(2000, max_operand=4, error_rate=0.5)
    SFTTrainer(sft, model, tok, corpus).train()
    held_out = tasks.arithmetic_dataset(64, seed=5, max_operand=4)
    before = _accuracy(model, held_out)

    cfg = GRPOConfig(
        run_dir=str(tmp_path / "grpo"),
        total_steps=60,
        learning_rate=2e-3,
        rollout_batch_size=64,
        num_samples=8,
        max_new_tokens=3,
        loss_type="dapo",
        **FAST,
    )
    prompts = tasks.arithmetic_dataset(256, seed=1, max_operand=4)
    GRPOTrainer(cfg, model, tok, prompts, tasks.arithmetic_reward).train()
    after = _accuracy(model, held_out)
    rows = read_metrics(tmp_path / "grpo")
    early = np.mean([r["reward/mean"] for r in rows[:5]])
    late = np.mean([r["reward/mean"] for r in rows[-5:]])
    # the measured values, for docs/trainers.md (shown by pytest -s)
    print(f"grpo accuracy {before:.3f} -> {after:.3f}; reward/mean {early:.3f} -> {late:.3f}")
    assert after >= before + 0.2, (before, after)
    assert late > early


#: the 2026 options against plain GRPO on the same warm start (GRPO's DAPO loss as above)
LEARNING_OPTIONS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "gspo": dict(importance_sampling_level="sequence", clip_low=3e-4, clip_high=4e-4,
                 loss_type="grpo"),
    "cispo": dict(loss_type="cispo", cispo_ratio_max=5.0),
    "dynamic_sampling": dict(dynamic_sampling=True, max_num_gen_batches=4),
}  # fmt: skip


def test_gspo_cispo_and_dynamic_sampling_raise_accuracy_like_grpo(tmp_path):
    """The setting of ``test_grpo_raises_exact_match_accuracy`` (one warm start, copied; one
    optimizer step per rollout), held-out accuracy every 15 of 60 steps: GSPO and CISPO lift
    it as GRPO does, and dynamic sampling reaches accuracy + 0.3 in no more optimizer steps
    than GRPO. (With one update per rollout the ratio is 1, where CISPO's gradient is the
    clipped surrogate's: CISPO and GRPO then train alike.)"""
    import copy

    tok = tokenizer()
    warm = policy()
    sft = SFTConfig(run_dir=str(tmp_path / "sft"), total_steps=150, learning_rate=3e-3,
                    batch_size=32, **FAST)  # fmt: skip
    corpus = tasks.arithmetic_sft_corpus(2000, max_operand=4, error_rate=0.5)
    SFTTrainer(sft, warm, tok, corpus).train()
    held_out = tasks.arithmetic_dataset(64, seed=5, max_operand=4)
    before = _accuracy(warm, held_out)
    prompts = tasks.arithmetic_dataset(256, seed=1, max_operand=4)
    checkpoints = (15, 30, 45, 60)
    curve: dict[str, list[float]] = {}
    for name, options in LEARNING_OPTIONS.items():
        model = copy.deepcopy(warm)
        kw: dict[str, Any] = dict(total_steps=60, learning_rate=2e-3, rollout_batch_size=64,
                                  num_samples=8, max_new_tokens=3, loss_type="dapo", **FAST)
        cfg = GRPOConfig(run_dir=str(tmp_path / name), **{**kw, **options})  # fmt: skip
        trainer = GRPOTrainer(cfg, model, tok, prompts, tasks.arithmetic_reward)
        curve[name] = []
        for stop in checkpoints:  # each call continues exactly from the last
            trainer.train(stop_at_step=stop)
            curve[name].append(_accuracy(model, held_out))
    # the measured values, for docs/trainers.md (shown by pytest -s)
    print(f"accuracy before {before:.3f}; at steps {checkpoints}: " +
          "; ".join(f"{k} " + " ".join(f"{a:.3f}" for a in v) for k, v in curve.items()))

    def steps_to(name: str, target: float) -> float:
        return next((s for s, a in zip(checkpoints, curve[name], strict=True) if a >= target),
                    float("inf"))

    for name in ("grpo", "gspo", "cispo", "dynamic_sampling"):
        assert curve[name][-1] >= before + 0.2, (name, before, curve)
    assert steps_to("dynamic_sampling", before + 0.3) <= steps_to("grpo", before + 0.3), curve


def test_ppo_raises_reward_model_score_with_bounded_kl(tmp_path):
    tok = tokenizer()
    rcfg = RewardConfig(run_dir=str(tmp_path / "rm"), total_steps=60, learning_rate=3e-3,
                        batch_size=16, eval_fraction=0.0, **FAST)  # fmt: skip
    rm = RewardModel.from_policy(policy(1))
    RewardTrainer(rcfg, rm, tok, count_pairs(200, seed=2)).train()

    cfg = PPOConfig(
        run_dir=str(tmp_path / "ppo"),
        total_steps=25,
        learning_rate=2e-3,
        rollout_batch_size=32,
        minibatch_size=16,
        ppo_epochs=2,
        max_new_tokens=8,
        kl_coef=0.05,
        kl_target=8.0,
        kl_horizon=1000,
        **FAST,
    )
    PPOTrainer(cfg, policy(), tok, PROMPTS, rm).train()
    rows = read_metrics(tmp_path / "ppo")
    early = np.mean([r["reward/mean"] for r in rows[:3]])
    late = np.mean([r["reward/mean"] for r in rows[-3:]])
    max_kl = max(r["kl"] for r in rows)
    # the measured values, for docs/trainers.md (shown by pytest -s)
    print(f"ppo reward/mean {early:.2f} -> {late:.2f}; max kl {max_kl:.2f} nats per sequence")
    assert late > early + 1.0, (early, late)
    assert max_kl < 30.0


def test_gradient_checkpointing_gives_the_same_update(tmp_path):
    """PPO with ``gradient_checkpointing``: the policy's and the value model's layers
    recompute their activations in the backward pass, and the gradients equal the plain
    run's (to float32 rounding)."""
    from rlhf_core.models import is_activation_checkpointing

    a = _ppo(tmp_path / "a", total_steps=1, ppo_epochs=1)
    b = _ppo(tmp_path / "b", total_steps=1, ppo_epochs=1, gradient_checkpointing=True)
    assert is_activation_checkpointing(b.policy) and is_activation_checkpointing(b.value_model)
    assert not is_activation_checkpointing(a.policy)
    calls = [count_layer_calls(m) for m in (a.policy, a.value_model, b.policy, b.value_model)]
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    assert len(calls[2]) > len(calls[0]) and len(calls[3]) > len(calls[1])  # recomputed
    for key in ("policy_loss", "value_loss", "reward/mean"):
        assert ra.metrics[key] == pytest.approx(rb.metrics[key], rel=1e-5, abs=1e-7), key
    assert_grads_close(ga, gb)


def test_gradient_checkpointing_needs_a_model_that_has_it(tmp_path):
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    t = _grpo(tmp_path, total_steps=1)
    t.config.gradient_checkpointing = True
    with pytest.raises(ValueError, match="gradient_checkpointing=true, but Plain has no"):
        t.wrap_trained(Plain())


def test_missing_eos_penalty_lowers_truncated_scores(tmp_path):
    def one(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [1.0] * len(completions)

    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=8,
                     **{**RL_COMMON, "max_new_tokens": 3}, missing_eos_penalty=0.5)
    t = GRPOTrainer(cfg, policy(), tokenizer(), PROMPTS, one)
    seen: list[Any] = []
    original = t.collector.score

    def spy(roll: Any, **kw: Any) -> None:
        original(roll, **kw)
        seen.append((roll.truncated.copy(), roll.scores.copy(), dict(roll.score_parts)))

    t.collector.score = spy  # type: ignore[method-assign]
    res = t.train()
    truncated, scores, parts = seen[0]
    assert truncated.any(), "with 3 new tokens most completions hit the limit"
    assert (~truncated).any(), "and some stop earlier (else penalising all would pass)"
    np.testing.assert_array_equal(scores, np.where(truncated, 0.5, 1.0))
    assert res.metrics["reward/mean"] == pytest.approx(float(scores.mean()))
    np.testing.assert_array_equal(next(iter(parts.values())), np.ones(len(scores)))  # raw
    with pytest.raises(ValueError, match="missing_eos_penalty"):
        GRPOConfig(run_dir=str(tmp_path), missing_eos_penalty=-1.0)


def test_reward_model_scores_under_the_trainers_autocast(tmp_path):
    """The reward model's forward runs inside the trainer's autocast context (bf16 on CUDA),
    like the policy's and the reference's: the collector scores under the trainer's context."""
    import contextlib

    t = _ppo(tmp_path, total_steps=1, ppo_epochs=1)
    assert t.collector.autocast == t.autocast
    depth = {"now": 0, "seen": []}

    @contextlib.contextmanager
    def recording():
        depth["now"] += 1
        try:
            yield
        finally:
            depth["now"] -= 1

    t.collector.autocast = recording
    scorer = next(s for s in t.reward_sources if hasattr(s, "score_ids"))
    original = scorer.score_ids

    def spy(seqs):
        depth["seen"].append(depth["now"])
        return original(seqs)

    scorer.score_ids = spy
    t.train()
    assert depth["seen"] and all(d >= 1 for d in depth["seen"])


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_in_reward_subtracts_the_summed_kl_from_the_scores(tmp_path, estimator):
    """RLOO with the KL in the reward: the advantages are those of the scores − β·Σ_t KL_t per
    sequence, against a numpy float64 reference (the reference model differs from the policy,
    so the KL is not 0)."""
    cfg = RLOOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=8, num_samples=4,
                     kl_coef=0.3, kl_in_reward=True, kl_estimator=estimator, **RL_COMMON)
    t = RLOOTrainer(cfg, policy(), tokenizer(), PROMPTS, digit_reward, reference=policy(seed=5))
    t.train()
    buf = t.buffer  # the step's rollout and advantages
    lp, ref = buf.field("logprobs"), buf.field("ref_logprobs")
    off = buf.offsets("response")
    want = []
    for a, b in zip(off[:-1], off[1:], strict=True):
        d = np.asarray(lp[a:b], np.float64) - np.asarray(ref[a:b], np.float64)
        kl = d if estimator == "k1" else np.exp(-d) + d - 1.0
        want.append(np.clip(kl, -10.0, 10.0).sum())
    assert np.abs(want).max() > 1e-3  # a real penalty
    penalised = buf.field("scores") - 0.3 * np.array(want)
    np.testing.assert_allclose(t.estimator.with_kl_coef(0.3).scores(buf), penalised, rtol=1e-9,
                               atol=1e-9)
    # the step's advantages are RLOO's of the penalised scores
    expect = ops.group_advantages(penalised.astype(np.float32), group_ids=buf.field("group_ids"),
                                  baseline="leave_one_out", scale="none")
    np.testing.assert_allclose(buf.field("advantages"), expect, rtol=1e-5, atol=1e-6)
    assert buf.advantages_info == {"estimator": "rloo", "level": "sequence", "has_returns": False}
