"""DPO on the reward model's training pairs: it learns from the labels, not from the proxy,
starting from a copy of the SFT policy with the SFT policy as reference; evaluated like PPO
and GRPO (:class:`~rlhf_core.demo.language.LanguageEval`) every ``eval_every`` steps."""

from __future__ import annotations

import copy
import time
from typing import Any

from rlhf_core.demo.language import LanguageEval, say_curve
from rlhf_core.demo.pipeline import Run

__all__ = ["train_dpo"]


def train_dpo(
    run: Run, lang: LanguageEval, sft: Any, train: list[dict], baseline: dict[str, Any]
) -> dict[str, Any]:
    """Run DPO from ``sft`` on the preference pairs ``train``; ``baseline`` is the step-0
    record. Returns ``{"records": [...]}`` (one per evaluation)."""
    from rlhf_core.trainers.dpo import DPOConfig, DPOTrainer

    c = run.cfg.dpo
    run.header(f"DPO on the reward model's training pairs ({c.steps} steps, beta {c.beta:g})")
    data = run.done("dpo")
    if data is not None:
        say_curve(run, data["records"])
        return data
    t0 = time.time()
    policy = copy.deepcopy(sft)
    trainer = DPOTrainer(
        DPOConfig(
            **run.trainer_fields("dpo"),
            total_steps=c.steps,
            learning_rate=c.learning_rate,
            batch_size=c.batch_size,
            beta=c.beta,
        ),
        policy,
        run.tok,
        [(r["prompt"], r["chosen"], r["rejected"]) for r in train],
        reference=lang.reference,
    )
    records = run.train_with_evals(
        trainer, "dpo", c.eval_every, lambda s: lang(policy, s), baseline
    )
    say_curve(run, records)
    return run.finish("dpo", {"records": records}, t0)
