"""PPO and GRPO against the proxy. Both start from a copy of the SFT policy, optimise the
reward model (weight 1; an ensemble reduced by the method's ``ensemble_reduce``) while logging
the check model's and the gold reward of every rollout (reward sources of weight 0, so
``metrics.jsonl`` has proxy, each member, the disagreement, check, gold and KL at every step),
and are evaluated every ``eval_every`` steps by :class:`~rlhf_core.demo.language.LanguageEval`.
They differ only in the trainer: PPO has a value model (initialised from the reward model, an
ensemble's first member) and a per-token KL penalty in the reward; GRPO samples
``num_samples`` completions per prompt and has a k3 KL term in the loss."""

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
    """Run ``method`` (``"ppo"`` or ``"grpo"``) from ``sft`` against the reward model ``rm``
    (a reward model or ensemble; ``lang.check`` is logged beside it); ``baseline`` is the
    step-0 record. Returns ``{"records": [...]}`` (one per evaluation)."""
    c: Any
    if method == "ppo":
        c = run.cfg.ppo
        title = f"PPO against the proxy ({c.steps} steps, kl_coef {c.kl_coef:g}"
    elif method == "grpo":
        c = run.cfg.grpo
        title = f"GRPO against the proxy ({c.steps} steps, G={c.num_samples}, kl_coef {c.kl_coef:g}"
    else:
        raise ValueError(f"method={method!r}: expected 'ppo' or 'grpo'")
    if getattr(rm, "num_members", None) is not None:
        lam = f", lambda {c.ensemble_lambda:g}" if c.ensemble_reduce.startswith("mean_") else ""
        title += f", ensemble reduced by {c.ensemble_reduce}{lam}"
    title += ")"
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


def _rewards(run: Run, lang: LanguageEval, rm: Any, c: Any) -> tuple[list[Any], list[float]]:
    """The reward sources of a run and their weights: the proxy (weight 1; an ensemble
    reduced by ``c.ensemble_reduce``), the check model (0) when there is one, the gold reward
    (0). The proxy is logged as ``reward/reward_model`` either way."""
    from rlhf_core import tasks
    from rlhf_core.rewards.ensemble import RewardEnsembleScorer

    proxy: Any = rm
    if getattr(rm, "num_members", None) is not None:
        proxy = RewardEnsembleScorer(
            rm, run.tok, reduce=c.ensemble_reduce, lam=c.ensemble_lambda, name="reward_model"
        )
    sources: list[Any] = [proxy]
    if lang.check is not None:
        sources.append(lang.check)
    sources.append(tasks.gold_reward)
    return sources, [1.0] + [0.0] * (len(sources) - 1)


def _ppo(run: Run, lang: LanguageEval, policy: Any, rm: Any) -> Any:
    from rlhf_core.trainers.ppo import PPOConfig, PPOTrainer

    c = run.cfg.ppo
    rewards, weights = _rewards(run, lang, rm, c)
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
        reward_weights=weights,
    )
    return PPOTrainer(config, policy, run.tok, _prompts(run), rewards, reference=lang.reference)


def _grpo(run: Run, lang: LanguageEval, policy: Any, rm: Any) -> Any:
    from rlhf_core.trainers.grpo import GRPOConfig, GRPOTrainer

    c = run.cfg.grpo
    rewards, weights = _rewards(run, lang, rm, c)
    config = GRPOConfig(
        **run.trainer_fields("grpo"),
        total_steps=c.steps,
        learning_rate=c.learning_rate,
        rollout_batch_size=c.prompts_per_step * c.num_samples,
        num_samples=c.num_samples,
        max_new_tokens=run.cfg.max_new_tokens,
        kl_coef=c.kl_coef,
        reward_weights=weights,
    )
    return GRPOTrainer(config, policy, run.tok, _prompts(run), rewards, reference=lang.reference)
