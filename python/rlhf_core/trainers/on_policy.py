"""Old home of the on-policy loop, kept for the callers not yet moved (the CLI's
``prompt_table``); nothing is defined here. The loop is
:class:`rlhf_core.trainers.policy_gradient.PolicyGradientTrainer` (``OnPolicyTrainer`` is its
old name), its rollout :mod:`rlhf_core.rollout`, its advantages :mod:`rlhf_core.advantages`."""

from __future__ import annotations

from rlhf_core.rollout import Rollout, prompt_table
from rlhf_core.trainers.config import RLConfig, RolloutConfig
from rlhf_core.trainers.policy_gradient import OnPolicyTrainer
from rlhf_core.trainers.sampling import RewardSource, RolloutTrainer

__all__ = [
    "OnPolicyTrainer",
    "RLConfig",
    "RewardSource",
    "Rollout",
    "RolloutConfig",
    "RolloutTrainer",
    "prompt_table",
]
