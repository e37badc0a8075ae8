"""The value model's loss (clipped, as in PPO) and the explained variance of its predictions."""

from __future__ import annotations

import math

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

__all__ = ["explained_variance", "value_loss"]


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    clip_range: float | None = 0.2,
    aggregation: str = "token-mean",
    num_tokens: Number | torch.Tensor | None = None,
    num_seqs: Number | torch.Tensor | None = None,
    max_len: Number | None = None,
) -> LossOutput:
    """Clipped value loss: ℓ = ½·max((V − R)², (V_clip − R)²) with
    V_clip = V_old + clip(V − V_old, −c, c); ℓ = ½ (V − R)² when ``clip_range`` is None.

    ``value_clip_frac`` counts the tokens where the clip moved the value (|V − V_old| > c) and
    the clipped term is the larger one, verl's ``vf_clipfrac`` (clipped loss strictly greater)
    computed without rounding: where the clip does not bind, V_old + (V − V_old) need not be
    exactly V in floating point, and comparing the two squared errors alone would count that
    rounding as clipping.

    Args:
        values: float (B, T) predictions of the value model being trained (with grad).
        old_values: float (B, T) predictions at rollout time (no grad).
        returns: float (B, T) targets R (GAE returns).
        mask: (B, T) response mask.
        clip_range: c > 0 (TRL PPO 0.2, OpenRLHF 0.5); None = unclipped.
        aggregation, num_tokens, num_seqs, max_len: see :func:`aggregate`.

    Returns:
        :class:`LossOutput` with metrics ``value_loss``, ``value_clip_frac`` (tokens where the
        clip moved the value and the clipped term is larger), ``value_mean``, ``return_mean``
        (token means).
    """
    _check_2d("values", values)
    _check_same_shape("values", values, old_values=old_values, returns=returns)
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range={clip_range}: expected > 0 (e.g. 0.2) or None for no clip")
    dtype = _compute_dtype(values, old_values, returns)
    m = _bool_mask(mask, values)
    v = _zero_masked(_as_float(values, dtype), m)
    v_old = _zero_masked(_as_float(old_values, dtype), m)
    ret = _zero_masked(_as_float(returns, dtype), m)
    err = (v - ret).square()
    if clip_range is None:
        per_token = 0.5 * err
        clipped_larger = torch.zeros_like(m)
    else:
        delta = v - v_old
        v_clip = v_old + delta.clamp(-clip_range, clip_range)
        err_clip = (v_clip - ret).square()
        per_token = 0.5 * torch.maximum(err, err_clip)
        with torch.no_grad():
            clipped_larger = (delta.abs() > clip_range) & (err_clip > err)
    loss = aggregate(
        per_token, m, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )
    with torch.no_grad():
        n_tok = _denominator(num_tokens, m.sum().to(dtype), "num_tokens")
        metrics = {
            "value_loss": loss.detach(),
            "value_clip_frac": (clipped_larger & m).sum().to(dtype) / n_tok,
            "value_mean": _token_mean(v, m, n_tok),
            "return_mean": _token_mean(ret, m, n_tok),
        }
    return LossOutput(loss, metrics)


def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """1 − Var(R − V) / Var(R) over valid tokens (float64, population variance).

    1 = the value model predicts the returns perfectly; 0 = no better than a constant; < 0 =
    worse. Not additive: compute it over the whole batch, not per micro-batch.

    Args:
        values, returns: float (B, T) (or any equal shapes) with a mask of the same shape.

    Returns:
        a Python float; NaN when the returns have no variance (or fewer than 2 valid tokens).
    """
    _check_same_shape("values", values, returns=returns)
    m = _bool_mask(mask, values)
    v = values.detach().to(torch.float64)[m]
    r = returns.detach().to(torch.float64)[m]
    if r.numel() < 2:
        return math.nan
    var_r = torch.var(r, unbiased=False)
    if float(var_r) == 0.0:
        return math.nan
    return float(1.0 - torch.var(r - v, unbiased=False) / var_r)
