"""PPO and GRPO against the proxy. Both start from a copy of the SFT policy, optimise the
reward model (weight 1) while logging the gold reward of every rollout (a reward source of
weight 0, so ``metrics.jsonl`` has proxy, gold and KL at every step), and are evaluated every
``eval_every`` steps by :class:`~rlhf_core.demo.language.LanguageEval`. They differ only in
the trainer: PPO has a value model (initialised from the reward model) and a per-token KL
penalty in the reward; GRPO samples ``num_samples`` completions per prompt and has a k3 KL
term in the loss."""

from __future__ import annotations

import copy
import time
from typing import Any

from rlhf_core.demo.language import LanguageEval, say_curve
from rlhf_core.demo.pipeline import Run

__all__ = ["train_rl"]


def train_rl(
    run: Run, lang: LanguageEval, method: str, sft: Any, rm: Any, baseline: dict[str, Any]
) -> dict[str, Any]:
    """Run ``method`` (``"ppo"`` or ``"grpo"``) from ``sft`` against the reward model ``rm``;
    ``baseline`` is the step-0 record. Returns ``{"records": [...]}`` (one per evaluation)."""
    if method == "ppo":
        c = run.cfg.ppo
        title = f"PPO against the proxy ({c.steps} steps, kl_coef {c.kl_coef:g})"
    elif method == "grpo":
        g = run.cfg.grpo
        title = (
            f"GRPO against the proxy ({g.steps} steps, G={g.num_samples}, kl_coef {g.kl_coef:g})"
        )
    else:
        raise ValueError(f"method={method!r}: expected 'ppo' or 'grpo'")
    run.header(title)
    data = run.done(method)
    if data is not None:
        say_curve(run, data["records"])
        return data
    t0 = time.time()
    policy = copy.deepcopy(sft)
    trainer = (_ppo if method == "ppo" else _grpo)(run, lang, policy, rm)
    every = run.cfg.ppo.eval_every if method == "ppo" else run.cfg.grpo.eval_every
    records = run.train_with_evals(trainer, method, every, lambda s: lang(policy, s), baseline)
    say_curve(run, records)
    return run.finish(method, {"records": records}, t0)


def _prompts(run: Run) -> list[str]:
    from rlhf_core import tasks

    return tasks.prompt_set(4096, seed=run.cfg.seed + 5)


def _ppo(run: Run, lang: LanguageEval, policy: Any, rm: Any) -> Any:
    from rlhf_core import tasks
    from rlhf_core.trainers.ppo import PPOConfig, PPOTrainer

    c = run.cfg.ppo
    config = PPOConfig(
        **run.trainer_fields("ppo"),
        total_steps=c.steps,
        learning_rate=c.learning_rate,
        value_learning_rate=c.value_learning_rate,
        rollout_batch_size=c.rollout_batch_size,
        minibatch_size=c.minibatch_size,
        ppo_epochs=c.ppo_epochs,
        max_new_tokens=run.cfg.max_new_tokens,
        kl_coef=c.kl_coef,
        reward_weights=[1.0, 0.0],
    )
    rewards = [rm, tasks.gold_reward]
    return PPOTrainer(config, policy, run.tok, _prompts(run), rewards, reference=lang.reference)


def _grpo(run: Run, lang: LanguageEval, policy: Any, rm: Any) -> Any:
    from rlhf_core import tasks
    from rlhf_core.trainers.grpo import GRPOConfig, GRPOTrainer

    c = run.cfg.grpo
    config = GRPOConfig(
        **run.trainer_fields("grpo"),
        total_steps=c.steps,
        learning_rate=c.learning_rate,
        rollout_batch_size=c.prompts_per_step * c.num_samples,
        num_samples=c.num_samples,
        max_new_tokens=run.cfg.max_new_tokens,
        kl_coef=c.kl_coef,
        reward_weights=[1.0, 0.0],
    )
    rewards = [rm, tasks.gold_reward]
    return GRPOTrainer(config, policy, run.tok, _prompts(run), rewards, reference=lang.reference)
