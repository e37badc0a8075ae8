"""What every loss shares: :class:`LossOutput`, the aggregation modes with their global
normalisers (:func:`aggregate`, :func:`count_tokens_and_seqs`), the metric merge rule
(:func:`merge_metrics`, one table with the cross-rank reduction), and the tensor checks the
loss modules use (masking, dtype, shapes, denominators)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from rlhf_core.parallel.collectives import METRIC_REDUCTIONS, metric_reduction

__all__ = [
    "AGGREGATIONS",
    "METRIC_REDUCTIONS",
    "LossOutput",
    "Number",
    "aggregate",
    "count_tokens_and_seqs",
    "merge_metrics",
    "metric_reduction",
]

Aggregation = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
AGGREGATIONS: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
"""Loss aggregation modes (verl's ``agg_loss`` names), with ℓ the (B, T) per-token loss, m the
mask, N_tok / N_seq the global token / sequence counts and L the constant normaliser:

- ``token-mean``: Σ ℓ·m / N_tok (DAPO; TRL ``loss_type="dapo"``; verl default).
- ``seq-mean-token-mean``: Σ_i (Σ_t ℓ·m / |y_i|) / N_seq (the GRPO paper; TRL ``"grpo"``).
- ``seq-mean-token-sum``: Σ_i Σ_t ℓ·m / N_seq.
- ``seq-mean-token-sum-norm``: Σ ℓ·m / (N_seq · L) with L = the maximum response length from
  the config, a constant (Dr.GRPO; TRL ``"dr_grpo"``).
"""

Number = int | float


@dataclass
class LossOutput:
    """What every loss returns.

    Attributes:
        loss: differentiable scalar tensor (0-d) to call ``backward()`` on.
        metrics: detached 0-d tensors named for logging. Token/sequence averages share the
            loss's normaliser (additive across micro-batches when global counts are passed);
            keys ending in ``_min`` / ``_max`` combine by min / max.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    def __add__(self, other: LossOutput) -> LossOutput:
        """Sum two losses (e.g. policy + KL + entropy); metric names must not collide."""
        clash = set(self.metrics) & set(other.metrics)
        if clash:
            raise ValueError(f"cannot add LossOutputs: both define metrics {sorted(clash)}")
        return LossOutput(self.loss + other.loss, {**self.metrics, **other.metrics})


# ----------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _as_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _bool_mask(mask: torch.Tensor | None, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Return a bool mask with the shape of ``like`` (all True when ``mask`` is None)."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    if mask.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}, expected {tuple(like.shape)} "
            "(the shape of the per-token values)"
        )
    return mask if mask.dtype == torch.bool else mask != 0


def _check_same_shape(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if t.shape != ref.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(ref.shape)} "
                f"(the shape of {ref_name})"
            )


def _check_2d(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2:
        raise ValueError(f"{name} must be a padded (B, T) tensor, got shape {tuple(t.shape)}")


def _zero_masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with masked-out positions replaced by 0 (NaN/inf there cannot leak, not even into
    gradients, because the masked inputs never enter any arithmetic)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _denominator(
    given: Number | torch.Tensor | None, local: torch.Tensor, name: str
) -> torch.Tensor:
    if given is None:
        return local.clamp(min=1)
    if isinstance(given, torch.Tensor):
        value = given.to(dtype=local.dtype, device=local.device)
        ok = value.numel() == 1 and bool(value > 0)  # a device tensor costs a sync here
    else:
        # a Python count (what the trainers pass) is checked on the host, before the copy
        ok = float(given) > 0
        value = torch.tensor(float(given)).to(dtype=local.dtype, device=local.device)
    if not ok:
        raise ValueError(
            f"{name}={given!r}: expected a positive count (the global number over the whole "
            "minibatch, from count_tokens_and_seqs)"
        )
    return value.reshape(())


def count_tokens_and_seqs(masks: torch.Tensor | Iterable[torch.Tensor]) -> tuple[int, int]:
    """Global normalisers for :func:`aggregate` over one or several (micro-batch) masks.

    Args:
        masks: a (B, T) mask or an iterable of them (the micro-batches of one minibatch, or
            the masks of all ranks after an all-gather of the counts).

    Returns:
        ``(num_tokens, num_seqs)``: valid tokens, and sequences with at least one valid token
        (sequences without any contribute nothing in any mode, as in verl's ``agg_loss``).
    """
    if isinstance(masks, torch.Tensor):
        masks = [masks]
    tokens = 0
    seqs = 0
    for m in masks:
        _check_2d("mask", m)
        mb = m if m.dtype == torch.bool else m != 0
        per_seq = mb.sum(dim=-1)
        tokens += int(per_seq.sum())
        seqs += int((per_seq > 0).sum())
    return tokens, seqs


def merge_metrics(
    total: dict[str, torch.Tensor], new: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Accumulate micro-batch metrics (0-d tensors) in place, each by its
    :func:`rlhf_core.parallel.metric_reduction` (the one table of the rule, shared with the
    cross-rank reduction): sum, or min / max for ``*_min`` / ``*_max``."""
    for key, value in new.items():
        value = value.detach()
        how = metric_reduction(key)
        if key not in total:
            total[key] = value.clone()
        elif how == "min":
            total[key] = torch.minimum(total[key], value)
        elif how == "max":
            total[key] = torch.maximum(total[key], value)
        else:
            total[key] = total[key] + value
    return total


def _token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    return _zero_masked(x, mask).sum() / num_tokens


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor | None = None,
    mode: str = "token-mean",
    *,
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss matrix to a scalar with one of :data:`AGGREGATIONS`.

    Args:
        values: float (B, T) per-token values ℓ, right- or left-padded.
        mask: (B, T) bool or 0/1; None = every position counts.
        mode: one of :data:`AGGREGATIONS`.
        num_tokens: global count of valid tokens (``token-mean``); default: ``mask.sum()``.
        num_seqs: global count of sequences with at least one valid token (the ``seq-mean-*``
            modes); default: the same count in this call.
        max_len: the constant L of ``seq-mean-token-sum-norm`` (maximum response length from
            the config, not the padded width of this batch). Required for that mode.

    Returns:
        0-d tensor of ``values``' float dtype (float32 for half inputs).

    Sequences with no valid token contribute 0 in every mode.
    """
    _check_2d("values", values)
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation mode {mode!r} is unknown; expected one of {AGGREGATIONS}")
    dtype = _compute_dtype(values)
    x = _as_float(values, dtype)
    m = _bool_mask(mask, x)
    xm = _zero_masked(x, m)
    if mode == "token-mean":
        return xm.sum() / _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
    seq_len = m.sum(dim=-1)  # (B,)
    n_seq = _denominator(num_seqs, (seq_len > 0).sum().to(dtype), "num_seqs")
    seq_sum = xm.sum(dim=-1)  # (B,)
    if mode == "seq-mean-token-mean":
        return (seq_sum / seq_len.clamp(min=1).to(dtype)).sum() / n_seq
    if mode == "seq-mean-token-sum":
        return seq_sum.sum() / n_seq
    if max_len is None or not max_len > 0:
        raise ValueError(
            f"max_len={max_len!r}: seq-mean-token-sum-norm needs the constant normaliser L > 0 "
            "(set it to the maximum response length of the config)"
        )
    return seq_sum.sum() / (n_seq * float(max_len))
