"""Token-level policy losses: the PPO clipped surrogate (asymmetric ε, dual clip) and the
negative log-likelihood of SFT."""

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

__all__ = ["ppo_policy_loss", "sft_loss"]


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    dual_clip: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """PPO clipped surrogate with asymmetric clip range and optional dual clip.

    Per token, with ρ = exp(logπ − logπ_old) and advantage A::

        ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))
        ℓ = min(ℓ, −c·A)   where A < 0, if dual_clip c is set (c > 1)

    then aggregated with ``aggregation`` (see :func:`aggregate`).

    Args:
        logprobs: float (B, T) log π(a_t) of the current policy (with grad).
        old_logprobs: float (B, T) log π_old(a_t) of the policy that sampled (no grad).
        advantages: float (B, T) per-token, or (B,) per-sequence (broadcast over tokens).
        mask: (B, T) response mask.
        clip_low: ε_low ≥ 0.
        clip_high: ε_high ≥ 0 (DAPO clip-higher, e.g. 0.28); None = ``clip_low``.
        dual_clip: c > 1 bounding the loss of negative-advantage tokens (verl uses 3.0);
            None = off.
        log_ratio_clamp: clamp logπ − logπ_old to ±this before the exponential (the anchors
            use 20); None = off.
        aggregation, num_tokens, num_seqs, max_len: see :func:`aggregate`.

    Returns:
        :class:`LossOutput` with metrics ``policy_loss``, ``clip_frac`` (tokens whose clipped
        branch is active), ``clip_frac_low`` / ``clip_frac_high`` (by side),
        ``dual_clip_frac``, ``approx_kl`` (k3 estimate of KL(π_old ‖ π): (ρ − 1) − log ρ),
        ``ratio_mean``, ``advantage_mean`` (token means), ``ratio_min`` / ``ratio_max``
        (extremes over valid tokens; +inf / -inf when no token is valid). Every metric is a
        0-d tensor computed without a device-to-host sync.
    """
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs)
    if clip_high is None:
        clip_high = clip_low
    if clip_low < 0 or clip_high < 0:
        raise ValueError(
            f"clip_low={clip_low}, clip_high={clip_high}: clip ranges must be >= 0 (e.g. 0.2)"
        )
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip={dual_clip}: expected c > 1 (e.g. 3.0) or None to disable")
    dtype = _compute_dtype(logprobs, old_logprobs, advantages)
    m = _bool_mask(mask, logprobs)
    if advantages.dim() == 1:
        if advantages.shape[0] != logprobs.shape[0]:
            raise ValueError(
                f"advantages has shape {tuple(advantages.shape)}, expected ({logprobs.shape[0]},)"
                f" per sequence or {tuple(logprobs.shape)} per token"
            )
        adv = _as_float(advantages, dtype)[:, None].expand_as(logprobs)
    else:
        _check_same_shape("logprobs", logprobs, advantages=advantages)
        adv = _as_float(advantages, dtype)
    adv = _zero_masked(adv, m)
    log_ratio = _zero_masked(_as_float(logprobs, dtype) - _as_float(old_logprobs, dtype), m)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(m)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (bound < per_token)
        per_token = torch.where(dual_active, bound, per_token)
    loss = aggregate(
        per_token, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )

    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        clip_active = (clipped > unclipped) & m
        low = clip_active & (ratio < 1.0)
        metrics = {
            "policy_loss": loss.detach(),
            "clip_frac": clip_active.sum().to(dtype) / n_tok,
            "clip_frac_low": low.sum().to(dtype) / n_tok,
            "clip_frac_high": (clip_active & ~low).sum().to(dtype) / n_tok,
            "dual_clip_frac": (dual_active & m).sum().to(dtype) / n_tok,
            "approx_kl": _token_mean((ratio - 1.0) - log_ratio, m, n_tok),
            "ratio_mean": _token_mean(ratio, m, n_tok),
            "advantage_mean": _token_mean(adv, m, n_tok),
            # extremes over valid tokens without a host sync (no boolean indexing, no
            # ``m.any()``): +inf / -inf when no token is valid, the identities of the
            # min / max merge of :func:`merge_metrics` and of the all-reduce over ranks
            "ratio_min": ratio.masked_fill(~m, float("inf")).amin(),
            "ratio_max": ratio.masked_fill(~m, float("-inf")).amax(),
        }
    return LossOutput(loss, metrics)


def sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Negative log-likelihood of target tokens: loss = aggregate(−logπ).

    Args:
        logprobs: float (B, T) log-probabilities of the target tokens (e.g. from
            :func:`rlhf_core.models.token_logprobs`), mask selecting the completion tokens.

    Returns:
        :class:`LossOutput` with metric ``nll`` (token mean).
    """
    _check_2d("logprobs", logprobs)
    dtype = _compute_dtype(logprobs)
    m = _bool_mask(mask, logprobs)
    loss = aggregate(
        -_as_float(logprobs, dtype),
        m,
        aggregation,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=max_len,
    )
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {"nll": _token_mean(-_as_float(logprobs, dtype), m, n_tok)}
    return LossOutput(loss, metrics)
