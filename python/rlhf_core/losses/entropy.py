"""Entropy in the loss: the entropy bonus."""

from __future__ import annotations

import torch

from rlhf_core.losses.aggregation import (
    LossOutput,
    Number,
    _as_float,
    _bool_mask,
    _check_2d,
    _compute_dtype,
    _denominator,
    _token_mean,
    aggregate,
)

__all__ = ["entropy_bonus"]


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    coef: float,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Entropy bonus: loss = −coef · aggregate(H), so minimising it raises entropy.

    Args:
        entropy: float (B, T) per-token entropy of the policy's next-token distribution.
        coef: bonus coefficient ≥ 0 (0 keeps the metric and adds nothing to the loss).

    Returns:
        :class:`LossOutput` with metrics ``entropy`` (token mean) and ``entropy_loss``.
    """
    _check_2d("entropy", entropy)
    if coef < 0:
        raise ValueError(f"coef={coef}: the entropy coefficient must be >= 0")
    if coef == 0:
        # the metric only: no backward through the full-vocabulary softmax for a zero term
        entropy = entropy.detach()
    dtype = _compute_dtype(entropy)
    m = _bool_mask(mask, entropy)
    agg = aggregate(
        entropy, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    loss = -coef * agg
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {
            "entropy": _token_mean(_as_float(entropy, dtype), m, n_tok),
            "entropy_loss": loss.detach(),
        }
    return LossOutput(loss, metrics)
