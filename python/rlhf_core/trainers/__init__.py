"""Trainers: orchestration of rollout, scoring, the Rust buffer and kernels, losses, optimiser
steps, metrics and checkpoints. Each trainer has a validated config dataclass
(:mod:`.config` holds the shared ones).

- :class:`SFTTrainer` / :class:`SFTConfig`: supervised fine-tuning.
- :class:`RewardTrainer` / :class:`RewardConfig`: Bradley–Terry reward model from pairs.
- :class:`PPOTrainer` / :class:`PPOConfig`: PPO with a value model, GAE, KL-shaped rewards.
- :class:`GRPOTrainer` / :class:`GRPOConfig`: GRPO, Dr.GRPO, DAPO options; RLOO and
  REINFORCE++ through :class:`RLOOTrainer` / :class:`ReinforcePPTrainer` (estimator options).
- :class:`BestOfNTrainer` / :class:`BestOfNConfig`: rejection sampling + SFT.
- :class:`DPOTrainer` / :class:`DPOConfig`: DPO and IPO.

Every trainer takes ``callbacks=[...]`` (:mod:`.callbacks`: hooks on the step loop that read
the metrics and can stop training; the NaN tripwire is the default one); the sampling trainers
take ``eval_dataset=`` (periodic evaluation, ``eval_steps``) and log their completions with
``log_completions``; every trainer reports to ``report_to`` (:mod:`rlhf_core.monitor`).

A custom policy-gradient trainer is :class:`PolicyGradientTrainer` with an estimator of
:mod:`rlhf_core.advantages` (``OnPolicyTrainer`` is its old name); a trainer that only samples
and scores subclasses :class:`RolloutTrainer`. ``docs/architecture.md`` maps the modules.

Submodules are imported on first use, so importing one trainer does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": "loop",
    "TrainResult": "loop",
    "TrainerConfig": "config",
    "RolloutConfig": "config",
    "RLConfig": "config",
    "RolloutTrainer": "sampling",
    "PolicyGradientTrainer": "policy_gradient",
    "OnPolicyTrainer": "policy_gradient",
    "SFTTrainer": "sft",
    "SFTConfig": "sft",
    "RewardTrainer": "reward",
    "RewardConfig": "reward",
    "PairTrainer": "pairwise",
    "PPOTrainer": "ppo",
    "PPOConfig": "ppo",
    "AdaptiveKLController": "ppo",
    "FixedKLController": "ppo",
    "GRPOTrainer": "grpo",
    "GRPOConfig": "grpo",
    "RLOOTrainer": "grpo",
    "RLOOConfig": "grpo",
    "ReinforcePPTrainer": "grpo",
    "ReinforcePPConfig": "grpo",
    "BestOfNTrainer": "best_of_n",
    "BestOfNConfig": "best_of_n",
    "DPOTrainer": "dpo",
    "DPOConfig": "dpo",
    "TrainerCallback": "callbacks",
    "TrainerState": "callbacks",
    "TrainerControl": "callbacks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"rlhf_core.trainers.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'rlhf_core.trainers' has no attribute {name!r}")
