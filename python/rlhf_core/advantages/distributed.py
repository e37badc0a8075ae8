"""Advantage statistics over every rank: the several-process half of each estimator, written once.

With ``torchrun`` every rank holds its share of the rollout in its own buffer. Whatever spans
the batch must then see every rank's data, so that a step equals the single-process step on
the same global batch (``docs/scaling.md``):

- **group statistics** when a group can be split over ranks or the scale is batch-wide
  (``scale="batch"``): :func:`distributed_group_advantages` gathers one score and one group id
  per sequence and runs the same Rust kernel on the global arrays;
- **moments and whitening** of per-token values (PPO's GAE, REINFORCE++):
  :func:`global_masked_moments` merges each rank's Rust moments (count, mean, centred sum of
  squares; two-pass float64, Chan et al.'s pairwise merge in rank order, so every rank gets the
  same bits) and :func:`global_masked_whiten` applies ``(x − μ)·(σ² + ε)^−½``, the formula of
  :func:`rlhf_core.ops.masked_whiten`, with them;
- the buffer's **advantage summary** for logging (:func:`advantage_moments`).

With one process each function returns what the buffer or the kernel computes alone. These
helpers import :mod:`rlhf_core.parallel` for the collectives and nothing above the
estimators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rlhf_core import ops
from rlhf_core import parallel as D

if TYPE_CHECKING:
    from rlhf_core.buffer import RolloutBuffer

__all__ = [
    "GatheredGroups",
    "GlobalMoments",
    "advantage_moments",
    "distributed_group_advantages",
    "gather_scores_for_groups",
    "global_group_stats",
    "global_masked_moments",
    "global_masked_whiten",
    "valid_counts",
    "valid_tokens",
    "whiten_advantages",
]


def _context(ctx: D.DistContext | None) -> D.DistContext:
    return D.get_context() if ctx is None else ctx


# ---------------------------------------------------------------------------------------------
# group statistics


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


def _host_1d(x: Any, name: str, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sequence), got shape {arr.shape}")
    return arr.astype(dtype, copy=False)


def gather_scores_for_groups(
    scores: Any, group_ids: Any, ctx: D.DistContext | None = None
) -> GatheredGroups:
    """All-gather the per-sequence scores and group ids of every rank (2 × 2 small collectives).

    Every rank then holds the global batch's scores and can compute group statistics exactly as
    a single process would, whatever the split of the groups over ranks. The cost is one float
    and one integer per sequence.

    Args:
        scores: float (B_local,) scores of this rank (numpy or tensor).
        group_ids: int (B_local,) group ids, globally meaningful.
    """
    s = _host_1d(scores, "scores", np.float64)
    g = _host_1d(group_ids, "group_ids", np.int64)
    if s.shape != g.shape:
        raise ValueError(f"scores has {s.shape[0]} entries, group_ids has {g.shape[0]}")
    all_s, counts = D.all_gather_ragged(s, ctx)
    all_g, _ = D.all_gather_ragged(g, ctx)
    rank = _context(ctx).rank
    return GatheredGroups(
        scores=all_s, group_ids=all_g, start=int(sum(counts[:rank])), count=int(counts[rank])
    )


def distributed_group_advantages(
    scores: Any,
    group_ids: Any,
    ctx: D.DistContext | None = None,
    *,
    return_stats: bool = False,
    **options: Any,
) -> Any:
    """Group-relative advantages (GRPO, Dr.GRPO, RLOO, ...) of this rank's sequences, equal to
    those of a single process holding the global batch.

    Gathers the scores (:func:`gather_scores_for_groups`), runs
    :func:`rlhf_core.ops.group_advantages` on the global arrays (every rank computes the same
    bits) and returns this rank's rows. Needed when a group can be split across ranks or with
    ``scale="batch"``; with whole prompts per rank (:func:`rlhf_core.parallel.shard_indices`)
    and ``scale="group"`` / ``"none"``, the local kernel call gives the same numbers already.

    Args:
        scores: float32/float64 (B_local,) scores (numpy or CPU tensor; NaN = unscorable). The
            kernel runs in this dtype (the gathered scores are cast back to it).
        group_ids: int (B_local,) group ids, the same id for the same group on every rank.
        return_stats: also return the kernel's :class:`rlhf_core.ops.GroupStats` of the global
            batch (the same on every rank).
        **options: ``baseline``, ``scale``, ``ddof``, ``eps``, ``singleton`` of
            :func:`rlhf_core.ops.group_advantages`.

    Returns:
        (B_local,) advantages in the dtype of ``scores`` (a CPU tensor when ``scores`` is a
        tensor), and the global stats when ``return_stats``.
    """
    name = str(scores.dtype if hasattr(scores, "dtype") else np.asarray(scores).dtype)
    dtype = np.float32 if name.removeprefix("torch.") == "float32" else np.float64
    gathered = gather_scores_for_groups(scores, group_ids, ctx)
    adv, stats = ops.group_advantages(
        gathered.scores.astype(dtype, copy=False),
        group_ids=gathered.group_ids,
        return_stats=True,
        **options,
    )
    local = np.ascontiguousarray(np.asarray(adv)[gathered.local])
    out: Any = local
    if hasattr(scores, "detach"):
        import torch

        out = torch.from_numpy(local)
    return (out, stats) if return_stats else out


def global_group_stats(stats: ops.GroupStats, ctx: D.DistContext | None = None) -> ops.GroupStats:
    """The counts of :class:`rlhf_core.ops.GroupStats` summed over ranks (each rank's groups are
    its own: whole prompts per rank); ``stats`` itself for one process."""
    if not _context(ctx).is_distributed:
        return stats
    counts = np.array(
        [stats.num_groups, stats.num_nan, stats.num_singleton, stats.num_zero_std], dtype=np.int64
    )
    total = D.all_reduce_sum(counts, ctx)
    return ops.GroupStats(*(int(v) for v in total))


# ---------------------------------------------------------------------------------------------
# moments and whitening


@dataclass
class GlobalMoments:
    """Count, mean and variance of the valid values of every rank (Python floats)."""

    count: float
    mean: float
    var: float


def _host_values(x: Any, mask: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` as a float32/float64 numpy array on the host and its mask as bool (or None)."""
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if mask is None:
        return arr, None
    m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if m.shape != arr.shape:
        raise ValueError(f"mask has shape {m.shape}, x has {arr.shape}")
    return arr, (m if m.dtype == np.bool_ else m != 0)


