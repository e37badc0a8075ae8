"""Old home of the trainers' shared pieces, kept for the callers not yet moved (the CLI's
``resolve_device``, the demo's ``pad_sequences``); nothing is defined here. New code imports
from the modules named below."""

from __future__ import annotations

from rlhf_core.errors import check_field
from rlhf_core.rollout.inputs import (
    iter_micro_batches,
    logprobs_and_entropy,
    logprobs_of,
    pad_sequences,
)
from rlhf_core.trainers.config import TrainerConfig
from rlhf_core.trainers.loop import Trainer, TrainResult
from rlhf_core.trainers.optim import (
    IndexSampler,
    build_optimizer,
    build_scheduler,
    step_seed,
    trainable_parameters,
)
from rlhf_core.trainers.runtime import resolve_device

__all__ = [
    "IndexSampler",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "build_optimizer",
    "build_scheduler",
    "check_field",
    "iter_micro_batches",
    "logprobs_and_entropy",
    "logprobs_of",
    "pad_sequences",
    "resolve_device",
    "step_seed",
    "trainable_parameters",
]
