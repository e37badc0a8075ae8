"""On-policy distillation: the teacher term of the advantages against slime's formula (re-typed
from the research note), mixed with a task estimator or alone; the trainer with a frozen
teacher under inference mode; a larger built-in model distilled into a smaller one (the KL to
the teacher falls); the CLI flag."""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import torch

from rlhf_core import cli, tasks
from rlhf_core.advantages import GroupRelative, TeacherKL, teacher_reverse_kl
from rlhf_core.buffer import RolloutBuffer
from rlhf_core.models import build_builtin_policy
from rlhf_core.monitor import read_metrics
from rlhf_core.testing.trainers import (
    FAST,
    assert_unchanged,
    policy,
    snapshot_all,
    tokenizer,
)
from rlhf_core.trainers import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer


def _buffer(rng: np.random.Generator, n: int = 8, g: int = 4) -> RolloutBuffer:
    lengths = rng.integers(1, 7, n)
    buf = RolloutBuffer(float_dtype="float64")
    lp = [-rng.random(k) * 3 for k in lengths]
    buf.add(
        prompt_ids=[np.array([1, 5])] * n,
        response_ids=[rng.integers(4, 50, k) for k in lengths],
        logprobs=lp,
        ref_logprobs=[x + 0.1 for x in lp],
        teacher_logprobs=[x - rng.normal(0, 8, x.shape) for x in lp],  # some beyond ±10
        scores=rng.integers(0, 2, n).astype(float),
        group_ids=np.repeat(np.arange(n // g), g),
    )
    return buf


def slime_opd(advantages_per_token, lp_old, lp_teacher, coef):
    """slime ``loss.apply_opd_kl_to_advantages``: A_t ← A_t − λ·(lp_old,t − lp_teacher,t)."""
    return [
        a - coef * (o - t) for a, o, t in zip(advantages_per_token, lp_old, lp_teacher, strict=True)
    ]


@pytest.mark.parametrize("coef", [0.0, 0.5, 1.0])
def test_teacher_term_mixed_with_grpo_is_slimes(rng, coef):
    buf = _buffer(rng)
    off = buf.offsets("response")
    split = lambda x: [x[off[i] : off[i + 1]] for i in range(len(buf))]  # noqa: E731
    base = GroupRelative.grpo(eps=1e-4)
    base.compute(buf)
    seq_adv = buf.field("advantages").copy()
    TeacherKL(base=base, coef=coef, clamp=None).compute(buf)
    got = split(buf.field("advantages"))
    expected = slime_opd(
        [np.full(off[i + 1] - off[i], seq_adv[i]) for i in range(len(buf))],
        split(buf.field("logprobs")),
        split(buf.field("teacher_logprobs")),
        coef,
    )
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert buf.advantages_info == {
        "estimator": "teacher_kl",
        "level": "token",
        "has_returns": False,
    }


def test_teacher_term_alone_and_clamped(rng):
    buf = _buffer(rng)
    d = buf.field("logprobs") - buf.field("teacher_logprobs")
    assert np.abs(d).max() > 10  # the clamp binds somewhere
    stats = TeacherKL(coef=0.5).compute(buf)
    np.testing.assert_allclose(buf.field("advantages"), -0.5 * np.clip(d, -10, 10), rtol=1e-12)
    np.testing.assert_allclose(teacher_reverse_kl(buf, clamp=None), d, rtol=1e-12)
    assert stats.mean is not None and stats.groups is None


def test_teacher_term_needs_teacher_logprobs():
    buf = RolloutBuffer()
    buf.add(prompt_ids=[np.array([1])], response_ids=[np.array([4, 5])],
            logprobs=[np.zeros(2, np.float32)], scores=[1.0])  # fmt: skip
    with pytest.raises(ValueError, match="teacher_logprobs"):
        TeacherKL().compute(buf)
    with pytest.raises(ValueError, match="teacher_kl_coef=-1"):
        TeacherKL(coef=-1)


def test_coefficient_zero_is_the_task_estimator(tmp_path):
    """λ = 0: the per-token advantages are the task's broadcast, so the step is GRPO's."""
    dense = lambda p, c, **_: [len(t) + 0.1 * sum(map(ord, t)) for t in c]  # noqa: E731
    out = []
    for teacher in (None, policy(7)):
        cfg = GRPOConfig(run_dir=str(tmp_path / str(teacher is None)), total_steps=2,
                         rollout_batch_size=8, num_samples=4, max_new_tokens=4,
                         teacher_kl_coef=0.0, **FAST)  # fmt: skip
        t = GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], dense, teacher_model=teacher)
        out.append(t.train().metrics)
    assert "teacher_kl" in out[1] and "teacher_kl" not in out[0]
    for key in ("reward/mean", "policy_loss", "grad_norm"):  # (advantage stats: per token)
        assert out[0][key] == pytest.approx(out[1][key], rel=1e-6, abs=1e-9), key


