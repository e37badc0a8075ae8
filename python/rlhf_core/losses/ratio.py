"""Importance ratios π/π_old at the token or the sequence level, and the inputs every policy
loss checks the same way.

With Δ_t = log π(y_t) − log π_old(y_t) on valid tokens (m_t = 1) and L_b = Σ_t m_t:

==================  ========================================================================
level               log ratio of token t of sequence b
==================  ========================================================================
``token``           Δ_t (PPO; TRL ``importance_sampling_level="token"``)
``sequence``        log s_b = (1/L_b)·Σ_t m_t·Δ_t, the same for every token of the row; its
                    gradient reaches every token through the mean (GSPO; TRL ``"sequence"``)
``sequence_token``  sg(log s_b) + log π(y_t) − sg(log π(y_t)): the value of ``sequence``, the
                    gradient of one token, ∇ = s_b·∇log π(y_t) (GSPO-token; TRL's experimental
                    ``"sequence_token"``, verl ``compute_policy_loss_gspo``)
==================  ========================================================================

(sg = stop-gradient.) A row without valid tokens has log s_b = 0 (L_b is clamped to 1, as TRL,
AReaL, slime and verl's GSPO do). The clamp of the log ratio (±20 in verl's vanilla, SAPO and
CISPO losses, at most 10 in verl's GSPO, none in TRL) applies after the level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_core.losses.aggregation import (
    _as_float,
    _bool_mask,
    _check_2d,
    _check_same_shape,
    _compute_dtype,
    _zero_masked,
)

__all__ = ["IMPORTANCE_SAMPLING_LEVELS", "log_importance_ratio"]

IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = ("token", "sequence", "sequence_token")


def _check_level(level: str) -> None:
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"importance_sampling_level={level!r} is unknown; expected one of "
            f"{IMPORTANCE_SAMPLING_LEVELS}"
        )


def _check_clamp(clamp: float | None) -> None:
    if clamp is not None and not clamp > 0:
        raise ValueError(f"log_ratio_clamp={clamp}: expected > 0 (e.g. 20) or None for no clamp")


def _level_log_ratio(
    lp: torch.Tensor, old: torch.Tensor, m: torch.Tensor, level: str, clamp: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log ratio at ``level``, token log ratio Δ), both (B, T), 0 at masked positions. ``lp``
    and ``old`` are already zero at masked positions."""
    delta = _zero_masked(lp - old, m)  # (B, T)
    if level == "token":
        out = delta
    else:
        lengths = m.sum(dim=-1, keepdim=True).clamp(min=1).to(delta.dtype)  # (B, 1)
        seq = delta.sum(dim=-1, keepdim=True) / lengths  # (B, 1) log s_b
        if level == "sequence":
            out = seq.expand_as(delta)
        else:
            out = seq.detach() + lp - lp.detach()
        out = _zero_masked(out, m)
    if clamp is not None:
        out = out.clamp(-clamp, clamp)
    return out, delta


def log_importance_ratio(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    level: str = "token",
    clamp: float | None = None,
) -> torch.Tensor:
    """The log importance ratio of every token at ``level`` (see the module's table).

    Args:
        logprobs: float (B, T) log π of the current policy (with grad).
        old_logprobs: float (B, T) log π_old of the policy that sampled.
        mask: (B, T) valid tokens; None = all.
        level: one of :data:`IMPORTANCE_SAMPLING_LEVELS`.
        clamp: clamp the result to ±clamp; None = no clamp.

    Returns:
        float (B, T), 0 at masked positions (float32, or float64 for float64 inputs).
    """
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs)
    _check_level(level)
    _check_clamp(clamp)
    dtype = _compute_dtype(logprobs, old_logprobs)
    m = _bool_mask(mask, logprobs)
    lp = _zero_masked(_as_float(logprobs, dtype), m)
    old = _zero_masked(_as_float(old_logprobs, dtype), m)
    return _level_log_ratio(lp, old, m, level, clamp)[0]


@dataclass
class PolicyInputs:
    """The checked, masked inputs of a policy loss (every tensor (B, T), 0 where masked)."""

    dtype: torch.dtype
    mask: torch.Tensor  # bool
    logprobs: torch.Tensor
    advantages: torch.Tensor
    log_ratio: torch.Tensor  # at the loss's level, clamped
    token_log_ratio: torch.Tensor  # Δ_t, unclamped (diagnostics)
    weights: torch.Tensor | None  # token_weights, or None


def policy_inputs(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    level: str,
    clamp: float | None,
    token_weights: torch.Tensor | None,
) -> PolicyInputs:
    """Check and mask what every policy loss takes: per-token or per-sequence advantages, the
    level's log ratio, optional per-token weights (finite where valid)."""
    _check_2d("logprobs", logprobs)
    _check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs)
    _check_level(level)
    _check_clamp(clamp)
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
    lp = _zero_masked(_as_float(logprobs, dtype), m)
    old = _zero_masked(_as_float(old_logprobs, dtype), m)
    log_ratio, delta = _level_log_ratio(lp, old, m, level, clamp)
    weights = None
    if token_weights is not None:
        _check_same_shape("logprobs", logprobs, token_weights=token_weights)
        weights = _zero_masked(_as_float(token_weights, dtype).detach(), m)
    return PolicyInputs(dtype, m, lp, adv, log_ratio, delta, weights)
