"""Multi-process training under ``torchrun``: process group, sharding, collectives, DDP / FSDP2
wrapping and full state dicts. ``torch.distributed`` only: nothing here imports from
``rlhf_core`` above :mod:`rlhf_core.errors`, so every other layer may import it.

- :mod:`~rlhf_core.parallel.context`: :class:`DistContext`, :func:`init_distributed` /
  :func:`shutdown_distributed`, :func:`rank_seed`, :func:`seed_everything`,
  :func:`shard_indices`.
- :mod:`~rlhf_core.parallel.collectives`: :func:`all_reduce_sum` / ``_max`` / ``_min``,
  :func:`all_gather_ragged`, :func:`all_gather_object`, :func:`flagged_ranks`, and
  :func:`all_reduce_metrics` with its merge rule :func:`metric_reduction`.
- :mod:`~rlhf_core.parallel.wrap`: :func:`wrap_model`, :func:`unwrap_model`, :func:`no_sync`,
  :func:`broadcast_module`, :func:`scale_loss`.
- :mod:`~rlhf_core.parallel.state_dict`: full model / optimizer state gather and load.

One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
``MASTER_ADDR`` / ``MASTER_PORT``); :func:`init_distributed` reads them, picks the device
(``cuda:LOCAL_RANK`` when CUDA is available, else the CPU) and the backend (NCCL on CUDA, gloo on
the CPU) and starts the process group. Without those variables (a plain ``python`` run) it is a
single-process no-op and every helper here returns its input unchanged, so trainers call the same
hooks whether or not they run distributed.

The rule that makes N ranks compute the same update as one process on the same global batch
-------------------------------------------------------------------------------------------
1. **Shard whole prompts** (:func:`shard_indices`): every rank draws the same global prompt
   indices from the same seeded sampler and keeps its contiguous block, so a prompt's group of
   samples is generated, scored and held on one rank.
2. **Normalise by global counts.** :mod:`rlhf_core.losses` divides by ``num_tokens`` /
   ``num_seqs``; pass the counts of the whole global minibatch (this rank's
   :func:`rlhf_core.losses.count_tokens_and_seqs` summed by :func:`all_reduce_sum` in one
   all-reduce of two integers, :func:`rlhf_core.distributed.global_token_counts`). Each rank's
   loss is then its *share* of the global loss: ``Σ_ranks loss_r = loss_global``, and likewise
   for the gradients.
3. **Undo the gradient averaging.** DDP all-reduces gradients with a *mean* over ranks, and FSDP2
   reduce-scatters with a mean too, so a rank that back-propagates its share ends up with
   ``Σ_r ∇loss_r / W = ∇loss_global / W``. Multiply the loss by ``W`` before ``backward()``
   (:attr:`DistContext.loss_scale`, :func:`scale_loss`); the synchronised gradient is then
   exactly the single-process gradient. (verl's ``agg_loss`` multiplies by the data-parallel
   size for the same reason.) Report the *unscaled* loss, summed over ranks
   (:func:`all_reduce_metrics`).
4. **Reduce what spans the batch.** Group advantages with groups split across ranks or with a
   batch-wide scale (:func:`rlhf_core.distributed.distributed_group_advantages`: gather one
   score per sequence with :func:`all_gather_ragged`, run the same Rust kernel on the global
   batch, keep the local rows), token-level whitening (``global_masked_moments``,
   ``global_masked_whiten`` beside it) and logged metrics (:func:`all_reduce_metrics`).
5. **Same number of collective calls on every rank.** Every rank must run the same number of
   minibatches, micro-batches and backward passes (DDP and FSDP2 synchronise inside
   ``backward``), and, for FSDP2, the same number of forward passes during generation.

Everything here was tested with the gloo backend and 2 CPU processes
(``tests/test_distributed.py``); ``docs/scaling.md`` shows the ``torchrun`` command lines for
one and several nodes.
"""

from rlhf_core.parallel.collectives import (
    METRIC_REDUCTIONS,
    MetricReduction,
    all_gather_object,
    all_gather_ragged,
    all_reduce_max,
    all_reduce_metrics,
    all_reduce_min,
    all_reduce_sum,
    flagged_ranks,
    metric_reduction,
)
from rlhf_core.parallel.context import (
    DEFAULT_TIMEOUT_S,
    DistContext,
    barrier,
    get_context,
    init_distributed,
    is_main_process,
    rank_seed,
    seed_everything,
    shard_indices,
    shutdown_distributed,
)
from rlhf_core.parallel.state_dict import (
    gather_full_optimizer_state_dict,
    gather_full_state_dict,
    load_full_optimizer_state_dict,
    load_full_state_dict,
)
from rlhf_core.parallel.wrap import (
    STRATEGIES,
    Strategy,
    broadcast_module,
    fsdp2_available,
    is_fsdp2,
    no_sync,
    scale_loss,
    unwrap_model,
    wrap_model,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "METRIC_REDUCTIONS",
    "STRATEGIES",
    "DistContext",
    "MetricReduction",
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
    "init_distributed",
    "is_fsdp2",
    "is_main_process",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "metric_reduction",
    "no_sync",
    "rank_seed",
    "scale_loss",
    "seed_everything",
    "shard_indices",
    "shutdown_distributed",
    "unwrap_model",
    "wrap_model",
]
