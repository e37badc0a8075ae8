"""Entropy in the loss: the entropy bonus, and the covariance-based updates that keep the
policy's entropy from collapsing (Clip-Cov and KL-Cov, Cui et al. 2025, as verl's
``compute_policy_loss_clip_cov`` / ``compute_policy_loss_kl_cov``).

The entropy of a softmax policy falls fastest on tokens whose log-probability and advantage
covary most. Per valid token, the covariance score is

    cov_t = (A_t − mean_m A)·(log π(y_t) − mean_m log π)

(means over the valid tokens of the batch;
:func:`rlhf_core.advantages.token_masks.covariance_scores`). Clip-Cov takes a small
random subset of the tokens with ``clip_cov_lb < cov_t < clip_cov_ub`` out of the gradient;
KL-Cov adds ``ppo_kl_coef``·|log r_t| to the unclipped policy-gradient loss of the tokens with
the largest cov_t. *Which* tokens is bookkeeping over the whole batch (a seeded random subset,
a top-k: :mod:`rlhf_core.advantages.token_masks`); the losses here take that choice as a
``selected`` mask and do the per-token tensor maths.
"""

from __future__ import annotations

import torch

from rlhf_core.losses.aggregation import (
    LossOutput,
    Number,
    _as_float,
    _bool_mask,
    _check_2d,
    _check_same_shape,
    _compute_dtype,
    _denominator,
    _token_mean,
    _zero_masked,
    aggregate,
)
from rlhf_core.losses.policy import _ratio_metrics, _weighted, ppo_policy_loss
from rlhf_core.losses.ratio import policy_inputs

__all__ = ["clip_cov_loss", "entropy_bonus", "kl_cov_loss"]


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    coef: float,
    token_weights: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Entropy bonus: loss = −coef · aggregate(w·H), so minimising it raises entropy.

    Args:
        entropy: float (B, T) per-token entropy of the policy's next-token distribution.
        coef: bonus coefficient ≥ 0 (0 keeps the metric and adds nothing to the loss).
        token_weights: float (B, T) detached weights w of the bonus (TRL's top-entropy mask
            applies to it too); None = 1. The ``entropy`` metric is over every valid token.

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
    weighted = entropy
    if token_weights is not None:
        _check_same_shape("entropy", entropy, token_weights=token_weights)
        w = _zero_masked(_as_float(token_weights, dtype).detach(), m)
        weighted = _zero_masked(_as_float(entropy, dtype), m) * w
    agg = aggregate(
        weighted, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    loss = -coef * agg
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {
            "entropy": _token_mean(_as_float(entropy, dtype), m, n_tok),
            "entropy_loss": loss.detach(),
        }
    return LossOutput(loss, metrics)


def _selected(selected: torch.Tensor, like: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    if selected.shape != like.shape:
        raise ValueError(
            f"selected has shape {tuple(selected.shape)}, expected {tuple(like.shape)} (one "
            "flag per token)"
        )
    sel = selected if selected.dtype == torch.bool else selected != 0
    return sel & m


def clip_cov_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    selected: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    token_weights: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Clip-Cov: the PPO clipped surrogate with the ``selected`` tokens' loss set to 0 (no
    gradient), the denominators unchanged.

    ``selected`` comes from :func:`rlhf_core.advantages.token_masks.clip_cov_mask` (a seeded
    random k = max(⌊clip_cov_ratio·N⌋, 1) of the tokens with lb < cov_t < ub). verl's recipe
    sets ``clip_ratio_low = clip_ratio_high = 1`` so that the covariance clip replaces PPO's.

    Returns:
        the metrics of :func:`ppo_policy_loss` plus ``clip_cov_frac`` (the fraction of tokens
        taken out, verl's ``pg_clipfrac`` for this loss).
    """
    m = _bool_mask(mask, logprobs)
    sel = _selected(selected, logprobs, m)
    keep = (~sel).to(_compute_dtype(logprobs, old_logprobs, advantages))
    if token_weights is not None:
        _check_same_shape("logprobs", logprobs, token_weights=token_weights)
        keep = keep * _zero_masked(token_weights.detach().to(keep.dtype), m)
    out = ppo_policy_loss(
        logprobs, old_logprobs, advantages, m, clip_low=clip_low, clip_high=clip_high,
        log_ratio_clamp=log_ratio_clamp, token_weights=keep, aggregation=aggregation,
        num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len,
    )  # fmt: skip
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(keep.dtype), "num_tokens")
        out.metrics["clip_cov_frac"] = sel.sum().to(keep.dtype) / n_tok
    return out


def kl_cov_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    selected: torch.Tensor,
    ppo_kl_coef: float = 1.0,
    log_ratio_clamp: float | None = 20.0,
    token_weights: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """KL-Cov: the unclipped policy-gradient loss −A·r on every token, plus
    ``ppo_kl_coef``·|log r| on the ``selected`` tokens (the top-k by covariance,
    :func:`rlhf_core.advantages.token_masks.kl_cov_mask`)::

        ℓ_t = −A_t·r_t + coef·|log r_t|·selected_t      (× token_weights)

    ``ppo_kl_coef``: verl's code falls back to 1.0 (its YAML says 0.1; the recipes use 1).

    Returns:
        :class:`LossOutput` with metrics ``policy_loss``, ``kl_cov_frac`` (selected tokens),
        ``ppo_kl`` (token mean of |log r|, verl's ``ppo_kl`` for this loss), ``approx_kl``,
        ``ratio_mean``, ``advantage_mean``, ``ratio_min``, ``ratio_max``.
    """
    if ppo_kl_coef < 0:
        raise ValueError(f"ppo_kl_coef={ppo_kl_coef}: expected >= 0 (verl: 1.0)")
    inp = policy_inputs(
        logprobs, old_logprobs, advantages, mask, level="token", clamp=log_ratio_clamp,
        token_weights=token_weights,
    )  # fmt: skip
    m, adv, dtype = inp.mask, inp.advantages, inp.dtype
    sel = _selected(selected, logprobs, m)
    ratio = torch.exp(inp.log_ratio)  # (B, T)
    abs_kl = inp.log_ratio.abs()
    per_token = -adv * ratio + ppo_kl_coef * abs_kl * sel.to(dtype)
    loss = aggregate(
        _weighted(per_token, inp), m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs,
        max_len=max_len,
    )  # fmt: skip
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {
            "policy_loss": loss.detach(),
            "kl_cov_frac": sel.sum().to(dtype) / n_tok,
            "ppo_kl": _token_mean(abs_kl, m, n_tok),
            **_ratio_metrics(inp, ratio, log_ratio_clamp, n_tok),
        }
    return LossOutput(loss, metrics)
