"""Collectives over the ranks of a job: sums, extrema, gathers, and the reduction of logged
metrics with one device-to-host read.

Every function takes an optional :class:`~rlhf_core.parallel.context.DistContext` (default
:func:`~rlhf_core.parallel.context.get_context`) and is the identity (or its single-process
equivalent) when the job has one process, so callers need no branch of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from rlhf_core.parallel.context import DistContext, get_context

__all__ = [
    "METRIC_REDUCTIONS",
    "MetricReduction",
    "all_gather_object",
    "all_gather_ragged",
    "all_reduce_max",
    "all_reduce_metrics",
    "all_reduce_min",
    "all_reduce_sum",
    "flagged_ranks",
    "metric_reduction",
]

MetricReduction = Literal["sum", "min", "max"]

#: How a logged metric combines across micro-batches and ranks, by the end of its name. A key
#: with none of these suffixes is **summed**: a loss metric computed with the global token /
#: sequence counts is each micro-batch's (and each rank's) share, so the shares add up to the
#: global value. ``*_min`` / ``*_max`` are local extremes (e.g. ``ratio_min``).
METRIC_REDUCTIONS: Mapping[str, MetricReduction] = {"_min": "min", "_max": "max"}


def metric_reduction(key: str) -> MetricReduction:
    """``"min"``, ``"max"`` or ``"sum"``: how the metric named ``key`` combines across
    micro-batches and ranks (see :data:`METRIC_REDUCTIONS`)."""
    for suffix, how in METRIC_REDUCTIONS.items():
        if key.endswith(suffix):
            return how
    return "sum"


def _reduce_op(op: str) -> Any:
    return {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]


def _all_reduce(x: Any, op: str, ctx: DistContext | None) -> Any:
    c = get_context(ctx)
    if isinstance(x, torch.Tensor):
        if not c.is_distributed:
            return x
        t = x.detach().to(c.comm_device, copy=True)
        dist.all_reduce(t, op=_reduce_op(op))
        return t.to(x.device)
    if isinstance(x, np.ndarray):
        if not c.is_distributed:
            return x
        t = torch.from_numpy(np.ascontiguousarray(x)).to(c.comm_device, copy=True)
        dist.all_reduce(t, op=_reduce_op(op))
        return t.cpu().numpy()
    if isinstance(x, (bool, np.bool_)):
        raise TypeError("cannot all-reduce a bool; convert it to int first")
    if isinstance(x, (int, np.integer)):
        if not c.is_distributed:
            return int(x)
        t = torch.tensor([int(x)], dtype=torch.int64, device=c.comm_device)
        dist.all_reduce(t, op=_reduce_op(op))
        return int(t.item())
    if isinstance(x, (float, np.floating)):
        if not c.is_distributed:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64, device=c.comm_device)
        dist.all_reduce(t, op=_reduce_op(op))
        return float(t.item())
    raise TypeError(
        f"cannot all-reduce a {type(x).__name__}: expected an int, a float, a numpy array or a "
        "torch tensor"
    )


def all_reduce_sum(x: Any, ctx: DistContext | None = None) -> Any:
    """Sum over ranks of an int (exact, int64), a float (float64), a numpy array or a tensor.

    Returns the same kind (a new tensor / array on the input's device; the input is not
    modified). A single process returns the input as it is.
    """
    return _all_reduce(x, "sum", ctx)


def all_reduce_max(x: Any, ctx: DistContext | None = None) -> Any:
    """Maximum over ranks; same kinds as :func:`all_reduce_sum`."""
    return _all_reduce(x, "max", ctx)


def all_reduce_min(x: Any, ctx: DistContext | None = None) -> Any:
    """Minimum over ranks; same kinds as :func:`all_reduce_sum`."""
    return _all_reduce(x, "min", ctx)


def _host_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Plain floats of Python numbers and 0-d tensors, the tensors read with one
    device-to-host copy for all of them (float32 -> float64 is exact, so the numbers are those
    of ``float(v)`` one by one)."""
    out = {k: v for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    if tensors:
        flat = torch.stack([v.detach().reshape(()).double() for v in tensors.values()])
        out.update(zip(tensors, flat.cpu().tolist(), strict=True))
    return {k: float(out[k]) for k in metrics}


def all_reduce_metrics(
    metrics: Mapping[str, Any], ctx: DistContext | None = None
) -> dict[str, float]:
    """Combine per-rank metrics into the global ones by :func:`metric_reduction` (the rule
    :func:`rlhf_core.losses.merge_metrics` follows across micro-batches): keys ending in
    ``_min`` / ``_max`` take the minimum / maximum over ranks, every other key is **summed**
    (loss metrics computed with global counts are each rank's share, so their sum is the
    global value).

    Ranks may hold different key sets (a rank without valid tokens has no ``ratio_min``): the
    union is used, a missing key counts as 0 / +inf / -inf. Three collectives (key union, sum,
    max) whatever the number of metrics. Values: Python numbers or 0-d tensors.
    """
    local = _host_floats(metrics)
    c = get_context(ctx)
    if not c.is_distributed:
        return local
    key_lists: list[list[str] | None] = [None] * c.world_size
    dist.all_gather_object(key_lists, sorted(local))
    keys = sorted(set().union(*(set(k or []) for k in key_lists)))
    sum_keys = [k for k in keys if metric_reduction(k) == "sum"]
    max_keys = [k for k in keys if metric_reduction(k) == "max"]
    min_keys = [k for k in keys if metric_reduction(k) == "min"]
    out: dict[str, float] = {}
    if sum_keys:
        s = torch.tensor(
            [local.get(k, 0.0) for k in sum_keys], dtype=torch.float64, device=c.comm_device
        )
        dist.all_reduce(s)
        out.update(zip(sum_keys, s.tolist(), strict=True))
    if max_keys or min_keys:
        # one MAX reduction: maxima as they are, minima negated
        vals = [local.get(k, -np.inf) for k in max_keys] + [-local.get(k, np.inf) for k in min_keys]
        m = torch.tensor(vals, dtype=torch.float64, device=c.comm_device)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        res = m.tolist()
        out.update(zip(max_keys, res[: len(max_keys)], strict=True))
        out.update(zip(min_keys, [-v for v in res[len(max_keys) :]], strict=True))
    return {k: out[k] for k in keys}


def all_gather_ragged(x: Any, ctx: DistContext | None = None) -> tuple[Any, list[int]]:
    """Concatenate a 1-D array of any length from every rank, in rank order.

    Args:
        x: 1-D numpy array or torch tensor (float, integer or bool); lengths may differ between
            ranks, dtypes must not.

    Returns:
        ``(values, counts)``: the concatenation (same kind, dtype and, for tensors, device as
        ``x``) and the number of items each rank contributed. Two collectives (lengths, padded
        values).
    """
    is_np = isinstance(x, np.ndarray)
    if not is_np and not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a 1-D numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {tuple(x.shape)}")
    c = get_context(ctx)
    if not c.is_distributed:
        return x, [int(x.shape[0])]
    t = torch.from_numpy(np.ascontiguousarray(x)) if is_np else x.detach()
    out_device = t.device
    dtype = t.dtype
    send = t.to(torch.uint8) if dtype == torch.bool else t
    send = send.to(c.comm_device)
    n = torch.tensor([send.shape[0]], dtype=torch.int64, device=c.comm_device)
    counts_t = [torch.zeros_like(n) for _ in range(c.world_size)]
    dist.all_gather(counts_t, n)
    counts = [int(v.item()) for v in counts_t]
    width = max(max(counts), 1)
    padded = torch.zeros(width, dtype=send.dtype, device=c.comm_device)
    padded[: send.shape[0]] = send
    parts = [torch.empty_like(padded) for _ in range(c.world_size)]
    dist.all_gather(parts, padded)
    full = torch.cat([p[:k] for p, k in zip(parts, counts, strict=True)])
    full = full.to(out_device)
    if dtype == torch.bool:
        full = full.bool()
    return (full.numpy() if is_np else full), counts


def all_gather_object(obj: Any, ctx: DistContext | None = None) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` for a single process).

    For small things only (RNG states, key lists): it pickles through the process group.
    """
    c = get_context(ctx)
    if not c.is_distributed:
        return [obj]
    out: list[Any] = [None] * c.world_size
    dist.all_gather_object(out, obj)
    return out


def flagged_ranks(flag: bool, ctx: DistContext | None = None) -> list[int]:
    """The ranks that passed ``flag=True`` (one all-reduce of ``world_size`` integers).

    Lets every rank take the same branch after a local check, e.g. all ranks stop when one of
    them found a non-finite value, instead of the others waiting in the next collective.
    """
    c = get_context(ctx)
    if not c.is_distributed:
        return [0] if flag else []
    t = torch.zeros(c.world_size, dtype=torch.int64, device=c.comm_device)
    t[c.rank] = int(bool(flag))
    dist.all_reduce(t)
    return [int(r) for r in torch.nonzero(t).flatten().tolist()]