def test_distilling_a_larger_builtin_model_into_a_smaller_one(tmp_path):
    """A small built-in model fine-tuned on arithmetic teaches a random tiny one, with no task
    reward at all: the reverse KL to the teacher on the student's samples falls; the teacher
    stays frozen."""
    tok = tokenizer()
    teacher = build_builtin_policy(tok, seed=1, size="small")
    sft = SFTConfig(run_dir=str(tmp_path / "sft"), total_steps=20, learning_rate=5e-3,
                    batch_size=16, **FAST)  # fmt: skip
    SFTTrainer(
        sft, teacher, tok, tasks.arithmetic_sft_corpus(400, max_operand=2, error_rate=0.0)
    ).train()
    frozen = snapshot_all(teacher)
    student = build_builtin_policy(tok, seed=0, size="tiny")
    cfg = GRPOConfig(run_dir=str(tmp_path / "distill"), total_steps=14, rollout_batch_size=16,
                     num_samples=4, learning_rate=1e-2, max_new_tokens=3, **FAST)  # fmt: skip
    prompts = tasks.arithmetic_dataset(32, seed=1, max_operand=2)
    t = GRPOTrainer(cfg, student, tok, prompts, None, teacher_model=teacher)
    assert t.teacher is not None and not any(p.requires_grad for p in t.teacher.parameters())
    t.train()
    kl = [r["teacher_kl"] for r in read_metrics(tmp_path / "distill")]
    early, late = np.mean(kl[:3]), np.mean(kl[-3:])
    print(f"teacher_kl {early:.2f} -> {late:.2f} nats per sequence")
    assert late < 0.8 * early, kl
    assert_unchanged(frozen, teacher)


def test_teacher_forward_runs_in_inference_mode(tmp_path):
    seen: list[bool] = []
    teacher = policy(3)
    # token_logprobs runs the body, then the head in chunks: watch the body
    teacher.model.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=4, num_samples=2,
                     max_new_tokens=3, **FAST)  # fmt: skip
    GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], None, teacher_model=teacher).train()
    assert seen and all(seen)


def test_teacher_by_name_and_a_vocabulary_mismatch(tmp_path):
    cfg = GRPOConfig(run_dir=str(tmp_path), total_steps=1, rollout_batch_size=4, num_samples=2,
                     max_new_tokens=3, **FAST)  # fmt: skip
    t = GRPOTrainer(cfg, policy(), tokenizer(), ["Q:"], None, teacher_model="builtin:small")
    assert sum(p.numel() for p in t.teacher.parameters()) > sum(
        p.numel() for p in t.policy.parameters()
    )
    from transformers import LlamaForCausalLM

    from rlhf_core.models import tiny_config

    small_vocab = LlamaForCausalLM(tiny_config(20))
    with pytest.raises(ValueError, match="teacher_model has 20 output tokens"):
        GRPOTrainer(cfg, policy(), tokenizer(), ["Q:"], None, teacher_model=small_vocab)
    with pytest.raises(ValueError, match="reward_funcs is empty"):
        GRPOTrainer(cfg, policy(), tokenizer(), ["Q:"], None)


def test_cli_teacher_flag(tmp_path: pathlib.Path, capsys: Any) -> None:
    run = tmp_path / "distill"
    rc = cli.main([
        "grpo", "--model", "builtin", "--dataset", "builtin:arithmetic", "--run_dir", str(run),
        "--total_steps", "1", "--rollout_batch_size", "8", "--max_new_tokens", "4",
        "--device", "cpu", "--progress_bar", "false", "--tensorboard", "false",
        "--reward_funcs", "", "--teacher_model", "builtin:small", "--teacher_kl_coef", "0.5",
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "teacher_kl" in read_metrics(run)[-1]
