"""Rollouts: what a trainer that samples from its policy collects each step.

- :class:`Rollout` (:mod:`.batch`): the step's prompts, completions, rewards, and the rollout
  policy's / reference's logprobs (and values), ragged per sequence; :func:`prompt_table`;
  :meth:`Rollout.sample_rows` (the rows of ``samples.jsonl``), :func:`concat_rollouts`.
- :class:`RolloutCollector` (:mod:`.collect`): sample (generation), score (reward sources
  through :func:`rlhf_core.rewards.combine_rewards`), the no-grad forwards.
- :func:`rollout_metrics` (:mod:`.metrics`): reward, length and KL statistics of the global
  rollout.
- :mod:`.inputs`: padded model inputs, micro-batches, next-token logprobs.

Layering: this package imports the models, generation, rewards and the kernels (``ops``) and
the collectives of :mod:`rlhf_core.parallel`; trainers import it, never the reverse. A new
rollout backend (e.g. vLLM) or sampling scheme (e.g. dynamic sampling) changes the collector,
not the trainers.
"""

from __future__ import annotations

from rlhf_core.rollout.batch import Rollout, concat_rollouts, prompt_table
from rlhf_core.rollout.collect import RolloutCollector
from rlhf_core.rollout.inputs import (
    iter_micro_batches,
    logprobs_and_entropy,
    logprobs_of,
    pad_sequences,
)
from rlhf_core.rollout.metrics import gather, rollout_metrics

__all__ = [
    "Rollout",
    "RolloutCollector",
    "concat_rollouts",
    "gather",
    "iter_micro_batches",
    "logprobs_and_entropy",
    "logprobs_of",
    "pad_sequences",
    "prompt_table",
    "rollout_metrics",
]
