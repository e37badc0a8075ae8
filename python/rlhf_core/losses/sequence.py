"""Sequence-level policy losses and quantities: GSPO and GSPO-token (the clipped surrogate on
the length-normalised sequence ratio), and log-probabilities summed over a sequence.

GSPO (Zheng et al. 2025) replaces PPO's per-token ratio by one ratio per sequence,
s_b = exp((1/L_b)·Σ_t m_t·(log π(y_t) − log π_old(y_t))), clipped with its own, much smaller
range (ε_low = 3e-4, ε_high = 4e-4 in verl's and TRL's GSPO recipes)::

    ℓ_b,t = max(−A_b,t·s_b, −A_b,t·clip(s_b, 1 − ε_low, 1 + ε_high))

aggregated by sequence (``seq-mean-token-mean``: the mean over a sequence's tokens, then over
sequences). GSPO-token (``importance_sampling_level="sequence_token"``) has the same value and
gives token t the gradient s_b·∇log π(y_t), so per-token advantages keep their own weight; with
a per-sequence advantage and ``seq-mean-token-mean`` its gradient equals GSPO's.

Where the anchors differ:

- verl ``compute_policy_loss_gspo`` always uses the GSPO-token form, clamps log s_b at 10 from
  above only, has no dual clip and **forces** ``seq-mean-token-mean``;
- TRL ``importance_sampling_level="sequence"`` (GSPO-token in its experimental trainer) lets
  ``loss_type`` choose the aggregation (and warns for the length-weighted ones); no clamp;
- AReaL replaces A by its per-sequence mean and aggregates by token-mean.

Here every aggregation mode is accepted (``seq-mean-token-mean`` by default, as verl forces and
TRL's ``loss_type="grpo"`` gives), the log ratio is clamped to ±``log_ratio_clamp`` (default
10, verl's upper bound; the lower one never binds in practice), and a dual clip may be set
(slime and OpenRLHF allow one).
"""

from __future__ import annotations

import torch

from rlhf_core.losses.aggregation import LossOutput, Number, _bool_mask, _check_2d, _zero_masked
from rlhf_core.losses.policy import ppo_policy_loss

__all__ = ["SEQUENCE_LEVELS", "gspo_loss", "sequence_logprobs"]

SEQUENCE_LEVELS: tuple[str, ...] = ("sequence", "sequence_token")


def gspo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    importance_sampling_level: str = "sequence",
    clip_low: float = 3e-4,
    clip_high: float | None = 4e-4,
    dual_clip: float | None = None,
    log_ratio_clamp: float | None = 10.0,
    token_weights: torch.Tensor | None = None,
    aggregation: str = "seq-mean-token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """GSPO (``importance_sampling_level="sequence"``) or GSPO-token (``"sequence_token"``):
    :func:`rlhf_core.losses.ppo_policy_loss` on the sequence ratio, with GSPO's defaults.

    Args:
        logprobs, old_logprobs: float (B, T) log π (with grad) and log π_old.
        advantages: float (B,) per sequence, or (B, T) per token (GSPO-token's case).
        mask: (B, T) response mask; masked tokens enter neither L_b nor the sum.
        importance_sampling_level: ``sequence`` or ``sequence_token``.
        clip_low, clip_high: GSPO's clip range on s_b (3e-4 / 4e-4; ``clip_high`` None =
            ``clip_low``).
        dual_clip: as :func:`ppo_policy_loss`; None = off (verl has none).
        log_ratio_clamp: clamp log s_b to ±this (verl: 10 from above); None = off (TRL).
        token_weights, aggregation, num_tokens, num_seqs, max_len: as
            :func:`ppo_policy_loss` (default aggregation ``seq-mean-token-mean``).

    Returns:
        the metrics of :func:`ppo_policy_loss`, with the clip fractions and the ratio
        statistics taken over the tokens of the sequence ratio (each token carries s_b) and
        ``approx_kl`` from the token ratios.
    """
    if importance_sampling_level not in SEQUENCE_LEVELS:
        raise ValueError(
            f"importance_sampling_level={importance_sampling_level!r}: GSPO takes one of "
            f"{SEQUENCE_LEVELS} (use ppo_policy_loss for 'token')"
        )
    return ppo_policy_loss(
        logprobs,
        old_logprobs,
        advantages,
        mask,
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        log_ratio_clamp=log_ratio_clamp,
        importance_sampling_level=importance_sampling_level,
        token_weights=token_weights,
        aggregation=aggregation,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=max_len,
    )


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
