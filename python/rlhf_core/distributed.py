"""Compatibility home of the multi-process helpers, plus the cross-rank advantage maths.

The infrastructure (process group, seeds and sharding, collectives, DDP / FSDP2 wrapping, full
state dicts) lives in :mod:`rlhf_core.parallel`, with the rules that make N ranks compute the
same update as one process; every public name of it is re-exported here, so
``from rlhf_core import distributed as D`` keeps working. What stays here needs layers above
``parallel``: :func:`global_token_counts` (the loss layer's token count, summed over ranks)
and the group-advantage and whitening statistics over every rank's rollout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

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
from rlhf_core.parallel import get_context as _ctx

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "GatheredGroups",
    "GlobalMoments",
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
    "distributed_group_advantages",
    "fsdp2_available",
    "gather_full_optimizer_state_dict",
    "gather_full_state_dict",
    "gather_scores_for_groups",
    "get_context",
    "global_masked_moments",
    "global_masked_whiten",
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


# ---------------------------------------------------------------------------------------------
# group statistics and whitening across ranks


@dataclass
class GatheredGroups:
    """Per-sequence scores and group ids of the whole global batch, in rank order.

    Attributes:
        scores: float64 (N_global,) scores of every rank (NaN = unscorable).
        group_ids: int64 (N_global,) group ids (must mean the same group on every rank, e.g.
            the global prompt index).
        start: index in the global arrays of this rank's first row.
        count: rows this rank contributed.
    """

    scores: np.ndarray
    group_ids: np.ndarray
    start: int
    count: int

    @property
    def local(self) -> slice:
        """Slice of this rank's rows in the global arrays."""
        return slice(self.start, self.start + self.count)


def _to_numpy_1d(x: Any, name: str, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sequence), got shape {arr.shape}")
    return arr.astype(dtype, copy=False)


def gather_scores_for_groups(
    scores: Any, group_ids: Any, ctx: DistContext | None = None
) -> GatheredGroups:
    """All-gather the per-sequence scores and group ids of every rank (2 × 2 small collectives).

    Every rank then holds the global batch's scores and can compute group statistics exactly as
    a single process would, whatever the split of the groups over ranks. The cost is one float
    and one integer per sequence.

    Args:
        scores: (B_local,) float scores of this rank (numpy or tensor).
        group_ids: (B_local,) integer group ids, globally meaningful.
    """
    s = _to_numpy_1d(scores, "scores", np.float64)
    g = _to_numpy_1d(group_ids, "group_ids", np.int64)
    if s.shape != g.shape:
        raise ValueError(f"scores has {s.shape[0]} entries, group_ids has {g.shape[0]}")
    all_s, counts = all_gather_ragged(s, ctx)
    all_g, _ = all_gather_ragged(g, ctx)
    rank = _ctx(ctx).rank
    return GatheredGroups(
        scores=all_s, group_ids=all_g, start=int(sum(counts[:rank])), count=int(counts[rank])
    )


def distributed_group_advantages(
    scores: Any,
    group_ids: Any,
    ctx: DistContext | None = None,
    *,
    return_stats: bool = False,
    **options: Any,
) -> Any:
    """Group-relative advantages (GRPO, Dr.GRPO, RLOO, ...) of this rank's sequences, equal to
    those of a single process holding the global batch.

    Gathers the scores (:func:`gather_scores_for_groups`), runs
    :func:`rlhf_core.ops.group_advantages` on the global arrays (every rank computes the same
    bits) and returns this rank's rows. Needed when a group can be split across ranks or with
    ``scale="batch"``; with whole prompts per rank (:func:`shard_indices`) and
    ``scale="group"`` / ``"none"``, the local kernel call gives the same numbers already.

    Args:
        scores: (B_local,) float scores (numpy or CPU tensor; NaN = unscorable).
        group_ids: (B_local,) int group ids, the same id for the same group on every rank.
        return_stats: also return the kernel's group statistics of the global batch.
        **options: ``baseline``, ``scale``, ``ddof``, ``eps``, ``singleton`` of
            :func:`rlhf_core.ops.group_advantages`.

    Returns:
        float64 (B_local,) advantages (a CPU tensor when ``scores`` is a tensor), and the global
        stats when ``return_stats``.
    """
    from rlhf_core import ops

    gathered = gather_scores_for_groups(scores, group_ids, ctx)
    res = ops.group_advantages(  # type: ignore[attr-defined]
        gathered.scores, group_ids=gathered.group_ids, return_stats=return_stats, **options
    )
    adv, stats = res if return_stats else (res, None)
    local = np.ascontiguousarray(np.asarray(adv)[gathered.local])
    out: Any = torch.from_numpy(local) if isinstance(scores, torch.Tensor) else local
    return (out, stats) if return_stats else out


