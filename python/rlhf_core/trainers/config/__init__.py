"""The config dataclasses every trainer builds on.

- :class:`TrainerConfig`: run folder, steps, optimiser, schedule, checkpoints, logging,
  device, parallelism, LoRA, chat-template options; every trainer's config subclasses it.
- :class:`GenerationFields`: which rollout backend samples (``generation_backend``) and the
  vLLM engine's settings; in every :class:`RolloutConfig` and in the CLI's ``label`` / ``eval``.
- :class:`RolloutConfig`: what a trainer that samples from its policy adds (batch of
  completions, sampling, reward weights, weight sync, the reference); best-of-N and the
  policy-gradient trainers.
- :class:`RLConfig`: the policy-gradient fields (epochs, minibatches, clipping, aggregation,
  KL, entropy, rollout/trainer mismatch correction); PPO, GRPO, RLOO, REINFORCE++.

Every field carries ``metadata["help"]`` (the CLI builds its flags from them) and every
``__post_init__`` rejects a bad value with a message naming the field, its value and the fix.
One module per class: ``base`` (:class:`TrainerConfig`, ``LR_SCHEDULERS``), ``rollout``
(:class:`RolloutConfig`), ``rl`` (:class:`RLConfig`); ``generation_fields`` beside them.
"""

from rlhf_core.trainers.config.base import LR_SCHEDULERS, TrainerConfig
from rlhf_core.trainers.config.rl import RLConfig
from rlhf_core.trainers.config.rollout import RolloutConfig
from rlhf_core.trainers.generation_fields import GenerationFields

__all__ = ["GenerationFields", "LR_SCHEDULERS", "RLConfig", "RolloutConfig", "TrainerConfig"]
