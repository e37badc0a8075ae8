"""SFT, reward-model and DPO trainers on the built-in tiny model: smoke (finite loss, every
trainable parameter changed), micro-batch invariance, bad configs, and the reward model
learning a known preference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf_core.models import RewardModel
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
    DPOConfig,
    DPOTrainer,
    RewardConfig,
    RewardTrainer,
    SFTConfig,
    SFTTrainer,
)

SFT_EXAMPLES = [("1+1=", "2"), ("2+2=", "4"), ("3+3=", "6"), {"text": "hello world"}] * 4


def _sft(tmp: Path, **kw) -> SFTTrainer:
    kw.setdefault("total_steps", 2)
    cfg = SFTConfig(run_dir=str(tmp), learning_rate=1e-3, batch_size=4, **FAST, **kw)
    return SFTTrainer(cfg, policy(), tokenizer(), SFT_EXAMPLES)


def _reward(tmp: Path, pairs=None, **kw) -> RewardTrainer:
    kw.setdefault("total_steps", 2)
    kw.setdefault("learning_rate", 1e-3)
    kw.setdefault("batch_size", 4)
    cfg = RewardConfig(run_dir=str(tmp), **FAST, **kw)
    rm = RewardModel.from_policy(policy())
    return RewardTrainer(cfg, rm, tokenizer(), pairs or count_pairs(40))


def _dpo(tmp: Path, **kw) -> DPOTrainer:
    kw.setdefault("total_steps", 2)
    cfg = DPOConfig(run_dir=str(tmp), learning_rate=1e-3, batch_size=4, **FAST, **kw)
    return DPOTrainer(cfg, policy(), tokenizer(), count_pairs(16))


# ---------------------------------------------------------------------------------------------
# smoke


def test_sft_smoke(tmp_path):
    t = _sft(tmp_path)
    before = snapshot(t.model)
    res = t.train()
    assert res.step == 2
    assert_finite_metrics(res.metrics)
    assert res.metrics["tokens"] > 0
    assert_all_changed(before, t.model)
    assert (tmp_path / "metrics.jsonl").exists()


def test_reward_smoke(tmp_path):
    t = _reward(tmp_path)
    before = snapshot(t.model)
    res = t.train()
    assert_finite_metrics(res.metrics)
    assert {"accuracy", "margin", "eval/accuracy", "eval/margin"} <= set(res.metrics)
    assert_all_changed(before, t.model)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_smoke(tmp_path, loss_type):
    t = _dpo(tmp_path, loss_type=loss_type)
    before = snapshot(t.policy)
    ref_before = snapshot_all(t.reference)
    res = t.train()
    assert_finite_metrics(res.metrics)
    assert_all_changed(before, t.policy)
    # the reference stayed frozen
    assert_unchanged(ref_before, t.reference)
    assert not any(p.requires_grad for p in t.reference.parameters())


def test_dpo_lora_trains_only_the_adapters(tmp_path):
    pytest.importorskip("peft")
    from rlhf_core.models import ReferenceModel

    t = _dpo(tmp_path, lora_r=4, lora_alpha=8.0)
    assert isinstance(t.reference, ReferenceModel)
    frozen = {n: p.detach().clone() for n, p in t.policy.named_parameters() if not p.requires_grad}
    before = snapshot(t.policy)
    assert before and all("lora_" in n for n, p in t.policy.named_parameters() if p.requires_grad)
    res = t.train()
    assert_finite_metrics(res.metrics)
    assert_all_changed(before, t.policy)
    assert frozen and all(torch.equal(p.detach(), frozen[n])
                          for n, p in t.policy.named_parameters() if n in frozen)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# micro-batch invariance: one step with micro batches of 4 equals micro batches of 1


def test_sft_micro_batch_invariance(tmp_path):
    a = _sft(tmp_path / "a", micro_batch_size=None, total_steps=1)
    b = _sft(tmp_path / "b", micro_batch_size=1, total_steps=1)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    assert ra.metrics["loss"] == pytest.approx(rb.metrics["loss"], rel=1e-5)
    assert_grads_close(ga, gb)


def test_reward_micro_batch_invariance(tmp_path):
    a = _reward(tmp_path / "a", total_steps=1, center_coef=0.01)
    b = _reward(tmp_path / "b", total_steps=1, center_coef=0.01, micro_batch_size=1)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    assert ra.metrics["loss"] == pytest.approx(rb.metrics["loss"], rel=1e-5)
    assert ra.metrics["accuracy"] == pytest.approx(rb.metrics["accuracy"])
    assert_grads_close(ga, gb)


def test_dpo_micro_batch_invariance(tmp_path):
    a = _dpo(tmp_path / "a", total_steps=1)
    b = _dpo(tmp_path / "b", total_steps=1, micro_batch_size=1)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    assert ra.metrics["loss"] == pytest.approx(rb.metrics["loss"], rel=1e-5)
    assert_grads_close(ga, gb)


@pytest.mark.parametrize("make", [_sft, _reward, _dpo], ids=["sft", "reward", "dpo"])
def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, make):
    from rlhf_core.models import is_activation_checkpointing

    a = make(tmp_path / "a", total_steps=1)
    b = make(tmp_path / "b", total_steps=1, gradient_checkpointing=True)
    trained = getattr(b, "model", None) or b.policy
    assert is_activation_checkpointing(trained)
    calls_a, calls_b = count_layer_calls(a.trained_model), count_layer_calls(b.trained_model)
    ga, gb = capture_grads(a), capture_grads(b)
    ra, rb = a.train(), b.train()
    assert len(calls_b) > len(calls_a)  # the layers ran again in the backward
    assert ra.metrics["loss"] == pytest.approx(rb.metrics["loss"], rel=1e-5)
    assert_grads_close(ga, gb)


# ---------------------------------------------------------------------------------------------
# learning


def test_reward_model_learns_known_preference(tmp_path):
    """Pairs labelled by a hidden reward (count of "ab"): held-out accuracy gets high."""
    t = _reward(
        tmp_path,
        pairs=count_pairs(240, seed=1),
        total_steps=60,
        learning_rate=3e-3,
        batch_size=16,
        eval_fraction=0.25,
    )
    start = t.evaluate()
    res = t.train()
    assert res.metrics["eval/accuracy"] >= 0.9, (start, res.metrics)
    assert res.metrics["eval/margin"] > 1.0
    assert start["accuracy"] < 0.7  # the untrained model is near chance


# ---------------------------------------------------------------------------------------------
# bad configs


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (SFTConfig, dict(batch_size=0), "batch_size=0"),
        (SFTConfig, dict(aggregation="token-sum"), "aggregation='token-sum'"),
        (SFTConfig, dict(aggregation="seq-mean-token-sum-norm"), "set max_length"),
        (RewardConfig, dict(center_coef=-0.1), "center_coef=-0.1"),
        (RewardConfig, dict(eval_fraction=1.0), "eval_fraction=1.0"),
        (DPOConfig, dict(beta=-0.1), "beta=-0.1"),
        (DPOConfig, dict(loss_type="hinge"), "loss_type='hinge'.*unknown loss type"),
        (DPOConfig, dict(label_smoothing=0.6), "label_smoothing=0.6"),
        (DPOConfig, dict(loss_type="ipo", label_smoothing=0.1), "set it to 0 for ipo"),
    ],
)
def test_bad_configs(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bad_data_names_the_row(tmp_path):
    cfg = SFTConfig(run_dir=str(tmp_path), **FAST)
    with pytest.raises(ValueError, match=r"examples\[1\]"):
        SFTTrainer(cfg, policy(), tokenizer(), ["ok", {"question": "x"}])
    rcfg = RewardConfig(run_dir=str(tmp_path), **FAST)
    with pytest.raises(ValueError, match=r"pairs\[0\].*'rejected'"):
        RewardTrainer(rcfg, RewardModel.from_policy(policy()), tokenizer(), [{"chosen": "a"}])
