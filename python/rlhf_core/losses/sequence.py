"""Sequence-level quantities: log-probabilities summed (or averaged) over a sequence."""

from __future__ import annotations

import torch

from rlhf_core.losses.aggregation import _bool_mask, _check_2d, _zero_masked

__all__ = ["sequence_logprobs"]


def sequence_logprobs(
    token_logprobs: torch.Tensor, mask: torch.Tensor | None = None, *, average: bool = False
) -> torch.Tensor:
    """Sum (or mean, with ``average=True``) of per-token log-probabilities over valid tokens.

    Args:
        token_logprobs: float (B, T).
        mask: (B, T) completion mask.

    Returns:
        float (B,); a row without valid tokens gives 0.
    """
    _check_2d("token_logprobs", token_logprobs)
    m = _bool_mask(mask, token_logprobs)
    total = _zero_masked(token_logprobs, m).sum(dim=-1)
    if average:
        return total / m.sum(dim=-1).clamp(min=1).to(total.dtype)
    return total