def _merged_moments(x: np.ndarray, mask: np.ndarray | None, ctx: Any, ddof: int) -> Any:
    """A :class:`rlhf_core.ops.RunningMoments` holding the valid values of every rank."""
    local = ops.RunningMoments(ddof=ddof).update(
        np.ascontiguousarray(x.reshape(-1)),
        None if mask is None else np.ascontiguousarray(mask.reshape(-1)),
    )
    if not _context(ctx).is_distributed:
        return local
    state = local.state_dict()
    mine = np.array([state["count"], state["mean"], state["m2"]], dtype=np.float64)
    every, _ = D.all_gather_ragged(mine, ctx)
    total = ops.RunningMoments(ddof=ddof)
    for count, mean, m2 in every.reshape(-1, 3):  # rank order: the same merge on every rank
        part = ops.RunningMoments(ddof=ddof)
        part.load_state_dict({"count": int(count), "mean": float(mean), "m2": float(m2),
                              "ddof": ddof})  # fmt: skip
        total.merge(part)
    return total


def global_masked_moments(
    x: Any, mask: Any = None, ctx: D.DistContext | None = None, *, ddof: int = 1
) -> GlobalMoments:
    """Mean and variance of the valid entries of ``x`` over **all ranks** (float64).

    Args:
        x: float values of any shape (numpy or tensor; a ragged 1-D concatenation works too).
        mask: same shape, bool or 0/1; None = all valid.
        ddof: 0 (population) or 1 (unbiased).

    Same conventions as :func:`rlhf_core.ops.masked_var`: the mean of no value is 0, the
    variance of ``n <= ddof`` values is 0. Each rank's moments come from the Rust two-pass
    reduction (:class:`rlhf_core.ops.RunningMoments`); one all-gather of three numbers per rank,
    merged in rank order, so the result equals the single-process statistics of the
    concatenated values up to float64 rounding.
    """
    if ddof not in (0, 1):
        raise ValueError(f"ddof={ddof}: expected 0 or 1")
    arr, m = _host_values(x, mask)
    mom = _merged_moments(arr, m, ctx, ddof)
    return GlobalMoments(count=float(mom.count), mean=float(mom.mean), var=float(mom.var))


