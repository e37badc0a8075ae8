"""Compatibility home of the multi-process helpers, plus the cross-rank advantage maths.

The infrastructure (process group, seeds and sharding, collectives, DDP / FSDP2 wrapping, full
state dicts) lives in :mod:`rlhf_core.parallel`, with the rules that make N ranks compute the
same update as one process; every public name of it is re-exported here, so
``from rlhf_core import distributed as D`` keeps working. What stays here needs a layer above
``parallel``: :func:`global_token_counts` (the loss layer's token count, summed over ranks).
The group-advantage and whitening statistics over every rank's rollout live with the
estimators, in :mod:`rlhf_core.advantages.distributed`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from rlhf_core.losses import count_tokens_and_seqs
from rlhf_core.parallel import (
    DEFAULT_TIMEOUT_S,
    STRATEGIES,
    DistContext,
    Strategy,
    all_gather_object,
    all_gather_ragged,
    all_reduce_max,
    all_reduce_metrics,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_module,
    flagged_ranks,
    fsdp2_available,
    gather_full_optimizer_state_dict,
    gather_full_state_dict,
    get_context,
    init_distributed,
    is_fsdp2,
    is_main_process,
    load_full_optimizer_state_dict,
    load_full_state_dict,
    no_sync,
    rank_seed,
    scale_loss,
    seed_everything,
    shard_indices,
    shutdown_distributed,
    unwrap_model,
    wrap_model,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "STRATEGIES",
    "Strategy",
    "all_gather_object",
    "all_gather_ragged",
    "all_reduce_max",
    "all_reduce_metrics",
    "all_reduce_min",
    "all_reduce_sum",
    "barrier",
    "broadcast_module",
    "flagged_ranks",
    "fsdp2_available",
    "gather_full_optimizer_state_dict",
    "gather_full_state_dict",
    "get_context",
    "global_token_counts",
    "init_distributed",
    "is_fsdp2",
    "is_main_process",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "no_sync",
    "rank_seed",
    "scale_loss",
    "seed_everything",
    "shard_indices",
    "shutdown_distributed",
    "unwrap_model",
    "wrap_model",
]


def global_token_counts(
    masks: torch.Tensor | Iterable[torch.Tensor], ctx: DistContext | None = None
) -> tuple[int, int]:
    """``(num_tokens, num_seqs)`` of the global minibatch: :func:`rlhf_core.losses.
    count_tokens_and_seqs` of this rank's (micro-batch) masks, summed over ranks in one
    all-reduce. Pass them to every loss call of every rank (rule 2 of
    :mod:`rlhf_core.parallel`)."""
    tokens, seqs = count_tokens_and_seqs(masks)
    total = all_reduce_sum(np.array([tokens, seqs], dtype=np.int64), ctx)
    return int(total[0]), int(total[1])
