"""Policy losses with a per-token objective on the importance ratio r = π/π_old:

- :func:`ppo_policy_loss`, the PPO clipped surrogate (asymmetric ε, dual clip), at the token
  or the sequence level (GSPO, :func:`rlhf_core.losses.gspo_loss`);
- :func:`cispo_loss`, a REINFORCE term weighted by the clipped, detached ratio (CISPO);
- :func:`sapo_loss`, the clip replaced by a soft sigmoid gate (SAPO);
- :func:`sft_loss`, the negative log-likelihood of SFT.

Each policy loss takes ``importance_sampling_level`` (:mod:`rlhf_core.losses.ratio`) and
optional ``token_weights`` (B, T): detached per-token weights multiplied into the per-token
loss after the objective (a top-entropy mask, a Clip-Cov selection, importance weights), with
the denominators of the aggregation unchanged (TRL multiplies its entropy mask the same way;
verl its rollout importance weights).
"""

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
from rlhf_core.losses.ratio import PolicyInputs, policy_inputs

__all__ = ["cispo_bounds", "cispo_loss", "ppo_policy_loss", "sapo_loss", "sft_loss"]


def _ratio_metrics(
    inp: PolicyInputs, ratio: torch.Tensor, clamp: float | None, n_tok: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagnostics every policy loss logs: approx_kl (k3 of the token ratio), ratio mean and
    extremes (of the loss's ratio), advantage mean; token means divided by ``n_tok``."""
    m = inp.mask
    delta = inp.token_log_ratio
    if clamp is not None:
        delta = delta.clamp(-clamp, clamp)
    return {
        "approx_kl": _token_mean((torch.exp(delta) - 1.0) - delta, m, n_tok),
        "ratio_mean": _token_mean(ratio, m, n_tok),
        "advantage_mean": _token_mean(inp.advantages, m, n_tok),
        # extremes over valid tokens without a host sync (no boolean indexing, no
        # ``m.any()``): +inf / -inf when no token is valid, the identities of the
        # min / max merge of :func:`merge_metrics` and of the all-reduce over ranks
        "ratio_min": ratio.masked_fill(~m, float("inf")).amin(),
        "ratio_max": ratio.masked_fill(~m, float("-inf")).amax(),
    }


def _weighted(per_token: torch.Tensor, inp: PolicyInputs) -> torch.Tensor:
    return per_token if inp.weights is None else per_token * inp.weights


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
    importance_sampling_level: str = "token",
    token_weights: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """PPO clipped surrogate with asymmetric clip range and optional dual clip.

    Per token, with ρ = exp(log ratio at ``importance_sampling_level``) and advantage A::

        ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))
        ℓ = min(ℓ, −c·A)   where A < 0, if dual_clip c is set (c > 1)
        ℓ = w·ℓ            with token_weights w

    then aggregated with ``aggregation`` (see :func:`aggregate`). At the ``sequence`` level
    this is GSPO (:func:`rlhf_core.losses.gspo_loss` has GSPO's defaults).

    Args:
        logprobs: float (B, T) log π(a_t) of the current policy (with grad).
        old_logprobs: float (B, T) log π_old(a_t) of the policy that sampled (no grad).
        advantages: float (B, T) per-token, or (B,) per-sequence (broadcast over tokens).
        mask: (B, T) response mask.
        clip_low: ε_low ≥ 0.
        clip_high: ε_high ≥ 0 (DAPO clip-higher, e.g. 0.28); None = ``clip_low``.
        dual_clip: c > 1 bounding the loss of negative-advantage tokens (verl uses 3.0);
            None = off.
        log_ratio_clamp: clamp the log ratio to ±this before the exponential (the anchors
            use 20); None = off.
        importance_sampling_level: ``token``, ``sequence`` or ``sequence_token``
            (:mod:`rlhf_core.losses.ratio`).
        token_weights: float (B, T) detached weights of the per-token loss; None = 1.
        aggregation, num_tokens, num_seqs, max_len: see :func:`aggregate`.

    Returns:
        :class:`LossOutput` with metrics ``policy_loss``, ``clip_frac`` (tokens whose clipped
        branch is active), ``clip_frac_low`` / ``clip_frac_high`` (by side),
        ``dual_clip_frac``, ``approx_kl`` (k3 estimate of KL(π_old ‖ π) from the token
        ratios: (r − 1) − log r), ``ratio_mean``, ``advantage_mean`` (token means),
        ``ratio_min`` / ``ratio_max`` (extremes over valid tokens; +inf / -inf when no token
        is valid). Every metric is a 0-d tensor computed without a device-to-host sync.
    """
    if clip_high is None:
        clip_high = clip_low
    if clip_low < 0 or clip_high < 0:
        raise ValueError(
            f"clip_low={clip_low}, clip_high={clip_high}: clip ranges must be >= 0 (e.g. 0.2)"
        )
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip={dual_clip}: expected c > 1 (e.g. 3.0) or None to disable")
    inp = policy_inputs(
        logprobs, old_logprobs, advantages, mask, level=importance_sampling_level,
        clamp=log_ratio_clamp, token_weights=token_weights,
    )  # fmt: skip
    m, adv, dtype = inp.mask, inp.advantages, inp.dtype
    ratio = torch.exp(inp.log_ratio)  # (B, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(m)
    if dual_clip is not None:
        bound = -adv * dual_clip
        dual_active = (adv < 0) & (bound < per_token)
        per_token = torch.where(dual_active, bound, per_token)
    loss = aggregate(
        _weighted(per_token, inp), m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs,
        max_len=max_len,
    )  # fmt: skip

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
            **_ratio_metrics(inp, ratio, log_ratio_clamp, n_tok),
        }
    return LossOutput(loss, metrics)


def cispo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    ratio_max: float,
    ratio_min: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    importance_sampling_level: str = "token",
    token_weights: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """CISPO: a REINFORCE term weighted by the clipped, detached importance ratio.

    Per token, with r the ratio at ``importance_sampling_level``::

        ℓ = −sg(clip(r, ratio_min, ratio_max))·A·log π(a_t)     (× token_weights)

    so ∇ℓ = −clip(r)·A·∇log π: unlike PPO's clip, a token outside the range keeps its
    gradient, only its weight is capped (MiniMax-M1's CISPO).

    The bounds are absolute ratios. The anchors spell them two ways:

    - TRL ``loss_type="cispo"``: ``ratio_max = epsilon_high`` (an absolute cap, ScaleRL
      recommends 5.0), no lower bound (``ratio_min=None``), token-mean over the batch;
    - verl ``loss_mode="cispo"`` (and slime, NeMo-RL): ``ratio_min = 1 − clip_ratio_low``,
      ``ratio_max = 1 + clip_ratio_high``; :func:`cispo_bounds` converts.

    Args:
        logprobs, old_logprobs, advantages, mask: as :func:`ppo_policy_loss`.
        ratio_max: upper bound of the weight (> 0).
        ratio_min: lower bound (≥ 0, below ``ratio_max``); None = none.
        log_ratio_clamp: clamp the log ratio to ±this (verl: 20); None = off.
        importance_sampling_level, token_weights, aggregation, num_tokens, num_seqs,
            max_len: as :func:`ppo_policy_loss` (TRL normalises CISPO by the batch's tokens:
            ``token-mean``, the default here).

    Returns:
        :class:`LossOutput` with metrics ``policy_loss``, ``clip_frac`` (tokens whose weight
        the bounds changed, verl's ``pg_clipfrac``), ``clip_frac_low`` / ``clip_frac_high``
        (r below / above the range; TRL's ``cispo_clip_ratio`` counts r > ε_high with A > 0
        only), ``approx_kl``, ``ratio_mean``, ``advantage_mean``, ``ratio_min``,
        ``ratio_max``.
    """
    if not ratio_max > 0:
        raise ValueError(f"ratio_max={ratio_max}: expected an upper bound > 0 (e.g. 5.0 or 1.2)")
    if ratio_min is not None and not 0 <= ratio_min < ratio_max:
        raise ValueError(
            f"ratio_min={ratio_min}: expected in [0, ratio_max={ratio_max}) or None for no "
            "lower bound"
        )
    inp = policy_inputs(
        logprobs, old_logprobs, advantages, mask, level=importance_sampling_level,
        clamp=log_ratio_clamp, token_weights=token_weights,
    )  # fmt: skip
    m, adv, dtype = inp.mask, inp.advantages, inp.dtype
    ratio = torch.exp(inp.log_ratio)  # (B, T)
    weight = ratio.clamp(ratio_min, ratio_max).detach()
    per_token = -weight * adv * inp.logprobs
    loss = aggregate(
        _weighted(per_token, inp), m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs,
        max_len=max_len,
    )  # fmt: skip
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        high = (ratio > ratio_max) & m
        low = (ratio < ratio_min) & m if ratio_min is not None else torch.zeros_like(m)
        metrics = {
            "policy_loss": loss.detach(),
            "clip_frac": (high | low).sum().to(dtype) / n_tok,
            "clip_frac_low": low.sum().to(dtype) / n_tok,
            "clip_frac_high": high.sum().to(dtype) / n_tok,
            **_ratio_metrics(inp, ratio, log_ratio_clamp, n_tok),
        }
    return LossOutput(loss, metrics)


def cispo_bounds(clip_low: float | None, clip_high: float) -> tuple[float | None, float]:
    """verl's CISPO spelling as absolute bounds: ``(1 − clip_low, 1 + clip_high)``, the lower
    bound None when ``clip_low`` is None or ≥ 1 (verl's example disables it with
    ``clip_ratio_low=10``)."""
    if clip_high < 0 or (clip_low is not None and clip_low < 0):
        raise ValueError(f"clip_low={clip_low}, clip_high={clip_high}: expected >= 0")
    low = None if clip_low is None or clip_low >= 1 else 1.0 - clip_low
    return low, 1.0 + clip_high


def sapo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    temperature_pos: float = 1.0,
    temperature_neg: float = 1.05,
    log_ratio_clamp: float | None = 20.0,
    importance_sampling_level: str = "token",
    token_weights: torch.Tensor | None = None,
    aggregation: str = "seq-mean-token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """SAPO: PPO's hard clip replaced by a soft gate on the ratio.

    Per token, with r the ratio at ``importance_sampling_level`` and τ = ``temperature_pos``
    where A > 0, else ``temperature_neg``::

        f(r; τ) = (4/τ)·σ(τ·(r − 1)),     ℓ = −f(r; τ)·A     (× token_weights)

    At r = 1, df/dr = 1: on-policy, the gradient is vanilla policy gradient; away from 1 it
    fades smoothly instead of stopping. Defaults τ_pos = 1.0, τ_neg = 1.05 in every anchor
    (TRL ``sapo_temperature_pos/neg``, verl ``tau_pos/tau_neg``, AReaL ``sapo_tau_pos/neg``).

    Args:
        logprobs, old_logprobs, advantages, mask: as :func:`ppo_policy_loss`.
        temperature_pos, temperature_neg: τ > 0 of positive / non-positive advantages.
        log_ratio_clamp: clamp the log ratio to ±this (verl: 20); None = off.
        aggregation: default ``seq-mean-token-mean``, the mode verl forces for SAPO and TRL's
            per-sequence normalisation; every mode is accepted.
        importance_sampling_level, token_weights, num_tokens, num_seqs, max_len: as
            :func:`ppo_policy_loss`.

    Returns:
        :class:`LossOutput` with metrics ``policy_loss``, ``soft_gate_mean`` (token mean of
        f(r; τ); 4/τ·½ on-policy), ``approx_kl``, ``ratio_mean``, ``advantage_mean``,
        ``ratio_min``, ``ratio_max``.
    """
    for name, tau in (("temperature_pos", temperature_pos), ("temperature_neg", temperature_neg)):
        if not tau > 0:
            raise ValueError(f"{name}={tau}: the SAPO temperature must be > 0 (e.g. 1.0)")
    inp = policy_inputs(
        logprobs, old_logprobs, advantages, mask, level=importance_sampling_level,
        clamp=log_ratio_clamp, token_weights=token_weights,
    )  # fmt: skip
    m, adv, dtype = inp.mask, inp.advantages, inp.dtype
    ratio = torch.exp(inp.log_ratio)  # (B, T)
    taus = torch.where(
        adv > 0,
        torch.tensor(temperature_pos, dtype=dtype, device=adv.device),
        torch.tensor(temperature_neg, dtype=dtype, device=adv.device),
    )  # (B, T)
    gate = torch.sigmoid(taus * (ratio - 1.0)) * (4.0 / taus)  # (B, T)
    per_token = -gate * adv
    loss = aggregate(
        _weighted(per_token, inp), m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs,
        max_len=max_len,
    )  # fmt: skip
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {
            "policy_loss": loss.detach(),
            "soft_gate_mean": _token_mean(gate, m, n_tok),
            **_ratio_metrics(inp, ratio, log_ratio_clamp, n_tok),
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