def global_masked_whiten(
    x: Any,
    mask: Any = None,
    ctx: D.DistContext | None = None,
    *,
    shift_mean: bool = True,
    ddof: int = 1,
    eps: float = 1e-8,
) -> Any:
    """Whiten with statistics over all ranks: ``(x − μ)·(σ² + eps)^−½`` on valid entries
    (``+ μ`` back when ``shift_mean`` is False), 0 on masked ones; the arithmetic of
    :func:`rlhf_core.ops.masked_whiten` with ``μ``, ``σ²`` from :func:`global_masked_moments`.

    Use it for advantages whitened over the batch (PPO with GAE, REINFORCE++) when the batch is
    split across ranks. Returns the input's kind (numpy, or a tensor on the input's device),
    shape and float dtype.
    """
    if not eps >= 0:
        raise ValueError(f"eps={eps}: expected >= 0")
    mom = global_masked_moments(x, mask, ctx, ddof=ddof)
    arr, m = _host_values(x, mask)
    inv = 1.0 / np.sqrt(mom.var + eps)
    add = 0.0 if shift_mean else mom.mean
    w = (arr.astype(np.float64) - mom.mean) * inv + add
    if m is not None:
        w = np.where(m, w, 0.0)
    out = w.astype(arr.dtype)
    if hasattr(x, "detach"):
        import torch

        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# the buffer's advantages over every rank


def valid_tokens(buffer: RolloutBuffer) -> np.ndarray:
    """bool (num_response_tokens,): the tokens the buffer's estimators train on
    (:meth:`RolloutBuffer.valid_tokens`, the core's one rule: ``loss_mask`` and a non-NaN
    score)."""
    return buffer.valid_tokens()


def valid_counts(buffer: RolloutBuffer) -> np.ndarray:
    """int64 (N,): the number of valid tokens of each sequence
    (:meth:`RolloutBuffer.valid_counts`)."""
    return buffer.valid_counts()


def whiten_advantages(
    buffer: RolloutBuffer, ctx: D.DistContext | None = None, *, eps: float = 1e-8
) -> None:
    """Whiten the buffer's advantages (computed with ``whiten="none"``) with the moments of the
    valid tokens of **every rank**, as the buffer's ``whiten="token"`` does for one process:
    every valid token weighs the same, unbiased variance, invalid tokens 0. Per-sequence
    advantages count once per valid token (frequency weights), so they whiten as their
    broadcast tokens would."""
    info = buffer.advantages_info
    if info is None:
        raise ValueError("the buffer holds no advantages to whiten: run an estimator first")
    adv = buffer.field("advantages")
    valid = valid_tokens(buffer)
    if info["level"] == "token":
        white = global_masked_whiten(adv, valid, ctx, ddof=1, eps=eps)
        returns = buffer.field("returns") if info["has_returns"] else None
        buffer.set_advantages(white, returns=returns, estimator=info["estimator"])
        return
    counts = valid_counts(buffer)
    mom = global_masked_moments(np.repeat(adv.astype(np.float64), counts), None, ctx, ddof=1)
    inv = 1.0 / np.sqrt(mom.var + eps)
    white = np.where(counts > 0, (adv.astype(np.float64) - mom.mean) * inv, 0.0)
    buffer.set_advantages(white.astype(adv.dtype), estimator=info["estimator"])


def advantage_moments(
    buffer: RolloutBuffer, ctx: D.DistContext | None = None
) -> tuple[float, float, float, float] | None:
    """``(mean, std, min, max)`` of the buffer's advantages over what is trained on (valid
    tokens, or sequences with a valid token for per-sequence advantages; std with ddof 0) of
    every rank; None when nothing is valid. One process: the buffer's own summary."""
    if not _context(ctx).is_distributed:
        s = buffer.stats()
        if "advantages/mean" not in s:
            return None
        return (s["advantages/mean"], s["advantages/std"], s["advantages/min"],
                s["advantages/max"])  # fmt: skip
    adv = buffer.field("advantages")
    if (buffer.advantages_info or {}).get("level") == "sequence":
        valid = valid_counts(buffer) > 0
    else:
        valid = valid_tokens(buffer)
    mom = global_masked_moments(adv, valid, ctx, ddof=0)
    if mom.count == 0:
        return None
    have = bool(valid.any())
    lo = D.all_reduce_min(float(adv[valid].min()) if have else np.inf, ctx)
    hi = D.all_reduce_max(float(adv[valid].max()) if have else -np.inf, ctx)
    return mom.mean, float(np.sqrt(mom.var)), lo, hi