@dataclass
class GlobalMoments:
    """Count, mean and variance of the valid values of every rank (float64 0-d tensors on the
    input's device, or Python floats for numpy inputs)."""

    count: Any
    mean: Any
    var: Any


def _valid_values(x: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """x and its bool mask as float64 / bool tensors of the same shape."""
    t = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x.detach()
    if mask is None:
        m = torch.ones_like(t, dtype=torch.bool)
    else:
        m = torch.from_numpy(np.asarray(mask)) if isinstance(mask, np.ndarray) else mask
        if m.shape != t.shape:
            raise ValueError(f"mask has shape {tuple(m.shape)}, x has {tuple(t.shape)}")
        m = (m if m.dtype == torch.bool else m != 0).to(t.device)
    return t.to(torch.float64), m


def global_masked_moments(
    x: Any, mask: Any = None, ctx: DistContext | None = None, *, ddof: int = 1
) -> GlobalMoments:
    """Mean and variance of the valid entries of ``x`` over **all ranks** (two-pass, float64).

    Args:
        x: float values of any shape (numpy or tensor; a ragged 1-D concatenation works too).
        mask: same shape, bool or 0/1; None = all valid.
        ddof: 0 (population) or 1 (unbiased).

    Same conventions as :func:`rlhf_core.ops.masked_var`: the mean of no value is 0, the
    variance of ``n <= ddof`` values is 0. Two all-reduces (count and sum, then the centred
    sum of squares), so the result equals the single-process statistics of the concatenated
    values up to float64 rounding.
    """
    if ddof not in (0, 1):
        raise ValueError(f"ddof={ddof}: expected 0 or 1")
    c = _ctx(ctx)
    t, m = _valid_values(x, mask)
    vals = torch.where(m, t, torch.zeros((), dtype=torch.float64, device=t.device))
    first = torch.stack([m.sum().to(torch.float64), vals.sum()])
    if c.is_distributed:
        first = first.to(c.comm_device)
        dist.all_reduce(first)
        first = first.to(t.device)
    count, total = first[0], first[1]
    mean = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    sq = torch.where(m, (t - mean).square(), torch.zeros((), dtype=torch.float64, device=t.device))
    m2 = sq.sum()
    if c.is_distributed:
        m2 = m2.to(c.comm_device)
        dist.all_reduce(m2)
        m2 = m2.to(t.device)
    var = torch.where(count > ddof, m2 / (count - ddof).clamp(min=1), torch.zeros_like(m2))
    if isinstance(x, np.ndarray):
        return GlobalMoments(count=float(count), mean=float(mean), var=float(var))
    return GlobalMoments(count=count, mean=mean, var=var)


def global_masked_whiten(
    x: Any,
    mask: Any = None,
    ctx: DistContext | None = None,
    *,
    shift_mean: bool = True,
    ddof: int = 1,
    eps: float = 1e-8,
) -> Any:
    """Whiten with statistics over all ranks: ``(x − μ) / sqrt(σ² + eps)`` on valid entries
    (``+ μ`` back when ``shift_mean`` is False), 0 on masked ones; the formula of
    :func:`rlhf_core.ops.masked_whiten` with ``μ``, ``σ²`` from :func:`global_masked_moments`.

    Use it for advantages whitened over the batch (PPO with GAE, REINFORCE++) when the batch is
    split across ranks. Returns the input's kind, shape and float dtype.
    """
    if not eps >= 0:
        raise ValueError(f"eps={eps}: expected >= 0")
    mom = global_masked_moments(x, mask, ctx, ddof=ddof)
    t, m = _valid_values(x, mask)
    mean = torch.as_tensor(mom.mean, dtype=torch.float64, device=t.device)
    var = torch.as_tensor(mom.var, dtype=torch.float64, device=t.device)
    w = (t - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        w = w + mean
    w = torch.where(m, w, torch.zeros((), dtype=torch.float64, device=t.device))
    if isinstance(x, np.ndarray):
        return w.numpy().astype(x.dtype, copy=False)
    return w.to(x.dtype)

