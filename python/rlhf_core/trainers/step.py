"""One training step: gradient accumulation over micro-batches, then the optimizer step.

Every trainer's update goes through :func:`accumulate_step` (SFT and best-of-N, the pairwise
trainers, the policy-gradient trainers), so its invariance is proved once
(``tests/test_trainers_step.py``) for all of them::

    for each micro-batch (gradients synchronised only in the last one's backward):
        out = loss_fn(micro)            # a LossOutput normalised by the GLOBAL counts
        backward(out.loss × world size) # DDP / FSDP2 average gradients over ranks
        merge out.metrics               # sums, *_min / *_max extremes (losses.metric_reduction)
    metrics summed over ranks, read once (one device-to-host copy)
    optimizer step (clip, check finite, step; returns the gradient norms)

Because each micro-batch's loss is divided by the counts of the whole minibatch (of every
rank), the accumulated gradient and the summed metrics do not depend on how the minibatch is
split: one micro-batch of N rows equals N micro-batches of one row up to float rounding.

:class:`StepAverage` averages the metrics of several optimizer steps (PPO epochs ×
minibatches, best-of-N's SFT epochs) by the same table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core import losses as L

__all__ = ["StepAverage", "accumulate_step", "no_sync"]

Micro = TypeVar("Micro")


def no_sync(
    models: Sequence[nn.Module], dist: D.DistContext, *, enabled: bool = True
) -> AbstractContextManager[Any]:
    """Skip the gradient synchronisation of the wrapped ``models`` in the block (every
    micro-batch but the last of an optimizer step); nothing for a single process."""
    if not (enabled and dist.is_distributed):
        return nullcontext()
    stack = contextlib.ExitStack()
    for m in models:
        stack.enter_context(D.no_sync(m, enabled=True))
    return stack


def accumulate_step(
    micro_batches: Sequence[Micro],
    loss_fn: Callable[[Micro], L.LossOutput],
    *,
    optimizer_step: Callable[[Mapping[str, float]], Mapping[str, float]],
    models: Sequence[nn.Module] = (),
    dist: D.DistContext | None = None,
    filler: Micro | None = None,
    sum_loss: bool = False,
) -> dict[str, float]:
    """Accumulate the gradients of ``loss_fn`` over ``micro_batches`` and take one optimizer
    step.

    Args:
        micro_batches: this rank's micro-batches of the minibatch (dicts of tensors, pairs,
            anything ``loss_fn`` takes).
        loss_fn: the loss of one micro-batch, normalised by the counts of the whole minibatch
            over every rank (:func:`rlhf_core.distributed.global_token_counts`).
        optimizer_step: called once with the reduced metrics: clips, checks that they and
            the gradient norms are finite, steps; returns its own metrics (``grad_norm``, ...).
        models: the trained (wrapped) models whose gradients the backward synchronises.
        dist: the process group; None = :func:`rlhf_core.distributed.get_context`.
        filler: with several processes every rank runs as many micro-batches as the rank with
            the most (the gradient synchronisation, and under FSDP2 every forward, is a
            collective); a rank with fewer runs ``filler`` (any one micro-batch) with its loss
            multiplied by 0. Without one, unequal counts are an error.
        sum_loss: also report ``loss``, the sum of the micro-batch losses (float64).

    Returns:
        plain floats: the loss metrics summed over micro-batches and ranks (``*_min`` /
        ``*_max``: extremes), ``loss`` with ``sum_loss``, and what ``optimizer_step`` returned.
    """
    ctx = D.get_context() if dist is None else dist
    n_micro = len(micro_batches)
    if ctx.is_distributed:
        n_micro = D.all_reduce_max(n_micro, ctx)
        if n_micro > len(micro_batches) and filler is None:
            raise ValueError(
                f"this rank has {len(micro_batches)} micro-batch(es) but another has {n_micro}: "
                "give the ranks equal shares or a filler batch"
            )
    totals: dict[str, torch.Tensor] = {}
    loss_sum: torch.Tensor | None = None  # float64 on the device, read once after the loop
    for k in range(n_micro):
        real = k < len(micro_batches)
        micro = micro_batches[k] if real else filler
        # gradients are synchronised once, in the last micro-batch's backward
        with no_sync(models, ctx, enabled=k < n_micro - 1):
            out = loss_fn(micro)  # type: ignore[arg-type]
            D.scale_loss(out.loss if real else out.loss * 0.0, ctx).backward()
        if real:
            part = out.loss.detach().double()
            loss_sum = part if loss_sum is None else loss_sum + part
            L.merge_metrics(totals, out.metrics)
    if sum_loss:
        zero = torch.zeros((), dtype=torch.float64)
        totals = {**totals, "loss": zero if loss_sum is None else loss_sum}
    # one device-to-host copy of every metric, summed over ranks when there are several
    metrics = D.all_reduce_metrics(totals, ctx)
    metrics.update(optimizer_step(metrics))
    return metrics


class StepAverage:
    """Metrics of several optimizer steps combined into those of the trainer step: each name by
    :func:`rlhf_core.losses.metric_reduction`, extremes for ``*_min`` / ``*_max``, the mean
    over the optimizer steps for every other name."""

    def __init__(self) -> None:
        self.count = 0
        self._acc: dict[str, float] = {}

    def add(self, metrics: Mapping[str, float]) -> None:
        """Fold in the metrics of one optimizer step."""
        self.count += 1
        for k, v in metrics.items():
            how = L.metric_reduction(k)
            if how == "min":
                self._acc[k] = min(self._acc.get(k, v), v)
            elif how == "max":
                self._acc[k] = max(self._acc.get(k, v), v)
            else:
                self._acc[k] = self._acc.get(k, 0.0) + v

    def result(self) -> dict[str, float]:
        """The combined metrics (empty before any :meth:`add`)."""
        n = max(self.count, 1)
        return {k: v if L.metric_reduction(k) != "sum" else v / n for k, v in self._acc.items()}
