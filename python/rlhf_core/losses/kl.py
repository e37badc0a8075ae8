"""KL to a reference: the per-token estimators k1, k2, k3, abs (:func:`kl_estimate`, the
differentiable twin of :func:`rlhf_core.ops.kl`) and the KL term of a loss
(:func:`kl_penalty`)."""

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

__all__ = ["KL_ESTIMATORS", "kl_estimate", "kl_penalty"]

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3", "abs")


def kl_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    *,
    estimator: str = "k3",
    clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from samples of π (differentiable torch version of
    :func:`rlhf_core.ops.kl`, same definitions).

    With Δ = logprobs − ref_logprobs:

    - ``k1`` = Δ
    - ``k2`` = ½ Δ²
    - ``k3`` = exp(−Δ) + Δ − 1 (always ≥ 0; the "low-variance" estimator; TRL GRPO's
      exp(ref − logπ) − (ref − logπ) − 1 is the same)
    - ``abs`` = |Δ|

    Args:
        logprobs, ref_logprobs: float tensors of the same shape (any shape).
        estimator: one of :data:`KL_ESTIMATORS`.
        clamp: if given, every estimate is clamped to [−clamp, clamp] (OpenRLHF clamps all
            estimators to ±10, verl k3 to ±10), and for k3 Δ is first clamped to
            ±(clamp + 1) so the exponential cannot overflow (this never changes a value the
            output clamp keeps). None = the raw formula. Same rule as ``ops.kl``.

    Returns:
        a tensor of the input shape.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"KL estimator {estimator!r} is unknown; expected one of {KL_ESTIMATORS}")
    _check_same_shape("logprobs", logprobs, ref_logprobs=ref_logprobs)
    dtype = _compute_dtype(logprobs, ref_logprobs)
    delta = _as_float(logprobs, dtype) - _as_float(ref_logprobs, dtype)
    if estimator == "k1":
        out = delta
    elif estimator == "k2":
        out = 0.5 * delta.square()
    elif estimator == "abs":
        out = delta.abs()
    else:
        if clamp is not None:
            delta = delta.clamp(-(clamp + 1.0), clamp + 1.0)
        out = torch.exp(-delta) + delta - 1.0
    if clamp is not None:
        out = out.clamp(-clamp, clamp)
    return out


def kl_penalty(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    coef: float,
    estimator: str = "k3",
    clamp: float | None = 10.0,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """KL to the reference in the loss: loss = coef · aggregate(kl_estimate(logπ, logπ_ref)).

    GRPO's choice (TRL ``beta`` with k3; verl ``use_kl_loss`` with ``low_var_kl``). For KL in
    the reward instead, use :func:`rlhf_core.ops.shaped_rewards` at rollout time.

    Args:
        logprobs: float (B, T) current policy (with grad).
        ref_logprobs: float (B, T) frozen reference (no grad).
        coef: β ≥ 0 (0 logs the KL and adds nothing).
        estimator, clamp: see :func:`kl_estimate`.

    Returns:
        :class:`LossOutput` with metrics ``kl`` (token mean of the estimate) and ``kl_loss``.
    """
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, ref_logprobs=ref_logprobs)
    if coef < 0:
        raise ValueError(f"coef={coef}: the KL coefficient beta must be >= 0")
    dtype = _compute_dtype(logprobs, ref_logprobs)
    m = _bool_mask(mask, logprobs)
    per_token = kl_estimate(
        _zero_masked(_as_float(logprobs, dtype), m),
        _zero_masked(_as_float(ref_logprobs, dtype), m),
        estimator=estimator,
        clamp=clamp,
    )
    agg = aggregate(
        per_token, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    loss = coef * agg
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {"kl": _token_mean(per_token, m, n_tok), "kl_loss": loss.detach()}
    return LossOutput(loss, metrics)
