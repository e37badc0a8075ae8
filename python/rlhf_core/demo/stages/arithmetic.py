"""Part two, a verifiable reward: a second built-in model learns arithmetic (``a+b=``) by SFT
on a corpus whose answers are wrong ``error_rate`` of the time, then GRPO with the
exact-answer reward (:func:`rlhf_core.tasks.arithmetic_reward`) raises the share of right
answers. Accuracy is measured on a fixed problem set, on ``eval_samples`` samples per problem
at temperature 1 and on greedy decoding, every ``eval_every`` GRPO steps.

Folders: ``arithmetic/sft/`` (with ``model/`` and its own ``stage.json`` so a rerun skips the
SFT part) and ``arithmetic/grpo/``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rlhf_core.demo.config import DemoArithmetic
from rlhf_core.demo.pipeline import Run
from rlhf_core.evaluation import evaluate_policy

__all__ = ["arithmetic"]

#: Most tokens of an answer (the sum or difference of two operands, and EOS).
_ANSWER_TOKENS = 6


def arithmetic(run: Run) -> dict[str, Any]:
    """Run part two (or read its results, when done): accuracy before and after GRPO, with
    greedy accuracy and every evaluation record."""
    from rlhf_core import tasks
    from rlhf_core.trainers.grpo import GRPOConfig, GRPOTrainer

    cfg, c = run.cfg, run.cfg.arithmetic
    run.header(
        f"verifiable reward: GRPO on arithmetic (operands 0..{c.max_operand}, answers "
        f"checked exactly); SFT first on answers that are wrong {c.error_rate:.0%} of the time"
    )
    data = run.done("arithmetic")
    if data is not None:
        run.say(
            f"  done before: accuracy {data['accuracy_before']:.3f} -> {data['accuracy_after']:.3f}"
        )
        return data
    t0 = time.time()
    policy = _sft(run, c)
    rows = tasks.arithmetic_dataset(
        c.eval_prompts, seed=cfg.seed + 21, max_operand=c.max_operand, ops=c.ops
    )
    problems = [r["prompt"] for r in rows]
    answers = [r["answer"] for r in rows]
    trainer = GRPOTrainer(
        GRPOConfig(
            **run.trainer_fields("arithmetic/grpo"),
            total_steps=c.grpo_steps,
            learning_rate=c.learning_rate,
            rollout_batch_size=c.prompts_per_step * c.num_samples,
            num_samples=c.num_samples,
            max_new_tokens=_ANSWER_TOKENS,
            kl_coef=0.0,
        ),
        policy,
        run.tok,
        tasks.arithmetic_dataset(4096, seed=cfg.seed + 22, max_operand=c.max_operand, ops=c.ops),
        tasks.arithmetic_reward,
    )
    records = run.train_with_evals(
        trainer,
        "arithmetic grpo",
        c.eval_every,
        lambda s: _accuracy(run, policy, s, problems, answers),
        None,
    )
    first, last = records[0], records[-1]
    data = run.finish(
        "arithmetic",
        {
            "accuracy_before": first["accuracy"],
            "accuracy_after": last["accuracy"],
            "greedy_before": first["greedy_accuracy"],
            "greedy_after": last["greedy_accuracy"],
            "num_prompts": len(problems),
            "records": records,
        },
        t0,
    )
    run.say(
        f"  accuracy of samples (temperature 1) {first['accuracy']:.3f} -> "
        f"{last['accuracy']:.3f}; greedy {first['greedy_accuracy']:.3f} -> "
        f"{last['greedy_accuracy']:.3f}"
    )
    return data


def _sft(run: Run, c: DemoArithmetic) -> Any:
    """The arithmetic SFT policy: trained on the noisy corpus, or loaded when done."""
    from rlhf_core import tasks
    from rlhf_core.models import build_builtin_policy, load_policy
    from rlhf_core.trainers.sft import SFTConfig, SFTTrainer

    sft_dir = run.root / "arithmetic" / "sft"
    model_dir = sft_dir / "model"
    if (sft_dir / "stage.json").is_file() and model_dir.is_dir() and run.cfg.resume:
        return load_policy(model_dir, device=run.device())
    policy = build_builtin_policy(run.tok, seed=run.cfg.seed + 7, size=c.model_size)
    corpus = tasks.arithmetic_sft_corpus(
        c.corpus_size,
        seed=run.cfg.seed,
        max_operand=c.max_operand,
        ops=c.ops,
        error_rate=c.error_rate,
    )
    fields = run.trainer_fields("arithmetic/sft")
    fields["progress_bar"] = run.cfg.progress_bar
    SFTTrainer(
        SFTConfig(
            **fields,
            total_steps=c.sft_steps,
            batch_size=c.sft_batch_size,
            learning_rate=c.sft_learning_rate,
            lr_scheduler="cosine",
            warmup_steps=min(20, c.sft_steps - 1),
            save_every=max(1, c.sft_steps // 4),
        ),
        policy,
        run.tok,
        [(r["prompt"], r["completion"]) for r in corpus],
    ).train()
    run.save_model(policy, model_dir)
    (sft_dir / "stage.json").write_text("{}", encoding="utf-8")
    return policy


def _accuracy(
    run: Run, policy: Any, step: int, problems: list[str], answers: list[str]
) -> dict[str, Any]:
    """The record of ``policy`` at ``step``: exact-answer accuracy of samples at temperature 1
    and of greedy decoding, and the first sample of the first three problems."""
    from rlhf_core import tasks

    n = run.cfg.arithmetic.eval_samples
    scorers = {"exact": tasks.arithmetic_reward}
    common: dict[str, Any] = {
        "columns": {"answer": answers},
        "max_new_tokens": _ANSWER_TOKENS,
        "batch_size": 512,
    }
    sampled = evaluate_policy(
        policy, run.tok, problems, scorers, num_samples=n, seed=run.eval_seed + 2, **common
    )
    greedy = evaluate_policy(policy, run.tok, problems, scorers, temperature=0.0, **common)
    return {
        "step": int(step),
        "accuracy": float(np.nanmean(sampled.scores["exact"])),
        "greedy_accuracy": float(np.nanmean(greedy.scores["exact"])),
        "samples": [
            {"prompt": sampled.prompts[i * n], "text": sampled.texts[i * n], "answer": answers[i]}
            for i in range(3)
        ],
    }
